//! Starting an engine: the store, the clients and their resilience policies, the
//! catalog and compliance pipelines, their workers and periodic tasks, the publisher,
//! and the loop that answers commands and queries until it is asked to stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::catalog::{Catalog, CatalogSettings};
use super::commands::{self, Commands};
use super::handle::{EngineHandle, Intake};
use super::publisher::Publisher;
use super::{
    EngineOptions, Mode, Snapshot, bundle, compliance, housekeeping, operator, periodic, whatif,
};
use crate::connectors::quickbooks::{QuickBooksClient, TokenKeeper};
use crate::connectors::stripe::StripeClient;
use crate::resilience::{Downstream, SharedClock};
use crate::store::{DataDirLock, Store};

/// The name this process's leases carry on a shared store: unique per live process
/// (host, pid, data dir, start time), so a box never takes another's leases as its own.
fn lease_owner(data_dir: &std::path::Path) -> String {
    let host = crate::store::postgres::hostname();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{host}:{}:{}:{started:x}",
        std::process::id(),
        data_dir.display()
    )
}

pub(super) fn required<'a, T>(v: &'a Option<T>, key: &str) -> anyhow::Result<&'a T> {
    v.as_ref()
        .ok_or_else(|| anyhow::anyhow!("config key `{key}` is required"))
}

/// Starts the engine: store, clients, the pipelines, their tasks, the snapshot
/// publisher and the loop that answers commands. Serving it (HTTP) is the caller's.
#[expect(
    clippy::too_many_lines,
    reason = "the engine's start: every part built and spawned in dependency order"
)]
pub async fn start(opts: EngineOptions) -> anyhow::Result<EngineHandle> {
    // The data dir holds tokens and buyers' data: 0700, its files 0600, whatever an
    // older version or the umask left.
    match crate::store::private::secure_tree(&opts.data_dir) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            "data dir {}: {n} files or folders were readable by others; made private (folders 0700, files 0600)",
            opts.data_dir.display()
        ),
        Err(e) => anyhow::bail!(
            "data dir {}: cannot make it private (0700, files 0600): {e}",
            opts.data_dir.display()
        ),
    }
    let lock = DataDirLock::acquire(&opts.data_dir, "engine")?;
    let wall_clock = crate::store::WallClock::default();
    let (store, _opened) =
        Store::open_checked(&opts.data_dir, wall_clock.clone(), opts.fresh_store)?;
    // The jobs, cursors and Item mappings: in the data dir's store, or shared with the
    // engines of other boxes on Postgres (`store.url`).
    let owner = lease_owner(&opts.data_dir);
    let queue = match &opts.config.store.url {
        // The real clock, as the store's own job calls read it (a test moving the
        // engine's wall clock moves what it dates, not what falls due).
        None => {
            crate::store::queue::JobQueue::sqlite(store.clone(), crate::store::WallClock::default())
        }
        Some(url) => {
            let q = crate::store::queue::JobQueue::postgres(
                url.expose(),
                &owner,
                &opts.company,
                wall_clock.clone(),
            )
            .await?
            .with_local(store.clone());
            tracing::info!(
                "store: jobs and Item mappings of company {:?} on the shared postgres store (leases as {owner})",
                opts.company
            );
            q
        }
    };
    let requeued = queue.requeue_leased().await?;
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
    // A restart starts each limiter where the previous process left it.
    periodic::restore_limiters(&store, &downstreams);
    // On the shared store the company's quotas are every box's: each limiter takes its
    // tokens, in-flight slots and pushbacks from the company's rows.
    let shared_pool = queue.pg_pool();
    let shared_at = shared_pool.as_ref().map(|pool| super::quota::SharedAt {
        pool,
        company: &opts.company,
        owner: &owner,
        clock: wall_clock.clone(),
    });
    if let Some(at) = &shared_at {
        for d in &downstreams {
            if let Some(dc) = cfg.downstream(d.name()) {
                // A QuickBooks batch counts each of its operations toward the quota.
                let weight = if d.name() == "quickbooks" {
                    crate::connectors::quickbooks::BATCH_MAX as u32
                } else {
                    1
                };
                super::quota::share(&d.limiter, &dc.limiter, weight, d.name(), at);
            }
        }
    }
    // Breaker transitions become audit entries and live events (written off the
    // caller's path: the listener runs under the breaker's lock).
    let (transitions_tx, transitions_rx) =
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
    let mut tokens = TokenKeeper::new(
        http.clone(),
        required(&cfg.quickbooks.token_url, "quickbooks.token_url")?,
        required(&cfg.quickbooks.client_id, "quickbooks.client_id")?,
        required(&cfg.quickbooks.client_secret, "quickbooks.client_secret")?.clone(),
        required(&cfg.quickbooks.refresh_token, "quickbooks.refresh_token")?,
        store.clone(),
    )?;
    if let Some(pool) = &shared_pool {
        // Every box of the company refreshes through one row, one box at a time.
        tokens = tokens
            .shared(
                crate::store::pg_tokens::PgTokens::new(pool.clone(), &opts.company),
                required(&cfg.quickbooks.refresh_token, "quickbooks.refresh_token")?,
            )
            .await?;
    }
    let tokens = Arc::new(tokens);
    let batch_cfg = crate::resilience::LimiterConfig {
        rate_per_min: crate::connectors::quickbooks::batch_limit_per_min(
            cfg.quickbooks.rate_limit_per_min,
        ),
        burst: 1,
        ..Default::default()
    };
    let batch_pace =
        crate::resilience::Limiter::new("quickbooks batches", batch_cfg.clone(), clock.clone());
    if let Some(at) = &shared_at {
        super::quota::share(&batch_pace, &batch_cfg, 1, "quickbooks batches", at);
    }
    let qb = QuickBooksClient::new(
        http.clone(),
        required(&cfg.quickbooks.base_url, "quickbooks.base_url")?,
        required(&cfg.quickbooks.realm_id, "quickbooks.realm_id")?,
        cfg.quickbooks.minor_version,
        Duration::from_secs(cfg.quickbooks.timeout_secs),
        tokens,
    )
    .with_guard(guard("quickbooks")?)
    .with_batch_pace(batch_pace);
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
            // The invoices: this box's store, or each company's shared ones on Postgres
            // (claimed by one box at a time), beside the jobs.
            let invoices = match queue.postgres_handle() {
                None => crate::store::Invoices::sqlite(store.clone()),
                Some(pg) => {
                    tracing::info!(
                        "store: invoices of company {:?} on the shared postgres store",
                        opts.company
                    );
                    crate::store::Invoices::postgres(
                        crate::store::pg_invoices::PgInvoices::of(pg),
                        wall_clock.clone(),
                    )
                }
            };
            Some(Arc::new(compliance::Compliance::new(
                store.clone(),
                invoices,
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
                    // The store's lease (as the catalog's jobs'), kept alive by
                    // heartbeats while an invoice is worked on.
                    lease_ms: cfg.catalog.lease_secs as i64 * 1000,
                },
            )?))
        }
    };
    let reconciler = Arc::new(super::reconcile::Reconciler::new(
        store.clone(),
        stripe.clone(),
        qb.clone(),
        super::reconcile::REFRESH_EVERY,
    ));
    let catalog = Arc::new(Catalog::new(store.clone(), queue.clone(), stripe, qb, settings).await?);
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
    // Which box leads the company (see store::pg_leader): on SQLite, this one.
    let leadership = match &opts.config.store.url {
        None => crate::store::pg_leader::Leadership::always(),
        Some(url) => crate::store::pg_leader::Leadership::postgres(
            url.expose(),
            &opts.company,
            cancel.clone(),
        )?,
    };
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<commands::Message>(64);
    let cmd_tx = Commands::new(cmd_tx);
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (events_tx, _) = broadcast::channel(1024);
    let workers = tokio_util::task::TaskTracker::new();
    workers.spawn(catalog.clone().dispatcher(cancel.clone()));
    for index in 0..catalog.max_workers() {
        workers.spawn(catalog.clone().worker(index, cancel.clone()));
    }
    {
        let (c, k) = (catalog.clone(), cancel.clone());
        workers.spawn(async move { c.autoscale_loop(k).await });
        let (c, k) = (catalog.clone(), cancel.clone());
        workers.spawn(async move { c.counts_loop(k).await });
        workers.spawn(periodic::audit_retention_loop(
            store.clone(),
            queue.clone(),
            cfg.audit.retention_days,
            cfg.catalog.done_retention_days,
            cancel.clone(),
        ));
        workers.spawn(periodic::audit_index_loop(store.clone(), cancel.clone()));
        for d in &downstreams {
            workers.spawn(periodic::limiter_state_loop(
                store.clone(),
                d.clone(),
                cancel.clone(),
            ));
        }
        // The full sync and both reconciliations: on a shared store, only the box
        // leading the company runs them (each box would read both sides on the one
        // quota); another takes over when it stops.
        let (c, c2) = (catalog.clone(), catalog.clone());
        workers.spawn(periodic::by_role(
            leadership.clone(),
            "full sync",
            cancel.clone(),
            move |k| {
                let c = c.clone();
                async move { c.full_sync_loop(k).await }
            },
            move |k| {
                let c = c2.clone();
                async move { c.follow_full_sync(k).await }
            },
        ));
        let c = catalog.clone();
        workers.spawn(periodic::by_role(
            leadership.clone(),
            "reconciliation of events",
            cancel.clone(),
            move |k| {
                let c = c.clone();
                async move { c.reconcile_loop(k).await }
            },
            |k: CancellationToken| async move { k.cancelled().await },
        ));
        let (r, r2, c) = (reconciler.clone(), reconciler.clone(), catalog.clone());
        workers.spawn(periodic::by_role(
            leadership.clone(),
            "reconciliation",
            cancel.clone(),
            move |k| {
                let (r, c) = (r.clone(), c.clone());
                async move { r.run(&c, k).await }
            },
            move |k| {
                let r = r2.clone();
                async move { r.follow(k).await }
            },
        ));
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
            workers.spawn(periodic::housekeeping_loop(house, cancel.clone()));
        }
    }
    workers.close();

    let (done_tx, done_rx) = oneshot::channel();
    // The publisher's audit lines (alerts, anomalies), written in order off its task.
    let (audit_tx, audit_rx) = mpsc::unbounded_channel::<(String, String, String)>();
    tokio::spawn(periodic::audit_writer(store.clone(), audit_rx));
    tokio::spawn(periodic::store_probe_loop(store.clone(), cancel.clone()));
    let mut publisher = Publisher::new(
        catalog.clone(),
        compliance.clone(),
        downstreams.clone(),
        opts.mode,
        opts.server_addr.map(|a| a.to_string()).unwrap_or_default(),
        opts.config.clone(),
        audit_tx,
    );
    publisher.reconciler = Some(reconciler.clone());
    // The telemetry history (series, alerts, the auto-scaler), written off the loop.
    let (history_tx, history_rx) = mpsc::channel(1);
    publisher.history_tx = Some(history_tx);
    let history_writer = tokio::spawn(periodic::history_writer(store.clone(), history_rx));
    tokio::spawn(periodic::transitions_loop(
        store.clone(),
        events_tx.clone(),
        transitions_rx,
        compliance.clone(),
    ));
    publisher.restore_operator_state();
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

    // The full integrity check, off the start's path (the start checked what is
    // bounded): its verdict is an audit line, or a damaged store that stops writing and
    // says so in health.
    {
        let store = store.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let s = store.clone();
            if let Ok(Ok(())) = tokio::task::spawn_blocking(move || s.check_integrity()).await {
                let _ = store.audit(
                    "engine",
                    "store",
                    "engine",
                    &format!(
                        "integrity check: every page of {} read, no damage ({} ms)",
                        store.path().display(),
                        started.elapsed().as_millis()
                    ),
                );
            }
        });
    }

    let (started_ms, bundle_clock) = (wall_clock.now_ms(), wall_clock.clone());
    let events = events_tx.clone();
    let intake = Arc::new(Intake {
        catalog: catalog.clone(),
        compliance: compliance.clone(),
        released: AtomicBool::new(false),
    });
    let handle_intake = intake.clone();
    let ctx = commands::Ctx {
        catalog: catalog.clone(),
        compliance: compliance.clone(),
        downstreams: downstreams.clone(),
        reconciler: reconciler.clone(),
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
                    Some(commands::Message::Query {
                        query: crate::protocol::Query::WhatIf { name, value },
                        reply,
                    }) => {
                        // A replay of the telemetry the loop holds (an hour: fast).
                        let answer = whatif::what_if(&publisher.config, &publisher.telemetry, &name, value);
                        let _ = reply.send(answer);
                    }
                    Some(commands::Message::Query {
                        query: crate::protocol::Query::Preview { command },
                        reply,
                    }) => {
                        // Read where the command would run, so it sees what it would.
                        let answer = ctx
                            .preview(&command)
                            .map(|p| crate::protocol::Answer::Preview(Box::new(p)));
                        let _ = reply.send(answer);
                    }
                    Some(commands::Message::Query {
                        query: crate::protocol::Query::Reconciliation { limit },
                        reply,
                    }) => {
                        let view = ctx.reconciler.view(limit);
                        let _ = reply.send(Ok(crate::protocol::Answer::Reconciliation(Box::new(view))));
                    }
                    Some(commands::Message::Query { query, reply }) => {
                        // What only the loop holds is taken here (a bundle's snapshot,
                        // config and series); the rest is answered off the loop: it
                        // reads the store.
                        let taken = matches!(query, crate::protocol::Query::Bundle { .. }).then(|| {
                            bundle::Taken::now(
                                snap_tx.borrow().clone(),
                                &publisher.config,
                                &publisher.telemetry,
                                started_ms,
                                bundle_clock.now_ms(),
                            )
                        });
                        let (store, c) = (ctx.catalog.store.clone(), ctx.compliance.clone());
                        let live = ctx.reconciler.clone();
                        tokio::spawn(async move {
                            let answer = tokio::task::spawn_blocking(move || match (query, taken) {
                                (crate::protocol::Query::Bundle { events, actor }, Some(taken)) => {
                                    bundle::build(&store, taken, events, actor)
                                }
                                (crate::protocol::Query::Chain { key }, _) => {
                                    super::chain::chain(&store, live.as_ref(), &key)
                                }
                                (query, _) => commands::answer(&store, c.as_deref(), query),
                            })
                            .await
                            .unwrap_or_else(|_| Err(commands::stopping()));
                            let _ = reply.send(answer);
                        });
                    }
                },
            }
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
        // The history as this process leaves it, written before the next may start.
        publisher.close_history().await;
        let _ = history_writer.await;
        // Whatever front-end still serves this engine stores nothing from here on.
        intake.released.store(true, Ordering::Release);
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
        wall_clock,
        intake: handle_intake,
        done: Some(done_rx),
    })
}
