//! `syncctl soak`: the engine and a standalone sandbox, each its own process of this
//! executable (`syncctl run`, `syncctl sandbox --listen …`), through a list of fault
//! profiles — QuickBooks errors, resets, hanging requests, an outage mid-sync, Alegra
//! and DIAN outages with invoices arriving, 429 storms, and `kill -9` of the engine at
//! seeded random moments while both pipelines (catalog and invoices) work. At the end of
//! each profile the sandbox is checked: every product exactly one Item, every paid
//! invoice one document stamped (transmitted to DIAN) exactly once and accepted, and
//! nothing left FAILED at the engine that a retry would fix. A table is printed; the
//! command fails when any profile does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::resilience::Rng;

/// What `syncctl soak` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The small version (few products, short outages, 2 kill cycles, scaled time).
    pub quick: bool,
    /// Profiles by name (empty: every one).
    pub profiles: Vec<String>,
    pub seed: u64,
    pub products: Option<usize>,
    pub invoices: Option<usize>,
    /// Kill cycles of the `kill-9` profile (the others take 2 each in the full run).
    pub kills: Option<u32>,
    /// Keep every profile's directory (logs, data dirs), not only a failed one's.
    pub keep: bool,
    /// Proves the checks: after each profile completes and before it is checked, a
    /// second writer creates a second Item for one product at QuickBooks.
    pub sabotage: bool,
}

/// The sizes and times of one run, full or quick.
#[derive(Debug, Clone)]
struct Scale {
    products: usize,
    invoices: usize,
    /// Invoices paid every this often (1–3 at a time) until `invoices` are.
    invoice_every: Duration,
    outage: Duration,
    storm: Duration,
    /// Kill cycles of the `kill-9` profile, and of each other profile.
    kills: u32,
    kills_elsewhere: u32,
    /// The engine's waits, scaled in the quick run (None: its defaults): the
    /// breaker's open wait and the pause after a 429, in seconds.
    engine_waits: Option<u64>,
    /// A profile not complete this long after it began has failed.
    deadline: Duration,
    latency_ms: u64,
    retry_schedule_secs: &'static str,
    tick: Duration,
}

impl Scale {
    fn new(opts: &Options) -> Self {
        let mut s = if opts.quick {
            Self {
                products: 60,
                invoices: 8,
                invoice_every: Duration::from_millis(250),
                outage: Duration::from_secs(2),
                storm: Duration::from_secs(2),
                kills: 2,
                kills_elsewhere: 0,
                engine_waits: Some(2),
                deadline: Duration::from_secs(60),
                latency_ms: 30,
                retry_schedule_secs: "[1, 1, 2, 4]",
                tick: Duration::from_millis(100),
            }
        } else {
            Self {
                products: 1000,
                invoices: 150,
                invoice_every: Duration::from_millis(400),
                outage: Duration::from_secs(30),
                storm: Duration::from_secs(20),
                kills: 12,
                kills_elsewhere: 2,
                engine_waits: None,
                deadline: Duration::from_secs(900),
                latency_ms: 20,
                retry_schedule_secs: "[2, 5, 15, 30, 60]",
                tick: Duration::from_millis(200),
            }
        };
        if let Some(p) = opts.products {
            s.products = p.max(1);
        }
        if let Some(i) = opts.invoices {
            s.invoices = i;
        }
        if let Some(k) = opts.kills {
            s.kills = k;
        }
        s
    }
}

/// Faults that come and go: set `on` when the catalog is a third done, `off` after
/// `len`. `dead` names the services that answer nothing useful meanwhile.
#[derive(Debug, Clone)]
struct Window {
    on: Vec<Value>,
    off: Vec<Value>,
    len: Duration,
    dead: Vec<&'static str>,
}

#[derive(Debug, Clone)]
struct Profile {
    name: &'static str,
    about: &'static str,
    /// Faults from the start to the end.
    steady: Vec<Value>,
    window: Option<Window>,
    kills: u32,
}

fn patch(service: &str, fields: Value) -> Value {
    let mut v = fields;
    v["service"] = json!(service);
    v
}

fn outage(service: &'static str, len: Duration) -> Window {
    Window {
        on: vec![patch(service, json!({"outage": true}))],
        off: vec![patch(service, json!({"outage": false}))],
        len,
        dead: vec![service],
    }
}

/// The profiles' names, in the order they run.
pub fn profile_names() -> Vec<&'static str> {
    profiles(&Scale::new(&Options {
        quick: true,
        profiles: vec![],
        seed: 0,
        products: None,
        invoices: None,
        kills: None,
        keep: false,
        sabotage: false,
    }))
    .iter()
    .map(|p| p.name)
    .collect()
}

/// Every profile, in the order they run.
fn profiles(scale: &Scale) -> Vec<Profile> {
    let k = scale.kills_elsewhere;
    vec![
        Profile {
            name: "qb-errors",
            about: "QuickBooks answers 30 % of requests with 500",
            steady: vec![patch("quickbooks", json!({"error_rate": 0.3}))],
            window: None,
            kills: k,
        },
        Profile {
            name: "qb-resets",
            about: "QuickBooks cuts 20 % of connections mid-response",
            steady: vec![patch("quickbooks", json!({"reset_rate": 0.2}))],
            window: None,
            kills: k,
        },
        Profile {
            name: "qb-hangs",
            about: "20 % of QuickBooks requests hang (never answered)",
            steady: vec![patch("quickbooks", json!({"timeout_rate": 0.2}))],
            window: None,
            kills: k,
        },
        Profile {
            name: "qb-outage",
            about: "QuickBooks down mid-sync",
            steady: vec![],
            window: Some(outage("quickbooks", scale.outage)),
            kills: k,
        },
        Profile {
            name: "alegra-outage",
            about: "Alegra down while invoices arrive",
            steady: vec![],
            window: Some(outage("alegra", scale.outage)),
            kills: k,
        },
        Profile {
            name: "dian-outage",
            about: "DIAN down (contingency) while invoices arrive",
            steady: vec![],
            window: Some(outage("dian", scale.outage)),
            kills: k,
        },
        Profile {
            name: "429-storm",
            about: "quotas far below what the engine was told: 429s from every service",
            steady: vec![],
            window: Some(Window {
                on: vec![
                    patch(
                        "quickbooks",
                        json!({"rate_limit_per_min": 120, "max_concurrent": 2}),
                    ),
                    patch("stripe", json!({"rate_limit_per_min": 120})),
                    patch("alegra", json!({"rate_limit_per_min": 60})),
                ],
                off: vec![
                    patch(
                        "quickbooks",
                        json!({"rate_limit_per_min": QB_RATE, "max_concurrent": QB_CONCURRENT}),
                    ),
                    patch("stripe", json!({"rate_limit_per_min": 0})),
                    patch("alegra", json!({"rate_limit_per_min": ALEGRA_RATE})),
                ],
                len: scale.storm,
                dead: vec![],
            }),
            kills: k,
        },
        Profile {
            name: "kill-9",
            about: "the engine killed with SIGKILL at random moments, restarted at once",
            steady: vec![],
            window: None,
            kills: scale.kills,
        },
    ]
}

/// The sandbox's quotas (the engine is told them), as `syncctl demo` has them.
const QB_RATE: u32 = 6000;
const QB_CONCURRENT: u32 = 10;
const ALEGRA_RATE: u32 = 1500;

/// One profile's line of the table.
#[derive(Debug, Default)]
struct Row {
    name: String,
    completed: bool,
    secs: f64,
    wasted: Option<u64>,
    throttled: u64,
    duplicates: u64,
    lost: u64,
    stall: Duration,
    /// When the longest stall began and what was outstanding.
    stall_at: String,
    kills: u32,
    failures: Vec<String>,
    dir: Option<PathBuf>,
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc(Child);

impl Proc {
    fn kill(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `args` of this executable, its output appended to `log`.
fn spawn(exe: &Path, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    Ok(Proc(child))
}

/// Runs the profiles `opts` names; prints the table. `Ok(true)` when all passed.
pub async fn run(opts: &Options) -> anyhow::Result<bool> {
    let scale = Scale::new(opts);
    let all = profiles(&scale);
    let chosen: Vec<Profile> = if opts.profiles.is_empty() {
        all
    } else {
        let mut out = Vec::new();
        for name in &opts.profiles {
            let p = all.iter().find(|p| p.name == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "--profiles: no profile {name:?} (one of {})",
                    all.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                )
            })?;
            out.push(p.clone());
        }
        out
    };
    let exe = std::env::current_exe()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    println!(
        "syncctl soak{}: {} profile(s), {} products and {} invoices each, seed {}",
        if opts.quick { " --quick" } else { "" },
        chosen.len(),
        scale.products,
        scale.invoices,
        opts.seed
    );
    let mut rows = Vec::new();
    for (i, p) in chosen.iter().enumerate() {
        println!("  {:<14} {}", p.name, p.about);
        let seed = opts.seed.wrapping_add(i as u64 * 7919);
        let row = match soak_profile(&exe, &http, &scale, p, seed, opts).await {
            Ok(r) => r,
            Err(e) => Row {
                name: p.name.to_owned(),
                failures: vec![format!("{e:#}")],
                ..Row::default()
            },
        };
        if !row.failures.is_empty() {
            for f in &row.failures {
                println!("    FAILED: {f}");
            }
        }
        if row.stall >= Duration::from_secs(2) {
            println!(
                "    longest stall {:.1} s {}",
                row.stall.as_secs_f64(),
                row.stall_at
            );
        }
        if let Some(d) = &row.dir {
            println!("    logs and data kept in {}", d.display());
        }
        rows.push(row);
    }
    print!("{}", table(&rows));
    let kills: u32 = rows.iter().map(|r| r.kills).sum();
    let ok = rows.iter().all(|r| r.completed && r.failures.is_empty());
    println!(
        "{}: {} of {} profiles passed; {kills} kill -9 cycles",
        if ok { "PASS" } else { "FAIL" },
        rows.iter()
            .filter(|r| r.completed && r.failures.is_empty())
            .count(),
        rows.len()
    );
    Ok(ok)
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = std::fmt::Write::write_fmt(
        &mut out,
        format_args!(
            "\n| {:<14} | {:<9} | {:>8} | {:>14} | {:>9} | {:>10} | {:>4} | {:>13} | {:>5} |\n|{}|{}|{}|{}|{}|{}|{}|{}|{}|\n",
            "profile",
            "completed",
            "time",
            "wasted on dead",
            "throttled",
            "duplicates",
            "lost",
            "longest stall",
            "kills",
            "-".repeat(16),
            "-".repeat(11),
            "-".repeat(10),
            "-".repeat(16),
            "-".repeat(11),
            "-".repeat(12),
            "-".repeat(6),
            "-".repeat(15),
            "-".repeat(7),
        ),
    );
    for r in rows {
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "| {:<14} | {:<9} | {:>8} | {:>14} | {:>9} | {:>10} | {:>4} | {:>13} | {:>5} |\n",
                r.name,
                if r.completed && r.failures.is_empty() {
                    "yes"
                } else if r.completed {
                    "yes, bad"
                } else {
                    "NO"
                },
                format!("{:.1} s", r.secs),
                r.wasted.map_or_else(|| "-".to_owned(), |w| w.to_string()),
                r.throttled,
                r.duplicates,
                r.lost,
                format!("{:.1} s", r.stall.as_secs_f64()),
                r.kills,
            ),
        );
    }
    out
}

async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let r = http.get(url).send().await?;
    let status = r.status();
    let v: Value = r.json().await?;
    anyhow::ensure!(
        status.is_success() || url.ends_with("/health"),
        "{url}: {status}"
    );
    Ok(v)
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let r = http.post(url).json(body).send().await?;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{url}: {status} {text}");
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// What a tick reads of the sandbox and the engine.
struct Look {
    items: u64,
    accepted: u64,
    invoices: u64,
    engine_done: bool,
}

fn look(stats: &Value, health: Option<&Value>, invoices_expected: u64) -> Look {
    let engine_done = health.is_some_and(|h| {
        let c = &h["catalog"];
        let counts = &h["compliance"]["counts"];
        let validated = n(&counts["VALIDATED"]);
        let others: u64 = counts
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.as_str() != "VALIDATED")
                    .map(|(_, v)| n(v))
                    .sum()
            })
            .unwrap_or(0);
        c["full_sync"]["done"] == true
            && n(&c["queued"]) == 0
            && n(&c["in_flight"]) == 0
            && validated >= invoices_expected
            && others == 0
    });
    Look {
        items: n(&stats["quickbooks"]["items_total"]),
        accepted: n(&stats["alegra"]["accepted"]),
        invoices: n(&stats["stripe"]["invoices_total"]),
        engine_done,
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one profile's setup, run, checks and teardown in order"
)]
async fn soak_profile(
    exe: &Path,
    http: &reqwest::Client,
    scale: &Scale,
    profile: &Profile,
    seed: u64,
    opts: &Options,
) -> anyhow::Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("syncctl-soak-{}-", profile.name))
        .tempdir()?;
    let root = dir.path().to_owned();
    let (sp, ep) = (free_port()?, free_port()?);
    let sandbox_addr = format!("127.0.0.1:{sp}");
    let base = format!("http://{sandbox_addr}");
    let engine_url = format!("http://127.0.0.1:{ep}");
    let sandbox_cfg = root.join("sandbox.toml");
    std::fs::write(
        &sandbox_cfg,
        format!(
            "[sandbox]\nlatency_ms = {}\nchange_interval_ms = 0\n",
            scale.latency_ms
        ),
    )?;
    let products = scale.products.to_string();
    let seed_arg = seed.to_string();
    let webhook = format!("{engine_url}/webhooks/stripe");
    let mut sandbox = spawn(
        exe,
        &[
            "sandbox",
            "--listen",
            &sandbox_addr,
            "--config",
            &sandbox_cfg.to_string_lossy(),
            "--products",
            &products,
            "--seed",
            &seed_arg,
            "--webhook-url",
            &webhook,
        ],
        &root.join("sandbox.log"),
    )?;
    let started = Instant::now();
    let stats_url = format!("{base}/_sandbox/stats");
    loop {
        if get(http, &stats_url).await.is_ok() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the sandbox did not answer within 60 s (see {})",
            root.join("sandbox.log").display()
        );
        anyhow::ensure!(
            matches!(sandbox.0.try_wait(), Ok(None)),
            "the sandbox exited (see {})",
            root.join("sandbox.log").display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The engine config that points at this sandbox, as `--print-config` gives it.
    let printed = http
        .get(format!("{base}/_sandbox/config"))
        .send()
        .await?
        .text()
        .await?;
    let engine_cfg = root.join("engine.toml");
    std::fs::write(&engine_cfg, engine_config(&printed, ep, scale)?)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&engine_cfg, std::fs::Permissions::from_mode(0o600))?;
    }
    let faults_url = format!("{base}/_sandbox/faults");
    for p in &profile.steady {
        post(http, &faults_url, p).await?;
    }
    let engine_dir = root.join("engine");
    let engine_log = root.join("engine.log");
    let cfg_arg = engine_cfg.to_string_lossy().into_owned();
    let dir_arg = engine_dir.to_string_lossy().into_owned();
    let run_args = ["run", "--config", &cfg_arg, "--data-dir", &dir_arg];
    let t0 = Instant::now();
    let mut engine = spawn(exe, &run_args, &engine_log)?;

    // Invoices paid while everything runs: 1–3 every `invoice_every`.
    let created: Arc<Mutex<Vec<String>>> = Arc::default();
    let arrivals = {
        let (http, base, created) = (http.clone(), base.clone(), created.clone());
        let (total, every) = (scale.invoices, scale.invoice_every);
        let mut rng = Rng::new(seed ^ 0x1a7e);
        tokio::spawn(async move {
            let mut made = 0;
            while made < total {
                let count = (1 + (rng.unit() * 3.0) as usize).min(total - made);
                match post(
                    &http,
                    &format!("{base}/_sandbox/stripe/invoices"),
                    &json!({ "count": count }),
                )
                .await
                {
                    Ok(v) => {
                        let ids: Vec<String> = v["created"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default();
                        made += ids.len();
                        if let Ok(mut c) = created.lock() {
                            c.extend(ids);
                        }
                    }
                    Err(e) => eprintln!("soak: paying invoices: {e:#}"),
                }
                tokio::time::sleep(every).await;
            }
        })
    };

    // The kills land when this much work (Items + accepted invoices) is done, each
    // after the restarted engine did some.
    let mut rng = Rng::new(seed);
    let work = (scale.products + scale.invoices) as f64;
    let mut kill_at: Vec<u64> = (0..profile.kills)
        .map(|_| ((0.05 + rng.unit() * 0.65) * work) as u64)
        .collect();
    kill_at.sort_unstable();
    let mut progress_at_start = 0u64;
    let mut kills = 0u32;
    let mut window_at: Option<(Instant, Vec<u64>)> = None;
    let mut window_over = profile.window.is_none();
    let mut wasted = profile.window.as_ref().map(|_| 0u64);
    let mut last_progress = 0u64;
    let mut quiet_since = Instant::now();
    let mut stall = Duration::ZERO;
    let mut stall_at = String::new();
    let mut failures = Vec::new();
    let health_url = format!("{engine_url}/health");
    let dead_requests = |stats: &Value, w: &Window| -> Vec<u64> {
        w.dead
            .iter()
            .map(|s| n(&stats[*s]["requests"]))
            .collect::<Vec<_>>()
    };
    let completed =
        loop {
            tokio::time::sleep(scale.tick).await;
            let now = Instant::now();
            let Ok(stats) = get(http, &stats_url).await else {
                if now - t0 > scale.deadline {
                    failures.push("the sandbox stopped answering".to_owned());
                    break false;
                }
                continue;
            };
            if let Ok(Some(status)) = engine.0.try_wait() {
                failures.push(format!("the engine exited on its own ({status})"));
                break false;
            }
            let health = get(http, &health_url).await.ok();
            let all_paid = arrivals.is_finished();
            let expected = created.lock().map(|c| c.len() as u64).unwrap_or(0);
            let l = look(&stats, health.as_ref(), expected);
            let sandbox_done = l.items >= scale.products as u64 && l.accepted >= l.invoices;
            let outstanding = !sandbox_done;

            // Longest stall: work outstanding, no service dead, and nothing new done.
            let progress = l.items + l.accepted;
            let dead_now = window_at.is_some()
                && !window_over
                && profile.window.as_ref().is_some_and(|w| !w.dead.is_empty());
            if progress > last_progress || !outstanding || dead_now {
                last_progress = progress;
                quiet_since = now;
            }
            if now - quiet_since > stall {
                stall = now - quiet_since;
                stall_at = format!(
                    "from {:.1} s: {} of {} Items, {} of {} invoices accepted",
                    (quiet_since - t0).as_secs_f64(),
                    l.items,
                    scale.products,
                    l.accepted,
                    l.invoices
                );
            }

            // The fault window: on when a third of the catalog is done, off after its length.
            if let Some(w) = &profile.window {
                match &window_at {
                    None if l.items * 3 >= scale.products as u64 => {
                        for p in &w.on {
                            post(http, &faults_url, p).await?;
                        }
                        window_at = Some((now, dead_requests(&stats, w)));
                    }
                    Some((at, before)) if !window_over && now - *at >= w.len => {
                        for p in &w.off {
                            post(http, &faults_url, p).await?;
                        }
                        let after = get(http, &stats_url).await?;
                        let after = dead_requests(&after, w);
                        wasted = Some(
                            after
                                .iter()
                                .zip(before)
                                .map(|(a, b)| a.saturating_sub(*b))
                                .sum(),
                        );
                        if w.dead.is_empty() {
                            wasted = None;
                        }
                        window_over = true;
                        quiet_since = Instant::now();
                    }
                    _ => {}
                }
            }

            // kill -9 at its moment, while work is outstanding; restarted at once.
            if let Some(&at) = kill_at.get(kills as usize) {
                if outstanding && progress >= at && progress > progress_at_start {
                    engine.kill();
                    kills += 1;
                    progress_at_start = progress;
                    engine = spawn(exe, &run_args, &engine_log)?;
                } else if !outstanding && all_paid {
                    // Everything done before every kill landed: more invoices to work on.
                    let v = post(
                        http,
                        &format!("{base}/_sandbox/stripe/invoices"),
                        &json!({ "count": 3 }),
                    )
                    .await?;
                    if let (Ok(mut c), Some(a)) = (created.lock(), v["created"].as_array()) {
                        c.extend(a.iter().filter_map(|x| x.as_str().map(str::to_owned)));
                    }
                    kill_at[kills as usize] = progress + 1;
                }
            }

            if all_paid
                && window_over
                && kills >= profile.kills
                && sandbox_done
                && l.invoices == expected
                && l.engine_done
            {
                break true;
            }
            if now - t0 > scale.deadline {
                failures.push(format!(
                "not complete after {:.0} s: {} of {} Items, {} of {} invoices accepted, engine {}",
                scale.deadline.as_secs_f64(),
                l.items,
                scale.products,
                l.accepted,
                l.invoices,
                health.map_or_else(
                    || "not answering".to_owned(),
                    |h| format!("catalog {} compliance {}", h["catalog"], h["compliance"]["counts"])
                )
            ));
                break false;
            }
        };
    let secs = t0.elapsed().as_secs_f64();
    arrivals.abort();

    // Everything healthy again, then the checks against the sandbox's own listings.
    for service in ["stripe", "quickbooks", "alegra", "dian"] {
        post(
            http,
            &faults_url,
            &patch(
                service,
                json!({"outage": false, "error_rate": 0.0, "timeout_rate": 0.0, "reset_rate": 0.0}),
            ),
        )
        .await?;
    }
    if opts.sabotage {
        second_item(http, &base, &printed).await?;
    }
    let ids = created.lock().map(|c| c.clone()).unwrap_or_default();
    let check = verify(http, &base, &health_url, &ids).await?;
    failures.extend(check.problems);
    let stats = get(http, &stats_url).await?;
    let throttled = ["stripe", "quickbooks", "alegra"]
        .iter()
        .map(|s| n(&stats[*s]["throttled"]))
        .sum();
    engine.kill();
    sandbox.kill();
    let failed = !completed || !failures.is_empty();
    if failed {
        failures.push(format!("engine log: {}", engine_log.display()));
    }
    let kept = (failed || opts.keep).then(|| dir.keep());
    Ok(Row {
        name: profile.name.to_owned(),
        completed,
        secs,
        wasted,
        throttled,
        duplicates: check.duplicates,
        lost: check.lost,
        stall,
        stall_at,
        kills,
        failures,
        dir: kept,
    })
}

/// A writer other than the engine creates a second Item for the first product, through
/// the QuickBooks API (`--sabotage`: the checks must see it).
async fn second_item(http: &reqwest::Client, base: &str, printed: &str) -> anyhow::Result<()> {
    let current = http
        .get(format!("{base}/_sandbox/config"))
        .send()
        .await?
        .text()
        .await?;
    let doc: toml_edit::DocumentMut = current.parse().or_else(|_| printed.parse())?;
    let refresh = doc["quickbooks"]["refresh_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no refresh token"))?
        .to_owned();
    let token: Value = http
        .post(format!("{base}/oauth2/v1/tokens/bearer"))
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
        .error_for_status()?
        .json()
        .await?;
    let product = product_ids(http, base)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no product"))?;
    http.post(format!(
        "{base}/v3/company/{}/item",
        crate::sandbox::QB_REALM_ID
    ))
    .bearer_auth(token["access_token"].as_str().unwrap_or_default())
    .query(&[("minorversion", "75")])
    .json(&json!({
        "Name": format!("soak second writer {product}"),
        "Type": "Service",
        "Sku": product,
        "IncomeAccountRef": {"value": "1"},
    }))
    .send()
    .await?
    .error_for_status()?;
    Ok(())
}

/// The engine config: the sandbox's printed one (credentials, its quotas) on port
/// `ep`, compliance waits scaled to the run, and in the quick run the breakers' open
/// wait and the pause after a 429 scaled too.
fn engine_config(printed: &str, ep: u16, scale: &Scale) -> anyhow::Result<String> {
    use toml_edit::{DocumentMut, Item, Table, value};
    let mut doc: DocumentMut = printed.parse()?;
    let mut server = Table::new();
    server["listen"] = value(format!("127.0.0.1:{ep}"));
    doc["server"] = Item::Table(server);
    let mut catalog = Table::new();
    catalog["reconcile_interval_secs"] = value(3600);
    doc["catalog"] = Item::Table(catalog);
    let mut compliance = Table::new();
    let schedule: toml_edit::Value = scale.retry_schedule_secs.parse()?;
    compliance["retry_schedule_secs"] = value(schedule);
    compliance["poll_secs"] = value(1);
    compliance["list_interval_secs"] = value(2);
    compliance["contingency_probes"] = value(2);
    compliance["contingency_probe_interval_secs"] = value(1);
    doc["compliance"] = Item::Table(compliance);
    if let Some(secs) = scale.engine_waits {
        for service in ["stripe", "quickbooks", "alegra"] {
            let secs = i64::try_from(secs)?;
            let t = doc[service]
                .as_table_mut()
                .ok_or_else(|| anyhow::anyhow!("the sandbox's config has no [{service}]"))?;
            t["throttle_pause_secs"] = value(secs);
            let mut breaker = Table::new();
            breaker["open_wait_secs"] = value(secs);
            t["breaker"] = Item::Table(breaker);
        }
    }
    Ok(doc.to_string())
}

#[derive(Debug, Default)]
struct Checked {
    duplicates: u64,
    lost: u64,
    problems: Vec<String>,
}

/// Every product in the sandbox's Stripe, by the Stripe API itself: their ids.
async fn product_ids(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![("limit", "100".to_owned())];
        if let Some(a) = &after {
            q.push(("starting_after", a.clone()));
        }
        let page: Value = http
            .get(format!("{base}/v1/products"))
            .bearer_auth(crate::sandbox::STRIPE_API_KEY)
            .query(&q)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        after = data
            .last()
            .and_then(|p| p["id"].as_str())
            .map(str::to_owned);
        out.extend(
            data.iter()
                .filter_map(|p| p["id"].as_str().map(str::to_owned)),
        );
        if page["has_more"] != true || after.is_none() {
            return Ok(out);
        }
    }
}

/// The end-of-profile checks, from the sandbox's listings and the engine's `/health`:
/// every product one Item, no Item without a product, no two Items of one name; every
/// paid invoice one document, accepted, each transmitted to DIAN once; nothing FAILED
/// (or still waiting) at the engine.
async fn verify(
    http: &reqwest::Client,
    base: &str,
    health_url: &str,
    invoices: &[String],
) -> anyhow::Result<Checked> {
    let mut c = Checked::default();
    let products = product_ids(http, base).await?;
    let items = get(http, &format!("{base}/_sandbox/quickbooks/items")).await?;
    let items = items.as_array().cloned().unwrap_or_default();
    let mut by_sku: std::collections::HashMap<String, u64> = Default::default();
    for i in &items {
        *by_sku
            .entry(i["Sku"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let (mut missing, mut doubled) = (Vec::new(), 0u64);
    for p in &products {
        match by_sku.get(p).copied().unwrap_or(0) {
            0 => missing.push(p.clone()),
            1 => {}
            k => doubled += k - 1,
        }
    }
    let strays =
        (items.len() as u64 + missing.len() as u64).saturating_sub(doubled + products.len() as u64);
    let stats = get(http, &format!("{base}/_sandbox/stats")).await?;
    let dup_names = n(&stats["quickbooks"]["duplicate_names"]);
    if !missing.is_empty() {
        c.problems.push(format!(
            "{} of {} products have no Item (e.g. {})",
            missing.len(),
            products.len(),
            missing[0]
        ));
    }
    if doubled > 0 || dup_names > 0 {
        c.problems.push(format!(
            "{doubled} second Items of a product, {dup_names} names held by two Items"
        ));
    }
    if strays > 0 {
        c.problems
            .push(format!("{strays} Items belong to no product"));
    }
    c.duplicates = doubled + dup_names;
    c.lost = missing.len() as u64;
    verify_invoices(http, base, invoices, &stats, &mut c).await?;
    verify_engine(http, health_url, &mut c).await;
    Ok(c)
}

/// Every paid invoice one document at Alegra, accepted, transmitted to DIAN once.
async fn verify_invoices(
    http: &reqwest::Client,
    base: &str,
    invoices: &[String],
    stats: &Value,
    c: &mut Checked,
) -> anyhow::Result<()> {
    let docs = get(http, &format!("{base}/_sandbox/alegra/invoices")).await?;
    let docs = docs.as_array().cloned().unwrap_or_default();
    let mut by_invoice: std::collections::HashMap<String, Vec<&Value>> = Default::default();
    for d in &docs {
        if let Some(a) = d["anotation"]
            .as_str()
            .and_then(|a| a.strip_prefix("stripe:"))
        {
            by_invoice.entry(a.to_owned()).or_default().push(d);
        }
    }
    let (mut unsent, mut unaccepted, mut second_docs) = (Vec::new(), 0u64, 0u64);
    for id in invoices {
        let found = by_invoice.get(id).map(Vec::as_slice).unwrap_or_default();
        if found.is_empty() {
            unsent.push(id.clone());
            continue;
        }
        second_docs += found.len() as u64 - 1;
        let accepted = found.iter().any(|d| {
            d["stamp"]["legalStatus"]
                .as_str()
                .is_some_and(|s| s.starts_with("STAMPED_AND_ACCEPTED"))
        });
        if !accepted {
            unaccepted += 1;
        }
    }
    let stamped = n(&stats["alegra"]["stamped"]);
    let restamped = stamped.saturating_sub(invoices.len() as u64);
    let dup_docs = n(&stats["alegra"]["duplicate_documents"]);
    if !unsent.is_empty() || unaccepted > 0 {
        c.problems.push(format!(
            "{} of {} paid invoices have no document at Alegra (e.g. {}), {unaccepted} no accepted stamp",
            unsent.len(),
            invoices.len(),
            unsent.first().map_or("-", String::as_str)
        ));
    }
    if second_docs > 0 || dup_docs > 0 || restamped > 0 {
        c.problems.push(format!(
            "{second_docs} second documents of an invoice ({dup_docs} by Alegra's count), {stamped} transmissions to DIAN for {} invoices",
            invoices.len()
        ));
    }
    c.duplicates += second_docs.max(dup_docs) + restamped;
    c.lost += unsent.len() as u64 + unaccepted;
    Ok(())
}

/// Nothing left for an operator at the engine: no invoice FAILED, REJECTED or waiting
/// for a retry, no catalog job failed.
async fn verify_engine(http: &reqwest::Client, health_url: &str, c: &mut Checked) {
    if let Ok(h) = get(http, health_url).await {
        let counts = &h["compliance"]["counts"];
        let failed = n(&counts["FAILED"]);
        let retry = n(&counts["RETRY"]);
        let rejected = n(&counts["REJECTED"]);
        let catalog_failed = n(&h["catalog"]["failed"]);
        if failed + retry + rejected + catalog_failed > 0 {
            c.problems.push(format!(
                "left for an operator at the engine: {failed} invoices FAILED, {retry} RETRY, {rejected} REJECTED, {catalog_failed} catalog jobs failed"
            ));
        }
    } else {
        c.problems
            .push("the engine's /health did not answer at the end".to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_run_has_at_least_twenty_kill_cycles_and_every_profile() {
        let scale = Scale::new(&Options {
            quick: false,
            profiles: vec![],
            seed: 1,
            products: None,
            invoices: None,
            kills: None,
            keep: false,
            sabotage: false,
        });
        let p = profiles(&scale);
        assert!(p.iter().map(|p| p.kills).sum::<u32>() >= 20);
        assert_eq!(p.len(), 8);
    }

    #[test]
    fn the_table_says_a_profile_that_did_not_complete() {
        let t = table(&[Row {
            name: "qb-hangs".into(),
            secs: 12.0,
            ..Row::default()
        }]);
        assert!(t.contains("| qb-hangs       | NO"), "{t}");
    }
}
