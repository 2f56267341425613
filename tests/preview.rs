//! Impact previews through real interfaces (issue 17 point 3): a bulk action's dry run
//! over HTTP (`?dry_run=true`) and `syncctl ctl … --dry-run` says how many items and
//! how many calls each downstream would be charged; the sandbox's own request counters
//! then count the calls the real run makes (resync-drifted, retry-failed-jobs,
//! retry-failed on DIAN), and the two agree within 5 %. A dry run
//! changes nothing — no call reaches a service, no job is queued, nothing is audited —
//! and a circuit forced open shows as items held.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use serde_json::{Value, json};
use syncctl::config::Config;

const OPS: &str = "ops-token-0123456789abcdef";
const BIN: &str = env!("CARGO_BIN_EXE_syncctl");

fn config(sb: &syncctl::sandbox::SandboxServer) -> Config {
    common::with_operator(common::config_for(sb), OPS)
}

async fn api(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::api(base, OPS, method, path, body).await
}

/// The calls the catalog's work cost, as the sandbox counted them: Stripe reads
/// besides list pages (the reconciliation and compliance page through lists on their
/// own clocks), and QuickBooks quota units besides change data capture (the
/// reconciliation's, one a refresh); a batch counts its operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counted {
    stripe: u64,
    quickbooks: u64,
    /// Writes: Items created or updated (in a batch or alone).
    writes: u64,
}

async fn counted(sb: &str) -> Counted {
    let s = common::get_json(&format!("{sb}/_sandbox/stats")).await;
    let n = |v: &Value| v.as_u64().unwrap();
    let st = &s["stripe"];
    let qb = &s["quickbooks"];
    Counted {
        stripe: n(&st["requests"]) - n(&st["list_pages"]) - n(&st["invoice_list_pages"]),
        quickbooks: n(&qb["quota_units"]) - n(&qb["cdc_requests"]),
        writes: n(&qb["creates"]) + n(&qb["updates"]),
    }
}

/// `actual` within 5 % of `estimated` (at least one call either way for small counts).
fn within_5_percent(what: &str, estimated: u64, actual: u64) {
    let tolerance = (actual as f64 * 0.05).max(1.0);
    assert!(
        (estimated as f64 - actual as f64).abs() <= tolerance,
        "{what}: the preview estimated {estimated} calls, the sandbox counted {actual}"
    );
}

fn calls(preview: &Value, service: &str) -> u64 {
    preview["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == service)
        .map_or(0, |c| c["calls"].as_u64().unwrap())
}

async fn reconciliation_until(base: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    common::eventually(90, what, || async {
        let (s, v) = api(base, "GET", "/api/v1/reconciliation?limit=100", None).await;
        assert_eq!(s, 200, "{v}");
        check(&v).then_some(v)
    })
    .await
}

/// What a dry run must leave as it was: the catalog's queue, the reconciliation's
/// counts, and the operators' audit trail.
async fn state(base: &str) -> Value {
    let (_, snap) = api(base, "GET", "/api/v1/snapshot", None).await;
    let (_, rec) = api(base, "GET", "/api/v1/reconciliation?limit=1", None).await;
    let (_, ops) = api(base, "GET", "/api/v1/events?type=operator&limit=500", None).await;
    json!({
        "queued": snap["catalog"]["queued"],
        "failed": snap["catalog"]["failed"],
        "synced": snap["catalog"]["synced"],
        "drifted": rec["drifted"]["count"],
        "missing": rec["missing"]["count"],
        "operator_events": ops,
    })
}

/// Changes the price of `n` products in Stripe behind the engine's back (no webhook);
/// the reconciliation then shows them drifted. Their ids.
async fn drift_prices(sb: &str, n: usize) -> Vec<String> {
    let products = common::all_products(sb).await;
    let mut changed = Vec::new();
    for (i, p) in products
        .iter()
        .filter(|p| p["active"] == true)
        .take(n)
        .enumerate()
    {
        let pid = p["id"].as_str().unwrap().to_owned();
        common::post_json(
            sb,
            &format!("/_sandbox/stripe/products/{pid}"),
            json!({"unit_amount": 100_000 + i as i64 * 7, "currency": "usd"}),
        )
        .await;
        changed.push(pid);
    }
    changed
}

/// A synced world of 30 products, 12 of whose Items then had their price changed in
/// QuickBooks, and the engine (its config edited by `edit`) seeing the 12 as drift.
struct Drifted {
    sb: syncctl::sandbox::SandboxServer,
    sb_url: String,
    dir: tempfile::TempDir,
    engine: syncctl::app::Served,
    base: String,
}

async fn twelve_drifted(edit: impl FnOnce(&mut Config)) -> Drifted {
    let sb = common::sandbox(30, 29).await;
    let sb_url = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sb);
    edit(&mut cfg);
    let engine = common::engine(cfg, dir.path()).await;
    let base = format!("http://{}", engine.server_addr);
    common::until_idle(&engine, 30).await;
    reconciliation_until(&base, "both sides to agree", |v| {
        v["ready"] == true && v["drifted"]["count"] == 0
    })
    .await;
    drift_prices(&sb_url, 12).await;
    reconciliation_until(&base, "12 drifted Items", |v| v["drifted"]["count"] == 12).await;
    Drifted {
        sb,
        sb_url,
        dir,
        engine,
        base,
    }
}

async fn ctl(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<String> = ["ctl", "--url", url, "--token", OPS]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&all)
            .env("USER", "ana")
            .env_remove("SUDO_USER")
            .env_remove("SYNCCTL_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_drifted_previews_the_calls_it_then_makes_and_its_dry_run_changes_nothing() {
    let sb = common::sandbox(40, 23).await;
    let sb_url = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    // QuickBooks at a limit (its minutes are told); Stripe unlimited here.
    let mut cfg = config(&sb);
    cfg.quickbooks.rate_limit_per_min = 3000;
    let mut engine = common::engine(cfg, dir.path()).await;
    let base = format!("http://{}", engine.server_addr);
    common::until_idle(&engine, 40).await;
    reconciliation_until(&base, "both sides to agree", |v| {
        v["ready"] == true && v["drifted"]["count"] == 0 && v["missing"]["count"] == 0
    })
    .await;
    let drifted = drift_prices(&sb_url, 20).await;
    reconciliation_until(&base, "20 drifted Items", |v| v["drifted"]["count"] == 20).await;

    // The dry run: the preview, and nothing else.
    let before = state(&base).await;
    let calls_before = counted(&sb_url).await;
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/reconciliation/resync-drifted?dry_run=true",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["dry_run"].clone(), v["changed"].clone()),
        (json!(true), json!(false)),
        "{v}"
    );
    let p = v["preview"].clone();
    assert_eq!(p["command"], "resync-drifted", "{p}");
    assert_eq!(p["items"], 20, "{p}");
    assert_eq!(p["held"], 0, "{p}");
    let first: Vec<&str> = p["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(first.len(), 5, "{p}");
    assert!(first.iter().all(|f| drifted.iter().any(|d| d == f)), "{p}");
    let qb = &p["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == "quickbooks")
        .unwrap()
        .clone();
    assert!(qb["rate_per_min"].as_u64().unwrap() > 0, "{p}");
    let minutes = qb["minutes"].as_f64().unwrap();
    let expect = qb["calls"].as_f64().unwrap() / qb["rate_per_min"].as_f64().unwrap();
    assert!((minutes - expect).abs() < 1e-9, "{p}");
    // The CLI's dry run says the same, in words.
    let (code, out, err) = ctl(&base, &["resync-drifted", "--dry-run"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("resync-drifted — dry run, nothing changed\n"),
        "{out}"
    );
    assert!(out.contains("  20 drifted or missing Items\n"), "{out}");
    assert!(
        out.contains(&format!("  quickbooks {} calls", calls(&p, "quickbooks"))),
        "{out}"
    );
    assert!(out.contains("  held 0\n"), "{out}");
    let (code, out, _) = ctl(&base, &["--json", "--dry-run", "resync-drifted"]).await;
    assert_eq!(code, 0);
    let j: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["preview"]["items"], 20, "{j}");
    // Nothing changed: no call reached a service, nothing queued, nothing audited.
    assert_eq!(
        counted(&sb_url).await,
        calls_before,
        "a dry run called a service"
    );
    assert_eq!(state(&base).await, before, "a dry run changed the engine");

    // The real run, then the sandbox's count of what it cost.
    let (s, v) = api(&base, "POST", "/api/v1/reconciliation/resync-drifted", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["count"], 20, "{v}");
    reconciliation_until(&base, "the drift fixed", |v| {
        v["drifted"]["count"] == 0 && v["missing"]["count"] == 0
    })
    .await;
    common::until_idle(&engine, 40).await;
    let after = counted(&sb_url).await;
    within_5_percent(
        "quickbooks",
        calls(&p, "quickbooks"),
        after.quickbooks - calls_before.quickbooks,
    );
    within_5_percent(
        "stripe",
        calls(&p, "stripe"),
        after.stripe - calls_before.stripe,
    );
    assert_eq!(after.writes - calls_before.writes, 20, "{after:?}");
    // Its audit line carries the estimate it ran with.
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "estimated quickbooks {}, stripe {} calls; held 0",
            calls(&p, "quickbooks"),
            calls(&p, "stripe")
        )),
        "{message}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_jobs_previews_the_calls_it_then_makes_and_a_forced_open_circuit_holds_them() {
    let Drifted {
        sb: _sb,
        sb_url,
        dir: _dir,
        mut engine,
        base,
    } = twelve_drifted(|cfg| {
        cfg.catalog.max_attempts = 1;
        cfg.quickbooks.breaker.minimum_calls = 10_000;
        cfg.quickbooks.breaker.consecutive_failures = 0;
    })
    .await;
    // QuickBooks fails every call while they are written: 12 jobs fail.
    common::faults(&sb_url, json!({"service": "quickbooks", "error_rate": 1.0})).await;
    let (s, v) = api(&base, "POST", "/api/v1/reconciliation/resync-drifted", None).await;
    assert_eq!(s, 200, "{v}");
    common::eventually(90, "12 failed catalog jobs", || async {
        let c = engine.engine.snapshot.borrow().catalog.counts.clone();
        (c.failed == 12 && c.queued == 0 && c.in_flight == 0).then_some(())
    })
    .await;
    common::faults(&sb_url, json!({"service": "quickbooks", "error_rate": 0.0})).await;

    // Forced open, the preview holds every one of them, and says why.
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/resilience/circuit-breakers/quickbooks",
        Some(json!({"state": "FORCED_OPEN"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/pipelines/catalog/retry-failed?dry_run=true",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let held = v["preview"].clone();
    assert_eq!(
        (held["items"].clone(), held["held"].clone()),
        (json!(12), json!(12)),
        "{held}"
    );
    assert!(
        held["held_why"][0]
            .as_str()
            .unwrap()
            .starts_with("the quickbooks circuit is FORCED_OPEN"),
        "{held}"
    );
    // Closing it previews the release of what waits on it (nothing is queued now).
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/resilience/circuit-breakers/quickbooks?dry_run=true",
        Some(json!({"state": "CLOSED"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["preview"]["items"].clone(), v["preview"]["held"].clone()),
        (json!(0), json!(0)),
        "{v}"
    );
    // Forced open by an operator, not by failures: no warning that calls fail.
    assert!(
        !v["preview"]["notes"]
            .to_string()
            .contains("because calls failed"),
        "{v}"
    );
    assert_eq!(
        common::qb_view(&engine.engine).breaker.state.name(),
        "FORCED_OPEN"
    );
    let (s, _) = api(
        &base,
        "POST",
        "/api/v1/resilience/circuit-breakers/quickbooks",
        Some(json!({"state": "CLOSED"})),
    )
    .await;
    assert_eq!(s, 200);

    // Closed: the same dry run, through `syncctl ctl`, holds none.
    let before = state(&base).await;
    let calls_before = counted(&sb_url).await;
    let (code, out, err) = ctl(&base, &["--json", "retry-failed-jobs", "--dry-run"]).await;
    assert_eq!(code, 0, "{err}");
    let p = serde_json::from_str::<Value>(out.trim()).unwrap()["preview"].clone();
    assert_eq!(
        (p["items"].clone(), p["held"].clone()),
        (json!(12), json!(0)),
        "{p}"
    );
    assert_eq!(
        counted(&sb_url).await,
        calls_before,
        "a dry run called a service"
    );
    assert_eq!(state(&base).await, before, "a dry run changed the engine");

    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/pipelines/catalog/retry-failed",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    common::eventually(90, "the retried jobs synced", || async {
        let c = engine.engine.snapshot.borrow().catalog.counts.clone();
        (c.failed == 0 && c.queued == 0 && c.in_flight == 0).then_some(())
    })
    .await;
    let after = counted(&sb_url).await;
    within_5_percent(
        "quickbooks",
        calls(&p, "quickbooks"),
        after.quickbooks - calls_before.quickbooks,
    );
    within_5_percent(
        "stripe",
        calls(&p, "stripe"),
        after.stripe - calls_before.stripe,
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_of_what_is_not_a_bulk_action_or_would_be_refused_says_so() {
    let sb = common::sandbox(5, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let base = format!("http://{}", engine.server_addr);
    common::until_idle(&engine, 5).await;
    // Refused as the action would be: nothing failed to retry.
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/pipelines/catalog/retry-failed?dry_run=1",
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("refused")),
        "{v}"
    );
    // A pause is not a bulk action.
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/pipelines/catalog/pause?dry_run=true",
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("command")),
        "{v}"
    );
    assert!(!engine.engine.snapshot.borrow().catalog.paused);
    // A resume of a pipeline that runs changes nothing, and its preview says so
    // (it used to count the queue as what the resume would start).
    for pipeline in ["catalog", "compliance"] {
        let (s, v) = api(
            &base,
            "POST",
            &format!("/api/v1/pipelines/{pipeline}/resume?dry_run=true"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["preview"]["items"], 0, "{v}");
        assert_eq!(v["preview"]["held"], 0, "{v}");
        let notes = v["preview"]["notes"].to_string();
        assert!(
            notes.contains(&format!("the {pipeline} pipeline is not paused")),
            "{v}"
        );
    }
    // A dry_run that is not a yes or a no runs nothing.
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/cache/invalidate?dry_run=maybe",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("dry_run:"),
        "{v}"
    );
    // An invalidation's preview counts the entries and drops none.
    let entries = engine.engine.snapshot.borrow().telemetry.cache.entries as u64;
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/cache/invalidate?dry_run=true",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["preview"]["items"], entries, "{v}");
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/commands",
        Some(json!({"command": "invalidate all", "dry_run": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["preview"]["items"], entries, "{v}");
    common::eventually(5, "the snapshot to settle", || async {
        (engine.engine.snapshot.borrow().telemetry.cache.entries as u64 == entries).then_some(())
    })
    .await;
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/commands",
        Some(json!({"command": "resync", "dry_run": "yes"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    engine.shutdown().await;
}

/// A misspelt `dry_run` (`dry-run`, `dryrun`, `Dry_Run`; an encoded `dry%5Frun` is it), one
/// given twice as yes and no, or a dry run of an action with no preview (thresholds,
/// ack, silence) is a 400 that does nothing: each used to run the action itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_or_contradicted_dry_run_or_one_with_no_preview_does_nothing() {
    let sb = common::sandbox(5, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let base = format!("http://{}", engine.server_addr);
    common::until_idle(&engine, 5).await;
    let breaker = |base: String| async move {
        let (_, v) = api(
            &base,
            "GET",
            "/api/v1/resilience/circuit-breakers/quickbooks",
            None,
        )
        .await;
        v["breaker"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    for query in [
        "dry-run=true",
        "dryrun=true",
        "Dry_Run=true",
        "dry_run=1&dry_run=0",
        "dry_run=true&dry_run=false",
    ] {
        let (s, v) = api(
            &base,
            "POST",
            &format!("/api/v1/resilience/circuit-breakers/quickbooks?{query}"),
            Some(json!({"state": "FORCED_OPEN"})),
        )
        .await;
        assert_eq!(s, 400, "?{query}: {v}");
        assert_eq!(breaker(base.clone()).await, "CLOSED", "?{query}: {v}");
    }
    // An encoded name is the name: a dry run.
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/resilience/circuit-breakers/quickbooks?dry%5Frun=true",
        Some(json!({"state": "FORCED_OPEN"})),
    )
    .await;
    assert_eq!((s, v["dry_run"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(breaker(base.clone()).await, "CLOSED", "{v}");
    // A body key given twice is refused, not read as its last value (this one ran the
    // action: the last `dry_run` said false).
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/commands"))
        .bearer_auth(OPS)
        .header("content-type", "application/json")
        .body(r#"{"command": "breaker quickbooks force-open", "dry_run": true, "dry_run": false}"#)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("given twice"), "{text}");
    assert_eq!(breaker(base.clone()).await, "CLOSED", "{text}");
    let before = api(&base, "GET", "/api/v1/thresholds", None).await.1;
    let (s, v) = api(
        &base,
        "PUT",
        "/api/v1/thresholds?dry_run=true",
        Some(json!({"alerts.queue_depth": 3})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        api(&base, "GET", "/api/v1/thresholds", None).await.1,
        before
    );
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/alerts/silence?dry_run=true",
        Some(json!({"matcher": "queue", "secs": 60})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/alerts/ack?dry_run",
        Some(json!({"matcher": "*"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (_, v) = api(&base, "GET", "/api/v1/alerts", None).await;
    assert_eq!(v["silences"], json!([]), "{v}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_invoices_previews_the_alegra_calls_it_then_makes() {
    use syncctl::protocol::Status;
    let sb = common::sandbox(5, 31).await;
    let sb_url = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sb);
    cfg.compliance.retry_schedule_secs = vec![1, 1];
    cfg.compliance.poll_secs = 1;
    cfg.compliance.contingency_probes = 0;
    cfg.alegra.timeout_secs = 2;
    cfg.alegra.breaker.minimum_calls = 1000;
    cfg.alegra.breaker.consecutive_failures = 0;
    let mut engine = common::engine(cfg, dir.path()).await;
    sb.sandbox.set_webhook_url(Some(format!(
        "http://{}/webhooks/stripe",
        engine.server_addr
    )));
    let base = format!("http://{}", engine.server_addr);
    // DIAN is down and the engine has no contingency: 16 invoices fail on schedule.
    common::post_json(
        &sb_url,
        "/_sandbox/faults",
        json!({"service": "dian", "outage": true}),
    )
    .await;
    common::make_invoices(&sb_url, 16).await;
    let count = |s: Status| engine.engine.snapshot.borrow().compliance.counts.get(s);
    common::eventually(120, "16 FAILED invoices", || async {
        (count(Status::Failed) == 16).then_some(())
    })
    .await;
    common::post_json(
        &sb_url,
        "/_sandbox/faults",
        json!({"service": "dian", "outage": false}),
    )
    .await;
    let alegra = || async {
        common::get_json(&format!("{sb_url}/_sandbox/stats")).await["alegra"]["handled"]
            .as_u64()
            .unwrap()
    };

    let before = alegra().await;
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/compliance/retry-failed?dry_run=true",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let p = v["preview"].clone();
    assert_eq!(
        (p["items"].clone(), p["held"].clone()),
        (json!(16), json!(0)),
        "{p}"
    );
    assert_eq!(p["first"].as_array().unwrap().len(), 5, "{p}");
    assert_eq!(alegra().await, before, "a dry run called Alegra");
    assert_eq!(count(Status::Failed), 16, "a dry run retried");

    let (s, v) = api(&base, "POST", "/api/v1/compliance/retry-failed", None).await;
    assert_eq!(s, 200, "{v}");
    common::eventually(120, "16 VALIDATED invoices", || async {
        (count(Status::Validated) == 16).then_some(())
    })
    .await;
    within_5_percent("alegra", calls(&p, "alegra"), alegra().await - before);
    engine.shutdown().await;
}

/// Closing a circuit that opened because QuickBooks failed sends the waiting work to
/// a downstream that was failing: the preview says why the circuit opened (it used
/// to count the calls as if they would simply be made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_circuit_that_opened_on_failures_previews_why_it_opened() {
    let Drifted {
        sb: _sb,
        sb_url,
        dir: _dir,
        mut engine,
        base,
    } = twelve_drifted(|cfg| cfg.quickbooks.breaker.consecutive_failures = 3).await;
    common::faults(&sb_url, json!({"service": "quickbooks", "outage": true})).await;
    let (s, v) = api(&base, "POST", "/api/v1/reconciliation/resync-drifted", None).await;
    assert_eq!(s, 200, "{v}");
    common::eventually(60, "the QuickBooks circuit to open", || async {
        matches!(
            common::qb_view(&engine.engine).breaker.state.name(),
            "OPEN" | "HALF_OPEN"
        )
        .then_some(())
    })
    .await;
    let (s, v) = api(
        &base,
        "POST",
        "/api/v1/resilience/circuit-breakers/quickbooks?dry_run=true",
        Some(json!({"state": "CLOSED"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let notes = v["preview"]["notes"].to_string();
    assert!(
        notes.contains("the quickbooks circuit is OPEN because calls failed")
            || notes.contains("the quickbooks circuit is HALF_OPEN because calls failed"),
        "{v}"
    );
    assert!(notes.contains("spend their attempts"), "{v}");
    // A dry run: the circuit is as it was.
    assert_ne!(
        common::qb_view(&engine.engine).breaker.state.name(),
        "CLOSED"
    );
    common::faults(&sb_url, json!({"service": "quickbooks", "outage": false})).await;
    engine.shutdown().await;
}
