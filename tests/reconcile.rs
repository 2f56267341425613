//! The live reconciliation of Stripe and QuickBooks through real interfaces: an Item
//! changed in QuickBooks behind the engine's back (the sandbox's
//! `/_sandbox/quickbooks/items/{id}` knob, which bumps its SyncToken and
//! LastUpdatedTime as QuickBooks does) shows as drift in `GET /api/v1/reconciliation`
//! and on the console's Reconcile screen (ratatui TestBackend), and the screen's `r`
//! resyncs it; a product changed in Stripe with no webhook shows as drift from Stripe's
//! events, `syncctl ctl reconcile` prints it, and `resync-drifted` over HTTP fixes it.
//! Both sides are followed incrementally: change data capture and events, never a
//! second full read.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::{Value, json};
use syncctl::config::Config;
use syncctl::console::state::{App, Tab};
use syncctl::console::theme::Theme;
use syncctl::console::update::{Effect, Msg, update};
use syncctl::protocol::{Command, Request};

const OPS: &str = "ops-token-0123456789abcdef";

fn config(sb: &syncctl::sandbox::SandboxServer) -> Config {
    common::with_operator(common::config_for(sb), OPS)
}

async fn api(base: &str, method: &str, path: &str) -> (u16, Value) {
    common::api(base, OPS, method, path, None).await
}

/// The reconciliation over HTTP once `check` accepts it (polled: the engine refreshes
/// on its own clock).
async fn reconciliation_until(base: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    common::eventually(60, what, || async {
        let (s, v) = api(base, "GET", "/api/v1/reconciliation?limit=50").await;
        assert_eq!(s, 200, "{v}");
        check(&v).then_some(v)
    })
    .await
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| syncctl::console::screens::draw(f, app))
        .unwrap();
    let buf = term.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn press(app: &mut App, c: char) -> Vec<Effect> {
    update(app, Msg::Key(KeyEvent::from(KeyCode::Char(c))))
}

async fn qb_items(sb: &str) -> Vec<Value> {
    common::get_json(&format!("{sb}/_sandbox/quickbooks/items"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_changed_behind_the_engines_back_shows_as_drift_and_r_resyncs_it() {
    let sb = common::sandbox(30, 17).await;
    let sb_url = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let base = format!("http://{}", engine.server_addr);
    common::until_idle(&engine, 20).await;
    let agreed = reconciliation_until(&base, "both sides to agree", |v| {
        v["ready"] == true && v["drifted"]["count"] == 0 && v["missing"]["count"] == 0
    })
    .await;
    assert_eq!(agreed["orphans"]["count"], 0, "{agreed}");
    let stats = common::get_json(&format!("{sb_url}/_sandbox/stats")).await;
    let cdc_before = stats["quickbooks"]["cdc_requests"].as_u64().unwrap();
    let queries_before = stats["quickbooks"]["queries"].as_u64().unwrap();

    // Someone renames and reprices an Item in QuickBooks itself.
    let items = qb_items(&sb_url).await;
    let item = items
        .iter()
        .find(|i| i["Sku"].as_str().is_some_and(|s| s.starts_with("prod_")) && i["Active"] == true)
        .unwrap()
        .clone();
    let (id, pid) = (item["Id"].as_str().unwrap(), item["Sku"].as_str().unwrap());
    let name = item["Name"].as_str().unwrap().to_owned();
    let price = item["UnitPrice"].as_f64().unwrap_or(0.0);
    let edited = common::post_json(
        &sb_url,
        &format!("/_sandbox/quickbooks/items/{id}"),
        json!({"name": "Renamed behind its back", "unit_price": price + 7.25}),
    )
    .await;
    assert_ne!(edited["SyncToken"], item["SyncToken"], "{edited}");
    assert_ne!(
        edited["MetaData"]["LastUpdatedTime"], item["MetaData"]["CreateTime"],
        "{edited}"
    );

    // The API shows the drift: which fields, both sides, the amount involved.
    let v = reconciliation_until(&base, "the drift", |v| v["drifted"]["count"] == 1).await;
    let row = &v["rows"][0];
    assert_eq!(row["kind"], "drift", "{v}");
    assert_eq!(row["product_id"], pid);
    assert_eq!(row["item_id"], id);
    assert_eq!(row["fields"], json!(["name", "price"]));
    assert_eq!(row["quickbooks"]["name"], "Renamed behind its back");
    assert_eq!(row["stripe"]["name"], name.as_str());
    assert!(
        (row["amount"].as_f64().unwrap() - 7.25).abs() < 1e-9,
        "{row}"
    );
    assert!((v["drifted"]["amount"].as_f64().unwrap() - 7.25).abs() < 1e-9);
    assert_eq!(
        (v["drift_name"].clone(), v["drift_price"].clone()),
        (json!(1), json!(1))
    );
    // Followed by change data capture, not by reading every Item again.
    let stats = common::get_json(&format!("{sb_url}/_sandbox/stats")).await;
    assert!(
        stats["quickbooks"]["cdc_requests"].as_u64().unwrap() > cdc_before,
        "{stats}"
    );
    assert_eq!(
        stats["quickbooks"]["queries"].as_u64().unwrap(),
        queries_before,
        "{stats}"
    );

    // The console's Reconcile screen shows it, from the engine's own snapshot.
    let snapshot = common::eventually(10, "the snapshot to carry the drift", || {
        let s = engine.engine.snapshot.borrow().clone();
        async move { (s.reconciliation.drifted.count == 1).then_some(s) }
    })
    .await;
    let mut app = App::new(Arc::clone(&snapshot), Theme::monochrome());
    press(&mut app, '9');
    assert_eq!(app.tab, Tab::Reconcile);
    assert!(app.shown().reconciliation, "the screen asks for the rows");
    let wide = render(&app, 120, 40);
    assert!(wide.contains("drift"), "{wide}");
    assert!(wide.contains(pid), "{wide}");
    assert!(wide.contains("name price"), "{wide}");
    assert!(wide.contains("\"Renamed behind its back\""), "{wide}");
    assert!(wide.contains("7.25"), "{wide}");
    let narrow = render(&app, 80, 24);
    assert!(narrow.contains(pid), "{narrow}");
    assert!(narrow.contains("drift"), "{narrow}");

    // The chain of the product shows the live field-level diff on its Item, and `L`
    // on the selected row asks for it.
    let (s, chain) = api(&base, "GET", &format!("/api/v1/chain/{pid}")).await;
    assert_eq!(s, 200, "{chain}");
    let item_link = chain["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["system"] == "quickbooks item")
        .unwrap_or_else(|| panic!("no Item link: {chain}"))
        .clone();
    assert_eq!(item_link["id"], id, "{chain}");
    let diffs = item_link["disagreements"].as_array().unwrap();
    let fields: Vec<&str> = diffs.iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["name", "price"], "{chain}");
    assert_eq!(diffs[0]["here"], "\"Renamed behind its back\"", "{chain}");
    assert_eq!(diffs[0]["there"], format!("{name:?}"), "{chain}");
    assert_eq!(
        diffs[1]["there"],
        syncctl::protocol::text::amount(price),
        "{chain}"
    );
    let asked = press(&mut app, 'L')
        .into_iter()
        .find_map(|e| match e {
            Effect::Ask(q) => Some(q),
            _ => None,
        })
        .unwrap_or_else(|| panic!("L asked nothing: {:?}", app.flash));
    assert_eq!(
        asked,
        syncctl::protocol::Query::Chain {
            key: pid.to_owned()
        }
    );
    app.chain = None;

    // `r` resyncs the selected product: the command the engine then carries out.
    let effects = press(&mut app, 'r');
    let command = effects
        .iter()
        .find_map(|e| match e {
            Effect::Send(request) => Some(request.command.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("r sent nothing: {:?}", app.flash));
    assert_eq!(
        command,
        Command::ResyncItem {
            key: pid.to_owned()
        }
    );
    let outcome = engine
        .engine
        .frontend()
        .request(Request::new("ana", command))
        .await
        .unwrap();
    assert_eq!(outcome.count, Some(1), "{outcome:?}");

    reconciliation_until(&base, "the drift to be fixed", |v| {
        v["drifted"]["count"] == 0 && v["missing"]["count"] == 0
    })
    .await;
    let fixed = qb_items(&sb_url)
        .await
        .into_iter()
        .find(|i| i["Id"] == id)
        .unwrap();
    assert_eq!(fixed["Name"], name.as_str(), "{fixed}");
    assert_eq!(fixed["UnitPrice"].as_f64().unwrap_or(0.0), price, "{fixed}");
    let stats = common::get_json(&format!("{sb_url}/_sandbox/stats")).await;
    assert_eq!(stats["quickbooks"]["duplicate_names"], 0, "{stats}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_change_no_webhook_brought_shows_in_ctl_reconcile_and_resync_drifted_fixes_it() {
    const BIN: &str = env!("CARGO_BIN_EXE_syncctl");
    let sb = common::sandbox(12, 5).await;
    let sb_url = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let base = format!("http://{}", engine.server_addr);
    common::until_idle(&engine, 8).await;
    reconciliation_until(&base, "both sides to agree", |v| {
        v["ready"] == true && v["drifted"]["count"] == 0 && v["missing"]["count"] == 0
    })
    .await;
    let (s, v) = api(&base, "POST", "/api/v1/reconciliation/resync-drifted").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("refused")),
        "{v}"
    );

    // A new price in Stripe; no webhook reaches the engine (none is configured) and its
    // own events pass is an hour away: only the reconciliation sees it.
    let items = qb_items(&sb_url).await;
    let item = items
        .iter()
        .find(|i| i["Sku"].as_str().is_some_and(|s| s.starts_with("prod_")) && i["Active"] == true)
        .unwrap()
        .clone();
    let pid = item["Sku"].as_str().unwrap().to_owned();
    common::post_json(
        &sb_url,
        &format!("/_sandbox/stripe/products/{pid}"),
        json!({"unit_amount": 123_456, "currency": "usd"}),
    )
    .await;
    let v = reconciliation_until(&base, "the Stripe drift", |v| v["drifted"]["count"] == 1).await;
    assert_eq!(v["rows"][0]["product_id"], pid.as_str(), "{v}");
    assert_eq!(v["rows"][0]["fields"], json!(["price"]), "{v}");
    assert_eq!(v["rows"][0]["stripe"]["price"], 1234.56, "{v}");
    assert!(v["events_read"].as_u64().unwrap() >= 1, "{v}");

    let out = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            std::process::Command::new(BIN)
                .args(["ctl", "reconcile", "--url", &base, "--token", OPS])
                .env_remove("SYNCCTL_TOKEN")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("drift         1"), "{text}");
    assert!(text.contains(&pid), "{text}");
    assert!(text.contains("1 234.56"), "{text}");
    assert!(!text.contains(OPS), "{text}");

    // `ctl chain` shows the product, its Item and the price Stripe wants of it.
    let out = tokio::task::spawn_blocking({
        let (base, pid) = (base.clone(), pid.clone());
        move || {
            std::process::Command::new(BIN)
                .args(["ctl", "chain", &pid, "--url", &base, "--token", OPS])
                .env_remove("SYNCCTL_TOKEN")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with(&format!("stripe product {pid}")), "{text}");
    assert!(text.contains("└ quickbooks item"), "{text}");
    assert!(text.contains("≠ price:"), "{text}");
    assert!(text.contains("1 234.56 in Stripe (live)"), "{text}");
    // Something the engine never saw: exit 1, said so.
    let out = std::process::Command::new(BIN)
        .args([
            "ctl",
            "chain",
            "prod_nobody_made",
            "--url",
            &base,
            "--token",
            OPS,
        ])
        .env_remove("SYNCCTL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("prod_nobody_made"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A bad limit is named, not guessed.
    let (s, v) = api(&base, "GET", "/api/v1/reconciliation?limit=lots").await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("limit"),
        "{v}"
    );

    let (s, v) = api(&base, "POST", "/api/v1/reconciliation/resync-drifted").await;
    assert_eq!((s, v["count"].clone()), (200, json!(1)), "{v}");
    reconciliation_until(&base, "the Stripe drift to be fixed", |v| {
        v["drifted"]["count"] == 0 && v["missing"]["count"] == 0
    })
    .await;
    let fixed = qb_items(&sb_url)
        .await
        .into_iter()
        .find(|i| i["Sku"] == pid.as_str())
        .unwrap();
    assert_eq!(fixed["UnitPrice"], 1234.56, "{fixed}");
    engine.shutdown().await;
}

/// A drift on a USD product and one on a COP product: each amount keeps its currency,
/// the totals are per currency and never one sum, over HTTP, in `ctl reconcile`, on
/// the Reconcile screen and in the `R` confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifts_in_two_currencies_are_never_added_together() {
    const BIN: &str = env!("CARGO_BIN_EXE_syncctl");
    let sb = common::sandbox(12, 5).await;
    let sb_url = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let base = format!("http://{}", engine.server_addr);
    common::until_idle(&engine, 8).await;
    reconciliation_until(&base, "both sides to agree", |v| {
        v["ready"] == true && v["drifted"]["count"] == 0 && v["missing"]["count"] == 0
    })
    .await;

    // Two products get new prices in Stripe: one in dollars, one in pesos.
    let items: Vec<Value> = qb_items(&sb_url)
        .await
        .into_iter()
        .filter(|i| {
            i["Sku"].as_str().is_some_and(|s| s.starts_with("prod_")) && i["Active"] == true
        })
        .take(2)
        .collect();
    assert_eq!(items.len(), 2);
    let old = |i: &Value| i["UnitPrice"].as_f64().unwrap_or(0.0);
    let (usd_pid, cop_pid) = (
        items[0]["Sku"].as_str().unwrap().to_owned(),
        items[1]["Sku"].as_str().unwrap().to_owned(),
    );
    common::post_json(
        &sb_url,
        &format!("/_sandbox/stripe/products/{usd_pid}"),
        json!({"unit_amount": 61_505, "currency": "usd"}),
    )
    .await;
    common::post_json(
        &sb_url,
        &format!("/_sandbox/stripe/products/{cop_pid}"),
        json!({"unit_amount": 39_800_000, "currency": "cop"}),
    )
    .await;
    let (usd_diff, cop_diff) = (
        (615.05 - old(&items[0])).abs(),
        (398_000.0 - old(&items[1])).abs(),
    );

    let v = reconciliation_until(&base, "both drifts", |v| v["drifted"]["count"] == 2).await;
    let amounts = v["drifted"]["amounts"].as_array().unwrap();
    let per: Vec<(&str, f64)> = amounts
        .iter()
        .map(|m| {
            (
                m["currency"].as_str().unwrap(),
                m["amount"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per.len(), 2, "{v}");
    assert_eq!((per[0].0, per[1].0), ("COP", "USD"), "{v}");
    assert!((per[0].1 - cop_diff).abs() < 1e-6, "{v}");
    assert!((per[1].1 - usd_diff).abs() < 1e-6, "{v}");
    for row in v["rows"].as_array().unwrap() {
        let want = if row["product_id"] == usd_pid.as_str() {
            "USD"
        } else {
            "COP"
        };
        assert_eq!(row["currency"], want, "{row}");
        assert_eq!(row["stripe"]["currency"], want, "{row}");
    }

    // `ctl reconcile` says each total in its own currency.
    let out = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            std::process::Command::new(BIN)
                .args(["ctl", "reconcile", "--url", &base, "--token", OPS])
                .env_remove("SYNCCTL_TOKEN")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let money = |c: &str, a: f64| syncctl::protocol::Money {
        currency: c.into(),
        amount: a,
    };
    let both = format!("{} · {}", money("COP", cop_diff), money("USD", usd_diff));
    assert!(text.contains(&format!("drift         2  {both}")), "{text}");

    // The screen and the `R` confirmation too, and no mixed sum anywhere.
    let snapshot = common::eventually(10, "the snapshot to carry both drifts", || {
        let s = engine.engine.snapshot.borrow().clone();
        async move { (s.reconciliation.drifted.count == 2).then_some(s) }
    })
    .await;
    let mut app = App::new(Arc::clone(&snapshot), Theme::monochrome());
    press(&mut app, '9');
    let mixed = syncctl::protocol::text::amount(cop_diff + usd_diff);
    for (w, h) in [(120, 40), (80, 24)] {
        let screen = render(&app, w, h);
        assert!(screen.contains(&both), "{w}×{h}:\n{screen}");
        assert!(!screen.contains(&mixed), "{w}×{h}:\n{screen}");
    }
    press(&mut app, 'R');
    let confirm = app.confirm.as_ref().expect("R asks first");
    assert!(confirm.effect().contains(&both), "{}", confirm.effect());
    assert!(!confirm.effect().contains(&mixed), "{}", confirm.effect());
    engine.shutdown().await;
}
