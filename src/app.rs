//! Wiring shared by the CLI, the benchmark and the tests: logging, starting the sandbox,
//! filling a demo config from it, binding listeners, an engine and the HTTP server that
//! serves it ([`serve_engine`]), running headless, and the in-process engine as the
//! console's [`Link`].

use std::future::Future;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret};
use crate::engine::{self, EngineHandle, EngineOptions, Mode};
use crate::protocol::{
    AttachedConsole, Command, CommandError, CompanyRow, CompanyTag, Disconnected, FaultPatch, Link,
    Query, QueryReply, Reply, Request, SandboxFaults, Snapshot,
};
use crate::sandbox::{self, Sandbox, SandboxOptions, SandboxServer};

/// Logs go to a daily file under `<data dir>/logs` (never to a console's screen), and to
/// stderr as well when `stderr` is set (headless runs under a service manager).
pub fn init_logging(
    data_dir: &Path,
    level: &str,
    stderr: bool,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::prelude::*;
    let dir = data_dir.join("logs");
    if crate::store::private::create_dir(&dir).is_err() {
        return None;
    }
    let appender = tracing_appender::rolling::daily(&dir, "syncctl.log");
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into());
    let file = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(writer);
    // Colour only for a person at a terminal, not for journald or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let err = stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(file)
        .with(err)
        .try_init();
    Some(guard)
}

/// What [`harden_process`] did, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// The soft limit on open files before and after.
    pub files_before: Option<u64>,
    pub files_after: Option<u64>,
}

/// Process-wide settings at start, before anything opens a file or a socket:
/// - umask `077`: whatever this process creates (logs, the sandbox's world, a database)
///   is its user's alone;
/// - the soft limit on open files raised to the hard one (capped at 1,048,576): every
///   connection is a descriptor, and the default 1,024 is too few for an engine under
///   load (the server sheds connections above `server.max_connections` well before).
pub fn harden_process() -> ProcessLimits {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit, umask};
        let _ = umask(rustix::fs::Mode::from_raw_mode(0o077));
        let before = getrlimit(Resource::Nofile);
        let want = before.maximum.unwrap_or(1 << 20).min(1 << 20);
        let mut after = before.current;
        if before.current.is_some_and(|c| c < want) {
            let raised = Rlimit {
                current: Some(want),
                maximum: before.maximum,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                after = Some(want);
            }
        }
        ProcessLimits {
            files_before: before.current,
            files_after: after,
        }
    }
    #[cfg(not(unix))]
    ProcessLimits {
        files_before: None,
        files_after: None,
    }
}

/// Binds `addr`; when it is taken and `fallback` is set, binds a free loopback port.
pub async fn bind(addr: SocketAddr, fallback: bool) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if fallback && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!("{addr} is in use; using a free port instead");
            Ok(tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?)
        }
        Err(e) => Err(anyhow::anyhow!("cannot listen on {addr}: {e}")),
    }
}

/// Starts a sandbox on `listener` with `opts`.
pub fn start_sandbox(
    opts: &SandboxOptions,
    listener: tokio::net::TcpListener,
    change_interval_ms: u64,
) -> anyhow::Result<SandboxServer> {
    let sandbox = Sandbox::open(opts)?;
    sandbox::serve(sandbox, listener, change_interval_ms)
}

/// Fills every Stripe/QuickBooks key the config leaves out with the sandbox's.
pub fn fill_from_sandbox(config: &mut Config, sandbox: &Sandbox, addr: SocketAddr) {
    let base = format!("http://{addr}");
    let s = &mut config.stripe;
    s.api_key
        .get_or_insert_with(|| Secret::new(sandbox::STRIPE_API_KEY));
    s.base_url.get_or_insert_with(|| base.clone());
    s.webhook_secret
        .get_or_insert_with(|| Secret::new(sandbox.webhook_secret()));
    let q = &mut config.quickbooks;
    q.base_url.get_or_insert_with(|| base.clone());
    q.realm_id
        .get_or_insert_with(|| sandbox::QB_REALM_ID.into());
    q.client_id
        .get_or_insert_with(|| sandbox::QB_CLIENT_ID.into());
    q.client_secret
        .get_or_insert_with(|| Secret::new(sandbox::QB_CLIENT_SECRET));
    q.refresh_token
        .get_or_insert_with(|| Secret::new(sandbox.lock().world.refresh_token.clone()));
    q.token_url
        .get_or_insert_with(|| format!("{base}/oauth2/v1/tokens/bearer"));
    let a = &mut config.alegra;
    a.base_url.get_or_insert_with(|| format!("{base}/api/v1"));
    a.email
        .get_or_insert_with(|| sandbox::alegra::ALEGRA_EMAIL.into());
    a.token
        .get_or_insert_with(|| Secret::new(sandbox::alegra::ALEGRA_TOKEN));
    a.issuer_nit
        .get_or_insert_with(|| sandbox::alegra::ISSUER_NIT.into());
    a.technical_key
        .get_or_insert_with(|| Secret::new(sandbox::alegra::TECHNICAL_KEY));
    a.environment = sandbox::alegra::ENVIRONMENT.into();
    // Several companies: each its own credentials, as `[[companies]]` entries. Those
    // entries are not in the config file, so a threshold tuned in one company has no
    // entry to be saved in: it lasts until exit (saved to the shared top-level tables,
    // it would reach every company at the next start).
    if sandbox.companies().len() > 1 && config.companies.is_empty() {
        config.source = None;
        config.companies = sandbox
            .companies()
            .iter()
            .map(|c| {
                let secrets = c.lock().world.secrets();
                let table = |pairs: &[(&str, &str)]| -> toml::Table {
                    pairs
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), toml::Value::String((*v).to_owned())))
                        .collect()
                };
                crate::config::CompanyConfig {
                    id: c.keys.id.clone(),
                    name: c.keys.name.clone(),
                    stripe: table(&[
                        ("api_key", &c.keys.stripe_api_key),
                        ("webhook_secret", &secrets.webhook_secret),
                    ]),
                    quickbooks: table(&[
                        ("realm_id", &c.keys.realm_id),
                        ("refresh_token", &secrets.refresh_token),
                    ]),
                    alegra: table(&[
                        ("email", &c.keys.alegra_email),
                        ("token", &c.keys.alegra_token),
                    ]),
                    ..Default::default()
                }
            })
            .collect();
    }
    // The sandbox publishes its quotas as the real services do; the engine keeps to them.
    let quota = |name: &str| {
        let f = sandbox.faults.get(name).unwrap_or_default();
        (f.rate_limit_per_min, f.max_concurrent)
    };
    let (r, c) = quota("stripe");
    config.stripe.rate_limit_per_min = r;
    config.stripe.max_concurrent = c;
    let (r, c) = quota("quickbooks");
    config.quickbooks.rate_limit_per_min = r;
    config.quickbooks.max_concurrent = c;
    let (r, c) = quota("alegra");
    config.alegra.rate_limit_per_min = r;
    config.alegra.max_concurrent = c;
}

/// An engine and the HTTP server serving it. Derefs to the [`EngineHandle`]
/// (`snapshot`, `events`, `commands`, `wall_clock`); [`Served::shutdown`] drains the
/// engine (the server answers meanwhile), then stops the server.
///
/// With `[[companies]]` there is one engine per company, started and stopped together:
/// `engine` is the first company's that started, `others` the rest, `failed` those
/// whose engine could not start (reported by id; the others run, and the server answers
/// for a failed one with why: an operator would rather see one company down than lose
/// them all).
pub struct Served {
    pub engine: EngineHandle,
    /// The company of `engine` ("default" for one company).
    pub company: String,
    /// Its name.
    company_name: String,
    /// Every company's id, in the config's order.
    order: Vec<String>,
    /// The other companies' engines, in the config's order.
    pub others: Vec<HostedCompany>,
    /// The companies whose engine did not start.
    pub failed: Vec<FailedCompany>,
    /// Where the server listens.
    pub server_addr: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
    server_cancel: CancellationToken,
    /// The data dir's control file, removed once the server has stopped.
    local: Option<crate::server::local::LocalAccess>,
    /// With companies: the top data dir's lock (each engine locks its own dir).
    _host_lock: Option<crate::store::DataDirLock>,
    /// The consoles attached over the network.
    pub consoles: watch::Receiver<Vec<AttachedConsole>>,
    /// The company the in-process console watches (its snapshots, its commands).
    watched: String,
}

/// One company's running engine in a [`Served`].
pub struct HostedCompany {
    pub id: String,
    pub name: String,
    pub engine: EngineHandle,
}

/// A company whose engine did not start, and why.
#[derive(Debug, Clone)]
pub struct FailedCompany {
    pub id: String,
    pub name: String,
    pub error: String,
}

impl Deref for Served {
    type Target = EngineHandle;

    fn deref(&self) -> &EngineHandle {
        &self.engine
    }
}

impl DerefMut for Served {
    fn deref_mut(&mut self) -> &mut EngineHandle {
        &mut self.engine
    }
}

impl Served {
    /// Asks every engine to drain and stop, waits until they have, then stops the
    /// server.
    pub async fn shutdown(&mut self) {
        // Together: each company drains while the others do.
        let mut set = tokio::task::JoinSet::new();
        for (i, mut o) in std::mem::take(&mut self.others).into_iter().enumerate() {
            set.spawn(async move {
                o.engine.shutdown().await;
                (i, o)
            });
        }
        let others = async {
            let mut back = Vec::new();
            while let Some(done) = set.join_next().await {
                if let Ok(o) = done {
                    back.push(o);
                }
            }
            back.sort_by_key(|(i, _)| *i);
            back.into_iter().map(|(_, o)| o).collect()
        };
        let ((), others) = tokio::join!(self.engine.shutdown(), others);
        self.others = others;
        self.stop_server().await;
    }

    /// Waits until every engine has stopped (a command, a signal), then stops the
    /// server.
    pub async fn wait(&mut self) {
        self.wait_engines().await;
        self.stop_server().await;
    }

    async fn wait_engines(&mut self) {
        self.engine.wait().await;
        for o in &mut self.others {
            o.engine.wait().await;
        }
    }

    /// The engine of company `id`, if it runs.
    pub fn company(&self, id: &str) -> Option<&EngineHandle> {
        if self.company == id {
            return Some(&self.engine);
        }
        self.others.iter().find(|o| o.id == id).map(|o| &o.engine)
    }

    /// Every company served, in the config's order: its id and name, and its engine
    /// or why it did not start.
    pub fn companies(&self) -> Vec<(CompanyTag, Result<&EngineHandle, String>)> {
        let mut all: Vec<(CompanyTag, Result<&EngineHandle, String>)> = Vec::new();
        all.push((
            CompanyTag::new(&self.company, &self.company_name),
            Ok(&self.engine),
        ));
        for o in &self.others {
            all.push((CompanyTag::new(&o.id, &o.name), Ok(&o.engine)));
        }
        for f in &self.failed {
            all.push((CompanyTag::new(&f.id, &f.name), Err(f.error.clone())));
        }
        let order = |id: &str| self.order.iter().position(|o| o == id);
        all.sort_by_key(|(tag, _)| order(&tag.id));
        all
    }

    /// The engine the in-process console watches.
    fn watched(&self) -> &EngineHandle {
        self.company(&self.watched).unwrap_or(&self.engine)
    }

    async fn stop_server(&mut self) {
        self.server_cancel.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.local = None;
    }
}

/// Starts an engine with `opts`, then serves it on `listener` (its address is the one
/// the engine's snapshots show).
pub async fn serve_engine(
    mut opts: EngineOptions,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<Served> {
    let server_addr = listener.local_addr()?;
    let settings = crate::server::Settings::from_config(&opts.config)?;
    let webhook_secret = opts
        .config
        .stripe
        .webhook_secret
        .clone()
        .ok_or_else(|| anyhow::anyhow!("config key `stripe.webhook_secret` is required"))?;
    let tolerance = opts.config.stripe.webhook_tolerance_secs;
    opts.server_addr = Some(server_addr);
    let data_dir = opts.data_dir.clone();
    let company = opts.company.clone();
    let engine = engine::start(opts).await?;
    let route = crate::server::companies::CompanyRoute {
        id: company.clone(),
        name: company.clone(),
        engine: Ok(engine.frontend()),
        webhook_secret,
        webhook_tolerance_secs: tolerance,
    };
    let hosted = HostedCompany {
        id: company.clone(),
        name: company,
        engine,
    };
    serve_started(
        vec![hosted],
        Vec::new(),
        vec![route],
        &data_dir,
        None,
        listener,
        settings,
    )
}

/// Starts the engines of every company of `config` (one engine in `data_dir` without
/// `[[companies]]`, else one per company in `<data_dir>/companies/<id>/`) and serves
/// them on `listener`. A company whose engine cannot start is logged and reported
/// (`Served::failed`, the API, `/health`) and the others run; when none starts, the
/// error names each.
pub async fn serve_companies(
    config: Config,
    data_dir: PathBuf,
    mode: Mode,
    fresh_store: bool,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<Served> {
    if config.companies.is_empty() {
        return serve_engine(
            EngineOptions {
                config,
                data_dir,
                mode,
                server_addr: None,
                fresh_store,
                company: crate::config::DEFAULT_COMPANY.into(),
            },
            listener,
        )
        .await;
    }
    let server_addr = listener.local_addr()?;
    let settings = crate::server::Settings::from_config(&config)?;
    crate::store::private::create_dir(&data_dir)
        .map_err(|e| anyhow::anyhow!("data dir {}: {e}", data_dir.display()))?;
    // The process holds the top dir: a second one on it stops here (or attaches).
    let host_lock = crate::store::DataDirLock::acquire(&data_dir, "engine")?;
    let mut hosted = Vec::new();
    let mut failed = Vec::new();
    let mut routes = Vec::new();
    for company in config.companies()? {
        let dir = data_dir.join("companies").join(&company.id);
        let webhook_secret = company.config.stripe.webhook_secret.clone();
        let tolerance = company.config.stripe.webhook_tolerance_secs;
        let started = match crate::store::private::create_dir(&dir) {
            Err(e) => Err(anyhow::anyhow!("data dir {}: {e}", dir.display())),
            Ok(()) => {
                engine::start(EngineOptions {
                    config: company.config,
                    data_dir: dir,
                    mode,
                    server_addr: Some(server_addr),
                    fresh_store,
                    company: company.id.clone(),
                })
                .await
            }
        };
        let route = |engine| crate::server::companies::CompanyRoute {
            id: company.id.clone(),
            name: company.name.clone(),
            engine,
            webhook_secret: webhook_secret.clone().unwrap_or_default(),
            webhook_tolerance_secs: tolerance,
        };
        match started {
            Ok(engine) => {
                routes.push(route(Ok(engine.frontend())));
                hosted.push(HostedCompany {
                    id: company.id.clone(),
                    name: company.name.clone(),
                    engine,
                });
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!("company {}: the engine did not start: {error}", company.id);
                routes.push(route(Err(error.clone())));
                failed.push(FailedCompany {
                    id: company.id.clone(),
                    name: company.name.clone(),
                    error,
                });
            }
        }
    }
    if hosted.is_empty() {
        anyhow::bail!(
            "no company's engine started: {}",
            failed
                .iter()
                .map(|f| format!("company {:?}: {}", f.id, f.error))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    serve_started(
        hosted,
        failed,
        routes,
        &data_dir,
        Some(host_lock),
        listener,
        settings,
    )
}

/// Serves engines already started (at least one in `hosted`).
fn serve_started(
    hosted: Vec<HostedCompany>,
    failed: Vec<FailedCompany>,
    routes: Vec<crate::server::companies::CompanyRoute>,
    data_dir: &Path,
    host_lock: Option<crate::store::DataDirLock>,
    listener: tokio::net::TcpListener,
    mut settings: crate::server::Settings,
) -> anyhow::Result<Served> {
    let server_addr = listener.local_addr()?;
    let order = routes.iter().map(|r| r.id.clone()).collect();
    let mut hosted = hosted.into_iter();
    let Some(first) = hosted.next() else {
        anyhow::bail!("no engine to serve");
    };
    // The engine holds the data dir's lock now: the CLI on this machine reaches it
    // through the control file.
    let local = crate::server::local::LocalAccess::create(data_dir, server_addr).map_err(|e| {
        anyhow::anyhow!(
            "writing {}: {e}",
            data_dir.join(crate::server::local::CONTROL_FILE).display()
        )
    })?;
    settings.local_token = Some(local.token().clone());
    let consoles = settings.consoles.subscribe();
    let server_cancel = CancellationToken::new();
    let server = tokio::spawn(crate::server::serve(
        listener,
        routes,
        settings,
        server_cancel.clone(),
    ));
    Ok(Served {
        engine: first.engine,
        watched: first.id.clone(),
        company: first.id,
        company_name: first.name,
        order,
        others: hosted.collect(),
        failed,
        server_addr,
        server: Some(server),
        server_cancel,
        local: Some(local),
        _host_lock: host_lock,
        consoles,
    })
}

/// A running demo: the sandbox and the engine wired to it.
pub struct Demo {
    pub sandbox: SandboxServer,
    pub engine: Served,
    _sandbox_lock: crate::store::DataDirLock,
    /// Kept so a throwaway demo's directory lives as long as the demo.
    pub _tmp: Option<tempfile::TempDir>,
}

/// Starts the sandbox and an engine pointed at it. Engine state lives in `data_dir`,
/// the sandbox's world in `data_dir/sandbox` (so a restarted demo continues its world).
/// With `companies` > 1 the sandbox simulates that many companies and one engine per
/// company runs in this process (`<data dir>/companies/<id>/`), as `[[companies]]` would.
pub async fn start_demo(
    mut config: Config,
    data_dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
    fresh_store: bool,
    companies: usize,
) -> anyhow::Result<Demo> {
    let sandbox_dir = data_dir.join("sandbox");
    // Before anything opens the world: a second demo on this dir stops here.
    let sandbox_lock = crate::store::DataDirLock::acquire(&sandbox_dir, "sandbox")?;
    let opts = SandboxOptions {
        products: config.sandbox.products,
        seed: config.sandbox.seed,
        latency_ms: config.sandbox.latency_ms,
        change_interval_ms: config.sandbox.change_interval_ms,
        dir: Some(sandbox_dir),
        webhook_url: None,
        faults: config.sandbox.faults.clone(),
        companies: companies.max(1),
    };
    let sandbox_listener = bind(config.sandbox.listen, true).await?;
    let engine_listener = bind(config.server.listen, true).await?;
    let engine_addr = engine_listener.local_addr()?;
    let sandbox = start_sandbox(&opts, sandbox_listener, config.sandbox.change_interval_ms)?;
    // Each company's Stripe account posts to its own endpoint (the sandbox fills in
    // `{company}`).
    let hook = if companies > 1 {
        format!("http://{engine_addr}/webhooks/stripe/{{company}}")
    } else {
        format!("http://{engine_addr}/webhooks/stripe")
    };
    sandbox.sandbox.set_webhook_url(Some(hook));
    fill_from_sandbox(&mut config, &sandbox.sandbox, sandbox.addr);
    let engine = serve_companies(
        config,
        data_dir,
        Mode::Sandbox,
        fresh_store,
        engine_listener,
    )
    .await;
    match engine {
        Ok(engine) => Ok(Demo {
            sandbox,
            engine,
            _sandbox_lock: sandbox_lock,
            _tmp: tmp,
        }),
        Err(e) => {
            sandbox.shutdown().await;
            Err(e)
        }
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs until a signal, then drains the engine.
pub async fn run_headless(engine: &mut Served) {
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("signal received; draining in-flight work");
            eprintln!("syncctl: draining in-flight work…");
            engine.shutdown().await;
        }
        _ = engine.wait() => {}
    }
}

/// The in-process engine as a console's [`Link`]: its snapshot watch, its command
/// channel, and (in the demo) the sandbox.
pub struct LocalEngine<'a> {
    pub engine: &'a mut Served,
    pub sandbox: Option<Arc<Sandbox>>,
}

impl LocalEngine<'_> {
    /// The engine a request goes to: the company it names (None: the one watched).
    fn engine_for(&self, company: Option<&str>) -> Result<&EngineHandle, CommandError> {
        match company {
            None => Ok(self.engine.watched()),
            Some(id) => self.engine.company(id).ok_or_else(|| {
                CommandError::unavailable(format!(
                    "not sent: company {id:?} has no engine running in this process"
                ))
            }),
        }
    }
}

impl Link for LocalEngine<'_> {
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.engine.watched().snapshot.clone()
    }

    fn send(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<oneshot::Receiver<Reply>, Disconnected>> + Send {
        // The quit's drain stops every company this process hosts, each as it drains
        // (the console waits for the one it watches).
        let others: Vec<_> = if matches!(request.command, Command::Shutdown {}) {
            self.engine
                .companies()
                .into_iter()
                .filter_map(|(tag, e)| e.ok().filter(|_| tag.id != self.engine.watched))
                .map(|e| e.commands.clone())
                .collect()
        } else {
            Vec::new()
        };
        let target = self
            .engine_for(request.company.as_deref())
            .map(|e| e.commands.clone());
        async move {
            for o in others {
                let _ = o.send(request.clone()).await;
            }
            match target {
                Ok(commands) => commands.send(request).await,
                Err(e) => {
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(Err(e));
                    Ok(rx)
                }
            }
        }
    }

    fn query(
        &self,
        query: Query,
    ) -> impl Future<Output = Result<oneshot::Receiver<QueryReply>, Disconnected>> + Send {
        let commands = self.engine.watched().commands.clone();
        async move { commands.send_query(query).await }
    }

    fn shutdown(&mut self) -> impl Future<Output = ()> + Send {
        self.engine.shutdown()
    }

    fn sandbox(&self) -> Option<Arc<dyn SandboxFaults>> {
        let frontend = self.engine.watched().frontend();
        self.sandbox
            .clone()
            .map(|sandbox| Arc::new(AuditedSandbox { sandbox, frontend }) as Arc<dyn SandboxFaults>)
    }

    fn consoles(&self) -> watch::Receiver<Vec<AttachedConsole>> {
        self.engine.consoles.clone()
    }

    /// With several companies: each one's row, once a second while the console looks.
    fn companies(&self) -> watch::Receiver<Vec<CompanyRow>> {
        let all: Vec<(CompanyTag, Followed)> = self
            .engine
            .companies()
            .into_iter()
            .map(|(tag, e)| (tag, e.map(|e| e.snapshot.clone())))
            .collect();
        if all.len() < 2 {
            return watch::Sender::new(Vec::new()).subscribe();
        }
        let read = move || {
            all.iter()
                .map(|(tag, s)| {
                    (
                        tag.clone(),
                        s.as_ref().map(|s| s.borrow().clone()).map_err(Clone::clone),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut meters = Vec::new();
        let (tx, rx) = watch::channel(crate::protocol::companies::rows(
            &read(),
            &mut meters,
            crate::protocol::companies::wall_ms(),
        ));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    _ = tick.tick() => {}
                }
                let rows = crate::protocol::companies::rows(
                    &read(),
                    &mut meters,
                    crate::protocol::companies::wall_ms(),
                );
                tx.send_if_modified(|old| {
                    let changed = *old != rows;
                    *old = rows;
                    changed
                });
            }
        });
        rx
    }

    fn company(&self) -> Option<CompanyTag> {
        self.engine
            .companies()
            .into_iter()
            .find(|(tag, _)| tag.id == self.engine.watched)
            .map(|(tag, _)| tag)
    }

    fn watch_company(&mut self, id: &str) -> impl Future<Output = Result<(), String>> + Send {
        let found = self
            .engine
            .companies()
            .into_iter()
            .find(|(t, _)| t.id == id)
            .map(|(t, e)| (t, e.map(|_| ())));
        let result = match found {
            Some((tag, Ok(()))) => {
                self.engine.watched = tag.id;
                Ok(())
            }
            Some((tag, Err(why))) => Err(format!("company {} did not start: {why}", tag.label())),
            None => Err(format!("no company {id:?} in this process")),
        };
        async move { result }
    }
}

/// A company's snapshots, or why its engine does not run.
type Followed = Result<watch::Receiver<Arc<Snapshot>>, String>;

/// The demo's sandbox as the console's outage toggle reaches it: each patch is audited
/// in the engine's trail (who, which service, down or restored, or why not).
struct AuditedSandbox {
    sandbox: Arc<Sandbox>,
    frontend: engine::Frontend,
}

impl SandboxFaults for AuditedSandbox {
    fn outage(&self, service: &str) -> Option<bool> {
        self.sandbox.outage(service)
    }

    fn patch_faults(&self, patch: &FaultPatch) -> Result<(), String> {
        self.patch_faults_as("console", patch)
    }

    fn patch_faults_as(&self, actor: &str, patch: &FaultPatch) -> Result<(), String> {
        let result = self.sandbox.patch_faults(patch);
        let service = &patch.service;
        let what = match patch.outage {
            Some(true) => format!("sandbox outage {service} on"),
            Some(false) => format!("sandbox outage {service} off"),
            None => format!("sandbox faults {service}"),
        };
        let done = match patch.outage {
            Some(true) => format!("sandbox {service} is down (every request answers 503)"),
            Some(false) => format!("sandbox {service} restored"),
            None => format!("sandbox {service} faults changed"),
        };
        self.frontend.audit_operator(
            actor,
            service,
            &what,
            result
                .as_ref()
                .map(|()| done.as_str())
                .map_err(String::as_str),
        );
        result
    }
}

impl SandboxFaults for Sandbox {
    fn outage(&self, service: &str) -> Option<bool> {
        self.faults.get(service).map(|f| f.outage)
    }

    fn patch_faults(&self, patch: &FaultPatch) -> Result<(), String> {
        self.faults.patch(patch).map(|_| ())
    }
}
