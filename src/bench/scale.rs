//! `syncctl bench scale`: total items/s of 1, 2 and 3 engines (separate `syncctl run`
//! processes of this executable) sharing one throwaway PostgreSQL, against one sandbox
//! of several companies, and the Postgres round trips each item costs (counted by a
//! loopback proxy every engine reaches the database through).
//!
//! Each engine is held to a ceiling of its own, as a box is by its CPU: a few catalog
//! workers per company against a sandbox that answers after `latency_ms`. The
//! companies' quotas are set above what 3 engines ask, so the sandbox is not the
//! ceiling (a company throttled says so): what adding an engine adds is what the
//! shared store lets through. On one machine the engines, the sandbox and Postgres
//! share its cores: the CPU column says when the machine, not the design, is the limit.
//!
//! Figures are printed, never asserted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::sandbox::{SandboxOptions, SandboxServer};
use crate::store::pg_throwaway;

/// What `syncctl bench scale` runs.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    pub companies: usize,
    /// Products of each company.
    pub products: usize,
    /// Each company's QuickBooks quota (requests a minute).
    pub quota_per_min: u32,
    /// The sandbox's latency per request.
    pub latency_ms: u64,
    /// Catalog workers per company in each engine.
    pub workers: usize,
    /// Products claimed (and written) together at most.
    pub claim_batch_max: u32,
    /// The engine counts to run, in order.
    pub engines: Vec<usize>,
    pub seed: u64,
}

/// One round: `engines` engines over a fresh sandbox and a fresh database.
struct Round {
    engines: usize,
    items: u64,
    secs: f64,
    /// Postgres round trips of the whole round, per Item written.
    trips_per_item: f64,
    engine_cpu_ms: f64,
    /// The machine's cores busy over the measured span, of all (engines, sandbox,
    /// Postgres and everything else): near 1 the machine is the limit.
    machine_busy: Option<f64>,
    wall_secs: f64,
    throttled: u64,
}

impl Round {
    fn items_per_sec(&self) -> f64 {
        self.items as f64 / self.secs.max(1e-9)
    }
}

pub async fn scale(opts: ScaleOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        (2..=crate::sandbox::MAX_COMPANIES).contains(&opts.companies),
        "--companies must be 2 to {}",
        crate::sandbox::MAX_COMPANIES
    );
    anyhow::ensure!(
        !opts.engines.is_empty() && opts.engines.iter().all(|n| (1..=16).contains(n)),
        "--engines: counts of 1 to 16"
    );
    crate::connectors::install_crypto();
    let bin = pg_throwaway::find_bin_dir().context(
        "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): \
         install the `postgresql` package",
    )?;
    let pg = tokio::task::spawn_blocking(move || pg_throwaway::Postgres::start(&bin)).await??;
    let exe = std::env::current_exe().context("this executable's path")?;
    println!(
        "bench scale: {} companies x {} products, quota {}/min a company, {} ms a request, \
         {} workers a company per engine, claims of <= {}; Postgres {} on 127.0.0.1:{}",
        opts.companies,
        opts.products,
        opts.quota_per_min,
        opts.latency_ms,
        opts.workers,
        opts.claim_batch_max,
        pg.dir().display(),
        pg.port()
    );
    let mut rounds = Vec::new();
    for &n in &opts.engines {
        let round = self::round(&opts, &pg, &exe, n).await?;
        println!(
            "  {n} engine(s): {:.0} items/s ({} items in {:.1} s measured, {:.1} s in all), \
             {:.2} Postgres round trips an item, engine CPU {:.3} ms an item, machine {} busy, {} throttled",
            round.items_per_sec(),
            round.items,
            round.secs,
            round.wall_secs,
            round.trips_per_item,
            round.engine_cpu_ms / round.items.max(1) as f64,
            busy(round.machine_busy),
            round.throttled,
        );
        rounds.push(round);
    }
    let base = rounds
        .iter()
        .find(|r| r.engines == 1)
        .map(Round::items_per_sec);
    println!();
    println!(
        "| engines | items/s | x 1 engine | scaling vs linear | PG round trips/item | engine CPU ms/item | machine CPU busy | 429s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rounds {
        let (times, linear) = match base {
            Some(b) if b > 0.0 => {
                let x = r.items_per_sec() / b;
                (format!("{x:.2}"), format!("{:.2}", x / r.engines as f64))
            }
            _ => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {:.0} | {times} | {linear} | {:.2} | {:.3} | {} | {} |",
            r.engines,
            r.items_per_sec(),
            r.trips_per_item,
            r.engine_cpu_ms / r.items.max(1) as f64,
            busy(r.machine_busy),
            r.throttled,
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\n(this machine: {cores} cores for the engines, the sandbox and Postgres together; \
         near 100 % busy, the machine is the limit, not the store)"
    );
    Ok(())
}

fn busy(share: Option<f64>) -> String {
    share.map_or_else(|| "-".into(), |b| format!("{:.0} %", b * 100.0))
}

/// The machine's CPU time so far (jiffies): busy, and in all (`/proc/stat`'s first
/// line; idle and waiting for I/O are not busy). None off Linux.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let all: u64 = n.iter().take(8).sum();
    let idle = n.get(3)? + n.get(4)?;
    Some((all - idle, all))
}

/// A sandbox of `opts.companies` companies on a runtime of its own (its threads apart
/// from the bench's waits).
async fn sandbox(opts: &ScaleOptions) -> anyhow::Result<(SandboxServer, tokio::runtime::Runtime)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-sandbox")
        .enable_all()
        .build()?;
    let mut faults = std::collections::BTreeMap::new();
    faults.insert(
        "quickbooks".to_owned(),
        crate::protocol::FaultSettings {
            rate_limit_per_min: opts.quota_per_min,
            max_concurrent: 1000,
            latency_ms: opts.latency_ms,
            ..Default::default()
        },
    );
    faults.insert(
        "stripe".to_owned(),
        crate::protocol::FaultSettings {
            rate_limit_per_min: 600_000,
            max_concurrent: 1000,
            ..Default::default()
        },
    );
    let sandbox_opts = SandboxOptions {
        products: opts.products,
        seed: opts.seed,
        faults,
        companies: opts.companies,
        ..Default::default()
    };
    let sb = rt
        .spawn(async move {
            crate::app::start_sandbox(
                &sandbox_opts,
                crate::app::bind("127.0.0.1:0".parse()?, false).await?,
                0,
            )
        })
        .await??;
    Ok((sb, rt))
}

/// The sandbox's config as it is now (its refresh tokens as last rotated), catalog
/// only, on the store at `store_url`, with the bench's engine settings.
async fn config(
    opts: &ScaleOptions,
    sb: &SandboxServer,
    store_url: &str,
) -> anyhow::Result<String> {
    let printed = reqwest::get(format!("http://{}/_sandbox/config", sb.addr))
        .await?
        .text()
        .await?;
    let mut doc: toml_edit::DocumentMut = printed.parse().context("the sandbox's config")?;
    doc.remove("alegra");
    if let Some(companies) = doc
        .get_mut("companies")
        .and_then(|c| c.as_array_of_tables_mut())
    {
        for c in companies.iter_mut() {
            c.remove("alegra");
        }
    }
    doc["server"]["listen"] = toml_edit::value("127.0.0.1:0");
    doc["store"]["url"] = toml_edit::value(store_url);
    let catalog = &mut doc["catalog"];
    catalog["workers"] = toml_edit::value(opts.workers as i64);
    catalog["autoscale"] = toml_edit::value(false);
    catalog["claim_batch_max"] = toml_edit::value(i64::from(opts.claim_batch_max));
    catalog["reconcile_interval_secs"] = toml_edit::value(3600);
    Ok(doc.to_string())
}

fn refresh_tokens(config: &str) -> Vec<String> {
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("refresh_token = \""))
        .map(|t| t.trim_end_matches('"').to_owned())
        .collect()
}

/// An engine process; killed (SIGKILL) when dropped.
struct Engine(std::process::Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Engine {
    /// CPU seconds the process has used (0 off Linux).
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return 0.0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        (n(11) + n(12)) as f64 / 100.0
    }
}

/// Starts `syncctl run` on `home/name` with `config`; waits until it serves.
fn start_engine(exe: &Path, home: &Path, name: &str, config: &str) -> anyhow::Result<Engine> {
    let data = home.join(name);
    let path = home.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let log = std::fs::File::create(home.join(format!("{name}.log")))?;
    let mut engine = Engine(
        Command::new(exe)
            .args(["run", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(&data)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("xdg"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting an engine")?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !data.join("control.json").exists() {
        if let Some(status) = engine.0.try_wait()? {
            anyhow::bail!(
                "engine {name} exited ({status}); its log:\n{}",
                std::fs::read_to_string(home.join(format!("{name}.log"))).unwrap_or_default()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "engine {name} did not start in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(engine)
}

/// Items in every company's QuickBooks, and requests throttled, now.
async fn progress(sb: &SandboxServer) -> anyhow::Result<(u64, u64)> {
    let stats: Value = reqwest::get(format!("http://{}/_sandbox/stats", sb.addr))
        .await?
        .json()
        .await?;
    let qb = |key: &str| stats["quickbooks"][key].as_u64().unwrap_or(0);
    Ok((qb("items_total"), qb("throttled")))
}

async fn round(
    opts: &ScaleOptions,
    pg: &pg_throwaway::Postgres,
    exe: &Path,
    n: usize,
) -> anyhow::Result<Round> {
    let (sb, sandbox_rt) = sandbox(opts).await?;
    let database = tokio::task::block_in_place(|| pg.database())?;
    let (proxy, trips) = pg_throwaway::counting_proxy(pg.port()).await?;
    let store_url = database.replace(&format!(":{}/", pg.port()), &format!(":{proxy}/"));
    let home = tempfile::Builder::new()
        .prefix("syncctl-bench-scale-")
        .tempdir()?;
    let total = (opts.companies * opts.products) as u64;
    let started = Instant::now();
    let mut engines = Vec::new();
    for i in 0..n {
        let now = config(opts, &sb, &store_url).await?;
        let before = refresh_tokens(&now);
        let name = format!("engine{}", i + 1);
        engines.push(tokio::task::block_in_place(|| {
            start_engine(exe, home.path(), &name, &now)
        })?);
        // Each engine refreshes every company's token (the sandbox rotates them on
        // use): the next engine is given the rotated ones.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rotated = refresh_tokens(&config(opts, &sb, &store_url).await?);
            if rotated.iter().zip(&before).all(|(a, b)| a != b) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} did not refresh every company's token in 60 s; its log:\n{}",
                std::fs::read_to_string(home.path().join(format!("{name}.log")))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Measured from the moment every engine runs to 90 % of the Items (the tail,
    // where companies finish one by one, is not the engines' rate).
    let (from_items, _) = progress(&sb).await?;
    let from = Instant::now();
    let cpu_from: f64 = engines.iter().map(Engine::cpu_secs).sum();
    let machine_from = machine_jiffies();
    let goal = total * 9 / 10;
    let mut last = (from_items, Instant::now());
    let (to_items, to) = loop {
        let (items, _) = progress(&sb).await?;
        if items >= goal {
            break (items, Instant::now());
        }
        if items > last.0 {
            last = (items, Instant::now());
        }
        anyhow::ensure!(
            last.1.elapsed() < Duration::from_secs(120),
            "no Item written for 120 s ({items} of {total}); the first engine's log:\n{}",
            std::fs::read_to_string(home.path().join("engine1.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu_to: f64 = engines.iter().map(Engine::cpu_secs).sum();
    let machine_busy = match (machine_from, machine_jiffies()) {
        (Some((b0, a0)), Some((b1, a1))) if a1 > a0 => {
            Some(b1.saturating_sub(b0) as f64 / (a1 - a0) as f64)
        }
        _ => None,
    };
    let items = to_items.saturating_sub(from_items);
    // The rest, so the round trips are those of every item.
    loop {
        let (items, _) = progress(&sb).await?;
        if items >= total {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "not done in 30 minutes ({items} of {total})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall_secs = started.elapsed().as_secs_f64();
    let round_trips = trips.load(Ordering::SeqCst);
    let (_, throttled) = progress(&sb).await?;
    drop(engines);
    drop(sb);
    sandbox_rt.shutdown_background();
    Ok(Round {
        engines: n,
        items,
        secs: to.duration_since(from).as_secs_f64(),
        trips_per_item: round_trips as f64 / total.max(1) as f64,
        engine_cpu_ms: (cpu_to - cpu_from) * 1000.0,
        machine_busy,
        wall_secs,
        throttled,
    })
}
