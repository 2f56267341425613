//! Typed configuration: load, validate, fill in demo defaults, and locate files.
//!
//! Every key has a default documented in `config.example.toml`. Errors name the file,
//! the key and the line, because an operator fixing a config at 3 a.m. needs all three.
//! Secrets are held in [`Secret`], whose `Debug`/`Display` never print the value.

mod companies;

pub use crate::protocol::{THRESHOLDS, Threshold, check_threshold};
pub use companies::{COMPANY_TABLES, Company, CompanyConfig, DEFAULT_COMPANY, valid_company_id};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::protocol::FaultSettings;
use crate::resilience::autoscale::AutoscaleConfig;
use crate::resilience::breaker::{BreakerConfig, WindowKind};
use crate::resilience::retry::{Backoff, BudgetConfig, Jitter, RetryPolicy};
use crate::resilience::{DownstreamConfig, LimiterConfig};

/// A credential. Printing it in any form shows `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value itself; call only where it is sent to the service it belongs to.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub sandbox: SandboxConfig,
    pub stripe: StripeConfig,
    pub quickbooks: QuickBooksConfig,
    pub alegra: AlegraConfig,
    pub catalog: CatalogConfig,
    pub compliance: ComplianceConfig,
    pub console: ConsoleConfig,
    pub log: LogConfig,
    pub alerts: AlertsConfig,
    pub anomaly: AnomalyConfig,
    pub cache: CacheConfig,
    pub audit: AuditConfig,
    pub store: StoreConfig,
    /// `[[companies]]`: several companies served by one process, each laid over the
    /// top-level tables (see [`Config::companies`]). Empty: one company, `default`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub companies: Vec<CompanyConfig>,
    /// The file this was loaded from (thresholds tuned at run time are saved there).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The `[[companies]]` entry this is the effective config of ([`Config::companies`]):
    /// thresholds tuned at run time are saved in that entry, never in the shared
    /// top-level tables. None: the config has no `[[companies]]`.
    #[serde(skip)]
    pub company: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Engine HTTP server (webhooks, health). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Bearer tokens of the control API and the WebSocket feeds.
    pub tokens: Vec<TokenConfig>,
    /// UDP address (host:port) StatsD lines are sent to every second; none when unset.
    pub statsd: Option<String>,
    /// Seconds between heartbeats on the WebSocket feeds.
    pub ws_heartbeat_secs: u64,
    /// Host names the server answers to besides IP addresses and `localhost` (a
    /// `Host` header naming anything else is refused: DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Connections served at once; above it the longest-waiting connection that has not
    /// sent a whole request is closed, or, when every one is busy, the new one is
    /// answered 503 (kept well under the process's open-file limit).
    pub max_connections: usize,
    /// WebSockets (console and feeds) held at once; each keeps its connection while
    /// open. 0: half of `max_connections`. A WebSocket above it is answered 503.
    pub max_websockets: usize,
    /// Seconds a connection may take to send a request's headers (also how long an idle
    /// keep-alive connection is kept waiting for its next request).
    pub header_timeout_secs: u64,
    /// Seconds a request may take to send its body once its headers are in (408 after).
    pub body_timeout_secs: u64,
    /// Seconds a connection with no request being handled may stay without a byte read
    /// or written (a client that stopped reading its response) before it is closed.
    pub idle_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9870".parse().expect("static address"),
            tokens: Vec::new(),
            statsd: None,
            ws_heartbeat_secs: 30,
            allowed_hosts: Vec::new(),
            max_connections: 512,
            max_websockets: 0,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            idle_timeout_secs: 60,
        }
    }
}

/// One `[[server.tokens]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (shown in the audit trail and `/api/v1/ws/connections`).
    pub name: String,
    pub token: Secret,
    pub role: Role,
    /// Requests per minute this token may make (0 = no limit).
    #[serde(default = "default_token_rate")]
    pub rate_limit_per_min: u32,
}

fn default_token_rate() -> u32 {
    600
}

pub use crate::protocol::Role;

pub use crate::telemetry::settings::{AlertsConfig, AnomalyConfig};

/// The cache of QuickBooks lookups.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub ttl_secs: u64,
    /// Entries kept at most (least recently used go first).
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 300,
            max_entries: 10_000,
        }
    }
}

/// The audit trail (sync events and operator actions).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Entries older than this are removed.
    pub retention_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { retention_days: 90 }
    }
}

impl Config {
    /// Every threshold, in [`THRESHOLDS`] order.
    pub fn thresholds(&self) -> Vec<(&'static str, f64)> {
        THRESHOLDS
            .iter()
            .map(|t| (t.name, self.threshold(t.name).unwrap_or(f64::NAN)))
            .collect()
    }

    /// Sets thresholds all or nothing: an unknown name or a value out of bounds is an
    /// error naming it, and then nothing changed.
    pub fn set_thresholds(&mut self, changes: &[(String, f64)]) -> Result<(), String> {
        let mut next = self.clone();
        for (name, v) in changes {
            let t = check_threshold(name, *v)?;
            next.set_threshold(t.name, *v);
        }
        *self = next;
        Ok(())
    }
}

/// One table from threshold names to config fields, for reading and writing them.
macro_rules! threshold_fields {
    ($($name:literal => $section:ident . $field:ident : $ty:ty),* $(,)?) => {
        impl Config {
            /// A threshold's current value.
            #[allow(clippy::unnecessary_cast)]
            pub fn threshold(&self, name: &str) -> Option<f64> {
                match name {
                    $($name => Some(self.$section.$field as f64),)*
                    _ => None,
                }
            }

            /// Sets a threshold already checked by [`check_threshold`].
            #[allow(clippy::unnecessary_cast)]
            fn set_threshold(&mut self, name: &str, v: f64) {
                match name {
                    $($name => self.$section.$field = v as $ty,)*
                    _ => {}
                }
            }
        }
    };
}

threshold_fields! {
    "alerts.error_rate_percent" => alerts.error_rate_percent: f64,
    "alerts.latency_p95_ms" => alerts.latency_p95_ms: f64,
    "alerts.cache_miss_rate_percent" => alerts.cache_miss_rate_percent: f64,
    "alerts.consecutive_failures" => alerts.consecutive_failures: f64,
    "alerts.queue_depth" => alerts.queue_depth: f64,
    "alerts.queue_drain_secs" => alerts.queue_drain_secs: f64,
    "alerts.dian_failure_rate_percent" => alerts.dian_failure_rate_percent: f64,
    "alerts.for_secs" => alerts.for_secs: u64,
    "alerts.cooldown_secs" => alerts.cooldown_secs: u64,
    "alerts.clear_ratio" => alerts.clear_ratio: f64,
    "anomaly.z_threshold" => anomaly.z_threshold: f64,
    "anomaly.mad_threshold" => anomaly.mad_threshold: f64,
    "anomaly.min_samples" => anomaly.min_samples: u64,
    "anomaly.consecutive" => anomaly.consecutive: u64,
}

/// Writes thresholds into the config file at `path`, keeping its comments, its layout
/// and every other key (the file is created if missing). With `company`, into that
/// `[[companies]]` entry's own `alerts`/`anomaly` tables (the other companies and the
/// shared top level keep theirs). Written to a temporary file and renamed, so a crash
/// never leaves half a file.
pub fn persist_thresholds(
    path: &Path,
    company: Option<&str>,
    values: &[(String, f64)],
) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow::anyhow!("{}: cannot read: {e}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // Where the thresholds go: the top level, or the company's entry.
    let root: &mut toml_edit::Table = match company {
        None => doc.as_table_mut(),
        Some(id) => {
            let entry = doc
                .get_mut("companies")
                .and_then(toml_edit::Item::as_array_of_tables_mut)
                .and_then(|a| {
                    a.iter_mut()
                        .find(|t| t.get("id").and_then(toml_edit::Item::as_str) == Some(id))
                });
            match entry {
                Some(t) => t,
                None => anyhow::bail!(
                    "{}: no [[companies]] entry with id {id:?} to save its thresholds in",
                    path.display()
                ),
            }
        }
    };
    for (name, v) in values {
        let t = check_threshold(name, *v).map_err(|e| anyhow::anyhow!(e))?;
        let (section, key) = name.split_once('.').expect("dotted threshold name");
        if !root.contains_key(section) {
            let mut new = toml_edit::Table::new();
            // A company's: `[companies.alerts]` right under its entry.
            new.set_implicit(false);
            root.insert(section, toml_edit::Item::Table(new));
        }
        let Some(table) = root[section].as_table_like_mut() else {
            anyhow::bail!("{}: `{section}` is not a table", path.display());
        };
        let value = if t.integer {
            toml_edit::value(*v as i64)
        } else {
            toml_edit::value(*v)
        };
        match table.get_mut(key) {
            // Keep the key's own decoration (comments above it, spacing).
            Some(item) => {
                let decor = item.as_value().map(|x| x.decor().clone());
                *item = value;
                if let (Some(d), Some(x)) = (decor, item.as_value_mut()) {
                    *x.decor_mut() = d;
                }
            }
            None => {
                table.insert(key, value);
            }
        }
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir {
        std::fs::create_dir_all(d)?;
    }
    replace_keeping_mode(path, doc.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
}

/// Replaces the file at `path` with `bytes` through a temporary file beside it and a
/// rename, so a crash never leaves half a file. The new file keeps the old one's mode
/// and (where the process may set it) its owner and group; a file created here is
/// `0600` (a config holds API tokens and secrets). The umask never widens it. A path
/// that is a symlink has the file it points at replaced; the link stays.
pub fn replace_keeping_mode(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let resolved = std::fs::canonicalize(path).ok();
    let path = resolved.as_deref().unwrap_or(path);
    let old = std::fs::metadata(path).ok();
    let tmp = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Nobody else can read the temporary file while it is written.
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let mode = old.as_ref().map_or(0o600, |m| m.mode() & 0o7777);
            if let Some(m) = &old {
                // Only root may give a file away; anyone may keep their own group. Not
                // being allowed is fine: the file stays ours, with the old mode.
                let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
            }
            // After the chown (which may clear set-id bits), exactly the old mode.
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Where `syncctl demo` and `syncctl sandbox` serve the simulated APIs.
    pub listen: SocketAddr,
    /// Catalog size of a new sandbox world.
    pub products: usize,
    /// Seed of the data generator (same seed, same world).
    pub seed: u64,
    /// Latency added to every simulated API response, in milliseconds.
    pub latency_ms: u64,
    /// How often the simulated catalog changes while it runs (0 = never).
    pub change_interval_ms: u64,
    /// Faults per simulated service (`stripe`, `quickbooks`, `alegra`, `dian`), as
    /// `POST /_sandbox/faults` sets them at run time.
    pub faults: BTreeMap<String, FaultSettings>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9871".parse().expect("static address"),
            products: 2500,
            seed: 42,
            latency_ms: 15,
            change_interval_ms: 1500,
            faults: default_sandbox_faults(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeConfig {
    pub api_key: Option<Secret>,
    pub base_url: Option<String>,
    pub webhook_secret: Option<Secret>,
    pub webhook_tolerance_secs: u64,
    /// Products per list page (Stripe allows 1–100).
    pub page_size: u32,
    pub timeout_secs: u64,
    /// Requests per minute the engine allows itself (0 = no limit).
    pub rate_limit_per_min: u32,
    /// Requests in flight at once (0 = no cap).
    pub max_concurrent: u32,
    /// Pause after a 429 that carries no `Retry-After`.
    pub throttle_pause_secs: u64,
    pub breaker: BreakerSettings,
    pub retry: RetrySettings,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: None,
            webhook_secret: None,
            webhook_tolerance_secs: 300,
            page_size: 100,
            timeout_secs: 30,
            rate_limit_per_min: 6000,
            max_concurrent: 0,
            throttle_pause_secs: 1,
            breaker: BreakerSettings::default(),
            retry: RetrySettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuickBooksConfig {
    pub base_url: Option<String>,
    pub realm_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub token_url: Option<String>,
    /// Income account every Service item books to (`IncomeAccountRef.value`).
    pub income_account_ref: String,
    pub minor_version: u32,
    pub timeout_secs: u64,
    /// Requests per minute the engine allows itself (Intuit: 500 per company).
    pub rate_limit_per_min: u32,
    /// Requests in flight at once (Intuit: 10 per app and company).
    pub max_concurrent: u32,
    /// Pause after a 429 (Intuit says 60 s).
    pub throttle_pause_secs: u64,
    pub breaker: BreakerSettings,
    pub retry: RetrySettings,
}

impl Default for QuickBooksConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            realm_id: None,
            client_id: None,
            client_secret: None,
            refresh_token: None,
            token_url: None,
            income_account_ref: "1".into(),
            minor_version: 75,
            timeout_secs: 60,
            rate_limit_per_min: 500,
            max_concurrent: 10,
            throttle_pause_secs: 60,
            breaker: BreakerSettings::default(),
            retry: RetrySettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// How often `/v1/events` is read to catch webhooks that never arrived.
    pub reconcile_interval_secs: u64,
    /// Concurrent catalog workers.
    pub workers: usize,
    /// Attempts before a job is marked failed.
    pub max_attempts: u32,
    /// Lease a worker holds on a claimed job; an expired lease is claimable again.
    pub lease_secs: u64,
    /// Workers the auto-scaler may not go below / above.
    pub workers_min: usize,
    pub workers_max: usize,
    /// Follow measured latency and throughput (false: always `workers`).
    pub autoscale: bool,
    /// Latency above this × the baseline counts as overload.
    pub latency_tolerance: f64,
    /// Most jobs one worker claims at once (the batch adapts between 1 and this); their
    /// writes leave as QuickBooks batches (≤ 30 operations each).
    pub claim_batch_max: u32,
    /// Finished (done) jobs are compacted away this many days after they finished; the
    /// mappings, the audit trail and the counts keep what they did.
    pub done_retention_days: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            reconcile_interval_secs: 60,
            workers: 8,
            max_attempts: 8,
            lease_secs: 120,
            workers_min: 1,
            workers_max: 32,
            autoscale: true,
            latency_tolerance: 1.25,
            claim_batch_max: 30,
            done_retention_days: 7,
        }
    }
}

/// Alegra (e-invoicing provider). The compliance pipeline adds its credentials.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlegraConfig {
    /// API base, e.g. `https://api.alegra.com/api/v1`. Unset: no compliance pipeline.
    pub base_url: Option<String>,
    /// Basic auth user (the account's email) and API token.
    pub email: Option<String>,
    pub token: Option<Secret>,
    /// The issuer's NIT without check digit, and the numbering range's technical key
    /// (used to verify the CUFE Alegra returns).
    pub issuer_nit: Option<String>,
    pub technical_key: Option<Secret>,
    /// DIAN environment: `1` production, `2` test.
    pub environment: String,
    /// Invoice numbers: prefix and first consecutive of the authorised range.
    pub number_prefix: String,
    pub number_start: u64,
    pub timeout_secs: u64,
    /// Requests per minute the engine allows itself (Alegra: 150 per user).
    pub rate_limit_per_min: u32,
    /// Requests in flight at once (0 = no cap).
    pub max_concurrent: u32,
    /// Pause after a 429 without `Retry-After` (Alegra's window is a minute).
    pub throttle_pause_secs: u64,
    pub breaker: BreakerSettings,
    pub retry: RetrySettings,
}

impl Default for AlegraConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            email: None,
            token: None,
            issuer_nit: None,
            technical_key: None,
            environment: "2".into(),
            number_prefix: "SETP".into(),
            number_start: 990_000_001,
            timeout_secs: 30,
            rate_limit_per_min: 150,
            max_concurrent: 0,
            throttle_pause_secs: 60,
            breaker: BreakerSettings::default(),
            retry: RetrySettings::default(),
        }
    }
}

/// `[<service>.breaker]`: the circuit breaker guarding one downstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// `count` (the last `window_size` calls) or `time` (the last `window_size` seconds).
    pub window: WindowKind,
    pub window_size: u32,
    /// No verdict below this many calls in the window.
    pub minimum_calls: u32,
    /// Percent of failed calls that opens the breaker (at `>=`).
    pub failure_rate_threshold: f64,
    /// Percent of slow calls that opens the breaker (at `>=`; 100 = only all slow).
    pub slow_call_rate_threshold: f64,
    /// A call is slow when it takes longer than this.
    pub slow_call_ms: u64,
    /// Wait in OPEN before trial calls.
    pub open_wait_secs: u64,
    /// Each consecutive open multiplies the wait by this, up to `open_wait_max_secs`.
    pub open_wait_multiplier: f64,
    pub open_wait_max_secs: u64,
    /// Trial calls let through in HALF_OPEN.
    pub half_open_permits: u32,
    /// Answered failures in a row that open the circuit at once (more when failures
    /// were already common; timeouts neither extend nor end a run); 0 = only the
    /// rates open it.
    pub consecutive_failures: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        let b = BreakerConfig::default();
        Self {
            window: b.window,
            window_size: b.window_size,
            minimum_calls: b.minimum_calls,
            failure_rate_threshold: b.failure_rate,
            slow_call_rate_threshold: b.slow_call_rate,
            slow_call_ms: b.slow_call.as_millis() as u64,
            open_wait_secs: b.open_wait.as_secs(),
            open_wait_multiplier: b.open_wait_multiplier,
            open_wait_max_secs: b.open_wait_max.as_secs(),
            half_open_permits: b.half_open_permits,
            consecutive_failures: b.consecutive_failures,
        }
    }
}

impl BreakerSettings {
    pub fn to_config(&self) -> BreakerConfig {
        BreakerConfig {
            window: self.window,
            window_size: self.window_size,
            minimum_calls: self.minimum_calls,
            failure_rate: self.failure_rate_threshold,
            slow_call_rate: self.slow_call_rate_threshold,
            slow_call: Duration::from_millis(self.slow_call_ms),
            open_wait: Duration::from_millis(self.open_wait_ms()),
            open_wait_multiplier: self.open_wait_multiplier,
            open_wait_max: Duration::from_secs(self.open_wait_max_secs),
            half_open_permits: self.half_open_permits,
            consecutive_failures: self.consecutive_failures,
        }
    }
    fn open_wait_ms(&self) -> u64 {
        self.open_wait_secs * 1000
    }
}

/// `[<service>.retry]`: how calls to one downstream are retried.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// `exponential`, `linear` or `fibonacci`.
    pub backoff: Backoff,
    /// `none`, `full`, `equal` or `decorrelated`.
    pub jitter: Jitter,
    pub base_ms: u64,
    pub cap_ms: u64,
    /// Attempts in all, the first included (only idempotent requests are retried).
    pub max_attempts: u32,
    /// Retries allowed as a percentage of requests, over `budget_ttl_secs`.
    pub budget_percent: f64,
    /// Retries always allowed per second, even with little traffic.
    pub budget_min_per_sec: u32,
    pub budget_ttl_secs: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        let r = RetryPolicy::default();
        let b = BudgetConfig::default();
        Self {
            backoff: r.backoff,
            jitter: r.jitter,
            base_ms: r.base.as_millis() as u64,
            cap_ms: r.cap.as_millis() as u64,
            max_attempts: r.max_attempts,
            budget_percent: b.percent_can_retry * 100.0,
            budget_min_per_sec: b.min_retries_per_sec,
            budget_ttl_secs: b.ttl.as_secs(),
        }
    }
}

/// The resilience policy of one downstream, from its section's keys.
pub fn downstream_config(k: &ServiceKeys<'_>) -> DownstreamConfig {
    DownstreamConfig {
        breaker: k.breaker.to_config(),
        limiter: LimiterConfig {
            rate_per_min: k.rate_limit_per_min,
            max_concurrent: k.max_concurrent,
            // Half a second's worth back to back: slots lost while no worker was ready
            // are made up, and a service allowing a second's burst never sees a 429.
            burst: (k.rate_limit_per_min / 120).max(1),
            default_pushback: Duration::from_secs(k.throttle_pause_secs),
            ..LimiterConfig::default()
        },
        retry: RetryPolicy {
            backoff: k.retry.backoff,
            jitter: k.retry.jitter,
            base: Duration::from_millis(k.retry.base_ms),
            cap: Duration::from_millis(k.retry.cap_ms),
            max_attempts: k.retry.max_attempts.max(1),
        },
        budget: BudgetConfig {
            ttl: Duration::from_secs(k.retry.budget_ttl_secs.max(1)),
            min_retries_per_sec: k.retry.budget_min_per_sec,
            percent_can_retry: k.retry.budget_percent / 100.0,
        },
        timeout: Duration::from_secs(k.timeout_secs.max(1)),
    }
}

/// The resilience keys every downstream's section has.
pub struct ServiceKeys<'a> {
    pub breaker: &'a BreakerSettings,
    pub retry: &'a RetrySettings,
    pub rate_limit_per_min: u32,
    pub max_concurrent: u32,
    pub throttle_pause_secs: u64,
    pub timeout_secs: u64,
}

/// The downstreams with a resilience policy, in display order.
pub const DOWNSTREAMS: [&str; 3] = ["stripe", "quickbooks", "alegra"];

impl Config {
    /// The resilience keys of `[stripe]`, `[quickbooks]` or `[alegra]`.
    pub fn service_keys(&self, name: &str) -> Option<ServiceKeys<'_>> {
        macro_rules! keys {
            ($s:expr) => {
                ServiceKeys {
                    breaker: &$s.breaker,
                    retry: &$s.retry,
                    rate_limit_per_min: $s.rate_limit_per_min,
                    max_concurrent: $s.max_concurrent,
                    throttle_pause_secs: $s.throttle_pause_secs,
                    timeout_secs: $s.timeout_secs,
                }
            };
        }
        Some(match name {
            "stripe" => keys!(self.stripe),
            "quickbooks" => keys!(self.quickbooks),
            "alegra" => keys!(self.alegra),
            _ => return None,
        })
    }

    /// The resilience policy of one downstream (see [`DOWNSTREAMS`]).
    pub fn downstream(&self, name: &str) -> Option<DownstreamConfig> {
        self.service_keys(name).map(|k| downstream_config(&k))
    }

    pub fn catalog_autoscale(&self) -> AutoscaleConfig {
        let c = &self.catalog;
        AutoscaleConfig {
            min: c.workers_min as u32,
            max: c.workers_max as u32,
            tolerance: c.latency_tolerance,
            ..AutoscaleConfig::default()
        }
    }
}

/// The demo's quotas: QuickBooks' shape (10 in flight, 429 with XML 3001) at a rate
/// scaled up so a 2,500-product sync takes about a minute, not thirteen.
pub fn default_sandbox_faults() -> BTreeMap<String, FaultSettings> {
    let mut m = BTreeMap::new();
    m.insert(
        "quickbooks".to_owned(),
        FaultSettings {
            rate_limit_per_min: 6000,
            max_concurrent: 10,
            ..FaultSettings::default()
        },
    );
    // Alegra's 150/min per user, scaled the same way.
    m.insert(
        "alegra".to_owned(),
        FaultSettings {
            rate_limit_per_min: 1500,
            ..FaultSettings::default()
        },
    );
    m
}

/// The invoice compliance pipeline (Stripe invoices → Alegra → DIAN).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplianceConfig {
    /// Waits before each retry of an invoice DIAN has not accepted, in seconds; after
    /// the last one the invoice is FAILED and needs an operator.
    pub retry_schedule_secs: Vec<u64>,
    /// How often an invoice awaiting DIAN's answer is read again.
    pub poll_secs: u64,
    /// Sends in flight at once (within Alegra's rate limit).
    pub workers: usize,
    /// How often Stripe's paid invoices are listed (webhooks that never came).
    pub list_interval_secs: u64,
    /// DIAN outage confirmation: this many failed probes, this far apart.
    pub contingency_probes: u32,
    pub contingency_probe_interval_secs: u64,
    /// Contingency invoices must reach DIAN within this many hours of restoration.
    pub contingency_deadline_hours: u64,
    /// Backups of pending invoices and old records are removed after this many days.
    pub retention_days: u64,
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        Self {
            retry_schedule_secs: vec![60, 300, 900],
            poll_secs: 5,
            workers: 4,
            list_interval_secs: 300,
            contingency_probes: 4,
            contingency_probe_interval_secs: 20,
            contingency_deadline_hours: 48,
            retention_days: 90,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Most frames per second drawn while data changes (input is drawn at once).
    pub max_fps: u32,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self { max_fps: 4 }
    }
}

/// Where the engine's state lives.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Absent: SQLite in the data dir (the embedded store, one box). A
    /// `postgres://user:password@host:port/database` URL: the catalog's job queue lives in
    /// that PostgreSQL database, shared by every engine pointed at it (the rest of the
    /// state stays in the data dir's SQLite for now). It may carry a password: held as a
    /// secret, never printed; `SYNCCTL_STORE_URL` may carry it instead.
    pub url: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `syncctl=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// A config problem, located as precisely as the input allows.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// Environment variables that may carry secrets instead of the file.
pub const ENV_SECRETS: &[(&str, &str)] = &[
    ("SYNCCTL_STRIPE_API_KEY", "stripe.api_key"),
    ("SYNCCTL_STRIPE_WEBHOOK_SECRET", "stripe.webhook_secret"),
    (
        "SYNCCTL_QUICKBOOKS_CLIENT_SECRET",
        "quickbooks.client_secret",
    ),
    (
        "SYNCCTL_QUICKBOOKS_REFRESH_TOKEN",
        "quickbooks.refresh_token",
    ),
    ("SYNCCTL_STORE_URL", "store.url"),
];

impl Config {
    /// Parses TOML text; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| locate(text, path, "", &e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            locate(text, path, &key, e.inner())
        })?;
        config.validate(text, path)?;
        config.validate_companies(text, path)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut c = Self::parse(&text, path)?;
        c.source = Some(path.to_owned());
        Ok(c)
    }

    #[expect(
        clippy::too_many_lines,
        reason = "every key's check in the order of the file"
    )]
    fn validate(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let fail = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of_key(text, key),
            key: key.to_owned(),
            message: message.to_owned(),
        };
        if !(1..=100).contains(&self.stripe.page_size) {
            return Err(fail("stripe.page_size", "must be between 1 and 100"));
        }
        if let Some(url) = &self.store.url
            && let Err(e) = check_store_url(url.expose())
        {
            return Err(fail("store.url", &e));
        }
        if self.catalog.workers == 0 || self.catalog.workers > 256 {
            return Err(fail("catalog.workers", "must be between 1 and 256"));
        }
        if self.catalog.max_attempts == 0 {
            return Err(fail("catalog.max_attempts", "must be at least 1"));
        }
        if self.catalog.reconcile_interval_secs == 0 {
            return Err(fail(
                "catalog.reconcile_interval_secs",
                "must be at least 1",
            ));
        }
        let c = &self.catalog;
        if c.workers_min == 0 || c.workers_min > c.workers_max {
            return Err(fail(
                "catalog.workers_min",
                "must be at least 1 and at most catalog.workers_max",
            ));
        }
        if c.workers_max > 256 {
            return Err(fail("catalog.workers_max", "must be at most 256"));
        }
        if c.latency_tolerance <= 1.0 || !c.latency_tolerance.is_finite() {
            return Err(fail(
                "catalog.latency_tolerance",
                "must be greater than 1.0",
            ));
        }
        if c.claim_batch_max == 0 || c.claim_batch_max > 100 {
            return Err(fail("catalog.claim_batch_max", "must be between 1 and 100"));
        }
        let k = &self.compliance;
        if k.retry_schedule_secs.is_empty() || k.retry_schedule_secs.len() > 20 {
            return Err(fail(
                "compliance.retry_schedule_secs",
                "must list 1 to 20 waits in seconds, e.g. [60, 300, 900]",
            ));
        }
        for (key, v) in [
            ("compliance.poll_secs", k.poll_secs),
            ("compliance.list_interval_secs", k.list_interval_secs),
            (
                "compliance.contingency_probe_interval_secs",
                k.contingency_probe_interval_secs,
            ),
            (
                "compliance.contingency_deadline_hours",
                k.contingency_deadline_hours,
            ),
            ("compliance.retention_days", k.retention_days),
            ("alegra.timeout_secs", self.alegra.timeout_secs),
        ] {
            if v == 0 {
                return Err(fail(key, "must be at least 1"));
            }
        }
        if k.workers == 0 || k.workers > 64 {
            return Err(fail("compliance.workers", "must be between 1 and 64"));
        }
        if !matches!(self.alegra.environment.as_str(), "1" | "2") {
            return Err(fail(
                "alegra.environment",
                "must be \"1\" (production) or \"2\" (test)",
            ));
        }
        if self.alegra.number_prefix.len() > 4
            || !self
                .alegra
                .number_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        {
            return Err(fail(
                "alegra.number_prefix",
                "must be up to 4 letters or digits (DIAN's prefix)",
            ));
        }
        for service in DOWNSTREAMS {
            let Some(ServiceKeys {
                breaker: b,
                retry: r,
                ..
            }) = self.service_keys(service)
            else {
                continue;
            };
            for (key, v) in [
                ("failure_rate_threshold", b.failure_rate_threshold),
                ("slow_call_rate_threshold", b.slow_call_rate_threshold),
            ] {
                if !(v > 0.0 && v <= 100.0) {
                    return Err(fail(
                        &format!("{service}.breaker.{key}"),
                        "must be a percentage above 0 and at most 100",
                    ));
                }
            }
            if b.window_size == 0 {
                return Err(fail(
                    &format!("{service}.breaker.window_size"),
                    "must be at least 1",
                ));
            }
            if b.half_open_permits == 0 {
                return Err(fail(
                    &format!("{service}.breaker.half_open_permits"),
                    "must be at least 1",
                ));
            }
            if b.open_wait_multiplier < 1.0 || !b.open_wait_multiplier.is_finite() {
                return Err(fail(
                    &format!("{service}.breaker.open_wait_multiplier"),
                    "must be at least 1.0",
                ));
            }
            if r.max_attempts == 0 {
                return Err(fail(
                    &format!("{service}.retry.max_attempts"),
                    "must be at least 1",
                ));
            }
            if r.cap_ms < r.base_ms {
                return Err(fail(
                    &format!("{service}.retry.cap_ms"),
                    "must be at least retry.base_ms",
                ));
            }
            if !(0.0..=100.0).contains(&r.budget_percent) {
                return Err(fail(
                    &format!("{service}.retry.budget_percent"),
                    "must be between 0 and 100",
                ));
            }
        }
        for (service, f) in &self.sandbox.faults {
            if !crate::protocol::FAULT_SERVICES.contains(&service.as_str()) {
                return Err(fail(
                    &format!("sandbox.faults.{service}"),
                    &format!(
                        "unknown service (one of {})",
                        crate::protocol::FAULT_SERVICES.join(", ")
                    ),
                ));
            }
            if let Err(e) = f.validate() {
                let key = e.split_whitespace().next().unwrap_or("");
                return Err(fail(&format!("sandbox.faults.{service}.{key}"), &e));
            }
        }
        if self.console.max_fps == 0 || self.console.max_fps > 60 {
            return Err(fail("console.max_fps", "must be between 1 and 60"));
        }
        for (key, url) in [
            ("stripe.base_url", &self.stripe.base_url),
            ("quickbooks.base_url", &self.quickbooks.base_url),
            ("quickbooks.token_url", &self.quickbooks.token_url),
            ("alegra.base_url", &self.alegra.base_url),
        ] {
            if let Some(url) = url
                && let Err(e) = check_url(url)
            {
                return Err(fail(key, &e));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(fail("log.level", "is not a valid tracing filter"));
        }
        for (name, v) in self.thresholds() {
            if let Err(e) = check_threshold(name, v) {
                return Err(fail(name, &e));
            }
        }
        for (i, t) in self.server.tokens.iter().enumerate() {
            // Each entry's error points at its own line.
            let at = |field: &str, message: String| ConfigError::Invalid {
                path: path.to_owned(),
                line: line_of_entry_key(text, "server.tokens", i, field),
                key: format!("server.tokens.{field}"),
                message,
            };
            let entry = i + 1;
            let name = t.name.trim();
            if name.is_empty()
                || t.name.chars().count() > 64
                || t.name.chars().any(char::is_control)
            {
                return Err(at(
                    "name",
                    format!("entry {entry}: must be 1 to 64 printable characters"),
                ));
            }
            if self.server.tokens[..i]
                .iter()
                .any(|o| o.name.trim() == name)
            {
                return Err(at(
                    "name",
                    format!(
                        "entry {entry}: {:?} is already another entry's name (the audit trail tells tokens apart by name)",
                        t.name
                    ),
                ));
            }
            let secret = t.token.expose();
            if secret.chars().count() < 16 || secret.chars().count() > 256 {
                return Err(at(
                    "token",
                    format!(
                        "token {:?} (entry {entry}) must be 16 to 256 characters",
                        t.name
                    ),
                ));
            }
            if !secret.chars().all(|c| c.is_ascii_graphic()) {
                return Err(at(
                    "token",
                    format!(
                        "token {:?} (entry {entry}) must be printable ASCII without spaces",
                        t.name
                    ),
                ));
            }
            if self.server.tokens[..i]
                .iter()
                .any(|o| o.token.expose() == secret)
            {
                return Err(at(
                    "token",
                    format!("token {:?} repeats another entry's token", t.name),
                ));
            }
            if t.rate_limit_per_min > 1_000_000 {
                return Err(at(
                    "rate_limit_per_min",
                    format!(
                        "entry {entry}: must be between 0 (no limit) and 1000000, got {}",
                        t.rate_limit_per_min
                    ),
                ));
            }
        }
        if let Some(addr) = &self.server.statsd {
            let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(fail(
                    "server.statsd",
                    "must be HOST:PORT, e.g. \"127.0.0.1:8125\"",
                ));
            }
        }
        if self.server.ws_heartbeat_secs == 0 {
            return Err(fail("server.ws_heartbeat_secs", "must be at least 1"));
        }
        if self.cache.max_entries == 0 {
            return Err(fail("cache.max_entries", "must be at least 1"));
        }
        if self.audit.retention_days == 0 {
            return Err(fail("audit.retention_days", "must be at least 1"));
        }
        self.validate_ranges(&fail)
    }

    /// Every numeric key within a range the engine works in, and every text key in its
    /// form: a value that parses but would break the engine (a zero timeout fails every
    /// call, a zero lease lets several workers take the same product) is refused here.
    #[expect(
        clippy::too_many_lines,
        reason = "every key's check in the order of the file"
    )]
    fn validate_ranges(&self, fail: &dyn Fn(&str, &str) -> ConfigError) -> Result<(), ConfigError> {
        const DAY: u64 = 86_400;
        let range = |key: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(fail(
                    key,
                    &format!("must be between {min} and {max}, got {v}"),
                ))
            }
        };
        let s = &self.server;
        range("server.ws_heartbeat_secs", s.ws_heartbeat_secs, 1, 3600)?;
        range(
            "server.max_connections",
            s.max_connections as u64,
            4,
            100_000,
        )?;
        if s.max_websockets >= s.max_connections {
            return Err(fail(
                "server.max_websockets",
                &format!(
                    "must be below server.max_connections ({}), or 0 for half of it: WebSockets must leave room for /health and webhooks",
                    s.max_connections
                ),
            ));
        }
        range("server.header_timeout_secs", s.header_timeout_secs, 1, 600)?;
        range("server.body_timeout_secs", s.body_timeout_secs, 1, 3600)?;
        range("server.idle_timeout_secs", s.idle_timeout_secs, 1, 86_400)?;
        for h in &s.allowed_hosts {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !ok {
                return Err(fail(
                    "server.allowed_hosts",
                    &format!(
                        "{:?} is not a host name (letters, digits, dots and dashes)",
                        h.chars().take(60).collect::<String>()
                    ),
                ));
            }
        }
        let sb = &self.sandbox;
        range("sandbox.products", sb.products as u64, 0, 1_000_000)?;
        range("sandbox.latency_ms", sb.latency_ms, 0, 60_000)?;
        range(
            "sandbox.change_interval_ms",
            sb.change_interval_ms,
            0,
            DAY * 1000,
        )?;
        range(
            "stripe.webhook_tolerance_secs",
            self.stripe.webhook_tolerance_secs,
            0,
            DAY,
        )?;
        for (service, timeout) in [
            ("stripe", self.stripe.timeout_secs),
            ("quickbooks", self.quickbooks.timeout_secs),
            ("alegra", self.alegra.timeout_secs),
        ] {
            range(&format!("{service}.timeout_secs"), timeout, 1, 600)?;
            let Some(k) = self.service_keys(service) else {
                continue;
            };
            let key = |k: &str| format!("{service}.{k}");
            range(
                &key("rate_limit_per_min"),
                u64::from(k.rate_limit_per_min),
                0,
                1_000_000,
            )?;
            range(&key("max_concurrent"), u64::from(k.max_concurrent), 0, 1000)?;
            range(&key("throttle_pause_secs"), k.throttle_pause_secs, 1, 3600)?;
            let b = k.breaker;
            range(
                &key("breaker.window_size"),
                u64::from(b.window_size),
                1,
                10_000,
            )?;
            range(
                &key("breaker.minimum_calls"),
                u64::from(b.minimum_calls),
                1,
                10_000,
            )?;
            range(&key("breaker.slow_call_ms"), b.slow_call_ms, 1, 3_600_000)?;
            range(&key("breaker.open_wait_secs"), b.open_wait_secs, 1, DAY)?;
            if b.open_wait_multiplier > 100.0 {
                return Err(fail(
                    &key("breaker.open_wait_multiplier"),
                    "must be between 1.0 and 100.0",
                ));
            }
            range(
                &key("breaker.open_wait_max_secs"),
                b.open_wait_max_secs,
                b.open_wait_secs,
                7 * DAY,
            )?;
            range(
                &key("breaker.half_open_permits"),
                u64::from(b.half_open_permits),
                1,
                1000,
            )?;
            range(
                &key("breaker.consecutive_failures"),
                u64::from(b.consecutive_failures),
                0,
                10_000,
            )?;
            let r = k.retry;
            range(&key("retry.base_ms"), r.base_ms, 1, 3_600_000)?;
            range(&key("retry.cap_ms"), r.cap_ms, r.base_ms.max(1), DAY * 1000)?;
            range(
                &key("retry.max_attempts"),
                u64::from(r.max_attempts),
                1,
                100,
            )?;
            range(
                &key("retry.budget_min_per_sec"),
                u64::from(r.budget_min_per_sec),
                0,
                100_000,
            )?;
            range(&key("retry.budget_ttl_secs"), r.budget_ttl_secs, 1, 3600)?;
        }
        let q = &self.quickbooks;
        range(
            "quickbooks.minor_version",
            u64::from(q.minor_version),
            1,
            999,
        )?;
        for (key, v) in [
            (
                "quickbooks.income_account_ref",
                Some(q.income_account_ref.as_str()),
            ),
            ("quickbooks.realm_id", q.realm_id.as_deref()),
            ("quickbooks.client_id", q.client_id.as_deref()),
            ("alegra.email", self.alegra.email.as_deref()),
            ("alegra.issuer_nit", self.alegra.issuer_nit.as_deref()),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 256 || !v.chars().all(|c| c.is_ascii_graphic()))
            {
                return Err(fail(
                    key,
                    "must be 1 to 256 printable characters without spaces",
                ));
            }
        }
        if let Some(e) = &self.alegra.email
            && !e.contains('@')
        {
            return Err(fail("alegra.email", "must be an email address"));
        }
        for (key, secret) in [
            ("stripe.api_key", &self.stripe.api_key),
            ("stripe.webhook_secret", &self.stripe.webhook_secret),
            ("quickbooks.client_secret", &self.quickbooks.client_secret),
            ("quickbooks.refresh_token", &self.quickbooks.refresh_token),
            ("alegra.token", &self.alegra.token),
            ("alegra.technical_key", &self.alegra.technical_key),
        ] {
            if secret
                .as_ref()
                .is_some_and(|s| s.expose().trim().is_empty())
            {
                return Err(fail(
                    key,
                    "is empty: give the value, or leave the key out (and use the environment)",
                ));
            }
        }
        range(
            "alegra.number_start",
            self.alegra.number_start,
            1,
            9_999_999_999,
        )?;
        let c = &self.catalog;
        range(
            "catalog.reconcile_interval_secs",
            c.reconcile_interval_secs,
            1,
            DAY,
        )?;
        range("catalog.max_attempts", u64::from(c.max_attempts), 1, 100)?;
        range(
            "catalog.done_retention_days",
            c.done_retention_days,
            1,
            3650,
        )?;
        // A lease shorter than one QuickBooks call lets a second worker take the same
        // product while the first still writes it.
        let min_lease = MIN_LEASE_SECS.max(q.timeout_secs + 1);
        if c.lease_secs < min_lease || c.lease_secs > DAY {
            return Err(fail(
                "catalog.lease_secs",
                &format!(
                    "must be between {min_lease} (longer than quickbooks.timeout_secs, and at least {MIN_LEASE_SECS}) and {DAY}, got {}",
                    c.lease_secs
                ),
            ));
        }
        if c.latency_tolerance > 100.0 {
            return Err(fail(
                "catalog.latency_tolerance",
                "must be greater than 1.0 and at most 100",
            ));
        }
        let k = &self.compliance;
        for w in &k.retry_schedule_secs {
            range("compliance.retry_schedule_secs", *w, 1, 7 * DAY)?;
        }
        range("compliance.poll_secs", k.poll_secs, 1, 3600)?;
        range(
            "compliance.list_interval_secs",
            k.list_interval_secs,
            1,
            DAY,
        )?;
        range(
            "compliance.contingency_probes",
            u64::from(k.contingency_probes),
            1,
            100,
        )?;
        range(
            "compliance.contingency_probe_interval_secs",
            k.contingency_probe_interval_secs,
            1,
            3600,
        )?;
        range(
            "compliance.contingency_deadline_hours",
            k.contingency_deadline_hours,
            1,
            720,
        )?;
        range("compliance.retention_days", k.retention_days, 1, 3650)?;
        range("cache.ttl_secs", self.cache.ttl_secs, 1, 30 * DAY)?;
        range(
            "cache.max_entries",
            self.cache.max_entries as u64,
            1,
            10_000_000,
        )?;
        range("audit.retention_days", self.audit.retention_days, 1, 3650)?;
        if self.log.level.trim().is_empty() {
            return Err(fail("log.level", "is empty (e.g. \"info\")"));
        }
        Ok(())
    }

    /// Warnings about a config that is valid but risky (shown by `config check` and at
    /// start).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let ip = self.server.listen.ip();
        if !ip.is_loopback() {
            out.push(format!(
                "warning: server.listen = \"{}\" is reachable from other machines: /health, /metrics and \
                 the webhook are open to them, and the control API to anyone holding a token; \
                 prefer 127.0.0.1 behind a reverse proxy",
                self.server.listen
            ));
        }
        out
    }

    /// Takes secrets from the environment where the file left them out.
    pub fn apply_env(&mut self) {
        let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(v) = get("SYNCCTL_STRIPE_API_KEY") {
            self.stripe.api_key.get_or_insert(Secret::new(v));
        }
        if let Some(v) = get("SYNCCTL_STRIPE_WEBHOOK_SECRET") {
            self.stripe.webhook_secret.get_or_insert(Secret::new(v));
        }
        if let Some(v) = get("SYNCCTL_QUICKBOOKS_CLIENT_SECRET") {
            self.quickbooks.client_secret.get_or_insert(Secret::new(v));
        }
        if let Some(v) = get("SYNCCTL_QUICKBOOKS_REFRESH_TOKEN") {
            self.quickbooks.refresh_token.get_or_insert(Secret::new(v));
        }
        if let Some(v) = get("SYNCCTL_ALEGRA_TOKEN") {
            self.alegra.token.get_or_insert(Secret::new(v));
        }
        if let Some(v) = get("SYNCCTL_STORE_URL") {
            self.store.url.get_or_insert(Secret::new(v));
        }
    }

    /// The keys a live (non-demo) engine cannot run without, that are missing; with
    /// `[[companies]]`, each company's (`company "co2": stripe.api_key`).
    pub fn missing_live_keys(&self) -> Vec<String> {
        if !self.companies.is_empty() {
            return match self.companies() {
                Ok(companies) => companies
                    .iter()
                    .flat_map(|c| {
                        c.config
                            .missing_keys()
                            .into_iter()
                            .map(move |k| format!("company {:?}: {k}", c.id))
                    })
                    .collect(),
                Err(e) => vec![e.to_string()],
            };
        }
        self.missing_keys().into_iter().map(str::to_owned).collect()
    }

    fn missing_keys(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        let s = &self.stripe;
        let q = &self.quickbooks;
        let checks: [(&'static str, bool); 9] = [
            (
                "stripe.api_key",
                s.api_key.as_ref().is_none_or(Secret::is_empty),
            ),
            ("stripe.base_url", s.base_url.is_none()),
            (
                "stripe.webhook_secret",
                s.webhook_secret.as_ref().is_none_or(Secret::is_empty),
            ),
            ("quickbooks.base_url", q.base_url.is_none()),
            ("quickbooks.realm_id", q.realm_id.is_none()),
            ("quickbooks.client_id", q.client_id.is_none()),
            (
                "quickbooks.client_secret",
                q.client_secret.as_ref().is_none_or(Secret::is_empty),
            ),
            (
                "quickbooks.refresh_token",
                q.refresh_token.as_ref().is_none_or(Secret::is_empty),
            ),
            ("quickbooks.token_url", q.token_url.is_none()),
        ];
        for (key, is_missing) in checks {
            if is_missing {
                missing.push(key);
            }
        }
        missing
    }

    /// True when the file text sets any secret key (used for the permissions warning).
    pub fn file_holds_secret(&self) -> bool {
        self.stripe.api_key.is_some()
            || self.stripe.webhook_secret.is_some()
            || self.quickbooks.client_secret.is_some()
            || self.quickbooks.refresh_token.is_some()
            || self.alegra.token.is_some()
            || self.alegra.technical_key.is_some()
            || !self.server.tokens.is_empty()
            || self.companies.iter().any(CompanyConfig::holds_secret)
    }

    /// Every secret this config holds: the one list redaction walks (a new secret key
    /// belongs here, and in [`Config::file_holds_secret`]).
    fn secrets_mut(&mut self) -> Vec<&mut Secret> {
        let mut out: Vec<&mut Secret> = self
            .server
            .tokens
            .iter_mut()
            .map(|t| &mut t.token)
            .collect();
        out.extend(
            [
                &mut self.stripe.api_key,
                &mut self.stripe.webhook_secret,
                &mut self.quickbooks.client_secret,
                &mut self.quickbooks.refresh_token,
                &mut self.alegra.token,
                &mut self.alegra.technical_key,
            ]
            .into_iter()
            .filter_map(Option::as_mut),
        );
        out
    }

    /// The URLs of this config that may carry credentials (`https://user:pass@host`).
    fn urls_mut(&mut self) -> [&mut Option<String>; 5] {
        [
            &mut self.stripe.base_url,
            &mut self.quickbooks.base_url,
            &mut self.quickbooks.token_url,
            &mut self.alegra.base_url,
            &mut self.server.statsd,
        ]
    }

    /// Every secret value this config holds (non-empty): API keys, webhook secrets,
    /// tokens, OAuth client secrets and refresh tokens, and credentials in URLs — what
    /// an incident bundle must not contain anywhere.
    pub fn secret_values(&self) -> Vec<String> {
        let mut copy = self.clone();
        let mut out: Vec<String> = copy
            .secrets_mut()
            .into_iter()
            .map(|s| s.expose().to_owned())
            .collect();
        out.extend(
            copy.urls_mut()
                .into_iter()
                .filter_map(|u| u.as_deref().and_then(url_credentials))
                .map(str::to_owned),
        );
        out.extend(self.companies.iter().flat_map(CompanyConfig::secret_values));
        out.retain(|s| !s.is_empty());
        out
    }

    /// A copy with every secret replaced by `[redacted]` and credentials cut out of
    /// URLs: safe to show or hand to someone else (an incident bundle).
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        for s in copy.secrets_mut() {
            *s = Secret::new(crate::protocol::REDACTED);
        }
        for url in copy.urls_mut() {
            if let Some(u) = url.as_mut()
                && let Some(creds) = url_credentials(u)
            {
                *u = u.replacen(creds, crate::protocol::REDACTED, 1);
            }
        }
        for c in &mut copy.companies {
            c.redact();
        }
        copy
    }

    /// The config as TOML with every secret redacted ([`Config::redacted`]).
    pub fn redacted_toml(&self) -> String {
        toml::to_string(&self.redacted())
            .unwrap_or_else(|e| format!("# the config could not be written as TOML: {e}\n"))
    }
}

/// The `user:password` part of a URL (`scheme://user:password@host/…`), if any.
fn url_credentials(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at = authority.rfind('@')?;
    Some(&authority[..at]).filter(|c| !c.is_empty())
}

/// The warning to show when a config file holding secrets is readable by others.
pub fn permission_warning(path: &Path, config: &Config) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        if config.file_holds_secret() && mode & 0o077 != 0 {
            return Some(format!(
                "warning: {} holds secrets and is readable by others (mode {:o}); run: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, config);
    None
}

fn locate(text: &str, path: &Path, key: &str, err: &toml::de::Error) -> ConfigError {
    let line = match err.span() {
        Some(span) => line_at(text, span.start),
        None if !key.is_empty() => line_of_key(text, key),
        None => 0,
    };
    let key = if key.is_empty() || key == "." {
        key_at_line(text, line).unwrap_or_else(|| "(document)".into())
    } else {
        key.to_owned()
    };
    let mut message = err.message().trim().to_owned();
    if SECRET_KEYS.contains(&key.as_str()) {
        message = redact_quoted(&message);
    }
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        key,
        message,
    }
}

const SECRET_KEYS: &[&str] = &[
    "stripe.api_key",
    "stripe.webhook_secret",
    "quickbooks.client_secret",
    "quickbooks.refresh_token",
];

/// Replaces every `` `…` `` quoted value in a message (serde quotes the offending value).
fn redact_quoted(message: &str) -> String {
    let mut out = String::new();
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('`');
        out.push_str(if i % 2 == 0 { "[redacted]" } else { part });
    }
    out
}

/// Shortest `catalog.lease_secs` accepted.
pub const MIN_LEASE_SECS: u64 = 10;

/// An API base URL: `http` or `https`, a host, no spaces or control characters, no
/// credentials (they belong in the secret keys, never in a URL that gets logged).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "must start with http:// or https:// (not {}://)",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host, e.g. https://api.example.com".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(())
}

/// The store's URL: `postgres://` or `postgresql://`, a host, parseable as a
/// connection string. Errors never repeat the value (it may hold a password).
pub fn check_store_url(url: &str) -> Result<(), String> {
    const NOT_SHOWN: &str = "(the value is not shown: it may hold a password)";
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must not contain spaces or control characters {NOT_SHOWN}"
        ));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "must be a postgres://user:password@host:port/database URL; leave it out to keep \
             the embedded SQLite store {NOT_SHOWN}"
        ));
    }
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| format!("is not a valid postgres:// URL {NOT_SHOWN}"))?;
    if config.get_hosts().is_empty() {
        return Err(format!(
            "must name a host, e.g. postgres://syncctl@db.internal/syncctl {NOT_SHOWN}"
        ));
    }
    Ok(())
}

/// Line of `field` in the `index`-th (0-based) `[[array]]` entry; else that entry's
/// header line; else the line of an inline `array = [...]`.
fn line_of_entry_key(text: &str, array: &str, index: usize, field: &str) -> usize {
    let header = format!("[[{array}]]");
    let mut seen = 0usize;
    let mut inside = false;
    let mut header_line = 0;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            if t.replace(' ', "") == header {
                inside = seen == index;
                if inside {
                    header_line = i + 1;
                }
                seen += 1;
            } else {
                inside = false;
            }
            continue;
        }
        if inside
            && let Some((k, _)) = t.split_once('=')
            && k.trim() == field
        {
            return i + 1;
        }
    }
    if header_line > 0 {
        return header_line;
    }
    line_of_key(text, array)
}

/// Every `key = value` line of the text as (1-based line, `section.key`). A plain
/// line scan, enough to point at a line; the parser has already judged the syntax.
fn assignments(text: &str) -> impl Iterator<Item = (usize, String)> + '_ {
    let mut section = String::new();
    text.lines().enumerate().filter_map(move |(i, l)| {
        let t = l.trim();
        if let Some(name) = t
            .strip_prefix("[[")
            .and_then(|r| r.strip_suffix("]]"))
            .or_else(|| t.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
        {
            section = name.trim().to_owned();
            return None;
        }
        let (k, _) = t.split_once('=')?;
        let k = k.trim();
        Some((
            i + 1,
            if section.is_empty() {
                k.to_owned()
            } else {
                format!("{section}.{k}")
            },
        ))
    })
}

/// `section.key` of the assignment on 1-based `line`, if that line is one.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    assignments(text).find(|(n, _)| *n == line).map(|(_, k)| k)
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Best-effort line of `section.key` in the text (for errors found after parsing).
/// A key left at its default is not in the text: then the line of its section's header
/// (the place to add it), or 0.
fn line_of_key(text: &str, dotted: &str) -> usize {
    if let Some((n, _)) = assignments(text).find(|(_, k)| k == dotted) {
        return n;
    }
    let mut section = dotted;
    while let Some((parent, _)) = section.rsplit_once('.') {
        section = parent;
        let found = text.lines().position(|l| {
            let t = l.trim().trim_start_matches('[').trim_end_matches(']');
            l.trim().starts_with('[') && t.trim() == section
        });
        if let Some(i) = found {
            return i + 1;
        }
    }
    0
}

/// Where things live by default, from the XDG/OS conventions.
pub struct Paths {
    pub config_file: PathBuf,
    pub data_dir: PathBuf,
}

impl Paths {
    pub fn discover() -> Self {
        match directories::ProjectDirs::from("com", "syncctl", "syncctl") {
            Some(dirs) => Self {
                config_file: dirs.config_dir().join("config.toml"),
                data_dir: dirs.data_dir().to_owned(),
            },
            None => Self {
                config_file: PathBuf::from("syncctl.toml"),
                data_dir: PathBuf::from(".syncctl"),
            },
        }
    }
}

/// The commented example config shipped with the binary (`syncctl config init`).
pub const EXAMPLE: &str = include_str!("../config.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_with_documented_defaults() {
        let c = Config::parse(EXAMPLE, Path::new("config.example.toml")).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9870");
        assert_eq!(c.sandbox.listen.to_string(), "127.0.0.1:9871");
        assert_eq!(c.stripe.webhook_tolerance_secs, 300);
        assert_eq!(c.catalog.reconcile_interval_secs, 60);
        assert_eq!(c.alerts, AlertsConfig::default());
        assert_eq!(c.anomaly, AnomalyConfig::default());
        assert_eq!(c.cache, CacheConfig::default());
    }

    #[test]
    fn every_tunable_threshold_reads_and_writes_its_config_field() {
        for t in THRESHOLDS {
            let mut c = Config::default();
            assert!(c.threshold(t.name).is_some(), "{} has no field", t.name);
            let mid = (t.min + t.max) / 2.0;
            let v = if t.integer { mid.round() } else { mid };
            c.set_thresholds(&[(t.name.to_owned(), v)]).unwrap();
            assert_eq!(c.threshold(t.name), Some(v), "{}", t.name);
        }
    }

    #[test]
    fn thresholds_are_set_all_or_nothing() {
        let mut c = Config::default();
        let err = c
            .set_thresholds(&[
                ("alerts.error_rate_percent".into(), 12.0),
                ("alerts.queue_depth".into(), -1.0),
            ])
            .unwrap_err();
        assert!(err.contains("alerts.queue_depth"), "{err}");
        assert_eq!(c.alerts.error_rate_percent, 10.0, "nothing applied");
        let err = c
            .set_thresholds(&[("alerts.nope".into(), 1.0)])
            .unwrap_err();
        assert!(err.contains("alerts.nope"), "{err}");
        let err = c
            .set_thresholds(&[("anomaly.min_samples".into(), 30.5)])
            .unwrap_err();
        assert!(err.contains("whole number"), "{err}");
        c.set_thresholds(&[("alerts.error_rate_percent".into(), 12.0)])
            .unwrap();
        assert_eq!(c.threshold("alerts.error_rate_percent"), Some(12.0));
    }

    #[test]
    fn persisted_thresholds_keep_comments_and_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = "# my ops box\n[server]\nlisten = \"127.0.0.1:1\" # the port\n\n[alerts]\n# paged at this\nerror_rate_percent = 10.0 # default\nqueue_depth = 100\n";
        std::fs::write(&path, text).unwrap();
        persist_thresholds(
            &path,
            None,
            &[
                ("alerts.error_rate_percent".into(), 12.5),
                ("alerts.queue_depth".into(), 250.0),
                ("anomaly.z_threshold".into(), 4.0),
            ],
        )
        .unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        for kept in [
            "# my ops box",
            "listen = \"127.0.0.1:1\" # the port",
            "# paged at this",
        ] {
            assert!(after.contains(kept), "{kept:?} lost:\n{after}");
        }
        assert!(
            after.contains("error_rate_percent = 12.5 # default"),
            "{after}"
        );
        assert!(
            after.contains("queue_depth = 250\n"),
            "an integer stays one: {after}"
        );
        let c = Config::parse(&after, &path).unwrap();
        assert_eq!(c.alerts.error_rate_percent, 12.5);
        assert_eq!(c.alerts.queue_depth, 250.0);
        assert_eq!(c.anomaly.z_threshold, 4.0);
    }

    #[test]
    fn thresholds_of_one_company_are_saved_in_its_entry_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let entry = |id: &str| {
            format!(
                "\n[[companies]]\nid = \"{id}\"\nname = \"Company {id}\"\n[companies.stripe]\napi_key = \"sk_{id}\"\nwebhook_secret = \"whsec_{id}\"\n[companies.quickbooks]\nrealm_id = \"realm-{id}\"\nrefresh_token = \"rt-{id}\"\n"
            )
        };
        let text = format!(
            "# shared\n[alerts]\nerror_rate_percent = 10.0\n{}{}{}",
            entry("a"),
            entry("b"),
            entry("c")
        );
        std::fs::write(&path, &text).unwrap();
        // The first and the middle entries: neither may leak into the last.
        persist_thresholds(
            &path,
            Some("a"),
            &[("alerts.error_rate_percent".into(), 20.0)],
        )
        .unwrap();
        persist_thresholds(&path, Some("b"), &[("anomaly.z_threshold".into(), 5.0)]).unwrap();
        persist_thresholds(&path, Some("b"), &[("alerts.queue_depth".into(), 300.0)]).unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        let c = Config::parse(&after, &path).unwrap();
        assert_eq!(
            c.alerts.error_rate_percent, 10.0,
            "shared table kept:\n{after}"
        );
        let companies = c.companies().unwrap();
        let get = |id: &str| &companies.iter().find(|x| x.id == id).unwrap().config;
        assert_eq!(get("a").alerts.error_rate_percent, 20.0, "{after}");
        assert_eq!(get("b").alerts.error_rate_percent, 10.0, "{after}");
        assert_eq!(get("b").anomaly.z_threshold, 5.0, "{after}");
        assert_eq!(get("b").alerts.queue_depth, 300.0, "{after}");
        assert_eq!(get("c").alerts.error_rate_percent, 10.0, "{after}");
        assert_eq!(
            get("c").anomaly.z_threshold,
            AnomalyConfig::default().z_threshold
        );
        assert_eq!(get("a").company.as_deref(), Some("a"));
        assert!(after.starts_with("# shared\n"), "{after}");
        let err = persist_thresholds(&path, Some("zz"), &[("alerts.queue_depth".into(), 1.0)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"zz\""), "{err}");
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\n\n[catalog]\nworkerz = 3\n";
        let err = Config::parse(text, Path::new("/etc/x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/x.toml:5:"), "{msg}");
        assert!(msg.contains("workerz"), "{msg}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let text = "[server]\nlisten = \"not an address\"\n";
        let msg = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("c.toml:2: key `server.listen`"), "{msg}");
    }

    #[test]
    fn out_of_range_value_is_refused_with_its_line() {
        let text = "[catalog]\n# comment\nworkers = 0\n";
        let msg = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "c.toml:3: key `catalog.workers`: must be between 1 and 256"
        );
    }

    #[test]
    fn a_mistyped_secret_is_not_echoed_in_the_error() {
        let text = "[stripe]\napi_key = 12345678\n";
        let msg = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("c.toml:2: key `stripe.api_key`"), "{msg}");
        assert!(!msg.contains("12345678"), "{msg}");
    }

    #[test]
    fn a_syntax_error_names_the_key_on_its_line() {
        let text = "[stripe]\nbase_url = https://api.stripe.com\n";
        let msg = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("c.toml:2: key `stripe.base_url`"), "{msg}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("sk_live_abcdef");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        let mut c = Config::default();
        c.stripe.api_key = Some(s);
        assert!(!format!("{c:?}").contains("sk_live"));
    }
    #[test]
    fn a_companys_secrets_are_redacted_and_never_printed() {
        let text = "[quickbooks]\nclient_id = \"app\"\n\n[[companies]]\nid = \"co1\"\nname = \"One\"\n[companies.stripe]\napi_key = \"sk_live_company_one\"\nwebhook_secret = \"whsec_company_one\"\n[companies.quickbooks]\nrealm_id = \"1\"\nrefresh_token = \"refresh_company_one\"\n";
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        let secrets = c.secret_values();
        for s in [
            "sk_live_company_one",
            "whsec_company_one",
            "refresh_company_one",
        ] {
            assert!(
                secrets.iter().any(|x| x == s),
                "{s} not listed: {secrets:?}"
            );
            assert!(!c.redacted_toml().contains(s), "{s} in the redacted TOML");
            assert!(!format!("{c:?}").contains(s), "{s} in Debug");
        }
        assert!(c.file_holds_secret());
        let companies = c.companies().unwrap();
        assert_eq!(companies.len(), 1);
        let co1 = &companies[0].config;
        assert_eq!(co1.quickbooks.client_id.as_deref(), Some("app"), "shared");
        assert_eq!(co1.quickbooks.realm_id.as_deref(), Some("1"), "its own");
        assert!(co1.companies.is_empty());
        // Without [[companies]]: one company, "default", this very config.
        let one = Config::default().companies().unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].id, DEFAULT_COMPANY);
    }

    #[test]
    fn redaction_removes_every_secret_and_url_credential() {
        let mut c = Config::default();
        c.server.tokens = vec![TokenConfig {
            name: "ops".into(),
            token: Secret::new("tok-0123456789abcdef"),
            role: Role::Operator,
            rate_limit_per_min: 0,
        }];
        c.stripe.api_key = Some(Secret::new("sk_live_A"));
        c.stripe.webhook_secret = Some(Secret::new("whsec_B"));
        c.quickbooks.client_secret = Some(Secret::new("qb-secret-C"));
        c.quickbooks.refresh_token = Some(Secret::new("AB11-D"));
        c.quickbooks.token_url = Some("https://user:pw-E@oauth.example/t".into());
        c.alegra.token = Some(Secret::new("alegra-F"));
        c.alegra.technical_key = Some(Secret::new("techkey-G"));
        let secrets = c.secret_values();
        assert_eq!(secrets.len(), 8, "{secrets:?}");
        let text = c.redacted_toml();
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{s} in\n{text}");
        }
        assert!(
            text.contains("https://[redacted]@oauth.example/t"),
            "{text}"
        );
    }
}
