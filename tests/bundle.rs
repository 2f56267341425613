//! Incident bundles through the real interfaces: an engine serving the sandbox over
//! loopback, `syncctl ctl bundle` (the binary) writing the file, and `syncctl bundle
//! show` — the console over the file, on ratatui's TestBackend through the same
//! `update` path as the run loop, and the binary on bad input.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::io::Read;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;
use syncctl::console::screens;
use syncctl::console::state::{App, Tab};
use syncctl::console::theme::Theme;
use syncctl::console::update::{Effect, Msg, update};
use syncctl::frozen::FrozenBundle;
use syncctl::protocol::{Bundle, Command, CommandError, Link, Request};

const BIN: &str = env!("CARGO_BIN_EXE_syncctl");
/// The control API token this test's engine knows (a secret like the others).
const TOKEN: &str = "tok_bundle_test_SECRET_0123456789";

fn render(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| screens::draw(f, app)).unwrap();
    let buf = term.backend().buffer().clone();
    let mut text = String::new();
    for y in 0..h {
        for x in 0..w {
            text.push_str(buf[(x, y)].symbol());
        }
        text.push('\n');
    }
    text
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_holds_no_secret_and_opens_frozen_in_bundle_show() {
    let sb = common::sandbox(12, 7).await;
    let config = common::with_operator(common::config_for(&sb), TOKEN);
    // Every secret the engine runs with, as the test knows them (not as the code
    // under test lists them).
    let (webhook_secret, refresh_token) = {
        let world = sb.sandbox.lock();
        (
            world.world.webhook_secret.clone(),
            world.world.refresh_token.clone(),
        )
    };
    let secrets: Vec<String> = vec![
        TOKEN.into(),
        syncctl::sandbox::STRIPE_API_KEY.into(),
        webhook_secret,
        syncctl::sandbox::QB_CLIENT_SECRET.into(),
        refresh_token,
        syncctl::sandbox::alegra::ALEGRA_TOKEN.into(),
        syncctl::sandbox::alegra::TECHNICAL_KEY.into(),
    ];
    for (s, configured) in secrets.iter().zip([
        config.server.tokens[0].token.expose(),
        config.stripe.api_key.as_ref().unwrap().expose(),
        config.stripe.webhook_secret.as_ref().unwrap().expose(),
        config.quickbooks.client_secret.as_ref().unwrap().expose(),
        config.quickbooks.refresh_token.as_ref().unwrap().expose(),
        config.alegra.token.as_ref().unwrap().expose(),
        config.alegra.technical_key.as_ref().unwrap().expose(),
    ]) {
        assert_eq!(s, configured, "the engine runs with the known secrets");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut served = common::engine(config, dir.path()).await;
    common::until_idle(&served.engine, 12).await;
    let base = format!("http://{}", served.server_addr);
    let client = reqwest::Client::new();
    let command = |text: String| {
        client
            .post(format!("{base}/api/v1/commands"))
            .bearer_auth(TOKEN)
            .json(&json!({ "command": text }))
            .send()
    };
    // Secrets where a careless operator puts them: typed into commands that are
    // refused and audited word for word.
    for s in &secrets {
        let r = command(format!("retry {s}")).await.unwrap();
        assert_eq!(r.status(), 404, "{s}");
    }
    // A breaker transition and back.
    for action in ["force-open", "close"] {
        let r = command(format!("breaker quickbooks {action}"))
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let events: serde_json::Value = client
        .get(format!("{base}/api/v1/events?limit=100"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let trail = events.to_string();
    assert!(
        secrets.iter().all(|s| trail.contains(s.as_str())),
        "the audit trail holds the typed secrets, so the bundle must cut them out"
    );

    let file = dir.path().join("incident.json.gz");
    let out = tokio::process::Command::new(BIN)
        .args(["ctl", "bundle", "--url", &base, "--token", TOKEN, "--out"])
        .arg(&file)
        .args(["--events", "200"])
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("syncctl bundle show"), "{stdout}");

    // The raw bytes, then unzipped: no secret anywhere.
    let raw = std::fs::read(&file).unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzip");
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut json)
        .unwrap();
    for s in &secrets {
        assert!(!contains(&raw, s), "{s} in the file");
        assert!(!contains(&json, s), "{s} in the unzipped bundle");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner only");
    }

    let bundle = Bundle::decode(&raw).unwrap();
    assert!(bundle.version.starts_with("syncctl "), "{}", bundle.version);
    assert!(bundle.written_ms >= bundle.started_ms);
    assert!(bundle.taken_by.contains("ops"), "{}", bundle.taken_by);
    for key in [
        "api_key",
        "webhook_secret",
        "client_secret",
        "refresh_token",
        "technical_key",
    ] {
        assert!(
            bundle
                .config
                .lines()
                .any(|l| l.starts_with(key) && l.contains("[redacted]")),
            "{key} redacted in\n{}",
            bundle.config
        );
    }
    assert!(
        bundle.config.contains("rate_limit_per_min"),
        "the rest of the config is kept"
    );
    assert!(
        bundle
            .journal
            .iter()
            .any(|e| e.message.contains("retry [redacted]")),
        "operator actions kept, secret cut: {:?}",
        bundle.journal
    );
    assert!(
        bundle
            .transitions
            .iter()
            .any(|e| e.entity == "quickbooks" && e.message.contains("FORCED_OPEN")),
        "{:?}",
        bundle.transitions
    );
    assert!(bundle.snapshot.audit.len() >= bundle.journal.len());
    assert!(!bundle.snapshot.downstreams.is_empty(), "the snapshot");
    served.shutdown().await;

    // `bundle show`: the same screens, frozen; actions refused, saying why.
    let mut frozen = FrozenBundle::open(&file).unwrap();
    let mut app = App::new(frozen.snapshots().borrow().clone(), Theme::ansi());
    let link = frozen.state().borrow().clone();
    update(&mut app, Msg::Link(link));
    for (w, h) in [(80, 24), (120, 40)] {
        let screen = render(&app, w, h);
        assert!(screen.contains("BUNDLE"), "{screen}");
        assert!(screen.contains("READ-ONLY"), "{screen}");
    }
    let wide = render(&app, 120, 40);
    assert!(wide.contains("incident.json.gz"), "{wide}");
    for (tab, key) in [
        (Tab::Circuits, 'o'),
        (Tab::Overview, 'p'),
        (Tab::Alerts, 'a'),
    ] {
        app.tab = tab;
        let effects = update(&mut app, Msg::Key(KeyEvent::from(KeyCode::Char(key))));
        assert!(
            !effects.iter().any(|e| matches!(e, Effect::Send(_))),
            "{key}: nothing sent"
        );
        let flash = app.flash.clone().unwrap_or_default();
        assert!(
            flash.contains("incident bundle") && flash.contains("not possible"),
            "{key}: {flash}"
        );
    }
    app.tab = Tab::Events;
    let events = render(&app, 120, 40);
    assert!(events.contains("retry [redacted]"), "{events}");
    // Whatever reaches the link is refused too.
    let reply = frozen
        .send(Request::new("x", Command::Resync {}))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        matches!(reply, Err(CommandError::Forbidden { .. })),
        "{reply:?}"
    );
    frozen.shutdown().await;
}

#[test]
fn bundle_show_refuses_a_file_that_is_not_a_bundle_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let not = dir.path().join("notes.json");
    std::fs::write(&not, "{\"hello\": 1}").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["bundle", "show"])
        .arg(&not)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notes.json") && err.contains("not an incident bundle"),
        "{err}"
    );
    let missing = dir.path().join("gone.json.gz");
    let out = std::process::Command::new(BIN)
        .args(["bundle", "show"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gone.json.gz"));
}
