//! `syncctl bench catalog`: the engine's full-sync throughput against a zero-latency,
//! unlimited sandbox, next to the raw request rate the same HTTP client gets from the
//! same sandbox at the same concurrency. Figures are printed, never asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::app;
use crate::config::Config;
use crate::sandbox::SandboxOptions;

pub async fn catalog(products: usize, workers: usize, seed: u64) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("syncctl-bench-")
        .tempdir()?;
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse()?;
    config.catalog.workers = workers;
    config.catalog.reconcile_interval_secs = 3600;
    let opts = SandboxOptions {
        products,
        seed,
        latency_ms: 0,
        change_interval_ms: 0,
        dir: None,
        webhook_url: None,
        faults: Default::default(),
    };
    let sandbox = app::start_sandbox(&opts, app::bind("127.0.0.1:0".parse()?, false).await?, 0)?;
    app::fill_from_sandbox(&mut config, &sandbox.sandbox, sandbox.addr);
    let listener = app::bind(config.server.listen, false).await?;

    println!(
        "syncctl bench catalog: {products} products, {workers} workers, sandbox latency 0, no limits"
    );
    let started = Instant::now();
    let mut engine = crate::engine::start(crate::engine::EngineOptions {
        config,
        data_dir: tmp.path().to_owned(),
        mode: crate::engine::Mode::Sandbox,
        listener,
    })
    .await?;
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
    let elapsed = started.elapsed();
    let stats = sandbox.sandbox.stats();
    engine.shutdown().await;
    let items_per_sec = products as f64 / elapsed.as_secs_f64();
    let qb_requests = stats["quickbooks"]["requests"].as_u64().unwrap_or(0);
    let stripe_requests = stats["stripe"]["requests"].as_u64().unwrap_or(0);
    println!(
        "  engine:  {products} items in {:.2} s = {items_per_sec:.0} items/s",
        elapsed.as_secs_f64()
    );
    println!(
        "           {qb_requests} QuickBooks + {stripe_requests} Stripe requests ({:.2} QuickBooks requests per item), duplicate names {}",
        qb_requests as f64 / products as f64,
        stats["quickbooks"]["duplicate_names"]
    );

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
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (http, url, token, count) = (http.clone(), url.clone(), token.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let q = format!(
                    "select * from Item where Name = 'bench {w} {i}' and Active in (true, false)"
                );
                if http
                    .get(&url)
                    .bearer_auth(&token)
                    .query(&[("query", q.as_str()), ("minorversion", "75")])
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .is_ok()
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let load_started = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let raw = count.load(Ordering::Relaxed) as f64 / load_started.elapsed().as_secs_f64();
    println!("  raw:     {raw:.0} requests/s from the same client at concurrency {workers}");
    println!(
        "  ratio:   items/s ÷ raw requests/s = {:.2} (each new item needs ≥ 2 QuickBooks requests, so ≤ 0.5 is the ceiling)",
        items_per_sec / raw
    );
    sandbox.shutdown().await;
    Ok(())
}
