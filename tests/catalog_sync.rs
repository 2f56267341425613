//! Catalog sync end to end over real HTTP on loopback: sandbox Stripe and QuickBooks,
//! the real engine, signed webhooks.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use syncctl::connectors::quickbooks::{QuickBooksClient, TokenKeeper};
use syncctl::sandbox::sign_webhook;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_hard_products_end_with_exactly_one_item_each_at_the_right_price() {
    let sandbox = common::sandbox(2000, 11).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(common::config_for(&sandbox), dir.path()).await;
    common::until_idle(&engine, 2000).await;
    common::assert_one_item_per_product(&sandbox.base_url()).await;
    let stats = sandbox.sandbox.stats();
    // Names differing only by case and exact duplicates exist in this world, so some
    // Items must carry the disambiguating suffix; none may have been created twice.
    assert_eq!(stats["quickbooks"]["creates"], 2000);
    engine.shutdown().await;
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_engine_does_not_write_again() {
    let sandbox = common::sandbox(150, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(common::config_for(&sandbox), dir.path()).await;
    common::until_idle(&engine, 150).await;
    engine.shutdown().await;
    let before = sandbox.sandbox.stats()["quickbooks"].clone();
    let mut engine = common::engine(common::config_for(&sandbox), dir.path()).await;
    common::until_idle(&engine, 150).await;
    engine.shutdown().await;
    let after = sandbox.sandbox.stats()["quickbooks"].clone();
    assert_eq!(before["creates"], after["creates"]);
    assert_eq!(before["updates"], after["updates"]);
    sandbox.shutdown().await;
}

fn product_event(id: &str, product: &Value, kind: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": kind, "created": product["updated"],
        "data": { "object": product }, "livemode": false,
    }))
    .unwrap()
}

async fn post_webhook(url: &str, body: &[u8], signature: Option<String>) -> reqwest::StatusCode {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(sig) = signature {
        req = req.header("Stripe-Signature", sig);
    }
    req.send().await.unwrap().status()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_verified_deduplicated_and_applied() {
    let sandbox = common::sandbox(20, 5).await;
    let base = sandbox.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(common::config_for(&sandbox), dir.path()).await;
    common::until_idle(&engine, 20).await;
    let hook = format!("http://{}/webhooks/stripe", engine.server_addr);
    let secret = sandbox.sandbox.webhook_secret();

    let products = common::all_products(&base).await;
    let mut product = products
        .iter()
        .find(|p| p["active"] == true)
        .unwrap()
        .clone();
    let id = product["id"].as_str().unwrap().to_owned();
    product["name"] = json!("Renamed by webhook ☕ O'Brien");
    product["updated"] = json!(product["updated"].as_i64().unwrap() + 10);
    product["default_price"] = product["default_price"]["id"].clone();
    let body = product_event("evt_test_rename", &product, "product.updated");
    let updates_before = sandbox.sandbox.stats()["quickbooks"]["updates"]
        .as_u64()
        .unwrap();

    // Bad, stale and missing signatures: 400, and nothing changes.
    let good = sign_webhook(&secret, now(), &body);
    let wrong_secret = sign_webhook("whsec_not_the_secret", now(), &body);
    let stale = sign_webhook(&secret, now() - 301, &body);
    let mut tampered = body.clone();
    tampered[10] ^= 0x01;
    assert_eq!(post_webhook(&hook, &body, Some(wrong_secret)).await, 400);
    assert_eq!(post_webhook(&hook, &body, Some(stale)).await, 400);
    assert_eq!(post_webhook(&hook, &body, None).await, 400);
    assert_eq!(
        post_webhook(&hook, &tampered, Some(good.clone())).await,
        400
    );
    let health = common::get_json(&format!("http://{}/health", engine.server_addr)).await;
    assert_eq!(health["catalog"]["webhooks"]["accepted"], 0);
    assert_eq!(health["catalog"]["webhooks"]["rejected"], 4);
    assert_eq!(health["catalog"]["queued"], 0);

    // A verified event updates the Item; the same event id again is applied once.
    assert_eq!(post_webhook(&hook, &body, Some(good)).await, 200);
    assert_eq!(
        post_webhook(&hook, &body, Some(sign_webhook(&secret, now(), &body))).await,
        200
    );
    let item = common::eventually(10, "the Item renamed", || async {
        let items = common::get_json(&format!("{base}/_sandbox/quickbooks/items")).await;
        items
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["Sku"] == id.as_str() && i["Name"] == "Renamed by webhook ☕ O'Brien")
            .cloned()
    })
    .await;
    assert_eq!(item["Sku"], id.as_str());
    common::until_idle(&engine, 20).await;
    let health = common::get_json(&format!("http://{}/health", engine.server_addr)).await;
    assert_eq!(health["catalog"]["webhooks"]["accepted"], 1);
    assert_eq!(health["catalog"]["webhooks"]["duplicate"], 1);
    assert_eq!(
        sandbox.sandbox.stats()["quickbooks"]["updates"]
            .as_u64()
            .unwrap(),
        updates_before + 1
    );

    // An older version arriving late (out of order) does not undo the newer one.
    let mut old = product.clone();
    old["name"] = json!("Old name arriving late");
    old["updated"] = json!(product["updated"].as_i64().unwrap() - 5);
    let late = product_event("evt_test_late", &old, "product.updated");
    assert_eq!(
        post_webhook(&hook, &late, Some(sign_webhook(&secret, now(), &late))).await,
        200
    );
    common::eventually(10, "the late event processed", || async {
        let h = common::get_json(&format!("http://{}/health", engine.server_addr)).await;
        (h["catalog"]["webhooks"]["accepted"] == 2
            && h["catalog"]["queued"] == 0
            && h["catalog"]["in_flight"] == 0)
            .then_some(())
    })
    .await;
    assert_eq!(
        sandbox.sandbox.stats()["quickbooks"]["updates"]
            .as_u64()
            .unwrap(),
        updates_before + 1
    );

    // Verified events of types the engine does not handle are acknowledged.
    let other = br#"{"id":"evt_other","type":"customer.created","created":1,"data":{"object":{}}}"#;
    assert_eq!(
        post_webhook(&hook, other, Some(sign_webhook(&secret, now(), other))).await,
        200
    );
    engine.shutdown().await;
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_catalog_changes_reach_quickbooks_through_signed_webhooks() {
    let sandbox = common::sandbox(30, 8).await;
    let base = sandbox.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(common::config_for(&sandbox), dir.path()).await;
    sandbox.sandbox.set_webhook_url(Some(format!(
        "http://{}/webhooks/stripe",
        engine.server_addr
    )));
    common::until_idle(&engine, 30).await;
    let product = common::all_products(&base).await[3].clone();
    let id = product["id"].as_str().unwrap().to_owned();
    let resp = reqwest::Client::new()
        .post(format!("{base}/_sandbox/stripe/products/{id}"))
        .json(&json!({ "name": "Ajiaco Santafereño: Grande", "unit_amount": 4_550_000, "currency": "cop" }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    common::eventually(15, "rename and new price in QuickBooks", || async {
        let items = common::get_json(&format!("{base}/_sandbox/quickbooks/items")).await;
        items
            .as_array()
            .unwrap()
            .iter()
            .find(|i| {
                i["Sku"] == id.as_str()
                    && i["Name"] == "Ajiaco Santafereño- Grande"
                    && i["UnitPrice"] == 45_500.0
            })
            .cloned()
    })
    .await;
    // Both events (price.created, product.updated) are delivered signed and accepted.
    common::eventually(10, "both webhooks delivered", || async {
        (sandbox.sandbox.stats()["stripe"]["webhooks_sent"]
            .as_u64()
            .unwrap()
            >= 2)
            .then_some(())
    })
    .await;
    assert!(engine.snapshot.borrow().catalog.webhooks_rejected == 0);
    common::assert_one_item_per_product(&base).await;
    engine.shutdown().await;
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciliation_catches_changes_no_webhook_delivered() {
    let sandbox = common::sandbox(10, 9).await;
    let base = sandbox.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config_for(&sandbox);
    config.catalog.reconcile_interval_secs = 1;
    let mut engine = common::engine(config, dir.path()).await;
    common::until_idle(&engine, 10).await;
    // No webhook URL is set: these changes only show in /v1/events.
    let resp = reqwest::Client::new()
        .post(format!("{base}/_sandbox/catalog/changes"))
        .json(&json!({ "count": 20 }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    common::eventually(20, "reconciled catalog", || async {
        let products = common::all_products(&base).await;
        let items = common::get_json(&format!("{base}/_sandbox/quickbooks/items")).await;
        let items = items.as_array().unwrap();
        let in_line = products.iter().all(|p| {
            items
                .iter()
                .any(|i| i["Sku"] == p["id"] && i["Active"] == p["active"])
        });
        let idle = engine.snapshot.borrow().catalog.counts.queued == 0
            && engine.snapshot.borrow().catalog.in_flight == 0;
        (in_line && idle && items.len() == products.len()).then_some(())
    })
    .await;
    common::assert_one_item_per_product(&base).await;
    engine.shutdown().await;
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_access_token_is_refreshed_exactly_once_under_concurrent_calls() {
    let sandbox = common::sandbox(1, 1).await;
    let base = sandbox.base_url();
    let dir = tempfile::tempdir().unwrap();
    let store = syncctl::store::Store::open(dir.path()).unwrap();
    let config = common::config_for(&sandbox);
    let q = &config.quickbooks;
    let http = syncctl::connectors::http_client().unwrap();
    let tokens = Arc::new(
        TokenKeeper::new(
            http.clone(),
            q.token_url.as_deref().unwrap(),
            q.client_id.as_deref().unwrap(),
            q.client_secret.clone().unwrap(),
            q.refresh_token.as_ref().unwrap(),
            store.clone(),
        )
        .unwrap(),
    );
    let client = QuickBooksClient::new(
        http,
        &base,
        q.realm_id.as_deref().unwrap(),
        75,
        Duration::from_secs(10),
        tokens.clone(),
    );
    client.find_items("Name", "nothing").await.unwrap();
    assert_eq!(sandbox.sandbox.stats()["quickbooks"]["token_refreshes"], 1);

    // An hour passes on the sandbox's clock: every access token it issued is expired.
    reqwest::Client::new()
        .post(format!("{base}/_sandbox/clock"))
        .json(&json!({ "advance_secs": 3601 }))
        .send()
        .await
        .unwrap();
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.find_items("Name", &format!("item {i}")).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let stats = sandbox.sandbox.stats();
    assert_eq!(stats["quickbooks"]["token_refreshes"], 2, "{stats}");
    assert_eq!(tokens.refreshes(), 2);
    // The rotated refresh token was persisted: the store holds the one the sandbox accepts.
    let stored = store.oauth().unwrap().unwrap().refresh_token;
    assert_eq!(stored, sandbox.sandbox.lock().world.refresh_token);
    sandbox.shutdown().await;
}

/// Runs `syncctl ctl ARGS` against the engine at `url` as an operator token.
async fn ctl(url: &str, token: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["ctl", "--url", url, "--token", token];
    all.extend_from_slice(args);
    let all: Vec<String> = all.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_syncctl"))
            .args(&all)
            .env("USER", "ana")
            .env_remove("SUDO_USER")
            .env_remove("SYNCCTL_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn counts(engine: &syncctl::engine::EngineHandle) -> syncctl::protocol::CatalogCounts {
    engine.snapshot.borrow().catalog.counts.clone()
}

/// Issue 15 point 6: catalog jobs that failed past their last attempt are retried one
/// and all (`syncctl ctl`, the API), and a full sync runs again; each is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_catalog_jobs_are_retried_one_and_all_and_a_full_sync_runs_again() {
    const TOKEN: &str = "ops-token-0123456789abcdef";
    let sandbox = common::sandbox(5, 4).await;
    let base = sandbox.base_url();
    common::faults(&base, json!({"service": "quickbooks", "error_rate": 1.0})).await;
    let mut cfg = common::with_operator(common::config_for(&sandbox), TOKEN);
    cfg.catalog.max_attempts = 1;
    cfg.quickbooks.breaker.minimum_calls = 10_000;
    cfg.quickbooks.breaker.consecutive_failures = 0;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(cfg, dir.path()).await;
    let url = format!("http://{}", engine.server_addr);
    common::eventually(60, "every catalog job failed", || async {
        let c = counts(&engine);
        (c.failed == 5 && c.queued == 0 && c.in_flight == 0).then_some(())
    })
    .await;
    common::faults(&base, json!({"service": "quickbooks", "error_rate": 0.0})).await;

    // One, by product id.
    let pid = common::all_products(&base).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = ctl(&url, TOKEN, &["retry-job", &pid]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::eventually(30, "the one retried job synced", || async {
        let c = counts(&engine);
        (c.synced == 1 && c.failed == 4).then_some(())
    })
    .await;
    // The same product again: nothing failed left for it.
    let out = ctl(&url, TOKEN, &["retry-job", &pid]).await;
    assert_eq!(out.status.code(), Some(1));

    // All, with the count in the answer.
    let out = ctl(&url, TOKEN, &["retry-failed-jobs"]).await;
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("re-queued 4 failed catalog job"), "{said}");
    common::until_idle(&engine, 5).await;
    assert_eq!(counts(&engine).failed, 0);
    // None left: the API says so.
    let (status, _) = common::api(
        &url,
        TOKEN,
        "POST",
        "/api/v1/pipelines/catalog/retry-failed",
        None,
    )
    .await;
    assert_eq!(status, 409);

    // The full sync again, through the API: every product listed again, no Item twice.
    let (status, body) = common::api(
        &url,
        TOKEN,
        "POST",
        "/api/v1/pipelines/catalog/resync",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let listed = common::eventually(30, "the second full sync", || async {
        let store = syncctl::store::Store::open(dir.path()).ok()?;
        let audit = store.recent_audit(200, 0).ok()?;
        let n = audit
            .iter()
            .filter(|e| e.message.starts_with("full sync listed 5 products"))
            .count();
        (n == 2).then_some(audit)
    })
    .await;
    common::until_idle(&engine, 5).await;
    common::assert_one_item_per_product(&base).await;
    // Each action audited as the token that sent it, in the grammar.
    for line in [
        format!("retry-job {pid}: re-queued"),
        "retry-failed-jobs: re-queued 4".to_owned(),
        "resync: full sync started again".to_owned(),
    ] {
        assert!(
            listed
                .iter()
                .any(|e| e.kind == "operator" && e.message.starts_with(&line)),
            "{line} in {:#?}",
            listed.iter().map(|e| &e.message).collect::<Vec<_>>()
        );
    }
    engine.shutdown().await;
    sandbox.shutdown().await;
}

/// Issue 15 point 11: a healthy full sync of 3,000 products raises no warning or
/// critical alert — with `for` at 0, so any condition that held even a second would
/// have fired (a deep queue that drains is work going as it should).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_full_sync_of_three_thousand_products_raises_no_warning() {
    let sandbox = common::sandbox(3000, 15).await;
    let mut cfg = common::config_for(&sandbox);
    cfg.alerts.for_secs = 0;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(cfg, dir.path()).await;
    common::until_idle(&engine, 3000).await;
    let store = syncctl::store::Store::open(dir.path()).unwrap();
    let alerts: Vec<String> = store
        .recent_audit(10_000, 0)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "alert" && !e.message.starts_with("info"))
        .map(|e| format!("{}: {}", e.entity, e.message))
        .collect();
    assert!(alerts.is_empty(), "{alerts:#?}");
    engine.shutdown().await;
    sandbox.shutdown().await;
}

/// Issue 19: while work is queued each worker has its next group claimed and waiting
/// (a worker that finishes does not wait for a claim's commit), and never more than
/// one: with 2 workers taking one job at a time, 4 jobs are leased at most, and 4 at
/// once while the sync runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_has_its_next_group_claimed_and_waiting_no_more() {
    let sb = common::sandbox(40, 23).await;
    let base = sb.base_url();
    common::faults(
        &base,
        json!({"service": "quickbooks", "latency_ms": 100, "latency_distribution": "fixed"}),
    )
    .await;
    let mut cfg = common::config_for(&sb);
    cfg.catalog.workers = 2;
    cfg.catalog.autoscale = false;
    cfg.catalog.claim_batch_max = 1;
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(cfg, dir.path()).await;
    let mut rx = engine.snapshot.clone();
    let (mut most_leased, mut most_busy, mut samples) = (0, 0, 0);
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            {
                let s = rx.borrow_and_update();
                let c = &s.catalog;
                if c.counts.queued > 0 {
                    samples += 1;
                    most_leased = most_leased.max(c.counts.in_flight);
                    most_busy = most_busy.max(c.workers_busy);
                }
                if c.full_sync.done && c.counts.synced >= 40 {
                    return;
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the sync ends");
    println!(
        "{samples} samples with work queued: {most_leased} jobs leased, {most_busy} workers busy at most"
    );
    assert!(samples >= 5, "only {samples} samples while work was queued");
    assert!(most_busy <= 2, "{most_busy} workers busy of 2");
    assert_eq!(
        most_leased, 4,
        "2 in hand and 2 waiting, at most and while work is queued"
    );
    common::until_idle(&engine, 40).await;
    common::assert_one_item_per_product(&base).await;
}
