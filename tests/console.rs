//! The console drawn on ratatui's TestBackend from a fixed snapshot: each screen at
//! 80×24 and 120×40 compared with committed text snapshots (regenerate with
//! `UPDATE_SNAPSHOTS=1 cargo test --test console`), plus key handling — every change
//! goes through the console's one `update(msg) -> effects` path, as in the run loop.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use syncctl::console::screens;
use syncctl::console::state::{App, Tab};
use syncctl::console::theme::Theme;
use syncctl::console::update::{Effect, Msg, update};
use syncctl::protocol::{
    AlertMatcher, AuditEntry, BreakerAction, CacheScope, CatalogCounts, CatalogView, Command,
    ErrorLine, FullSyncState, Mode, Pipeline, Service, Snapshot, ThresholdChange,
};

const T0: i64 = 1_795_000_000_000; // a fixed instant (ms)

fn snapshot() -> Snapshot {
    let audit = (0..40)
        .map(|i| AuditEntry {
            trace_id: None,
            id: 100 - i,
            at_ms: T0 - i * 1000,
            kind: if i == 3 {
                "operator".into()
            } else {
                "item".into()
            },
            entity: format!("prod_{:014}", i),
            actor: if i == 3 {
                "ana@10.0.0.7".into()
            } else {
                "engine".into()
            },
            message: if i == 3 {
                "paused catalog pipeline".into()
            } else {
                format!("created Item {} \"Café Premium #{i}\"", 500 - i)
            },
        })
        .collect();
    Snapshot {
        mode: Mode::Sandbox,
        server_addr: "127.0.0.1:9870".into(),
        catalog: CatalogView {
            paused: false,
            counts: CatalogCounts {
                products_seen: 2500,
                synced: 1234,
                queued: 180,
                in_flight: 8,
                failed: 2,
                rejected: 1,
                oldest_queued_ms: Some(T0 - 42_000),
            },
            full_sync: FullSyncState {
                after: Some("prod_x".into()),
                pages: 14,
                listed: 1400,
                done: false,
            },
            workers: 8,
            in_flight: 8,
            workers_busy: 6,
            per_second: (0..120).map(|i| (i % 17) * 10).collect(),
            completed: 1240,
            errors: 3,
            webhooks_accepted: 12,
            webhooks_duplicate: 1,
            webhooks_rejected: 0,
            last_reconcile_ms: Some(T0 - 30_000),
            ..resilience_view()
        },
        recent_errors: vec![ErrorLine {
            at_ms: T0 - 5000,
            entity: "prod_00000000000042".into(),
            message:
                "quickbooks 400 fault 2170: Invalid String Data: Name cannot contain a colon (:)"
                    .into(),
        }],
        audit,
        token_refreshes: 1,
        draining: false,
        downstreams: downstreams(),
        compliance: Default::default(),
        telemetry: telemetry(),
        profile: Vec::new(),
        config_file: Some("/home/ana/.config/syncctl/config.toml".into()),
        reconciliation: reconciliation(),
    }
}

/// Two drifted Items, one product with no Item and one Item with no product.
fn reconciliation() -> syncctl::protocol::ReconciliationView {
    use syncctl::protocol::{Discrepancy, DiscrepancyKind, ReconciliationView, Side, Tally};
    let side = |name: &str, price: f64, active: bool| Side {
        name: name.into(),
        price: Some(price),
        active,
        currency: None,
    };
    let row = |kind,
               pid: Option<&str>,
               item: Option<&str>,
               fields: &[&str],
               stripe: Option<Side>,
               qb,
               amount,
               currency: &str| {
        Discrepancy {
            kind,
            product_id: pid.map(Into::into),
            item_id: item.map(Into::into),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            stripe: stripe.map(|s| Side {
                currency: Some(currency.into()),
                ..s
            }),
            quickbooks: qb,
            amount,
            currency: currency.into(),
            since_ms: T0 - 65_000,
        }
    };
    let money = |currency: &str, amount: f64| syncctl::protocol::Money {
        currency: currency.into(),
        amount,
    };
    ReconciliationView {
        ready: true,
        status: "live".into(),
        products: 2500,
        items: 2498,
        in_sync: 2496,
        unsyncable: 1,
        missing: Tally {
            count: 1,
            amount: 49.9,
            amounts: vec![money("USD", 49.9)],
        },
        orphans: Tally {
            count: 1,
            amount: 15.0,
            amounts: vec![money("COP", 15.0)],
        },
        drifted: Tally {
            count: 2,
            amount: 1262.5,
            amounts: vec![money("COP", 1237.5), money("USD", 25.0)],
        },
        drift_name: 1,
        drift_price: 1,
        drift_active: 1,
        refreshed_ms: Some(T0 - 2000),
        refreshes: 40,
        items_changed: 1234,
        events_read: 56,
        stripe_pages: 25,
        rows: vec![
            row(
                DiscrepancyKind::Drift,
                Some("prod_00000000000042"),
                Some("512"),
                &["name", "price"],
                Some(side("Café Premium #42", 1250.0, true)),
                Some(side("Cafe premium", 12.5, true)),
                1237.5,
                "COP",
            ),
            row(
                DiscrepancyKind::Drift,
                Some("prod_00000000000007"),
                Some("77"),
                &["active"],
                Some(side("Té Verde", 25.0, true)),
                Some(side("Té Verde", 25.0, false)),
                25.0,
                "USD",
            ),
            row(
                DiscrepancyKind::Missing,
                Some("prod_00000000000099"),
                None,
                &[],
                Some(side("Nuevo producto", 49.9, true)),
                None,
                49.9,
                "USD",
            ),
            row(
                DiscrepancyKind::Orphan,
                None,
                Some("901"),
                &[],
                None,
                Some(side("Made by hand in QuickBooks", 15.0, true)),
                15.0,
                "COP",
            ),
        ],
    }
}

fn app() -> App {
    App::new(Arc::new(snapshot()), Theme::ansi())
}

fn render(app: &App, w: u16, h: u16) -> (String, ratatui::buffer::Buffer) {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| screens::draw(f, app)).unwrap();
    let buf = term.backend().buffer().clone();
    let mut text = String::new();
    for y in 0..h {
        let mut line = String::new();
        for x in 0..w {
            line.push_str(buf[(x, y)].symbol());
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    (text, buf)
}

fn check_snapshot(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}; run with UPDATE_SNAPSHOTS=1", path.display()));
    assert_eq!(
        text,
        expected,
        "screen {name} differs from {}",
        path.display()
    );
}

/// Three minutes of a real `Telemetry` on simulated time: steady traffic, then
/// QuickBooks fails half its calls and slows down.
fn telemetry() -> syncctl::telemetry::TelemetryView {
    use syncctl::config::{AlertsConfig, AnomalyConfig, Config};
    use syncctl::telemetry::metrics::Summary;
    use syncctl::telemetry::{DownstreamSample, Sample, Telemetry};
    let mut t = Telemetry::new(
        AlertsConfig {
            for_secs: 10,
            // Depth alone, as this fixture's queue alert was drawn with.
            queue_drain_secs: 0.0,
            ..Default::default()
        },
        AnomalyConfig::default(),
    );
    let start = T0 - 180_000;
    let (mut items, mut calls, mut failures) = (0u64, 0u64, 0u64);
    for s in 0..180i64 {
        let burst = s >= 150;
        items += if burst { 2 } else { 20 + (s % 7) as u64 };
        calls += 20;
        if burst {
            failures += 10;
        }
        let p50 = if burst { 900.0 } else { 40.0 + (s % 5) as f64 };
        let lat = Summary {
            count: 20,
            sum_ms: p50 * 20.0,
            p50_ms: p50,
            p95_ms: p50 * 2.0,
            p99_ms: p50 * 3.0,
            max_ms: p50 * 4.0,
            ..Summary::default()
        };
        let ds = |name: &str, calls: u64, failures: u64, lat: Summary| DownstreamSample {
            name: name.into(),
            calls,
            failures,
            consecutive_failures: 0,
            p50_ms: Some(lat.p50_ms),
            p95_ms: Some(lat.p95_ms),
            p99_ms: Some(lat.p99_ms),
            breaker: "CLOSED".into(),
            in_flight: 2,
            limit: 10,
            auth: None,
        };
        let steady = Summary {
            p50_ms: 30.0,
            p95_ms: 60.0,
            p99_ms: 90.0,
            ..lat
        };
        t.tick(Sample {
            now_ms: start + s * 1000,
            items_done: items,
            downstreams: vec![
                ds("stripe", calls / 10, 0, steady),
                ds("quickbooks", calls, failures, lat),
                ds("alegra", calls / 20, 0, steady),
            ],
            catalog_queue: 180,
            dian_queue: Some(3),
            ..Default::default()
        });
    }
    let mut v = t.view(T0);
    v.thresholds = Config::default()
        .thresholds()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    v
}

#[test]
fn throughput_alerts_and_settings_at_80x24_and_120x40() {
    let mut app = app();
    for (tab, name) in [
        (Tab::Throughput, "throughput"),
        (Tab::Alerts, "alerts"),
        (Tab::Settings, "settings"),
    ] {
        app.tab = tab;
        for (w, h) in [(80, 24), (120, 40)] {
            let (text, _) = render(&app, w, h);
            match tab {
                Tab::Throughput => {
                    assert!(text.contains("Items/s · 1 min"), "{text}");
                    assert!(text.contains("quickbooks ms  p50 900"), "{text}");
                    assert!(text.contains("p95 1800"), "the last point: {text}");
                    assert!(text.contains("errors % · 25.0"), "{text}");
                }
                Tab::Alerts => {
                    assert!(text.contains("error_rate/quickbooks"), "{text}");
                    assert!(
                        text.contains("▲ warning") && text.contains("firing"),
                        "{text}"
                    );
                    assert!(text.contains("◉ open"), "{text}");
                }
                _ => {
                    assert!(text.contains("alerts.error_rate_percent"), "{text}");
                    assert!(
                        text.contains("Enter edit") && text.contains("A apply"),
                        "{text}"
                    );
                }
            }
            check_snapshot(&format!("{name}_{w}x{h}"), &text);
        }
    }
    // The window key cycles 1 min → 5 min → 1 h.
    app.tab = Tab::Throughput;
    press(&mut app, KeyCode::Char('w'));
    assert!(render(&app, 80, 24).0.contains("Items/s · 5 min"));
    press(&mut app, KeyCode::Char('w'));
    assert!(render(&app, 80, 24).0.contains("Items/s · 1 h"));
}

#[test]
fn alerts_are_acknowledged_and_silenced_from_the_alerts_screen() {
    let mut app = app();
    press(&mut app, KeyCode::Char('5'));
    assert_eq!(app.tab, Tab::Alerts);
    let first = app.selected_alert().expect("an alert");
    match press(&mut app, KeyCode::Char('a')) {
        Some(Command::AckAlerts { matcher }) => {
            assert_eq!(matcher, AlertMatcher::Prefix(first.clone()))
        }
        other => panic!("{other:?}"),
    }
    assert!(press(&mut app, KeyCode::Char('z')).is_none());
    for _ in 0..2 {
        press(&mut app, KeyCode::Backspace);
    }
    for c in "soon".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    assert!(press(&mut app, KeyCode::Enter).is_none(), "not a duration");
    assert!(app.flash.as_deref().unwrap().contains("30m"));
    for _ in 0..4 {
        press(&mut app, KeyCode::Backspace);
    }
    for c in "30m".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    match press(&mut app, KeyCode::Enter) {
        Some(Command::SilenceAlerts { matcher, secs }) => {
            assert_eq!((matcher.prefix(), secs), (first.as_str(), 1800))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bad_threshold_is_refused_in_the_console_and_the_old_value_kept() {
    let mut app = app();
    press(&mut app, KeyCode::Char('8'));
    assert_eq!(app.tab, Tab::Settings);
    assert_eq!(
        app.selected_setting().unwrap().0,
        "alerts.error_rate_percent"
    );
    press(&mut app, KeyCode::Enter);
    for _ in 0..4 {
        press(&mut app, KeyCode::Backspace);
    }
    for c in "250".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    assert!(press(&mut app, KeyCode::Enter).is_none());
    let flash = app.flash.clone().unwrap();
    assert!(flash.contains("out of range"), "{flash}");
    assert!(app.prompt.is_some(), "the prompt stays open to fix it");
    assert!(app.staged.is_empty());
    press(&mut app, KeyCode::Esc);
    // Nothing staged: A says so.
    assert!(press(&mut app, KeyCode::Char('A')).is_none());
    assert!(app.confirm.is_none());
    // A good value is staged, shown as a diff, applied after confirmation.
    press(&mut app, KeyCode::Enter);
    for _ in 0..4 {
        press(&mut app, KeyCode::Backspace);
    }
    for c in "12.5".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        app.staged,
        vec![("alerts.error_rate_percent".to_owned(), 12.5)]
    );
    assert!(render(&app, 80, 24).0.contains("→ 12.5"));
    assert!(press(&mut app, KeyCode::Char('A')).is_none());
    let (text, _) = render(&app, 80, 24);
    assert!(
        text.contains("alerts.error_rate_percent: 10 → 12.5"),
        "{text}"
    );
    assert!(
        press(&mut app, KeyCode::Enter).is_none(),
        "focus starts on Cancel"
    );
    assert_eq!(app.staged.len(), 1, "cancel keeps the staged value");
    press(&mut app, KeyCode::Char('A'));
    match press(&mut app, KeyCode::Char('y')) {
        Some(Command::SetThresholds { changes, .. }) => {
            assert_eq!(
                changes,
                vec![ThresholdChange::new("alerts.error_rate_percent", 12.5)]
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(app.staged.is_empty());
}

#[test]
fn c_invalidates_the_cache_after_a_confirmation() {
    let mut app = app();
    assert!(press(&mut app, KeyCode::Char('c')).is_none());
    assert!(render(&app, 80, 24).0.contains("invalidate cache"));
    for c in "tag:product:prod_9".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    assert!(press(&mut app, KeyCode::Enter).is_none());
    assert!(render(&app, 80, 24).0.contains("Invalidate cache: tag"));
    match press(&mut app, KeyCode::Char('y')) {
        Some(Command::InvalidateCache { scope }) => {
            assert_eq!(scope, CacheScope::Tag("product:prod_9".into()))
        }
        other => panic!("{other:?}"),
    }
    // Empty: everything.
    press(&mut app, KeyCode::Char('c'));
    press(&mut app, KeyCode::Enter);
    match press(&mut app, KeyCode::Char('y')) {
        Some(Command::InvalidateCache { scope }) => assert_eq!(scope, CacheScope::All),
        other => panic!("{other:?}"),
    }
}

#[test]
fn overview_at_80x24_and_120x40() {
    let app = app();
    for (w, h) in [(80, 24), (120, 40)] {
        let (text, _) = render(&app, w, h);
        assert!(text.contains("SANDBOX"));
        assert!(text.contains("1 234") && text.contains("2 500"), "{text}");
        assert!(
            text.contains("✗ needs attention"),
            "failed jobs are flagged in words: {text}"
        );
        assert!(text.contains("Name cannot contain a colon"), "{text}");
        assert!(text.contains("q quit") && text.contains("? help"), "{text}");
        check_snapshot(&format!("overview_{w}x{h}"), &text);
    }
}

#[test]
fn events_at_80x24_and_120x40() {
    let mut app = app();
    app.tab = Tab::Events;
    for (w, h) in [(80, 24), (120, 40)] {
        let (text, _) = render(&app, w, h);
        assert!(
            text.contains("ana@10.0.0.7") && text.contains("paused catalog pipeline"),
            "{text}"
        );
        assert!(
            text.contains("scroll"),
            "list keys show in the hints bar: {text}"
        );
        check_snapshot(&format!("events_{w}x{h}"), &text);
    }
}

#[test]
fn live_mode_is_shown_as_live() {
    let mut s = snapshot();
    s.mode = Mode::Live;
    let app = App::new(Arc::new(s), Theme::ansi());
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains(" LIVE ") && !text.contains("SANDBOX"));
}

#[test]
fn a_tiny_terminal_gets_a_message_not_garbage() {
    let (text, _) = render(&app(), 40, 10);
    assert!(
        text.contains("terminal too small") && text.contains("40×10"),
        "{text}"
    );
    assert!(!text.contains("Catalog"));
}

#[test]
fn no_color_theme_uses_no_colour_and_keeps_state_in_words() {
    let app = App::new(Arc::new(snapshot()), Theme::monochrome());
    let (text, buf) = render(&app, 80, 24);
    for cell in buf.content() {
        assert_eq!(cell.fg, Color::Reset);
        assert_eq!(cell.bg, Color::Reset);
    }
    assert!(text.contains("▶ running") && text.contains("SANDBOX"));
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::from(c)
}

/// Presses a key through `update`; the command it sends to the engine, if any.
fn press(app: &mut App, c: KeyCode) -> Option<Command> {
    sent(update(app, Msg::Key(key(c))))
}

/// The command among `effects`, checked to be sent as this console's operator.
fn sent(effects: Vec<Effect>) -> Option<Command> {
    let mut sends = effects.into_iter().filter_map(|e| match e {
        Effect::Send(request) => Some(request),
        _ => None,
    });
    let request = sends.next()?;
    assert!(sends.next().is_none(), "one command per message");
    assert!(!request.actor.is_empty(), "sent as the operator");
    Some(request.command)
}

/// The invoices whose detail `effects` ask the engine for.
fn asks(effects: Vec<Effect>) -> Vec<String> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Ask(syncctl::protocol::Query::InvoiceDetail { key }) => Some(key),
            _ => None,
        })
        .collect()
}

/// Whether `effects` ask for the frame to be drawn again.
fn redraws(effects: &[Effect]) -> bool {
    effects.iter().any(|e| matches!(e, Effect::Redraw { .. }))
}

#[test]
fn quit_asks_first_with_focus_on_cancel() {
    let mut app = app();
    assert!(press(&mut app, KeyCode::Char('q')).is_none());
    let (text, _) = render(&app, 80, 24);
    assert!(
        text.contains("Quit syncctl?") && text.contains("[ Cancel ]") && text.contains("[ Quit ]"),
        "{text}"
    );
    // Enter on the default focus (Cancel) does nothing.
    assert!(press(&mut app, KeyCode::Enter).is_none());
    assert!(app.confirm.is_none() && !app.quitting);
    // Choosing Quit sends a drain-and-stop.
    press(&mut app, KeyCode::Char('q'));
    press(&mut app, KeyCode::Right);
    assert!(matches!(
        press(&mut app, KeyCode::Enter),
        Some(Command::Shutdown {})
    ));
    assert!(app.quitting);
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("draining"), "{text}");
}

#[test]
fn p_pauses_and_resumes_as_the_operator() {
    let mut app = app();
    match press(&mut app, KeyCode::Char('p')) {
        // Sent as this operator: the console wraps it in a Request with its actor.
        Some(Command::Pause {
            pipeline: Pipeline::Catalog,
        }) => assert!(!app.actor.is_empty()),
        other => panic!("expected a pause, got {other:?}"),
    }
    let mut paused = snapshot();
    paused.catalog.paused = true;
    update(&mut app, Msg::Snapshot(Arc::new(paused)));
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("‖ paused"), "{text}");
    assert!(
        text.contains("catalog pipeline paused — p resumes"),
        "the flash confirms the new state: {text}"
    );
    // 180 jobs wait: resuming asks first, with the impact preview.
    assert_eq!(press(&mut app, KeyCode::Char('p')), None);
    assert!(
        render(&app, 80, 24)
            .0
            .contains("Resume the catalog pipeline (180 waiting)?")
    );
    assert!(matches!(
        press(&mut app, KeyCode::Char('y')),
        Some(Command::Resume {
            pipeline: Pipeline::Catalog
        })
    ));
}

/// A key with Ctrl is not that key: Ctrl-P (a shell's history habit) does not pause the
/// catalog, Ctrl-R (reverse search) does not retry an invoice, Ctrl-Y does not confirm
/// a dialog, and Ctrl-U in a prompt does not type a `u`. Ctrl-C still asks to quit.
#[test]
fn control_keys_are_not_their_letters() {
    use crossterm::event::KeyModifiers;
    let ctrl = |c| Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL));
    let mut app = app();
    assert_eq!(
        sent(update(&mut app, ctrl('p'))),
        None,
        "Ctrl-P paused the catalog"
    );
    let mut app = dian_app();
    for c in ['r', 'R', 's', 'p'] {
        assert_eq!(sent(update(&mut app, ctrl(c))), None, "Ctrl-{c} acted");
    }
    assert!(
        app.confirm.is_none() && app.prompt.is_none(),
        "Ctrl-R asked"
    );
    // In a dialog, Ctrl-Y is not `y`.
    press(&mut app, KeyCode::Char('R'));
    assert!(app.confirm.is_some(), "R asks first");
    assert_eq!(sent(update(&mut app, ctrl('y'))), None, "Ctrl-Y confirmed");
    assert!(app.confirm.is_some(), "the dialog is still open");
    press(&mut app, KeyCode::Esc);
    // In a prompt, Ctrl-U types nothing.
    press(&mut app, KeyCode::Char('c'));
    update(&mut app, ctrl('u'));
    assert_eq!(
        app.prompt.as_deref(),
        Some(""),
        "Ctrl-U typed into the cache prompt"
    );
    // Ctrl-C still asks to quit, and shifted letters are still their keys.
    update(&mut app, ctrl('c'));
    assert!(matches!(
        app.confirm,
        Some(syncctl::console::state::Confirm::Quit)
    ));
}

#[test]
fn p_on_the_dian_screen_pauses_dian_sending_and_the_header_says_so() {
    let mut app = dian_app();
    let (text, _) = render(&app, 80, 24);
    let hints = text.lines().last().unwrap();
    assert!(hints.contains("p pause sending"), "{hints}");
    assert_eq!(
        hints.matches("p pause").count(),
        1,
        "one p hint on DIAN: {hints}"
    );
    assert!(!text.contains("DIAN ‖ paused"), "{text}");
    assert_eq!(
        press(&mut app, KeyCode::Char('p')),
        Some(Command::Pause {
            pipeline: Pipeline::Compliance
        })
    );
    assert!(
        render(&app, 80, 24).0.contains("pausing DIAN sending"),
        "the flash says what p does here"
    );

    // The engine says it is paused: the header (every screen) and the DIAN line show it.
    let mut paused = (*app.snapshot).clone();
    paused.compliance.paused = true;
    update(&mut app, Msg::Snapshot(Arc::new(paused)));
    let (text, _) = render(&app, 80, 24);
    let header = text.lines().next().unwrap();
    assert!(header.contains("▶ running  DIAN ‖ paused"), "{header}");
    assert!(text.contains("PAUSED (p resumes sending)"), "{text}");
    assert!(
        text.contains("DIAN sending paused (paid invoices wait)"),
        "{text}"
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('p')),
        Some(Command::Resume {
            pipeline: Pipeline::Compliance
        })
    );

    // Elsewhere `p` is still the catalog's, and the header still shows DIAN paused.
    press(&mut app, KeyCode::Char('1'));
    let (text, _) = render(&app, 120, 40);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("▶ running  DIAN ‖ paused"),
        "{text}"
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('p')),
        Some(Command::Pause {
            pipeline: Pipeline::Catalog
        })
    );

    // The DIAN help names p for DIAN, not for the catalog.
    press(&mut app, KeyCode::Char('6'));
    press(&mut app, KeyCode::Char('?'));
    let (text, _) = render(&app, 120, 40);
    assert!(text.contains("pause / resume sending to DIAN"), "{text}");
    assert!(!text.contains("pause / resume the catalog"), "{text}");
}

#[test]
fn help_lists_every_binding_from_the_key_table() {
    // Each screen's help holds every binding that acts there (a screen's own key
    // shadowing a global one), and fits 80×24.
    for tab in Tab::ALL {
        let mut app = app();
        app.tab = tab;
        press(&mut app, KeyCode::Char('?'));
        let (text, _) = render(&app, 120, 40);
        let (small, _) = render(&app, 80, 24);
        for b in syncctl::console::keymap::bindings_on(tab) {
            let shown = match b.action {
                syncctl::console::keymap::Action::GoTab(t) => format!("{} {}", t.key(), t.title()),
                _ if b.scope == syncctl::console::keymap::Scope::Lists => b.label.to_owned(),
                _ => b.help.to_owned(),
            };
            // (A long one wraps under itself: its start is on one line.)
            let start: String = shown.chars().take(60).collect();
            assert!(
                text.contains(&start),
                "{tab:?} help lacks {shown:?}:\n{text}"
            );
        }
        assert!(
            small.contains("any key closes") || small.contains("other keys close"),
            "{tab:?} at 80×24:\n{small}"
        );
        press(&mut app, KeyCode::Char('x'));
        assert!(!app.help);
    }
}

/// At 80×24 the help is taller than the screen: it scrolls with ↑↓/j/k/PgUp/PgDn, its
/// title says which lines show, and every binding (the last one, `q`, included) can
/// be reached; any other key still closes it. `:help` lists `chain`.
#[test]
fn help_scrolls_so_no_line_is_lost_at_80x24() {
    for tab in Tab::ALL {
        let mut app = app();
        app.tab = tab;
        press(&mut app, KeyCode::Char('?'));
        let mut seen = String::new();
        for _ in 0..40 {
            seen.push_str(&render(&app, 80, 24).0);
            press(&mut app, KeyCode::Char('j'));
            assert!(app.help, "j scrolls, it does not close");
        }
        press(&mut app, KeyCode::PageUp);
        press(&mut app, KeyCode::Up);
        assert!(app.help);
        for b in syncctl::console::keymap::bindings_on(tab) {
            if matches!(b.action, syncctl::console::keymap::Action::GoTab(_))
                || b.scope == syncctl::console::keymap::Scope::Lists
            {
                continue;
            }
            let start: String = b.help.chars().take(30).collect();
            assert!(
                seen.contains(&start),
                "{tab:?} help at 80×24 never shows {:?}",
                b.help
            );
        }
        press(&mut app, KeyCode::Char('x'));
        assert!(!app.help);
    }
    // The DIAN help is longer than 24 rows: the title says so, and the end is reached.
    let mut app = self::app();
    app.tab = Tab::Dian;
    press(&mut app, KeyCode::Char('?'));
    let (top, _) = render(&app, 80, 24);
    assert!(top.contains("↑↓ scroll · other keys close"), "{top}");
    assert!(top.contains(" ↓ ·"), "more below is said:\n{top}");
    for _ in 0..10 {
        press(&mut app, KeyCode::PageDown);
    }
    let (bottom, _) = render(&app, 80, 24);
    assert!(bottom.contains("quit"), "{bottom}");
    assert!(!bottom.contains(" ↓ ·"), "at the end:\n{bottom}");

    // `:help` names `chain`.
    let mut app = self::app();
    command_line(&mut app, "help");
    press(&mut app, KeyCode::Enter);
    assert!(app.commands_help);
    let mut seen = String::new();
    for _ in 0..40 {
        seen.push_str(&render(&app, 80, 24).0);
        press(&mut app, KeyCode::Char('j'));
    }
    assert!(seen.contains("chain KEY"), "{seen}");
}

#[test]
fn scrolled_events_stay_put_while_new_ones_arrive() {
    let mut app = app();
    app.tab = Tab::Events;
    press(&mut app, KeyCode::Char('j'));
    press(&mut app, KeyCode::Char('j'));
    let reading = app.snapshot.audit[app.events_offset].id;
    let mut next = snapshot();
    next.audit.insert(
        0,
        AuditEntry {
            trace_id: None,
            id: 101,
            at_ms: T0 + 1000,
            kind: "item".into(),
            entity: "prod_new".into(),
            actor: "engine".into(),
            message: "new".into(),
        },
    );
    update(&mut app, Msg::Snapshot(Arc::new(next)));
    assert_eq!(app.snapshot.audit[app.events_offset].id, reading);
    press(&mut app, KeyCode::Char('g'));
    assert_eq!(app.events_offset, 0);
}

#[test]
fn frozen_display_ignores_new_snapshots() {
    let mut app = app();
    press(&mut app, KeyCode::Char('f'));
    let mut next = snapshot();
    next.catalog.counts.synced = 9999;
    assert!(!redraws(&update(&mut app, Msg::Snapshot(Arc::new(next)))));
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("FROZEN") && text.contains("1 234"));
}

/// Workers and batch figures as the engine publishes them mid-sync.
fn resilience_view() -> CatalogView {
    use syncctl::resilience::autoscale::Decision;
    CatalogView {
        workers_target: 6,
        workers_min: 1,
        workers_max: 32,
        autoscale: true,
        autoscale_status: "latency 212 ms > 1.25 × baseline 160 ms".into(),
        decisions: vec![
            Decision {
                at_ms: T0 - 2_000,
                from: 7,
                to: 6,
                reason: "latency 212 ms > 1.25 × baseline 160 ms".into(),
            },
            Decision {
                at_ms: T0 - 9_000,
                from: 6,
                to: 7,
                reason: "latency 158 ms within 1.25 × baseline, 180 queued, 5.8 of 6 busy".into(),
            },
        ],
        claim_batch: 5,
        page_size: 100,
        deferred: 12,
        ..CatalogView::default()
    }
}

/// Three circuits: Stripe closed, QuickBooks open after an outage, Alegra forced open.
fn downstreams() -> Vec<syncctl::resilience::DownstreamView> {
    use syncctl::resilience::breaker::{BreakerView, State, TransitionView};
    use syncctl::resilience::{DownstreamView, LimiterView};
    let breaker = |name: &str, state: State, calls: u32, failures: u32| BreakerView {
        name: name.into(),
        state,
        calls,
        failures,
        slow_calls: 0,
        failure_rate: (calls >= 10).then(|| failures as f64 * 100.0 / calls as f64),
        slow_call_rate: (calls >= 10).then_some(0.0),
        failure_threshold: 50.0,
        slow_call_threshold: 100.0,
        minimum_calls: 10,
        rejections: if state == State::Closed { 0 } else { 214 },
        half_open_permits: 3,
        half_open_in_use: 0,
        until_half_open_ms: (state == State::Open).then_some(11_400),
        open_wait_ms: 15_000,
        last_transition: (state != State::Closed).then(|| TransitionView {
            from: State::Closed,
            to: state,
            at_ms: T0 - 3_600,
            reason: if state == State::Open {
                "failure rate 100% ≥ 50% over 12 calls".into()
            } else {
                "operator alice@10.0.0.7".into()
            },
        }),
    };
    let limiter = |rate: u32, eff: u32, conc: u32, paused: u64| LimiterView {
        rate_per_min: rate,
        effective_per_min: eff,
        max_concurrent: conc,
        effective_concurrent: conc,
        in_flight: 0,
        paused_for_ms: paused,
        throttles: if paused > 0 { 3 } else { 0 },
        rate_waits: 120,
        granted: 5_000,
        ceiling_per_min: (paused > 0).then_some(rate * 9 / 10),
        shared: None,
    };
    let d = |name: &str, b: BreakerView, l: LimiterView| DownstreamView {
        name: name.into(),
        breaker: b,
        limiter: l,
        calls: 5_000,
        successes: 4_950,
        failures: 12,
        timeouts: 0,
        ignored: 38,
        throttled: l_throttles(name),
        rejected: 214,
        retries: 20,
        budget_exhausted: 0,
        budget_available: 100,
        p50_ms: Some(52.0),
        p95_ms: Some(120.0),
        p99_ms: Some(180.0),
        consecutive_failures: 0,
        rejection_p99_us: Some(4.0),
    };
    fn l_throttles(name: &str) -> u64 {
        if name == "quickbooks" { 3 } else { 0 }
    }
    vec![
        d(
            "stripe",
            breaker("stripe", State::Closed, 40, 0),
            limiter(6000, 6000, 0, 0),
        ),
        d(
            "quickbooks",
            breaker("quickbooks", State::Open, 0, 0),
            limiter(500, 250, 5, 41_000),
        ),
        d(
            "alegra",
            breaker("alegra", State::ForcedOpen, 0, 0),
            limiter(150, 150, 0, 0),
        ),
    ]
}

#[test]
fn circuits_at_80x24_and_120x40() {
    let mut app = app();
    press(&mut app, KeyCode::Char('3'));
    assert_eq!(app.tab, Tab::Circuits);
    for (w, h) in [(80, 24), (120, 40)] {
        let (text, _) = render(&app, w, h);
        assert!(text.contains("✖ OPEN"), "state as symbol + word:\n{text}");
        assert!(text.contains("⊘ FORCED_OPEN"));
        assert!(text.contains("in 11s"), "time until half-open:\n{text}");
        check_snapshot(&format!("circuits_{w}x{h}"), &text);
    }
    press(&mut app, KeyCode::Down);
    let (text, _) = render(&app, 120, 40);
    assert!(
        text.contains("failure rate 100% ≥ 50% over 12 calls"),
        "why:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start_matches('│').trim_start().starts_with("▶")
                && l.contains("quickbooks")),
        "the selection moved:\n{text}"
    );
}

#[test]
fn workers_at_80x24_and_120x40() {
    let mut app = app();
    press(&mut app, KeyCode::Char('4'));
    assert_eq!(app.tab, Tab::Workers);
    for (w, h) in [(80, 24), (120, 40)] {
        let (text, _) = render(&app, w, h);
        assert!(text.contains("6 busy / 6 target"), "{text}");
        assert!(text.contains("paused 41s"), "pushback:\n{text}");
        assert!(text.contains("▼  7 → 6"), "decisions:\n{text}");
        check_snapshot(&format!("workers_{w}x{h}"), &text);
    }
}

#[test]
fn forcing_a_circuit_open_asks_first_then_sends_the_command() {
    let mut app = app();
    press(&mut app, KeyCode::Char('3'));
    press(&mut app, KeyCode::Down);
    assert_eq!(app.selected_service().as_deref(), Some("quickbooks"));
    assert!(press(&mut app, KeyCode::Char('o')).is_none());
    let (text, _) = render(&app, 80, 24);
    assert!(
        text.contains("Set the quickbooks circuit to FORCED_OPEN?"),
        "{text}"
    );
    // Focus starts on Cancel: Enter cancels.
    assert!(press(&mut app, KeyCode::Enter).is_none());
    assert!(app.confirm.is_none());
    press(&mut app, KeyCode::Char('o'));
    match press(&mut app, KeyCode::Char('y')) {
        Some(Command::Breaker { service, action }) => {
            assert_eq!(
                (service, action),
                (Service::QuickBooks, BreakerAction::ForceOpen)
            )
        }
        other => panic!("{other:?}"),
    }
    press(&mut app, KeyCode::Char('x'));
    assert!(matches!(
        press(&mut app, KeyCode::Char('y')),
        Some(Command::Breaker {
            action: BreakerAction::Reset,
            ..
        })
    ));
}

#[test]
fn worker_bounds_prompt_validates_and_keeps_the_old_bounds_on_a_typo() {
    let mut app = app();
    press(&mut app, KeyCode::Char('4'));
    press(&mut app, KeyCode::Char('b'));
    assert_eq!(app.prompt.as_deref(), Some("1-32"));
    for _ in 0..4 {
        press(&mut app, KeyCode::Backspace);
    }
    for c in "9-2".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    assert!(press(&mut app, KeyCode::Enter).is_none());
    assert!(app.confirm.is_none(), "invalid bounds are not applied");
    assert!(app.flash.as_deref().unwrap_or("").contains("MIN-MAX"));
    assert!(app.prompt.is_some(), "the prompt stays open to fix it");
    for _ in 0..3 {
        press(&mut app, KeyCode::Backspace);
    }
    for c in "2-6".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        app.confirm,
        Some(syncctl::console::state::Confirm::Bounds { min: 2, max: 6 })
    );
    match press(&mut app, KeyCode::Char('y')) {
        Some(Command::WorkerBounds {
            pipeline: Pipeline::Catalog,
            min: 2,
            max: 6,
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_engine_reply_to_this_console_command_is_flashed_once() {
    use syncctl::protocol::{CommandError, Outcome};
    let mut app = app();
    let cmd = Command::Breaker {
        service: Service::QuickBooks,
        action: BreakerAction::Close,
    };
    update(
        &mut app,
        Msg::Reply {
            command: cmd.clone(),
            reply: Err(CommandError::conflict(
                "illegal breaker transition CLOSED → HALF_OPEN",
            )),
            company: None,
        },
    );
    assert_eq!(
        app.flash.as_deref(),
        Some("refused: illegal breaker transition CLOSED → HALF_OPEN")
    );
    // Snapshots carry no one's replies: a new one leaves the flash line alone.
    app.flash = None;
    update(&mut app, Msg::Snapshot(Arc::new(snapshot())));
    assert_eq!(app.flash, None);
    update(
        &mut app,
        Msg::Reply {
            command: cmd,
            reply: Ok(Outcome::new("circuit quickbooks set to CLOSED")),
            company: None,
        },
    );
    assert_eq!(
        app.flash.as_deref(),
        Some("circuit quickbooks set to CLOSED")
    );
    // The reply to a quit keeps the drain message.
    app.flash = Some("draining in-flight work…".into());
    update(
        &mut app,
        Msg::Reply {
            command: Command::Shutdown {},
            reply: Ok(Outcome::new("draining and stopping")),
            company: None,
        },
    );
    assert_eq!(app.flash.as_deref(), Some("draining in-flight work…"));
}

fn dian_app() -> App {
    use syncctl::compliance::invoice::{Line, LocalInvoice};
    use syncctl::compliance::machine::Status;
    use syncctl::store::{ComplianceCounts, InvoiceRecord};
    let record = |n: u64, status: Status, code: Option<&str>| InvoiceRecord {
        stripe_id: format!("in_{n:014}"),
        number: format!("SETP{}", 990000000 + n),
        kind: "invoice".into(),
        status,
        attempts: 3,
        next_at_ms: None,
        sending: false,
        alegra_id: Some(n.to_string()),
        cufe: None,
        issue_date: "2026-11-22".into(),
        buyer_id: "900123456".into(),
        buyer_name: "Comercializadora Andina S.A.S.".into(),
        total: 178_500_000,
        invoice: LocalInvoice {
            stripe_id: format!("in_{n:014}"),
            stripe_number: None,
            buyer_id: "900123456".into(),
            buyer_name: "Comercializadora Andina S.A.S.".into(),
            lines: vec![Line {
                product: None,
                item_id: None,
                description: "Café".into(),
                quantity: 1,
                unit: 150_000_000,
            }],
            taxes: vec![],
            subtotal: 150_000_000,
            iva: 28_500_000,
            inc: 0,
            ica: 0,
            total: 178_500_000,
            kind: "invoice".into(),
        },
        last_code: code.map(str::to_owned),
        last_message: None,
        contingency: false,
        deadline_at_ms: None,
        created_at_ms: T0,
        updated_at_ms: T0,
        validated_at_ms: None,
    };
    let mut s = snapshot();
    s.compliance.enabled = true;
    s.compliance.invoices = vec![
        record(3, Status::Failed, Some("EPR503")),
        record(2, Status::Validated, Some("00")),
        record(1, Status::Failed, Some("AEP6009")),
    ];
    s.compliance.counts = ComplianceCounts {
        by_status: vec![(Status::Failed, 2), (Status::Validated, 1)],
        total: 3,
        ..Default::default()
    };
    let mut app = App::new(Arc::new(s), Theme::ansi());
    app.tab = Tab::Dian;
    app
}

#[test]
fn dian_queue_lists_invoices_with_state_words_and_explained_codes_at_80x24() {
    let app = dian_app();
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("✗ FAILED 2"), "{text}");
    assert!(text.contains("SETP990000003"), "{text}");
    assert!(text.contains("1 785 000,00"), "{text}");
    assert!(text.contains("EPR503"), "{text}");
    assert!(
        text.contains("r retry"),
        "the hints name the DIAN keys: {text}"
    );
    // Wider, each code is explained in words.
    let (text, _) = render(&app, 140, 30);
    assert!(text.contains("EPR503 DIAN did not answer"), "{text}");
}

#[test]
fn dian_filter_search_and_retry_keys() {
    let mut app = dian_app();
    // `s` filters to the first state; FAILED is the sixth in the cycle.
    for _ in 0..6 {
        press(&mut app, KeyCode::Char('s'));
    }
    assert_eq!(app.dian_rows().len(), 2);
    press(&mut app, KeyCode::Char('/'));
    for c in "0001".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Enter);
    let rows = app.dian_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].number, "SETP990000001");
    match press(&mut app, KeyCode::Char('r')) {
        Some(Command::RetryInvoice { key }) => assert_eq!(key, "in_00000000000001"),
        other => panic!("expected a retry, got {other:?}"),
    }
    // R previews the count and waits for a confirmation (focus on Cancel).
    assert!(press(&mut app, KeyCode::Char('R')).is_none());
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("Retry 2 FAILED invoices?"), "{text}");
    assert!(press(&mut app, KeyCode::Enter).is_none(), "Enter on Cancel");
    press(&mut app, KeyCode::Char('R'));
    assert!(matches!(
        press(&mut app, KeyCode::Char('y')),
        Some(Command::RetryFailed {})
    ));
}

#[test]
fn dian_view_shows_an_outage_then_contingency_deadlines_counting_down() {
    use syncctl::compliance::machine::Status;
    let mut app = dian_app();
    let now = T0 + 3_600_000;
    let mut s = (*app.snapshot).clone();
    s.compliance.now_ms = now;
    s.compliance.contingency = syncctl::engine::compliance::ContingencyView {
        phase: "OUTAGE",
        failures: 4,
        probes: 4,
        probe_interval_ms: 20_000,
        since_ms: Some(T0),
        confirmed_at_ms: Some(T0 + 60_000),
        next_probe_ms: Some(now + 12_000),
        ..Default::default()
    };
    s.compliance.invoices[0].status = Status::Fallback;
    s.compliance.invoices[0].contingency = true;
    update(&mut app, Msg::Snapshot(Arc::new(s.clone())));
    let (text, _) = render(&app, 100, 30);
    assert!(text.contains("⚑ DIAN OUTAGE since"), "{text}");
    assert!(text.contains("next probe 12s"), "{text}");
    assert!(
        text.contains("held"),
        "no deadline before DIAN is back: {text}"
    );

    // DIAN is back: 48 h to transmit, counting down on the engine's clock.
    s.compliance.contingency.phase = "NORMAL";
    s.compliance.contingency.next_probe_ms = None;
    s.compliance.contingency.restored_at_ms = Some(now);
    let deadline = now + 48 * 3_600_000;
    s.compliance.invoices[0].deadline_at_ms = Some(deadline);
    s.compliance.counts.earliest_deadline_ms = Some(deadline);
    s.compliance.now_ms = now + 65 * 60_000;
    update(&mut app, Msg::Snapshot(Arc::new(s.clone())));
    let (text, _) = render(&app, 100, 30);
    assert!(text.contains("first deadline in 46h55m"), "{text}");
    assert!(text.contains("DIAN back since"), "{text}");
    assert!(text.contains("46h55m"), "the countdown: {text}");
    let (small, _) = render(&app, 80, 24);
    assert!(small.contains("46h55m"), "fits 80×24: {small}");
    s.compliance.now_ms = deadline + 60_000;
    update(&mut app, Msg::Snapshot(Arc::new(s)));
    let (text, _) = render(&app, 100, 30);
    assert!(text.contains("late 1m00s"), "{text}");
}

#[test]
fn events_are_filtered_by_the_words_typed_after_slash() {
    let mut app = app();
    press(&mut app, KeyCode::Char('7'));
    let all = app.events_rows().len();
    press(&mut app, KeyCode::Char('/'));
    for c in "ANA paused".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    let rows = app.events_rows();
    assert!(
        !rows.is_empty() && rows.len() < all,
        "{} of {all}",
        rows.len()
    );
    assert!(
        rows.iter()
            .all(|e| e.actor.contains("ana") && e.message.contains("paused"))
    );
    let (text, _) = render(&app, 80, 24);
    assert!(
        text.contains(&format!("filter: ANA paused▏ · {} of {all}", rows.len())),
        "{text}"
    );
    press(&mut app, KeyCode::Enter);
    assert!(!app.search_open);
    assert!(render(&app, 80, 24).0.contains("filter: ANA paused ·"));
    // j scrolls within the filtered rows only.
    for _ in 0..50 {
        press(&mut app, KeyCode::Char('j'));
    }
    assert!(app.events_offset < app.events_rows().len());
    press(&mut app, KeyCode::Char('/'));
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.events_rows().len(), all, "Esc clears the filter");
}

/// The console's own filter folds as the store does: a Greek word typed in capitals
/// finds its entry whatever case it was written in (`Σ` ending the typed word is `σ`,
/// not the final `ς` that `to_lowercase` makes of it).
#[test]
fn the_slash_filter_folds_words_as_the_store_does() {
    let mut s = snapshot();
    s.audit.insert(
        0,
        AuditEntry {
            trace_id: None,
            id: 900,
            at_ms: T0 + 900_000,
            kind: "item".into(),
            entity: "prod_9".into(),
            actor: "engine".into(),
            message: "created Item 77 \"ΟΔΟΣΑ\"".into(),
        },
    );
    let mut app = app();
    update(&mut app, Msg::Snapshot(Arc::new(s)));
    press(&mut app, KeyCode::Char('7'));
    press(&mut app, KeyCode::Char('/'));
    for c in "ΟΔΟΣ".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    let ids: Vec<i64> = app.events_rows().iter().map(|e| e.id).collect();
    assert_eq!(ids, [900]);
}

#[test]
fn shift_j_shows_the_operator_journal_with_who_result_and_the_cli_line() {
    let mut s = snapshot();
    let operator = |id: i64, actor: &str, message: &str| AuditEntry {
        trace_id: None,
        id,
        at_ms: T0 + id * 1000,
        kind: "operator".into(),
        entity: "catalog".into(),
        actor: actor.into(),
        message: message.into(),
    };
    s.audit.splice(
        0..0,
        [
            operator(
                203,
                "ana@10.0.0.7 via ops",
                "pause catalog: paused catalog pipeline",
            ),
            operator(
                202,
                "api:ops@10.0.0.7",
                "retry \"INV 12\": refused: invoice \"INV 12\" not found",
            ),
            operator(
                201,
                "ana@10.0.0.7",
                "silence queue: 1h: silenced alerts matching \"queue:\" for 1h",
            ),
        ],
    );
    let mut app = App::new(Arc::new(s), Theme::ansi());
    press(&mut app, KeyCode::Char('7'));
    let all = app.events_rows().len();
    press(&mut app, KeyCode::Char('j'));
    let (text, _) = render(&app, 120, 40);
    assert!(
        text.contains("created Item") && text.contains("J journal"),
        "{text}"
    );
    assert_eq!(press(&mut app, KeyCode::Char('J')), None);
    assert_eq!(app.events_offset, 0, "the journal starts at the newest");
    let rows = app.events_rows();
    assert_eq!(rows.len(), 4, "three actions and the fixture's older line");
    assert!(rows.iter().all(|e| e.kind == "operator"));
    for (w, h) in [(120, 40), (80, 24)] {
        let (text, _) = render(&app, w, h);
        assert!(!text.contains("created Item"), "{text}");
        for shown in [
            "Events  journal: operator actions · 4 of 4",
            "ana@10.0.0.7 via ops",
            "syncctl ctl pause catalog",
            "api:ops@10.0.0.7",
            "refused",
            "syncctl ctl retry 'INV 12'",
            "syncctl ctl silence queue: 1h",
            // The older line has no CLI equivalent: its text as it is.
            "paused catalog pipeline",
        ] {
            assert!(text.contains(shown), "{shown:?} at {w}x{h}:\n{text}");
        }
        check_snapshot(&format!("events_journal_{w}x{h}"), &text);
    }
    // `/` filters the journal, counted against it.
    press(&mut app, KeyCode::Char('/'));
    for c in "api".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    assert_eq!(app.events_rows().len(), 1);
    let (text, _) = render(&app, 120, 40);
    assert!(
        text.contains("Events  journal  filter: api▏ · 1 of 4 · live"),
        "{text}"
    );
    press(&mut app, KeyCode::Esc);
    // J again: the whole trail.
    press(&mut app, KeyCode::Char('J'));
    assert_eq!(app.events_rows().len(), all);
    assert!(render(&app, 120, 40).0.contains("created Item"));
}

#[test]
fn a_silence_beyond_seven_days_is_refused_with_a_message_not_wrapped() {
    let mut app = app();
    press(&mut app, KeyCode::Char('5'));
    let first = app.selected_alert().expect("an alert");
    let mut silence_for = |text: &str| {
        assert!(press(&mut app, KeyCode::Char('z')).is_none());
        for _ in 0..8 {
            press(&mut app, KeyCode::Backspace);
        }
        for c in text.chars() {
            press(&mut app, KeyCode::Char(c));
        }
        let cmd = press(&mut app, KeyCode::Enter);
        let flash = app.flash.clone().unwrap_or_default();
        press(&mut app, KeyCode::Esc);
        (cmd, flash)
    };
    // 213503982334602 days × 86400 wraps a u64 into about 17 hours.
    for text in [
        "213503982334602d",
        "18446744073709551616",
        "8d",
        "169h",
        "604801",
    ] {
        let (cmd, flash) = silence_for(text);
        assert!(cmd.is_none(), "{text}: {cmd:?}");
        assert!(flash.contains("at most 7d"), "{text}: {flash}");
    }
    let (cmd, flash) = silence_for("0m");
    assert!(cmd.is_none() && flash.contains("at least"), "{flash}");
    match silence_for("7d").0 {
        Some(Command::SilenceAlerts { matcher, secs }) => {
            assert_eq!((matcher.prefix(), secs), (first.as_str(), 604_800))
        }
        other => panic!("{other:?}"),
    }
}

/// The open invoice's detail is a query the console asks for the selected row and
/// keeps for itself: the snapshot carries no one's focus.
#[test]
fn the_dian_detail_is_asked_for_the_selected_invoice_and_shown_when_answered() {
    use syncctl::protocol::{Answer, CommandError, HistoryEntry, InvoiceDetail, Query};
    let mut app = dian_app();
    let key = app
        .detail_wanted()
        .expect("the DIAN screen wants the selected invoice");
    assert_eq!(Some(key.clone()), app.selected_invoice());
    let (text, _) = render(&app, 120, 40);
    assert!(text.contains("to load the history"), "{text}");
    let record = app
        .dian_rows()
        .into_iter()
        .find(|r| r.stripe_id == key)
        .unwrap()
        .clone();
    let detail = InvoiceDetail {
        record,
        history: vec![HistoryEntry {
            at_ms: T0,
            from: Some("PENDING".into()),
            to: "RETRY".into(),
            attempt: 1,
            code: Some("EPR503".into()),
            message: "DIAN did not answer".into(),
            actor: "engine".into(),
        }],
        payload: "{\"numberTemplate\": 1}".into(),
    };
    // The screen asks for the selected invoice, one query at a time.
    assert_eq!(asks(update(&mut app, Msg::Tick)), vec![key.clone()]);
    assert!(
        asks(update(&mut app, Msg::Tick)).is_empty(),
        "one at a time"
    );
    let answer = |app: &mut App, reply| {
        let query = Query::InvoiceDetail { key: key.clone() };
        redraws(&update(
            app,
            Msg::Answer {
                query,
                reply,
                epoch: 0,
            },
        ))
    };
    // An answer for another invoice (the selection moved on) is not shown.
    let mut other = detail.clone();
    other.record.stripe_id = "in_elsewhere".into();
    other.record.number = "SETP0".into();
    assert!(!answer(
        &mut app,
        Ok(Answer::InvoiceDetail(Box::new(other)))
    ));
    assert!(answer(
        &mut app,
        Ok(Answer::InvoiceDetail(Box::new(detail.clone())))
    ));
    assert_eq!(app.detail.as_ref(), Some(&detail));
    let (text, _) = render(&app, 120, 40);
    assert!(text.contains("DIAN did not answer"), "{text}");
    // The same answer again changes nothing on screen.
    assert!(!answer(
        &mut app,
        Ok(Answer::InvoiceDetail(Box::new(detail)))
    ));
    // An engine that cannot answer now keeps what is shown; a gone invoice clears it.
    assert!(!answer(
        &mut app,
        Err(CommandError::unavailable("stopping"))
    ));
    assert!(answer(&mut app, Err(CommandError::not_found("invoice"))));
    assert!(app.detail.is_none());
    // Answered, the open invoice is asked about again on the next tick (it moves on).
    assert_eq!(asks(update(&mut app, Msg::Tick)), vec![key.clone()]);
    // Other screens ask for nothing.
    assert!(
        asks(update(
            &mut app,
            Msg::Key(KeyEvent::from(KeyCode::Char('1')))
        ))
        .is_empty()
    );
    assert_eq!(app.detail_wanted(), None);
    assert!(asks(update(&mut app, Msg::Tick)).is_empty());
}

/// SIGTERM, SIGHUP and SIGINT take the same path as `q` confirmed, once; after a
/// hangup there is nothing left to draw on.
#[test]
fn a_signal_drains_once_and_a_hangup_stops_drawing() {
    use syncctl::console::update::Signal;
    let mut app = app();
    press(&mut app, KeyCode::Char('q'));
    assert!(app.confirm.is_some());
    assert!(matches!(
        sent(update(&mut app, Msg::Signal(Signal::Terminate))),
        Some(Command::Shutdown {})
    ));
    assert!(app.quitting && app.confirm.is_none() && !app.hung_up);
    assert_eq!(
        app.flash.as_deref(),
        Some("SIGTERM: draining in-flight work…")
    );
    // A second signal sends nothing more; a hangup only stops the drawing.
    assert_eq!(sent(update(&mut app, Msg::Signal(Signal::Hangup))), None);
    assert!(app.hung_up);
    assert_eq!(
        press(&mut app, KeyCode::Char('p')),
        None,
        "keys do nothing now"
    );
    // The engine drained: the console ends.
    assert!(matches!(
        update(&mut app, Msg::EngineStopped).as_slice(),
        [Effect::Exit]
    ));
}

#[test]
fn a_command_the_engine_cannot_take_is_said_on_the_flash_line() {
    let mut app = app();
    let cmd = press(&mut app, KeyCode::Char('p')).expect("a pause");
    assert!(redraws(&update(&mut app, Msg::NotSent(cmd))));
    assert_eq!(
        app.flash.as_deref(),
        Some("the engine is not running; the command was not sent")
    );
}

/// The demo's outage toggle is a fault patch for the run loop to apply; outside the
/// demo it is refused in words.
#[test]
fn the_outage_toggle_patches_the_sandbox_and_says_how_it_went() {
    use std::sync::Mutex;
    use syncctl::protocol::{FaultPatch, SandboxFaults};
    #[derive(Default)]
    struct Faults(Mutex<bool>);
    impl SandboxFaults for Faults {
        fn outage(&self, _: &str) -> Option<bool> {
            Some(*self.0.lock().unwrap())
        }
        fn patch_faults(&self, patch: &FaultPatch) -> Result<(), String> {
            *self.0.lock().unwrap() = patch.outage.unwrap_or(false);
            Ok(())
        }
    }
    let outage = |app: &mut App| {
        update(app, Msg::Key(key(KeyCode::Char('O'))))
            .into_iter()
            .find_map(|e| match e {
                Effect::PatchFaults(patch) => Some(patch),
                _ => None,
            })
    };
    let mut app = app();
    press(&mut app, KeyCode::Char('3'));
    press(&mut app, KeyCode::Down);
    assert_eq!(outage(&mut app).map(|p| p.service), None);
    assert!(
        app.flash
            .as_deref()
            .unwrap()
            .contains("only be simulated in the demo")
    );

    let faults = Arc::new(Faults::default());
    let mut app = App::new(Arc::new(snapshot()), Theme::ansi()).with_sandbox(Some(faults.clone()));
    press(&mut app, KeyCode::Char('3'));
    press(&mut app, KeyCode::Down);
    let patch = outage(&mut app).expect("a patch");
    assert_eq!(
        (patch.service.as_str(), patch.outage),
        ("quickbooks", Some(true))
    );
    assert!(!*faults.0.lock().unwrap(), "update applies nothing itself");
    let result = faults.patch_faults(&patch);
    update(&mut app, Msg::FaultsPatched { patch, result });
    assert!(
        app.flash.as_deref().unwrap().contains("quickbooks is DOWN"),
        "{:?}",
        app.flash
    );
    // Down now: O again restores it.
    let patch = outage(&mut app).expect("a patch");
    assert_eq!(patch.outage, Some(false));
    update(
        &mut app,
        Msg::FaultsPatched {
            patch,
            result: Err("no such service".into()),
        },
    );
    assert_eq!(app.flash.as_deref(), Some("sandbox: no such service"));
}

/// Presses each character of `text` through `update`; the commands they sent.
fn type_text(app: &mut App, text: &str) -> Vec<Command> {
    text.chars()
        .filter_map(|c| press(app, KeyCode::Char(c)))
        .collect()
}

/// Opens the `:` line and types `text` into it (nothing is sent while typing).
fn command_line(app: &mut App, text: &str) {
    assert!(press(app, KeyCode::Char(':')).is_none());
    assert!(type_text(app, text).is_empty(), "typing sends nothing");
}

/// The `:` line's text while it is open.
fn line_text(app: &App) -> &str {
    app.command_line
        .as_ref()
        .expect("the : line is open")
        .text()
}

#[test]
fn a_typed_command_is_sent_once_as_the_operator_and_its_reply_flashed() {
    let mut app = app();
    command_line(&mut app, "pause compliance");
    let (text, _) = render(&app, 80, 24);
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with(" :pause compliance"),
        "{text}"
    );
    let effects = update(&mut app, Msg::Key(key(KeyCode::Enter)));
    assert_eq!(
        sent(effects),
        Some(Command::Pause {
            pipeline: Pipeline::Compliance
        })
    );
    assert!(app.command_line.is_none(), "the line closes once sent");
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("pause compliance…"), "{text}");
    app.on_reply(
        &Command::Pause {
            pipeline: Pipeline::Compliance,
        },
        Ok(syncctl::protocol::Outcome::new(
            "compliance pipeline paused",
        )),
    );
    assert!(
        render(&app, 80, 24)
            .0
            .contains("compliance pipeline paused")
    );
    // An empty line closes and sends nothing; so does Esc.
    command_line(&mut app, "  ");
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    assert!(app.command_line.is_none());
    command_line(&mut app, "retry-failed");
    assert_eq!(press(&mut app, KeyCode::Esc), None);
    assert!(app.command_line.is_none());
}

#[test]
fn a_bad_word_is_named_in_place_and_the_line_stays_to_fix_it() {
    let mut app = app();
    command_line(&mut app, "pause catalogue");
    assert_eq!(press(&mut app, KeyCode::Enter), None, "nothing is sent");
    assert_eq!(line_text(&app), "pause catalogue", "the text stays");
    for (w, h) in [(100, 30), (80, 24)] {
        let (text, _) = render(&app, w, h);
        let rows: Vec<&str> = text.lines().collect();
        assert!(
            rows[rows.len() - 1].starts_with(" :pause catalogue"),
            "{text}"
        );
        assert!(
            rows[rows.len() - 2]
                .contains("pipeline: expected catalog or compliance, got \"catalogue\""),
            "{w}×{h}: the error names the word, above the line:\n{text}"
        );
    }
    // Fixing the word clears the error; Enter then sends.
    update(
        &mut app,
        Msg::Key(KeyEvent::new(
            KeyCode::Char('w'),
            crossterm::event::KeyModifiers::CONTROL,
        )),
    );
    assert!(app.command_line.as_ref().unwrap().error.is_none());
    type_text(&mut app, "catalog");
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(Command::Pause {
            pipeline: Pipeline::Catalog
        })
    );
    // An unknown verb is named too, and a long error wraps at 80 columns.
    command_line(&mut app, "frobnicate now");
    press(&mut app, KeyCode::Enter);
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("unknown command \"frobnicate\""), "{text}");
}

#[test]
fn tab_completes_verbs_then_cycles_through_pipelines() {
    let mut app = app();
    command_line(&mut app, "pau");
    press(&mut app, KeyCode::Tab);
    assert_eq!(line_text(&app), "pause ");
    type_text(&mut app, "c");
    press(&mut app, KeyCode::Tab);
    assert_eq!(line_text(&app), "pause catalog");
    // The candidates show above the line while cycling, at 80 columns too.
    let (text, _) = render(&app, 80, 24);
    let above = text.lines().rev().nth(1).unwrap();
    assert!(
        above.contains("catalog") && above.contains("compliance"),
        "{text}"
    );
    press(&mut app, KeyCode::Tab);
    assert_eq!(line_text(&app), "pause compliance");
    press(&mut app, KeyCode::Tab);
    assert_eq!(line_text(&app), "pause catalog");
    press(&mut app, KeyCode::BackTab);
    assert_eq!(line_text(&app), "pause compliance");
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(Command::Pause {
            pipeline: Pipeline::Compliance
        })
    );
}

#[test]
fn tab_completes_invoices_thresholds_and_the_consoles_own_words() {
    let mut app = dian_app();
    command_line(&mut app, "retry setp");
    press(&mut app, KeyCode::Tab);
    assert_eq!(line_text(&app), "retry SETP990000003");
    press(&mut app, KeyCode::Tab);
    assert_eq!(line_text(&app), "retry SETP990000002");
    press(&mut app, KeyCode::Esc);
    command_line(&mut app, "set alerts.error_r");
    press(&mut app, KeyCode::Tab);
    assert_eq!(line_text(&app), "set alerts.error_rate_percent ");
    press(&mut app, KeyCode::Esc);
    command_line(&mut app, "ev");
    press(&mut app, KeyCode::Tab);
    assert_eq!(line_text(&app), "events");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.tab, Tab::Events, ":events goes to the screen");
    command_line(&mut app, "zz");
    press(&mut app, KeyCode::Tab);
    assert!(render(&app, 80, 24).0.contains("no completion"));
}

#[test]
fn history_recalls_the_commands_of_this_session() {
    let mut app = app();
    for line in ["pause catalog", "resume catalog", "resume catalog"] {
        command_line(&mut app, line);
        assert!(press(&mut app, KeyCode::Enter).is_some());
    }
    command_line(&mut app, "ack");
    press(&mut app, KeyCode::Up);
    assert_eq!(line_text(&app), "resume catalog");
    press(&mut app, KeyCode::Up);
    assert_eq!(line_text(&app), "pause catalog", "repeats are kept once");
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Down);
    assert_eq!(line_text(&app), "ack", "what was typed comes back");
    press(&mut app, KeyCode::Up);
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        Some(Command::Resume {
            pipeline: Pipeline::Catalog
        })
    );
}

#[test]
fn keys_typed_in_the_line_fire_no_shortcut() {
    let mut app = app();
    command_line(&mut app, "?q3jpf");
    assert_eq!(line_text(&app), "?q3jpf");
    assert!(!app.help && app.confirm.is_none() && !app.frozen);
    assert_eq!(app.tab, Tab::Overview);
    // A long line scrolls to keep the cursor in view at 80 columns.
    type_text(&mut app, &"x".repeat(120));
    let (text, _) = render(&app, 80, 24);
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with(" :xxxx") && last.chars().count() <= 80,
        "{last:?}"
    );
    press(&mut app, KeyCode::Esc);
    assert!(app.command_line.is_none() && app.tab == Tab::Overview);
}

#[test]
fn typed_commands_at_scale_ask_first_like_their_keys() {
    let mut app = app();
    command_line(&mut app, "breaker stripe force-open");
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    let (text, _) = render(&app, 80, 24);
    assert!(
        text.contains("[ Cancel ]") && text.contains("stripe"),
        "{text}"
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(Command::Breaker {
            service: Service::Stripe,
            action: BreakerAction::ForceOpen
        })
    );
    command_line(&mut app, "set alerts.error_rate_percent 12");
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    assert!(
        render(&app, 120, 40)
            .0
            .contains("Apply 1 threshold change(s)?")
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(Command::SetThresholds {
            changes: vec![ThresholdChange::new("alerts.error_rate_percent", 12.0)],
            for_secs: None,
        })
    );
    // `shutdown` is the quit's drain: the same question.
    command_line(&mut app, "shutdown");
    press(&mut app, KeyCode::Enter);
    assert!(render(&app, 80, 24).0.contains("Quit syncctl?"));
}

#[test]
fn colon_help_lists_the_grammar_and_the_help_overlay_mentions_colon() {
    let mut app = app();
    command_line(&mut app, "help");
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    let (text, _) = render(&app, 120, 40);
    for (usage, _) in syncctl::protocol::grammar() {
        assert!(text.contains(usage), "{usage}:\n{text}");
    }
    let (small, _) = render(&app, 80, 24);
    assert!(small.contains("retry <invoice>"), "{small}");
    // Wrapped, not cut: the rest is a scroll away.
    for _ in 0..4 {
        press(&mut app, KeyCode::PageDown);
    }
    let (small, _) = render(&app, 80, 24);
    assert!(small.contains("shutdown"), "{small}");
    press(&mut app, KeyCode::Char('x'));
    assert!(!app.commands_help);
    press(&mut app, KeyCode::Char('?'));
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("type a command"), "{text}");
}

/// The hints bar (last row) of `app` drawn at `w`×`h`.
fn hints_row(app: &App, w: u16, h: u16) -> String {
    render(app, w, h).0.lines().last().unwrap().to_owned()
}

#[test]
fn a_read_only_console_hides_and_refuses_actions() {
    let mut app = dian_app().with_read_only(true);
    let actions = [
        "p pause",
        "r retry",
        "R retry failed",
        "o force open",
        "C close",
        "x reset",
        "b worker bounds",
        "a acknowledge",
        "z silence",
        "Enter edit",
        "A apply",
    ];
    for tab in Tab::ALL {
        app.tab = tab;
        for (w, h) in [(100, 30), (80, 24)] {
            let row = hints_row(&app, w, h);
            for hint in actions {
                assert!(!row.contains(hint), "{tab:?} {w}×{h} shows {hint:?}: {row}");
            }
            assert!(row.contains("? help") && row.contains("q quit"), "{row}");
            assert!(row.contains(": command"), "{row}");
        }
    }
    // A writable console shows them (the test above can fail).
    let mut writable = dian_app();
    assert!(hints_row(&writable, 100, 30).contains("r retry"));
    writable.tab = Tab::Circuits;
    assert!(hints_row(&writable, 100, 30).contains("o force open"));

    // The help lists no action, and says why.
    app.tab = Tab::Circuits;
    press(&mut app, KeyCode::Char('?'));
    let (help, _) = render(&app, 100, 30);
    assert!(help.contains("read-only console"), "{help}");
    assert!(!help.contains("force the selected circuit open"), "{help}");
    assert!(help.contains("freeze"), "views stay: {help}");
    press(&mut app, KeyCode::Esc);

    // An action key sends nothing and says so; views still work.
    app.tab = Tab::Dian;
    for k in ['p', 'r', 'R'] {
        let effects = update(&mut app, Msg::Key(key(KeyCode::Char(k))));
        assert_eq!(sent(effects), None, "{k}");
        assert!(app.confirm.is_none(), "{k} asks nothing");
        let flash = app.flash.clone().unwrap_or_default();
        assert!(
            flash.starts_with("read-only console: ")
                && flash.ends_with("is not allowed (attached with --read-only or a viewer token)"),
            "{k}: {flash}"
        );
    }
    assert_eq!(
        app.flash.as_deref(),
        Some(
            "read-only console: retrying failed invoices is not allowed (attached with --read-only or a viewer token)"
        )
    );
    assert!(
        render(&app, 80, 24)
            .0
            .contains("read-only console: retrying")
    );
    press(&mut app, KeyCode::Char('s'));
    assert!(app.dian_filter.is_some(), "filtering is a view");
    app.tab = Tab::Circuits;
    press(&mut app, KeyCode::Char('o'));
    assert!(app.confirm.is_none());

    // The `:` line refuses commands with the same words, but takes help and screens.
    command_line(&mut app, "pause compliance");
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    assert_eq!(
        app.flash.as_deref(),
        Some(
            "read-only console: `pause compliance` is not allowed (attached with --read-only or a viewer token)"
        )
    );
    command_line(&mut app, "pau");
    press(&mut app, KeyCode::Tab);
    assert_eq!(line_text(&app), "pau", "no command is offered");
    press(&mut app, KeyCode::Esc);
    command_line(&mut app, "help");
    press(&mut app, KeyCode::Enter);
    assert!(app.commands_help);
    let (text, _) = render(&app, 80, 24);
    assert!(
        text.contains("read-only console") && !text.contains("retry-failed"),
        "{text}"
    );
    press(&mut app, KeyCode::Esc);
    command_line(&mut app, "dian");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.tab, Tab::Dian);

    // q still quits (the drain is the console's own end, not an operator's action).
    press(&mut app, KeyCode::Char('q'));
    assert_eq!(app.confirm, Some(syncctl::console::state::Confirm::Quit));
}

#[test]
fn a_signal_closes_the_line_so_the_drain_is_shown() {
    let mut app = app();
    command_line(&mut app, "pause cat");
    let effects = update(
        &mut app,
        Msg::Signal(syncctl::console::update::Signal::Terminate),
    );
    assert_eq!(sent(effects), Some(Command::Shutdown {}));
    assert!(app.command_line.is_none());
    assert!(render(&app, 80, 24).0.contains("SIGTERM: draining"));
}

/// Issue 15 point 6: on Workers, `F` retries every failed catalog job after a
/// confirmation that says how many; `:resync` re-runs the full sync after one, and is
/// refused in place while a full sync runs.
#[test]
fn failed_catalog_jobs_and_a_full_sync_are_run_again_after_a_confirmation() {
    let mut app = app();
    press(&mut app, KeyCode::Char('4'));
    assert!(press(&mut app, KeyCode::Char('F')).is_none());
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("Retry 2 failed catalog jobs?"), "{text}");
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(Command::RetryFailedJobs {})
    );
    // While the full sync runs, a resync is refused where it is asked.
    command_line(&mut app, "resync");
    assert!(press(&mut app, KeyCode::Enter).is_none());
    assert!(app.confirm.is_none());
    assert!(
        render(&app, 80, 24)
            .0
            .contains("a full sync is already running"),
        "{}",
        render(&app, 80, 24).0
    );
    let mut s = (*app.snapshot).clone();
    s.catalog.full_sync.done = true;
    app.snapshot = std::sync::Arc::new(s);
    command_line(&mut app, "resync");
    assert!(press(&mut app, KeyCode::Enter).is_none());
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("Run the full sync again?"), "{text}");
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(Command::Resync {})
    );
}
#[test]
fn reconcile_at_80x24_and_120x40() {
    let mut app = app();
    press(&mut app, KeyCode::Char('9'));
    assert_eq!(app.tab, Tab::Reconcile);
    assert!(app.shown().reconciliation);
    for (w, h) in [(80, 24), (120, 40)] {
        let (text, _) = render(&app, w, h);
        assert!(text.contains("drift        2"), "{text}");
        // Per currency, grouped, never one sum of pesos and dollars.
        assert!(
            text.contains("COP 1 237.50 · USD 25.00"),
            "amounts per currency:\n{text}"
        );
        assert!(!text.contains("1 262.50"), "a mixed total:\n{text}");
        assert!(
            text.contains("COP 1 237.50\u{2502}"),
            "the row's amount:\n{text}"
        );
        assert!(text.contains("prod_00000000000042"), "{text}");
        assert!(text.contains("name price"), "{text}");
        // Which side is inactive, in full.
        assert!(text.contains("inactive in QB"), "{text}");
        assert!(
            text.contains("\"Cafe premium\" · COP 12.50 · active · Item 512"),
            "{text}"
        );
        check_snapshot(&format!("reconcile_{w}x{h}"), &text);
    }
}

#[test]
fn reconcile_keys_resync_the_selected_product_or_every_drifted_one_after_a_preview() {
    let mut app = app();
    press(&mut app, KeyCode::Char('9'));
    assert_eq!(
        press(&mut app, KeyCode::Char('r')),
        Some(Command::ResyncItem {
            key: "prod_00000000000042".into()
        })
    );
    // An orphan has no product to write from: said, nothing sent.
    press(&mut app, KeyCode::Char('G'));
    assert!(press(&mut app, KeyCode::Char('r')).is_none());
    let flash = app.flash.clone().unwrap_or_default();
    assert!(flash.contains("Item 901 has no Stripe product"), "{flash}");
    // Resync all: a preview with the counts, focus on Cancel.
    assert!(press(&mut app, KeyCode::Char('R')).is_none());
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("Resync 3 Item(s)?"), "{text}");
    assert!(text.contains("2 drifted, 1 missing"), "{text}");
    assert!(text.contains("Orphans are"), "{text}");
    assert!(press(&mut app, KeyCode::Enter).is_none());
    assert!(app.confirm.is_none());
    press(&mut app, KeyCode::Char('R'));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(Command::ResyncDrifted {})
    );
    // Nothing drifted: refused where it is asked.
    let mut s = (*app.snapshot).clone();
    s.reconciliation = Default::default();
    s.reconciliation.ready = true;
    app.snapshot = std::sync::Arc::new(s);
    assert!(press(&mut app, KeyCode::Char('R')).is_none());
    assert!(app.confirm.is_none());
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("every product has its Item"), "{text}");
}

// ---- issue 15: the terminal ----

/// What no cell may hold: halves of flags, joiners, variation selectors, skin tones,
/// tags, the keycap mark.
fn unclean(c: char) -> bool {
    matches!(
        c,
        '\u{1F1E6}'..='\u{1F1FF}'
            | '\u{200B}'..='\u{200F}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{20E3}'
            | '\u{1F3FB}'..='\u{1F3FF}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// Every cell holds one grapheme of one code point (or a letter with its accents), of
/// the width a terminal draws it at, and a wide one is followed by the blank it covers.
fn assert_clean_cells(buf: &ratatui::buffer::Buffer, what: &str) {
    use unicode_segmentation::UnicodeSegmentation;
    use unicode_width::UnicodeWidthStr;
    let area = buf.area;
    for y in 0..area.height {
        for x in 0..area.width {
            let s = buf[(x, y)].symbol();
            assert!(
                !s.chars().any(unclean),
                "{what}: cell ({x},{y}) holds {s:?}"
            );
            assert_eq!(s.graphemes(true).count(), 1, "{what}: cell ({x},{y}) {s:?}");
            let w = s.width();
            assert!(w <= 2, "{what}: cell ({x},{y}) {s:?} is {w} wide");
            if w == 2 && x + 1 < area.width {
                assert_eq!(
                    buf[(x + 1, y)].symbol(),
                    " ",
                    "{what}: the cell after the wide {s:?} at ({x},{y})"
                );
            }
        }
    }
}

/// The product names of the sandbox that end in an emoji, and the other kinds of
/// multi-code-point emoji an operator's data can hold.
fn hard_names() -> Vec<String> {
    use syncctl::sandbox::data::{EMOJI, Rng, product};
    let mut rng = Rng::new(1);
    let mut names: Vec<String> = (0..400)
        .map(|i| product(&mut rng, i).name)
        .filter(|n| EMOJI.iter().any(|e| n.ends_with(e)))
        .collect();
    for e in EMOJI {
        if !names.iter().any(|n| n.ends_with(e)) {
            names.push(format!("Ajiaco Año Nuevo {e}"));
        }
    }
    for e in [
        "👩\u{200D}💻",
        "👍🏽",
        "❤\u{FE0F}",
        "1\u{FE0F}\u{20E3}",
        "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
        "🇨🇴🇨🇴",
    ] {
        names.push(format!("Tamal Jalapeño {e} x"));
    }
    // Invisible characters pasted after a wide one (a zero-width space, a bidi
    // override): ratatui's table puts each in the wide one's second cell.
    names.push("Bandeja 🇨🇴\u{200B}\u{202E}paisa".into());
    names.push("Café 日\u{200B}本 x".into());
    names
}

/// Flag emoji and other multi-code-point emoji in product names, buyers, errors,
/// alerts and typed text: every screen at 80×24 and 120×40, drawn one after another on
/// one terminal as an operator switches, holds no cell a terminal draws at a width of
/// its own; flags read as their letters.
#[test]
fn hard_names_leave_no_stray_cells_on_any_screen() {
    use syncctl::protocol::{AuditEntry, ErrorLine};
    let names = hard_names();
    assert!(
        names.iter().any(|n| n.contains('\u{1F1E8}')),
        "a flag among {names:?}"
    );
    let mut app = dian_app();
    let mut s = (*app.snapshot).clone();
    s.audit = names
        .iter()
        .enumerate()
        .map(|(i, n)| AuditEntry {
            trace_id: None,
            id: 1000 - i as i64,
            at_ms: T0 - i as i64 * 1000,
            kind: "item".into(),
            entity: format!("prod_{i:014}"),
            actor: "engine".into(),
            message: format!("created Item {i} \"{n}\""),
        })
        .collect();
    s.recent_errors = names
        .iter()
        .map(|n| ErrorLine {
            at_ms: T0,
            entity: "prod_1".into(),
            message: format!("quickbooks 400: {n}"),
        })
        .collect();
    for (r, n) in s.compliance.invoices.iter_mut().zip(names.iter().rev()) {
        r.buyer_name = n.clone();
        r.last_message = Some(n.clone());
        r.last_code = None;
    }
    for (n, name) in s.telemetry.notifications.iter_mut().zip(&names) {
        n.message = name.clone();
    }
    app.snapshot = Arc::new(s);
    for (w, h) in [(120, 40), (80, 24)] {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        for tab in Tab::ALL {
            app.tab = tab;
            app.flash = (tab == Tab::Settings).then(|| names[0].clone());
            // The frame as sent (TestBackend keeps what a wide grapheme's second cell
            // held before; a terminal draws the grapheme over it).
            let frame = term.draw(|f| screens::draw(f, &app)).unwrap();
            assert_clean_cells(frame.buffer, &format!("{tab:?} at {w}x{h}"));
        }
    }
    // The flags read as their country's letters.
    app.tab = Tab::Events;
    let (text, _) = render(&app, 120, 40);
    assert!(text.contains("Jalapeño COCO x"), "{text}");
    // Nothing invisible after a wide grapheme takes its letters or the grapheme away.
    assert!(text.contains("Bandeja COpaisa"), "{text}");
    // (Each wide grapheme here followed by the blank cell it covers.)
    assert!(text.contains("Café 日 本  x"), "{text}");
}

/// The header names all nine screens (short below 100 columns, against their keys
/// when that keeps one row) beside or above the
/// status, which keeps SANDBOX, the catalog's state and where the console stands
/// whole; the hints bar fits, most useful first, `? help` and `q quit` always — on
/// every screen at 80×24 and 120×40, hosting, read-only, attached and reconnecting.
#[test]
fn every_screen_names_all_tabs_and_fits_its_hints_hosted_or_attached() {
    const SHORT: [&str; 9] = [
        "Over", "Thru", "Circ", "Work", "Alert", "DIAN", "Event", "Set", "Recon",
    ];
    use syncctl::protocol::{Attached, LinkState, Role};
    let attached = |role| Attached {
        to: "10.0.0.5:9870".into(),
        role,
        actor: "ana@10.0.0.7".into(),
        connection: 3,
    };
    let links: [(&str, LinkState, &[&str]); 5] = [
        ("hosted", LinkState::Hosted, &[]),
        ("read-only", LinkState::Hosted, &["READ-ONLY"]),
        (
            "attached",
            LinkState::Attached(attached(Role::Operator)),
            &["ATTACHED", "10.0.0.5:9870"],
        ),
        (
            "viewer",
            LinkState::Attached(attached(Role::Viewer)),
            &["ATTACHED", "10.0.0.5:9870", "READ-ONLY"],
        ),
        (
            "reconnecting viewer",
            LinkState::Reconnecting {
                was: attached(Role::Viewer),
                since_ms: T0,
                attempt: 2,
                why: "connection reset".into(),
            },
            &["RECONNECTING…", "as of 11:06:40", "READ-ONLY"],
        ),
    ];
    for (what, link, badges) in links {
        let mut app = dian_app().with_read_only(what == "read-only");
        update(&mut app, Msg::Link(link));
        for tab in Tab::ALL {
            app.tab = tab;
            for (w, h) in [(80, 24), (120, 40)] {
                let (text, _) = render(&app, w, h);
                let lines: Vec<&str> = text.lines().collect();
                // The header: one row, or two when the status needs a row of its own.
                let header = if lines[1].contains("1 Over") || lines[1].contains("1 Overview") {
                    format!("{}\n{}", lines[0], lines[1])
                } else {
                    lines[0].to_owned()
                };
                let ctx = format!("{what} {tab:?} {w}×{h}:\n{text}");
                assert!(
                    header.contains("SANDBOX") && header.contains("▶ running"),
                    "{ctx}"
                );
                for b in badges {
                    assert!(header.contains(b), "{b} in the header, {ctx}");
                }
                // In full from 100 columns (hosting, always; attached, when they fit
                // beside the status), else short.
                let named = |full: bool| {
                    Tab::ALL.iter().zip(SHORT).all(|(t, short)| {
                        let name = if full { t.title() } else { short };
                        header.contains(&format!("{} {name}", t.key()))
                            || (!full && header.contains(&format!("{}{name}", t.key())))
                    })
                };
                let full = w >= 100 && (what == "hosted" || named(true));
                assert!(named(full), "all nine named (full: {full}), {ctx}");
                let hints = lines.last().unwrap();
                assert!(
                    hints.contains("? help") && hints.ends_with("q quit"),
                    "{ctx}"
                );
                // Most useful first: the screen's own first key leads.
                let (key, hint) = syncctl::console::keymap::hints(tab, app.read_only)
                    .next()
                    .unwrap();
                assert!(
                    hints.starts_with(&format!(" {key} {hint}")),
                    "{key} {hint} first: {ctx}"
                );
            }
        }
        // Hosting at 80 columns, the status and all nine names share one row.
        if what == "hosted" {
            app.tab = Tab::Overview;
            let (text, _) = render(&app, 80, 24);
            assert!(text.lines().next().unwrap().contains("9Recon"), "{text}");
        }
    }
}

/// The DIAN queue's selection is the invoice, not the row: a new invoice on top does
/// not change what `r` retries; once the selected invoice leaves the view (validated
/// out of the FAILED filter) `r` retries nothing and the screen says why; ↓ then
/// selects the invoice now at its place.
#[test]
fn dian_keys_act_on_the_selected_invoice_however_the_queue_moves() {
    use syncctl::compliance::machine::Status;
    let mut app = dian_app();
    while app.dian_filter != Some(Status::Failed) {
        press(&mut app, KeyCode::Char('s'));
    }
    press(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected_invoice().as_deref(), Some("in_00000000000001"));
    // A new failed invoice arrives on top of the queue.
    let mut s = (*app.snapshot).clone();
    let mut newer = s.compliance.invoices[0].clone();
    newer.stripe_id = "in_00000000000004".into();
    newer.number = "SETP990000004".into();
    s.compliance.invoices.insert(0, newer);
    update(&mut app, Msg::Snapshot(Arc::new(s.clone())));
    let (text, _) = render(&app, 120, 40);
    let marked: Vec<&str> = text.lines().filter(|l| l.starts_with("│▶")).collect();
    assert!(
        marked.len() == 1 && marked[0].contains("SETP990000001"),
        "{text}"
    );
    assert_eq!(
        press(&mut app, KeyCode::Char('r')),
        Some(Command::RetryInvoice {
            key: "in_00000000000001".into()
        })
    );
    // DIAN accepts it: it leaves the FAILED view, and r acts on nothing.
    let i = s
        .compliance
        .invoices
        .iter()
        .position(|r| r.number == "SETP990000001");
    s.compliance.invoices[i.unwrap()].status = Status::Validated;
    update(&mut app, Msg::Snapshot(Arc::new(s)));
    assert_eq!(app.selected_invoice(), None);
    assert_eq!(press(&mut app, KeyCode::Char('r')), None);
    let flash = app.flash.clone().unwrap_or_default();
    assert_eq!(
        flash,
        "SETP990000001 is VALIDATED now, out of this view: nothing retried — ↑/↓ selects another"
    );
    app.flash = None;
    let (text, _) = render(&app, 120, 40);
    assert!(!text.contains("│▶"), "no row is selected: {text}");
    assert!(
        text.contains("SETP990000001 is VALIDATED now, out of this view."),
        "{text}"
    );
    // ↓ selects the invoice now where it was.
    press(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected_invoice().as_deref(), Some("in_00000000000003"));
}

/// The Alerts selection is the alert, not the row: re-sorted, `a` still acknowledges
/// the one selected; resolved, `a` and `z` act on nothing and the title says so.
#[test]
fn alert_keys_act_on_the_selected_alert_however_the_list_moves() {
    let mut app = app();
    press(&mut app, KeyCode::Char('5'));
    press(&mut app, KeyCode::Char('j'));
    let chosen = app.selected_alert().expect("an alert");
    assert_eq!(chosen, app.snapshot.telemetry.alerts[1].id);
    // The engine re-sorts the alerts.
    let mut s = (*app.snapshot).clone();
    s.telemetry.alerts.reverse();
    assert!(s.telemetry.alerts[1].id != chosen, "the list did move");
    update(&mut app, Msg::Snapshot(Arc::new(s.clone())));
    assert_eq!(
        press(&mut app, KeyCode::Char('a')),
        Some(Command::AckAlerts {
            matcher: AlertMatcher::Prefix(chosen.clone())
        })
    );
    // It resolves: gone from the list.
    s.telemetry.alerts.retain(|a| a.id != chosen);
    update(&mut app, Msg::Snapshot(Arc::new(s)));
    assert_eq!(press(&mut app, KeyCode::Char('a')), None);
    assert_eq!(
        app.flash.as_deref(),
        Some(
            format!(
                "{chosen} is no longer pending or firing: nothing acknowledged — ↑/↓ selects another"
            )
            .as_str()
        )
    );
    assert_eq!(press(&mut app, KeyCode::Char('z')), None);
    assert!(app.prompt.is_none(), "no silence is asked for");
    let (text, _) = render(&app, 120, 40);
    assert!(
        text.contains(&format!("{chosen} is no longer pending or firing")),
        "{text}"
    );
    press(&mut app, KeyCode::Char('k'));
    assert!(app.selected_alert().is_some());
}

/// `tag:` without a name is refused at the cache prompt, which stays open with the
/// reason; nothing is asked or sent. (The same grammar as `:invalidate`.)
#[test]
fn the_cache_prompt_refuses_an_empty_tag() {
    let mut app = app();
    press(&mut app, KeyCode::Char('c'));
    assert!(type_text(&mut app, "tag:").is_empty());
    assert_eq!(press(&mut app, KeyCode::Enter), None);
    assert!(
        app.confirm.is_none(),
        "nothing to confirm: {:?}",
        app.confirm
    );
    assert_eq!(
        app.prompt.as_deref(),
        Some("tag:"),
        "the prompt stays to fix it"
    );
    let (text, _) = render(&app, 120, 40);
    let footer = text.lines().last().unwrap();
    assert!(
        footer.contains("tag: empty") && footer.contains("tag:NAME"),
        "{footer}"
    );
    // Fixed, it asks as before.
    type_text(&mut app, "prices");
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        app.confirm,
        Some(syncctl::console::state::Confirm::InvalidateCache {
            scope: CacheScope::Tag("prices".into()),
            entries: app.snapshot.telemetry.cache.entries,
        })
    );
}

/// The payload pane scrolls with `[` and `]`: a payload longer than the pane shows its
/// last lines after scrolling, and its first again after scrolling back.
#[test]
fn the_payload_pane_scrolls() {
    use syncctl::protocol::{Answer, InvoiceDetail, Query};
    let mut app = dian_app();
    update(&mut app, Msg::Tick);
    let key = app.selected_invoice().unwrap();
    let record = app
        .dian_rows()
        .into_iter()
        .find(|r| r.stripe_id == key)
        .unwrap()
        .clone();
    let payload: Vec<String> = (1..=60)
        .map(|i| format!("  \"line_{i:02}\": {i},"))
        .collect();
    let detail = InvoiceDetail {
        record,
        history: Vec::new(),
        payload: format!("{{\n{}\n}}", payload.join("\n")),
    };
    let query = Query::InvoiceDetail { key: key.clone() };
    let reply = Ok(Answer::InvoiceDetail(Box::new(detail)));
    update(
        &mut app,
        Msg::Answer {
            query,
            reply,
            epoch: 0,
        },
    );
    press(&mut app, KeyCode::Char('v'));
    let (text, _) = render(&app, 120, 40);
    assert!(
        text.contains("\"line_01\"") && !text.contains("\"line_60\""),
        "{text}"
    );
    for _ in 0..20 {
        press(&mut app, KeyCode::Char(']'));
    }
    let (text, _) = render(&app, 120, 40);
    assert!(
        text.contains("\"line_60\"") && !text.contains("\"line_01\""),
        "{text}"
    );
    assert!(
        text.contains("of 62)"),
        "the title says which rows show: {text}"
    );
    for _ in 0..20 {
        press(&mut app, KeyCode::Char('['));
    }
    let (text, _) = render(&app, 120, 40);
    assert!(text.contains("\"line_01\""), "{text}");
}

/// A list is pinned when its screen shows it: invoices that arrive while the operator
/// is elsewhere do not leave the DIAN screen, once opened, on an old one.
#[test]
fn the_dian_screen_opened_later_selects_its_newest_invoice() {
    let mut app = dian_app();
    press(&mut app, KeyCode::Char('1'));
    let mut s = (*app.snapshot).clone();
    let mut newer = s.compliance.invoices[0].clone();
    newer.stripe_id = "in_00000000000004".into();
    newer.number = "SETP990000004".into();
    s.compliance.invoices.insert(0, newer);
    update(&mut app, Msg::Snapshot(Arc::new(s)));
    press(&mut app, KeyCode::Char('6'));
    assert_eq!(app.selected_invoice().as_deref(), Some("in_00000000000004"));
}

/// Issue 17 point 2: `L` on the DIAN list asks the engine for the selected invoice's
/// chain and shows it — its product, the product's Item, the Alegra document, DIAN's
/// verdict with the CUFE, and where two systems disagree; `:chain KEY` asks for any
/// key; the panel scrolls and any other key closes it.
#[test]
fn the_chain_panel_shows_an_invoices_product_item_and_cufe() {
    use syncctl::protocol::{Answer, ChainLink, EntityChain, FieldDiff, Query};
    let mut app = dian_app();
    update(&mut app, Msg::Tick);
    let key = app.selected_invoice().unwrap();
    let effects = update(&mut app, Msg::Key(KeyEvent::from(KeyCode::Char('L'))));
    let asked: Vec<String> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Ask(Query::Chain { key }) => Some(key.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![key.clone()]);
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("asking the engine"), "{text}");
    let link = |system: &str, id: &str, depth: u8, facts: &[(&str, &str)]| ChainLink {
        system: system.into(),
        id: id.into(),
        depth,
        facts: facts
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..ChainLink::default()
    };
    let cufe = "9f".repeat(48);
    let mut item = link(
        "quickbooks item",
        "57",
        2,
        &[("name", "Café Premium"), ("SyncToken", "3")],
    );
    item.disagreements.push(FieldDiff {
        field: "Item".into(),
        here: "57".into(),
        there: "41".into(),
        against: "the invoice line".into(),
    });
    let chain = EntityChain {
        asked: key.clone(),
        links: vec![
            link("stripe invoice", &key, 0, &[("number", "SETP990000012")]),
            link("alegra document", "1001", 1, &[("attempts", "1")]),
            link(
                "dian",
                "SETP990000012",
                2,
                &[("state", "VALIDATED"), ("CUFE", &cufe)],
            ),
            link(
                "stripe product",
                "prod_00000000000042",
                1,
                // A name made to reverse the rest of the operator's line.
                &[("mapping", "synced"), ("name", "Tea \u{202E}gpj.exe")],
            ),
            item,
        ],
        more_invoices: 0,
        also: vec![],
    };
    // An answer about another key is not this panel's.
    let other = Query::Chain {
        key: "in_other".into(),
    };
    update(
        &mut app,
        Msg::Answer {
            query: other,
            reply: Ok(Answer::Chain(Box::default())),
            epoch: 0,
        },
    );
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("asking the engine"), "{text}");
    let query = Query::Chain { key: key.clone() };
    update(
        &mut app,
        Msg::Answer {
            query,
            reply: Ok(Answer::Chain(Box::new(chain))),
            epoch: 0,
        },
    );
    let (text, _) = render(&app, 120, 40);
    for want in [
        "stripe invoice",
        "alegra document 1001",
        "quickbooks item 57",
        "prod_00000000000042",
        "≠ Item: 57 in quickbooks item · 41 in the invoice line",
        &cufe[..40],
        "Tea \u{FFFD}gpj.exe",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    assert!(!text.contains('\u{202E}'), "{text}");
    let (small, _) = render(&app, 80, 24);
    assert!(small.contains("quickbooks item 57"), "{small}");
    // Scrolling keeps the panel; another key closes it.
    press(&mut app, KeyCode::Down);
    assert!(app.chain.is_some());
    press(&mut app, KeyCode::Char('x'));
    assert!(app.chain.is_none());
    // `:chain KEY` from the command line, anywhere.
    press(&mut app, KeyCode::Char('1'));
    press(&mut app, KeyCode::Char(':'));
    let mut asked = Vec::new();
    for c in "chain prod_7".chars() {
        update(&mut app, Msg::Key(KeyEvent::from(KeyCode::Char(c))));
    }
    for e in update(&mut app, Msg::Key(KeyEvent::from(KeyCode::Enter))) {
        if let Effect::Ask(Query::Chain { key }) = e {
            asked.push(key);
        }
    }
    assert_eq!(asked, vec!["prod_7".to_owned()]);
    // Elsewhere than a list, `L` says where it works.
    press(&mut app, KeyCode::Esc);
    press(&mut app, KeyCode::Char('1'));
    press(&mut app, KeyCode::Char('L'));
    assert!(app.chain.is_none());
    assert!(app.flash.as_deref().unwrap_or("").contains(":chain KEY"));
}

/// The `/` filter on the Events screen searches the engine's whole trail, not only the
/// newest entries the snapshot holds: an action older than those is found, the title
/// shows the true total, and older pages load as the operator scrolls. The console's
/// queries are answered by a real store, as the engine answers them.
#[test]
fn the_events_filter_searches_the_whole_trail_in_pages_with_the_true_total() {
    use syncctl::protocol::{Answer, Query};
    let dir = tempfile::tempdir().unwrap();
    let store = syncctl::store::Store::open(dir.path()).unwrap();
    store
        .audit(
            "operator",
            "catalog",
            "ana@10.0.0.7",
            "paused catalog pipeline",
        )
        .unwrap();
    for i in 0..1500 {
        store
            .audit(
                "item",
                &format!("prod_{i}"),
                "engine",
                &format!("created Item {i}"),
            )
            .unwrap();
    }
    let mut snap = snapshot();
    snap.audit = store.recent_audit(500, 0).unwrap();
    let mut app = App::new(Arc::new(snap), Theme::monochrome());
    app.tab = Tab::Events;
    // The engine's side: each query the console asks, answered from the store, until
    // the console asks nothing more.
    let engine = |app: &mut App, mut effects: Vec<Effect>| {
        let mut asked = 0;
        while let Some(query) = effects.iter().find_map(|e| match e {
            Effect::Ask(q) => Some(q.clone()),
            _ => None,
        }) {
            asked += 1;
            let reply = match &query {
                Query::Audit { filter } => Ok(Answer::Audit {
                    entries: store.audit_query(filter).unwrap(),
                }),
                Query::AuditCount { filter } => Ok(Answer::AuditCount {
                    total: store.audit_count(filter).unwrap(),
                }),
                other => panic!("unexpected query {other:?}"),
            };
            effects = update(
                app,
                Msg::Answer {
                    query,
                    reply,
                    epoch: 0,
                },
            );
        }
        asked
    };
    let typed = |app: &mut App, keys: &str| {
        for c in keys.chars() {
            let effects = update(app, Msg::Key(key(KeyCode::Char(c))));
            engine(app, effects);
        }
    };
    typed(&mut app, "/PAUSED");
    let (text, _) = render(&app, 120, 40);
    assert!(text.contains("filter: PAUSED▏ · 1 of 1 ·"), "{text}");
    assert!(text.contains("paused catalog pipeline"), "{text}");

    // A filter with many matches: the first page, the true total, then older pages
    // as the operator scrolls to the end.
    for _ in 0.."PAUSED".len() {
        let effects = update(&mut app, Msg::Key(key(KeyCode::Backspace)));
        engine(&mut app, effects);
    }
    typed(&mut app, "created");
    let (text, _) = render(&app, 120, 40);
    assert!(text.contains("filter: created▏ · 200 of 1500 ·"), "{text}");
    let effects = update(&mut app, Msg::Key(key(KeyCode::Enter)));
    engine(&mut app, effects);
    let mut pages = 0;
    for _ in 0..100 {
        let effects = update(&mut app, Msg::Key(key(KeyCode::End)));
        pages += engine(&mut app, effects);
    }
    assert_eq!(pages, 7, "the 7 older pages, each asked once");
    let rows = app.events_rows();
    assert_eq!(rows.len(), 1500);
    assert!(rows.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!(rows.last().unwrap().message, "created Item 0");
    let (text, _) = render(&app, 120, 40);
    assert!(text.contains("created Item 0"), "{text}");

    // The journal (`J`, no filter) is read from the store too: the one action, older
    // than the 500 entries the snapshot holds, is there.
    for k in [KeyCode::Char('/'), KeyCode::Esc] {
        let effects = update(&mut app, Msg::Key(key(k)));
        engine(&mut app, effects);
    }
    assert!(app.events_filter.is_empty());
    let effects = update(&mut app, Msg::Key(key(KeyCode::Char('J'))));
    assert!(engine(&mut app, effects) >= 1, "the journal asks the store");
    let rows = app.events_rows();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].message, "paused catalog pipeline");
    let (text, _) = render(&app, 120, 40);
    assert!(
        text.contains("journal: operator actions · 1 of 1 ·"),
        "{text}"
    );
    assert!(text.contains("paused catalog pipeline"), "{text}");
}

/// The Events search's asks among `effects` (pages and totals), in order.
fn search_asks(effects: &[Effect]) -> Vec<syncctl::protocol::Query> {
    use syncctl::protocol::Query;
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Ask(q @ (Query::Audit { .. } | Query::AuditCount { .. })) => Some(q.clone()),
            _ => None,
        })
        .collect()
}

/// The effects of typing `text` (a key per character), in order.
fn typed_asks(app: &mut App, text: &str) -> Vec<Effect> {
    text.chars()
        .flat_map(|c| update(app, Msg::Key(KeyEvent::from(KeyCode::Char(c)))))
        .collect()
}

/// An engine that cannot search its trail for the `/` filter is said so on the title,
/// with why; what the console holds is still filtered and shown.
#[test]
fn a_filter_the_engine_could_not_search_says_so_and_why() {
    use syncctl::protocol::{CommandError, Query};
    let mut app = app();
    press(&mut app, KeyCode::Char('7'));
    let all = app.events_rows().len();
    let asked = typed_asks(&mut app, "/paused");
    let held = app.events_rows().len();
    assert!(held > 0 && held < all);
    // Each keystroke asked for its own filter; the last one is the filter now.
    let query = asked
        .iter()
        .rev()
        .find_map(|e| match e {
            Effect::Ask(q @ Query::Audit { .. }) => Some(q.clone()),
            _ => None,
        })
        .expect("the first page asked");
    let effects = update(
        &mut app,
        Msg::Answer {
            query,
            reply: Err(CommandError::unavailable("the store: disk I/O error")),
            epoch: 0,
        },
    );
    assert!(redraws(&effects));
    let (text, _) = render(&app, 120, 40);
    assert!(
        text.contains(&format!(
            "filter: paused▏ · {held} of {all} · whole trail not searched: the store: disk I/O error"
        )),
        "{text}"
    );
    assert_eq!(app.events_rows().len(), held, "what is held, still shown");
    // Another filter is another search: the refusal was the old one's.
    press(&mut app, KeyCode::Backspace);
    let (text, _) = render(&app, 120, 40);
    assert!(!text.contains("not searched"), "{text}");
}

/// Reconnected to its engine, the console asks again at once a search that failed
/// for now (not after its wait), and anew one the engine refused (it may be another
/// engine now: restarted, upgraded, another role granted).
#[test]
fn a_reconnect_asks_a_failed_or_refused_search_again_at_once() {
    use syncctl::protocol::{Attached, CommandError, LinkState, Query, Role};
    let attached = || Attached {
        to: "10.0.0.5:9870".into(),
        role: Role::Operator,
        actor: "ana@10.0.0.7".into(),
        connection: 3,
    };
    let reconnecting = || LinkState::Reconnecting {
        was: attached(),
        since_ms: T0,
        attempt: 1,
        why: "connection reset".into(),
    };
    let pages = |effects: &[Effect]| -> Vec<Query> {
        search_asks(effects)
            .into_iter()
            .filter(|q| matches!(q, Query::Audit { .. }))
            .collect()
    };
    for (why, reply) in [
        (
            "failed for now",
            CommandError::unavailable("the connection to the engine dropped"),
        ),
        (
            "refused",
            CommandError::invalid("text", "contains control characters"),
        ),
    ] {
        let mut app = app();
        update(&mut app, Msg::Link(LinkState::Attached(attached())));
        press(&mut app, KeyCode::Char('7'));
        let page = pages(&typed_asks(&mut app, "/paused")).pop().unwrap();
        update(
            &mut app,
            Msg::Answer {
                query: page.clone(),
                reply: Err(reply),
                epoch: 0,
            },
        );
        let effects = update(&mut app, Msg::Link(reconnecting()));
        assert!(
            pages(&effects).is_empty(),
            "{why}: not while the link is down"
        );
        let effects = update(&mut app, Msg::Link(LinkState::Attached(attached())));
        assert_eq!(pages(&effects), [page], "{why}: asked again on reconnect");
    }
}

/// A search the engine refused (busy, its store failing, the link down) is asked again
/// after a wait that doubles (2 s, 4 s, … 30 s at most), the title counting it down; once
/// answered, the failure is gone and the clock stops.
#[test]
fn a_failed_search_is_asked_again_after_a_wait_that_doubles() {
    use syncctl::protocol::{Answer, CommandError, Query};
    let mut app = app();
    press(&mut app, KeyCode::Char('7'));
    let asked = typed_asks(&mut app, "/paused");
    let page = |effects: &[Effect]| {
        effects.iter().find_map(|e| match e {
            Effect::Ask(q @ Query::Audit { .. }) => Some(q.clone()),
            _ => None,
        })
    };
    let first = asked
        .iter()
        .rev()
        .find_map(|e| page(std::slice::from_ref(e)))
        .expect("the first page asked");
    assert!(!app.ticks(), "nothing to poll while the search is answered");
    let refuse = |app: &mut App, query: Query| {
        update(
            app,
            Msg::Answer {
                query,
                reply: Err(CommandError::unavailable("the engine is busy")),
                epoch: 0,
            },
        )
    };
    // The page refused; the total, asked next, answered.
    let effects = refuse(&mut app, first.clone());
    let total = effects
        .iter()
        .find_map(|e| match e {
            Effect::Ask(q @ Query::AuditCount { .. }) => Some(q.clone()),
            _ => None,
        })
        .expect("the total asked after the page");
    update(
        &mut app,
        Msg::Answer {
            query: total,
            reply: Ok(Answer::AuditCount { total: 3 }),
            epoch: 0,
        },
    );
    assert!(app.ticks(), "the clock ticks for the retry");
    let title = |app: &App| render(app, 120, 40).0;
    assert!(
        title(&app).contains("whole trail not searched: the engine is busy (again in 2 s)"),
        "{}",
        title(&app)
    );
    // Each wait, counted down a tick at a time; the page asked again as it ends.
    for wait in [2, 4, 8, 16, 30, 30] {
        for left in (1..wait).rev() {
            let effects = update(&mut app, Msg::Tick);
            assert_eq!(
                page(&effects),
                None,
                "asked early ({left} s left of {wait})"
            );
            assert!(
                title(&app).contains(&format!("(again in {left} s)")),
                "{}",
                title(&app)
            );
        }
        let effects = update(&mut app, Msg::Tick);
        let again = page(&effects).expect("asked again once the wait is over");
        assert_eq!(again, first, "the same page");
        assert!(!title(&app).contains("not searched"), "{}", title(&app));
        if wait == 30 && app.events_search.as_ref().unwrap().retries == 6 {
            // Answered at last: the failure gone, the clock stopped, the matches shown.
            update(
                &mut app,
                Msg::Answer {
                    query: again,
                    reply: Ok(Answer::Audit { entries: vec![] }),
                    epoch: 0,
                },
            );
            break;
        }
        refuse(&mut app, again);
    }
    assert!(!app.ticks(), "the clock stops once answered");
    assert!(!title(&app).contains("not searched"), "{}", title(&app));
    assert!(title(&app).contains("filter: paused▏ ·"), "{}", title(&app));
    let effects = update(&mut app, Msg::Tick);
    assert_eq!(page(&effects), None, "nothing asked again once answered");
}

/// A search the engine refuses (an invalid filter: too long; a token that may not read)
/// is said so, with why, and not asked again: the same words would be refused every
/// 30 s for as long as the console stays open. Typing on asks for the new filter.
#[test]
fn a_refused_search_is_not_asked_again_until_the_filter_changes() {
    use syncctl::protocol::{CommandError, Query};
    let mut app = app();
    press(&mut app, KeyCode::Char('7'));
    let asked = typed_asks(&mut app, "/paused");
    let search = search_asks;
    let first = search(&asked).pop().expect("the first page asked");
    let refused = |why: &str| CommandError::invalid("text", why);
    // The page refused; the total, asked next, refused too.
    let effects = update(
        &mut app,
        Msg::Answer {
            query: first,
            reply: Err(refused("longer than 200 characters")),
            epoch: 0,
        },
    );
    let total = search(&effects)
        .pop()
        .expect("the total asked after the page");
    assert!(matches!(total, Query::AuditCount { .. }), "{total:?}");
    update(
        &mut app,
        Msg::Answer {
            query: total,
            reply: Err(CommandError::forbidden("this token may not read the trail")),
            epoch: 0,
        },
    );
    let title = |app: &App| render(app, 160, 40).0;
    assert!(
        title(&app).contains(
            "whole trail not searched: this token may not read the trail (refused: not asked again)"
        ),
        "{}",
        title(&app)
    );
    assert!(!app.ticks(), "no clock runs for a retry");
    for _ in 0..120 {
        let effects = update(&mut app, Msg::Tick);
        assert_eq!(search(&effects), [], "a refused search asked again");
    }
    // The filter kept and scrolled to the end: no older page is asked either.
    for k in [KeyCode::Enter, KeyCode::End] {
        let effects = update(&mut app, Msg::Key(KeyEvent::from(k)));
        assert_eq!(search(&effects), [], "asked again on {k:?}");
    }
    assert!(
        title(&app).contains("(refused: not asked again)"),
        "{}",
        title(&app)
    );
    // Another filter is another search, asked at once.
    let effects = typed_asks(&mut app, "/x");
    assert!(title(&app).contains("filter: pausedx"), "{}", title(&app));
    assert_eq!(search(&effects).len(), 1, "{effects:?}");
    assert!(!title(&app).contains("not searched"), "{}", title(&app));
}

/// A filter typed again while its search's first page is on its way (`paused`,
/// `pausedx`, back to `paused`) takes that ask as its own: nothing is asked twice, and
/// the late answer, a refusal included, is the search's own answer, not a stale one
/// mistaken for it. An answer to the filter typed over is dropped.
#[test]
fn a_filter_typed_again_takes_the_ask_on_its_way_as_its_own() {
    use syncctl::protocol::{Answer, CommandError, Query};
    let mut app = app();
    press(&mut app, KeyCode::Char('7'));
    let pages = search_asks;
    let first = pages(&typed_asks(&mut app, "/paused"))
        .pop()
        .expect("the first page asked");
    let since = app.events_search.as_ref().unwrap().since_id;
    let other = pages(&typed_asks(&mut app, "x"))
        .pop()
        .expect("the other filter's page asked");
    let effects = update(&mut app, Msg::Key(KeyEvent::from(KeyCode::Backspace)));
    assert_eq!(pages(&effects), [], "the page on its way asked again");
    let search = app.events_search.as_ref().unwrap();
    assert!(search.pending && search.text == "paused");
    assert_eq!(
        search.since_id, since,
        "beside the entries it was asked beside"
    );
    // The answer to the filter typed over changes nothing.
    update(
        &mut app,
        Msg::Answer {
            query: other,
            reply: Ok(Answer::Audit { entries: vec![] }),
            epoch: 0,
        },
    );
    assert!(app.events_search.as_ref().unwrap().pending);
    // The ask's refusal is the search's own: said, and asked again after its wait.
    let effects = update(
        &mut app,
        Msg::Answer {
            query: first.clone(),
            reply: Err(CommandError::unavailable("the engine is busy")),
            epoch: 0,
        },
    );
    let total = pages(&effects).pop().expect("the total asked next");
    assert!(matches!(total, Query::AuditCount { .. }), "{total:?}");
    let title = render(&app, 160, 40).0;
    assert!(
        title.contains("filter: paused▏ ·") && title.contains("(again in 2 s)"),
        "{title}"
    );
    // Typed over and again while the total is on its way: a new search, whose page is
    // asked afresh (the refused one was answered), and whose total is not asked twice.
    typed_asks(&mut app, "x");
    let effects = update(&mut app, Msg::Key(KeyEvent::from(KeyCode::Backspace)));
    assert_eq!(pages(&effects), std::slice::from_ref(&first));
    assert!(app.events_search.as_ref().unwrap().counting);
    update(
        &mut app,
        Msg::Answer {
            query: total,
            reply: Ok(Answer::AuditCount { total: 7 }),
            epoch: 0,
        },
    );
    assert_eq!(app.events_search.as_ref().unwrap().total, Some(7));
    // On their way now: the fresh page once (beside each keystroke's, unanswered
    // here), no total.
    let on_its_way: Vec<&Query> = app.events_in_flight.iter().map(|(q, _)| q).collect();
    assert_eq!(
        on_its_way.iter().filter(|q| ***q == first).count(),
        1,
        "{on_its_way:?}"
    );
    assert!(
        !on_its_way
            .iter()
            .any(|q| matches!(q, Query::AuditCount { .. }))
    );
}

/// A company switch while the Events search's asks are on their way: the new company
/// is asked for its own (another company's ask is never taken as its own), and a
/// refusal's reason stays when another part then fails for now.
#[test]
fn a_company_switch_asks_the_new_company_and_a_refusal_keeps_its_reason() {
    use syncctl::protocol::{CommandError, CompanyTag, Query};
    let pages = |effects: &[Effect]| -> Vec<Query> {
        let asks = search_asks(effects);
        asks.into_iter()
            .filter(|q| matches!(q, Query::Audit { .. }))
            .collect()
    };
    let mut two = app().with_company(Some(CompanyTag::new("co2", "Two")));
    press(&mut two, KeyCode::Char('7'));
    let co2 = pages(&update(&mut two, Msg::Key(key(KeyCode::Char('J')))));
    assert_eq!(co2.len(), 1, "the journal's first page asked of co2");
    let effects = update(
        &mut two,
        Msg::Watched(Ok((CompanyTag::new("co1", "One"), Arc::new(snapshot())))),
    );
    assert_eq!(pages(&effects), co2, "the same page asked of co1, its own");

    let mut app = app();
    press(&mut app, KeyCode::Char('7'));
    let page = pages(&typed_asks(&mut app, "/paused")).pop().unwrap();
    let effects = update(
        &mut app,
        Msg::Answer {
            query: page,
            reply: Err(CommandError::invalid("text", "contains control characters")),
            epoch: 0,
        },
    );
    let total = search_asks(&effects)
        .into_iter()
        .find(|q| matches!(q, Query::AuditCount { .. }))
        .expect("the total asked");
    update(
        &mut app,
        Msg::Answer {
            query: total,
            reply: Err(CommandError::unavailable(
                "the connection to the engine dropped",
            )),
            epoch: 0,
        },
    );
    let title = render(&app, 200, 40).0;
    assert!(
        title.contains(
            "whole trail not searched: text: contains control characters (refused: not asked again)"
        ),
        "{title}"
    );
}

/// An answer asked of the company left is never taken by the one switched to, even to
/// identical words: the Events search shows the new company's matches only, once its
/// own answer arrives.
#[test]
fn an_answer_asked_of_the_company_left_is_not_taken_after_a_switch() {
    use syncctl::protocol::{Answer, CompanyTag, Query};
    let found = |message: &str| AuditEntry {
        id: 7,
        at_ms: 1_700_000_000_000,
        kind: "operator".into(),
        entity: "catalog".into(),
        actor: "ana".into(),
        message: message.into(),
        trace_id: None,
    };
    let mut app = app().with_company(Some(CompanyTag::new("co2", "Two")));
    press(&mut app, KeyCode::Char('7'));
    let asked = search_asks(&typed_asks(&mut app, "/paused"));
    let page = asked
        .into_iter()
        .rfind(|q| matches!(q, Query::Audit { .. }))
        .expect("the page asked");
    let left = app.company_epoch;
    let effects = update(
        &mut app,
        Msg::Watched(Ok((CompanyTag::new("co1", "One"), Arc::new(snapshot())))),
    );
    assert_eq!(
        search_asks(&effects).first(),
        Some(&page),
        "the same page asked of co1"
    );
    // co2's answer to its ask arrives after the switch: not co1's.
    update(
        &mut app,
        Msg::Answer {
            query: page.clone(),
            reply: Ok(Answer::Audit {
                entries: vec![found("paused by co2's operator")],
            }),
            epoch: left,
        },
    );
    let text = render(&app, 120, 40).0;
    assert!(!text.contains("co2's operator"), "{text}");
    assert!(
        app.events_found().is_none(),
        "co1's search still waits for its page"
    );
    let now = app.company_epoch;
    update(
        &mut app,
        Msg::Answer {
            query: page,
            reply: Ok(Answer::Audit {
                entries: vec![found("paused by co1's operator")],
            }),
            epoch: now,
        },
    );
    let text = render(&app, 120, 40).0;
    assert!(text.contains("paused by co1's operator"), "{text}");
    assert!(!text.contains("co2's operator"), "{text}");
}

/// A command's reply that arrives after the operator switched company names the
/// company it was for: "paused" is not the one shown now's.
#[test]
fn a_reply_for_the_company_left_names_its_company() {
    use syncctl::protocol::{CompanyTag, Outcome, Pipeline};
    let mut app = app().with_company(Some(CompanyTag::new("co2", "Two")));
    let paused = |company: &str| Msg::Reply {
        command: Command::Pause {
            pipeline: Pipeline::Catalog,
        },
        reply: Ok(Outcome::new("catalog pipeline paused")),
        company: Some(company.into()),
    };
    update(&mut app, paused("co2"));
    assert_eq!(app.flash.as_deref(), Some("catalog pipeline paused"));
    update(
        &mut app,
        Msg::Watched(Ok((CompanyTag::new("co1", "One"), Arc::new(snapshot())))),
    );
    update(&mut app, paused("co2"));
    assert_eq!(
        app.flash.as_deref(),
        Some("company co2: catalog pipeline paused")
    );
}

/// The impact preview a bulk action's confirmation shows, as the engine answered it.
fn impact(held: u64, why: &str) -> syncctl::protocol::ImpactPreview {
    use syncctl::protocol::{DownstreamCost, ImpactPreview};
    let qb = if held > 0 { "FORCED_OPEN" } else { "CLOSED" };
    ImpactPreview {
        command: "retry-failed-jobs".into(),
        items: 2,
        noun: "failed catalog jobs".into(),
        calls: vec![
            DownstreamCost::new("quickbooks", 2, 500, qb),
            DownstreamCost::new("stripe", 2, 6000, "CLOSED"),
        ],
        held,
        held_why: if held > 0 { vec![why.into()] } else { vec![] },
        ahead: 180,
        first: vec!["prod_0042".into(), "prod_0007".into()],
        notes: vec![],
    }
}

/// The preview query among `effects`.
fn preview_asked(effects: &[Effect]) -> Option<Command> {
    effects.iter().find_map(|e| match e {
        Effect::Ask(syncctl::protocol::Query::Preview { command }) => Some(command.clone()),
        _ => None,
    })
}

#[test]
fn bulk_confirmations_ask_for_the_impact_preview_and_show_it_at_80x24_and_120x40() {
    use syncctl::protocol::{Answer, Query};
    let mut app = app();
    press(&mut app, KeyCode::Char('4'));
    let effects = update(&mut app, Msg::Key(key(KeyCode::Char('F'))));
    assert_eq!(
        preview_asked(&effects),
        Some(Command::RetryFailedJobs {}),
        "F asks the engine for the preview"
    );
    assert!(
        sent(effects).is_none(),
        "nothing is sent before the confirmation"
    );
    let (text, _) = render(&app, 80, 24);
    assert!(text.contains("Retry 2 failed catalog jobs?"), "{text}");
    assert!(text.contains("impact: estimating…"), "{text}");

    // An answer to another question is not this dialog's.
    update(
        &mut app,
        Msg::Answer {
            query: Query::Preview {
                command: Command::Resync {},
            },
            reply: Ok(Answer::Preview(Box::new(impact(0, "")))),
            epoch: 0,
        },
    );
    assert!(render(&app, 80, 24).0.contains("impact: estimating…"));
    let effects = update(
        &mut app,
        Msg::Answer {
            query: Query::Preview {
                command: Command::RetryFailedJobs {},
            },
            reply: Ok(Answer::Preview(Box::new(impact(0, "")))),
            epoch: 0,
        },
    );
    assert!(redraws(&effects));
    let (small, _) = render(&app, 80, 24);
    for line in [
        "impact: 2 failed catalog jobs · held 0",
        "· quickbooks 2 calls, < 0.1 min at 500/min",
        "· stripe 2 calls, < 0.1 min at 6000/min",
        "· first prod_0042, prod_0007 (after 180 already queued)",
        "[ Cancel ]",
    ] {
        assert!(small.contains(line), "{line:?} at 80×24:\n{small}");
    }
    check_snapshot("preview_80x24", &small);
    check_snapshot("preview_120x40", &render(&app, 120, 40).0);
    // Confirmed, the command goes; the preview goes with the dialog.
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        Some(Command::RetryFailedJobs {})
    );
    assert!(app.preview.is_none());

    // A circuit forced open: what waits on it is held, and why.
    press(&mut app, KeyCode::Char('3'));
    press(&mut app, KeyCode::Down);
    let effects = update(&mut app, Msg::Key(key(KeyCode::Char('o'))));
    let asked = preview_asked(&effects).expect("o asks for the preview");
    assert_eq!(
        asked,
        Command::Breaker {
            service: Service::QuickBooks,
            action: BreakerAction::ForceOpen
        }
    );
    update(
        &mut app,
        Msg::Answer {
            query: Query::Preview { command: asked },
            reply: Ok(Answer::Preview(Box::new(impact(
                2,
                "the quickbooks circuit would be FORCED_OPEN (now CLOSED): they wait until you close it; new work too",
            )))),
            epoch: 0,
        },
    );
    let (small, _) = render(&app, 80, 24);
    assert!(
        small.contains("· held 2: the quickbooks circuit"),
        "{small}"
    );
    assert!(
        small.contains("[ Cancel ]"),
        "the buttons still fit: {small}"
    );
    check_snapshot("preview_held_80x24", &small);
    // Cancelled, nothing is sent and the preview goes.
    assert_eq!(press(&mut app, KeyCode::Esc), None);
    assert!(app.preview.is_none() && app.confirm.is_none());

    // A preview the engine cannot give says why; the dialog still works.
    let effects = update(&mut app, Msg::Key(key(KeyCode::Char('x'))));
    let asked = preview_asked(&effects).unwrap();
    update(
        &mut app,
        Msg::Answer {
            query: Query::Preview { command: asked },
            reply: Err(syncctl::protocol::CommandError::unavailable(
                "the engine is stopping",
            )),
            epoch: 0,
        },
    );
    assert!(
        render(&app, 80, 24)
            .0
            .contains("impact: no preview (the engine is stopping)")
    );
}

/// At the smallest size the console accepts, at 80×24 and at 120×40, every table keeps
/// its figures and its key column whole: a column gives way (and the title says so)
/// before a number loses a digit.
#[test]
fn tables_never_cut_a_number_or_a_key_at_60x16_80x24_120x40() {
    let screens: [(&str, Tab, &[&str]); 5] = [
        ("dian", Tab::Dian, &["SETP990000003", "1 785 000,00"]),
        (
            "reconcile",
            Tab::Reconcile,
            &["prod_00000000000042", "COP 1 237.50", "USD 25.00"],
        ),
        (
            "workers",
            Tab::Workers,
            &["quickbooks", "250 of 500", "0 / 5"],
        ),
        ("circuits", Tab::Circuits, &["quickbooks", "–/50%", "214"]),
        (
            "alerts",
            Tab::Alerts,
            &["error_rate/quickbooks", "25 / 10", "180 / 100"],
        ),
    ];
    for (name, tab, whole) in screens {
        let mut app = if tab == Tab::Dian { dian_app() } else { app() };
        app.tab = tab;
        for (w, h) in [(60, 16), (80, 24), (120, 40)] {
            let (text, _) = render(&app, w, h);
            for figure in whole {
                assert!(
                    text.contains(figure),
                    "{name} at {w}×{h} lost {figure:?}:\n{text}"
                );
            }
        }
        let (text, _) = render(&app, 60, 16);
        check_snapshot(&format!("{name}_60x16"), &text);
    }
}

#[test]
fn alegras_quota_reset_counts_down_between_answers_and_says_when_it_has_passed() {
    let mut app = dian_app();
    let seen = T0 + 3_600_000;
    let mut s = (*app.snapshot).clone();
    s.compliance.window = syncctl::protocol::RateWindow {
        limit: 1500,
        remaining: 1497,
        reset_secs: 48,
        seen_at_ms: seen,
    };
    // No answer since (the Alegra circuit is open): later snapshots count down.
    for (after_ms, shown) in [(0, "resets in 48s"), (30_000, "resets in 18s")] {
        s.compliance.now_ms = seen + after_ms;
        update(&mut app, Msg::Snapshot(Arc::new(s.clone())));
        let (text, _) = render(&app, 120, 30);
        assert!(text.contains(shown), "{after_ms} ms after: {text}");
    }
    // Past the reset, the last figures are given as what was seen then.
    s.compliance.now_ms = seen + 60_000;
    update(&mut app, Msg::Snapshot(Arc::new(s)));
    let (text, _) = render(&app, 120, 30);
    assert!(!text.contains("resets in"), "{text}");
    assert!(
        text.contains(&format!(
            "1497/1500 left at {} (that window has reset)",
            syncctl::console::chrome::clock(seen)
        )),
        "{text}"
    );
}

#[test]
fn a_flash_longer_than_the_terminal_is_wrapped_not_cut() {
    let mut app = app();
    let path = "/tmp/look-scratch/very/deep/directory/syncctl-bundle-20261201T195400Z.json.gz";
    app.flash = Some(format!(
        "incident bundle (secrets redacted) written: {path}"
    ));
    let (text, _) = render(&app, 80, 24);
    let joined: String = text
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("");
    assert!(
        joined.contains("syncctl-bundle-20261201T195400Z.json.gz"),
        "{text}"
    );
    // A short one keeps the one row, and the hints come back after it.
    app.flash = Some("paused".into());
    let (text, _) = render(&app, 80, 24);
    assert!(
        text.lines().nth(22).is_some_and(|l| !l.contains("paused")),
        "{text}"
    );
}

#[test]
fn the_threshold_prompt_says_enter_stages_and_a_applies() {
    let mut app = app();
    app.tab = Tab::Settings;
    press(&mut app, KeyCode::Enter);
    let (text, _) = render(&app, 100, 30);
    assert!(text.contains("Enter stages (A applies)"), "{text}");
    assert!(!text.contains("Enter apply"), "{text}");
}

#[test]
fn a_tall_overview_shows_each_circuit_and_the_dian_queue_by_state() {
    let mut app = dian_app();
    app.tab = Tab::Overview;
    let mut s = (*app.snapshot).clone();
    s.downstreams = downstreams();
    s.compliance.counts.earliest_deadline_ms = Some(s.compliance.now_ms + 2 * 3_600_000);
    app.snapshot = Arc::new(s);
    let (text, _) = render(&app, 120, 40);
    for want in [
        "┌ Circuits",
        "quickbooks ✖ OPEN",
        "┌ DIAN queue",
        "FAILED 2",
        "VALIDATED 1",
        "earliest contingency deadline in 2h00m",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    // At 80×24 there is no room: the errors keep theirs.
    let (small, _) = render(&app, 80, 24);
    assert!(!small.contains("┌ Circuits"), "{small}");
}

// ---- several companies: the header, the selector (`@`), "all companies" ----

/// Three companies as the engine's process reports them: one running, one paused with
/// a circuit open, one whose engine did not start.
fn company_rows() -> Vec<syncctl::protocol::CompanyRow> {
    use syncctl::protocol::{CompanyRow, CompanyTag, Level};
    let row = |id: &str, name: &str| CompanyRow {
        company: CompanyTag::new(id, name),
        score: 96,
        level: Some(Level::Excellent),
        items_per_s: 49,
        queued: 1_180,
        failed: 2,
        dian_pending: 3,
        dian_failed: 1,
        quota_used_per_min: Some(312),
        quota_per_min: 500,
        ..CompanyRow::default()
    };
    vec![
        row("co1", "Café Andino SAS"),
        CompanyRow {
            paused: true,
            items_per_s: 0,
            circuits_open: 1,
            quota_used_per_min: None,
            ..row("co2", "Textiles del Valle")
        },
        CompanyRow::down(
            CompanyTag::new("co3", "Ferretería Norte"),
            "company \"co3\": key `quickbooks.refresh_token` is required",
        ),
    ]
}

/// The console watching co2 of the three.
fn companies_app() -> App {
    app()
        .with_company(Some(syncctl::protocol::CompanyTag::new(
            "co2",
            "Textiles del Valle",
        )))
        .with_companies(company_rows())
}

/// The one request among `effects`.
fn request(effects: Vec<Effect>) -> Option<syncctl::protocol::Request> {
    effects.into_iter().find_map(|e| match e {
        Effect::Send(r) => Some(r),
        _ => None,
    })
}

#[test]
fn the_header_names_the_company_watched_and_every_command_names_it() {
    let mut app = companies_app();
    let (text, _) = render(&app, 80, 24);
    check_snapshot("companies_header_80x24", &text);
    let header = text.lines().next().unwrap();
    assert!(header.contains("@co2"), "{header}");
    let (wide, _) = render(&app, 120, 40);
    let header = wide.lines().next().unwrap();
    assert!(header.contains("@co2 Textiles del Valle"), "{header}");
    // Every command goes to the company shown, by name.
    let sent = request(update(&mut app, Msg::Key(key(KeyCode::Char('p'))))).unwrap();
    assert_eq!(
        sent.command,
        Command::Pause {
            pipeline: Pipeline::Catalog
        }
    );
    assert_eq!(sent.company.as_deref(), Some("co2"));

    // One company: no selector, nothing in the header.
    let mut one = app_with_one_company();
    let (text, _) = render(&one, 80, 24);
    assert!(!text.lines().next().unwrap().contains('@'), "{text}");
    assert!(press(&mut one, KeyCode::Char('@')).is_none());
    assert!(one.picker.is_none());
    assert!(
        one.flash.as_deref().unwrap().contains("one company"),
        "{:?}",
        one.flash
    );
}

fn app_with_one_company() -> App {
    app().with_company(Some(syncctl::protocol::CompanyTag::new(
        "default", "default",
    )))
}

#[test]
fn the_picker_offers_all_and_each_company_and_all_shows_one_row_each() {
    use syncctl::protocol::{CompanyTag, Watching};
    let mut app = companies_app();
    assert!(press(&mut app, KeyCode::Char('@')).is_none());
    // Opens on the company watched: all, co1, co2, co3.
    assert_eq!(app.picker, Some(2));
    let (text, _) = render(&app, 80, 24);
    check_snapshot("companies_picker_80x24", &text);
    assert!(text.contains("all companies (3)"), "{text}");
    assert!(text.contains("co3 (Ferretería Norte)"), "{text}");
    press(&mut app, KeyCode::Up);
    press(&mut app, KeyCode::Up);
    assert_eq!(app.picker, Some(0));
    let effects = update(&mut app, Msg::Key(key(KeyCode::Enter)));
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Watch(_))),
        "all needs no other connection"
    );
    assert!(app.watching_all());
    assert_eq!(app.tab, Tab::Overview);
    for (w, h) in [(80, 24), (120, 40)] {
        let (text, _) = render(&app, w, h);
        check_snapshot(&format!("companies_all_{w}x{h}"), &text);
        let header = text.lines().next().unwrap();
        assert!(header.contains("ALL 3 companies"), "{header}");
        assert!(
            !header.contains("running"),
            "no one company's state: {header}"
        );
        for word in [
            "co1",
            "co2",
            "co3",
            "PAUSED",
            "DOWN",
            "EXCELLENT",
            "312/500",
            "1 180",
        ] {
            assert!(text.contains(word), "{word} at {w}x{h}:\n{text}");
        }
    }
    let (wide, _) = render(&app, 120, 40);
    assert!(
        wide.contains("Textiles del Valle"),
        "names from 110 columns:\n{wide}"
    );

    // Nothing acts on "all": a key that would says to pick one, and sends nothing.
    assert!(press(&mut app, KeyCode::Char('p')).is_none());
    let flash = app.flash.clone().unwrap();
    assert!(
        flash.contains("pick it with @") && flash.contains("co1, co2, co3"),
        "{flash}"
    );
    // Nor a typed command.
    press(&mut app, KeyCode::Char(':'));
    for c in "pause catalog".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    assert!(press(&mut app, KeyCode::Enter).is_none());
    assert!(
        app.flash.clone().unwrap().contains("pick it with @"),
        "{:?}",
        app.flash
    );
    // The other screens are one company's: they say to pick one.
    press(&mut app, KeyCode::Char('6'));
    let (text, _) = render(&app, 80, 24);
    assert!(
        text.contains("press @ and pick one (co1, co2, co3)"),
        "{text}"
    );

    // Back to the company the link shows: no new connection.
    press(&mut app, KeyCode::Char('@'));
    press(&mut app, KeyCode::Down);
    press(&mut app, KeyCode::Down);
    let effects = update(&mut app, Msg::Key(key(KeyCode::Enter)));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Watch(_))));
    assert_eq!(app.watching, Watching::One("co2".into()));

    // Another company: the link is asked to watch it; until it does, nothing changes.
    app.staged.push(("alerts.error_rate_percent".into(), 12.0));
    press(&mut app, KeyCode::Char('@'));
    press(&mut app, KeyCode::Up);
    let effects = update(&mut app, Msg::Key(key(KeyCode::Enter)));
    let asked: Vec<&Effect> = effects
        .iter()
        .filter(|e| matches!(e, Effect::Watch(_)))
        .collect();
    assert!(
        matches!(asked[..], [Effect::Watch(id)] if id == "co1"),
        "{effects:?}"
    );
    assert_eq!(app.watched(), Some("co2"));
    let mut co1 = snapshot();
    co1.catalog.counts.synced = 4242;
    update(
        &mut app,
        Msg::Watched(Ok((
            CompanyTag::new("co1", "Café Andino SAS"),
            Arc::new(co1),
        ))),
    );
    assert_eq!(app.watched(), Some("co1"));
    assert_eq!(
        app.snapshot.catalog.counts.synced, 4242,
        "co1's view, whole"
    );
    assert!(
        app.staged.is_empty(),
        "co2's staged thresholds never reach co1"
    );
    let (text, _) = render(&app, 120, 40);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("@co1 Café Andino SAS"),
        "{text}"
    );
    let sent = request(update(&mut app, Msg::Key(key(KeyCode::Char('p'))))).unwrap();
    assert_eq!(sent.company.as_deref(), Some("co1"));
    // A switch the link could not make leaves the company watched as it was.
    update(
        &mut app,
        Msg::Watched(Err("company co3 did not start".into())),
    );
    assert_eq!(app.watched(), Some("co1"));
    assert!(
        app.flash.clone().unwrap().contains("did not start"),
        "{:?}",
        app.flash
    );
}
