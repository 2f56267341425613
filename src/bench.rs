//! `syncctl bench catalog`: the engine's full-sync throughput against a zero-latency,
//! unlimited sandbox, next to the raw request rate the same HTTP client gets from the
//! same sandbox at the same concurrency. Figures are printed, never asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::app;
use crate::config::Config;

mod quota;
mod scale;
use crate::sandbox::{SandboxOptions, SandboxServer};
pub use quota::quota;
pub use scale::{ScaleOptions, scale};

/// A scratch data dir, removed when dropped.
fn scratch() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("syncctl-bench-")
        .tempdir()?)
}

/// A sandbox of `products` on a free port of loopback, with `faults` per service.
async fn sandbox_with(
    products: usize,
    seed: u64,
    faults: std::collections::BTreeMap<String, crate::protocol::FaultSettings>,
) -> anyhow::Result<SandboxServer> {
    let opts = SandboxOptions {
        products,
        seed,
        latency_ms: 0,
        change_interval_ms: 0,
        dir: None,
        webhook_url: None,
        faults,
        companies: 1,
    };
    app::start_sandbox(&opts, app::bind("127.0.0.1:0".parse()?, false).await?, 0)
}

/// An engine pointed at `sandbox` (which it keeps to the quotas of), on a free port,
/// with no periodic reconciliation; `tune` adjusts the config before it starts.
async fn engine_on(
    sandbox: &SandboxServer,
    dir: &std::path::Path,
    tune: impl FnOnce(&mut Config),
) -> anyhow::Result<app::Served> {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.catalog.reconcile_interval_secs = 3600;
    app::fill_from_sandbox(&mut config, &sandbox.sandbox, sandbox.addr);
    tune(&mut config);
    let listener = app::bind(config.server.listen, false).await?;
    app::serve_engine(
        crate::engine::EngineOptions {
            config,
            data_dir: dir.to_owned(),
            mode: crate::engine::Mode::Sandbox,
            server_addr: None,
            fresh_store: false,
            company: crate::config::DEFAULT_COMPANY.into(),
        },
        listener,
    )
    .await
}

/// Waits until `engine` has listed and settled all `products` (120 s at most between
/// two changes).
async fn synced(engine: &app::Served, products: usize) -> anyhow::Result<()> {
    let mut snap = engine.snapshot.clone();
    loop {
        let done = {
            let s = snap.borrow_and_update();
            s.catalog.full_sync.done
                && s.catalog.counts.queued == 0
                && s.catalog.counts.in_flight == 0
                && s.catalog.counts.synced + s.catalog.counts.rejected + s.catalog.counts.failed
                    >= products as u64
        };
        if done {
            break;
        }
        if tokio::time::timeout(Duration::from_secs(120), snap.changed())
            .await
            .is_err()
        {
            anyhow::bail!("sync did not finish within 120 s of the last change");
        }
    }
    Ok(())
}

/// A zero-latency sandbox of `products` on a runtime (and threads) of its own, named
/// `bench-sandbox`, so the engine's CPU can be told apart from the sandbox's.
async fn sandbox_apart(
    products: usize,
    seed: u64,
) -> anyhow::Result<(SandboxServer, tokio::runtime::Runtime)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(sandbox_threads(RUNS.load(Ordering::Relaxed)))
        // Its blocking threads kept for the run: one ending took its CPU ticks out of
        // the sum (the sandbox's share then read negative, wrapped to 4.6e16 ms).
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()?;
    let started = rt
        .spawn(async move { sandbox_with(products, seed, Default::default()).await })
        .await;
    match started {
        Ok(Ok(sandbox)) => Ok((sandbox, rt)),
        // Ended off this runtime's threads (dropped here, in async context, it panics
        // instead of saying why the run stopped).
        Ok(Err(e)) => {
            end_sandbox(rt).await;
            Err(e)
        }
        Err(e) => {
            end_sandbox(rt).await;
            Err(e.into())
        }
    }
}

/// The sandbox runtimes started so far: each names its threads with its number, so that
/// a run sums its own sandbox's threads alone. With one name for all, an earlier runtime's
/// threads still winding down when a run began took their ticks out of the sum as they
/// ended: the sandbox's share read 0 and its CPU was put down to the engine (single calls
/// read 0.865 ms an item, the sandbox's among it).
static RUNS: AtomicU64 = AtomicU64::new(0);

fn sandbox_threads(run: u64) -> String {
    format!("bench-sb{run}.")
}

/// Ends a sandbox runtime and waits for its threads to be gone, so that the next run's
/// figures hold none of its work.
async fn end_sandbox(rt: tokio::runtime::Runtime) {
    RUNS.fetch_add(1, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(5))).await;
}

/// CPU clock ticks of this process's threads named `name` (0 off Linux).
fn thread_ticks(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| {
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1;
            if !comm.starts_with(name) {
                return None;
            }
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Some(n(11) + n(12))
        })
        .sum()
}

/// One full sync of a fresh sandbox: items/s and the engine's CPU per item (the
/// process's CPU less the sandbox's threads').
struct SyncRun {
    items_per_sec: f64,
    engine_ms_per_item: f64,
    sandbox_ms_per_item: f64,
}

async fn sync_once(
    products: usize,
    workers: usize,
    seed: u64,
    claim_batch_max: Option<u32>,
) -> anyhow::Result<SyncRun> {
    let tmp = scratch()?;
    let (sandbox, rt) = sandbox_apart(products, seed).await?;
    let threads = sandbox_threads(RUNS.load(Ordering::Relaxed));
    let (cpu0, sb0) = (cpu_ticks(), thread_ticks(&threads));
    let started = Instant::now();
    let started_ms = crate::store::now_ms();
    // (Awaited before the sandbox ends whatever it returns: a runtime dropped in async
    // context on an error's way out panicked instead of saying what failed.)
    let measured = async {
        let mut engine = engine_on(&sandbox, tmp.path(), |c| {
            c.catalog.workers = workers;
            if let Some(n) = claim_batch_max {
                c.catalog.claim_batch_max = n;
            }
        })
        .await?;
        let done = synced(&engine, products).await;
        let elapsed = started.elapsed();
        let (cpu1, sb1) = (cpu_ticks(), thread_ticks(&threads));
        // (The requests of the sync, not of the engine's stop.)
        let stats = sandbox.sandbox.stats();
        engine.shutdown().await;
        done.map(|()| (elapsed, cpu1, sb1, stats))
    }
    .await;
    sandbox.shutdown().await;
    end_sandbox(rt).await;
    let (seen, cpu1, sb1, stats) = measured?;
    // The snapshot that shows the sync done comes at the publisher's next tick (every
    // 250 ms), a quarter of a short run: the sync is timed to its last job's end, as
    // the store holds it.
    let elapsed = last_job_ended_ms(tmp.path())
        .map(|at| Duration::from_millis((at - started_ms).max(1) as u64))
        .unwrap_or(seen)
        .min(seen);
    let per_item = |ticks: u64| ticks as f64 * 1000.0 / TICKS_PER_SEC / products as f64;
    let run = SyncRun {
        items_per_sec: products as f64 / elapsed.as_secs_f64(),
        engine_ms_per_item: per_item((cpu1 - cpu0).saturating_sub(sb1.saturating_sub(sb0))),
        sandbox_ms_per_item: per_item(sb1.saturating_sub(sb0)),
    };
    let qb = &stats["quickbooks"];
    let n = |k: &str| qb[k].as_u64().unwrap_or(0);
    println!(
        "  engine:  {products} items in {:.2} s to the last job's end (seen done at {:.2} s) = {:.0} items/s; engine CPU {:.3} ms per item (sandbox {:.3} ms)",
        elapsed.as_secs_f64(),
        seen.as_secs_f64(),
        run.items_per_sec,
        run.engine_ms_per_item,
        run.sandbox_ms_per_item
    );
    println!(
        "           {} QuickBooks + {} Stripe requests ({:.2} QuickBooks requests per item), duplicate names {}",
        n("requests"),
        stats["stripe"]["requests"].as_u64().unwrap_or(0),
        n("requests") as f64 / products as f64,
        qb["duplicate_names"]
    );
    println!(
        "           {} batch requests carrying {} operations, {} queries; quota units (a batch counts its operations) {} = {:.3} per item",
        n("batch_requests"),
        n("batch_operations"),
        n("queries"),
        n("quota_units"),
        n("quota_units") as f64 / products as f64
    );
    Ok(run)
}

/// When the last catalog job of the store in `dir` ended (its `updated_at`, ms): done,
/// rejected or failed, as [`synced`] counts them.
fn last_job_ended_ms(dir: &std::path::Path) -> Option<i64> {
    let db = rusqlite::Connection::open(dir.join("syncctl.db")).ok()?;
    db.query_row(
        "SELECT max(updated_at) FROM jobs WHERE kind = ?1 AND state IN ('done', 'rejected', 'failed')",
        [crate::engine::catalog::JOB_KIND],
        |r| r.get(0),
    )
    .ok()?
}

pub async fn catalog(
    products: usize,
    workers: usize,
    seed: u64,
    calls: &str,
) -> anyhow::Result<()> {
    println!(
        "syncctl bench catalog: {products} products, {workers} workers, sandbox latency 0, no limits"
    );
    // The raw rate is measured right before and right after each sync, and each sync is
    // divided by the mean of the two around it: on a shared machine the rate moves with
    // the load (by 2x within minutes), so a rate measured once, after both syncs, was
    // not the rate either sync ran beside.
    let mut rates = vec![raw_rate(products, workers, seed).await?];
    let mut ratios = Vec::new();
    let mut cpu = Vec::new();
    for (name, claim_max, title) in [
        (
            "batched",
            None,
            "batched (claims in groups, writes in batches of up to 30)",
        ),
        (
            "single",
            Some(1),
            "single calls (catalog.claim_batch_max = 1: one product per request)",
        ),
    ] {
        if calls != "both" && calls != name {
            continue;
        }
        println!(" {title}:");
        let run = sync_once(products, workers, seed, claim_max).await?;
        let before = rates[rates.len() - 1];
        let after = raw_rate(products, workers, seed).await?;
        rates.push(after);
        ratios.push(format!(
            "{:.2} {name}",
            run.items_per_sec / ((before + after) / 2.0)
        ));
        cpu.push(format!("{:.3} ms {name}", run.engine_ms_per_item));
    }
    let rates: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "  raw:     {} requests/s (before and after each sync, in order) from the same client at concurrency {workers}",
        rates.join(" / ")
    );
    println!(
        "  ratio:   items/s ÷ raw requests/s = {} (items written in batches of up to 30 can exceed 1)",
        ratios.join(", ")
    );
    println!("  cpu:     engine CPU per item {}", cpu.join(", "));
    Ok(())
}

/// The raw request rate: the engine's HTTP client, at the engine's concurrency, asking
/// a fresh sandbox the request every new product costs first (an Item query by name),
/// each answer read to its end as the engine reads it, for 3 s.
async fn raw_rate(products: usize, workers: usize, seed: u64) -> anyhow::Result<f64> {
    let (sandbox, rt) = sandbox_apart(products, seed).await?;
    let raw = load(&sandbox, workers).await;
    sandbox.shutdown().await;
    end_sandbox(rt).await;
    raw
}

/// Requests/s of the load [`raw_rate`] describes, on `sandbox`.
async fn load(sandbox: &SandboxServer, workers: usize) -> anyhow::Result<f64> {
    // Load generator: the same client, the same concurrency, the same kind of request
    // (an Item query by name, what every new product costs first).
    let http = crate::connectors::http_client()?;
    let refresh = sandbox.sandbox.lock().world.refresh_token.clone();
    let token = {
        let resp: serde_json::Value = http
            .post(format!("{}/oauth2/v1/tokens/bearer", sandbox.base_url()))
            .basic_auth(
                crate::sandbox::QB_CLIENT_ID,
                Some(crate::sandbox::QB_CLIENT_SECRET),
            )
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
            ])
            .send()
            .await?
            .json()
            .await?;
        resp["access_token"].as_str().unwrap_or_default().to_owned()
    };
    let url = format!(
        "{}/v3/company/{}/query",
        sandbox.base_url(),
        crate::sandbox::QB_REALM_ID
    );
    let count = Arc::new(AtomicU64::new(0));
    // Timed from before the first request (the tasks start as they are spawned).
    let load_started = Instant::now();
    let deadline = load_started + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (http, url, token, count) = (http.clone(), url.clone(), token.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let q = format!(
                    "select * from Item where Name = 'bench {w} {i}' and Active in (true, false)"
                );
                // The answer read to its end, as the engine reads it.
                let answered = match http
                    .get(&url)
                    .bearer_auth(&token)
                    .query(&[("query", q.as_str()), ("minorversion", "75")])
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                {
                    Ok(r) => r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if answered {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / load_started.elapsed().as_secs_f64())
}

/// `syncctl bench resilience`: a catalog sync against a sandbox enforcing a QuickBooks
/// quota (rate, in-flight cap, latency), printing utilisation of the bound and the share
/// of requests throttled; then an outage, printing how fast an open breaker rejects.
#[expect(
    clippy::too_many_lines,
    reason = "a benchmark's setup, run and report in order"
)]
pub async fn resilience(
    products: usize,
    rate_per_sec: u32,
    max_concurrent: u32,
    latency_ms: u64,
) -> anyhow::Result<()> {
    let tmp = scratch()?;
    let mut faults = std::collections::BTreeMap::new();
    faults.insert(
        "quickbooks".to_owned(),
        crate::sandbox::faults::FaultSettings {
            rate_limit_per_min: rate_per_sec * 60,
            max_concurrent,
            latency_ms,
            ..Default::default()
        },
    );
    let sandbox = sandbox_with(products, 42, faults).await?;
    let bound =
        (rate_per_sec as f64).min(max_concurrent as f64 * 1000.0 / latency_ms.max(1) as f64);
    println!(
        "syncctl bench resilience: {products} products; sandbox QuickBooks quota {rate_per_sec}/s, {max_concurrent} in flight, {latency_ms} ms latency → bound {bound:.0} req/s"
    );
    let mut engine = engine_on(&sandbox, tmp.path(), |c| {
        c.quickbooks.throttle_pause_secs = 1;
        c.quickbooks.breaker.open_wait_secs = 2;
    })
    .await?;
    // Steady state: measure between 10 % and 90 % of the Items created.
    let items =
        |s: &crate::sandbox::Sandbox| s.stats()["quickbooks"]["items_total"].as_u64().unwrap_or(0);
    let counts = |s: &crate::sandbox::Sandbox| {
        let v = s.stats();
        (
            v["quickbooks"]["requests"].as_u64().unwrap_or(0),
            v["quickbooks"]["throttled"].as_u64().unwrap_or(0),
        )
    };
    let sb = sandbox.sandbox.clone();
    let wait_items = |n: u64| {
        let sb = sb.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            while items(&sb) < n {
                anyhow::ensure!(Instant::now() < deadline, "sync stalled below {n} Items");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
    };
    wait_items(products as u64 / 10).await?;
    let (r0, t0, s0) = {
        let (r, t) = counts(&sb);
        (r, t, Instant::now())
    };
    wait_items(products as u64 * 9 / 10).await?;
    let (r1, t1) = counts(&sb);
    let secs = s0.elapsed().as_secs_f64();
    let rate = (r1 - r0) as f64 / secs;
    println!(
        "  steady state: {} QuickBooks requests in {secs:.1} s = {rate:.1} req/s → utilisation {:.1} % of the bound",
        r1 - r0,
        rate * 100.0 / bound
    );
    println!(
        "  throttled: {} of {} requests = {:.2} %",
        t1 - t0,
        r1 - r0,
        (t1 - t0) as f64 * 100.0 / (r1 - r0).max(1) as f64
    );
    let snap = engine.snapshot.borrow().catalog.clone();
    println!(
        "  workers: target {} (bounds {}–{}); last decision: {}",
        snap.workers_target,
        snap.workers_min,
        snap.workers_max,
        snap.decisions.first().map_or("none".into(), |d| format!(
            "{} → {}: {}",
            d.from, d.to, d.reason
        ))
    );
    // Outage: the breaker opens; rejections are measured inside the policy object.
    let patch = |outage: bool| crate::sandbox::faults::FaultPatch {
        service: "quickbooks".into(),
        outage: Some(outage),
        ..Default::default()
    };
    sb.faults.patch(&patch(true)).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let opened = loop {
        let state = engine
            .snapshot
            .borrow()
            .downstreams
            .iter()
            .find(|d| d.name == "quickbooks")
            .map(|d| d.breaker.state);
        if state == Some(crate::resilience::State::Open) {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the engine's breaker did not open within 60 s of the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "  outage: the engine's QuickBooks breaker opened {:.1} s after it began",
        opened.as_secs_f64()
    );
    // The engine holds work back while its circuit is open, so it makes few calls to
    // reject; time rejections on a policy object of the same config instead.
    let (p50, p99) = rejection_latency(&sandbox.base_url()).await?;
    println!(
        "  open breaker: rejection latency p50 {p50:.2} µs, p99 {p99:.2} µs (100 000 calls, no network I/O)"
    );
    sb.faults.patch(&patch(false)).map_err(anyhow::Error::msg)?;
    wait_items(products as u64).await?;
    println!(
        "  recovered: {} Items, duplicate names {}",
        items(&sb),
        sb.stats()["quickbooks"]["duplicate_names"]
    );
    engine.shutdown().await;
    Ok(())
}

/// Opens a QuickBooks policy object (default config) against the outage, then times
/// 100 000 calls it rejects: (p50, p99) in microseconds.
async fn rejection_latency(base: &str) -> anyhow::Result<(f64, f64)> {
    use crate::connectors::quickbooks::{QbError, parse_response};
    use crate::resilience::{Downstream, SharedClock, State};
    let cfg = Config::default()
        .downstream("quickbooks")
        .ok_or_else(|| anyhow::anyhow!("no quickbooks policy"))?;
    let d = Downstream::new("quickbooks", cfg, SharedClock::tokio());
    let http = crate::connectors::http_client()?;
    let url = format!("{base}/v3/company/{}/query", crate::sandbox::QB_REALM_ID);
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.breaker.state() != State::Open {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the breaker did not open in 60 s"
        );
        let _: Result<(), QbError> = d
            .call(false, || async {
                let r = http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| QbError::Transport(e.to_string()))?;
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                parse_response(status, &text).map(|_| ())
            })
            .await;
    }
    let mut took = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let t = Instant::now();
        let r: Result<(), QbError> = d.call(false, || async { Ok(()) }).await;
        took.push(t.elapsed());
        anyhow::ensure!(
            matches!(r, Err(QbError::Rejected { .. })),
            "a call went through an open breaker"
        );
    }
    took.sort_unstable();
    let us =
        |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)].as_secs_f64() * 1e6;
    Ok((us(0.5), us(0.99)))
}

/// `syncctl bench telemetry`: what the once-a-second telemetry costs — a tick (series,
/// detectors, alerts, health) with three downstreams, the view the snapshot carries,
/// an HDR record, the lookup cache — and the fixed memory of an hour of series.
#[expect(
    clippy::too_many_lines,
    reason = "a benchmark's setup, run and report in order"
)]
pub fn telemetry(ticks: usize) -> anyhow::Result<()> {
    use crate::config::{AlertsConfig, AnomalyConfig};
    use crate::telemetry::cache::Cache;
    use crate::telemetry::metrics::{Latency, SERIES_LEN, Summary};
    use crate::telemetry::{DownstreamSample, Sample, Telemetry};
    let ticks = ticks.max(SERIES_LEN);
    let mut t = Telemetry::new(AlertsConfig::default(), AnomalyConfig::default());
    let sample = |s: usize| {
        let lat = Summary {
            count: 20,
            sum_ms: 800.0,
            p50_ms: 40.0 + (s % 7) as f64,
            p95_ms: 80.0 + (s % 11) as f64,
            p99_ms: 120.0 + (s % 13) as f64,
            max_ms: 200.0,
            ..Summary::default()
        };
        let ds = |name: &str| DownstreamSample {
            name: name.into(),
            calls: s as u64 * 20,
            failures: s as u64 / 10,
            consecutive_failures: 0,
            p50_ms: Some(lat.p50_ms),
            p95_ms: Some(lat.p95_ms),
            p99_ms: Some(lat.p99_ms),
            breaker: "CLOSED".into(),
            in_flight: 3,
            limit: 10,
            auth: None,
        };
        Sample {
            now_ms: s as i64 * 1000,
            items_done: s as u64 * (20 + (s % 5) as u64),
            invoices_validated: s as u64,
            dian_sends: s as u64,
            dian_failures: s as u64 / 50,
            downstreams: vec![ds("stripe"), ds("quickbooks"), ds("alegra")],
            catalog_queue: (s % 50) as u64,
            dian_queue: Some((s % 9) as u64),
            ..Default::default()
        }
    };
    let samples: Vec<Sample> = (0..ticks).map(sample).collect();
    let start = Instant::now();
    for s in samples {
        t.tick(s);
    }
    let tick = start.elapsed() / ticks as u32;
    let views = 1000;
    let start = Instant::now();
    let mut points = 0;
    for i in 0..views {
        points += t
            .view(i)
            .charts
            .iter()
            .map(|c| c.m1.len() + c.m5.len() + c.h1.len())
            .sum::<usize>();
    }
    let view = start.elapsed() / views as u32;
    let series = t.view(0).charts.len();
    let latency = Latency::default();
    let n = 1_000_000u32;
    let start = Instant::now();
    for i in 0..n {
        latency.record(Duration::from_micros(500 + u64::from(i % 100_000)));
    }
    let record = start.elapsed() / n;
    let mut cache: Cache<u64> = Cache::new(10_000, 300_000);
    let ops = 1_000_000u64;
    let start = Instant::now();
    for i in 0..ops {
        // Four lookups in five go to 2 000 hot Items, the fifth to any of 20 000.
        let k = if i % 5 == 0 {
            (i / 5) * 7919 % 20_000
        } else {
            i % 2_000
        };
        let key = format!("item:name:{k}");
        if cache.get(&key, i as i64).is_none() {
            cache.put(&key, i, &["item"], i as i64);
        }
    }
    let cache_op = start.elapsed() / ops as u32;
    let stats = cache.stats();
    println!("telemetry, {ticks} ticks (one per simulated second), 3 downstreams:");
    println!(
        "  tick (series, detectors, alerts, health): {:.1} µs",
        tick.as_secs_f64() * 1e6
    );
    println!(
        "  view for the snapshot ({series} charts, {} points): {:.1} µs",
        points / views as usize,
        view.as_secs_f64() * 1e6
    );
    println!(
        "  series memory: {series} × {SERIES_LEN} points × 8 B = {:.0} KiB, fixed",
        (series * SERIES_LEN * 8) as f64 / 1024.0
    );
    println!("  HDR latency record: {:.0} ns", record.as_secs_f64() * 1e9);
    println!(
        "  cache get/put (10 000 entries; 80 % of lookups on 2 000 hot keys, 20 % on 20 000): {:.0} ns per lookup, hit rate {:.1} %, {} evictions",
        cache_op.as_secs_f64() * 1e9,
        stats.hit_rate().unwrap_or(0.0),
        stats.evictions
    );
    Ok(())
}

/// What an attached console's terminal would receive: bytes counted, nothing kept.
#[derive(Clone, Default)]
struct CountingTerminal(Arc<AtomicU64>);

impl std::io::Write for CountingTerminal {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An attached console as `syncctl attach` runs it — the [`RemoteEngine`] link, the
/// console's `update` and its screens drawn at `max_fps` on a 100×30 terminal whose
/// bytes are counted — with, for each frame drawn, when it was drawn and the catalog's
/// `completed` and `paused` it showed.
struct BenchConsole {
    drawn: Arc<std::sync::Mutex<Vec<(Instant, u64, bool)>>>,
    written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn bench_console(link: &crate::attach::RemoteEngine, max_fps: u32) -> anyhow::Result<BenchConsole> {
    use crate::console::{screens, state::App, theme::Theme, update};
    use crate::protocol::Link;
    use ratatui::layout::Rect;
    use ratatui::{Terminal, TerminalOptions, Viewport};
    let written = Arc::new(AtomicU64::new(0));
    let backend = ratatui::backend::CrosstermBackend::new(CountingTerminal(written.clone()));
    let mut term = Terminal::with_options(
        backend,
        TerminalOptions {
            viewport: Viewport::Fixed(Rect::new(0, 0, 100, 30)),
        },
    )?;
    let mut snapshots = link.snapshots();
    let drawn = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = drawn.clone();
    let task = tokio::spawn(async move {
        let mut app = App::new(snapshots.borrow_and_update().clone(), Theme::monochrome());
        // Paced as the console's run loop paces its frames.
        let mut pace = crate::protocol::Pacer::new(max_fps, tokio::time::Instant::now());
        let mut dirty = true;
        loop {
            if dirty && pace.ready(tokio::time::Instant::now()) {
                if term.draw(|f| screens::draw(f, &app)).is_err() {
                    return;
                }
                pace.sent(tokio::time::Instant::now());
                dirty = false;
                let c = &app.snapshot.catalog;
                if let Ok(mut log) = log.lock() {
                    log.push((Instant::now(), c.completed, c.paused));
                }
            }
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let s = snapshots.borrow_and_update().clone();
                    for e in update::update(&mut app, update::Msg::Snapshot(s)) {
                        dirty |= matches!(e, update::Effect::Redraw { .. });
                    }
                }
                () = tokio::time::sleep_until(pace.next_at()), if dirty => {}
            }
        }
    });
    Ok(BenchConsole {
        drawn,
        written,
        task,
    })
}

/// The `q`-th quantile of `v` (sorted in place), in milliseconds.
fn quantile_ms(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

/// `syncctl bench attach`: the bytes per second one attached console receives over its
/// WebSocket while a catalog sync runs and while the engine is idle, next to the bytes
/// that console writes to its own terminal (what SSH carries either way); and the
/// time from an engine publishing a change to an attached console drawing it.
#[expect(
    clippy::too_many_lines,
    reason = "a benchmark's setup, run and report in order"
)]
pub async fn attach(products: usize, idle_secs: u64) -> anyhow::Result<()> {
    use crate::attach::{Endpoint, RemoteEngine};
    use crate::protocol::{Command, Pipeline, Request};
    let tmp = scratch()?;
    let opts = SandboxOptions {
        products,
        seed: 42,
        latency_ms: 20,
        change_interval_ms: 0,
        dir: None,
        webhook_url: None,
        faults: Default::default(),
        companies: 1,
    };
    let sandbox = app::start_sandbox(&opts, app::bind("127.0.0.1:0".parse()?, false).await?, 0)?;
    let max_fps = Config::default().console.max_fps;
    println!(
        "syncctl bench attach: {products} products, one console attached over WebSocket, drawn at {max_fps} fps on 100×30"
    );
    let mut engine = engine_on(&sandbox, tmp.path(), |c| c.catalog.workers = 8).await?;
    let control = crate::attach::console_url(&format!("http://{}", engine.server_addr))
        .map_err(anyhow::Error::msg)?;
    let token = std::fs::read_to_string(tmp.path().join("control.json"))?;
    let token: serde_json::Value = serde_json::from_str(&token)?;
    let token = token["token"].as_str().unwrap_or_default().to_owned();
    let link = RemoteEngine::connect(
        Arc::new(move || {
            Ok(Endpoint {
                url: control.clone(),
                token: Some(token.clone()),
            })
        }),
        crate::attach::hello(false, max_fps),
    )
    .await?;
    let console = bench_console(&link, max_fps)?;

    // The engine's side: when each `completed` count and pause state was published.
    let published = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64, bool)>::new()));
    let mut watch = engine.snapshot.clone();
    let log = published.clone();
    let watcher = tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            let c = watch.borrow_and_update().catalog.clone();
            if let Ok(mut log) = log.lock() {
                log.push((Instant::now(), c.completed, c.paused));
            }
        }
    });

    // 1. The sync.
    let (rx0, tx0) = (link.received(), console.written.load(Ordering::Relaxed));
    let started = Instant::now();
    synced(&engine, products).await?;
    let sync_secs = started.elapsed().as_secs_f64();
    let (rx1, tx1) = (link.received(), console.written.load(Ordering::Relaxed));
    // Engine event → drawn, during the sync: each published `completed` count, until the
    // first frame drawn showing at least it.
    let (mut sync_lat, sync_skipped) =
        latencies(&published, &console.drawn, |p| p.1, |p, d| d.1 >= p.1);
    println!(
        "  sync:    {products} items in {sync_secs:.1} s; the console received {:.0} B/s over its WebSocket, and wrote {:.0} B/s to its terminal",
        (rx1 - rx0) as f64 / sync_secs,
        (tx1 - tx0) as f64 / sync_secs
    );
    println!(
        "           engine change → drawn: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} changes drawn, {} superseded before a frame)",
        quantile_ms(&mut sync_lat, 0.5),
        quantile_ms(&mut sync_lat, 0.99),
        quantile_ms(&mut sync_lat, 1.0),
        sync_lat.len(),
        sync_skipped
    );

    // 2. Idle: nothing to sync, nobody acting; first while the last minute's charts
    // still move, then once they have settled (every per-second window at zero).
    // What the console received and wrote over `idle_secs` of nobody acting.
    let idle = |label: &'static str| {
        let (link, written) = (&link, &console.written);
        async move {
            let (rx0, tx0) = (link.received(), written.load(Ordering::Relaxed));
            let started = Instant::now();
            tokio::time::sleep(Duration::from_secs(idle_secs)).await;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "  idle:    ({label}) {secs:.0} s; the console received {:.1} B/s over its WebSocket (heartbeat every 5 s), and wrote {:.1} B/s to its terminal",
                (link.received() - rx0) as f64 / secs,
                (written.load(Ordering::Relaxed) - tx0) as f64 / secs
            );
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    idle("charts moving").await;
    let mut settled = engine.snapshot.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(120),
        settled.wait_for(|s| s.catalog.per_second.iter().all(|&n| n == 0)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    idle("settled").await;

    // 3. An operator's action, idle engine: pause/resume from another front-end, from
    // the moment it is asked until the attached console draws its result.
    let asked: Seen = Arc::default();
    let toggles = 50;
    for n in 0..toggles {
        let paused = n % 2 == 0;
        let command = if paused {
            Command::Pause {
                pipeline: Pipeline::Catalog,
            }
        } else {
            Command::Resume {
                pipeline: Pipeline::Catalog,
            }
        };
        if let Ok(mut a) = asked.lock() {
            a.push((Instant::now(), 0, paused));
        }
        let _ = engine
            .commands
            .request(Request::new("bench", command))
            .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (mut act_lat, act_skipped) = latencies(&asked, &console.drawn, |p| p.2, |p, d| d.2 == p.2);
    println!(
        "  action:  pause/resume ×{toggles} asked → drawn in the attached console: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({act_skipped} not drawn before the next)",
        quantile_ms(&mut act_lat, 0.5),
        quantile_ms(&mut act_lat, 0.99),
        quantile_ms(&mut act_lat, 1.0)
    );
    console.task.abort();
    watcher.abort();
    drop(link);
    engine.shutdown().await;
    sandbox.shutdown().await;
    Ok(())
}

type Seen = Arc<std::sync::Mutex<Vec<(Instant, u64, bool)>>>;

/// For each event (an engine publish, an operator's ask) that changed what `key`
/// reads, the time until the first frame drawn after it that `shows` it; and how many
/// such events no frame showed before the next change (superseded: a console drawing
/// at its rate skips some).
fn latencies<K: PartialEq>(
    published: &Seen,
    drawn: &Seen,
    key: impl Fn(&(Instant, u64, bool)) -> K,
    shows: impl Fn(&(Instant, u64, bool), &(Instant, u64, bool)) -> bool,
) -> (Vec<Duration>, usize) {
    let published = published.lock().map(|p| p.clone()).unwrap_or_default();
    let drawn = drawn.lock().map(|d| d.clone()).unwrap_or_default();
    let changes: Vec<_> = published
        .iter()
        .enumerate()
        .filter(|(i, p)| *i == 0 || key(&published[i - 1]) != key(p))
        .map(|(_, p)| *p)
        .collect();
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, p) in changes.iter().enumerate() {
        let next = changes.get(i + 1).map(|n| n.0);
        match drawn
            .iter()
            .find(|d| d.0 >= p.0 && next.is_none_or(|n| d.0 < n) && shows(p, d))
        {
            Some(d) => out.push(d.0 - p.0),
            None => skipped += 1,
        }
    }
    (out, skipped)
}

/// `syncctl bench history`: what a long history costs an engine that has nothing to
/// do. A data dir is built directly through the store (`jobs` finished catalog jobs and
/// their mappings, `audit` audit rows over 30 days), then an engine starts on it
/// against an empty zero-latency sandbox: start → first snapshot, the process's CPU
/// while idle, `GET /api/v1/events?type=item&limit=100` p50/p99 over loopback, the
/// console's `/` filter (its first page) and the process's RSS.
#[expect(
    clippy::too_many_lines,
    reason = "a benchmark's setup, run and report in order"
)]
pub async fn history(
    jobs: usize,
    audit: usize,
    idle_secs: u64,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("syncctl-bench-")
        .tempdir()?;
    println!("syncctl bench history: {jobs} done jobs and mappings, {audit} audit rows");
    let dir = dir.unwrap_or_else(|| tmp.path().to_owned());
    let db = dir.join("syncctl.db");
    if std::fs::metadata(&db).map_or(true, |m| m.len() == 0) {
        let seeding = Instant::now();
        seed_history(&dir, jobs, audit)?;
        println!(
            "  seed:    built in {:.1} s ({} MB on disk)",
            seeding.elapsed().as_secs_f64(),
            std::fs::metadata(&db)?.len() / 1_000_000
        );
    } else {
        println!(
            "  seed:    reusing {} ({} MB on disk)",
            db.display(),
            std::fs::metadata(&db)?.len() / 1_000_000
        );
    }
    let opts = SandboxOptions {
        products: 0,
        seed: 42,
        latency_ms: 0,
        change_interval_ms: 0,
        dir: None,
        webhook_url: None,
        faults: Default::default(),
        companies: 1,
    };
    let sandbox = app::start_sandbox(&opts, app::bind("127.0.0.1:0".parse()?, false).await?, 0)?;
    let rss_before = rss_kb();

    // The file in the page cache, as a restart finds it.
    let _ = std::fs::read(&db)?;

    // Start → the first snapshot carrying the store's counts.
    let since_ms = crate::store::now_ms();
    let started = Instant::now();
    let mut engine = engine_on(&sandbox, &dir, |_| {}).await?;
    let mut snap = engine.snapshot.clone();
    let products = tokio::time::timeout(
        Duration::from_secs(60),
        snap.wait_for(|s| s.catalog.counts.products_seen > 0),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no snapshot with counts within 60 s"))??
    .catalog
    .counts
    .products_seen;
    let ready = started.elapsed();
    println!(
        "  start:   start → first snapshot {:.0} ms",
        ready.as_secs_f64() * 1000.0
    );

    // The full integrity check runs after start, in the background: its verdict (an
    // audit line) before idle is measured.
    let checked = tokio::time::timeout(
        Duration::from_secs(120),
        snap.wait_for(|s| {
            s.audit.iter().any(|e| {
                e.at_ms >= since_ms
                    && e.entity == "store"
                    && e.message.starts_with("integrity check:")
            })
        }),
    )
    .await;
    match checked {
        Ok(Ok(s)) => {
            if let Some(e) = s
                .audit
                .iter()
                .find(|e| e.at_ms >= since_ms && e.message.starts_with("integrity check:"))
            {
                println!(
                    "  check:   {} s after start, {}",
                    format_args!("{:.1}", started.elapsed().as_secs_f64()),
                    e.message
                );
            }
        }
        _ => println!("  check:   no integrity verdict within 120 s"),
    }

    // Idle: nothing queued, nobody acting. The process's CPU (engine, server and an
    // idle sandbox) over `idle_secs`, after a few seconds to settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, t0) = (cpu_ticks(), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (cpu1, secs) = (cpu_ticks(), t0.elapsed().as_secs_f64());
    println!(
        "  idle:    {:.1} % of a core over {secs:.0} s",
        (cpu1 - cpu0) as f64 / TICKS_PER_SEC / secs * 100.0
    );

    // The events API over loopback, as the local operator.
    let token = std::fs::read_to_string(dir.join("control.json"))?;
    let token: serde_json::Value = serde_json::from_str(&token)?;
    let token = token["token"].as_str().unwrap_or_default().to_owned();
    let http = crate::connectors::http_client()?;
    let base = format!("http://{}", engine.server_addr);
    let api = |path: String| {
        let (http, token) = (http.clone(), token.clone());
        let url = format!("{base}{path}");
        async move {
            let t = Instant::now();
            let v: serde_json::Value = http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok((t.elapsed(), v))
        }
    };
    // By type; then the contract's `type=&since=`, and time alone, at either end of the
    // 30 days the trail spans: each reads its page (the blocks of ids a time range
    // implies), not the trail between it and the newest entry.
    let now = crate::store::now_ms();
    for (label, query) in [
        (
            "GET /api/v1/events?type=item&limit=100",
            "type=item".to_owned(),
        ),
        (
            "type=sync&since=(a day ago)",
            format!("type=sync&since={}", now - 86_400_000),
        ),
        ("since=(an hour ago)", format!("since={}", now - 3_600_000)),
        (
            "type=sync&until=(29 days ago)",
            format!("type=sync&until={}", now - 29 * 86_400_000),
        ),
    ] {
        let mut lat = Vec::new();
        let mut n = 0;
        for _ in 0..100 {
            let (d, v) = api(format!("/api/v1/events?{query}&limit=100")).await?;
            n = v["events"].as_array().map_or(0, Vec::len);
            lat.push(d);
        }
        let head = if query == "type=item" {
            "  events:  "
        } else {
            "           "
        };
        println!(
            "{head}{label} ×100: p50 {:.1} ms, p99 {:.1} ms ({n} events each)",
            quantile_ms(&mut lat, 0.5),
            quantile_ms(&mut lat, 0.99)
        );
    }
    let mut lat = Vec::new();
    let mut before = None::<i64>;
    for _ in 0..20 {
        let page = before.map_or(String::new(), |b| format!("&before={b}"));
        let (d, v) = api(format!("/api/v1/events?type=item&limit=100{page}")).await?;
        before = v["events"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(|e| e["id"].as_i64());
        lat.push(d);
    }
    println!(
        "           20 pages back with before=: p50 {:.1} ms, p99 {:.1} ms",
        quantile_ms(&mut lat, 0.5),
        quantile_ms(&mut lat, 0.99)
    );

    // The console's `/` filter as an attached console asks it: the first page of the
    // whole trail, then the true total. The rare words are one product's (the tenth
    // from the last seeded: a few entries in a store of any size, none of another
    // product's id holding its own).
    let front = engine.frontend();
    let rare = format!("prod_{} created", products.saturating_sub(10));
    for (label, words) in [("common", "prod_12"), ("rare", rare.as_str())] {
        use crate::protocol::{Answer, AuditFilter, Query};
        let filter = AuditFilter {
            text: Some(words.to_owned()),
            limit: 100,
            ..Default::default()
        };
        let (mut lat, mut total_lat) = (Vec::new(), Vec::new());
        let (mut found, mut total) = (0, 0);
        for _ in 0..100 {
            let t = Instant::now();
            let answer = front
                .query(Query::Audit {
                    filter: filter.clone(),
                })
                .await;
            lat.push(t.elapsed());
            if let Ok(Answer::Audit { entries }) = answer {
                found = entries.len();
            }
            let t = Instant::now();
            let answer = front
                .query(Query::AuditCount {
                    filter: filter.clone(),
                })
                .await;
            total_lat.push(t.elapsed());
            if let Ok(Answer::AuditCount { total: n }) = answer {
                total = n;
            }
        }
        println!(
            "  console: filter {words:?} ({label}) first page: p50 {:.1} ms, p99 {:.1} ms ({found} shown); total {total} in p50 {:.1} ms, p99 {:.1} ms",
            quantile_ms(&mut lat, 0.5),
            quantile_ms(&mut lat, 0.99),
            quantile_ms(&mut total_lat, 0.5),
            quantile_ms(&mut total_lat, 0.99)
        );
    }
    println!(
        "  memory:  RSS {} MB (sandbox and seed {} MB before the engine started)",
        rss_kb() / 1024,
        rss_before / 1024
    );
    engine.shutdown().await;
    sandbox.shutdown().await;
    Ok(())
}

/// Finished catalog jobs with their synced mappings, and audit rows of several kinds
/// spread over 30 days up to now, written in large transactions.
fn seed_history(dir: &std::path::Path, jobs: usize, audit: usize) -> anyhow::Result<()> {
    let store = crate::store::Store::open(dir)?;
    let now = crate::store::now_ms();
    store.seed_history(jobs, audit, now)?;
    // The full sync is over: the engine starts idle.
    store.set_cursor(
        "catalog.full_sync",
        &serde_json::json!({"after": null, "pages": jobs / 100 + 1, "listed": jobs, "done": true})
            .to_string(),
    )?;
    Ok(())
}

/// Clock ticks per second of `/proc/self/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU of this process so far, in clock ticks (0 off Linux).
fn cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is field 3,
    // utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Resident set size of this process in kB (0 off Linux).
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
