//! The sync engine. Knows nothing of terminals: it is started with a config and returns
//! an [`EngineHandle`] — commands and queries in (each answered to its sender); the
//! latest [`Snapshot`] (a `watch`, republished only when something changed) and a
//! broadcast of discrete events out. Every change an operator makes arrives as a
//! [`crate::protocol::Request`], so it is validated and audited the same way from the
//! console, the HTTP API or an attached console (see [`commands`]).

pub mod catalog;
pub mod commands;
pub mod compliance;
pub mod housekeeping;
pub mod ingest;
pub mod item;

pub use crate::protocol::{
    CatalogView, ComplianceView, EngineEvent, MAX_SILENCE_SECS, Mode, Operation, Snapshot, operator,
};
pub use commands::Commands;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::compliance::machine::Status;
use crate::config::{Config, Secret};
use crate::connectors::quickbooks::{QuickBooksClient, TokenKeeper};
use crate::connectors::stripe::StripeClient;
use crate::protocol::Recommendation;
use crate::resilience::{Downstream, DownstreamView, SharedClock, State as BreakerState};
use crate::store::{AuditEntry, CatalogCounts, DataDirLock, Store};
use catalog::{Catalog, CatalogSettings};

pub struct EngineHandle {
    /// Commands and queries, each answered to whoever sent it.
    pub commands: Commands,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub events: broadcast::Sender<EngineEvent>,
    pub server_addr: std::net::SocketAddr,
    /// The compliance records' wall clock (tests move it across Colombian midnights).
    pub wall_clock: crate::store::WallClock,
    done: Option<oneshot::Receiver<()>>,
}

impl EngineHandle {
    /// Asks the engine to drain and stop, and waits until it has.
    pub async fn shutdown(&mut self) {
        self.commands.stop().await;
        self.wait().await;
    }

    /// Waits until the engine has stopped.
    pub async fn wait(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

pub struct EngineOptions {
    pub config: Config,
    pub data_dir: PathBuf,
    pub mode: Mode,
    /// The engine server's socket, bound by the caller (so it can tell the sandbox).
    pub listener: tokio::net::TcpListener,
    /// Start over on purpose where the data dir shows a store was lost (`--fresh-store`):
    /// Alegra's documents are adopted, QuickBooks' Items found by Sku.
    pub fresh_store: bool,
}

fn required<'a, T>(v: &'a Option<T>, key: &str) -> anyhow::Result<&'a T> {
    v.as_ref()
        .ok_or_else(|| anyhow::anyhow!("config key `{key}` is required"))
}

/// Starts the engine: store, clients, catalog pipeline, HTTP server, snapshot publisher.
pub async fn start(opts: EngineOptions) -> anyhow::Result<EngineHandle> {
    let lock = DataDirLock::acquire(&opts.data_dir, "engine")?;
    let wall_clock = crate::store::WallClock::default();
    let (store, _opened) =
        Store::open_checked(&opts.data_dir, wall_clock.clone(), opts.fresh_store)?;
    let requeued = store.requeue_leased()?;
    if requeued > 0 {
        tracing::info!("re-queued {requeued} jobs leased by a previous run");
        store.audit(
            "sync",
            "catalog",
            "engine",
            &format!("re-queued {requeued} jobs left in flight by the previous run"),
        )?;
    }
    let cfg = &opts.config;
    let http = crate::connectors::http_client()?;
    let clock = SharedClock::tokio();
    // In DOWNSTREAMS order: stripe, quickbooks, alegra.
    let downstreams: Vec<Arc<Downstream>> = crate::config::DOWNSTREAMS
        .iter()
        .filter_map(|name| Some(Downstream::new(name, cfg.downstream(name)?, clock.clone())))
        .collect();
    // Breaker transitions become audit entries and live events (written off the
    // caller's path: the listener runs under the breaker's lock).
    let (transitions_tx, mut transitions_rx) =
        mpsc::unbounded_channel::<(String, crate::resilience::breaker::Transition)>();
    for d in &downstreams {
        let tx = transitions_tx.clone();
        d.breaker.on_transition(move |name, t| {
            let _ = tx.send((name.to_owned(), t.clone()));
        });
    }
    drop(transitions_tx);
    let guard = |name: &str| {
        downstreams
            .iter()
            .find(|d| d.name() == name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no resilience policy for {name}"))
    };
    let stripe = StripeClient::new(
        http.clone(),
        required(&cfg.stripe.base_url, "stripe.base_url")?,
        required(&cfg.stripe.api_key, "stripe.api_key")?.clone(),
    )
    .with_timeout(Duration::from_secs(cfg.stripe.timeout_secs))
    .with_guard(guard("stripe")?);
    let tokens = Arc::new(TokenKeeper::new(
        http.clone(),
        required(&cfg.quickbooks.token_url, "quickbooks.token_url")?,
        required(&cfg.quickbooks.client_id, "quickbooks.client_id")?,
        required(&cfg.quickbooks.client_secret, "quickbooks.client_secret")?.clone(),
        required(&cfg.quickbooks.refresh_token, "quickbooks.refresh_token")?,
        store.clone(),
    )?);
    let qb = QuickBooksClient::new(
        http.clone(),
        required(&cfg.quickbooks.base_url, "quickbooks.base_url")?,
        required(&cfg.quickbooks.realm_id, "quickbooks.realm_id")?,
        cfg.quickbooks.minor_version,
        Duration::from_secs(cfg.quickbooks.timeout_secs),
        tokens,
    )
    .with_guard(guard("quickbooks")?);
    let settings = CatalogSettings {
        workers: cfg.catalog.workers,
        autoscale: cfg.catalog.autoscale.then(|| cfg.catalog_autoscale()),
        claim_batch_max: cfg.catalog.claim_batch_max,
        page_size: cfg.stripe.page_size,
        max_attempts: cfg.catalog.max_attempts,
        lease_ms: cfg.catalog.lease_secs as i64 * 1000,
        reconcile_interval: Duration::from_secs(cfg.catalog.reconcile_interval_secs),
        income_account: cfg.quickbooks.income_account_ref.clone(),
        cache_max_entries: cfg.cache.max_entries,
        cache_ttl_ms: cfg.cache.ttl_secs as i64 * 1000,
    };
    let compliance = match &cfg.alegra.base_url {
        None => None,
        Some(base) => {
            let alegra = crate::connectors::alegra::AlegraClient::new(
                http.clone(),
                base,
                required(&cfg.alegra.email, "alegra.email")?,
                required(&cfg.alegra.token, "alegra.token")?.clone(),
                Duration::from_secs(cfg.alegra.timeout_secs),
            )
            .with_guard(guard("alegra")?);
            let k = &cfg.compliance;
            Some(Arc::new(compliance::Compliance::new(
                store.clone(),
                alegra,
                stripe.clone(),
                compliance::ComplianceSettings {
                    workers: k.workers,
                    list_interval: Duration::from_secs(k.list_interval_secs),
                    number_prefix: cfg.alegra.number_prefix.clone(),
                    number_start: cfg.alegra.number_start,
                    policy: crate::compliance::machine::Policy {
                        schedule_ms: k
                            .retry_schedule_secs
                            .iter()
                            .map(|s| *s as i64 * 1000)
                            .collect(),
                        poll_ms: k.poll_secs as i64 * 1000,
                    },
                    contingency: crate::compliance::contingency::ContingencyConfig {
                        probes: k.contingency_probes,
                        probe_interval_ms: k.contingency_probe_interval_secs as i64 * 1000,
                        deadline_ms: k.contingency_deadline_hours as i64 * 3_600_000,
                    },
                    adopt_documents: opts.fresh_store,
                },
            )?))
        }
    };
    let catalog = Arc::new(Catalog::new(store.clone(), stripe, qb, settings)?);
    let cancel = CancellationToken::new();
    let mut numbering_task = None;
    if let Some(c) = &compliance {
        catalog.route_invoices_to(c.clone());
        // No number is issued before Alegra confirms the range; a store that cannot
        // account for Alegra's documents (a lost one) is refused here. If Alegra does not
        // answer in 5 s, the same check goes on in the background and nothing is
        // numbered meanwhile (paid invoices wait at Stripe: webhooks answer 503, the
        // listing comes back).
        let (c2, k) = (c.clone(), cancel.clone());
        numbering_task = Some(tokio::spawn(async move { c2.numbering_loop(k).await }));
        let mut changes = c.watch_numbering();
        let settled = async {
            while matches!(c.numbering(), compliance::Numbering::Checking(_)) {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), settled).await;
        if let compliance::Numbering::Refused { why, .. } = c.numbering() {
            cancel.cancel();
            anyhow::bail!("refusing to start: {why}");
        }
    }
    let webhook_secret: Secret =
        required(&cfg.stripe.webhook_secret, "stripe.webhook_secret")?.clone();

    let (cmd_tx, mut cmd_rx) = mpsc::channel::<commands::Message>(64);
    let cmd_tx = Commands::new(cmd_tx);
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (events_tx, _) = broadcast::channel(1024);
    let server_addr = opts.listener.local_addr()?;
    let server_cancel = CancellationToken::new();
    let server = tokio::spawn(crate::server::serve(
        opts.listener,
        crate::server::ServerState {
            catalog: catalog.clone(),
            compliance: compliance.clone(),
            webhook_secret,
            tolerance_secs: cfg.stripe.webhook_tolerance_secs,
            mode: opts.mode,
            control: Arc::new(crate::server::Control {
                commands: cmd_tx.clone(),
                snapshot: snap_rx.clone(),
                events: events_tx.clone(),
                store: store.clone(),
                auth: crate::server::auth::Auth::new(cfg.server.tokens.clone()),
                ws: Default::default(),
                heartbeat: Duration::from_secs(cfg.server.ws_heartbeat_secs),
                hosts: cfg.server.allowed_hosts.clone(),
            }),
        },
        server_cancel.clone(),
    ));

    let workers = tokio_util::task::TaskTracker::new();
    for index in 0..catalog.max_workers() {
        workers.spawn(catalog.clone().worker(index, cancel.clone()));
    }
    {
        let (c, k) = (catalog.clone(), cancel.clone());
        workers.spawn(async move { c.autoscale_loop(k).await });
        workers.spawn(audit_retention_loop(
            store.clone(),
            cfg.audit.retention_days,
            cancel.clone(),
        ));
        let (c, k) = (catalog.clone(), cancel.clone());
        workers.spawn(async move { c.full_sync(k).await });
        let (c, k) = (catalog.clone(), cancel.clone());
        workers.spawn(async move { c.reconcile_loop(k).await });
        if let Some(c) = &compliance {
            let (c2, k) = (c.clone(), cancel.clone());
            workers.spawn(async move { c2.run(k).await });
            let (c2, k) = (c.clone(), cancel.clone());
            workers.spawn(async move { c2.list_loop(k).await });
            if let Some(task) = numbering_task.take() {
                workers.spawn(async move {
                    let _ = task.await;
                });
            }
            let house = housekeeping::Housekeeping::new(
                store.clone(),
                &opts.data_dir,
                cfg.compliance.retention_days,
            );
            workers.spawn(housekeeping_loop(house, cancel.clone()));
        }
    }
    workers.close();

    let (done_tx, done_rx) = oneshot::channel();
    // The publisher's audit lines (alerts, anomalies), written in order off its task.
    let (audit_tx, mut audit_rx) = mpsc::unbounded_channel::<(String, String, String)>();
    {
        let store = store.clone();
        tokio::spawn(async move {
            while let Some((kind, entity, message)) = audit_rx.recv().await {
                let store = store.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    store.audit(&kind, &entity, "engine", &message)
                })
                .await;
            }
        });
    }
    // Health must know the store cannot write even when nothing else writes, and see
    // it recover: a one-row write every few seconds.
    {
        let (store, cancel) = (store.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(STORE_PROBE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = every.tick() => {}
                }
                let store = store.clone();
                let _ = tokio::task::spawn_blocking(move || store.probe_write()).await;
            }
        });
    }
    let mut publisher = Publisher::new(
        catalog.clone(),
        compliance.clone(),
        downstreams.clone(),
        opts.mode,
        server_addr.to_string(),
        opts.config.clone(),
        audit_tx,
    );
    {
        let (store, events) = (store.clone(), events_tx.clone());
        tokio::spawn(async move {
            while let Some((service, t)) = transitions_rx.recv().await {
                let line = format!("circuit {} → {}: {}", t.from, t.to, t.reason);
                if t.to == BreakerState::Open {
                    tracing::warn!("{service}: {line}");
                } else {
                    tracing::info!("{service}: {line}");
                }
                let _ = store.audit("circuit", &service, "engine", &line);
                let _ = events.send(EngineEvent::Breaker {
                    service,
                    transition: t,
                });
            }
        });
    }
    publisher.publish(&snap_tx, &events_tx, false);
    store.audit(
        "engine",
        "engine",
        &operator(),
        &format!(
            "engine started ({})",
            match opts.mode {
                Mode::Live => "live",
                Mode::Sandbox => "sandbox",
            }
        ),
    )?;

    let events = events_tx.clone();
    let ctx = commands::Ctx {
        catalog: catalog.clone(),
        compliance: compliance.clone(),
        downstreams: downstreams.clone(),
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => publisher.publish(&snap_tx, &events_tx, false),
                msg = cmd_rx.recv() => match msg {
                    None | Some(commands::Message::Shutdown) => break,
                    Some(commands::Message::Request { request, reply }) => {
                        let stop = matches!(request.command, crate::protocol::Command::Shutdown {});
                        let r = ctx.run(&mut publisher, request);
                        // Published before the answer: a read right after it sees the
                        // change.
                        publisher.publish(&snap_tx, &events_tx, false);
                        let stopping = stop && r.is_ok();
                        let _ = reply.send(r);
                        if stopping {
                            break;
                        }
                    }
                    Some(commands::Message::Query { query, reply }) => {
                        // Answered off the loop: it reads the store.
                        let c = ctx.compliance.clone();
                        tokio::spawn(async move {
                            let answer = tokio::task::spawn_blocking(move || {
                                commands::answer(c.as_deref(), query)
                            })
                            .await
                            .unwrap_or_else(|_| Err(commands::stopping()));
                            let _ = reply.send(answer);
                        });
                    }
                },
            }
            publisher.publish(&snap_tx, &events_tx, false);
        }
        // Drain: stop claiming, let in-flight jobs finish (bounded), then stop serving.
        publisher.publish(&snap_tx, &events_tx, true);
        cancel.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                tokio::select! {
                    _ = workers.wait() => break,
                    _ = tick.tick() => publisher.publish(&snap_tx, &events_tx, true),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain timed out; unfinished jobs will be re-queued at next start");
        }
        let _ = catalog
            .store
            .audit("engine", "engine", "engine", "engine stopped");
        publisher.publish(&snap_tx, &events_tx, true);
        server_cancel.cancel();
        let _ = server.await;
        // Release everything (the data-dir lock last) before saying we are done, so a
        // caller may start a new engine on the same dir the moment `shutdown` returns.
        drop(publisher);
        drop(catalog);
        drop(lock);
        let _ = done_tx.send(());
    });

    Ok(EngineHandle {
        commands: cmd_tx,
        snapshot: snap_rx,
        events,
        server_addr,
        wall_clock,
        done: Some(done_rx),
    })
}

/// Why a compliance command or query is refused when `[alegra]` is not configured.
pub const COMPLIANCE_OFF: &str = "the compliance pipeline is off ([alegra] base_url not set)";

/// `90` → "1m30s", `3600` → "1h".
pub fn human_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Removes audit entries older than `audit.retention_days`, at start and hourly.
async fn audit_retention_loop(store: Store, days: u64, cancel: CancellationToken) {
    loop {
        let s = store.clone();
        let cutoff = store.now_ms() - days as i64 * 86_400_000;
        match tokio::task::spawn_blocking(move || s.purge_audit_before(cutoff)).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!("audit retention: {n} entries older than {days} days removed")
            }
            Ok(Err(e)) => tracing::error!("audit retention: {e}"),
            _ => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(AUDIT_RETENTION_EVERY) => {}
        }
    }
}

const AUDIT_RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Backups every few seconds; retention and the daily report at start, then every
/// minute (written off the async threads).
async fn housekeeping_loop(house: housekeeping::Housekeeping, cancel: CancellationToken) {
    let house = Arc::new(std::sync::Mutex::new(house));
    let full_every = (HOUSEKEEPING_EVERY.as_secs() / BACKUP_EVERY.as_secs()).max(1);
    for round in 0u64.. {
        let h = house.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
            if round % full_every == 0 {
                h.pass()
            } else {
                h.backup_pass().map(|n| housekeeping::PassSummary {
                    backed_up: n,
                    ..Default::default()
                })
            }
        })
        .await;
        match pass {
            Ok(Ok(s)) if s.records_purged > 0 || s.backups_removed > 0 => tracing::info!(
                "retention: {} validated records and {} backups older than the retention removed",
                s.records_purged,
                s.backups_removed
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("compliance housekeeping: {e:#}"),
            Err(e) => tracing::error!("compliance housekeeping stopped: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(BACKUP_EVERY) => {}
        }
    }
}

const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
const BACKUP_EVERY: Duration = Duration::from_secs(5);

/// Builds snapshots from the engine's parts and publishes them when they changed.
struct Publisher {
    catalog: Arc<Catalog>,
    compliance: Option<Arc<compliance::Compliance>>,
    compliance_key: Option<u64>,
    compliance_cache: ComplianceView,
    downstreams: Vec<Arc<Downstream>>,
    mode: Mode,
    server_addr: String,
    last_completed: u64,
    per_second: std::collections::VecDeque<u64>,
    second_started: tokio::time::Instant,
    audit: std::collections::VecDeque<AuditEntry>,
    last_audit_id: i64,
    telemetry: crate::telemetry::Telemetry,
    /// The telemetry as the snapshot shows it, rebuilt on each tick and after an
    /// operator changed alerts or thresholds (not on every publish).
    telemetry_view: crate::telemetry::TelemetryView,
    ticked: bool,
    /// Connected to `server.statsd` when set.
    statsd: Option<std::net::UdpSocket>,
    /// The thresholds in force, and the file they are saved to.
    config: Config,
    /// Audit lines written off the publisher's task (a store that cannot write must not
    /// stop snapshots): kind, entity, message.
    audit_tx: mpsc::UnboundedSender<(String, String, String)>,
    /// The last catalog counts read, kept while the store cannot be read.
    counts: CatalogCounts,
    /// Set while the store cannot be read.
    read_error: Option<String>,
    catalog_progress: crate::telemetry::health::Progress,
    compliance_progress: crate::telemetry::health::Progress,
}

/// What to do when the store cannot write.
const STORE_WRITE_FIX: &str = "free space on the data dir's filesystem, make sure the file is writable (not read-only, not immutable) and that no other process holds a lock on it; the engine keeps trying and recovers by itself once a write succeeds";

/// How often the store's write probe runs.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(3);

const SERIES_SECONDS: usize = 120;
const AUDIT_KEPT: usize = 500;

const INVOICES_SHOWN: usize = 300;

impl Publisher {
    /// The DIAN queue view. What comes from the store is re-read only when a record
    /// changed, not on every publish tick.
    fn compliance_view(&mut self) -> ComplianceView {
        let Some(c) = self.compliance.clone() else {
            return ComplianceView::default();
        };
        let key = c.version();
        if self.compliance_key != Some(key) {
            self.compliance_cache = self.read_compliance(&c);
            self.compliance_key = Some(key);
        }
        ComplianceView {
            enabled: true,
            paused: c.is_paused(),
            sends: c.metrics.sends.load(Ordering::Relaxed),
            validated: c.metrics.validated.load(Ordering::Relaxed),
            in_flight: c.in_flight(),
            window: c.alegra().window(),
            contingency: c.contingency_view(),
            now_ms: c.store.now_ms() / 1000 * 1000,
            numbering_hold: c.numbering_hold(),
            ..self.compliance_cache.clone()
        }
    }

    fn read_compliance(&self, c: &compliance::Compliance) -> ComplianceView {
        let store = &c.store;
        let mut invoices = store.invoices(None, "", INVOICES_SHOWN).unwrap_or_default();
        // Everything needing attention is listed even when older than the newest few.
        for s in [
            Status::Failed,
            Status::Rejected,
            Status::Fallback,
            Status::Unknown,
        ] {
            for r in store
                .invoices(Some(s), "", INVOICES_SHOWN)
                .unwrap_or_default()
            {
                if !invoices.iter().any(|x| x.stripe_id == r.stripe_id) {
                    invoices.push(r);
                }
            }
        }
        invoices.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then(b.number.cmp(&a.number))
        });
        ComplianceView {
            counts: store.compliance_counts().unwrap_or_default(),
            invoices,
            ..Default::default()
        }
    }

    fn new(
        catalog: Arc<Catalog>,
        compliance: Option<Arc<compliance::Compliance>>,
        downstreams: Vec<Arc<Downstream>>,
        mode: Mode,
        server_addr: String,
        config: Config,
        audit_tx: mpsc::UnboundedSender<(String, String, String)>,
    ) -> Self {
        Self {
            audit_tx,
            counts: CatalogCounts::default(),
            read_error: None,
            catalog_progress: Default::default(),
            compliance_progress: Default::default(),
            telemetry: crate::telemetry::Telemetry::new(
                config.alerts.clone(),
                config.anomaly.clone(),
            ),
            statsd: config.server.statsd.as_deref().and_then(|addr| {
                let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
                match sock.connect(addr).and_then(|_| sock.set_nonblocking(true)) {
                    Ok(()) => Some(sock),
                    Err(e) => {
                        tracing::warn!("server.statsd = {addr:?}: {e}; StatsD off");
                        None
                    }
                }
            }),
            telemetry_view: Default::default(),
            config,
            ticked: false,
            catalog,
            compliance,
            compliance_key: None,
            compliance_cache: ComplianceView::default(),
            downstreams,
            mode,
            server_addr,
            last_completed: 0,
            per_second: std::collections::VecDeque::from(vec![0; SERIES_SECONDS]),
            second_started: tokio::time::Instant::now(),
            audit: std::collections::VecDeque::new(),
            last_audit_id: 0,
        }
    }

    /// One second of telemetry: a sample of every counter, then series, anomalies,
    /// alerts and health. What fired goes to the feeds and the audit trail.
    fn telemetry_tick(
        &mut self,
        compliance: &ComplianceView,
        counts: &CatalogCounts,
        views: &[DownstreamView],
        events: &broadcast::Sender<EngineEvent>,
    ) {
        use crate::telemetry::health::check;
        let store = &self.catalog.store;
        let m = &self.catalog.metrics;
        let mut checks = Vec::new();
        let (mut warnings, mut errors, mut recommendations) = (Vec::new(), Vec::new(), Vec::new());
        let mut notes = Vec::new();
        let mut score: f64 = 100.0;
        if counts.failed > 0 {
            notes.push(format!("{} jobs failed", counts.failed));
            warnings.push(format!("{} catalog jobs failed", counts.failed));
            // Work given up on needs a person: degraded (fair), as FAILED invoices are.
            score = score.min(60.0);
        }
        if counts.rejected > 0 {
            warnings.push(format!("{} products rejected as invalid", counts.rejected));
        }
        if self.catalog.is_paused() {
            notes.push("paused".into());
            warnings.push("catalog pipeline paused".into());
            score = score.min(90.0);
        }
        let now = store.now_ms();
        let qb_view = views.iter().find(|v| v.name == "quickbooks");
        let auth = self.catalog.qb().tokens().problem();
        let circuit_open = |v: Option<&DownstreamView>| {
            v.is_some_and(|v| {
                matches!(
                    v.breaker.state,
                    BreakerState::Open | BreakerState::ForcedOpen
                )
            })
        };
        // Work waiting and nothing finished for 5 minutes, with no reason already said
        // (paused, an open circuit, refused credentials): stalled.
        let waiting = counts.queued + counts.in_flight > 0
            && !self.catalog.is_paused()
            && !circuit_open(qb_view)
            && auth.is_none();
        let finished = m.completed.load(Ordering::Relaxed) + counts.failed + counts.rejected;
        if let Some(ms) = self.catalog_progress.stalled(now, finished, waiting) {
            let line = format!(
                "no job finished for {} with {} queued, {} in flight",
                human_secs(ms as u64 / 1000),
                counts.queued,
                counts.in_flight
            );
            warnings.push(format!("catalog stalled: {line}"));
            recommendations.push(Recommendation::new(
                "catalog",
                "work is waiting and nothing finishes; the workers' activity and the event log show what they are doing",
            ));
            notes.push(line);
            score = score.min(40.0);
        }
        checks.push(check("catalog", score, notes));
        let mut problems = Vec::new();
        if let Some(p) = &auth {
            recommendations.push(Recommendation::new("quickbooks", p.fix));
            problems.push(crate::telemetry::health::Problem {
                component: "quickbooks".into(),
                reason: format!(
                    "{} — catalog jobs wait (none lost); next token attempt in {}",
                    p.reason,
                    human_secs(p.retry_in_ms.div_ceil(1000))
                ),
                fix: p.fix.into(),
            });
        }
        // The store: writes (their outcomes and the probe's) and the publisher's reads.
        let mut store_notes = Vec::new();
        let path = store.path().display().to_string();
        let wh = store.write_health();
        if let Some(since) = wh.failing_since_ms {
            let err = wh.last_error.clone().unwrap_or_default();
            store_notes.push(format!(
                "writes failing for {}: {err}",
                human_secs((crate::store::now_ms() - since).max(0) as u64 / 1000)
            ));
            recommendations.push(Recommendation::new("store", STORE_WRITE_FIX));
            problems.push(crate::telemetry::health::Problem {
                component: "store".into(),
                reason: format!("cannot write to {path}: {err}"),
                fix: STORE_WRITE_FIX.into(),
            });
        }
        if let Some(err) = &self.read_error {
            store_notes.push(format!("reads failing: {err}"));
            problems.push(crate::telemetry::health::Problem {
                component: "store".into(),
                reason: format!("cannot read {path}: {err}"),
                fix: format!("stop syncctl and check the file (sqlite3 {path} \"PRAGMA quick_check\"); restore it from a backup, or recover it with sqlite3 {path} \".recover\""),
            });
        }
        for n in &store_notes {
            errors.push(format!("store: {n}"));
        }
        let store_score = if store_notes.is_empty() { 100.0 } else { 0.0 };
        checks.push(check("store", store_score, store_notes));
        if compliance.enabled {
            let mut notes = Vec::new();
            let mut score: f64 = 100.0;
            let stuck =
                compliance.counts.get(Status::Failed) + compliance.counts.get(Status::Rejected);
            if stuck > 0 {
                notes.push(format!("{stuck} invoices FAILED or REJECTED"));
                warnings.push(format!(
                    "{stuck} invoices need an operator (FAILED or REJECTED)"
                ));
                recommendations.push(
                    Recommendation::new(
                        "compliance",
                        "fix the cause shown in each invoice's history, then retry the failed invoices",
                    )
                    .with_action(crate::protocol::Command::RetryFailed {}),
                );
                score = score.min(60.0);
            }
            match compliance.contingency.phase {
                "OUTAGE" => {
                    notes.push("DIAN outage: contingency".into());
                    warnings.push("DIAN is down: invoices wait in contingency".into());
                    score = score.min(40.0);
                }
                "PROBING" => {
                    notes.push("DIAN not answering: probing".into());
                    score = score.min(60.0);
                }
                _ => {}
            }
            if compliance.paused {
                notes.push("paused".into());
                warnings.push("compliance pipeline paused".into());
                score = score.min(90.0);
            }
            if let Some(c) = &self.compliance {
                match c.numbering() {
                    compliance::Numbering::Ready => {}
                    compliance::Numbering::Checking(why) => {
                        notes.push("numbering not confirmed with Alegra".into());
                        warnings.push(format!("compliance: {why}"));
                        score = score.min(60.0);
                    }
                    compliance::Numbering::Refused { why, fix } => {
                        notes.push("numbering refused: no invoice is numbered".into());
                        errors.push(format!("compliance: {why}"));
                        problems.push(crate::telemetry::health::Problem {
                            component: "compliance".into(),
                            reason: why,
                            fix,
                        });
                        score = 0.0;
                    }
                }
                let due = c
                    .store
                    .next_invoice_due(false)
                    .ok()
                    .flatten()
                    .is_some_and(|at| at <= now);
                let alegra_open = circuit_open(views.iter().find(|v| v.name == "alegra"));
                let waiting = due
                    && !compliance.paused
                    && compliance.contingency.phase != "OUTAGE"
                    && !alegra_open;
                let progressed = c.version() + c.metrics.sends.load(Ordering::Relaxed);
                if let Some(ms) = self.compliance_progress.stalled(now, progressed, waiting) {
                    let line = format!(
                        "invoices due and none progressed for {}",
                        human_secs(ms as u64 / 1000)
                    );
                    warnings.push(format!("compliance stalled: {line}"));
                    notes.push(line);
                    score = score.min(40.0);
                }
            }
            checks.push(check("compliance", score, notes));
        }
        let dian_queue = compliance.enabled.then(|| compliance.counts.waiting());
        let downstreams = self
            .downstreams
            .iter()
            .zip(views)
            .map(|(d, v)| crate::telemetry::DownstreamSample {
                name: v.name.clone(),
                calls: v.calls,
                failures: v.failures + v.timeouts,
                consecutive_failures: v.consecutive_failures,
                interval: d.latency.take_interval(),
                recent_p95_ms: v.p95_ms,
                breaker: v.breaker.state.to_string(),
                in_flight: v.limiter.in_flight as u64,
                limit: v.limiter.max_concurrent as u64,
                auth: (v.name == "quickbooks")
                    .then(|| auth.as_ref().map(|p| p.reason.clone()))
                    .flatten(),
            })
            .collect();
        let cache = self
            .catalog
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats();
        let sample = crate::telemetry::Sample {
            now_ms: store.now_ms(),
            items_done: m.completed.load(Ordering::Relaxed),
            invoices_validated: self
                .compliance
                .as_ref()
                .map_or(0, |c| c.metrics.validated.load(Ordering::Relaxed)),
            dian_sends: self
                .compliance
                .as_ref()
                .map_or(0, |c| c.metrics.sends.load(Ordering::Relaxed)),
            dian_failures: self
                .compliance
                .as_ref()
                .map_or(0, |c| c.metrics.dian_failures.load(Ordering::Relaxed)),
            downstreams,
            catalog_queue: counts.queued,
            catalog_in_flight: m.in_flight.load(Ordering::Relaxed) as u64,
            catalog_paused: self.catalog.is_paused(),
            dian_queue,
            cache,
            checks,
            warnings,
            errors,
            recommendations,
            problems,
        };
        let prev = self.telemetry.last_sample().cloned();
        let sample_copy = self.statsd.is_some().then(|| sample.clone());
        for signal in self.telemetry.tick(sample) {
            match signal {
                crate::telemetry::Signal::Alert(n) => {
                    if n.phase == crate::telemetry::alerts::Phase::Firing {
                        tracing::warn!("alert: {}", n.message);
                    } else {
                        tracing::info!("alert: {}", n.message);
                    }
                    let _ = self
                        .audit_tx
                        .send(("alert".into(), n.id.clone(), n.message.clone()));
                    let _ = events.send(EngineEvent::Alert(n));
                }
                crate::telemetry::Signal::Anomaly(a) => {
                    let line = format!(
                        "anomaly on {}: {:.2} against a baseline of {:.2} (score {:.1})",
                        a.metric, a.value, a.baseline, a.score
                    );
                    tracing::info!("{line}");
                    let _ = self
                        .audit_tx
                        .send(("anomaly".into(), a.metric.clone(), line));
                    let _ = events.send(EngineEvent::Anomaly(a));
                }
            }
        }
        self.refresh_view();
        if let Some(sample) = sample_copy {
            self.send_statsd(&sample, prev.as_ref());
        }
    }

    /// Rebuilds the telemetry the snapshot carries (charts, alerts, thresholds…).
    fn refresh_view(&mut self) {
        self.telemetry_view = crate::telemetry::TelemetryView {
            thresholds: self
                .config
                .thresholds()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            ..self.telemetry.view(self.catalog.store.now_ms())
        };
    }

    /// StatsD: one datagram (or a few, each under 1400 bytes) a second; a lost one is
    /// just lost (UDP), never an error for the engine.
    fn send_statsd(
        &self,
        sample: &crate::telemetry::Sample,
        prev: Option<&crate::telemetry::Sample>,
    ) {
        let Some(sock) = &self.statsd else { return };
        let mut packet = String::new();
        for line in crate::telemetry::statsd_lines(sample, prev, &self.telemetry_view) {
            if packet.len() + line.len() + 1 > 1400 {
                let _ = sock.send(packet.as_bytes());
                packet.clear();
            }
            if !packet.is_empty() {
                packet.push('\n');
            }
            packet.push_str(&line);
        }
        if !packet.is_empty() {
            let _ = sock.send(packet.as_bytes());
        }
    }

    /// Operations by p95 since start, slowest first.
    fn profile(&self) -> Vec<Operation> {
        let mut ops: Vec<Operation> = self
            .downstreams
            .iter()
            .map(|d| Operation {
                name: format!("http.{}", d.name()),
                summary: d.latency.summary(),
            })
            .collect();
        ops.push(Operation {
            name: "catalog.item_sync".into(),
            summary: self.catalog.metrics.latency.summary(),
        });
        if let Some(c) = &self.compliance {
            ops.push(Operation {
                name: "compliance.send".into(),
                summary: c.metrics.send_latency.summary(),
            });
        }
        ops.retain(|o| o.summary.count > 0);
        ops.sort_by(|a, b| b.summary.p95_ms.total_cmp(&a.summary.p95_ms));
        ops
    }

    fn publish(
        &mut self,
        tx: &watch::Sender<Arc<Snapshot>>,
        events: &broadcast::Sender<EngineEvent>,
        draining: bool,
    ) {
        let compliance = self.compliance_view();
        let completed = self.catalog.metrics.completed.load(Ordering::Relaxed);
        // A store that cannot be read keeps the last counts and says so in health.
        let counts = match self.catalog.store.catalog_counts() {
            Ok(c) => {
                self.read_error = None;
                self.counts = c.clone();
                c
            }
            Err(e) => {
                if self.read_error.is_none() {
                    tracing::error!(
                        "store: cannot read {}: {e}",
                        self.catalog.store.path().display()
                    );
                }
                self.read_error = Some(e.to_string());
                self.counts.clone()
            }
        };
        let downstreams: Vec<DownstreamView> = self.downstreams.iter().map(|d| d.view()).collect();
        if !self.ticked {
            // Health and thresholds from the first snapshot on.
            self.ticked = true;
            self.telemetry_tick(&compliance, &counts, &downstreams, events);
        }
        while self.second_started.elapsed() >= Duration::from_secs(1) {
            self.second_started += Duration::from_secs(1);
            self.per_second.pop_front();
            self.per_second.push_back(completed - self.last_completed);
            self.last_completed = completed;
            self.telemetry_tick(&compliance, &counts, &downstreams, events);
        }
        let m = &self.catalog.metrics;
        let store = &self.catalog.store;
        if let Ok(mut fresh) = store.recent_audit(AUDIT_KEPT, self.last_audit_id) {
            fresh.reverse();
            for e in fresh {
                self.last_audit_id = e.id;
                let _ = events.send(EngineEvent::Audit(e.clone()));
                if self.audit.len() >= AUDIT_KEPT {
                    self.audit.pop_back();
                }
                self.audit.push_front(e);
            }
        }
        let scaler = self
            .catalog
            .scaler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let last_reconcile = m.last_reconcile_ms.load(Ordering::Relaxed);
        let snap = Snapshot {
            mode: self.mode,
            server_addr: self.server_addr.clone(),
            catalog: CatalogView {
                paused: self.catalog.is_paused(),
                counts,
                full_sync: m
                    .full_sync
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                workers: self.catalog.max_workers(),
                in_flight: m.in_flight.load(Ordering::Relaxed),
                per_second: self.per_second.iter().copied().collect(),
                completed,
                errors: m.errors.load(Ordering::Relaxed),
                webhooks_accepted: m.webhooks_accepted.load(Ordering::Relaxed),
                webhooks_duplicate: m.webhooks_duplicate.load(Ordering::Relaxed),
                webhooks_ignored: m.webhooks_ignored.load(Ordering::Relaxed),
                webhooks_rejected: m.webhooks_rejected.load(Ordering::Relaxed),
                last_reconcile_ms: (last_reconcile > 0).then_some(last_reconcile as i64),
                workers_target: self.catalog.workers_target(),
                workers_min: scaler
                    .as_ref()
                    .map_or(self.catalog.settings().workers, |s| s.config().min as usize),
                workers_max: scaler
                    .as_ref()
                    .map_or(self.catalog.settings().workers, |s| s.config().max as usize),
                autoscale: scaler.is_some(),
                autoscale_status: scaler.as_ref().map_or_else(
                    || "fixed (catalog.autoscale = false)".to_owned(),
                    |s| s.status.clone(),
                ),
                decisions: scaler
                    .as_ref()
                    .map_or_else(Vec::new, |s| s.decisions().take(10).cloned().collect()),
                claim_batch: self
                    .catalog
                    .claim_batch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .current,
                page_size: self
                    .catalog
                    .page
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .current,
                deferred: m.deferred.load(Ordering::Relaxed),
            },
            recent_errors: m
                .recent_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .take(20)
                .cloned()
                .collect(),
            audit: self.audit.iter().cloned().collect(),
            token_refreshes: self.catalog.qb().tokens().refreshes(),
            draining,
            downstreams,
            telemetry: crate::telemetry::TelemetryView {
                // Live: an invalidation shows at once, not at the next tick.
                cache: self
                    .catalog
                    .cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .stats(),
                ..self.telemetry_view.clone()
            },
            profile: self.profile(),
            config_file: self.config.source.as_ref().map(|p| p.display().to_string()),
            compliance,
        };
        tx.send_if_modified(|current| {
            if **current == snap {
                false
            } else {
                *current = Arc::new(snap);
                true
            }
        });
    }
}
