//! The invoice compliance pipeline against the sandbox's Stripe, Alegra and DIAN, over
//! real HTTP: each state path, check-before-resend, operator retries.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use serde_json::{Value, json};
use syncctl::app::Served;
use syncctl::compliance::machine::Status;
use syncctl::engine::EngineHandle;
use syncctl::protocol::{Answer, Command, CommandError, Pipeline, Query, Request};

use common::make_invoices;
use common::post_json as post;

/// DIAN's CUFE over an Alegra document's own fields (as the sandbox serves it).
fn cufe_of(doc: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    syncctl::compliance::cufe::CufeFields {
        number: text(&doc["numberTemplate"]["fullNumber"]),
        date: text(&doc["date"]),
        time: doc["datetime"].as_str().unwrap()[11..].into(),
        subtotal: text(&doc["subtotal"]),
        iva: text(&doc["taxes"]["iva"]),
        inc: text(&doc["taxes"]["inc"]),
        ica: text(&doc["taxes"]["ica"]),
        total: text(&doc["total"]),
        issuer_nit: syncctl::sandbox::alegra::ISSUER_NIT.into(),
        buyer_id: text(&doc["client"]["identification"]),
        technical_key: syncctl::sandbox::alegra::TECHNICAL_KEY.into(),
        environment: "2".into(),
    }
    .cufe()
    .unwrap()
}

async fn alegra_stats(base: &str) -> Value {
    common::get_json(&format!("{base}/_sandbox/stats")).await["alegra"].clone()
}

/// A sandbox with a few products, and an engine whose retries come after a second.
async fn setup(schedule: Vec<u64>) -> (syncctl::sandbox::SandboxServer, Served, tempfile::TempDir) {
    setup_with(schedule, |_| {}).await
}

async fn setup_with(
    schedule: Vec<u64>,
    tune: impl FnOnce(&mut syncctl::config::Config),
) -> (syncctl::sandbox::SandboxServer, Served, tempfile::TempDir) {
    let sb = common::sandbox(5, 21).await;
    let mut cfg = config(&sb, schedule);
    tune(&mut cfg);
    let dir = tempfile::tempdir().unwrap();
    let engine = start(&sb, cfg, dir.path()).await;
    (sb, engine, dir)
}

/// The engine config of these tests: retries after `schedule`, a 2 s Alegra timeout.
fn config(sb: &syncctl::sandbox::SandboxServer, schedule: Vec<u64>) -> syncctl::config::Config {
    let mut cfg = common::config_for(sb);
    cfg.compliance.retry_schedule_secs = schedule;
    cfg.compliance.poll_secs = 1;
    cfg.alegra.timeout_secs = 2;
    // Breaker verdicts are not under test here: DIAN failures must reach the machine.
    cfg.alegra.breaker.minimum_calls = 1000;
    cfg.alegra.breaker.consecutive_failures = 0;
    cfg
}

/// An engine on `dir`, the sandbox's Stripe sending its webhooks to it.
async fn start(
    sb: &syncctl::sandbox::SandboxServer,
    cfg: syncctl::config::Config,
    dir: &std::path::Path,
) -> Served {
    let engine = common::engine(cfg, dir).await;
    sb.sandbox.set_webhook_url(Some(format!(
        "http://{}/webhooks/stripe",
        engine.server_addr
    )));
    engine
}

/// Pauses (or resumes) the compliance pipeline as an operator would.
async fn pause_compliance(engine: &EngineHandle, paused: bool) -> syncctl::protocol::Reply {
    let pipeline = Pipeline::Compliance;
    let command = if paused {
        Command::Pause { pipeline }
    } else {
        Command::Resume { pipeline }
    };
    engine.commands.request(Request::new("test", command)).await
}

/// The first snapshot with the compliance pipeline in it (a fresh engine publishes an
/// empty one first).
async fn compliance_view(engine: &EngineHandle) -> syncctl::protocol::ComplianceView {
    common::eventually(10, "the compliance view", || async {
        let s = engine.snapshot.borrow().clone();
        s.compliance.enabled.then(|| s.compliance.clone())
    })
    .await
}

/// Waits until the invoice reaches `status`; returns its record.
async fn until_status(
    engine: &EngineHandle,
    stripe_id: &str,
    status: Status,
    secs: u64,
) -> syncctl::store::InvoiceRecord {
    common::eventually(secs, &format!("{stripe_id} to be {status}"), || async {
        let s = engine.snapshot.borrow().clone();
        s.compliance
            .invoices
            .iter()
            .find(|r| r.stripe_id == stripe_id && r.status == status)
            .cloned()
    })
    .await
}

async fn history(engine: &EngineHandle, stripe_id: &str) -> Vec<String> {
    // The invoice's detail is a query answered to whoever asks it.
    let answer = engine
        .commands
        .query(Query::InvoiceDetail {
            key: stripe_id.to_owned(),
        })
        .await
        .unwrap();
    let Answer::InvoiceDetail(d) = answer else {
        panic!("not an invoice's detail: {answer:?}");
    };
    assert_eq!(d.record.stripe_id, stripe_id);
    d.history
        .iter()
        .map(|h| format!("{} {}", h.to, h.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_invoices_arrive_by_webhook_and_are_validated_once_with_the_cufe() {
    let (sb, engine, _dir) = setup(vec![1, 1, 1]).await;
    let base = sb.base_url();
    let ids = make_invoices(&base, 5).await;
    for id in &ids {
        let r = until_status(&engine, id, Status::Validated, 30).await;
        let cufe = r.cufe.expect("a CUFE");
        assert_eq!(cufe.len(), 96, "{cufe}");
        assert!(r.number.starts_with("SETP99"));
    }
    let a = alegra_stats(&base).await;
    assert_eq!(a["invoices_total"], 5, "{a}");
    assert_eq!(a["stamped"], 5, "{a}");
    assert_eq!(a["duplicate_documents"], 0, "{a}");
    // Each CUFE is DIAN's formula over the document's own fields.
    let docs = common::get_json(&format!("{base}/_sandbox/alegra/invoices")).await;
    let doc = &docs[0];
    assert_eq!(doc["stamp"]["cufe"].as_str().unwrap(), cufe_of(doc));
    let h = history(&engine, &ids[0]).await;
    assert!(h[0].starts_with("PENDING paid invoice"), "{h:?}");
    assert!(
        h.last().unwrap().starts_with("VALIDATED accepted by DIAN"),
        "{h:?}"
    );
}

/// Issue 17 point 2: one drill-down from an invoice (by its DIAN number, its CUFE, or
/// its Alegra document) shows its products, their QuickBooks Items, the Alegra
/// document and DIAN's verdict with the CUFE; from a product, the invoices using it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_of_an_invoice_shows_its_products_items_document_and_cufe() {
    const VIEWER: &str = "viewer-token-0123456789abcdef";
    let (sb, engine, _dir) = setup_with(vec![1, 1, 1], |c| {
        c.server.tokens = vec![syncctl::config::TokenConfig {
            name: "viewer".into(),
            token: syncctl::config::Secret::new(VIEWER),
            role: syncctl::config::Role::Viewer,
            rate_limit_per_min: 0,
        }];
    })
    .await;
    let base = sb.base_url();
    common::until_idle(&engine, 5).await;
    let id = make_invoices(&base, 1).await.remove(0);
    let r = until_status(&engine, &id, Status::Validated, 30).await;
    let cufe = r.cufe.clone().unwrap();
    let url = format!("http://{}/api/v1/chain", engine.server_addr);
    let http = reqwest::Client::new();
    let get = |key: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .get(format!("{url}/{key}"))
                .bearer_auth(VIEWER)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let link = |c: &Value, system: &str| -> Vec<Value> {
        c["links"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["system"] == system)
            .cloned()
            .collect()
    };
    let fact = |l: &Value, name: &str| -> String {
        l["facts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f[0] == name)
            .map(|f| f[1].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let alegra = r.alegra_id.clone().unwrap();
    for key in [r.number.clone(), cufe.clone(), id.clone(), alegra.clone()] {
        let (status, c) = get(key.clone()).await;
        assert_eq!(status, 200, "{key}: {c}");
        let inv = link(&c, "stripe invoice");
        assert_eq!(inv.len(), 1, "{c}");
        assert_eq!(inv[0]["id"], id.as_str());
        assert_eq!(fact(&inv[0], "number"), r.number);
        let dian = link(&c, "dian");
        assert_eq!(fact(&dian[0], "CUFE"), cufe, "{c}");
        assert_eq!(fact(&dian[0], "state"), "VALIDATED");
        assert_eq!(link(&c, "alegra document")[0]["id"], alegra.as_str());
        // Each of the invoice's products and the Item it maps to.
        let products: Vec<String> = r
            .invoice
            .lines
            .iter()
            .filter_map(|l| l.product.clone())
            .collect();
        assert!(!products.is_empty());
        let shown = link(&c, "stripe product");
        for p in &products {
            assert!(shown.iter().any(|l| l["id"] == p.as_str()), "{p}: {c}");
        }
        let items = link(&c, "quickbooks item");
        assert!(!items.is_empty(), "{c}");
        let store = syncctl::store::Store::open(_dir.path()).unwrap();
        let mapped = store.mapping(&products[0]).unwrap().unwrap();
        assert!(
            items
                .iter()
                .any(|l| l["id"] == mapped.item_id.as_deref().unwrap()),
            "{c}"
        );
        // The invoice's own history is among its events.
        assert!(
            inv[0]["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["message"].as_str().unwrap().contains("VALIDATED")),
            "{c}"
        );
    }
    // From the product: its Item, then the invoice and its CUFE.
    let product = r.invoice.lines[0].product.clone().unwrap();
    let (status, c) = get(product.clone()).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["links"][0]["system"], "stripe product");
    assert_eq!(c["links"][1]["system"], "quickbooks item");
    assert_eq!(link(&c, "stripe invoice")[0]["id"], id.as_str(), "{c}");
    assert_eq!(fact(&link(&c, "dian")[0], "CUFE"), cufe);
    // A prefix says which kind an id is (Alegra's document ids and QuickBooks' Item
    // ids are both small numbers): `item:` follows the Item to its product...
    let store = syncctl::store::Store::open(_dir.path()).unwrap();
    let item = store.mapping(&product).unwrap().unwrap().item_id.unwrap();
    let (status, c) = get(format!("item:{item}")).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["links"][0]["system"], "stripe product", "{c}");
    assert_eq!(c["links"][0]["id"], product.as_str(), "{c}");
    // ...`alegra:` the document to its invoice, and `invoice:` looks at invoices only.
    let (status, c) = get(format!("alegra:{alegra}")).await;
    assert_eq!(
        (status, c["links"][0]["id"].clone()),
        (200, json!(id)),
        "{c}"
    );
    let (status, c) = get(format!("invoice:{alegra}")).await;
    assert_eq!(status, 404, "{c}");
    assert!(
        c["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invoice \""),
        "{c}"
    );
    // Unprefixed, an id that is both says so.
    let (_, c) = get(alegra.clone()).await;
    let both = store.product_of_item(&alegra).unwrap().is_some();
    assert_eq!(
        c["also"].as_array().is_some_and(|a| !a.is_empty()),
        both,
        "{c}"
    );
    // Something the store never saw: 404 with the reason.
    let (status, c) = get("prod_nope".into()).await;
    assert_eq!(status, 404, "{c}");
    assert!(
        c["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prod_nope"),
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_timed_out_but_was_accepted_is_read_never_resent() {
    let (sb, engine, _dir) = setup(vec![1, 1, 1]).await;
    let base = sb.base_url();
    // The first answer is lost past the client's 2 s timeout; the second comes back
    // at once as a 504 EPR503. DIAN accepted both documents.
    post(
        &base,
        "/_sandbox/alegra",
        json!({"lost_responses": 1, "lost_response_ms": 3000}),
    )
    .await;
    let first = make_invoices(&base, 1).await.remove(0);
    let r = until_status(&engine, &first, Status::Validated, 30).await;
    post(
        &base,
        "/_sandbox/alegra",
        json!({"lost_responses": 1, "lost_response_ms": 0}),
    )
    .await;
    let second = make_invoices(&base, 1).await.remove(0);
    until_status(&engine, &second, Status::Validated, 30).await;
    let a = alegra_stats(&base).await;
    assert_eq!(a["invoices_total"], 2, "{a}");
    assert_eq!(a["stamped"], 2, "one stamp each: {a}");
    assert_eq!(a["duplicate_documents"], 0, "{a}");
    assert_eq!(r.attempts, 1);
    for id in [&first, &second] {
        let h = history(&engine, id).await;
        assert!(
            h.iter().any(|l| l.starts_with("UNKNOWN")),
            "went through UNKNOWN: {h:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_waiting_and_numbering_paths() {
    let (sb, engine, _dir) = setup(vec![1, 1, 1]).await;
    let base = sb.base_url();
    post(&base, "/_sandbox/alegra", json!({"reject_rate": 1.0})).await;
    let rejected = make_invoices(&base, 1).await.remove(0);
    let r = until_status(&engine, &rejected, Status::Rejected, 30).await;
    assert_eq!(r.last_code.as_deref(), Some("99"));
    assert!(r.last_message.unwrap().contains("Regla:"));

    post(
        &base,
        "/_sandbox/alegra",
        json!({"reject_rate": 0.0, "waiting_ms": 1500}),
    )
    .await;
    let waiting = make_invoices(&base, 1).await.remove(0);
    until_status(&engine, &waiting, Status::Sent, 30).await;
    until_status(&engine, &waiting, Status::Validated, 30).await;

    post(
        &base,
        "/_sandbox/alegra",
        json!({"waiting_ms": 0, "numbering_rejections": 1}),
    )
    .await;
    let numbering = make_invoices(&base, 1).await.remove(0);
    let r = until_status(&engine, &numbering, Status::Failed, 30).await;
    assert_eq!(r.last_code.as_deref(), Some("AEP6009"));
    assert!(r.last_message.unwrap().contains("numbering"));
    let a = alegra_stats(&base).await;
    assert_eq!(a["duplicate_documents"], 0, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_contingency_dian_down_retries_on_schedule_then_fails_and_an_operator_retry_validates()
 {
    let (sb, engine, _dir) = setup_with(vec![1, 1], |c| c.compliance.contingency_probes = 0).await;
    let base = sb.base_url();
    post(
        &base,
        "/_sandbox/faults",
        json!({"service": "dian", "outage": true}),
    )
    .await;
    let id = make_invoices(&base, 1).await.remove(0);
    let r = until_status(&engine, &id, Status::Failed, 60).await;
    assert_eq!(r.attempts, 3, "the first send and two retries");
    let h = history(&engine, &id).await;
    assert!(!h.iter().any(|l| garbled(l)), "{h:#?}");
    for expected in ["UNKNOWN", "RETRY", "FAILED"] {
        assert!(
            h.iter().any(|l| l.starts_with(expected)),
            "{expected} in {h:?}"
        );
    }
    // Only one document was ever created: retries stamp it, never re-create it.
    let a = alegra_stats(&base).await;
    assert_eq!(a["invoices_total"], 1, "{a}");

    post(
        &base,
        "/_sandbox/faults",
        json!({"service": "dian", "outage": false}),
    )
    .await;
    engine
        .commands
        .request(Request::new("ana@10.0.0.7", Command::RetryFailed {}))
        .await
        .unwrap();
    until_status(&engine, &id, Status::Validated, 30).await;
    let a = alegra_stats(&base).await;
    assert_eq!(
        (
            a["invoices_total"].as_u64(),
            a["duplicate_documents"].as_u64()
        ),
        (Some(1), Some(0)),
        "{a}"
    );
    let audit = common::eventually(5, "the operator's retry in the audit trail", || async {
        let s = engine.snapshot.borrow().clone();
        s.audit
            .iter()
            .find(|e| e.kind == "operator" && e.message.contains("retried 1 of 1 FAILED"))
            .cloned()
    })
    .await;
    assert_eq!(audit.actor, "ana@10.0.0.7");
}

/// A message an operator should not read: a raw duration (`27.999391431s`) or a
/// provider code said twice (`EPR503: EPR503:`).
fn garbled(message: &str) -> bool {
    let raw = message
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .any(|w| {
            w.strip_suffix('s').is_some_and(|n| {
                n.split_once('.').is_some_and(|(a, b)| {
                    a.parse::<u64>().is_ok() && b.len() >= 3 && b.parse::<u64>().is_ok()
                })
            })
        });
    let words: Vec<&str> = message.split_whitespace().collect();
    let doubled = words
        .windows(2)
        .any(|w| w[0].ends_with(':') && w[0].len() > 1 && w[0] == w[1]);
    raw || doubled
}

/// Every record in the engine's store (read beside the running engine).
fn records(dir: &std::path::Path) -> Vec<syncctl::store::InvoiceRecord> {
    let store = syncctl::store::Store::open(dir).unwrap();
    store.invoices(None, "", 100_000).unwrap()
}

fn count(engine: &EngineHandle, status: Status) -> u64 {
    engine.snapshot.borrow().compliance.counts.get(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dian_outage_with_500_invoices_ends_with_each_validated_once_inside_its_deadline() {
    const N: u64 = 500;
    // Alegra's 150/min per user, scaled up 20× so the drain takes seconds, not minutes.
    const RATE_PER_MIN: u32 = 3000;
    let (sb, engine, dir) = setup_with(vec![60, 300, 900], |c| {
        c.compliance.contingency_probe_interval_secs = 1;
        c.compliance.workers = 8;
        c.alegra.rate_limit_per_min = RATE_PER_MIN;
    })
    .await;
    let base = sb.base_url();
    post(
        &base,
        "/_sandbox/faults",
        json!({"service": "alegra", "rate_limit_per_min": RATE_PER_MIN, "latency_ms": 20}),
    )
    .await;
    post(
        &base,
        "/_sandbox/faults",
        json!({"service": "dian", "outage": true}),
    )
    .await;
    make_invoices(&base, N as usize).await;

    // 4 failed transmissions 1 s apart confirm the outage; every invoice falls back
    // (but the one a probe is transmitting now and then: UNKNOWN until read back).
    common::eventually(60, "all invoices in FALLBACK", || async {
        let s = engine.snapshot.borrow().clone();
        let c = &s.compliance.counts;
        (s.compliance.contingency.phase == "OUTAGE"
            && c.get(Status::Fallback) + c.get(Status::Unknown) == N
            && c.get(Status::Fallback) >= N - 1)
            .then_some(())
    })
    .await;
    let c = engine.snapshot.borrow().compliance.contingency.clone();
    assert!(c.evidence.len() >= 4, "the failures are kept: {c:?}");
    assert!(c.evidence.iter().all(|e| e.code == "EPR503"), "{c:?}");
    let a = alegra_stats(&base).await;
    assert_eq!(a["stamped"], 0, "nothing reached DIAN: {a}");
    let recs = records(dir.path());
    assert!(
        recs.iter()
            .filter(|r| r.status == Status::Fallback)
            .all(|r| r.contingency && r.deadline_at_ms.is_none()),
        "held without a deadline"
    );
    assert!(
        recs.iter().filter(|r| r.attempts > 0).count() <= 1,
        "no attempt spent but the probe's in flight"
    );

    // Each waiting invoice is backed up, gzip-compressed, under the data dir.
    common::eventually(15, "a backup of every contingency invoice", || async {
        let n = std::fs::read_dir(dir.path().join("backups/invoices"))
            .ok()?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json.gz"))
            })
            .count() as u64;
        (n == N).then_some(())
    })
    .await;
    let today = syncctl::engine::compliance::colombia_date(syncctl::store::now_ms());
    assert!(
        dir.path()
            .join(format!("reports/compliance-{today}.json"))
            .exists(),
        "the day's compliance report"
    );

    // DIAN is back: the backlog drains, oldest deadline first, within Alegra's rate.
    let before = common::get_json(&format!("{base}/_sandbox/stats")).await["alegra"].clone();
    post(
        &base,
        "/_sandbox/faults",
        json!({"service": "dian", "outage": false}),
    )
    .await;
    common::eventually(120, "all invoices VALIDATED", || async {
        (count(&engine, Status::Validated) == N).then_some(())
    })
    .await;
    let after = common::get_json(&format!("{base}/_sandbox/stats")).await["alegra"].clone();

    let a = alegra_stats(&base).await;
    assert_eq!(a["invoices_total"], N, "{a}");
    assert_eq!(a["stamped"], N, "each transmitted once: {a}");
    assert_eq!(a["accepted"], N, "{a}");
    assert_eq!(a["duplicate_documents"], 0, "{a}");
    let throttled = after["throttled"].as_u64().unwrap() - before["throttled"].as_u64().unwrap();
    assert!(throttled <= 2, "no burst of 429s: {throttled}");

    let recs = records(dir.path());
    assert_eq!(recs.len() as u64, N);
    let restored = engine
        .snapshot
        .borrow()
        .compliance
        .contingency
        .restored_at_ms
        .expect("restoration recorded");
    let mut done: Vec<i64> = Vec::new();
    for r in &recs {
        assert_eq!(r.status, Status::Validated);
        let Some(deadline) = r.deadline_at_ms else {
            let h = syncctl::store::Store::open(dir.path())
                .unwrap()
                .invoice_history(&r.stripe_id)
                .unwrap();
            panic!("no deadline: {r:?} {h:#?}");
        };
        assert_eq!(deadline, restored + 48 * 3_600_000);
        let at = r.validated_at_ms.unwrap();
        assert!(at <= deadline, "{} validated after its deadline", r.number);
        done.push(at);
    }
    // The drain's pace, between the 10th and 90th percentile of completions: each
    // contingency invoice is one request (create and stamp), so it is Alegra's rate.
    done.sort();
    let (lo, hi) = (done[N as usize / 10], done[N as usize * 9 / 10]);
    let per_sec = (N as f64 * 0.8) / ((hi - lo) as f64 / 1000.0);
    let bound = RATE_PER_MIN as f64 / 60.0;
    eprintln!(
        "drain: {per_sec:.1} invoices/s of a {bound:.0}/s bound ({:.1} %), {throttled} throttled",
        per_sec / bound * 100.0
    );
    assert!(per_sec >= 0.9 * bound, "{per_sec:.1}/s of {bound}/s");
    assert!(per_sec <= 1.1 * bound, "{per_sec:.1}/s of {bound}/s");
}

/// Colombia's next midnight after `now_ms`, in ms since the epoch.
fn next_colombian_midnight(now_ms: i64) -> i64 {
    let day = 86_400_000;
    let offset = 5 * 3_600_000; // UTC−5
    (now_ms - offset).div_euclid(day) * day + day + offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_unsent_at_colombian_midnight_is_regenerated_with_the_new_date_and_cufe() {
    // No contingency here: DIAN's failures run the (long) schedule.
    let (sb, engine, _dir) = setup_with(vec![1; 20], |c| c.compliance.contingency_probes = 0).await;
    let base = sb.base_url();
    let midnight = next_colombian_midnight(syncctl::store::now_ms());
    engine.wall_clock.set(midnight - 60_000);
    let before = syncctl::engine::compliance::colombia_date(midnight - 60_000);
    let after = syncctl::engine::compliance::colombia_date(midnight + 60_000);
    assert_ne!(before, after);

    // A: its document is at Alegra, unstamped (DIAN down), dated before midnight.
    post(
        &base,
        "/_sandbox/faults",
        json!({"service": "dian", "outage": true}),
    )
    .await;
    let a = make_invoices(&base, 1).await.remove(0);
    common::eventually(30, "A at Alegra, waiting to be retried", || async {
        let s = engine.snapshot.borrow().clone();
        s.compliance
            .invoices
            .iter()
            .any(|r| r.stripe_id == a && r.status == Status::Retry && r.alegra_id.is_some())
            .then_some(())
    })
    .await;
    engine
        .commands
        .request(Request::new(
            "test",
            Command::Pause {
                pipeline: Pipeline::Compliance,
            },
        ))
        .await
        .unwrap();
    // B: received before midnight, not sent yet.
    let b = make_invoices(&base, 1).await.remove(0);
    let rec_b = until_status(&engine, &b, Status::Pending, 10).await;
    assert_eq!(rec_b.issue_date, before);

    // Midnight passes with both unsent; DIAN is back.
    post(
        &base,
        "/_sandbox/faults",
        json!({"service": "dian", "outage": false}),
    )
    .await;
    engine.wall_clock.advance(120_000);
    engine
        .commands
        .request(Request::new(
            "test",
            Command::Resume {
                pipeline: Pipeline::Compliance,
            },
        ))
        .await
        .unwrap();

    let docs_of = |docs: &Value, number: &str| -> Value {
        docs.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["numberTemplate"]["fullNumber"] == number)
            .cloned()
            .collect()
    };
    for id in [&a, &b] {
        let r = until_status(&engine, id, Status::Validated, 30).await;
        assert_eq!(r.issue_date, after, "{}", r.number);
        let h = history(&engine, id).await;
        assert!(
            h.iter().any(
                |l| l.contains(&format!("regenerated with date {after} (was {before})"))
                    && l.contains("midnight")
            ),
            "{h:?}"
        );
        // One document, dated the new day, its CUFE over the new date.
        let docs = common::get_json(&format!("{base}/_sandbox/alegra/invoices")).await;
        let mine = docs_of(&docs, &r.number);
        let mine = mine.as_array().unwrap();
        assert_eq!(mine.len(), 1, "{mine:?}");
        let doc = &mine[0];
        assert_eq!(doc["date"], after.as_str());
        assert_eq!(r.cufe, Some(cufe_of(doc)), "the CUFE over the new date");
    }
    let s = alegra_stats(&base).await;
    assert_eq!(s["duplicate_documents"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compliance_pause_survives_a_restart_and_so_does_the_resume() {
    let sb = common::sandbox(5, 22).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = start(&sb, config(&sb, vec![1]), dir.path()).await;
    assert!(!compliance_view(&engine).await.paused);
    let reply = pause_compliance(&engine, true).await.unwrap();
    assert!(reply.changed, "{reply:?}");
    // Paid while paused: taken and kept, not sent.
    let waiting = make_invoices(&base, 2).await;
    for id in &waiting {
        until_status(&engine, id, Status::Pending, 10).await;
    }
    engine.shutdown().await;

    let mut engine = start(&sb, config(&sb, vec![1]), dir.path()).await;
    let view = compliance_view(&engine).await;
    assert!(view.paused, "the pause outlived the restart");
    // Still taking paid invoices, once numbering is confirmed; still sending none.
    common::eventually(10, "numbering confirmed", || async {
        let s = engine.snapshot.borrow().clone();
        s.compliance.numbering_hold.is_none().then_some(())
    })
    .await;
    let late = make_invoices(&base, 1).await;
    until_status(&engine, &late[0], Status::Pending, 10).await;
    assert_eq!(alegra_stats(&base).await["invoices_total"], 0);
    for id in &waiting {
        until_status(&engine, id, Status::Pending, 1).await;
    }
    assert!(pause_compliance(&engine, false).await.unwrap().changed);
    let all: Vec<String> = waiting.iter().chain(&late).cloned().collect();
    for id in &all {
        until_status(&engine, id, Status::Validated, 30).await;
    }
    engine.shutdown().await;

    let mut engine = start(&sb, config(&sb, vec![1]), dir.path()).await;
    assert!(
        !compliance_view(&engine).await.paused,
        "the resume outlived the restart"
    );
    let after = make_invoices(&base, 1).await;
    until_status(&engine, &after[0], Status::Validated, 30).await;
    let a = alegra_stats(&base).await;
    assert_eq!(a["invoices_total"], 4, "{a}");
    assert_eq!(a["duplicate_documents"], 0, "{a}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compliance_pause_the_store_cannot_keep_is_refused_and_nothing_changes() {
    let (_sb, mut engine, dir) = setup(vec![1]).await;
    assert!(!compliance_view(&engine).await.paused);
    // Another process holds the database's write lock: the pause cannot be written
    // (after the store's busy timeout), as with a full disk.
    let blocker = rusqlite::Connection::open(dir.path().join("syncctl.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let reply = pause_compliance(&engine, true).await;
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    match reply {
        Err(CommandError::Unavailable { reason }) => assert!(
            reason.starts_with("could not pause the compliance pipeline (it stays running)"),
            "{reason}"
        ),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(!engine.snapshot.borrow().compliance.paused);
    // Once the store writes again, so does the pause.
    assert!(pause_compliance(&engine, true).await.unwrap().changed);
    assert!(engine.snapshot.borrow().compliance.paused);
    engine.shutdown().await;
}

/// Issue 15 point 5: an operator's CLOSE of the Alegra circuit releases at once what
/// its OPEN state held (300 s of OPEN wait here), and the held message goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_close_of_the_alegra_circuit_releases_held_invoices_at_once() {
    let (sb, engine, _dir) = setup_with(vec![1, 1, 1, 1, 1, 1], |c| {
        c.compliance.contingency_probes = 0;
        c.alegra.breaker.minimum_calls = 2;
        c.alegra.breaker.failure_rate_threshold = 50.0;
        c.alegra.breaker.open_wait_secs = 300;
        c.alegra.breaker.open_wait_max_secs = 300;
    })
    .await;
    let base = sb.base_url();
    post(
        &base,
        "/_sandbox/faults",
        json!({"service": "alegra", "outage": true}),
    )
    .await;
    let ids = make_invoices(&base, 3).await;
    // The circuit trips and the invoices wait on it.
    common::eventually(30, "invoices held by the open Alegra circuit", || async {
        let s = engine.snapshot.borrow().clone();
        let open = s
            .downstreams
            .iter()
            .any(|d| d.name == "alegra" && d.breaker.state == syncctl::resilience::State::Open);
        let held = s
            .compliance
            .invoices
            .iter()
            .filter(|r| {
                ids.contains(&r.stripe_id)
                    && r.last_message
                        .as_deref()
                        .is_some_and(|m| m.contains("circuit is open"))
            })
            .count();
        for r in &s.compliance.invoices {
            let m = r.last_message.as_deref().unwrap_or_default();
            assert!(!garbled(m), "{m}");
        }
        (open && held == ids.len()).then_some(())
    })
    .await;
    post(
        &base,
        "/_sandbox/faults",
        json!({"service": "alegra", "outage": false}),
    )
    .await;
    engine
        .commands
        .request(Request::new(
            "ana",
            Command::Breaker {
                service: syncctl::protocol::Service::Alegra,
                action: syncctl::protocol::BreakerAction::Close,
            },
        ))
        .await
        .unwrap();
    // Well inside the 300 s the OPEN timer would have held them.
    for id in &ids {
        let r = until_status(&engine, id, Status::Validated, 20).await;
        assert!(
            !r.last_message
                .as_deref()
                .is_some_and(|m| m.contains("circuit is open")),
            "{r:?}"
        );
    }
}

/// Issue 15 point 7: with only REJECTED invoices, `/health` and `syncctl status` do not
/// recommend retrying the failed ones (a retry touches only FAILED, and a REJECTED one
/// reads the same rejection again): they name the rule, in words, and where to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_rejected_invoices_recommend_fixing_the_rule_not_retrying_failed() {
    let (sb, engine, _dir) = setup(vec![1, 1, 1]).await;
    let base = sb.base_url();
    post(&base, "/_sandbox/alegra", json!({"reject_rate": 1.0})).await;
    let ids = make_invoices(&base, 2).await;
    let mut rules = Vec::new();
    for id in &ids {
        let r = until_status(&engine, id, Status::Rejected, 30).await;
        let message = r.last_message.unwrap();
        let (rule, _) = syncctl::protocol::dian_rule(&message).unwrap();
        rules.push((rule.to_owned(), r.number.clone()));
    }
    let url = format!("http://{}", engine.server_addr);
    let h = common::eventually(10, "the rejections in /health", || async {
        let h = common::get_json(&format!("{url}/health")).await;
        let text = h["recommendations"].to_string();
        rules
            .iter()
            .all(|(rule, _)| text.contains(&format!("rule {rule}")))
            .then_some(h)
    })
    .await;
    let lines: Vec<String> = h["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    assert!(
        !lines.iter().any(|l| l.contains("retry-failed")
            || l.contains("retry the failed")
            || l.contains("FAILED invoice")),
        "{lines:#?}"
    );
    for (rule, number) in &rules {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("rule {rule}")))
            .unwrap();
        assert!(line.contains("REJECTED by DIAN"), "{line}");
        assert!(line.contains(number.as_str()), "{line}");
        assert!(line.contains("Fix:") && line.contains("Alegra"), "{line}");
    }
    assert!(
        h["recommended"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["action"].is_null()),
        "{h}"
    );
    // The same words from the CLI.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_syncctl"))
            .args(["status", &url])
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("retry the failed"), "{text}");
    for (rule, _) in &rules {
        assert!(text.contains(&format!("rule {rule}")), "{text}");
    }
}
