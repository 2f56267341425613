//! `syncctl bench quota`: what a sync costs of QuickBooks' quota, on the real quota's
//! shape scaled in time (×`scale`: 500 × scale requests a minute, 40 × scale batches a
//! minute, 10 in flight, a pushback of 60 / scale seconds, 200 / scale ms of latency):
//!
//! 1. into an empty company: requests, batch requests and quota units per product,
//!    throttled %, and the minutes 10,000 products take at the real quota;
//! 2. into a company that already holds every Item unchanged (a fresh engine, no
//!    mapping): quota units per product;
//! 3. a `kill -9` of an engine process at full rate, then a restart at once: seconds
//!    from the restart to the next Item, and 429s after it;
//! 4. a total outage at full rate: seconds until the circuit opens, and the requests
//!    that reached the dead service;
//! 5. an engine limit 20 % above the company's quota (600/min against 500/min):
//!    Items/s as a share of the same run with the limit set right.
//!
//! Figures are printed, never asserted.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{engine_on, synced};
use crate::sandbox::SandboxServer;

/// QuickBooks' published figures, per company.
const REAL_PER_MIN: f64 = 500.0;
const REAL_BATCHES_PER_MIN: f64 = 40.0;
const REAL_PUSHBACK_SECS: u64 = 60;
const REAL_LATENCY_MS: u64 = 200;

struct Shape {
    scale: u32,
}

impl Shape {
    fn per_min(&self) -> u32 {
        500 * self.scale
    }
    fn pushback_secs(&self) -> u64 {
        (REAL_PUSHBACK_SECS / u64::from(self.scale)).max(1)
    }
    fn latency_ms(&self) -> u64 {
        REAL_LATENCY_MS / u64::from(self.scale)
    }

    /// A sandbox of `products` holding QuickBooks to this shape.
    async fn sandbox(&self, products: usize, seed: u64) -> anyhow::Result<SandboxServer> {
        let mut faults = std::collections::BTreeMap::new();
        faults.insert(
            "quickbooks".to_owned(),
            crate::protocol::FaultSettings {
                rate_limit_per_min: self.per_min(),
                max_concurrent: 10,
                latency_ms: self.latency_ms(),
                ..Default::default()
            },
        );
        super::sandbox_with(products, seed, faults).await
    }

    /// The engine's settings for this shape: the quota as published (or `limit_per_min`).
    fn tune(&self, c: &mut crate::config::Config, limit_per_min: u32) {
        c.quickbooks.rate_limit_per_min = limit_per_min;
        c.quickbooks.max_concurrent = 10;
        c.quickbooks.throttle_pause_secs = self.pushback_secs();
    }
}

fn qb(s: &Value, key: &str) -> u64 {
    s["quickbooks"][key].as_u64().unwrap_or(0)
}

/// What QuickBooks saw between two of the sandbox's stats.
struct Spent {
    requests: u64,
    batches: u64,
    units: u64,
    throttled: u64,
    items: u64,
    errors: u64,
}

fn spent(before: &Value, after: &Value) -> Spent {
    let d = |k: &str| qb(after, k).saturating_sub(qb(before, k));
    Spent {
        requests: d("requests"),
        batches: d("batch_requests"),
        units: d("quota_units"),
        throttled: d("throttled"),
        items: d("items_total"),
        errors: d("errors_injected"),
    }
}

/// Minutes 10,000 products take at the real quota with what `products` cost.
fn projected_minutes(s: &Spent, products: usize) -> f64 {
    let per = 10_000.0 / products.max(1) as f64;
    (s.units as f64 * per / REAL_PER_MIN).max(s.batches as f64 * per / REAL_BATCHES_PER_MIN)
}

fn print_costs(label: &str, s: &Spent, products: usize, secs: f64) {
    let p = products.max(1) as f64;
    println!(
        "  {label}: {products} products in {secs:.1} s; per product {:.3} HTTP requests, {:.4} batch requests, {:.3} quota units; throttled {} ({:.2} %); 10,000 at the real quota ≈ {:.1} min",
        s.requests as f64 / p,
        s.batches as f64 / p,
        s.units as f64 / p,
        s.throttled,
        s.throttled as f64 * 100.0 / s.requests.max(1) as f64,
        projected_minutes(s, products)
    );
}

pub async fn quota(products: usize, scale: u32, seed: u64) -> anyhow::Result<()> {
    anyhow::ensure!(scale >= 1, "--scale must be at least 1");
    let shape = Shape { scale };
    println!(
        "syncctl bench quota: QuickBooks' quota ×{scale}: {}/min, {}/min batches, 10 in flight, {} s pushback, {} ms latency",
        shape.per_min(),
        crate::connectors::quickbooks::batch_limit_per_min(shape.per_min()),
        shape.pushback_secs(),
        shape.latency_ms()
    );
    first_sync(&shape, products, seed).await?;
    restart_stall(&shape, products.min(3000), seed + 1).await?;
    outage(&shape, products.min(3000), seed + 2).await?;
    over_the_limit(&shape, products.min(6000), seed + 3).await?;
    Ok(())
}

/// 1 and 2: into an empty company, then a fresh engine into the company it filled.
async fn first_sync(shape: &Shape, products: usize, seed: u64) -> anyhow::Result<()> {
    let sandbox = shape.sandbox(products, seed).await?;
    let sb = sandbox.sandbox.clone();
    for (label, note) in [
        ("empty company", ""),
        (
            "company holding every Item",
            " (a fresh engine, no mapping)",
        ),
    ] {
        let tmp = super::scratch()?;
        let before = sb.stats();
        let started = Instant::now();
        let mut engine =
            engine_on(&sandbox, tmp.path(), |c| shape.tune(c, shape.per_min())).await?;
        synced(&engine, products).await?;
        let secs = started.elapsed().as_secs_f64();
        engine.shutdown().await;
        let after = sb.stats();
        print_costs(
            &format!("{label}{note}"),
            &spent(&before, &after),
            products,
            secs,
        );
    }
    println!(
        "  Items: {}, duplicate names {}",
        qb(&sb.stats(), "items_total"),
        sb.stats()["quickbooks"]["duplicate_names"]
    );
    Ok(())
}

/// 3: an engine process at full rate, `kill -9`, restarted at once.
async fn restart_stall(shape: &Shape, products: usize, seed: u64) -> anyhow::Result<()> {
    let sandbox = shape.sandbox(products, seed).await?;
    let sb = sandbox.sandbox.clone();
    let tmp = super::scratch()?;
    let config = tmp.path().join("engine.toml");
    let text = crate::connectors::http_client()?
        .get(format!("{}/_sandbox/config", sandbox.base_url()))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let text = set_key(
        &text,
        "quickbooks",
        "rate_limit_per_min",
        &shape.per_min().to_string(),
    );
    let text = set_key(&text, "quickbooks", "max_concurrent", "10");
    let text = set_key(
        &text,
        "quickbooks",
        "throttle_pause_secs",
        &shape.pushback_secs().to_string(),
    );
    std::fs::write(
        &config,
        format!(
            "{text}\n[server]\nlisten = \"127.0.0.1:0\"\n\n[catalog]\nreconcile_interval_secs = 3600\n"
        ),
    )?;
    let data = tmp.path().join("data");
    let spawn = || -> anyhow::Result<std::process::Child> {
        Ok(std::process::Command::new(std::env::current_exe()?)
            .args(["run", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?)
    };
    let mut engine = spawn()?;
    let wait_items = |n: u64, within: Duration| {
        let sb = sb.clone();
        async move {
            let deadline = Instant::now() + within;
            loop {
                let s = sb.stats();
                if qb(&s, "items_total") >= n {
                    return Ok::<_, anyhow::Error>(s);
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "fewer than {n} Items after {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let third = products as u64 / 3;
    let result = async {
        wait_items(third, Duration::from_secs(120)).await?;
        engine.kill()?;
        engine.wait()?;
        let before = sb.stats();
        let restarted = Instant::now();
        engine = spawn()?;
        let next = qb(&before, "items_total") + 1;
        wait_items(next, Duration::from_secs(120)).await?;
        let stall = restarted.elapsed().as_secs_f64();
        // Ten seconds of work after the restart, or the rest of the catalog.
        let watch = Instant::now();
        while watch.elapsed() < Duration::from_secs(10) && qb(&sb.stats(), "items_total") < products as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = spent(&before, &sb.stats());
        println!(
            "  restart after kill -9 at full rate: next Item {stall:.2} s after the restart (process start included); {} throttled in the {:.0} s after it ({} Items)",
            s.throttled,
            restarted.elapsed().as_secs_f64(),
            s.items
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = engine.kill();
    let _ = engine.wait();
    result
}

/// Replaces (or adds) `key = value` in `[section]` of a TOML text.
fn set_key(text: &str, section: &str, key: &str, value: &str) -> String {
    let header = format!("[{section}]");
    let mut out = Vec::new();
    let mut inside = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if inside && !done {
                out.push(format!("{key} = {value}"));
                done = true;
            }
            inside = t == header;
        }
        if inside && t.split('=').next().is_some_and(|k| k.trim() == key) {
            if !done {
                out.push(format!("{key} = {value}"));
                done = true;
            }
            continue;
        }
        out.push(line.to_owned());
    }
    if !done {
        if !inside {
            out.push(header);
        }
        out.push(format!("{key} = {value}"));
    }
    out.join("\n") + "\n"
}

/// 4: a total outage at full rate.
async fn outage(shape: &Shape, products: usize, seed: u64) -> anyhow::Result<()> {
    let sandbox = shape.sandbox(products, seed).await?;
    let sb = sandbox.sandbox.clone();
    let tmp = super::scratch()?;
    // Single calls at full rate: the case that sends most to a dead service.
    let mut engine = engine_on(&sandbox, tmp.path(), |c| {
        shape.tune(c, shape.per_min());
        c.catalog.claim_batch_max = 1;
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while qb(&sb.stats(), "items_total") < products as u64 / 3 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sync stalled before the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let patch = |outage: bool| crate::sandbox::faults::FaultPatch {
        service: "quickbooks".into(),
        outage: Some(outage),
        ..Default::default()
    };
    let before = sb.stats();
    sb.faults.patch(&patch(true)).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let opened = loop {
        let open =
            engine.snapshot.borrow().downstreams.iter().any(|d| {
                d.name == "quickbooks" && d.breaker.state == crate::resilience::State::Open
            });
        if open {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the breaker did not open within 60 s of the outage"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let at_open = sb.stats();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let five = sb.stats();
    sb.faults.patch(&patch(false)).map_err(anyhow::Error::msg)?;
    println!(
        "  total outage at full rate: circuit open {:.2} s after it began, {} requests reached the dead service by then, {} in the first 5 s open",
        opened.as_secs_f64(),
        spent(&before, &at_open).errors,
        spent(&at_open, &five).errors
    );
    engine.shutdown().await;
    Ok(())
}

/// 5: the engine's limit set 20 % above the company's quota, against the limit set
/// right, in single calls (a steady trickle of changes: the per-request shape of the
/// quota is met at once, where a batched full sync meets only the minute's).
async fn over_the_limit(shape: &Shape, products: usize, seed: u64) -> anyhow::Result<()> {
    let mut rates = vec![];
    for (label, limit) in [
        ("limit = quota", shape.per_min()),
        ("limit = 1.2 × quota", shape.per_min() * 6 / 5),
    ] {
        let sandbox = shape.sandbox(products, seed).await?;
        let sb = sandbox.sandbox.clone();
        let tmp = super::scratch()?;
        let mut engine = engine_on(&sandbox, tmp.path(), |c| {
            shape.tune(c, limit);
            c.catalog.claim_batch_max = 1;
        })
        .await?;
        let at = |n: u64| {
            let sb = sb.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(600);
                loop {
                    let s = sb.stats();
                    if qb(&s, "items_total") >= n {
                        return Ok::<_, anyhow::Error>((Instant::now(), s));
                    }
                    anyhow::ensure!(Instant::now() < deadline, "stalled below {n} Items");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let (t0, s0) = at(products as u64 / 10).await?;
        let (t1, s1) = at(products as u64 * 9 / 10).await?;
        let secs = (t1 - t0).as_secs_f64();
        let s = spent(&s0, &s1);
        let rate = s.items as f64 / secs;
        let minutes = secs / 60.0;
        println!(
            "  {label} ({limit}/min against {}/min): {rate:.1} Items/s over {secs:.0} s, {:.1} % of the quota used, {} throttled ({:.1} a minute)",
            shape.per_min(),
            (s.units - s.throttled) as f64 / secs * 60.0 * 100.0 / f64::from(shape.per_min()),
            s.throttled,
            s.throttled as f64 / minutes.max(1e-9)
        );
        rates.push(rate);
        engine.shutdown().await;
    }
    println!(
        "  share of the right-limit run's Items/s with the limit 20 % too high: {:.2}",
        rates[1] / rates[0].max(1e-9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn set_key_replaces_or_adds_within_its_section_only() {
        let t = "[a]\nx = 1\n[quickbooks]\nrate_limit_per_min = 500\nx = 2\n[b]\ny = 3\n";
        let out = super::set_key(t, "quickbooks", "rate_limit_per_min", "6000");
        assert!(
            out.contains("[quickbooks]\nrate_limit_per_min = 6000\nx = 2"),
            "{out}"
        );
        let out = super::set_key(&out, "quickbooks", "max_concurrent", "10");
        assert!(out.contains("x = 2\nmax_concurrent = 10\n[b]"), "{out}");
        assert!(out.starts_with("[a]\nx = 1\n"), "{out}");
        let out = super::set_key("[a]\n", "quickbooks", "k", "v");
        assert_eq!(out, "[a]\n[quickbooks]\nk = v\n");
    }
}
