//! The resilience layer against a faulty sandbox, over real HTTP: quotas, capacity
//! changes, light load, and an outage in the middle of a sync.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use syncctl::resilience::State;

use common::faults;

async fn qb_stats(base: &str) -> (u64, u64) {
    let s = common::get_json(&format!("{base}/_sandbox/stats")).await;
    (
        s["quickbooks"]["requests"].as_u64().unwrap(),
        s["quickbooks"]["throttled"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_faults_contract_get_post_validation_and_stats() {
    let sb = common::sandbox(5, 1).await;
    let base = sb.base_url();
    faults(
        &base,
        json!({"service": "quickbooks", "latency_ms": 5, "max_concurrent": 3}),
    )
    .await;
    faults(&base, json!({"service": "quickbooks", "outage": true})).await;
    let all = common::get_json(&format!("{base}/_sandbox/faults")).await;
    for s in ["stripe", "quickbooks", "alegra", "dian"] {
        assert!(all[s].is_object(), "{s} missing from {all}");
    }
    let qb = &all["quickbooks"];
    assert_eq!(
        (
            qb["outage"].as_bool(),
            qb["latency_ms"].as_u64(),
            qb["max_concurrent"].as_u64()
        ),
        (Some(true), Some(5), Some(3)),
        "fields left out keep their value"
    );
    let client = reqwest::Client::new();
    for bad in [
        json!({"service": "paypal", "outage": true}),
        json!({"service": "quickbooks", "error_rate": 2.0}),
        json!({"service": "quickbooks", "latency": 5}),
    ] {
        let r = client
            .post(format!("{base}/_sandbox/faults"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    // An outage answers 503 and is counted as injected.
    let r = client
        .get(format!(
            "{base}/v3/company/{}/query",
            syncctl::sandbox::QB_REALM_ID
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let s = common::get_json(&format!("{base}/_sandbox/stats")).await;
    assert_eq!(s["quickbooks"]["requests"], 1);
    assert_eq!(s["quickbooks"]["errors_injected"], 1);
    assert_eq!(s["quickbooks"]["throttled"], 0);
    // Over the in-flight cap: 429 with QuickBooks' XML 3001 body.
    faults(
        &base,
        json!({"service": "quickbooks", "outage": false, "max_concurrent": 1, "latency_ms": 300}),
    )
    .await;
    let url = format!(
        "{base}/v3/company/{}/query?query=select",
        syncctl::sandbox::QB_REALM_ID
    );
    let (a, b) = tokio::join!(client.get(&url).send(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.get(&url).send().await
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.status(), 429);
    assert_eq!(b.status(), 429);
    assert!(b.text().await.unwrap().contains(r#"<Error code="3001">"#));
    let s = common::get_json(&format!("{base}/_sandbox/stats")).await;
    assert_eq!(s["quickbooks"]["throttled"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_runs_at_95_percent_of_the_quickbooks_quota_with_at_most_one_percent_throttled() {
    let sb = common::sandbox(2000, 7).await;
    let base = sb.base_url();
    // QuickBooks' quota scaled for a test: 200 req/s, 10 in flight, 20 ms latency.
    faults(
        &base,
        json!({"service": "quickbooks", "rate_limit_per_min": 12000,
        "max_concurrent": 10, "latency_ms": 20}),
    )
    .await;
    let mut cfg = common::config_for(&sb);
    assert_eq!(
        cfg.quickbooks.rate_limit_per_min, 12000,
        "the engine takes the published quota"
    );
    cfg.quickbooks.throttle_pause_secs = 1;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let engine = common::engine(cfg, dir.path()).await;
    // Utilisation is measured in the steady state: from the 300th Item to the 1,700th,
    // past the first list page and the auto-scaler's ramp, before the tail drains. The
    // quota counts units: a request, or each operation of a batch (Items appear up to
    // 30 at a time, hence a long window).
    let at_items = |n: u64| {
        let base = base.clone();
        async move {
            common::eventually(60, "Items to be created", || async {
                let s = common::get_json(&format!("{base}/_sandbox/stats")).await;
                (s["quickbooks"]["items_total"].as_u64()? >= n).then(|| {
                    (
                        Instant::now(),
                        s["quickbooks"]["quota_units"].as_u64().unwrap(),
                    )
                })
            })
            .await
        }
    };
    let (t0, r0) = at_items(300).await;
    let (t1, r1) = at_items(1700).await;
    let steady = (r1 - r0) as f64 / (t1 - t0).as_secs_f64();
    common::until_idle(&engine, 2000).await;
    let took = started.elapsed().as_secs_f64();
    let (http_requests, throttled) = qb_stats(&base).await;
    let requests =
        common::get_json(&format!("{base}/_sandbox/stats")).await["quickbooks"]["quota_units"]
            .as_u64()
            .unwrap();
    println!(
        "steady state: {} quota units in {:.2} s = {steady:.0}/s of a 200/s bound ({:.1} %); \
         whole run: {requests} quota units ({http_requests} requests) in {took:.2} s, {throttled} throttled",
        r1 - r0,
        (t1 - t0).as_secs_f64(),
        steady / 2.0
    );
    assert!(
        steady >= 0.95 * 200.0,
        "steady state at {:.1} % of the bound",
        steady / 2.0
    );
    assert!(
        throttled as f64 <= http_requests as f64 * 0.01,
        "{throttled} of {http_requests} requests throttled"
    );
    // GCRA allows the quota's burst up front (the sandbox: a second's worth), no more.
    assert!(
        requests as f64 <= 200.0 * took + 200.0,
        "above the quota: {requests} requests in {took:.2} s"
    );
    common::assert_one_item_per_product(&base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_capacity_halves_mid_run_the_engine_follows_it_down_within_seconds() {
    let sb = common::sandbox(1500, 8).await;
    let base = sb.base_url();
    faults(
        &base,
        json!({"service": "quickbooks", "max_concurrent": 10, "latency_ms": 30}),
    )
    .await;
    let mut cfg = common::config_for(&sb);
    cfg.quickbooks.throttle_pause_secs = 1;
    cfg.catalog.workers = 12;
    // One job a claim: single calls, so the in-flight cap is what binds (batches would
    // finish the run before the auto-scaler's first tick).
    cfg.catalog.claim_batch_max = 1;
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(cfg, dir.path()).await;
    common::eventually(60, "300 Items", || async {
        let s = common::get_json(&format!("{base}/_sandbox/stats")).await;
        (s["quickbooks"]["items_total"].as_u64()? >= 300).then_some(())
    })
    .await;
    let before = engine.snapshot.borrow().catalog.workers_target;
    faults(&base, json!({"service": "quickbooks", "max_concurrent": 5})).await;
    let halved = Instant::now();
    let followed = common::eventually(10, "the engine to follow the capacity down", || async {
        let v = common::qb_view(&engine);
        (v.throttled > 0 && v.limiter.effective_concurrent <= 5).then_some(v)
    })
    .await;
    println!(
        "followed in {:?}: in-flight cap {} → {}, workers target {before} → {}",
        halved.elapsed(),
        followed.limiter.max_concurrent,
        followed.limiter.effective_concurrent,
        engine.snapshot.borrow().catalog.workers_target
    );
    // Once it has followed, it stays mostly within the new capacity.
    let (r0, t0) = qb_stats(&base).await;
    common::eventually(60, "200 more requests", || async {
        let (r, _) = qb_stats(&base).await;
        (r >= r0 + 200).then_some(())
    })
    .await;
    let (r1, t1) = qb_stats(&base).await;
    assert!(
        (t1 - t0) as f64 <= (r1 - r0) as f64 * 0.05,
        "{} of {} throttled after following",
        t1 - t0,
        r1 - r0
    );
    let decisions = engine.snapshot.borrow().catalog.decisions.clone();
    assert!(
        decisions
            .iter()
            .any(|d| d.to < d.from && d.reason.contains("throttled")),
        "a scale-down decision says why: {decisions:?}"
    );
    common::until_idle(&engine, 1500).await;
    common::assert_one_item_per_product(&base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_light_load_workers_do_not_grow() {
    let sb = common::sandbox(5, 9).await;
    let base = sb.base_url();
    let mut cfg = common::config_for(&sb);
    cfg.catalog.workers = 2;
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(cfg, dir.path()).await;
    common::until_idle(&engine, 5).await;
    let start = engine.snapshot.borrow().catalog.workers_target;
    let client = reqwest::Client::new();
    // A trickle: one change, then idle, six times (the auto-scaler ticks each second).
    for _ in 0..6 {
        client
            .post(format!("{base}/_sandbox/catalog/changes"))
            .json(&json!({"count": 1}))
            .send()
            .await
            .unwrap();
        let seen = Instant::now();
        let mut rx = engine.snapshot.clone();
        loop {
            rx.changed().await.unwrap();
            if seen.elapsed() >= Duration::from_secs(1) {
                break;
            }
        }
    }
    let s = engine.snapshot.borrow().catalog.clone();
    assert_eq!(
        s.workers_target, start,
        "grew under light load: {:?}",
        s.decisions
    );
    assert!(
        s.decisions.iter().all(|d| d.to <= d.from),
        "{:?}",
        s.decisions
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickbooks_outage_mid_sync_opens_the_breaker_then_recovers_and_the_sync_completes() {
    let sb = common::sandbox(600, 10).await;
    let base = sb.base_url();
    faults(&base, json!({"service": "quickbooks", "latency_ms": 5})).await;
    let mut cfg = common::config_for(&sb);
    let b = &mut cfg.quickbooks.breaker;
    b.window = syncctl::resilience::breaker::WindowKind::Count;
    b.window_size = 20;
    b.minimum_calls = 10;
    b.open_wait_secs = 1;
    b.open_wait_multiplier = 1.0;
    b.half_open_permits = 2;
    cfg.quickbooks.retry.max_attempts = 2;
    cfg.quickbooks.retry.base_ms = 20;
    cfg.quickbooks.retry.cap_ms = 100;
    // One job a claim: single calls fill the breaker's 20-call window within a second
    // of the outage (batches make ~30× fewer calls, so a window of calls fills slowly:
    // issue 14's consecutive-failures trigger is for that).
    cfg.catalog.claim_batch_max = 1;
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(cfg, dir.path()).await;
    common::eventually(60, "150 Items", || async {
        let s = common::get_json(&format!("{base}/_sandbox/stats")).await;
        (s["quickbooks"]["items_total"].as_u64()? >= 150).then_some(())
    })
    .await;
    faults(&base, json!({"service": "quickbooks", "outage": true})).await;
    common::eventually(20, "the QuickBooks breaker to open", || async {
        (common::qb_view(&engine).breaker.state == State::Open).then_some(())
    })
    .await;
    // While the outage lasts the breaker lets through only its trial calls.
    let (r0, _) = qb_stats(&base).await;
    let opened = Instant::now();
    let mut events = engine.events.subscribe();
    let mut half_opens = 0;
    while opened.elapsed() < Duration::from_secs(3) {
        if let Ok(Ok(syncctl::engine::EngineEvent::Breaker { transition, .. })) =
            tokio::time::timeout(Duration::from_millis(200), events.recv()).await
            && transition.to == State::HalfOpen
        {
            half_opens += 1;
        }
    }
    let (r1, _) = qb_stats(&base).await;
    let v = common::qb_view(&engine);
    println!(
        "outage: {} requests reached QuickBooks in 3 s with {half_opens} half-opens; {} rejected, p99 rejection {:?} µs",
        r1 - r0,
        v.rejected,
        v.rejection_p99_us
    );
    assert!(
        r1 - r0 <= 2 * (half_opens + 1),
        "{} requests reached a service behind an open breaker ({half_opens} half-opens)",
        r1 - r0
    );
    assert!(half_opens >= 1, "it half-opens after the wait");
    let items_mid =
        common::get_json(&format!("{base}/_sandbox/stats")).await["quickbooks"]["items_total"]
            .as_u64()
            .unwrap();
    assert!(items_mid < 600, "the outage landed mid-sync");
    faults(&base, json!({"service": "quickbooks", "outage": false})).await;
    common::eventually(20, "the breaker to close after recovery", || async {
        (common::qb_view(&engine).breaker.state == State::Closed).then_some(())
    })
    .await;
    common::until_idle(&engine, 600).await;
    let c = engine.snapshot.borrow().catalog.counts.clone();
    assert_eq!((c.failed, c.rejected), (0, 0), "nothing given up on");
    common::assert_one_item_per_product(&base).await;
    let audit = engine.snapshot.borrow().audit.clone();
    assert!(
        audit.iter().any(|e| e.message.contains("CLOSED → OPEN")),
        "the transition is in the audit trail with its reason"
    );
}

/// An error for calls made straight through a [`syncctl::resilience::Downstream`].
#[derive(Debug)]
struct Refused;

impl syncctl::resilience::Classify for Refused {
    fn class(&self) -> syncctl::resilience::Class {
        syncctl::resilience::Class::Ignored
    }
    fn retryable(&self) -> bool {
        false
    }
    fn rejected(_: syncctl::resilience::Rejected) -> Self {
        Refused
    }
}

/// Issue 15 point 9: every QuickBooks call goes from 20 ms to 6 s. The p95 the
/// Circuits screen and the API show (the downstream's view), the Throughput chart's
/// point and the latency alert's value are one figure, and the alert fires within its
/// `for` of the window filling with slow calls — on the test clock.
#[tokio::test(start_paused = true)]
async fn one_latency_window_feeds_every_view_and_the_alert_fires_within_its_for() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use syncctl::resilience::{
        BreakerConfig, BudgetConfig, Downstream, DownstreamConfig, LATENCY_WINDOW, LimiterConfig,
        RetryPolicy, SharedClock,
    };
    use syncctl::telemetry::settings::{AlertsConfig, AnomalyConfig};
    use syncctl::telemetry::{DownstreamSample, Sample, Signal, Telemetry};

    let d = Downstream::new(
        "quickbooks",
        DownstreamConfig {
            breaker: BreakerConfig::default(),
            limiter: LimiterConfig::default(),
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            budget: BudgetConfig::default(),
            timeout: Duration::from_secs(60),
        },
        SharedClock::tokio(),
    );
    // Slowness is under test here, not the breaker's verdict on it.
    d.breaker.transition(State::MetricsOnly, "test").unwrap();
    let latency_ms = Arc::new(AtomicU64::new(20));
    for _ in 0..10 {
        let (d, latency_ms) = (d.clone(), latency_ms.clone());
        tokio::spawn(async move {
            loop {
                let ms = latency_ms.load(Ordering::Relaxed);
                let _: Result<(), Refused> = d
                    .call(true, || async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(())
                    })
                    .await;
            }
        });
    }
    let for_secs = 30;
    let mut telemetry = Telemetry::new(
        AlertsConfig {
            for_secs,
            latency_p95_ms: 5000.0,
            ..AlertsConfig::default()
        },
        AnomalyConfig::default(),
    );
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let slow_from = Duration::from_secs(60);
    let mut fired = None;
    while fired.is_none() {
        tick.tick().await;
        let at = start.elapsed();
        assert!(
            at < Duration::from_secs(600),
            "the latency alert never fired"
        );
        if at >= slow_from {
            latency_ms.store(6000, Ordering::Relaxed);
        }
        let view = d.view();
        let signals = telemetry.tick(Sample {
            now_ms: at.as_millis() as i64,
            downstreams: vec![DownstreamSample::from_view(&view)],
            ..Sample::default()
        });
        // One figure: the chart's point is the view's p95 (Circuits, the API).
        let charted = telemetry
            .series("latency_p95:quickbooks")
            .and_then(|s| s.last());
        assert_eq!(charted, view.p95_ms, "at {at:?}");
        if at < slow_from {
            assert!(view.p95_ms.unwrap_or(0.0) < 100.0, "{view:?}");
        }
        for s in signals {
            if let Signal::Alert(n) = s
                && n.id == "latency_p95/quickbooks"
            {
                assert_eq!(Some(n.value), view.p95_ms);
                fired = Some(at);
            }
        }
    }
    let late = fired.unwrap() - slow_from;
    // Slow calls take 6 s to answer, fill the window, then the condition holds `for`.
    let bound = LATENCY_WINDOW + Duration::from_secs(6 + for_secs + 2);
    assert!(
        late <= bound,
        "fired {late:?} after the calls slowed (at most {bound:?})"
    );
}
