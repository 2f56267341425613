//! Threshold what-if and temporary thresholds through the real interfaces: an engine on
//! the sandbox over loopback, commands over its HTTP API, and the console's Settings
//! screen on ratatui's TestBackend, driven through the same `update` path as the run
//! loop, its queries answered by the engine. (That a what-if count equals what a
//! replay of the same series produces is proven on injected series and time in
//! `telemetry::tests::a_what_if_replay_counts_the_firings_the_rules_really_produce`.)

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;
use syncctl::console::screens;
use syncctl::console::state::{App, Tab};
use syncctl::console::theme::Theme;
use syncctl::console::update::{Effect, Msg, update};
use syncctl::protocol::{Answer, Query};

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

fn key(app: &mut App, code: KeyCode) -> Vec<Effect> {
    update(app, Msg::Key(KeyEvent::from(code)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_show_a_what_if_before_applying_and_a_temporary_threshold_comes_back() {
    let sb = common::sandbox(5, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut served = common::engine(common::config_for(&sb), dir.path()).await;
    let frontend = served.engine.frontend();
    // A few seconds of history to replay.
    common::eventually(20, "the telemetry ticks", || {
        let s = frontend.latest();
        async move { (!s.telemetry.thresholds.is_empty()).then_some(()) }
    })
    .await;

    // The console: Settings, the first threshold (alerts.error_rate_percent, 10),
    // staged at 5: the what-if is asked of the engine before anything is applied.
    let mut app = App::new(frontend.latest(), Theme::ansi());
    app.tab = Tab::Settings;
    let (name, current) = app.selected_setting().unwrap();
    assert_eq!(
        (name.as_str(), current),
        ("alerts.error_rate_percent", 10.0)
    );
    key(&mut app, KeyCode::Enter);
    for _ in 0..4 {
        key(&mut app, KeyCode::Backspace);
    }
    for c in "5 for 1h".chars() {
        key(&mut app, KeyCode::Char(c));
    }
    let effects = key(&mut app, KeyCode::Enter);
    let asked: Vec<Query> = effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Ask(q) => Some(q),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked,
        vec![Query::WhatIf {
            name: "alerts.error_rate_percent".into(),
            value: 5.0
        }]
    );
    assert_eq!(app.staged_for, Some(3600));
    let before = render(&app, 120, 40);
    assert!(before.contains("replaying the last hour"), "{before}");
    for query in asked {
        let reply = frontend.query(query.clone()).await;
        let Ok(Answer::WhatIf(w)) = &reply else {
            panic!("{reply:?}")
        };
        assert!(w.hour.secs >= 1, "{w:?}");
        assert_eq!((w.current, w.proposed), (10.0, 5.0));
        assert!(
            w.day.is_none(),
            "an hour of history is all the engine keeps"
        );
        update(
            &mut app,
            Msg::Answer {
                query,
                reply,
                epoch: 0,
            },
        );
    }
    for (w, h) in [(80, 24), (120, 40)] {
        let screen = render(&app, w, h);
        assert!(
            screen.contains("what-if alerts.error_rate_percent 10 → 5"),
            "{w}x{h}\n{screen}"
        );
        assert!(screen.contains("staged for 1h"), "{w}x{h}\n{screen}");
    }
    // Nothing was applied by asking.
    assert_eq!(
        served.engine.frontend().latest().telemetry.thresholds[0].1,
        10.0
    );
    // `A`: the confirmation shows the what-if beside the diff and the expiry.
    key(&mut app, KeyCode::Char('A'));
    let confirm = render(&app, 120, 40);
    assert!(confirm.contains("For 1h, then each"), "{confirm}");
    assert!(confirm.contains("what-if"), "{confirm}");
    key(&mut app, KeyCode::Right);
    let sent = key(&mut app, KeyCode::Enter)
        .into_iter()
        .find_map(|e| match e {
            Effect::Send(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        sent.command.to_string(),
        "set alerts.error_rate_percent 5 for 1h"
    );
    let reply = frontend.request(sent).await.unwrap();
    assert!(reply.message.contains("back to"), "{}", reply.message);

    // In force, with its return shown; a bad expiry over the API is refused, naming it.
    let s = frontend.latest();
    assert_eq!(s.telemetry.thresholds[0].1, 5.0);
    assert_eq!(s.telemetry.expiring.len(), 1);
    assert_eq!(s.telemetry.expiring[0].back_to, 10.0);
    let mut app = App::new(s, Theme::ansi());
    app.tab = Tab::Settings;
    let screen = render(&app, 120, 40);
    assert!(screen.contains("↺"), "{screen}");
    assert!(screen.contains("then back to 10"), "{screen}");
    let base = format!("http://{}", served.server_addr);
    let token = syncctl::server::local::read(dir.path()).unwrap().token;
    for bad in [
        "set alerts.error_rate_percent 7 for 8d",
        "set alerts.error_rate_percent 7 for 1h extra",
    ] {
        let r = reqwest::Client::new()
            .post(format!("{base}/api/v1/commands"))
            .bearer_auth(&token)
            .json(&json!({ "command": bad }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    // An hour later (the engine's clock), the old value is back, and the audit trail
    // says whose change expired.
    served.engine.wall_clock.advance(3_601_000);
    let back = common::eventually(10, "the old value back", || {
        let s = frontend.latest();
        async move { (s.telemetry.thresholds[0].1 == 10.0).then_some(s) }
    })
    .await;
    assert!(back.telemetry.expiring.is_empty());
    let audit = common::eventually(10, "the expiry audited", || {
        let f = frontend.clone();
        async move {
            let filter = syncctl::protocol::AuditFilter {
                kinds: vec!["thresholds".into()],
                limit: 10,
                ..Default::default()
            };
            match f.query(Query::Audit { filter }).await {
                Ok(Answer::Audit { entries }) if !entries.is_empty() => Some(entries),
                _ => None,
            }
        }
    })
    .await;
    assert!(
        audit[0]
            .message
            .contains("alerts.error_rate_percent back to 10 (set to 5 by"),
        "{:?}",
        audit[0]
    );
    // A console (or an attached client) searching the trail with a control character
    // is told which field is wrong, as the API says it, not that the store failed.
    for query in [
        Query::Audit {
            filter: syncctl::protocol::AuditFilter {
                text: Some("back\0to".into()),
                limit: 10,
                ..Default::default()
            },
        },
        Query::AuditCount {
            filter: syncctl::protocol::AuditFilter {
                text: Some("back\0to".into()),
                ..Default::default()
            },
        },
    ] {
        match frontend.query(query).await {
            Err(e @ syncctl::protocol::CommandError::Invalid { .. }) => {
                assert_eq!(e.to_string(), "text: contains control characters")
            }
            other => panic!("{other:?}"),
        }
    }
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_threshold_and_a_silence_outlive_a_restart() {
    let sb = common::sandbox(5, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("syncctl.toml");
    let config = || {
        let mut c = match syncctl::config::Config::load(&file) {
            Ok(loaded) => {
                let mut c = common::config_for(&sb);
                c.alerts = loaded.alerts;
                c.anomaly = loaded.anomaly;
                c
            }
            Err(_) => common::config_for(&sb),
        };
        c.source = Some(file.clone());
        c
    };
    let data = dir.path().join("data");
    let mut first = common::engine(config(), &data).await;
    let f = first.engine.frontend();
    for text in [
        "set alerts.error_rate_percent 5 for 1h",
        "silence error_rate 2h",
    ] {
        let r = f
            .request(syncctl::protocol::Request::new(
                "ana",
                text.parse().unwrap(),
            ))
            .await;
        assert!(r.is_ok(), "{text}: {r:?}");
    }
    let until = f.latest().telemetry.expiring[0].until_ms;
    first.shutdown().await;

    // The next process: the value in force (from the file) with its return, and the
    // silence still running.
    let mut second = common::engine(config(), &data).await;
    let f = second.engine.frontend();
    let s = f.latest();
    assert_eq!(
        s.telemetry.thresholds[0],
        ("alerts.error_rate_percent".into(), 5.0)
    );
    assert_eq!(s.telemetry.expiring.len(), 1, "{:?}", s.telemetry.expiring);
    assert_eq!(
        (
            s.telemetry.expiring[0].back_to,
            s.telemetry.expiring[0].until_ms
        ),
        (10.0, until)
    );
    assert_eq!(s.telemetry.silences.len(), 1, "{:?}", s.telemetry.silences);
    assert_eq!(s.telemetry.silences[0].matcher, "error_rate");
    // Its time comes in this process: back to 10, in force and in the file.
    second.engine.wall_clock.advance(3_601_000);
    common::eventually(10, "the old value back", || {
        let s = f.latest();
        async move { (s.telemetry.thresholds[0].1 == 10.0).then_some(()) }
    })
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("error_rate_percent = 10"), "{text}");
    second.shutdown().await;
    let third = common::engine(config(), &data).await;
    assert!(
        third
            .engine
            .frontend()
            .latest()
            .telemetry
            .expiring
            .is_empty()
    );
}
