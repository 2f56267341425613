//! The two-process setup (`syncctl sandbox` in one process, the engine in another):
//! `--print-config` asks the sandbox that listens for its config instead of computing
//! one from its own flags, and an engine whose QuickBooks refresh token is refused says
//! so — on `/health` as an error with the fix, and on the console's Overview.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{Reaped, free_port};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_syncctl");

fn print_config(addr: &str, home: &std::path::Path) -> (String, String) {
    let out = Command::new(BIN)
        .args(["sandbox", "--listen", addr, "--print-config"])
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refresh_token_of(config: &str) -> String {
    syncctl::config::Config::parse(config, std::path::Path::new("printed"))
        .unwrap()
        .quickbooks
        .refresh_token
        .unwrap()
        .expose()
        .to_owned()
}

/// What the sandbox's token endpoint says to `refresh_token` (and the new one).
async fn refresh(base: &str, refresh_token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/oauth2/v1/tokens/bearer"))
        .basic_auth(
            syncctl::sandbox::QB_CLIENT_ID,
            Some(syncctl::sandbox::QB_CLIENT_SECRET),
        )
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Point 16: a sandbox started with `--seed 7`, asked without the flag, and asked again
/// after its refresh token rotated: each time the config printed is the running
/// sandbox's, and its refresh token is accepted. With nothing listening, the config is
/// computed from the flags, and stderr says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_config_asks_the_sandbox_that_listens() {
    syncctl::connectors::install_crypto();
    let home = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{addr}");

    // Nothing listens yet: computed from the flags (said on stderr, checked below).
    let (computed, computed_note) = print_config(&addr, home.path());

    let mut child = Reaped(
        Command::new(BIN)
            .args([
                "sandbox",
                "--listen",
                &addr,
                "--seed",
                "7",
                "--products",
                "5",
            ])
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_DATA_HOME", home.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let ready = BufReader::new(child.0.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("syncctl sandbox on http://"));
    assert!(ready, "the sandbox did not start");

    let (asked, note) = print_config(&addr, home.path());
    assert!(!note.contains("no sandbox listens"), "{note}");
    let token = refresh_token_of(&asked);
    assert_ne!(
        token,
        refresh_token_of(&computed),
        "seed 7's world, not the default seed's"
    );
    let config = syncctl::config::Config::parse(&asked, std::path::Path::new("printed")).unwrap();
    assert_eq!(config.stripe.base_url.as_deref(), Some(base.as_str()));
    assert!(config.missing_live_keys().is_empty());

    // An engine rotates the refresh token; the config asked for now has the new one.
    let (status, body) = refresh(&base, &token).await;
    assert_eq!(status, 200, "{body}");
    let (asked_again, _) = print_config(&addr, home.path());
    let rotated = refresh_token_of(&asked_again);
    assert_ne!(rotated, token, "the token as last rotated");
    let (status, body) = refresh(&base, &rotated).await;
    assert_eq!(status, 200, "the printed token is accepted: {body}");
    assert!(
        computed_note.contains("no sandbox listens"),
        "computing is said: {computed_note}"
    );
}

/// Point 16, second half: an engine whose refresh token QuickBooks refuses
/// (`invalid_grant`) says so where an operator looks first: `/health` lists it among
/// its errors with the fix, and the Overview says it in its ACTION NEEDED box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_is_an_error_on_health_and_the_overview() {
    let sb = common::sandbox(5, 17).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config_for(&sb);
    cfg.quickbooks.refresh_token = Some(syncctl::config::Secret::new("RT-superseded-long-ago"));
    let mut engine = common::engine(cfg, dir.path()).await;
    let url = format!("http://{}/health", engine.server_addr);
    let health = common::eventually(30, "/health naming the refused token", || async {
        let h = common::get_json(&url).await;
        if std::env::var_os("SHOW_HEALTH").is_some() {
            eprintln!("{h:#}");
        }
        h["errors"]
            .as_array()?
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("invalid_grant")))
            .then_some(h)
    })
    .await;
    let error = health["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .find(|e| e.contains("invalid_grant"))
        .unwrap()
        .to_owned();
    assert!(
        error.contains("quickbooks.refresh_token"),
        "the error says what to set: {error}"
    );
    assert!(
        !error.contains("RT-superseded-long-ago"),
        "never the secret: {error}"
    );
    assert!(
        error.contains(&format!(
            "syncctl sandbox --listen {} --print-config",
            sb.addr
        )),
        "against a sandbox on this machine, where its token is: {error}"
    );

    // The Overview, drawn from the engine's own snapshot.
    let snapshot = engine.snapshot.borrow().clone();
    let app = syncctl::console::state::App::new(
        Arc::clone(&snapshot),
        syncctl::console::theme::Theme::ansi(),
    );
    for (w, h) in [(80, 24), (120, 40)] {
        let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).unwrap();
        term.draw(|f| syncctl::console::screens::draw(f, &app))
            .unwrap();
        let buf = term.backend().buffer().clone();
        let text: String = (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect::<String>()
                    + "\n"
            })
            .collect();
        assert!(text.contains("ACTION NEEDED"), "{w}×{h}:\n{text}");
        assert!(text.contains("invalid_grant"), "{w}×{h}:\n{text}");
        assert!(
            text.contains("quickbooks.refresh_token"),
            "{w}×{h}:\n{text}"
        );
        assert!(
            text.contains("--print-config"),
            "the sandbox's way out too: {w}×{h}:\n{text}"
        );
    }
    engine.shutdown().await;
}
