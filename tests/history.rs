//! History that survives a restart (issue 17 point 6), through the real interfaces: an
//! engine on the sandbox over loopback gathers an hour's charts, fires an alert that
//! an operator acknowledges, a silence and worker bounds (over its HTTP API); it
//! stops, and a new engine on the same data dir shows the same over HTTP and on the
//! console (ratatui's TestBackend). That the restored 1-hour charts are bucket for
//! bucket what they were, with the downtime a gap, is proven on injected time in
//! `telemetry::tests::charts_restored_from_kept_points_are_the_hour_as_it_was_and_the_downtime_a_gap`.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::{Value, json};
use syncctl::config::Config;
use syncctl::console::screens;
use syncctl::console::state::{App, Tab};
use syncctl::console::theme::Theme;

const OPS: &str = "ops-token-history-0123456789";
const ALERT: &str = "consecutive_failures/quickbooks";

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

fn config(sb: &syncctl::sandbox::SandboxServer) -> Config {
    let mut c = common::with_operator(common::config_for(sb), OPS);
    c.alerts.for_secs = 0;
    c
}

async fn get(base: &str, path: &str) -> Value {
    common::api(base, OPS, "GET", path, None).await.1
}

async fn command(base: &str, text: &str) -> Value {
    let (status, body) = common::api(
        base,
        OPS,
        "POST",
        "/api/v1/commands",
        Some(json!({ "command": text })),
    )
    .await;
    assert!((200..300).contains(&status), "{text}: {status} {body}");
    body
}

fn chart<'a>(charts: &'a [Value], name: &str) -> Option<&'a Vec<Value>> {
    charts
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["h1"].as_array())
}

fn peak(points: &[Value]) -> Option<f64> {
    points.iter().filter_map(Value::as_f64).reduce(f64::max)
}

fn filled(points: &[Value]) -> usize {
    points.iter().filter(|v| !v.is_null()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_alerts_acknowledgements_silences_and_worker_bounds_survive_a_restart() {
    let sb = common::sandbox(30, 8).await;
    let sandbox = format!("http://{}", sb.addr);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = common::engine(config(&sb), &data).await;
    let base = format!("http://{}", first.server_addr);
    sb.sandbox
        .set_webhook_url(Some(format!("{base}/webhooks/stripe")));
    common::until_idle(&first.engine, 30).await;

    // QuickBooks goes down while changes come in: the failed calls in a row fire the
    // critical alert; an operator acknowledges it, silences another and bounds the
    // workers.
    common::faults(&sandbox, json!({"service": "quickbooks", "outage": true})).await;
    common::post_json(&sandbox, "/_sandbox/catalog/changes", json!({"count": 20})).await;
    common::eventually(60, "the alert firing", || {
        let base = base.clone();
        async move {
            let a = get(&base, "/api/v1/alerts").await;
            a["active"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == ALERT && x["phase"] == "firing")
                .then_some(())
        }
    })
    .await;
    command(&base, &format!("ack {ALERT}")).await;
    command(&base, "silence queue_depth 2h").await;
    command(&base, "workers catalog 2-6").await;
    let before = get(&base, "/api/v1/alerts").await;
    let alert_before = before["active"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == ALERT)
        .unwrap()
        .clone();
    assert_eq!(alert_before["acked_by"], "api:ops@127.0.0.1");
    let history_before = before["history"].as_array().unwrap().clone();
    let firings = |h: &[Value]| {
        h.iter()
            .filter(|n| n["id"] == ALERT && n["phase"] == "firing")
            .count()
    };
    assert_eq!(firings(&history_before), 1, "{history_before:?}");
    first.shutdown().await;
    // The charts as the first engine left them: its last snapshot, published after
    // its last second of telemetry.
    let last = first.engine.frontend().latest();
    let charts_before = serde_json::to_value(&last.telemetry.charts).unwrap();
    let charts_before = charts_before.as_array().unwrap();
    let seconds_before = last
        .telemetry
        .charts
        .iter()
        .find(|c| c.name == "items_per_sec")
        .map(|c| c.h1.iter().flatten().count())
        .unwrap();
    assert!(seconds_before > 0);

    // A new process on the same data dir; QuickBooks answers again meanwhile.
    common::faults(&sandbox, json!({"service": "quickbooks", "outage": false})).await;
    let mut second = common::engine(config(&sb), &data).await;
    let base = format!("http://{}", second.server_addr);
    let snap = get(&base, "/api/v1/snapshot").await;
    let after = get(&base, "/api/v1/alerts").await;

    // The alert: still firing, since when it fired, acknowledged by the same operator,
    // and not notified a second time; the history as it was.
    let alert_after = after["active"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == ALERT)
        .unwrap_or_else(|| panic!("{ALERT} not active after the restart: {after}"));
    assert_eq!(alert_after["phase"], "firing", "{alert_after}");
    assert_eq!(alert_after["since_ms"], alert_before["since_ms"]);
    assert_eq!(alert_after["acked_by"], alert_before["acked_by"]);
    let history_after = after["history"].as_array().unwrap();
    let at = history_after
        .iter()
        .position(|n| *n == history_before[0])
        .unwrap_or_else(|| panic!("the history before the restart is gone: {after}"));
    assert_eq!(
        history_after[at..],
        history_before[..history_after.len() - at],
        "the history intact"
    );
    assert_eq!(firings(history_after), 1, "no second notification");
    // The silence and the worker bounds.
    let silence = after["silences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["matcher"] == "queue_depth")
        .unwrap_or_else(|| panic!("{after}"));
    assert_eq!(silence, &before["silences"][0]);
    assert_eq!(snap["catalog"]["workers_min"], 2, "{}", snap["catalog"]);
    assert_eq!(snap["catalog"]["workers_max"], 6);
    let target = snap["catalog"]["workers"].as_u64().unwrap();
    assert!((2..=6).contains(&target), "{target}");

    // The charts of the last hour, as the console reads them (the snapshot; the HTTP
    // one carries no series): a series charted by its max peaks where it did; the
    // throughput shows the work done before the restart.
    let charts_after =
        serde_json::to_value(&second.engine.frontend().latest().telemetry.charts).unwrap();
    let charts_after = charts_after.as_array().unwrap();
    let mut compared = Vec::new();
    for c in charts_before {
        let name = c["name"].as_str().unwrap();
        let was = c["h1"].as_array().unwrap();
        if filled(was) == 0 {
            continue;
        }
        let is = chart(charts_after, name).unwrap_or_else(|| panic!("{name} restored"));
        if name == "error_rate:quickbooks" {
            // QuickBooks answers again: what this process measures is no higher.
            assert_eq!(peak(is), peak(was), "{name}: {is:?} against {was:?}");
        } else if name.starts_with("latency_") || name.starts_with("error_rate:") {
            assert!(peak(is) >= peak(was), "{name}: {is:?} against {was:?}");
        } else {
            assert!(
                filled(is) + 1 >= filled(was),
                "{name}: {} of {} buckets",
                filled(is),
                filled(was)
            );
        }
        compared.push(name.to_owned());
    }
    assert!(
        compared.iter().any(|n| n == "latency_p95:quickbooks")
            && compared.iter().any(|n| n == "error_rate:quickbooks"),
        "{compared:?}"
    );
    let items = chart(charts_after, "items_per_sec").unwrap();
    assert!(peak(items).unwrap() > 0.0, "{items:?}");

    // On the console: the Throughput screen's hour, the Alerts screen.
    let mut app = App::new(second.engine.frontend().latest(), Theme::ansi());
    app.tab = Tab::Throughput;
    app.chart_window = 2;
    let screen = render(&app, 120, 40);
    let title = screen
        .lines()
        .find_map(|l| {
            l.split("Invoices/s")
                .next()
                .filter(|t| t.contains("Items/s · 1 h"))
        })
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(!title.contains("peak 0.0"), "{screen}");
    app.tab = Tab::Alerts;
    for (w, h) in [(80, 24), (120, 40)] {
        let screen = render(&app, w, h);
        assert!(
            screen.contains("consecutive_failures/qu"),
            "{w}x{h}\n{screen}"
        );
        assert!(screen.contains("firing"), "{w}x{h}\n{screen}");
    }
    let screen = render(&app, 120, 40);
    assert!(screen.contains("api:ops"), "acknowledged by: {screen}");

    second.shutdown().await;
}

/// The history is written while the engine runs (every finished 10 s block, off the
/// publisher's loop), not only when it stops: a `kill -9` keeps all but the block being
/// filled, and the next process starts from it.
#[test]
fn a_killed_engine_leaves_the_history_it_flushed_while_running() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let mut engine = common::running_engine(home.path(), &data);
    let db = data.join("syncctl.db");
    let kept = |db: &std::path::Path| -> (i64, i64) {
        let Ok(conn) =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        else {
            return (0, 0);
        };
        let points = conn
            .query_row(
                "SELECT COUNT(*) FROM series_points WHERE series = 'items_per_sec'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        let scaler = conn
            .query_row(
                "SELECT COUNT(*) FROM engine_state WHERE key = 'catalog.autoscaler'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        (points, scaler)
    };
    // Polled: the first block ends within 10 s of the start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let (points, scaler) = loop {
        let (points, scaler) = kept(&db);
        if points > 0 && scaler > 0 {
            break (points, scaler);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing kept while running: {points} points, {scaler} auto-scaler states"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    engine.0.kill().unwrap();
    engine.0.wait().unwrap();
    let after = kept(&db);
    assert!(after.0 >= points && after.1 == scaler, "{after:?}");
    // The next process opens the store with them and keeps going.
    let mut next = common::running_engine(home.path(), &data);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while kept(&db).0 <= after.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the next process adds to the kept points"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    next.0.kill().unwrap();
    let _ = next.0.wait();
}

/// `syncctl run` waits for a signal in a `select!` against the engine's own end, so
/// that wait is dropped unfinished; the shutdown after it must still wait for the
/// drain: the `engine stopped` line and the data dir's lock released when it returns.
/// (The dropped wait took the engine's "done" with it: a SIGINT's shutdown returned at
/// once and the process exited mid-drain, history and audit line lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_after_a_dropped_wait_still_waits_for_the_drain() {
    let sb = common::sandbox(5, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    common::until_idle(&engine.engine, 5).await;
    // Work in flight at the stop, each QuickBooks call 600 ms: the drain takes that long.
    let sandbox = format!("http://{}", sb.addr);
    sb.sandbox.set_webhook_url(Some(format!(
        "http://{}/webhooks/stripe",
        engine.server_addr
    )));
    common::faults(
        &sandbox,
        json!({"service": "quickbooks", "latency_ms": 600}),
    )
    .await;
    common::post_json(&sandbox, "/_sandbox/catalog/changes", json!({"count": 5})).await;
    common::eventually(10, "a catalog job in flight", || async {
        (engine.engine.snapshot.borrow().catalog.in_flight > 0).then_some(())
    })
    .await;
    // The loser of run_headless's select!: polled, then dropped.
    let waited =
        tokio::time::timeout(std::time::Duration::from_millis(20), engine.engine.wait()).await;
    assert!(waited.is_err(), "the engine stopped on its own");
    engine.shutdown().await;
    let db = rusqlite::Connection::open(dir.path().join("syncctl.db")).unwrap();
    let stopped: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE message = 'engine stopped'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        stopped, 1,
        "shutdown returned before the engine had drained"
    );
}
