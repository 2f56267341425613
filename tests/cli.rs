//! The binary's command line: exit codes, messages, config handling, data-dir locking.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use common::running_engine;

const BIN: &str = env!("CARGO_BIN_EXE_syncctl");

use common::syncctl;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn config_check_names_file_key_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:9870\"\n\n[stripe]\nwebhook_tolerance_secs = \"soon\"\n",
    )
    .unwrap();
    let out = syncctl(
        &["config", "check", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:5: key `stripe.webhook_tolerance_secs`",
            path.display()
        )),
        "{err}"
    );

    std::fs::write(&path, "[catalog]\nworkers = 8\nreconcile_every = 3\n").unwrap();
    let out = syncctl(
        &["config", "check", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(":3: key `catalog.reconcile_every`") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn no_config_says_where_it_looked_and_what_to_try() {
    let dir = tempfile::tempdir().unwrap();
    let out = syncctl(&[], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("no config file at") && err.contains(dir.path().to_str().unwrap()),
        "{err}"
    );
    assert!(
        err.contains("syncctl demo") && err.contains("syncctl config init"),
        "{err}"
    );
}

#[test]
fn config_init_writes_a_private_example_that_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/syncctl.toml");
    let p = path.to_str().unwrap();
    let out = syncctl(&["config", "init", "--config", p], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let out = syncctl(&["config", "check", "--config", p], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = syncctl(&["config", "init", "--config", p], dir.path());
    assert_eq!(
        out.status.code(),
        Some(2),
        "an existing file is not overwritten without --force"
    );
}

#[cfg(unix)]
#[test]
fn a_world_readable_config_with_a_secret_is_warned_about_without_printing_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[stripe]\napi_key = \"sk_live_supersecret123\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = syncctl(
        &["config", "check", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(out.status.success());
    let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(
        all.contains("readable by others") && all.contains("chmod 600"),
        "{all}"
    );
    assert!(!all.contains("supersecret"), "a secret was printed: {all}");
}

#[test]
fn sandbox_print_config_is_a_valid_engine_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = syncctl(
        &[
            "sandbox",
            "--listen",
            "127.0.0.1:19999",
            "--print-config",
            "--seed",
            "3",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let config = syncctl::config::Config::parse(&text, std::path::Path::new("printed")).unwrap();
    assert_eq!(
        config.stripe.base_url.as_deref(),
        Some("http://127.0.0.1:19999")
    );
    assert!(
        config.missing_live_keys().is_empty(),
        "{:?}",
        config.missing_live_keys()
    );
}

#[test]
fn a_second_engine_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[sandbox]\nlisten = \"127.0.0.1:0\"\nproducts = 20\nchange_interval_ms = 0\n",
    )
    .unwrap();
    let args = [
        "run",
        "--demo",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut first = serving_demo(&cfg, &data, &[]);
    let second = syncctl(&args, dir.path());
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(second.status.code(), Some(2));
    let err = stderr(&second);
    assert!(err.contains("already using data dir"), "{err}");
}

fn dian_cufe(input: &str, extra: &[&str]) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["dian", "cufe"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

const ANNEX: &str = r#"{"number":"323200000129","date":"2019-01-16","time":"10:53:10-05:00",
  "subtotal":"1500000.00","iva":"285000.00","inc":"0.00","ica":"0.00","total":"1785000.00",
  "issuer_nit":"700085371","buyer_id":"800199436",
  "technical_key":"693ff6f2a553c3646a063436fd4dd9ded0311471","environment":"1"}"#;
const ANNEX_CUFE: &str = "8bb918b19ba22a694f1da11c643b5e9de39adf60311cf179179e9b33381030bcd4c3c3f156c506ed5908f9276f5bd9b4";

#[test]
fn dian_cufe_prints_the_annex_cufe_and_checks_a_printed_one() {
    let o = dian_cufe(ANNEX, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), ANNEX_CUFE);
    // Amounts with more decimals are truncated by the tool itself.
    let o = dian_cufe(&ANNEX.replace("285000.00", "285000.009"), &[]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), ANNEX_CUFE);
    let o = dian_cufe(ANNEX, &["--check", &ANNEX_CUFE.to_uppercase()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = dian_cufe(ANNEX, &["--check", &ANNEX_CUFE.replace('8', "9")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("differs"));
}

#[test]
fn dian_cufe_names_the_bad_field_and_exits_2() {
    for (input, field) in [
        (ANNEX.replace("\"1785000.00\"", "1785000"), "total"),
        (ANNEX.replace("2019-01-16", "16/01/2019"), "date"),
        (ANNEX.replace(",\"environment\":\"1\"", ""), "environment"),
        (ANNEX.replace("\"iva\"", "\"vat\""), "vat"),
        ("not json".to_owned(), "(input)"),
    ] {
        let o = dian_cufe(&input, &[]);
        assert_eq!(o.status.code(), Some(2), "{field}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("`{field}`")),
            "{field}: {}",
            stderr(&o)
        );
        assert!(o.stdout.is_empty());
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A data dir holding two invoices: one FAILED, one VALIDATED.
fn compliance_data(dir: &std::path::Path) -> syncctl::store::Store {
    use syncctl::compliance::invoice::LocalInvoice;
    use syncctl::compliance::machine::Status;
    use syncctl::store::{Change, Store};
    let store = Store::open(dir).unwrap();
    for id in ["in_failed", "in_ok"] {
        let inv = LocalInvoice::example(id, "invoice");
        store
            .ingest_invoice(&inv, "2026-11-22", "SETP", 990000001, None)
            .unwrap();
    }
    for (id, to, code, message) in [
        (
            "in_failed",
            Status::Failed,
            "AEP6009",
            "numbering not authorized",
        ),
        ("in_ok", Status::Validated, "00", "accepted by DIAN"),
    ] {
        store
            .change_invoice(
                id,
                &Change {
                    to: Some(to),
                    code: Some(code),
                    message,
                    actor: "engine",
                    ..Default::default()
                },
            )
            .unwrap();
    }
    store
}

#[test]
fn dian_history_and_retry_work_on_the_data_dir_and_are_audited() {
    use syncctl::compliance::machine::Status;
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("engine");
    let store = compliance_data(&data);
    let dd = data.to_str().unwrap();

    let out = syncctl(
        &["--data-dir", dd, "dian", "history", "in_failed"],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("SETP990000001") && text.contains("FAILED"),
        "{text}"
    );
    assert!(text.contains("numbering not authorized"), "{text}");
    assert!(
        text.contains("AEP6009: the invoice numbering was rejected"),
        "the code in words: {text}"
    );
    // By DIAN number too; an unknown key is a usage error.
    let out = syncctl(
        &["--data-dir", dd, "dian", "history", "SETP990000002"],
        home.path(),
    );
    assert!(stdout(&out).contains("VALIDATED"));
    let out = syncctl(&["--data-dir", dd, "dian", "history", "nope"], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no invoice \"nope\""));

    // A validated invoice is not retried.
    let out = syncctl(&["--data-dir", dd, "dian", "retry", "in_ok"], home.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("only FAILED, REJECTED or RETRY"),
        "{}",
        stderr(&out)
    );

    // Retry all FAILED says how many first; without a terminal it wants --yes.
    let out = syncctl(
        &["--data-dir", dd, "dian", "retry", "--failed"],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout(&out).contains("1 FAILED invoices"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("--yes"));
    assert_eq!(
        store.invoice("in_failed").unwrap().unwrap().status,
        Status::Failed
    );

    let out = Command::new(BIN)
        .args(["--data-dir", dd, "dian", "retry", "--failed", "--yes"])
        .env("HOME", home.path())
        .env("USER", "ana")
        .env_remove("SUDO_USER")
        .env("SSH_CLIENT", "10.0.0.7 51234 22")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("retried 1 of 1 FAILED invoices"));
    // Read at Alegra before anything is sent again (a restored backup may not know the
    // document a newer copy sent for this number).
    let rec = store.invoice("in_failed").unwrap().unwrap();
    assert_eq!((rec.status, rec.attempts), (Status::Unknown, 0));
    let audit = store.recent_audit(10, 0).unwrap();
    assert!(
        audit
            .iter()
            // Audited as the engine audits the same command: its text, then its outcome.
            .any(|e| e.actor == "ana@10.0.0.7"
                && e.message == "retry-failed: retried 1 of 1 FAILED invoices"),
        "{audit:?}"
    );
    let h = store.invoice_history("in_failed").unwrap();
    assert!(
        h.last()
            .unwrap()
            .message
            .contains("operator ana@10.0.0.7 retried it")
    );
}

#[test]
fn dian_history_without_data_says_where_it_looked() {
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("none");
    let out = syncctl(
        &[
            "--data-dir",
            missing.to_str().unwrap(),
            "dian",
            "history",
            "x",
        ],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no syncctl data in"),
        "{}",
        stderr(&out)
    );
    assert!(!missing.exists(), "nothing created");
}

/// Starts `syncctl run --demo` on `data` and waits until it serves; the caller kills it.
fn serving_demo(
    cfg: &std::path::Path,
    data: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    let mut child = Command::new(BIN)
        .args(["run", "--demo", "--config", cfg.to_str().unwrap()])
        .args(["--data-dir", data.to_str().unwrap()])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("engine on http://"));
    assert!(ready, "the engine did not start");
    child
}

#[test]
fn an_engine_whose_database_was_lost_refuses_to_start_until_told_to_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[sandbox]\nlisten = \"127.0.0.1:0\"\nproducts = 10\nchange_interval_ms = 0\n",
    )
    .unwrap();
    let mut first = serving_demo(&cfg, &data, &[]);
    let _ = first.kill();
    let _ = first.wait();
    assert!(data.join("store.id").exists());
    for f in ["syncctl.db", "syncctl.db-wal", "syncctl.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    // Reading records never creates a database.
    let out = syncctl(
        &["dian", "history", "x", "--data-dir", data.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no syncctl data"), "{}", stderr(&out));
    assert!(!data.join("syncctl.db").exists());
    let args = [
        "run",
        "--demo",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let second = syncctl(&args, dir.path());
    assert_eq!(second.status.code(), Some(2));
    let err = stderr(&second);
    assert!(
        err.contains("refusing to start")
            && err.contains("store.id")
            && err.contains("--fresh-store"),
        "{err}"
    );
    let mut third = serving_demo(&cfg, &data, &["--fresh-store"]);
    let _ = third.kill();
    let _ = third.wait();
    // Started over once: the next start is an ordinary one.
    let mut fourth = serving_demo(&cfg, &data, &[]);
    let _ = fourth.kill();
    let _ = fourth.wait();
}

#[test]
fn dian_retry_goes_through_a_running_engine_and_is_audited_as_the_person() {
    use syncctl::compliance::machine::Status;
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("engine");
    let store = compliance_data(&data);
    drop(store);
    let dd = data.to_str().unwrap().to_owned();
    let mut engine = running_engine(home.path(), &data);
    let control = std::fs::read_to_string(data.join("control.json")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("control.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let retry = |key: &str| {
        Command::new(BIN)
            .args(["--data-dir", &dd, "dian", "retry", key])
            .env("HOME", home.path())
            .env("USER", "ana")
            .env_remove("SUDO_USER")
            .env("SSH_CLIENT", "10.0.0.7 51234 22")
            .output()
            .unwrap()
    };
    // An unknown invoice: the engine's 404, a usage error here.
    let out = retry("in_nobody");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = retry("in_failed");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let store = syncctl::store::Store::open(&data).unwrap();
    let audit = store.recent_audit(20, 0).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "ana@10.0.0.7" && e.message.starts_with("retry in_failed")),
        "{audit:?}"
    );
    assert_ne!(
        store.invoice("in_failed").unwrap().unwrap().status,
        Status::Failed
    );
    // It went through the engine's API: a control file with a wrong token is refused.
    std::fs::write(
        data.join("control.json"),
        control.replace("\"token\": \"", "\"token\": \"x"),
    )
    .unwrap();
    let out = retry("SETP990000002");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("token"), "{}", stderr(&out));
    // Reading the history needs no engine access, whoever may read the control file.
    std::fs::remove_file(data.join("control.json")).unwrap();
    let out = Command::new(BIN)
        .args(["--data-dir", &dd, "dian", "history", "in_failed"])
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Stopped: the control file goes with the engine, and the store is written directly.
    std::fs::write(data.join("control.json"), control).unwrap();
    let _ = Command::new("kill").arg(engine.0.id().to_string()).status();
    let status = engine.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!data.join("control.json").exists());
}

#[test]
fn ctl_sends_one_command_in_the_console_grammar_with_exit_codes() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("engine");
    drop(compliance_data(&data));
    let dd = data.to_str().unwrap().to_owned();
    let ctl = |args: &[&str]| {
        Command::new(BIN)
            .args(["--data-dir", &dd, "ctl"])
            .args(args)
            .env("HOME", home.path())
            .env("USER", "ana")
            .env_remove("SUDO_USER")
            .env_remove("SYNCCTL_TOKEN")
            .output()
            .unwrap()
    };
    // No engine: 3, nothing done.
    let out = ctl(&["pause", "compliance"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let mut engine = running_engine(home.path(), &data);
    // Not a command: 2, naming the word.
    let out = ctl(&["pause", "everything"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("pipeline"), "{}", stderr(&out));
    // Done: 0 and the engine's words; --json prints its reply.
    let out = ctl(&["pause", "compliance"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("paused"), "{}", stdout(&out));
    let out = ctl(&["--json", "resume", "compliance"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    // Refused by the engine: 1 with its reason.
    let out = ctl(&["retry", "in_nobody"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    // Under `sudo -u` (the service's user, to reach its data dir) the person is the
    // one who ran sudo.
    let out = Command::new(BIN)
        .args(["--data-dir", &dd, "ctl", "resume", "compliance"])
        .env("HOME", home.path())
        .env("USER", "syncctl")
        .env("SUDO_USER", "cleo")
        .env_remove("SYNCCTL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Audited as the person, in the grammar.
    let store = syncctl::store::Store::open(&data).unwrap();
    let audit = store.recent_audit(20, 0).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "ana" && e.message.starts_with("pause compliance")),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e.actor == "cleo" && e.message.starts_with("resume compliance")),
        "{audit:?}"
    );
    let _ = Command::new("kill").arg(engine.0.id().to_string()).status();
    let _ = engine.0.wait();
}

#[test]
fn ctl_journal_lists_each_action_with_its_actor_result_and_cli_equivalent() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("engine");
    drop(compliance_data(&data));
    let dd = data.to_str().unwrap().to_owned();
    let ctl = |args: &[&str]| {
        Command::new(BIN)
            .args(["--data-dir", &dd, "ctl"])
            .args(args)
            .env("HOME", home.path())
            .env("USER", "ana")
            .env_remove("SUDO_USER")
            .env("SSH_CLIENT", "10.0.0.7 51234 22")
            .env_remove("SYNCCTL_TOKEN")
            .output()
            .unwrap()
    };
    // Nothing reachable: no engine at the URL, or neither an engine nor a store.
    let out = ctl(&["journal", "--url", "http://127.0.0.1:1", "--token", "x"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let empty = home.path().join("empty");
    let out = syncctl(
        &["--data-dir", empty.to_str().unwrap(), "ctl", "journal"],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!empty.join("syncctl.db").exists(), "no store is created");
    let mut engine = running_engine(home.path(), &data);
    assert_eq!(ctl(&["pause", "compliance"]).status.code(), Some(0));
    assert_eq!(ctl(&["retry", "INV: 12"]).status.code(), Some(1));
    // A quoted keyword goes as the whole line in one argument.
    let out = ctl(&[r#"ack "*""#]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = ctl(&["journal"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    // Newest last: time (UTC, ISO), who, result, the CLI equivalent, the engine's words.
    let time = lines[0].split(' ').next().unwrap();
    assert!(
        time.len() == 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
        "{time}"
    );
    for (line, words) in lines.iter().zip([
        &[
            "ana@10.0.0.7",
            "done",
            "syncctl ctl pause compliance",
            "— paused compliance pipeline",
        ],
        &[
            "ana@10.0.0.7",
            "refused",
            "syncctl ctl retry 'INV: 12'",
            "— invoice \"INV: 12\" not found",
        ],
        &[
            "ana@10.0.0.7",
            "refused",
            r#"syncctl ctl 'ack "*"'"#,
            "— no unacknowledged alert matches \"*\"",
        ],
    ]) {
        for w in words {
            assert!(line.contains(w), "{w:?} not in {line}");
        }
    }
    // --json: the same entries, parseable; --limit keeps the newest.
    let out = ctl(&["journal", "--json", "--limit", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let journal: Vec<syncctl::protocol::JournalEntry> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    assert_eq!(journal.len(), 2);
    assert!(journal[0].id < journal[1].id, "newest last");
    assert_eq!(journal[0].command, "retry \"INV: 12\"");
    assert_eq!(journal[0].result, syncctl::protocol::JournalResult::Refused);
    // The equivalent, pasted into a shell, is the same command.
    let cli = journal[0].cli.clone().unwrap();
    let script = cli.replacen("syncctl ctl", "\"$BIN\" --data-dir \"$DD\" ctl", 1);
    let out = Command::new("sh")
        .args(["-c", &script])
        .env("BIN", BIN)
        .env("DD", &dd)
        .env("HOME", home.path())
        .env("USER", "bo")
        .env_remove("SUDO_USER")
        .env_remove("SSH_CLIENT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{script}: {}", stderr(&out));
    let out = ctl(&["journal", "--json", "--limit", "1"]);
    let newest: Vec<syncctl::protocol::JournalEntry> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (newest[0].actor.as_str(), newest[0].command.as_str()),
        ("bo", "retry \"INV: 12\"")
    );
    // Stopped: the journal is read from the store.
    let _ = Command::new("kill").arg(engine.0.id().to_string()).status();
    assert!(engine.0.wait().unwrap().success());
    let out = ctl(&["journal"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 4, "{}", stdout(&out));
    assert!(stdout(&out).contains("syncctl ctl pause compliance"));
}

/// Asking whether an engine serves a data dir creates nothing there (it took the
/// data-dir lock, which made the directory, and could hold the lock an engine starting
/// at that instant needed).
#[test]
fn asking_for_an_engine_creates_nothing() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("nothing-here");
    let out = Command::new(BIN)
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "ctl",
            "pause",
            "catalog",
        ])
        .env("HOME", home.path())
        .env_remove("SYNCCTL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!data.exists(), "the data dir was created by asking");
}

/// The QuickBooks counters of the sandbox a demo serves on `sandbox`.
async fn qb_counts(sandbox: &str) -> (u64, u64, u64) {
    let v = common::get_json(&format!("{sandbox}/_sandbox/stats")).await;
    let n = |k: &str| v["quickbooks"][k].as_u64().unwrap();
    (n("items_total"), n("queries"), n("cdc_requests"))
}

/// Reading every Item again each time the bulk index went stale held two whole indexes
/// and their pages at once, and the process kept the peak: a long demo's memory rose a
/// step every 10 minutes. The index is brought up to date with QuickBooks' change data
/// capture instead (one request, in place). `SYNCCTL_INDEX_TTL_SECS` shortens the 10
/// minutes to one second here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_item_index_follows_the_changes_instead_of_reading_every_item_again() {
    const N: u64 = 2500;
    syncctl::connectors::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[sandbox]\nlisten = \"127.0.0.1:0\"\nproducts = {N}\nlatency_ms = 0\nchange_interval_ms = 300\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--demo", "--config", cfg.to_str().unwrap()])
        .args(["--data-dir", data.to_str().unwrap()])
        .env("SYNCCTL_INDEX_TTL_SECS", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sandbox = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let (_, rest) = l.split_once("sandbox on ")?;
            Some(rest.split(';').next()?.trim().to_owned())
        })
        .expect("the demo did not start");
    std::thread::spawn(move || lines.for_each(drop));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    let wait = || tokio::time::sleep(std::time::Duration::from_millis(200));
    // The full sync, then a window in which 20 new products got their Items (each
    // group finds the index stale and refreshes it first).
    let (items, queries, cdc) = loop {
        let c = qb_counts(&sandbox).await;
        if c.0 >= N {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "not synced: {c:?}");
        wait().await;
    };
    let after = loop {
        let c = qb_counts(&sandbox).await;
        if c.0 >= items + 20 {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no new Items: {c:?}");
        wait().await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let (new, queries, cdc) = (after.0 - items, after.1 - queries, after.2 - cdc);
    eprintln!("{new} new Items: {queries} queries, {cdc} change data captures");
    // A whole read is 3 pages here: one a second would be ~20 queries beside the new
    // products' own name lookups (how many refreshes fall in the window depends on how
    // the new products were grouped: at least one).
    assert!(
        cdc >= 1,
        "the index was not followed: {cdc} change data captures"
    );
    assert!(
        queries <= 2 * new + 4,
        "{queries} queries for {new} new Items: the index was read whole again"
    );
}
