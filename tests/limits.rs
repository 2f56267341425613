//! Quota and failure limits over real HTTP (issue 14 points 3–6, issue 18 points 1–2):
//! a restart costs no 429, a total outage opens the breaker within a second, the
//! auto-scaler holds when the quota is the bottleneck, a limit set above the quota
//! learns the ceiling, hanging requests cost a fraction of a second, and work resumes
//! within the half-open probe interval after an outage.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncctl::resilience::State;

const BIN: &str = env!("CARGO_BIN_EXE_syncctl");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, whatever happens.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Proc {
    let log = std::env::var("LIMITS_LOG").ok();
    let err = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    Proc(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    )
}

async fn stats(base: &str) -> Option<Value> {
    reqwest::get(format!("{base}/_sandbox/stats"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn qb(s: &Value, key: &str) -> u64 {
    s["quickbooks"][key].as_u64().unwrap()
}

/// The sandbox (its own process, QuickBooks at 6,000/min and 10 in flight: the real
/// quota ×12) and an engine config for it with `[quickbooks]` keys replaced.
struct Pair {
    _root: tempfile::TempDir,
    base: String,
    run: Vec<String>,
    _sandbox: Proc,
}

/// A standalone sandbox and the `syncctl run` command line of an engine on it, as
/// separate processes. The engine sends single calls (`claim_batch_max = 1`): the sandbox's minute quota
/// lets a minute's worth through at once, so an engine above the quota meets its first
/// 429 within seconds through the per-second shape single calls meet, where batches
/// (charged to the minute only) would take minutes to find it.
async fn pair(products: u32, quickbooks: &[(&str, &str)]) -> Pair {
    syncctl::connectors::install_crypto();
    let root = tempfile::tempdir().unwrap();
    let (sandbox_dir, engine_dir) = (root.path().join("sandbox"), root.path().join("engine"));
    let (sp, ep) = (free_port(), free_port());
    let sandbox_addr = format!("127.0.0.1:{sp}");
    let base = format!("http://{sandbox_addr}");
    let sandbox_cfg = root.path().join("sandbox.toml");
    std::fs::write(
        &sandbox_cfg,
        "[sandbox]\nlatency_ms = 15\nchange_interval_ms = 0\n",
    )
    .unwrap();
    let products = products.to_string();
    let common_args = [
        "--config",
        sandbox_cfg.to_str().unwrap(),
        "--data-dir",
        sandbox_dir.to_str().unwrap(),
        "--products",
        &products,
        "--seed",
        "31",
    ];
    let printed = Command::new(BIN)
        .args(["sandbox", "--listen", &sandbox_addr, "--print-config"])
        .args(common_args)
        .output()
        .unwrap();
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let mut text = String::from_utf8(printed.stdout).unwrap();
    for (key, value) in quickbooks {
        let at = text.find("[quickbooks]").unwrap() + "[quickbooks]".len();
        let (head, tail) = text.split_at(at);
        let tail = tail
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .collect::<Vec<_>>()
            .join("\n");
        text = format!("{head}\n{key} = {value}{tail}\n");
    }
    let engine_cfg = root.path().join("engine.toml");
    {
        let mut f = std::fs::File::create(&engine_cfg).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        write!(
            f,
            "\n[server]\nlisten = \"127.0.0.1:{ep}\"\n\n[catalog]\nreconcile_interval_secs = 3600\nclaim_batch_max = 1\n"
        )
        .unwrap();
    }
    let mut sandbox_args = vec!["sandbox", "--listen", &sandbox_addr];
    sandbox_args.extend(common_args);
    let sandbox = spawn(&sandbox_args);
    common::eventually(30, "the sandbox to answer", || stats(&base)).await;
    let run = vec![
        "run".to_owned(),
        "--config".to_owned(),
        engine_cfg.to_str().unwrap().to_owned(),
        "--data-dir".to_owned(),
        engine_dir.to_str().unwrap().to_owned(),
    ];
    Pair {
        _root: root,
        base,
        run,
        _sandbox: sandbox,
    }
}

/// Issue 14 point 3 / issue 18 point 2: an engine whose limit is above the company's
/// quota (20 %: another app spends part of it) has been throttled once and learned to
/// keep below it; `kill -9`ed and restarted at once on the same data dir, it starts
/// from what it learned — no fresh burst at the configured rate, no 429 — and creates
/// Items again within two seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_what_the_limiter_learned_no_429_and_work_within_two_seconds() {
    // Intuit's 60 s pushback, ×12 like the sandbox's quota.
    let p = pair(
        3000,
        &[("rate_limit_per_min", "7200"), ("throttle_pause_secs", "5")],
    )
    .await;
    let base = &p.base;
    let run: Vec<&str> = p.run.iter().map(String::as_str).collect();
    let mut engine = spawn(&run);
    common::eventually(60, "the first 429", || async {
        let s = stats(base).await?;
        (qb(&s, "throttled") >= 1).then_some(())
    })
    .await;
    // Past the pushback, at the rate it resumed at.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(7) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.0.kill().unwrap(); // SIGKILL: no drain, nothing saved on the way out
    engine.0.wait().unwrap();
    let before = stats(base).await.unwrap();
    let restarted = Instant::now();
    let _engine = spawn(&run);
    let (items0, throttled0) = (qb(&before, "items_total"), qb(&before, "throttled"));
    let first = common::eventually(60, "Items after the restart", || async {
        let s = stats(base).await?;
        (qb(&s, "items_total") > items0 + 2).then(|| restarted.elapsed())
    })
    .await;
    // Fifteen seconds of work after the restart: nothing throttled.
    while restarted.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = stats(base).await.unwrap();
    let throttled = qb(&after, "throttled") - throttled0;
    let done = qb(&after, "items_total") - items0;
    println!(
        "restart: Items again {:.2} s after it; in 15 s: {done} Items, {throttled} throttled",
        first.as_secs_f64()
    );
    assert_eq!(throttled, 0, "429s after the restart");
    assert!(first <= Duration::from_secs(2), "stalled {first:?}");
}

/// A service's answer as the resilience layer sees it.
#[derive(Debug)]
enum Answer {
    Unavailable,
    Refused,
}

impl syncctl::resilience::Classify for Answer {
    fn class(&self) -> syncctl::resilience::Class {
        match self {
            Answer::Unavailable => syncctl::resilience::Class::Failure,
            Answer::Refused => syncctl::resilience::Class::Ignored,
        }
    }
    fn retryable(&self) -> bool {
        matches!(self, Answer::Unavailable)
    }
    fn rejected(_: syncctl::resilience::Rejected) -> Self {
        Answer::Refused
    }
}

/// Issue 14 point 4, on the test clock: QuickBooks' policy as the engine builds it by
/// default (500/min, 10 in flight, its breaker), ten workers keeping it at the full
/// rate for 30 s (the breaker's window full of successes), then a total outage: the
/// circuit opens within a second, after a handful of requests.
#[tokio::test(start_paused = true)]
async fn a_total_outage_opens_the_breaker_within_a_second_at_full_rate() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use syncctl::resilience::{Downstream, SharedClock};

    let cfg = syncctl::config::Config::default()
        .downstream("quickbooks")
        .unwrap();
    let d = Downstream::new("quickbooks", cfg, SharedClock::tokio());
    let down = Arc::new(AtomicBool::new(false));
    let reached_dead = Arc::new(AtomicU64::new(0));
    let mut workers = vec![];
    for _ in 0..10 {
        let (d, down, reached) = (d.clone(), down.clone(), reached_dead.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let r: Result<(), Answer> = d
                    .call(true, || async {
                        if down.load(Ordering::SeqCst) {
                            reached.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            Err(Answer::Unavailable)
                        } else {
                            tokio::time::sleep(Duration::from_millis(120)).await;
                            Ok(())
                        }
                    })
                    .await;
                if matches!(r, Err(Answer::Refused)) {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let v = d.view();
    assert!(
        v.successes >= 240,
        "at the full rate: {} calls in 30 s",
        v.successes
    );
    down.store(true, Ordering::SeqCst);
    let outage = tokio::time::Instant::now();
    while d.breaker.state() != State::Open {
        assert!(
            outage.elapsed() < Duration::from_secs(30),
            "not open after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = outage.elapsed();
    let reached = reached_dead.load(Ordering::SeqCst);
    println!(
        "outage at full rate: OPEN after {} ms, {reached} requests reached the dead service; {}",
        took.as_millis(),
        d.breaker.transitions().last().unwrap().reason
    );
    for w in workers {
        w.abort();
    }
    assert!(took <= Duration::from_secs(1), "opened after {took:?}");
    assert!(reached <= 10, "{reached} requests reached the dead service");
}

/// Issue 14 point 6: an engine limit 20 % above the company's real quota (another app
/// spends part of it) learns the ceiling from its first 429s, then keeps at ≥ 90 % of
/// the quota with at most one throttled request a minute (today: a 429, a halving and a
/// pause every few seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_above_the_quota_learns_the_ceiling_and_keeps_near_the_quota() {
    // Intuit's 60 s pushback, ×12 like the sandbox's quota. A create costs one unit (its
    // name is found in the bulk index): 12,000 products keep the sync at the quota for
    // the ~110 s measured, with room to spare.
    let p = pair(
        12_000,
        &[("rate_limit_per_min", "7200"), ("throttle_pause_secs", "5")],
    )
    .await;
    let base = &p.base;
    let run: Vec<&str> = p.run.iter().map(String::as_str).collect();
    let _engine = spawn(&run);
    let first = common::eventually(60, "the first 429", || async {
        let s = stats(base).await?;
        (qb(&s, "throttled") >= 1).then_some(Instant::now())
    })
    .await;
    // Learning: the first 429 and what follows it.
    while first.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s0 = stats(base).await.unwrap();
    let t0 = Instant::now();
    let mut per_minute = vec![];
    let mut last = s0.clone();
    for _ in 0..2 {
        let m = Instant::now();
        while m.elapsed() < Duration::from_secs(45) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let s = stats(base).await.unwrap();
        per_minute.push(qb(&s, "throttled") - qb(&last, "throttled"));
        last = s;
    }
    let secs = t0.elapsed().as_secs_f64();
    let accepted = (qb(&last, "quota_units") - qb(&last, "throttled"))
        - (qb(&s0, "quota_units") - qb(&s0, "throttled"));
    let share = accepted as f64 / secs / 100.0;
    println!(
        "limit 7,200/min against a 6,000/min quota: {:.1} % of the quota over {secs:.0} s \
         ({:.2} Items/s); throttled per 45 s: {per_minute:?}; {} 429s before",
        share * 100.0,
        (qb(&last, "items_total") - qb(&s0, "items_total")) as f64 / secs,
        qb(&s0, "throttled")
    );
    assert!(share >= 0.9, "{:.1} % of the quota", share * 100.0);
    let throttled: u64 = per_minute.iter().sum();
    assert!(
        throttled as f64 <= secs / 60.0,
        "{throttled} throttled in {secs:.0} s"
    );
}

/// Issue 14 point 5: at the QuickBooks quota with a service that answers in about
/// 90 ms, the workers spend much of their time waiting for a permit. That wait is not
/// the service's latency: the auto-scaler holds (at most two changes a minute) and says
/// that the rate is the bottleneck (today it flaps every second on "latency 120 ms >
/// 1.25 × baseline 90 ms").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_bound_steady_state_holds_the_workers_and_says_why() {
    let sb = common::sandbox(2000, 41).await;
    let base = sb.base_url();
    common::faults(
        &base,
        json!({"service": "quickbooks", "rate_limit_per_min": 1200, "max_concurrent": 10,
               "latency_ms": 90, "latency_jitter_ms": 25, "latency_distribution": "normal"}),
    )
    .await;
    let cfg = common::config_for(&sb);
    assert_eq!(cfg.quickbooks.rate_limit_per_min, 1200);
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(cfg, dir.path()).await;
    common::eventually(60, "the sync at the quota", || async {
        let s = common::get_json(&format!("{base}/_sandbox/stats")).await;
        (s["quickbooks"]["items_total"].as_u64()? >= 60).then_some(())
    })
    .await;
    let start_ms = syncctl::store::now_ms();
    let (r0, started) = (
        stats(&base).await.unwrap()["quickbooks"]["quota_units"]
            .as_u64()
            .unwrap(),
        Instant::now(),
    );
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let s = stats(&base).await.unwrap();
    let rate = (qb(&s, "quota_units") - r0) as f64 / started.elapsed().as_secs_f64();
    let catalog = engine.snapshot.borrow().catalog.clone();
    let changes: Vec<_> = catalog
        .decisions
        .iter()
        .filter(|d| d.at_ms >= start_ms)
        .collect();
    println!(
        "rate-bound steady state: {rate:.1} requests/s of a 20/s quota; {} scaling changes in 30 s; \
         workers {}; why: {}; {:?}",
        changes.len(),
        catalog.workers_target,
        catalog.autoscale_status,
        changes
    );
    assert!(rate >= 18.0, "not at the quota: {rate:.1}/s");
    assert!(changes.len() <= 1, "{} changes in 30 s", changes.len());
    assert!(
        catalog.autoscale_status.contains("rate-bound"),
        "{}",
        catalog.autoscale_status
    );
}

/// Runs a full sync of `products` into an empty company with QuickBooks answering
/// in about 15 ms at its quota and `fault` set: the Items/s from 20 % to 80 % of the Items, and
/// whether it completed within `limit`.
async fn sync_rate(products: usize, fault: Value, limit: Duration) -> (f64, Option<Duration>) {
    let sb = common::sandbox(products, 51).await;
    let base = sb.base_url();
    // QuickBooks' quota and in-flight cap, time ×12 (as `syncctl sandbox` has them).
    common::faults(
        &base,
        json!({"service": "quickbooks", "latency_ms": 15, "rate_limit_per_min": 6000,
               "max_concurrent": 10}),
    )
    .await;
    common::faults(&base, fault).await;
    let mut cfg = common::config_for(&sb);
    // Single calls: with batches of 30 the 360 Items measured are 12 requests, and one
    // hung batch more or less swings the figure by a tenth (45–74 % in runs of the
    // same code); per request the measure says what a hanging call costs.
    cfg.catalog.claim_batch_max = 1;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let engine = common::engine(cfg, dir.path()).await;
    let at_items = |n: u64| {
        let base = base.clone();
        async move {
            let deadline = started + limit;
            loop {
                let s = stats(&base).await.unwrap();
                if qb(&s, "items_total") >= n {
                    return Some(Instant::now());
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (from, to) = (products as u64 / 5, products as u64 * 4 / 5);
    let rate = match (at_items(from).await, at_items(to).await) {
        (Some(a), Some(b)) => (to - from) as f64 / (b - a).as_secs_f64(),
        _ => 0.0,
    };
    let mut rx = engine.snapshot.clone();
    let left = limit.saturating_sub(started.elapsed());
    let done = tokio::time::timeout(left, async {
        loop {
            {
                let s = rx.borrow_and_update();
                let c = &s.catalog.counts;
                if s.catalog.full_sync.done
                    && c.queued == 0
                    && c.in_flight == 0
                    && c.synced >= products as u64
                {
                    return;
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .is_ok()
    .then(|| started.elapsed());
    let s = stats(&base).await.unwrap();
    let v = common::qb_view(&engine);
    println!(
        "  {} Items of {products} ({rate:.1} Items/s in the middle), {} requests, {} hung, \
         {} timed out at the engine, {} retries, breaker {:?} ({:?})",
        qb(&s, "items_total"),
        qb(&s, "requests"),
        qb(&s, "errors_injected"),
        v.timeouts,
        v.retries,
        v.breaker.state,
        v.breaker.last_transition.map(|t| t.reason)
    );
    for e in engine.snapshot.borrow().audit.iter() {
        if e.message.contains("→ OPEN") {
            println!("  {}", e.message);
        }
    }
    if std::env::var("LIMITS_DEBUG").is_ok() {
        let c = engine.snapshot.borrow().catalog.clone();
        println!(
            "  workers {} ({}), counts {:?}, limiter {:?}, budget exhausted {}, decisions {:?}",
            c.workers_target,
            c.autoscale_status,
            c.counts,
            v.limiter,
            v.budget_exhausted,
            c.decisions
        );
    }
    if done.is_some() {
        common::assert_one_item_per_product(&base).await;
    }
    (rate, done)
}

/// Issue 18 point 1: with one QuickBooks call in five hanging (the sandbox's
/// `timeout_rate` 0.2: no answer for 130 s), the sync keeps at least half of its
/// healthy throughput and completes with one Item per product — a hung call is given
/// up after a fraction of a second (the service's p99 × 4, not the configured 60 s)
/// and sent again with the same `requestid`. Today: 64 of 300 Items in 15 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_call_in_five_hanging_the_sync_keeps_half_its_throughput_and_completes() {
    let n = 600;
    let (healthy, done) = sync_rate(
        n,
        json!({"service": "quickbooks", "timeout_rate": 0.0}),
        Duration::from_secs(120),
    )
    .await;
    let healthy_took = done.expect("the healthy sync completes");
    let limit = healthy_took * 3 + Duration::from_secs(10);
    let (hanging, done) = sync_rate(
        n,
        json!({"service": "quickbooks", "timeout_rate": 0.2}),
        limit,
    )
    .await;
    println!(
        "{n} products: healthy {healthy:.1} Items/s (done in {:.1} s); with 20 % of calls \
         hanging {hanging:.1} Items/s ({:.0} %), {}",
        healthy_took.as_secs_f64(),
        hanging / healthy * 100.0,
        done.map_or_else(
            || format!("not done in {:.0} s", limit.as_secs_f64()),
            |d| format!("done in {:.1} s", d.as_secs_f64())
        )
    );
    assert!(
        hanging >= healthy * 0.5,
        "{hanging:.1} of {healthy:.1} Items/s"
    );
    assert!(done.is_some(), "not done in {limit:?}");
}

/// Issue 18 point 2: after a QuickBooks outage ends, Items are created again within
/// the half-open probe interval (the breaker's `open_wait_secs`, 3 s here; the open
/// wait no longer doubles with each failed probe, so a long outage is not followed by
/// a long silence). Today: 24 s after a 30 s outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_ends_work_resumes_within_the_probe_interval() {
    let sb = common::sandbox(3000, 61).await;
    let base = sb.base_url();
    common::faults(
        &base,
        json!({"service": "quickbooks", "latency_ms": 15, "rate_limit_per_min": 6000,
               "max_concurrent": 10}),
    )
    .await;
    let mut cfg = common::config_for(&sb);
    cfg.quickbooks.breaker.open_wait_secs = 3;
    let probe = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(cfg, dir.path()).await;
    common::eventually(60, "300 Items", || async {
        let s = stats(&base).await?;
        (qb(&s, "items_total") >= 300).then_some(())
    })
    .await;
    common::faults(&base, json!({"service": "quickbooks", "outage": true})).await;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = stats(&base).await.unwrap();
    // After 15 s of failed probes the next one is still a probe interval away.
    let wait_at_end = common::qb_view(&engine).breaker.open_wait_ms;
    common::faults(&base, json!({"service": "quickbooks", "outage": false})).await;
    let ended = Instant::now();
    let items0 = qb(&during, "items_total");
    // Useful work, not a trial call's Items (a trial may be a batch of 30): twenty
    // Items and the circuit closed again.
    let resumed = common::eventually(60, "Items after the outage", || async {
        let s = stats(&base).await?;
        let closed = common::qb_view(&engine).breaker.state == State::Closed;
        (closed && qb(&s, "items_total") >= items0 + 20).then(|| ended.elapsed())
    })
    .await;
    let v = common::qb_view(&engine);
    println!(
        "15 s outage: 20 Items again {:.2} s after it ended (probe interval {} s, open wait \
         at the end {wait_at_end} ms); {} requests reached the dead service; breaker {:?}",
        resumed.as_secs_f64(),
        probe.as_secs(),
        qb(&during, "errors_injected"),
        v.breaker.state
    );
    assert_eq!(
        wait_at_end,
        probe.as_millis() as u64,
        "the wait in OPEN grew with the outage"
    );
    assert!(
        resumed <= probe + Duration::from_millis(1500),
        "resumed {resumed:?} after the outage"
    );
    assert_eq!(v.breaker.state, State::Closed);
}
