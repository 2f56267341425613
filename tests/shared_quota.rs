//! Issue 16 point 4: one company's QuickBooks quota and OAuth tokens shared by the
//! engines of several boxes on one Postgres (tests/common/pg.rs), against the sandbox
//! over loopback. Each "box" here is what an engine builds on the shared store: its own
//! pool (its own `JobQueue::postgres` handle and lease owner), its own SQLite store, a
//! `TokenKeeper` on the company's token row, and a QuickBooks `Downstream` whose
//! limiter takes from the company's quota rows.
//!
//! The rate test runs in real time (the sandbox's quota is a sliding minute of wall
//! time); its deadlines are failure detectors, polled.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg;
use serde_json::{Value, json};
use syncctl::config::Config;
use syncctl::connectors::quickbooks::{BatchOp, QuickBooksClient, TokenKeeper};
use syncctl::resilience::limiter::Wait;
use syncctl::resilience::{Downstream, Limiter, LimiterConfig, SharedClock};
use syncctl::sandbox::SandboxServer;
use syncctl::store::pg_tokens::PgTokens;
use syncctl::store::queue::JobQueue;
use syncctl::store::{Store, WallClock};

/// One engine's share of the company, as `engine::runtime` builds it on the shared
/// store.
struct Box {
    qb: QuickBooksClient,
    tokens: Arc<TokenKeeper>,
    guard: Arc<Downstream>,
    _queue: JobQueue,
    _dir: tempfile::TempDir,
}

async fn a_box(cfg: &Config, url: &str, name: &str, company: &str) -> Box {
    let queue = JobQueue::postgres(url, name, company, WallClock::default())
        .await
        .unwrap();
    let pool = queue.pg_pool().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let q = &cfg.quickbooks;
    let refresh = q.refresh_token.clone().unwrap();
    let http = syncctl::connectors::http_client().unwrap();
    let tokens = TokenKeeper::new(
        http.clone(),
        q.token_url.as_deref().unwrap(),
        q.client_id.as_deref().unwrap(),
        q.client_secret.clone().unwrap(),
        &refresh,
        store,
    )
    .unwrap()
    .shared(PgTokens::new(pool.clone(), company), &refresh)
    .await
    .unwrap();
    let tokens = Arc::new(tokens);
    let dcfg = cfg.downstream("quickbooks").unwrap();
    let guard = Downstream::new("quickbooks", dcfg.clone(), SharedClock::tokio());
    let at = syncctl::engine::quota::SharedAt {
        pool: &pool,
        company,
        owner: name,
        clock: WallClock::default(),
    };
    let max_weight = syncctl::connectors::quickbooks::BATCH_MAX as u32;
    syncctl::engine::quota::share(&guard.limiter, &dcfg.limiter, max_weight, "quickbooks", &at);
    let batch_cfg = LimiterConfig {
        rate_per_min: syncctl::connectors::quickbooks::batch_limit_per_min(q.rate_limit_per_min),
        burst: 1,
        ..Default::default()
    };
    let pace = Limiter::new(
        "quickbooks batches",
        batch_cfg.clone(),
        SharedClock::tokio(),
    );
    syncctl::engine::quota::share(&pace, &batch_cfg, 1, "quickbooks batches", &at);
    let qb = QuickBooksClient::new(
        http,
        q.base_url.as_deref().unwrap(),
        q.realm_id.as_deref().unwrap(),
        q.minor_version,
        Duration::from_secs(q.timeout_secs),
        tokens.clone(),
    )
    .with_guard(guard.clone())
    .with_batch_pace(pace);
    Box {
        qb,
        tokens,
        guard,
        _queue: queue,
        _dir: dir,
    }
}

/// The sandbox's only company: its id and its QuickBooks figures.
async fn qb_stats(sb: &SandboxServer) -> (String, Value) {
    let stats = common::get_json(&format!("http://{}/_sandbox/stats", sb.addr)).await;
    let (id, company) = stats["companies"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    (id.clone(), company["quickbooks"].clone())
}

/// Four workers a box until `stop`: one sending batches of `batch` name queries, three
/// single name queries.
fn load(
    boxes: &[Arc<Box>],
    batch: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinSet<()> {
    let mut workers = tokio::task::JoinSet::new();
    for (i, b) in boxes.iter().enumerate() {
        for w in 0..4 {
            let (b, stop) = (b.clone(), stop.clone());
            workers.spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if w == 0 {
                        let ops: Vec<BatchOp> = (0..batch)
                            .map(|k| {
                                BatchOp::Query(format!(
                                    "select * from Item where Name = 'b{i}-{n}-{k}'"
                                ))
                            })
                            .collect();
                        b.qb.batch(&ops, &format!("b{i}-{n}")).await.unwrap();
                    } else {
                        b.qb.find_items("Name", &format!("w{i}-{w}-{n}"))
                            .await
                            .unwrap();
                    }
                    n += 1;
                }
            });
        }
    }
    workers
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Two boxes (then three) need an access token at the same moment: one refreshes under
/// the company's row lock and stores the rotated refresh token, the others wait and use
/// its token. The sandbox, like Intuit, refuses a refresh token once it was rotated:
/// without the lock both would refresh with the same token and one would be refused
/// (and stop calling QuickBooks until an operator acts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boxes_refreshing_at_once_share_one_refresh_and_all_keep_working() {
    let Some(server) = pg::server() else { return };
    let url = server.database();
    let sb = common::sandbox(0, 16).await;
    let cfg = common::config_for(&sb);
    let (company, _) = qb_stats(&sb).await;
    let boxes = [
        a_box(&cfg, &url, "box-a", &company).await,
        a_box(&cfg, &url, "box-b", &company).await,
    ];

    // Both start without an access token and ask at once.
    let (a, b) = tokio::join!(
        boxes[0].tokens.access_token(),
        boxes[1].tokens.access_token()
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "the second box used the first box's fresh token");
    let (_, qb) = qb_stats(&sb).await;
    assert_eq!(
        (num(&qb, "token_refreshes"), num(&qb, "token_rejected")),
        (1, 0),
        "{qb}"
    );

    // QuickBooks refuses the token (it expired early): every box asks again at once,
    // a third box starting meanwhile from the same configured (long rotated) token.
    let third = a_box(&cfg, &url, "box-c", &company).await;
    let (a2, b2, c2) = tokio::join!(
        boxes[0].tokens.after_rejection(&a),
        boxes[1].tokens.after_rejection(&a),
        third.tokens.after_rejection(&a),
    );
    let (a2, b2, c2) = (a2.unwrap(), b2.unwrap(), c2.unwrap());
    assert_ne!(a2, a);
    assert!(a2 == b2 && b2 == c2, "one new token for every box");
    let (_, qb) = qb_stats(&sb).await;
    assert_eq!(
        (num(&qb, "token_refreshes"), num(&qb, "token_rejected")),
        (2, 0),
        "{qb}"
    );
    // And every box keeps calling QuickBooks.
    for b in boxes.iter().chain([&third]) {
        b.qb.find_items("Name", "nothing").await.unwrap();
        assert!(b.tokens.problem().is_none());
    }
    // The row holds the rotated refresh token: the one the sandbox accepts now.
    let printed = reqwest::get(format!("http://{}/_sandbox/config", sb.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let stored: String = db
        .query_one(
            "SELECT refresh_token FROM syncctl.oauth_tokens WHERE company = $1",
            &[&company],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        printed.contains(&format!("refresh_token = \"{stored}\"")),
        "the stored refresh token is the sandbox's current one"
    );
}

/// A 429 seen by one box pauses every box of the company for its pushback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_box_pauses_the_others() {
    let Some(server) = pg::server() else { return };
    let url = server.database();
    let sb = common::sandbox(0, 16).await;
    let mut cfg = common::config_for(&sb);
    // QuickBooks' published limits (the sandbox's own config has none).
    cfg.quickbooks.rate_limit_per_min = 500;
    cfg.quickbooks.max_concurrent = 10;
    let (company, _) = qb_stats(&sb).await;
    let a = a_box(&cfg, &url, "box-a", &company).await;
    let b = a_box(&cfg, &url, "box-b", &company).await;
    // Both working.
    a.qb.find_items("Name", "x").await.unwrap();
    b.qb.find_items("Name", "x").await.unwrap();

    // What `Downstream` does with a 429 answered to box a (Retry-After: 40 s). Box a
    // publishes the pushback on the company's row.
    a.guard.limiter.on_throttle(Some(Duration::from_secs(40)));
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    common::eventually(10, "box a's pushback on the company's row", || async {
        let until: i64 = db
            .query_one(
                "SELECT blocked_until FROM syncctl.quota_buckets \
                 WHERE company = $1 AND downstream = 'quickbooks'",
                &[&company],
            )
            .await
            .unwrap()
            .get(0);
        (until > syncctl::store::now_ms() + 30_000).then_some(())
    })
    .await;
    // A request box b makes now is not sent: box b pauses for the rest of it.
    let before = num(&qb_stats(&sb).await.1, "requests");
    let blocked = tokio::time::timeout(Duration::from_secs(1), b.qb.find_items("Name", "x")).await;
    assert!(blocked.is_err(), "box b sent during box a's pushback");
    assert_eq!(num(&qb_stats(&sb).await.1, "requests"), before);
    let paused = b.guard.view().limiter.paused_for_ms;
    assert!(
        (30_000..=40_000).contains(&paused),
        "box b paused {paused} ms"
    );
    assert!(matches!(
        b.guard.limiter.try_acquire(),
        Err(Wait::Paused(d)) if d > Duration::from_secs(30)
    ));
}

/// Three boxes on one realm with a small quota, each with more workers than the quota
/// needs (single reads and batches of 5 queries): the sandbox's per-realm rate, summed
/// over the boxes, never exceeds the quota, reaches at least 90 % of it while work
/// remains, and no request is refused with a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_boxes_together_keep_to_the_realms_quota_and_use_90_percent_of_it() {
    const QUOTA: u32 = 600;
    const CONCURRENT: u32 = 6;
    let Some(server) = pg::server() else { return };
    let url = server.database();
    let sb = common::sandbox(0, 16).await;
    common::faults(
        &format!("http://{}", sb.addr),
        json!({"service": "quickbooks", "rate_limit_per_min": QUOTA,
               "max_concurrent": CONCURRENT, "latency_ms": 5}),
    )
    .await;
    let mut cfg = common::config_for(&sb);
    // Each box is configured with the company's whole quota, as an engine is. A 429
    // (a request the box gave up on at its adaptive deadline on a loaded machine is
    // still in the sandbox's in-flight count for a moment) pauses every box for 2 s,
    // not QuickBooks' minute.
    cfg.quickbooks.rate_limit_per_min = QUOTA;
    cfg.quickbooks.max_concurrent = CONCURRENT;
    cfg.quickbooks.throttle_pause_secs = 2;
    let (company, qb) = qb_stats(&sb).await;
    assert_eq!(num(&qb, "quota_per_min"), u64::from(QUOTA), "{qb}");
    let mut boxes = Vec::new();
    for name in ["box-a", "box-b", "box-c"] {
        boxes.push(Arc::new(a_box(&cfg, &url, name, &company).await));
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = load(&boxes, 5, &stop);
    // The sandbox's rate is the units of the last 60 s: once a full minute of work has
    // gone by, it says what the boxes sustain together.
    let started = Instant::now();
    let mut highest = 0;
    while started.elapsed() < Duration::from_secs(66) {
        let (_, qb) = qb_stats(&sb).await;
        let (rate, peak) = (num(&qb, "rate_per_min"), num(&qb, "peak_rate_per_min"));
        assert!(
            peak <= u64::from(QUOTA),
            "the boxes together sent {peak} units in a minute, over the quota of {QUOTA}: {qb}"
        );
        highest = highest.max(rate);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    let (_, qb) = qb_stats(&sb).await;
    eprintln!(
        "shared quota: highest rate {highest}/min of {QUOTA}, peak {}, throttled {}; \
         per box (leased, timeouts): {:?}",
        num(&qb, "peak_rate_per_min"),
        num(&qb, "throttled"),
        boxes
            .iter()
            .map(|b| {
                let v = b.guard.view();
                (v.limiter.shared.map(|s| s.leased), v.timeouts)
            })
            .collect::<Vec<_>>()
    );
    assert!(num(&qb, "peak_rate_per_min") <= u64::from(QUOTA), "{qb}");
    assert!(
        highest * 10 >= u64::from(QUOTA) * 9,
        "the boxes together reached {highest}/min of a quota of {QUOTA} while work remained"
    );
    // Not sharing, three boxes would each send the whole quota: hundreds of 429s.
    assert!(num(&qb, "throttled") <= 3, "429s: {qb}");
    for b in &boxes {
        let shared = b.guard.view().limiter.shared.unwrap();
        assert!(shared.leased > 0, "every box got a part of the quota");
        assert!(shared.error.is_none(), "{shared:?}");
    }
}

/// Three boxes on one realm, each sending QuickBooks batches of 30 operations (more than
/// the shared bucket's burst of 10: a batch is leased whole, once the bucket can give
/// it) while its other workers send single reads: the tokens a box leases for a batch
/// are the batch's, not taken by the single reads beside it (which would leave the
/// batch short and its tokens running out unspent, lost to every box). The boxes
/// together keep to the quota, use at least 90 % of it, and lose almost no leased
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_the_burst_keep_their_leased_tokens_beside_single_reads() {
    const QUOTA: u32 = 1200;
    const BATCH: usize = 30;
    let Some(server) = pg::server() else { return };
    let url = server.database();
    let sb = common::sandbox(0, 17).await;
    common::faults(
        &format!("http://{}", sb.addr),
        json!({"service": "quickbooks", "rate_limit_per_min": QUOTA,
               "max_concurrent": 20, "latency_ms": 5}),
    )
    .await;
    let mut cfg = common::config_for(&sb);
    cfg.quickbooks.rate_limit_per_min = QUOTA;
    cfg.quickbooks.max_concurrent = 20;
    cfg.quickbooks.throttle_pause_secs = 2;
    let (company, qb) = qb_stats(&sb).await;
    assert_eq!(num(&qb, "quota_per_min"), u64::from(QUOTA), "{qb}");
    let mut boxes = Vec::new();
    for name in ["box-a", "box-b", "box-c"] {
        boxes.push(Arc::new(a_box(&cfg, &url, name, &company).await));
    }

    let started = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = load(&boxes, BATCH, &stop);
    // Under a minute: every unit sent is still in the sandbox's window, so its rate
    // over the time gone by is what the boxes sustained together.
    while started.elapsed() < Duration::from_secs(30) {
        let (_, qb) = qb_stats(&sb).await;
        let peak = num(&qb, "peak_rate_per_min");
        assert!(
            peak <= u64::from(QUOTA),
            "the boxes together sent {peak} units in a minute, over the quota of {QUOTA}: {qb}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, qb) = qb_stats(&sb).await;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    let sent = num(&qb, "rate_per_min");
    let per_min = sent as f64 * 60.0 / elapsed;
    let shared: Vec<_> = boxes
        .iter()
        .map(|b| b.guard.view().limiter.shared.unwrap())
        .collect();
    let leased: u64 = shared.iter().map(|s| s.leased).sum();
    let unspent: u64 = shared.iter().map(|s| s.unspent).sum();
    eprintln!(
        "batches of {BATCH} and single reads: {sent} units in {elapsed:.1} s = {per_min:.0}/min \
         of {QUOTA}, peak {}, throttled {}, {} batches; tokens leased {leased}, ran out \
         unspent {unspent}",
        num(&qb, "peak_rate_per_min"),
        num(&qb, "throttled"),
        num(&qb, "batch_requests"),
    );
    assert!(num(&qb, "throttled") <= 3, "429s: {qb}");
    assert!(num(&qb, "batch_requests") >= 6, "batches went: {qb}");
    assert!(
        unspent * 100 <= leased * 3,
        "{unspent} of {leased} leased tokens ran out unspent"
    );
    assert!(
        per_min >= f64::from(QUOTA) * 0.9,
        "the boxes together sustained {per_min:.0}/min of a quota of {QUOTA}"
    );
}
