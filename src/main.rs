//! CLI only: parse, load config, start engine / console / sandbox. Exit codes: 0 ok,
//! 1 runtime failure, 2 usage or config error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use syncctl::app;
use syncctl::config::{self, Config, Paths};
use syncctl::engine::Mode;
use syncctl::sandbox::SandboxOptions;

#[derive(Parser)]
#[command(
    name = "syncctl",
    version,
    about = "Operations console for the Stripe → QuickBooks / DIAN sync engine"
)]
struct Cli {
    /// Config file (default: the XDG config path; see `syncctl config path`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: database, logs, and in demos the sandbox's world.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Start over on purpose where the data dir shows its database was lost: Alegra's
    /// documents are adopted by their Stripe invoices and the numbering continues after
    /// the highest used; QuickBooks Items are found by Sku. Without it such a start is
    /// refused.
    #[arg(long, global = true)]
    fresh_store: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Clone)]
struct WorldArgs {
    /// Catalog size of a new sandbox world.
    #[arg(long, value_name = "N")]
    products: Option<usize>,
    /// Seed of the sandbox data generator.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// A sandbox fault at start, e.g. `quickbooks.outage=true`, `stripe.error_rate=0.1`,
    /// `quickbooks.max_concurrent=5` (repeatable; same fields as POST /_sandbox/faults).
    #[arg(long = "fault", value_name = "SERVICE.FIELD=VALUE")]
    faults: Vec<String>,
    /// Companies the sandbox simulates, each with its own Stripe account, QuickBooks
    /// realm and Alegra account and its own quotas (default 1; ids co1..coN when more).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    companies: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Console + engine against the built-in sandbox (no config needed).
    Demo {
        #[command(flatten)]
        world: WorldArgs,
    },
    /// The engine without a console (for a service manager); SIGINT/SIGTERM drain.
    Run {
        /// Run against the built-in sandbox.
        #[arg(long)]
        demo: bool,
        #[command(flatten)]
        world: WorldArgs,
    },
    /// Only the simulated Stripe / QuickBooks APIs, as their own process.
    Sandbox {
        /// Address to serve on (default: sandbox.listen, 127.0.0.1:9871).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Print the engine config that points at this sandbox, and exit.
        #[arg(long)]
        print_config: bool,
        /// Where to deliver signed Stripe webhooks (e.g. http://127.0.0.1:9870/webhooks/stripe).
        #[arg(long, value_name = "URL")]
        webhook_url: Option<String>,
        #[command(flatten)]
        world: WorldArgs,
    },
    /// Write, check or locate the config file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// DIAN tools: compute or verify the CUFE of an invoice.
    Dian {
        #[command(subcommand)]
        command: DianCommand,
    },
    /// A running engine's health, queues and alerts, without the console. Exit 0 when
    /// healthy, 1 when degraded or down, 3 when the engine cannot be reached.
    Status {
        /// The engine's address (default: server.listen from the config, else
        /// http://127.0.0.1:9870).
        #[arg(value_name = "URL")]
        url: Option<String>,
        /// Print JSON (with --watch: one object per line).
        #[arg(long)]
        json: bool,
        /// Look again every SECS seconds (default 2) until interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
        /// One company's report (its `[[companies]]` id); without it, an engine serving
        /// several companies lists them.
        #[arg(long, value_name = "ID")]
        company: Option<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// One operator command to a running engine, in the console's grammar (e.g.
    /// `syncctl ctl pause compliance`, `syncctl ctl retry SETP990000012`, or the whole
    /// line as one argument: `syncctl ctl 'ack "*"'`). Exit 0 done, 1 refused, 2 not a
    /// command, 3 no engine reached. Without URL, the engine serving the data dir (its
    /// control file, as you). `syncctl ctl journal` lists the operators' actions.
    #[command(
        subcommand_negates_reqs = true,
        subcommand_help_heading = "Instead of a command",
        disable_help_subcommand = true,
        override_usage = "syncctl ctl [OPTIONS] <COMMAND>...\n       syncctl ctl journal [--limit N] [OPTIONS]\n       syncctl ctl bundle [--out FILE] [--events N] [OPTIONS]\n       syncctl ctl reconcile [--limit N] [OPTIONS]"
    )]
    Ctl {
        /// The engine's address (e.g. http://127.0.0.1:9870); needs --token.
        #[arg(long, value_name = "URL", global = true)]
        url: Option<String>,
        /// The company to act on (its `[[companies]]` id); needed when the engine serves
        /// several.
        #[arg(long, value_name = "ID", global = true)]
        company: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        /// Print the engine's reply (the journal) as JSON.
        #[arg(long, global = true)]
        json: bool,
        /// Print what a bulk command would do (items, calls per service and minutes of
        /// its quota, held, what runs first) and change nothing; also read after the
        /// command (`syncctl ctl retry-failed-jobs --dry-run`).
        #[arg(long)]
        dry_run: bool,
        #[command(subcommand)]
        journal: Option<CtlJournal>,
        /// The command, word by word.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        words: Vec<String>,
    },
    /// The console on a running engine, over its WebSocket: `q` detaches and the engine
    /// keeps running. Without URL, the engine serving the data dir (its control file, as
    /// you). Exit 3 when no engine is reached, 1 when it refuses the console.
    Attach {
        /// The engine's address (e.g. http://10.0.0.5:9870); needs --token.
        #[arg(value_name = "URL")]
        url: Option<String>,
        #[command(flatten)]
        token: TokenArg,
        /// Watch only: the engine refuses this console's commands, and its keys for
        /// actions are hidden.
        #[arg(long)]
        read_only: bool,
        /// The company to attach to (its `[[companies]]` id); needed when the engine
        /// serves several.
        #[arg(long, value_name = "ID")]
        company: Option<String>,
    },
    /// Incident bundles (written by the console's `B` or `syncctl ctl bundle`).
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The engine and a sandbox as separate processes of this executable, through
    /// fault profiles (QuickBooks errors, resets, hanging requests, outages of
    /// QuickBooks, Alegra and DIAN with invoices arriving, 429 storms, `kill -9` of the
    /// engine at random moments); checks the sandbox after each (one Item per product,
    /// each paid invoice stamped once, nothing FAILED) and prints a table. Exit 1 when
    /// a profile fails.
    Soak(SoakArgs),
}

#[derive(Args)]
struct SoakArgs {
    /// The small version: few products, short outages, 2 kill cycles.
    #[arg(long)]
    quick: bool,
    /// Only these profiles, comma-separated (qb-errors, qb-resets, qb-hangs,
    /// qb-outage, alegra-outage, dian-outage, 429-storm, kill-9).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    profiles: Vec<String>,
    /// Seed of the worlds and of the kill moments.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Products in each profile's world.
    #[arg(long, value_name = "N")]
    products: Option<usize>,
    /// Invoices paid during each profile.
    #[arg(long, value_name = "N")]
    invoices: Option<usize>,
    /// Kill cycles of the kill-9 profile.
    #[arg(long, value_name = "N")]
    kills: Option<u32>,
    /// Keep every profile's directory (logs, data dirs), not only a failed one's.
    #[arg(long)]
    keep: bool,
    /// After each profile, a second writer creates a duplicate Item (proves the
    /// checks fail).
    #[arg(long, hide = true)]
    sabotage: bool,
}

/// An API token for a running engine's control API (`status`: to list the alerts too;
/// `ctl --url`: an operator's).
#[derive(Args)]
struct TokenArg {
    /// An API token (or SYNCCTL_TOKEN).
    #[arg(
        long,
        global = true,
        env = "SYNCCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
}

/// `syncctl ctl journal`.
#[derive(Subcommand)]
enum CtlJournal {
    /// Every operator action (console, API, `ctl`, attached consoles), newest last:
    /// time (UTC), who, done or refused, the `syncctl ctl …` line that does the same,
    /// and the engine's words. From the running engine (as `ctl` finds it), or with
    /// none running on the data dir, from its store. Exit 3 when neither is reached.
    Journal {
        /// The newest N actions (1 to 1000).
        #[arg(long, value_name = "N", default_value_t = 50,
              value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
    },
    /// Writes an incident bundle of the running engine to one file: snapshot, breaker
    /// transitions, alerts and anomalies with their series, the newest audit events and
    /// operator actions, the config with every secret redacted, version and uptime.
    /// Open it with `syncctl bundle show FILE`. Exit 3 when no engine is reached.
    Bundle {
        /// The file to write (default: syncctl-bundle-<UTC time>.json.gz here); never
        /// replaced if it exists.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The newest N audit events (1 to 5000).
        #[arg(long, value_name = "N", default_value_t = 500,
              value_parser = clap::value_parser!(u16).range(1..=5000))]
        events: u16,
    },
    /// Stripe against QuickBooks, as the running engine keeps it live: counts and
    /// amounts of the products with no Item, the Items with no product and the Items
    /// that drifted (name, price, active flag), then the worst N of them. Exit 0, 1 when
    /// the engine refuses, 3 when no engine is reached. `ctl resync-item PRODUCT` and
    /// `ctl resync-drifted` fix them.
    /// The entity chain of a Stripe product or invoice, a QuickBooks Item, a DIAN
    /// number, a CUFE or an Alegra document: every linked object across the systems,
    /// what the engine knows of each, where Stripe and QuickBooks disagree (as the live
    /// reconciliation last read them) and each one's latest events. Exit 0, 1 when the
    /// engine knows no such thing, 3 when no engine is reached.
    Chain {
        #[arg(value_name = "KEY")]
        key: String,
    },
    Reconcile {
        /// The worst N discrepancies (1 to 10000).
        #[arg(long, value_name = "N", default_value_t = 20,
              value_parser = clap::value_parser!(u16).range(1..=10000))]
        limit: u16,
    },
}

/// `syncctl bundle`.
#[derive(Subcommand)]
enum BundleCommand {
    /// Opens an incident bundle in the console's screens, frozen as it was taken
    /// (actions are refused; `q` leaves). Exit 2 when the file is not a bundle.
    Show {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Write the commented example config (mode 600).
    Init {
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate a config file; names file, key and line on error (exit 2).
    Check,
    /// Print where the config, data and logs live.
    Path,
}

#[derive(Subcommand)]
enum DianCommand {
    /// Reads invoice fields as JSON on stdin and prints the CUFE. Fields (strings, as
    /// written on the invoice): number, date, time, subtotal, iva, inc, ica, total,
    /// issuer_nit, buyer_id, technical_key, environment. Amounts are truncated to two
    /// decimals. Exit 2 naming the field on bad input.
    Cufe {
        /// Compare with the CUFE printed on the invoice: exit 0 if equal, 1 if not.
        #[arg(long, value_name = "CUFE")]
        check: Option<String>,
    },
    /// An invoice's compliance record and full history (by Stripe id, DIAN number or
    /// CUFE), from the data dir.
    History {
        #[arg(value_name = "INVOICE")]
        key: String,
        /// The company (its `[[companies]]` id) whose invoices to read; needed when the
        /// data dir holds several (`<data dir>/companies/<id>/`).
        #[arg(long, value_name = "ID")]
        company: Option<String>,
    },
    /// Retry one FAILED, REJECTED or RETRY invoice, or every FAILED one (`--failed`,
    /// which first says how many). The engine, running or next started, sends them;
    /// audited with your user and SSH address.
    Retry {
        #[arg(
            value_name = "INVOICE",
            required_unless_present = "failed",
            conflicts_with = "failed"
        )]
        key: Option<String>,
        /// Every FAILED invoice.
        #[arg(long)]
        failed: bool,
        /// Do not ask before retrying every FAILED invoice.
        #[arg(long)]
        yes: bool,
        /// The company (its `[[companies]]` id) whose invoices to retry; needed when
        /// the data dir holds several (`<data dir>/companies/<id>/`).
        #[arg(long, value_name = "ID")]
        company: Option<String>,
    },
}

impl DianCommand {
    /// The company named with `--company`.
    fn company(&self) -> Option<&str> {
        match self {
            DianCommand::Cufe { .. } => None,
            DianCommand::History { company, .. } | DianCommand::Retry { company, .. } => {
                company.as_deref()
            }
        }
    }
}

/// The companies whose data `dir` holds (`<dir>/companies/<id>/`), sorted.
fn companies_in(dir: &std::path::Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir.join("companies"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|id| syncctl::config::valid_company_id(id))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The data dir of the company `dian` reads or retries in: `dir` itself for one
/// company, `<dir>/companies/<id>/` for one of several (and its id, for the engine's
/// `?company=`). Several and none named: an error listing them.
fn company_dir(
    dir: &std::path::Path,
    company: Option<&str>,
) -> Result<(std::path::PathBuf, Option<String>), String> {
    let ids = companies_in(dir);
    let listed = || ids.join(", ");
    match company {
        Some(id) if ids.iter().any(|c| c == id) => {
            Ok((dir.join("companies").join(id), Some(id.to_owned())))
        }
        Some(id) if ids.is_empty() && id == syncctl::config::DEFAULT_COMPANY => {
            Ok((dir.to_path_buf(), None))
        }
        Some(id) if ids.is_empty() => Err(format!(
            "no company {:?} in {}: it holds one company's data (no companies/ in it); drop --company",
            id.chars().take(40).collect::<String>(),
            dir.display()
        )),
        Some(id) => Err(format!(
            "no company {:?} in {} (companies: {})",
            id.chars().take(40).collect::<String>(),
            dir.display(),
            listed()
        )),
        None if ids.len() > 1 => Err(format!(
            "{} holds several companies' data: name one with --company ID (companies: {})",
            dir.display(),
            listed()
        )),
        None if ids.len() == 1 && !dir.join("syncctl.db").exists() => {
            Ok((dir.join("companies").join(&ids[0]), Some(ids[0].clone())))
        }
        None => Ok((dir.to_path_buf(), None)),
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The cost of the once-a-second telemetry tick, the snapshot's view, an HDR
    /// record and a cache lookup; the fixed memory of an hour of series.
    Telemetry {
        /// Simulated seconds (at least 3600, so every series is full).
        #[arg(long, default_value_t = 7200)]
        ticks: usize,
    },
    /// One attached console: bytes per second it receives over its WebSocket (during a
    /// catalog sync, idle) next to what it writes to its terminal; engine change → drawn.
    Attach {
        #[arg(long, default_value_t = 3000)]
        products: usize,
        /// Seconds of idle engine measured.
        #[arg(long, default_value_t = 20)]
        idle_secs: u64,
    },
    /// An idle engine over a long history (built directly through the store): idle
    /// CPU, start → first snapshot, the events API's latency, the console's filter, RSS.
    History {
        #[arg(long, default_value_t = 300_000)]
        jobs: usize,
        #[arg(long, default_value_t = 1_000_000)]
        audit: usize,
        /// Seconds of idle engine measured.
        #[arg(long, default_value_t = 5)]
        idle_secs: u64,
        /// Run on this data dir, built there first if it holds no store (kept after).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Full catalog sync against a zero-latency sandbox vs the raw request rate.
    Catalog {
        #[arg(long, default_value_t = 2000)]
        products: usize,
        #[arg(long, default_value_t = 8)]
        workers: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Which syncs to run: both, or one alone (to profile it: `perf record` then
        /// holds that sync and the raw rates around it, nothing of the other).
        #[arg(long, value_parser = ["both", "batched", "single"], default_value = "both")]
        calls: String,
    },
    /// What a sync costs of QuickBooks' quota, on its real shape scaled in time: units
    /// per product (empty company, company holding the Items), the restart stall after a
    /// kill -9, the breaker under an outage, a limit set above the quota.
    Quota {
        #[arg(long, default_value_t = 10000)]
        products: usize,
        /// Time scale: the sandbox's quotas ×scale, its pushback and latency ÷scale.
        #[arg(long, default_value_t = 12)]
        scale: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Catalog sync under a QuickBooks quota (utilisation, throttled %), then an outage
    /// (p99 latency of a rejection by the open breaker).
    Resilience {
        #[arg(long, default_value_t = 2000)]
        products: usize,
        /// The sandbox's QuickBooks rate quota, requests per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        max_concurrent: u32,
        #[arg(long, default_value_t = 50)]
        latency_ms: u64,
    },
    /// Total items/s of 1, 2 and 3 engines (`syncctl run` processes of this executable)
    /// sharing one throwaway PostgreSQL (needs the `postgresql` package), against one
    /// sandbox of several companies; the scaling against linear and the Postgres round
    /// trips per item.
    Scale {
        #[arg(long, default_value_t = 8)]
        companies: usize,
        /// Products of each company.
        #[arg(long, default_value_t = 1000)]
        products: usize,
        /// Each company's QuickBooks quota, requests a minute (set above what the
        /// engines ask: the sandbox is not the ceiling).
        #[arg(long, default_value_t = 60_000)]
        quota_per_min: u32,
        /// The sandbox's latency per request: with the workers, each engine's ceiling.
        #[arg(long, default_value_t = 25)]
        latency_ms: u64,
        /// Catalog workers per company in each engine.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Products claimed (and written) together at most.
        #[arg(long, default_value_t = 1)]
        claim_batch_max: u32,
        /// Engine counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        engines: Vec<usize>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::harden_process();
    syncctl::connectors::install_crypto();
    // Workers get the main thread's 8 MiB, not tokio's 2: a catalog worker's future is
    // deep (claim → group → batch → single calls → index read → request), and a debug
    // build's poll frames overflowed 2 MiB on the Postgres queue (tests/scale_out).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 * 1024 * 1024)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("syncctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("syncctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `syncctl status` (`command` is a [`Command::Status`]).
async fn status(
    command: Command,
    config: Option<&PathBuf>,
    data_dir: Option<&std::path::Path>,
    paths: &Paths,
) -> ExitCode {
    use syncctl::status;
    let Command::Status {
        url,
        json,
        watch,
        company,
        token,
    } = command
    else {
        return ExitCode::from(2);
    };
    let mut token = token.token;
    let base = match (url, data_dir) {
        (Some(u), _) => u.trim_end_matches('/').to_owned(),
        // The engine serving the data dir named: its control file, as `ctl` reads it
        // (the config's address may be another engine's, or a default nobody serves).
        (None, Some(dir)) => match syncctl::server::local::read(dir) {
            Some(control) => {
                token = token.or(Some(control.token));
                control.url
            }
            None => {
                eprintln!(
                    "syncctl status: no engine serves {} (no readable {} there): start one with `syncctl run`, or give its URL",
                    dir.display(),
                    syncctl::server::local::CONTROL_FILE
                );
                return ExitCode::from(status::EXIT_UNREACHABLE);
            }
        },
        (None, None) => {
            // The engine this config describes (an explicit --config must load).
            let cfg = match config {
                Some(p) => match load_config(Some(p)) {
                    Ok(c) => c.map(|(c, _)| c),
                    Err(code) => return code,
                },
                None => Config::load(&paths.config_file).ok(),
            };
            let listen = cfg.map_or_else(|| Config::default().server.listen, |c| c.server.listen);
            format!("http://{listen}")
        }
    };
    if !base.starts_with("http://") && !base.starts_with("https://") {
        return usage(format!("{base}: expected an http:// or https:// URL"));
    }
    if watch == Some(0) {
        return usage("--watch: at least 1 second");
    }
    let http = match syncctl::connectors::http_client() {
        Ok(h) => h,
        Err(e) => return usage(e),
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let code = match status::read(&http, &base, token.as_deref(), company.as_deref()).await {
            Ok(r) => {
                let text = if json {
                    status::json_text(&r, watch.is_some())
                } else {
                    status::render(&base, &r)
                };
                if watch.is_some() && tty && !json {
                    // Home and clear: the look replaces the previous one.
                    print!("\x1b[H\x1b[2J");
                }
                println!("{}", text.trim_end());
                if r.healthy() {
                    0
                } else {
                    status::EXIT_UNHEALTHY
                }
            }
            Err(e) => {
                eprintln!("syncctl status: {e}");
                status::EXIT_UNREACHABLE
            }
        };
        let Some(secs) = watch else {
            return ExitCode::from(code);
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::from(code),
            _ = tokio::time::sleep(std::time::Duration::from_secs(secs)) => {}
        }
    }
}

/// A usage or config error: message to stderr, exit 2.
fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("syncctl: {msg}");
    ExitCode::from(2)
}

/// Loads `--config` if given (required to exist), else `default` if `use_default`.
fn load_config(explicit: Option<&PathBuf>) -> Result<Option<(Config, PathBuf)>, ExitCode> {
    let Some(path) = explicit else {
        return Ok(None);
    };
    match Config::load(path) {
        Ok(mut c) => {
            for w in config::permission_warning(path, &c)
                .into_iter()
                .chain(c.warnings())
            {
                eprintln!("{w}");
                tracing::warn!("{w}");
            }
            c.apply_env();
            Ok(Some((c, path.clone())))
        }
        Err(e) => Err(usage(e)),
    }
}

fn apply_world(config: &mut Config, world: &WorldArgs) -> Result<(), String> {
    if let Some(n) = world.products {
        config.sandbox.products = n;
    }
    if let Some(s) = world.seed {
        config.sandbox.seed = s;
    }
    for f in &world.faults {
        let (service, field, value) = f
            .split_once('=')
            .and_then(|(k, v)| k.split_once('.').map(|(s, f)| (s, f, v)))
            .ok_or_else(|| format!("--fault {f}: expected SERVICE.FIELD=VALUE"))?;
        let value: serde_json::Value = serde_json::from_str(value.trim())
            .unwrap_or_else(|_| serde_json::Value::String(value.trim().to_owned()));
        let patch: syncctl::sandbox::faults::FaultPatch =
            serde_json::from_value(serde_json::json!({ "service": service, field: value }))
                .map_err(|e| format!("--fault {f}: {e}"))?;
        let settings = config.sandbox.faults.entry(service.to_owned()).or_default();
        patch.apply(settings);
        settings
            .validate()
            .map_err(|e| format!("--fault {f}: {e}"))?;
        if !syncctl::sandbox::faults::SERVICES.contains(&service) {
            return Err(format!("--fault {f}: unknown service {service:?}"));
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let paths = Paths::discover();
    // The data dir of commands that read or reach an engine's (`dian`, `ctl`).
    let default_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| paths.data_dir.clone());
    match cli.command {
        None => {
            // The engine of this data dir runs already (as a service): attach to it.
            match running_engine(&default_dir) {
                Ok(Some(_)) => {
                    let fps = max_fps(cli.config.as_ref());
                    return Ok(attach(None, None, false, None, &default_dir, fps).await);
                }
                Ok(None) => {}
                Err(why) => {
                    eprintln!("syncctl: {why}");
                    return Ok(ExitCode::from(3));
                }
            }
            console_live(&cli.config, cli.data_dir, cli.fresh_store, &paths).await
        }
        Some(Command::Attach {
            url,
            token,
            read_only,
            company,
        }) => {
            let fps = max_fps(cli.config.as_ref());
            Ok(attach(url, token.token, read_only, company, &default_dir, fps).await)
        }
        Some(Command::Demo { world }) => {
            demo(
                cli.config.as_ref(),
                cli.data_dir,
                cli.fresh_store,
                &world,
                true,
            )
            .await
        }
        Some(Command::Run { demo: true, world }) => {
            demo(
                cli.config.as_ref(),
                cli.data_dir,
                cli.fresh_store,
                &world,
                false,
            )
            .await
        }
        Some(Command::Run { demo: false, .. }) => {
            run_live(cli.config, cli.data_dir, cli.fresh_store, &paths).await
        }
        Some(Command::Sandbox {
            listen,
            print_config,
            webhook_url,
            world,
        }) => {
            sandbox(
                cli.config.as_ref(),
                cli.data_dir,
                listen,
                print_config,
                webhook_url,
                &world,
            )
            .await
        }
        Some(Command::Config { command }) => Ok(config_command(command, cli.config, &paths)),
        Some(command @ Command::Status { .. }) => Ok(status(
            command,
            cli.config.as_ref(),
            cli.data_dir.as_deref(),
            &paths,
        )
        .await),
        Some(Command::Dian {
            command: DianCommand::Cufe { check },
        }) => Ok(dian_cufe(check.as_deref())),
        Some(ctl_command @ Command::Ctl { .. }) => Ok(ctl(&default_dir, ctl_command).await),
        Some(Command::Dian { command }) => {
            Ok(dian(command, cli.config.as_ref(), &paths, &default_dir))
        }
        Some(Command::Bundle {
            command: BundleCommand::Show { file },
        }) => bundle_show(&file, max_fps(cli.config.as_ref())).await,
        Some(Command::Bench { command }) => {
            bench(command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Soak(args)) => soak(args).await,
    }
}

/// `dian history|retry`: on the data dir's store, or with `store.url` on the shared
/// invoices.
fn dian(
    command: DianCommand,
    config: Option<&PathBuf>,
    paths: &Paths,
    dir: &std::path::Path,
) -> ExitCode {
    let shared = match shared_store_url(config, &paths.config_file) {
        Ok(url) => url,
        Err(code) => return code,
    };
    // Blocking file and store work; a retry through a running engine waits on this
    // runtime for its answer.
    tokio::task::block_in_place(|| dian_records(command, dir, shared.as_deref()))
}

/// `syncctl soak`: exit 0 when every profile passed, 1 when one did not.
async fn soak(args: SoakArgs) -> anyhow::Result<ExitCode> {
    let SoakArgs {
        quick,
        profiles,
        seed,
        products,
        invoices,
        kills,
        keep,
        sabotage,
    } = args;
    let known = syncctl::soak::profile_names();
    if let Some(p) = profiles.iter().find(|p| !known.contains(&p.as_str())) {
        return Ok(usage(format!(
            "--profiles: no profile {p:?} (one of {})",
            known.join(", ")
        )));
    }
    let opts = syncctl::soak::Options {
        quick,
        profiles,
        seed,
        products,
        invoices,
        kills,
        keep,
        sabotage,
    };
    Ok(if syncctl::soak::run(&opts).await? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `syncctl bench …`: figures printed.
async fn bench(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Attach {
            products,
            idle_secs,
        } => syncctl::bench::attach(products, idle_secs).await,
        BenchCommand::Telemetry { ticks } => syncctl::bench::telemetry(ticks),
        BenchCommand::History {
            jobs,
            audit,
            idle_secs,
            dir,
        } => syncctl::bench::history(jobs, audit, idle_secs, dir).await,
        BenchCommand::Catalog {
            products,
            workers,
            seed,
            calls,
        } => syncctl::bench::catalog(products, workers, seed, &calls).await,
        BenchCommand::Quota {
            products,
            scale,
            seed,
        } => syncctl::bench::quota(products, scale, seed).await,
        BenchCommand::Resilience {
            products,
            rate,
            max_concurrent,
            latency_ms,
        } => syncctl::bench::resilience(products, rate, max_concurrent, latency_ms).await,
        BenchCommand::Scale {
            companies,
            products,
            quota_per_min,
            latency_ms,
            workers,
            claim_batch_max,
            engines,
            seed,
        } => {
            syncctl::bench::scale(syncctl::bench::ScaleOptions {
                companies,
                products,
                quota_per_min,
                latency_ms,
                workers,
                claim_batch_max,
                engines,
                seed,
            })
            .await
        }
    }
}

async fn demo(
    config_path: Option<&PathBuf>,
    data_dir: Option<PathBuf>,
    fresh_store: bool,
    world: &WorldArgs,
    console: bool,
) -> anyhow::Result<ExitCode> {
    let mut config = match load_config(config_path) {
        Ok(c) => c.map(|(c, _)| c).unwrap_or_default(),
        Err(code) => return Ok(code),
    };
    if let Err(e) = apply_world(&mut config, world) {
        return Ok(usage(e));
    }
    let (dir, tmp) = match data_dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new().prefix("syncctl-demo-").tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    let _guard = app::init_logging(&dir, &config.log.level, !console);
    let max_fps = config.console.max_fps;
    let companies = world.companies.map_or(1, |n| n as usize);
    let mut demo = match app::start_demo(config, dir, tmp, fresh_store, companies).await {
        Ok(d) => d,
        Err(e) => return Ok(usage(format!("{e:#}"))),
    };
    if console {
        let mut link = app::LocalEngine {
            engine: &mut demo.engine,
            sandbox: Some(demo.sandbox.sandbox.clone()),
        };
        let result = syncctl::console::run(&mut link, max_fps).await;
        demo.sandbox.shutdown().await;
        result?;
    } else {
        eprintln!(
            "syncctl: engine on http://{}, sandbox on http://{}; Ctrl-C drains and stops",
            demo.engine.server_addr, demo.sandbox.addr
        );
        app::run_headless(&mut demo.engine).await;
        demo.sandbox.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves the live config: `--config`, else the default path; says where it looked.
fn live_config(explicit: &Option<PathBuf>, paths: &Paths) -> Result<Config, ExitCode> {
    let path = explicit
        .clone()
        .unwrap_or_else(|| paths.config_file.clone());
    if !path.exists() {
        return Err(usage(format!(
            "no config file at {}\n  to try syncctl on the built-in sandbox:  syncctl demo\n  to write a config to fill in:           syncctl config init",
            path.display()
        )));
    }
    let (config, _) = load_config(Some(&path))?.expect("path given");
    let missing = config.missing_live_keys();
    if !missing.is_empty() {
        return Err(usage(format!(
            "{}: missing keys for a live run: {} (secrets may come from the environment; see config.example.toml)",
            path.display(),
            missing.join(", ")
        )));
    }
    Ok(config)
}

async fn start_live(
    config: Config,
    data_dir: Option<PathBuf>,
    fresh_store: bool,
    paths: &Paths,
    stderr_logs: bool,
) -> anyhow::Result<
    Result<
        (
            app::Served,
            Option<tracing_appender::non_blocking::WorkerGuard>,
            u32,
        ),
        ExitCode,
    >,
> {
    let dir = data_dir.unwrap_or_else(|| paths.data_dir.clone());
    let guard = app::init_logging(&dir, &config.log.level, stderr_logs);
    let listener = match app::bind(config.server.listen, false).await {
        Ok(l) => l,
        Err(e) => return Ok(Err(usage(format!("{e:#} (server.listen)")))),
    };
    let fps = config.console.max_fps;
    match app::serve_companies(config, dir, Mode::Live, fresh_store, listener).await {
        Ok(e) => Ok(Ok((e, guard, fps))),
        Err(e) => Ok(Err(usage(format!("{e:#}")))),
    }
}

async fn console_live(
    config: &Option<PathBuf>,
    data_dir: Option<PathBuf>,
    fresh_store: bool,
    paths: &Paths,
) -> anyhow::Result<ExitCode> {
    let config = match live_config(config, paths) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let (mut engine, _guard, fps) =
        match start_live(config, data_dir, fresh_store, paths, false).await? {
            Ok(x) => x,
            Err(code) => return Ok(code),
        };
    let mut link = app::LocalEngine {
        engine: &mut engine,
        sandbox: None,
    };
    syncctl::console::run(&mut link, fps).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_live(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    fresh_store: bool,
    paths: &Paths,
) -> anyhow::Result<ExitCode> {
    let config = match live_config(&config, paths) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let (mut engine, _guard, _) =
        match start_live(config, data_dir, fresh_store, paths, true).await? {
            Ok(x) => x,
            Err(code) => return Ok(code),
        };
    eprintln!(
        "syncctl: engine on http://{}; Ctrl-C drains and stops",
        engine.server_addr
    );
    app::run_headless(&mut engine).await;
    Ok(ExitCode::SUCCESS)
}

async fn sandbox(
    config_path: Option<&PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    print_config: bool,
    webhook_url: Option<String>,
    world: &WorldArgs,
) -> anyhow::Result<ExitCode> {
    let mut config = match load_config(config_path) {
        Ok(c) => c.map(|(c, _)| c).unwrap_or_default(),
        Err(code) => return Ok(code),
    };
    if let Err(e) = apply_world(&mut config, world) {
        return Ok(usage(e));
    }
    let addr = listen.unwrap_or(config.sandbox.listen);
    let opts = SandboxOptions {
        products: config.sandbox.products,
        seed: config.sandbox.seed,
        latency_ms: config.sandbox.latency_ms,
        change_interval_ms: config.sandbox.change_interval_ms,
        dir: data_dir.clone(),
        webhook_url,
        faults: config.sandbox.faults.clone(),
        companies: world.companies.unwrap_or(1) as usize,
    };
    if print_config {
        // The sandbox listening there knows its world (its seed, the refresh token as
        // last rotated); flags only describe a sandbox that is not running.
        match running_sandbox_config(addr).await {
            Ok(Some(text)) => print!("{text}"),
            Ok(None) => {
                eprintln!(
                    "syncctl: no sandbox listens at {addr}: this config is computed from the flags (seed {}, {} products{}); start the sandbox with the same ones",
                    opts.seed,
                    opts.products,
                    if opts.dir.is_some() {
                        ", the world in --data-dir"
                    } else {
                        ""
                    }
                );
                let worlds: Vec<_> = syncctl::sandbox::peek_worlds(&opts)?
                    .iter()
                    .map(syncctl::sandbox::World::secrets)
                    .collect();
                print!(
                    "{}",
                    syncctl::sandbox::engine_config_for(
                        &worlds,
                        &addr.to_string(),
                        &config.sandbox.faults
                    )
                );
            }
            Err(e) => return Ok(usage(e)),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let _guard = data_dir
        .as_deref()
        .and_then(|d| app::init_logging(d, &config.log.level, true));
    let listener = match app::bind(addr, false).await {
        Ok(l) => l,
        Err(e) => return Ok(usage(format!("{e:#}"))),
    };
    // The world holds the webhook secret and the refresh tokens: private, as an
    // engine's data dir is.
    if let Some(d) = &data_dir
        && let Err(e) = syncctl::store::private::secure_tree(d)
    {
        return Ok(usage(format!(
            "{}: cannot make it private: {e}",
            d.display()
        )));
    }
    let _lock = match &data_dir {
        Some(d) => match syncctl::store::DataDirLock::acquire(d, "sandbox") {
            Ok(l) => Some(l),
            Err(e) => return Ok(usage(e)),
        },
        None => None,
    };
    let server = app::start_sandbox(&opts, listener, config.sandbox.change_interval_ms)?;
    eprintln!(
        "syncctl sandbox on http://{} (print the engine config with --print-config)",
        server.addr
    );
    app::shutdown_signal().await;
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The engine config the sandbox listening at `addr` gives (`GET /_sandbox/config`);
/// `None` when nothing listens there; an error when something answers that is not a
/// sandbox that can say it.
async fn running_sandbox_config(addr: std::net::SocketAddr) -> Result<Option<String>, String> {
    let url = format!("http://{addr}/_sandbox/config");
    let http = syncctl::connectors::http_client().map_err(|e| format!("{e:#}"))?;
    let response = match http
        .get(&url)
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Ok(None),
        Err(e) => return Err(format!("{url}: {}", e.without_url())),
    };
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("{url}: {}", e.without_url()))?;
    if !status.is_success() || !text.contains("[quickbooks]") {
        return Err(format!(
            "{addr} answers, but not as a syncctl sandbox that can give its config ({url}: {status}); stop what listens there or pass another --listen"
        ));
    }
    Ok(Some(text))
}

fn config_command(command: ConfigCommand, explicit: Option<PathBuf>, paths: &Paths) -> ExitCode {
    let path = explicit.unwrap_or_else(|| paths.config_file.clone());
    match command {
        ConfigCommand::Path => {
            println!("config  {}", paths.config_file.display());
            println!("data    {}", paths.data_dir.display());
            println!("logs    {}", paths.data_dir.join("logs").display());
            ExitCode::SUCCESS
        }
        ConfigCommand::Init { force } => {
            if path.exists() && !force {
                return usage(format!(
                    "{} already exists (use --force to overwrite)",
                    path.display()
                ));
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
                && let Err(e) = std::fs::create_dir_all(parent)
            {
                return usage(format!("{}: {e}", parent.display()));
            }
            if let Err(e) = write_private(&path, config::EXAMPLE) {
                return usage(format!("{}: {e}", path.display()));
            }
            println!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        ConfigCommand::Check => match Config::load(&path) {
            Ok(mut c) => {
                for w in config::permission_warning(&path, &c)
                    .into_iter()
                    .chain(c.warnings())
                {
                    eprintln!("{w}");
                }
                c.apply_env();
                println!("{}: ok", path.display());
                if !c.companies.is_empty() {
                    println!("  companies ({}):", c.companies.len());
                    for co in &c.companies {
                        println!("    {:<32}  {}", co.id, co.name);
                    }
                }
                let missing = c.missing_live_keys();
                if !missing.is_empty() {
                    println!(
                        "  not set (needed for a live run, not for `syncctl demo`): {}",
                        missing.join(", ")
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => usage(e),
        },
    }
}

fn dian_cufe(check: Option<&str>) -> ExitCode {
    use std::io::Read;
    use syncctl::compliance::cufe::CufeFields;
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        return usage(format!("cannot read stdin: {e}"));
    }
    let cufe = match CufeFields::from_json(&input).and_then(|f| f.cufe()) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    println!("{cufe}");
    match check.map(|c| c.trim().to_lowercase()) {
        None => ExitCode::SUCCESS,
        Some(expected) if expected == cufe => {
            eprintln!("matches the CUFE given");
            ExitCode::SUCCESS
        }
        Some(_) => {
            eprintln!("differs from the CUFE given");
            ExitCode::FAILURE
        }
    }
}

/// The store `dian` reads: one company of several has its own data dir (the engine,
/// one per process, is the top dir's, reached with `?company=`); and that company.
fn dian_store(
    top: &std::path::Path,
    company: Option<&str>,
) -> Result<(syncctl::store::Store, Option<String>), String> {
    let (dir, company) = company_dir(top, company)?;
    if !dir.join("syncctl.db").exists() {
        return Err(format!(
            "no syncctl data in {} (pass --data-dir, or run the engine first)",
            dir.display()
        ));
    }
    // Never create a database here: an empty one beside a lost store's marker would
    // only hide the loss.
    let db = dir.join("syncctl.db");
    if std::fs::metadata(&db).map_or(true, |m| m.len() == 0) {
        return Err(format!(
            "no store at {} (is --data-dir right? a lost store is restored from a backup, or rebuilt by starting the engine with --fresh-store)",
            db.display()
        ));
    }
    let store = syncctl::store::Store::open(&dir).map_err(|e| format!("{e:#}"))?;
    Ok((store, company))
}

/// `dian history` (straight from the data dir's store; SQLite lets the engine run
/// meanwhile) and `dian retry` (through the running engine's command path, or on the
/// store when none runs).
fn dian_records(command: DianCommand, top: &std::path::Path, shared: Option<&str>) -> ExitCode {
    use syncctl::engine::compliance::{retry_all_failed, retry_audited};
    let (store, company) = match dian_store(top, command.company()) {
        Ok(found) => found,
        Err(e) => return usage(e),
    };
    let invoices = match dian_invoices(&store, shared, company.as_deref()) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let find = |key: &str| match invoices.invoice(key) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(usage(format!(
            "no invoice {key:?} (a Stripe id, DIAN number or CUFE)"
        ))),
        Err(e) => Err(usage(e)),
    };
    let actor = syncctl::engine::operator();
    // A running engine takes the retry through its command path (the store is not
    // written under it); with none, the store is.
    let engine = match &command {
        DianCommand::Retry { .. } => match running_engine(top) {
            Ok(e) => e,
            Err(e) => return usage(e),
        },
        _ => None,
    };
    match command {
        DianCommand::Cufe { .. } => ExitCode::SUCCESS,
        DianCommand::History { key, .. } => {
            let rec = match find(&key) {
                Ok(r) => r,
                Err(code) => return code,
            };
            print_history(&invoices, &rec);
            ExitCode::SUCCESS
        }
        DianCommand::Retry { .. } if engine.is_some() => {
            let Some(control) = engine else {
                return ExitCode::FAILURE;
            };
            retry_through_engine(command, &control, &store, &actor, company.as_deref())
        }
        DianCommand::Retry {
            key: Some(key),
            failed: false,
            ..
        } => {
            let rec = match find(&key) {
                Ok(r) => r,
                Err(code) => return code,
            };
            match retry_audited(&store, &invoices, &rec, &actor) {
                Ok(m) => {
                    println!("{m}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("syncctl: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        DianCommand::Retry { yes, .. } => {
            let failed = invoices
                .invoices_in(syncctl::compliance::machine::Status::Failed)
                .unwrap_or_default();
            println!("{} FAILED invoices", failed.len());
            if failed.is_empty() {
                return ExitCode::SUCCESS;
            }
            if !yes {
                use std::io::IsTerminal;
                if !std::io::stdin().is_terminal() {
                    return usage("pass --yes to retry them without a terminal to confirm on");
                }
                eprint!("Retry {} FAILED invoices? [y/N] ", failed.len());
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    println!("nothing retried");
                    return ExitCode::SUCCESS;
                }
            }
            match retry_all_failed(&store, &invoices, &actor) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => usage(e),
            }
        }
    }
}

/// The config's `store.url` (the explicit `--config`, else the default one's), if set.
fn shared_store_url(
    explicit: Option<&PathBuf>,
    default: &std::path::Path,
) -> Result<Option<String>, ExitCode> {
    let cfg = match explicit {
        Some(p) => load_config(Some(p))?.map(|(c, _)| c),
        None => Config::load(default).ok().map(|mut c| {
            c.apply_env();
            c
        }),
    };
    Ok(cfg.and_then(|c| c.store.url.map(|u| u.expose().to_owned())))
}

/// The invoices `dian` reads: the data dir's store's, or, with `store.url`, the
/// shared ones of `company` (`--company`; the single-company config's otherwise).
fn dian_invoices(
    store: &syncctl::store::Store,
    shared: Option<&str>,
    company: Option<&str>,
) -> Result<syncctl::store::Invoices, ExitCode> {
    let Some(url) = shared else {
        return Ok(syncctl::store::Invoices::sqlite(store.clone()));
    };
    let clock = syncctl::store::WallClock::default();
    let owner = format!("cli:{}", std::process::id());
    let queue = tokio::runtime::Handle::current()
        .block_on(syncctl::store::queue::JobQueue::postgres(
            url,
            &owner,
            company.unwrap_or(syncctl::config::DEFAULT_COMPANY),
            clock.clone(),
        ))
        .map_err(|e| usage(format!("{e:#}")))?;
    let pg = queue
        .postgres_handle()
        .ok_or_else(|| usage("store.url: not a postgres store"))?;
    Ok(syncctl::store::Invoices::postgres(
        syncctl::store::pg_invoices::PgInvoices::of(pg),
        clock,
    ))
}

/// `dian history`: the record, then every step of its history, codes in words.
fn print_history(store: &syncctl::store::Invoices, rec: &syncctl::store::InvoiceRecord) {
    use syncctl::compliance::machine::explain;
    let when = syncctl::engine::compliance::clock_time;
    println!(
        "{}  {}  {}  stripe {}  buyer {} {}  total COP {}.{:02}",
        rec.number,
        rec.status.symbol(),
        rec.status,
        rec.stripe_id,
        rec.buyer_id,
        rec.buyer_name,
        rec.total / 100,
        rec.total % 100
    );
    println!(
        "dated {}  attempts {}  alegra {}  cufe {}",
        rec.issue_date,
        rec.attempts,
        rec.alegra_id.as_deref().unwrap_or("-"),
        rec.cufe.as_deref().unwrap_or("-")
    );
    if rec.contingency {
        println!(
            "contingency invoice; transmit by {}",
            rec.deadline_at_ms
                .map_or("(when DIAN is back + deadline)".into(), |d| when(d)
                    + " COT")
        );
    }
    println!();
    for h in store.invoice_history(&rec.stripe_id).unwrap_or_default() {
        let code = h.code.as_deref().unwrap_or("");
        let words = explain(code);
        println!(
            "{}  {:>9} → {:<9} #{} {:<7} {}  [{}]{}",
            when(h.at_ms),
            h.from.as_deref().unwrap_or(""),
            h.to,
            h.attempt,
            code,
            h.message,
            h.actor,
            if words.is_empty() || h.message.contains(words) {
                String::new()
            } else {
                format!("\n{:>31}{code}: {words}", "")
            }
        );
    }
}

/// `syncctl ctl`: parses the words as a command (exit 2 if they are not one), sends it
/// to the engine at `url` with `token`, or to the one serving `dir` as this user, and
/// says its answer (exit 0 done, 1 refused, 3 unreachable). `syncctl ctl journal`:
/// [`ctl_journal`]. With `--dry-run`, a bulk command's impact preview, nothing done.
/// (`command` is a [`Command::Ctl`].)
async fn ctl(dir: &std::path::Path, command: Command) -> ExitCode {
    let Command::Ctl {
        url,
        company,
        token,
        mut json,
        mut dry_run,
        journal,
        mut words,
    } = command
    else {
        return ExitCode::from(2);
    };
    let token = token.token;
    match journal {
        Some(CtlJournal::Journal { limit }) => {
            return ctl_journal(dir, url, token, company, json, limit.into()).await;
        }
        Some(CtlJournal::Bundle { out, events }) => {
            return ctl_bundle(dir, url, token, company, out, events.into()).await;
        }
        Some(CtlJournal::Reconcile { limit }) => {
            return ctl_reconcile(dir, url, token, company, json, limit.into()).await;
        }
        Some(CtlJournal::Chain { key }) => {
            return ctl_chain(dir, url, token, company, json, &key).await;
        }
        None => {}
    }
    // `--dry-run` and `--json` after the command's words are the flags, not words.
    while words.len() > 1 {
        match words.last().map(String::as_str) {
            Some("--dry-run") => dry_run = true,
            Some("--json") => json = true,
            _ => break,
        }
        words.pop();
    }
    let command = match syncctl::protocol::Command::from_cli_args(&words) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let (base, token, local) = match ctl_engine(dir, url, token) {
        Ok(Some(engine)) => engine,
        Ok(None) => {
            eprintln!(
                "syncctl: no engine runs on {} (start one with `syncctl run`, or pass --url and --token)",
                dir.display()
            );
            return ExitCode::from(3);
        }
        Err(code) => return code,
    };
    let mut request = reqwest::Client::new()
        .post(format!("{base}/api/v1/commands"))
        .bearer_auth(&token)
        .json(&command_body(&command, dry_run, company.as_deref()))
        .timeout(std::time::Duration::from_secs(30));
    if local {
        request = request.header(
            syncctl::server::local::ACTOR_HEADER,
            syncctl::engine::operator(),
        );
    }
    let (status, body) = match request.send().await {
        Ok(r) => {
            let status = r.status();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
        Err(e) => {
            eprintln!("syncctl: the engine at {base} did not answer ({e}); nothing was done");
            return ExitCode::from(3);
        }
    };
    if json {
        println!("{body}");
    }
    if status.is_success() {
        let preview = dry_run
            .then(|| {
                serde_json::from_value::<syncctl::protocol::ImpactPreview>(body["preview"].clone())
                    .ok()
            })
            .flatten();
        match preview {
            _ if json => {}
            Some(p) => print!("{p}"),
            None => println!("{}", body["message"].as_str().unwrap_or("done")),
        }
        ExitCode::SUCCESS
    } else {
        let message = body["error"]["message"].as_str().unwrap_or("refused");
        eprintln!("syncctl: {command}: {message}");
        ExitCode::FAILURE
    }
}

/// `syncctl bundle show FILE`: the console over the bundle, frozen (exit 2 naming the
/// file when it is not one).
async fn bundle_show(file: &std::path::Path, fps: u32) -> anyhow::Result<ExitCode> {
    let mut frozen = match syncctl::frozen::FrozenBundle::open(file) {
        Ok(f) => f,
        Err(e) => return Ok(usage(e)),
    };
    syncctl::console::run(&mut frozen, fps).await?;
    Ok(ExitCode::SUCCESS)
}

/// `syncctl ctl bundle`: asks the engine `ctl` reaches for an incident bundle
/// (`GET /api/v1/bundle`) and writes it to `out` (default: named for when it was
/// taken, here), never over an existing file. Exit 0 written, 1 refused or not
/// written, 3 no engine reached.
async fn ctl_bundle(
    dir: &std::path::Path,
    url: Option<String>,
    token: Option<String>,
    company: Option<String>,
    out: Option<PathBuf>,
    events: usize,
) -> ExitCode {
    use syncctl::protocol::Bundle;
    let (base, token, local) = match ctl_engine(dir, url, token) {
        Ok(Some(engine)) => engine,
        Ok(None) => {
            eprintln!(
                "syncctl: no engine runs on {} (start one with `syncctl run`, or pass --url and --token)",
                dir.display()
            );
            return ExitCode::from(3);
        }
        Err(code) => return code,
    };
    let mut request = reqwest::Client::new()
        .get(format!("{base}/api/v1/bundle"))
        .query(&[("events", events.to_string())])
        .query(&company_query(company.as_deref()))
        .bearer_auth(&token)
        .timeout(std::time::Duration::from_secs(60));
    if local {
        request = request.header(
            syncctl::server::local::ACTOR_HEADER,
            syncctl::engine::operator(),
        );
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("syncctl: the engine at {base} did not answer ({e}); no bundle written");
            return ExitCode::from(3);
        }
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("syncctl: the engine at {base} did not send the whole bundle ({e})");
            return ExitCode::FAILURE;
        }
    };
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let message = v["error"]["message"].as_str().unwrap_or("refused");
        eprintln!("syncctl: bundle: {message}");
        return ExitCode::FAILURE;
    }
    let written = Bundle::decode(&body).and_then(|bundle| {
        let path = out.unwrap_or_else(|| PathBuf::from(Bundle::file_name(bundle.written_ms)));
        syncctl::protocol::bundle::write_new(&path, &bundle.encode()?)?;
        Ok((path, bundle))
    });
    match written {
        Ok((path, bundle)) => {
            println!(
                "incident bundle written: {} ({} audit events, {} series; secrets redacted)\n  open it with: syncctl bundle show {}",
                path.display(),
                bundle.snapshot.audit.len(),
                bundle.series.len(),
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncctl: bundle not written: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The console's frame rate from `--config` (the default without one, or when it does
/// not load: attaching needs no config).
fn max_fps(config: Option<&PathBuf>) -> u32 {
    config
        .and_then(|p| Config::load(p).ok())
        .unwrap_or_default()
        .console
        .max_fps
}

/// Where the engine serving `dir` is, from its control file (read again on every
/// reconnect: a restarted engine writes a new token).
fn local_endpoint(dir: &std::path::Path) -> Result<syncctl::attach::Endpoint, String> {
    let control = syncctl::server::local::read(dir).ok_or_else(|| {
        format!(
            "no engine serves {} (no readable {} there): start one with `syncctl run`, or give its URL",
            dir.display(),
            syncctl::server::local::CONTROL_FILE
        )
    })?;
    Ok(syncctl::attach::Endpoint {
        url: syncctl::attach::console_url(&control.url)?,
        token: Some(control.token),
    })
}

/// `syncctl attach [URL]`, and plain `syncctl` on a data dir whose engine runs: the
/// console over the engine's WebSocket until `q` detaches.
async fn attach(
    url: Option<String>,
    token: Option<String>,
    read_only: bool,
    company: Option<String>,
    dir: &std::path::Path,
    fps: u32,
) -> ExitCode {
    use syncctl::attach::{AttachError, Endpoint, RemoteEngine, Resolve, console_url};
    let resolve: Resolve = match url {
        None => {
            let dir = dir.to_path_buf();
            std::sync::Arc::new(move || local_endpoint(&dir))
        }
        Some(given) => {
            let url = match console_url(&given) {
                Ok(u) => u,
                Err(e) => return usage(e),
            };
            // The data dir's own engine, named by its address: its control file's token.
            let local = local_endpoint(dir).ok().filter(|e| e.url == url);
            let Some(token) = token.or_else(|| local.and_then(|e| e.token)) else {
                return usage(format!(
                    "attaching to {given} needs a token: --token TOKEN or SYNCCTL_TOKEN (one of that engine's [[server.tokens]])"
                ));
            };
            std::sync::Arc::new(move || {
                Ok(Endpoint {
                    url: url.clone(),
                    token: Some(token.clone()),
                })
            })
        }
    };
    // One company of an engine serving several: `?company=ID` on the console's URL
    // (the selector, `@`, watches the others).
    let hello = syncctl::attach::hello(read_only, fps);
    let mut engine = match RemoteEngine::connect_to(resolve, hello, company).await {
        Ok(e) => e,
        Err(e @ (AttachError::Unreachable(_) | AttachError::NotFound(_))) => {
            eprintln!("syncctl: {e}");
            return ExitCode::from(3);
        }
        Err(e @ AttachError::Refused(_)) => {
            eprintln!("syncctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = syncctl::console::run(&mut engine, fps).await;
    let to = engine.to();
    engine.detach().await;
    match result {
        Ok(()) => {
            eprintln!("syncctl: detached from the engine at {to}; it keeps running");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncctl: console failed: {e:#} (detached; the engine keeps running)");
            ExitCode::FAILURE
        }
    }
}

/// The engine `ctl` reaches: `--url` with its token, or the one serving `dir` (its
/// control file) as `(base URL, token, local)` — `local`: the caller names the person
/// acting. `None` when no engine serves `dir`; a usage error for `--url` alone.
fn ctl_engine(
    dir: &std::path::Path,
    url: Option<String>,
    token: Option<String>,
) -> Result<Option<(String, String, bool)>, ExitCode> {
    match (url, token) {
        (Some(url), Some(token)) => Ok(Some((url.trim_end_matches('/').to_owned(), token, false))),
        (Some(_), None) => Err(usage("--url needs --token (or SYNCCTL_TOKEN)")),
        (None, _) => match running_engine(dir) {
            Ok(found) => Ok(found.map(|c| (c.url, c.token, true))),
            Err(why) => {
                eprintln!("syncctl: {why}");
                Err(ExitCode::from(3))
            }
        },
    }
}

/// `syncctl ctl journal`: the newest `limit` operator actions, newest last, from the
/// engine `ctl` reaches, or from the store of `dir` when no engine serves it. Exit 0,
/// 1 when the engine refuses to answer, 3 when there is neither an engine nor a store.
async fn ctl_journal(
    dir: &std::path::Path,
    url: Option<String>,
    token: Option<String>,
    company: Option<String>,
    json: bool,
    limit: usize,
) -> ExitCode {
    use syncctl::protocol::{JournalEntry, utc_time};
    let read = match ctl_engine(dir, url, token) {
        Err(code) => return code,
        Ok(Some((base, token, _))) => {
            journal_from_engine(&base, &token, company.as_deref(), limit).await
        }
        Ok(None) => tokio::task::block_in_place(|| journal_from_store(dir, limit)),
    };
    let audit = match read {
        Ok(a) => a,
        Err((code, message)) => {
            eprintln!("syncctl: {message}");
            return ExitCode::from(code);
        }
    };
    let journal: Vec<JournalEntry> = audit
        .iter()
        .rev()
        .filter_map(JournalEntry::from_audit)
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&journal).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let who = journal.iter().map(|e| e.actor.chars().count()).max();
    for e in &journal {
        println!(
            "{}  {:who$}  {:<7}  {}  — {}",
            utc_time(e.at_ms),
            e.actor,
            e.result.word(),
            e.what(),
            e.message,
            who = who.unwrap_or_default()
        );
    }
    if journal.is_empty() {
        eprintln!("no operator actions yet");
    }
    ExitCode::SUCCESS
}

/// `syncctl ctl reconcile`: the running engine's reconciliation, its counts and
/// amounts then the worst `limit` rows (or its JSON).
/// A GET of `path` on the engine `ctl` finds (as [`ctl_engine`]): the answer's JSON
/// body, or the exit code after saying why not (3 unreachable, 1 refused).
async fn ctl_get(
    dir: &std::path::Path,
    url: Option<String>,
    token: Option<String>,
    company: Option<&str>,
    path: &str,
    query: &[(&str, String)],
) -> Result<(String, serde_json::Value), ExitCode> {
    let (base, token) = match ctl_engine(dir, url, token)? {
        Some((base, token, _)) => (base, token),
        None => {
            eprintln!(
                "syncctl: no engine runs on {} (start one with `syncctl run`, or pass --url and --token)",
                dir.display()
            );
            return Err(ExitCode::from(3));
        }
    };
    let answer = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .query(query)
        .query(&company_query(company))
        .bearer_auth(&token)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| {
            eprintln!("syncctl: the engine at {base} did not answer ({e})");
            ExitCode::from(3)
        })?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("refused");
        eprintln!("syncctl: the engine at {base} refused: {message}");
        return Err(ExitCode::FAILURE);
    }
    Ok((base, body))
}

/// The body of `POST /api/v1/commands` for `ctl`.
fn command_body(
    command: &syncctl::protocol::Command,
    dry_run: bool,
    company: Option<&str>,
) -> serde_json::Value {
    let mut body = serde_json::json!({ "command": command.to_string() });
    if dry_run {
        body["dry_run"] = true.into();
    }
    if let Some(c) = company {
        body["company"] = c.into();
    }
    body
}

/// `?company=ID` when a company is named (`--company`), else nothing.
fn company_query(company: Option<&str>) -> Vec<(&'static str, &str)> {
    company.map(|c| ("company", c)).into_iter().collect()
}

/// Reads a `ctl_get` body as `T`, or says it is not an engine's answer.
fn engine_answer<T: serde::de::DeserializeOwned>(
    base: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<T, ExitCode> {
    serde_json::from_value(body).map_err(|e| {
        eprintln!("syncctl: {base}{path}: not a syncctl engine's answer ({e})");
        ExitCode::FAILURE
    })
}

async fn ctl_reconcile(
    dir: &std::path::Path,
    url: Option<String>,
    token: Option<String>,
    company: Option<String>,
    json: bool,
    limit: usize,
) -> ExitCode {
    const PATH: &str = "/api/v1/reconciliation";
    let got = ctl_get(
        dir,
        url,
        token,
        company.as_deref(),
        PATH,
        &[("limit", limit.to_string())],
    )
    .await;
    let (base, body) = match got {
        Ok(b) => b,
        Err(code) => return code,
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match engine_answer(&base, PATH, body) {
        Ok(r) => print_reconciliation(&r),
        Err(code) => return code,
    }
    ExitCode::SUCCESS
}

/// `syncctl ctl chain KEY`.
async fn ctl_chain(
    dir: &std::path::Path,
    url: Option<String>,
    token: Option<String>,
    company: Option<String>,
    json: bool,
    key: &str,
) -> ExitCode {
    let path = format!("/api/v1/chain/{}", urlencoding::encode(key.trim()));
    let (base, body) = match ctl_get(dir, url, token, company.as_deref(), &path, &[]).await {
        Ok(b) => b,
        Err(code) => return code,
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match engine_answer(&base, &path, body) {
        Ok(chain) => print_chain(&chain),
        Err(code) => return code,
    }
    ExitCode::SUCCESS
}

/// `ctl chain`'s text: each link indented by its depth, its facts, where the systems
/// disagree, its newest events.
fn print_chain(chain: &syncctl::protocol::EntityChain) {
    use syncctl::protocol::utc_time;
    // Names and messages come from outside: shown, never obeyed by the terminal.
    macro_rules! println {
        ($($arg:tt)*) => {
            std::println!("{}", syncctl::protocol::text::printable(&format!($($arg)*)))
        };
    }
    for also in &chain.also {
        println!("({also})");
    }
    for link in &chain.links {
        let pad = "  ".repeat(usize::from(link.depth));
        let arrow = if link.depth == 0 { "" } else { "└ " };
        println!("{pad}{arrow}{} {}", link.system, link.id);
        for (k, v) in &link.facts {
            println!("{pad}    {k}: {v}");
        }
        for d in &link.disagreements {
            println!("{pad}    {}", d.describe(&link.system));
        }
        for e in link.events.iter().take(5) {
            println!("{pad}    {}  {}", utc_time(e.at_ms), e.message);
        }
        if link.events.len() > 5 {
            println!(
                "{pad}    … {} more (GET /api/v1/events?entity={}, or / on the Events screen)",
                link.events.len() - 5,
                link.id
            );
        }
    }
    if chain.more_invoices > 0 {
        println!("… and {} older invoices using it", chain.more_invoices);
    }
}

/// `ctl reconcile`'s text: the state, the counts and amounts, the rows.
fn print_reconciliation(r: &syncctl::protocol::ReconciliationView) {
    use syncctl::protocol::utc_time;
    let at = r
        .refreshed_ms
        .map(utc_time)
        .unwrap_or_else(|| "never".into());
    println!("{} (refreshed {at})", r.status);
    if !r.ready {
        return;
    }
    println!(
        "products {} · Items {} · in sync {} · cannot be an Item {}",
        r.products, r.items, r.in_sync, r.unsyncable
    );
    use syncctl::protocol::Money;
    use syncctl::protocol::text::amount as grouped;
    println!(
        "drift    {:>6}  {}  (name {}, price {}, active {})",
        r.drifted.count,
        Money::list(&r.drifted.amounts),
        r.drift_name,
        r.drift_price,
        r.drift_active
    );
    println!(
        "missing  {:>6}  {}  products with no Item",
        r.missing.count,
        Money::list(&r.missing.amounts)
    );
    println!(
        "orphan   {:>6}  {}  active Items with no product",
        r.orphans.count,
        Money::list(&r.orphans.amounts)
    );
    if r.rows.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<8} {:<20} {:<6} {:<24} {:>14} {:>14} {:>3} {:>14}  name",
        "kind", "product", "Item", "differs", "Stripe", "QuickBooks", "", "amount"
    );
    let price = |p: Option<f64>| p.map_or_else(|| "–".to_owned(), grouped);
    for d in &r.rows {
        let differs = match d.kind {
            syncctl::protocol::DiscrepancyKind::Drift => d
                .fields
                .iter()
                .map(|f| match (f.as_str(), d.inactive_side()) {
                    ("active", Some(side)) => format!("inactive-in-{side}"),
                    (f, _) => f.to_owned(),
                })
                .collect::<Vec<_>>()
                .join(","),
            syncctl::protocol::DiscrepancyKind::Missing => "no Item".into(),
            syncctl::protocol::DiscrepancyKind::Orphan => "no product".into(),
        };
        println!(
            "{:<8} {:<20} {:<6} {:<24} {:>14} {:>14} {:>3} {:>14}  {}",
            d.kind.word(),
            d.product_id.as_deref().unwrap_or("–"),
            d.item_id.as_deref().unwrap_or("–"),
            differs,
            price(d.stripe.as_ref().and_then(|s| s.price)),
            price(d.quickbooks.as_ref().and_then(|s| s.price)),
            d.currency,
            grouped(d.amount),
            d.name()
        );
    }
    if (r.rows.len() as u64) < r.total() {
        println!("… {} more (--limit N)", r.total() - r.rows.len() as u64);
    }
}

/// The newest `limit` operator entries of a running engine's audit trail
/// (`GET /api/v1/events?type=operator`); on failure the exit code (3: no answer, 1: a
/// refusal) and what went wrong.
async fn journal_from_engine(
    base: &str,
    token: &str,
    company: Option<&str>,
    limit: usize,
) -> Result<Vec<syncctl::protocol::AuditEntry>, (u8, String)> {
    let answer = reqwest::Client::new()
        .get(format!("{base}/api/v1/events"))
        .query(&[
            ("type", syncctl::protocol::OPERATOR),
            ("limit", &limit.to_string()),
        ])
        .query(&company_query(company))
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| (3, format!("the engine at {base} did not answer ({e})")))?;
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("refused");
        return Err((1, format!("the engine at {base} refused: {message}")));
    }
    serde_json::from_value(body["events"].clone()).map_err(|e| {
        (
            1,
            format!("{base}/api/v1/events: not a syncctl engine's answer ({e})"),
        )
    })
}

/// The newest `limit` operator entries of the store in `dir`, read with no engine
/// running on it; `Err` (exit 3) when there is no store to read.
fn journal_from_store(
    dir: &std::path::Path,
    limit: usize,
) -> Result<Vec<syncctl::protocol::AuditEntry>, (u8, String)> {
    let unreachable = |why: String| {
        (
            3,
            format!(
                "no engine runs on {} and {why} (start one with `syncctl run`, or pass --url and --token)",
                dir.display()
            ),
        )
    };
    // Never create a database here (see `dian_records`).
    let db = dir.join("syncctl.db");
    if std::fs::metadata(&db).map_or(true, |m| m.len() == 0) {
        return Err(unreachable(format!(
            "there is no store at {}",
            db.display()
        )));
    }
    let store = syncctl::store::Store::open(dir)
        .map_err(|e| unreachable(format!("its store cannot be read ({e:#})")))?;
    let filter = syncctl::protocol::AuditFilter {
        kinds: vec![syncctl::protocol::OPERATOR.into()],
        limit,
        ..Default::default()
    };
    store
        .audit_query(&filter)
        .map_err(|e| unreachable(format!("its store cannot be read ({e})")))
}

/// The engine serving `dir`, if one runs (it holds the data dir's lock): its control
/// file.
fn running_engine(
    dir: &std::path::Path,
) -> Result<Option<syncctl::server::local::Control>, String> {
    // No control file: no engine serves (or one is only starting). Asked before the
    // lock, so that asking creates nothing and never holds the lock an engine starting
    // at this instant needs.
    match std::fs::metadata(dir.join(syncctl::server::local::CONTROL_FILE)) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(format!(
                "{} is not readable by you ({}): the engine's data dir is private to the user it runs as; run as that user (`sudo -u USER syncctl --data-dir {}`) or attach by URL with a token (`SYNCCTL_TOKEN=… syncctl attach URL`)",
                dir.display(),
                syncctl::protocol::operator(),
                dir.display()
            ));
        }
        Err(_) => return Ok(None),
    }
    if syncctl::store::DataDirLock::acquire(dir, "engine").is_ok() {
        return Ok(None);
    }
    syncctl::server::local::read(dir).map(Some).ok_or_else(|| {
        format!(
            "an engine runs on {} but its control file ({}) is missing or unreadable: retry from its console or its API",
            dir.display(),
            syncctl::server::local::CONTROL_FILE
        )
    })
}

/// `dian retry` through a running engine's API, with the control file's token, as the
/// person running the command (audited as the engine audits any command).
fn retry_through_engine(
    command: DianCommand,
    control: &syncctl::server::local::Control,
    store: &syncctl::store::Store,
    actor: &str,
    company: Option<&str>,
) -> ExitCode {
    let (path, confirm) = match command {
        DianCommand::Retry {
            key: Some(key),
            failed: false,
            ..
        } => (
            format!("/api/v1/compliance/{}/retry", urlencoding::encode(&key)),
            None,
        ),
        DianCommand::Retry { yes, .. } => {
            let failed = store
                .invoices_in(syncctl::compliance::machine::Status::Failed)
                .map(|v| v.len())
                .unwrap_or_default();
            println!("{failed} FAILED invoices");
            if failed == 0 {
                return ExitCode::SUCCESS;
            }
            (
                "/api/v1/compliance/retry-failed".to_owned(),
                (!yes).then_some(failed),
            )
        }
        _ => return ExitCode::FAILURE,
    };
    if let Some(n) = confirm {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return usage("pass --yes to retry them without a terminal to confirm on");
        }
        eprint!("Retry {n} FAILED invoices? [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing retried");
            return ExitCode::SUCCESS;
        }
    }
    let url = format!("{}{path}", control.url);
    let answer = tokio::runtime::Handle::current().block_on(async {
        let r = reqwest::Client::new()
            .post(&url)
            .query(&company_query(company))
            .bearer_auth(&control.token)
            .header(syncctl::server::local::ACTOR_HEADER, actor)
            .json(&serde_json::json!({}))
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        Ok::<_, reqwest::Error>((status, body))
    });
    match answer {
        Ok((status, body)) if status.is_success() => {
            println!("{}", body["message"].as_str().unwrap_or("done"));
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            let message = body["error"]["message"].as_str().unwrap_or("refused");
            eprintln!("syncctl: {message}");
            if status == reqwest::StatusCode::NOT_FOUND
                || status == reqwest::StatusCode::BAD_REQUEST
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!(
                "syncctl: the engine on this data dir did not answer at {} ({e}); nothing was retried",
                control.url
            );
            ExitCode::FAILURE
        }
    }
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(text.as_bytes())
}
