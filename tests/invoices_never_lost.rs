//! Issue 20: never lose and never reissue an invoice. Every path by which a paid invoice
//! reaches the engine (webhook, events reconciliation, listing) ends in a compliance
//! record; a lost store is refused, and a deliberate fresh start adopts what Alegra and
//! QuickBooks hold instead of issuing it again. All over real HTTP against the sandbox.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};
use syncctl::app::Served;
use syncctl::compliance::machine::Status;
use syncctl::config::Config;
use syncctl::engine::{EngineHandle, EngineOptions, Mode};
use syncctl::sandbox::SandboxServer;

use common::make_invoices;
use common::post_json as post;

const DEAD_URL: &str = "http://127.0.0.1:9/webhooks/stripe";

fn config(sb: &SandboxServer, tune: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = common::config_for(sb);
    cfg.compliance.retry_schedule_secs = vec![1, 1, 1];
    cfg.compliance.poll_secs = 1;
    cfg.alegra.timeout_secs = 2;
    cfg.alegra.breaker.minimum_calls = 1000;
    cfg.alegra.breaker.consecutive_failures = 0;
    cfg.compliance.list_interval_secs = 3600;
    tune(&mut cfg);
    cfg
}

async fn start(cfg: Config, dir: &Path, fresh_store: bool) -> anyhow::Result<Served> {
    let listener = syncctl::app::bind(cfg.server.listen, false).await?;
    syncctl::app::serve_engine(
        EngineOptions {
            config: cfg,
            data_dir: dir.to_owned(),
            mode: Mode::Sandbox,
            server_addr: None,
            fresh_store,
            company: syncctl::config::DEFAULT_COMPANY.into(),
        },
        listener,
    )
    .await
}

fn hook_to(sb: &SandboxServer, engine: &Served) {
    sb.sandbox.set_webhook_url(Some(format!(
        "http://{}/webhooks/stripe",
        engine.server_addr
    )));
}

/// An engine on `dir` with its webhooks delivered and the catalog synced.
async fn ready(sb: &SandboxServer, cfg: &Config, dir: &Path) -> Served {
    let engine = start(cfg.clone(), dir, false).await.unwrap();
    hook_to(sb, &engine);
    common::until_idle(&engine, 3).await;
    engine
}

/// An engine on `dir` validates `n` paid invoices and stops; its store is copied to
/// `backup` (last night's backup). Returns the invoices.
async fn validated_then_backed_up(
    sb: &SandboxServer,
    cfg: &Config,
    dir: &Path,
    backup: &Path,
    n: usize,
) -> Vec<String> {
    let mut engine = ready(sb, cfg, dir).await;
    let ids = make_invoices(&sb.base_url(), n).await;
    until_validated(&engine, &ids, 60).await;
    engine.shutdown().await;
    copy_db(dir, backup);
    ids
}

/// Waits until every one of `ids` is VALIDATED; returns Stripe id → DIAN number.
async fn until_validated(
    engine: &EngineHandle,
    ids: &[String],
    secs: u64,
) -> HashMap<String, String> {
    common::eventually(
        secs,
        &format!("{} invoices VALIDATED", ids.len()),
        || async {
            let s = engine.snapshot.borrow().clone();
            let done: HashMap<String, String> = s
                .compliance
                .invoices
                .iter()
                .filter(|r| r.status == Status::Validated && ids.contains(&r.stripe_id))
                .map(|r| (r.stripe_id.clone(), r.number.clone()))
                .collect();
            (done.len() == ids.len()).then_some(done)
        },
    )
    .await
}

async fn alegra(base: &str) -> Value {
    common::get_json(&format!("{base}/_sandbox/stats")).await["alegra"].clone()
}

/// Each invoice has exactly one accepted document at Alegra, and no number is accepted
/// twice.
async fn assert_one_document_each(base: &str, ids: &[String]) {
    let docs = common::get_json(&format!("{base}/_sandbox/alegra/invoices")).await;
    let docs = docs.as_array().unwrap();
    let mut by_invoice: HashMap<String, usize> = HashMap::new();
    let mut numbers: HashMap<String, usize> = HashMap::new();
    for d in docs {
        if d["stamp"]["legalStatus"]
            .as_str()
            .is_some_and(|s| s.starts_with("STAMPED_AND_ACCEPTED"))
        {
            let a = d["anotation"].as_str().unwrap_or("").to_owned();
            *by_invoice.entry(a).or_default() += 1;
            *numbers
                .entry(
                    d["numberTemplate"]["fullNumber"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
                .or_default() += 1;
        }
    }
    for id in ids {
        assert_eq!(
            by_invoice
                .get(&format!("stripe:{id}"))
                .copied()
                .unwrap_or(0),
            1,
            "one accepted Alegra document for {id}: {by_invoice:?}"
        );
    }
    assert!(
        numbers.values().all(|n| *n == 1),
        "a number accepted twice: {numbers:?}"
    );
}

/// Posts Stripe's events of `type` again, signed, as Stripe's retries would; returns
/// the engine's answers.
async fn redeliver(sb: &SandboxServer, engine: &Served, kind: &str) -> Vec<Value> {
    let base = sb.base_url();
    let page: Value = reqwest::Client::new()
        .get(format!("{base}/v1/events"))
        .bearer_auth(syncctl::sandbox::STRIPE_API_KEY)
        .query(&[("limit", "100"), ("type", kind)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = sb.sandbox.webhook_secret();
    let mut answers = Vec::new();
    for e in page["data"].as_array().unwrap() {
        let body = serde_json::to_vec(e).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let r = reqwest::Client::new()
            .post(format!("http://{}/webhooks/stripe", engine.server_addr))
            .header(
                "Stripe-Signature",
                syncctl::sandbox::sign_webhook(&secret, now, &body),
            )
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        answers.push(r.json().await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_whose_webhooks_failed_are_taken_by_the_events_reconciliation() {
    let sb = common::sandbox(5, 31).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let engine = start(
        config(&sb, |c| c.catalog.reconcile_interval_secs = 1),
        dir.path(),
        false,
    )
    .await
    .unwrap();
    hook_to(&sb, &engine);
    common::until_idle(&engine, 5).await;
    // Stripe cannot reach the engine while the invoices are paid.
    sb.sandbox.set_webhook_url(Some(DEAD_URL.into()));
    let ids = make_invoices(&base, 5).await;
    let numbers = until_validated(&engine, &ids, 60).await;
    // Stripe's retries arrive once the endpoint works again: known, nothing new.
    hook_to(&sb, &engine);
    for a in redeliver(&sb, &engine, "invoice.paid").await {
        assert_eq!(a["duplicate"], true, "{a}");
    }
    let h = common::get_json(&format!("http://{}/health", engine.server_addr)).await;
    assert_eq!(
        h["compliance"]["counts"]["VALIDATED"].as_u64(),
        Some(5),
        "{h}"
    );
    let a = alegra(&base).await;
    assert_eq!(a["invoices_total"], 5, "{a}");
    assert_eq!(a["duplicate_documents"], 0, "{a}");
    assert_one_document_each(&base, &ids).await;
    assert_eq!(numbers.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_walks_every_page_since_its_cursor() {
    let sb = common::sandbox(3, 32).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    // No events reconciliation: the listing alone must find what the webhooks missed.
    let cfg = config(&sb, |c| c.catalog.reconcile_interval_secs = 3600);
    let mut engine = ready(&sb, &cfg, dir.path()).await;
    // 150 invoices paid while webhooks failed, then 120 delivered: the newest page holds
    // only known invoices, the missed ones are on the pages after it.
    sb.sandbox.set_webhook_url(Some(DEAD_URL.into()));
    let missed = make_invoices(&base, 150).await;
    // Stripe gave up on them (the sandbox tries each delivery 5 times).
    common::eventually(60, "every delivery attempt to fail", || async {
        let s = common::get_json(&format!("{base}/_sandbox/stats")).await;
        (s["stripe"]["webhooks_failed"].as_u64().unwrap_or(0) >= 150 * 5).then_some(())
    })
    .await;
    hook_to(&sb, &engine);
    let delivered = make_invoices(&base, 120).await;
    until_validated(&engine, &delivered, 120).await;
    engine.shutdown().await;
    // The listing runs when the engine starts.
    let engine = start(cfg, dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    let all: Vec<String> = missed.iter().chain(&delivered).cloned().collect();
    until_validated(&engine, &all, 180).await;
    let a = alegra(&base).await;
    assert_eq!(a["invoices_total"], 270, "{a}");
    assert_eq!(a["duplicate_documents"], 0, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_paid_while_the_store_refused_writes_are_taken_when_it_writes_again() {
    let sb = common::sandbox(3, 33).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let engine = start(
        config(&sb, |c| {
            // The events reconciliation is the path under test (the listing would also do).
            c.catalog.reconcile_interval_secs = 1;
        }),
        dir.path(),
        false,
    )
    .await
    .unwrap();
    hook_to(&sb, &engine);
    common::until_idle(&engine, 3).await;
    // Another process holds the database's write lock: every write of the engine fails
    // (after its busy timeout), as with a full disk.
    let blocker = rusqlite::Connection::open(dir.path().join("syncctl.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let ids = make_invoices(&base, 3).await;
    common::eventually(60, "failed webhook deliveries", || async {
        let s = common::get_json(&format!("{base}/_sandbox/stats")).await;
        (s["stripe"]["webhooks_failed"].as_u64().unwrap_or(0) >= 3).then_some(())
    })
    .await;
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    until_validated(&engine, &ids, 90).await;
    let a = alegra(&base).await;
    assert_eq!(a["invoices_total"], 3, "{a}");
    assert_one_document_each(&base, &ids).await;
}

/// Removes the database (and its WAL) as an operator or a failing disk might.
fn delete_db(dir: &Path) {
    for f in ["syncctl.db", "syncctl.db-wal", "syncctl.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_is_refused_and_a_fresh_start_adopts_documents_and_items() {
    let sb = common::sandbox(12, 34).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&sb, |c| c.compliance.list_interval_secs = 1);
    let mut engine = start(cfg.clone(), dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    common::until_idle(&engine, 12).await;
    let ids = make_invoices(&base, 20).await;
    let numbers = until_validated(&engine, &ids, 90).await;
    engine.shutdown().await;
    // Four products renamed in Stripe while the engine is down: their Items keep the old
    // names, so only their Sku ties them to their products.
    let products = common::all_products(&base).await;
    for p in products.iter().take(4) {
        let id = p["id"].as_str().unwrap();
        post(
            &base,
            &format!("/_sandbox/stripe/products/{id}"),
            json!({"name": format!("Renamed {id}")}),
        )
        .await;
    }

    // Deleted: refused, nothing sent.
    delete_db(dir.path());
    let e = start(cfg.clone(), dir.path(), false)
        .await
        .err()
        .expect("refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("--fresh-store") && msg.contains("store.id"),
        "{msg}"
    );
    // Emptied (truncated): refused as well.
    std::fs::write(dir.path().join("syncctl.db"), b"").unwrap();
    assert!(start(cfg.clone(), dir.path(), false).await.is_err());
    // The whole data dir gone: Alegra's documents are the evidence.
    let empty = tempfile::tempdir().unwrap();
    let e = start(cfg.clone(), empty.path(), false)
        .await
        .err()
        .expect("refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("Alegra already holds") && msg.contains("--fresh-store"),
        "{msg}"
    );
    assert_eq!(alegra(&base).await["invoices_total"], 20);

    // On purpose: everything adopted, nothing issued again. (QuickBooks' refresh token
    // rotated with the lost store: the operator re-authorises, i.e. a config with the
    // token QuickBooks holds now.)
    let cfg = config(&sb, |c| c.compliance.list_interval_secs = 1);
    let engine = start(cfg.clone(), dir.path(), true).await.unwrap();
    hook_to(&sb, &engine);
    let again = until_validated(&engine, &ids, 120).await;
    assert_eq!(again, numbers, "each invoice keeps its number");
    common::until_idle(&engine, 12).await;
    common::assert_one_item_per_product(&base).await;
    // New invoices continue the numbering after the highest used.
    let more = make_invoices(&base, 2).await;
    let next = until_validated(&engine, &more, 60).await;
    let highest = numbers.values().max().unwrap();
    for n in next.values() {
        assert!(
            n.len() == highest.len() && n > highest,
            "{n} after {highest}"
        );
    }
    let a = alegra(&base).await;
    assert_eq!(a["invoices_total"], 22, "{a}");
    assert_eq!(a["duplicate_documents"], 0, "{a}");
    let all: Vec<String> = ids.iter().chain(&more).cloned().collect();
    assert_one_document_each(&base, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_90_counts_as_accepted_only_for_this_invoices_own_document() {
    let sb = common::sandbox(3, 35).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let engine = start(config(&sb, |_| {}), dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    common::until_idle(&engine, 3).await;
    // Another system takes the engine's next number at Alegra (after the engine checked
    // the range at start), and DIAN accepts it.
    let first = syncctl::store::Store::open(dir.path()).unwrap();
    let next = first.next_number_seq().unwrap();
    drop(first);
    let taken = format!("{}", 990_000_001 + next);
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/invoices"))
        .basic_auth(
            syncctl::sandbox::alegra::ALEGRA_EMAIL,
            Some(syncctl::sandbox::alegra::ALEGRA_TOKEN),
        )
        .json(&json!({
            "date": time::OffsetDateTime::now_utc().date().to_string(),
            "numberTemplate": {"prefix": "SETP", "number": taken},
            "client": {"identification": "222222222222", "name": "Otro"},
            "items": [{"name": "x", "price": 1000, "quantity": 1}],
            "anotation": "issued by hand",
            "stamp": {"generateStamp": true},
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let ids = make_invoices(&base, 1).await;
    let numbers = until_validated(&engine, &ids, 60).await;
    let number = &numbers[&ids[0]];
    assert_ne!(
        number,
        &format!("SETP{taken}"),
        "never validated on another's number"
    );
    let s = engine.snapshot.borrow().clone();
    let rec = s
        .compliance
        .invoices
        .iter()
        .find(|r| r.stripe_id == ids[0])
        .unwrap()
        .clone();
    assert_eq!(rec.cufe.as_ref().map(String::len), Some(96));
    assert_one_document_each(&base, &ids).await;
    let docs = common::get_json(&format!("{base}/_sandbox/alegra/invoices")).await;
    let ours = docs
        .as_array()
        .unwrap()
        .iter()
        .find(|d| {
            d["anotation"] == format!("stripe:{}", ids[0])
                && d["stamp"]["legalStatus"] == "STAMPED_AND_ACCEPTED"
        })
        .expect("our accepted document");
    assert_eq!(ours["stamp"]["cufe"].as_str(), rec.cufe.as_deref());
}

fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["syncctl.db", "syncctl.db-wal", "syncctl.db-shm"] {
        let _ = std::fs::remove_file(to.join(f));
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
}

/// A document of the engine's range issued by another system (no `stripe:` annotation).
async fn foreign_document(base: &str, number: &str) {
    document(base, "SETP", number, "issued by hand", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_an_old_backup_reissues_nothing() {
    let sb = common::sandbox(3, 41).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let cfg = config(&sb, |c| c.compliance.list_interval_secs = 1);
    let first = validated_then_backed_up(&sb, &cfg, dir.path(), backup.path(), 3).await;
    let mut engine = start(cfg.clone(), dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    let later = make_invoices(&base, 3).await;
    let numbers = until_validated(&engine, &later, 60).await;
    engine.shutdown().await;
    // The disk dies; last night's backup comes back: it knows nothing of `later`.
    copy_db(backup.path(), dir.path());
    let engine = start(cfg, dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    let all: Vec<String> = first.iter().chain(&later).cloned().collect();
    let again = until_validated(&engine, &all, 60).await;
    for id in &later {
        assert_eq!(again[id], numbers[id], "{id} adopted with its number");
    }
    let a = alegra(&base).await;
    assert_eq!(a["invoices_total"], 6, "{a}");
    assert_eq!(a["rejected"], 0, "no stale number sent: {a}");
    assert_one_document_each(&base, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_is_refused_whatever_holds_the_first_number_or_when_only_emptied() {
    let sb = common::sandbox(3, 42).await;
    let base = sb.base_url();
    // Another system took the range's first number; Alegra refuses the engine's first
    // create (numbering not yet authorised), so its first number is never at Alegra.
    foreign_document(&base, "990000001").await;
    post(
        &base,
        "/_sandbox/alegra",
        json!({"numbering_rejections": 1}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&sb, |c| c.compliance.list_interval_secs = 1);
    let mut engine = ready(&sb, &cfg, dir.path()).await;
    let refused = make_invoices(&base, 1).await;
    until_status(&engine, &refused[0], Status::Failed).await;
    let ids = make_invoices(&base, 4).await;
    until_validated(&engine, &ids, 60).await;
    engine.shutdown().await;
    // The whole data dir lost.
    let empty = tempfile::tempdir().unwrap();
    let e = start(cfg.clone(), empty.path(), false)
        .await
        .err()
        .expect("refused");
    assert!(format!("{e:#}").contains("issued by syncctl"), "{e:#}");
    // The database kept, its invoices deleted.
    let c = rusqlite::Connection::open(dir.path().join("syncctl.db")).unwrap();
    c.execute_batch("DELETE FROM invoice_history; DELETE FROM invoices;")
        .unwrap();
    drop(c);
    let e = start(cfg, dir.path(), false).await.err().expect("refused");
    assert!(format!("{e:#}").contains("--fresh-store"), "{e:#}");
    assert_eq!(alegra(&base).await["invoices_total"], 5);
}

async fn until_status(engine: &EngineHandle, id: &str, status: Status) {
    common::eventually(60, &format!("{id} {status}"), || async {
        let s = engine.snapshot.borrow().clone();
        s.compliance
            .invoices
            .iter()
            .any(|r| r.stripe_id == id && r.status == status)
            .then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_start_cut_short_still_adopts_items_by_sku() {
    let sb = common::sandbox(12, 46).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = start(config(&sb, |_| {}), dir.path(), false).await.unwrap();
    common::until_idle(&engine, 12).await;
    engine.shutdown().await;
    for p in common::all_products(&base).await {
        let id = p["id"].as_str().unwrap();
        let renamed = json!({"name": format!("Renamed {id}")});
        post(&base, &format!("/_sandbox/stripe/products/{id}"), renamed).await;
    }
    delete_db(dir.path());
    common::faults(&base, json!({"service": "quickbooks", "latency_ms": 700})).await;
    // Re-authorised (the lost store held the rotated refresh token).
    let mut engine = start(config(&sb, |_| {}), dir.path(), true).await.unwrap();
    common::eventually(60, "a few products synced", || async {
        (engine.snapshot.borrow().catalog.counts.synced >= 2).then_some(())
    })
    .await;
    engine.shutdown().await;
    common::faults(&base, json!({"service": "quickbooks", "latency_ms": 0})).await;
    let engine = start(config(&sb, |_| {}), dir.path(), false).await.unwrap();
    common::until_idle(&engine, 12).await;
    common::assert_one_item_per_product(&base).await;
}

/// The Stripe id → (number, status) of every compliance record.
fn records(engine: &EngineHandle) -> HashMap<String, (String, Status)> {
    engine
        .snapshot
        .borrow()
        .compliance
        .invoices
        .iter()
        .map(|r| (r.stripe_id.clone(), (r.number.clone(), r.status)))
        .collect()
}

/// A document at Alegra, made by hand or by another system.
async fn document(base: &str, prefix: &str, number: &str, anotation: &str, stamp: bool) {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/invoices"))
        .basic_auth(
            syncctl::sandbox::alegra::ALEGRA_EMAIL,
            Some(syncctl::sandbox::alegra::ALEGRA_TOKEN),
        )
        .json(&json!({
            "date": time::OffsetDateTime::now_utc().date().to_string(),
            "numberTemplate": {"prefix": prefix, "number": number},
            "client": {"identification": "222222222222", "name": "Otro"},
            "items": [{"name": "x", "price": 1000, "quantity": 1}],
            "anotation": anotation,
            "stamp": {"generateStamp": stamp},
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

/// A newer copy of the store burned more numbers than are asked one by one (a day-one
/// burst of AEP6009 refusals: no document at Alegra), then issued more, and other
/// numberings of the account issued many more documents since. Restoring the older
/// backup must still find those documents (Alegra's newest, read first until this
/// range shows) and adopt them, not number their invoices again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_finds_documents_past_a_gap_of_unused_numbers() {
    let sb = common::sandbox(3, 51).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let cfg = config(&sb, |c| c.compliance.list_interval_secs = 1);
    let first = validated_then_backed_up(&sb, &cfg, dir.path(), backup.path(), 1).await;
    let mut engine = start(cfg.clone(), dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    post(
        &base,
        "/_sandbox/alegra",
        json!({"numbering_rejections": 12}),
    )
    .await;
    let refused = make_invoices(&base, 12).await;
    common::eventually(60, "12 invoices FAILED", || async {
        let r = records(&engine);
        let failed = refused
            .iter()
            .filter(|id| r.get(*id).is_some_and(|x| x.1 == Status::Failed))
            .count();
        (failed == 12).then_some(())
    })
    .await;
    let later = make_invoices(&base, 3).await;
    let numbers = until_validated(&engine, &later, 60).await;
    engine.shutdown().await;
    // The company's other numbering (a till) keeps issuing at Alegra: more than four
    // pages of newest documents are not this range's.
    for i in 0..121 {
        document(&base, "POS", &(1000 + i).to_string(), "pos sale", false).await;
    }
    copy_db(backup.path(), dir.path());
    let engine = start(cfg, dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    let again = until_validated(&engine, &later, 60).await;
    assert_eq!(again, numbers, "adopted with their numbers");
    // The refused ones never reached DIAN: the restored store issues them now.
    let all: Vec<String> = first
        .iter()
        .chain(&refused)
        .chain(&later)
        .cloned()
        .collect();
    until_validated(&engine, &all, 60).await;
    assert_one_document_each(&base, &all).await;
    assert_eq!(alegra(&base).await["accepted"], 16);
}

/// The backup holds invoice X unsent at number N. Later N turned out another system's
/// and the newer store renumbered X to M, whose document DIAN had not answered yet
/// (`waiting`) or had accepted. The restored backup adopts X's document at M: X is
/// never issued a third time.
async fn restored_backup_adopts_a_renumbered_invoice(seed: u64, waiting: bool) {
    let sb = common::sandbox(3, seed).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let cfg = config(&sb, |_| {});
    let mut engine = ready(&sb, &cfg, dir.path()).await;
    let a = make_invoices(&base, 1).await;
    until_validated(&engine, &a, 60).await;
    common::faults(&base, json!({"service": "alegra", "outage": true})).await;
    let x = make_invoices(&base, 1).await;
    let n = common::eventually(30, "X numbered", || async {
        records(&engine).get(&x[0]).map(|r| r.0.clone())
    })
    .await;
    engine.shutdown().await;
    common::faults(&base, json!({"service": "alegra", "outage": false})).await;
    copy_db(dir.path(), backup.path());
    foreign_document(&base, n.trim_start_matches("SETP")).await;
    if waiting {
        post(&base, "/_sandbox/alegra", json!({"waiting_ms": 2000})).await;
    }
    let mut engine = start(cfg.clone(), dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    let want = if waiting {
        Status::Sent
    } else {
        Status::Validated
    };
    let m = common::eventually(60, "X renumbered and sent", || async {
        records(&engine)
            .get(&x[0])
            .filter(|r| r.0 != n && r.1 == want)
            .map(|r| r.0.clone())
    })
    .await;
    engine.shutdown().await;
    copy_db(backup.path(), dir.path());
    let engine = start(cfg, dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    let again = until_validated(&engine, &x, 60).await;
    assert_eq!(again[&x[0]], m, "X keeps its document at {m}");
    let all: Vec<String> = a.iter().chain(&x).cloned().collect();
    assert_one_document_each(&base, &all).await;
    let history = syncctl::store::Store::open(dir.path())
        .unwrap()
        .invoice_history(&x[0])
        .unwrap();
    assert!(
        history.iter().any(|h| h.message.contains("adopted")),
        "{history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_adopts_an_invoice_renumbered_after_it() {
    restored_backup_adopts_a_renumbered_invoice(52, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_adopts_a_renumbered_document_dian_has_not_answered() {
    restored_backup_adopts_a_renumbered_invoice(53, true).await;
}

/// An invoice this store has accepted at DIAN shows a second document under a number
/// past this store's counter: a second engine issues the range. Nothing more is
/// numbered: the start is refused, saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_issuer_of_the_range_stops_the_numbering() {
    let sb = common::sandbox(3, 54).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&sb, |_| {});
    let mut engine = ready(&sb, &cfg, dir.path()).await;
    let ids = make_invoices(&base, 2).await;
    let numbers = until_validated(&engine, &ids, 60).await;
    engine.shutdown().await;
    // Another engine (another data dir on the same accounts) issued ids[0] again.
    let highest = numbers
        .values()
        .map(|n| n.trim_start_matches("SETP").parse::<u64>().unwrap())
        .max()
        .unwrap();
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/invoices"))
        .basic_auth(
            syncctl::sandbox::alegra::ALEGRA_EMAIL,
            Some(syncctl::sandbox::alegra::ALEGRA_TOKEN),
        )
        .json(&json!({
            "date": time::OffsetDateTime::now_utc().date().to_string(),
            "numberTemplate": {"prefix": "SETP", "number": (highest + 1).to_string()},
            "client": {"identification": "222222222222", "name": "Otro"},
            "items": [{"name": "x", "price": 1000, "quantity": 1}],
            "anotation": format!("stripe:{}", ids[0]),
            "stamp": {"generateStamp": true},
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let e = start(cfg, dir.path(), false).await.err().expect("refused");
    let e = format!("{e:#}");
    assert!(e.contains("another engine") && e.contains(&ids[0]), "{e}");
    assert_eq!(
        alegra(&base).await["invoices_total"],
        3,
        "nothing more sent"
    );
}

/// Documents at Alegra for `id` (any status).
async fn documents_for(base: &str, id: &str) -> Vec<String> {
    let docs = common::get_json(&format!("{base}/_sandbox/alegra/invoices")).await;
    docs.as_array()
        .unwrap()
        .iter()
        .filter(|d| d["anotation"].as_str() == Some(&format!("stripe:{id}")))
        .map(|d| {
            d["numberTemplate"]["fullNumber"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

/// The backup holds X FAILED (AEP6009: no document). A newer copy retried it and DIAN
/// had not answered yet when the backup was restored; the operator, seeing X FAILED,
/// retries it again. The retry reads Alegra first: the newer copy's document is found
/// and followed, never a second one created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retry_on_a_restored_backup_reads_alegra_before_sending() {
    const TOKEN: &str = "ops-token-0123456789abcdef";
    let sb = common::sandbox(3, 55).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let cfg = config(&sb, |c| {
        c.server.tokens = vec![syncctl::config::TokenConfig {
            name: "ops".into(),
            token: syncctl::config::Secret::new(TOKEN),
            role: syncctl::config::Role::Operator,
            rate_limit_per_min: 1000,
        }];
    });
    let mut engine = ready(&sb, &cfg, dir.path()).await;
    post(
        &base,
        "/_sandbox/alegra",
        json!({"numbering_rejections": 1}),
    )
    .await;
    let x = make_invoices(&base, 1).await;
    until_status(&engine, &x[0], Status::Failed).await;
    engine.shutdown().await;
    copy_db(dir.path(), backup.path());
    // The operator retries X through the API, as from a console.
    let retry = |engine: &Served| {
        let url = format!(
            "http://{}/api/v1/compliance/{}/retry",
            engine.server_addr, x[0]
        );
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(TOKEN)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "retry: {}", r.status());
        }
    };
    post(&base, "/_sandbox/alegra", json!({"waiting_ms": 2000})).await;
    let mut engine = start(cfg.clone(), dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    retry(&engine).await;
    until_status(&engine, &x[0], Status::Sent).await;
    engine.shutdown().await;
    // The backup comes back: X is FAILED there, and the operator retries it again.
    copy_db(backup.path(), dir.path());
    let engine = start(cfg, dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    retry(&engine).await;
    until_validated(&engine, &x, 60).await;
    assert_eq!(
        documents_for(&base, &x[0]).await.len(),
        1,
        "one document for X"
    );
}

/// One engine. Another system takes its next number; DIAN is down when the engine's
/// create reaches Alegra, so its document there stays unstamped; the invoice is
/// renumbered and accepted. The same happens to a later invoice: the range is read
/// again, and the engine's own abandoned (never stamped) document is no evidence of a
/// second engine: numbering goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_unstamped_document_of_this_engine_is_no_second_issuer() {
    let sb = common::sandbox(3, 56).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&sb, |c| {
        c.compliance.contingency_probes = 2;
        c.compliance.contingency_probe_interval_secs = 1;
    });
    let engine = start(cfg, dir.path(), false).await.unwrap();
    hook_to(&sb, &engine);
    common::until_idle(&engine, 3).await;
    let next = || {
        let s = syncctl::store::Store::open(dir.path()).unwrap();
        (990_000_001 + s.next_number_seq().unwrap()).to_string()
    };
    let n = next();
    foreign_document(&base, &n).await;
    common::faults(&base, json!({"service": "dian", "outage": true})).await;
    let x = make_invoices(&base, 1).await;
    common::eventually(60, "X renumbered", || async {
        records(&engine)
            .get(&x[0])
            .filter(|r| r.0 != format!("SETP{n}"))
            .map(|_| ())
    })
    .await;
    common::faults(&base, json!({"service": "dian", "outage": false})).await;
    until_validated(&engine, &x, 60).await;
    foreign_document(&base, &next()).await;
    let y = make_invoices(&base, 1).await;
    until_validated(&engine, &y, 60).await;
    let hold = engine.snapshot.borrow().compliance.numbering_hold.clone();
    assert!(
        hold.is_none(),
        "numbering refused in a single-engine run: {hold:?}"
    );
    assert_one_document_each(&base, &[x[0].clone(), y[0].clone()]).await;
}
