//! `syncctl soak --quick` through the binary's CLI: the engine and a standalone sandbox
//! as processes of their own, through every fault profile (QuickBooks errors, resets,
//! hanging requests and an outage; Alegra and DIAN outages with invoices arriving; a
//! 429 storm; `kill -9` twice during both pipelines), each checked against the
//! sandbox's listings at its end. And the checks are real: a second Item written by
//! another client makes the soak fail and say so.

#![allow(clippy::unwrap_used, reason = "a test that fails says where")]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_syncctl");

fn soak(args: &[&str]) -> (Option<i32>, String) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("soak")
        .args(args)
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The row of `profile` in the printed table, split in cells.
fn row<'a>(text: &'a str, profile: &str) -> Vec<&'a str> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("| {profile} ")))
        .unwrap_or_else(|| panic!("no row for {profile}:\n{text}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

#[test]
fn soak_quick_passes_every_profile() {
    let (code, text) = soak(&["--quick"]);
    assert_eq!(code, Some(0), "{text}");
    for p in [
        "qb-errors",
        "qb-resets",
        "qb-hangs",
        "qb-outage",
        "alegra-outage",
        "dian-outage",
        "429-storm",
        "kill-9",
    ] {
        let r = row(&text, p);
        assert_eq!(r[1], "yes", "{p} completed: {text}");
        assert_eq!(r[5], "0", "{p}: no duplicates: {text}");
        assert_eq!(r[6], "0", "{p}: nothing lost: {text}");
    }
    assert_eq!(row(&text, "kill-9")[8], "2", "two kill cycles: {text}");
    assert_ne!(
        row(&text, "qb-outage")[3],
        "-",
        "requests to the dead service are counted: {text}"
    );
    assert!(text.contains("PASS: 8 of 8 profiles passed"), "{text}");
}

#[test]
fn a_duplicate_item_fails_the_soak_and_is_named() {
    let (code, text) = soak(&["--quick", "--profiles", "qb-errors", "--sabotage"]);
    assert_eq!(code, Some(1), "{text}");
    let r = row(&text, "qb-errors");
    assert_eq!(r[1], "yes, bad", "{text}");
    assert_eq!(r[5], "1", "one duplicate: {text}");
    assert!(text.contains("1 second Items of a product"), "{text}");
    assert!(text.contains("FAIL: 0 of 1 profiles passed"), "{text}");
}

#[test]
fn an_unknown_profile_is_refused_by_name() {
    let (code, text) = soak(&["--quick", "--profiles", "qb-errors,paypal-outage"]);
    assert_eq!(code, Some(2), "a usage error: {text}");
    assert!(text.contains("no profile \"paypal-outage\""), "{text}");
    assert!(text.contains("kill-9"), "lists the profiles: {text}");
}
