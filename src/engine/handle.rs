//! What front-ends hold of a running engine: the [`EngineHandle`] its starter owns
//! (stop, wait), and the cloneable [`Frontend`] an HTTP server or a console keeps —
//! commands and queries answered to the caller, the latest snapshot, the events, and
//! the one way in for verified Stripe events ([`Frontend::ingest`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tokio::sync::{broadcast, oneshot, watch};

use super::catalog::Catalog;
use super::commands::Commands;
use super::compliance::Compliance;
use super::ingest::{Ingested, NotNow};
use crate::protocol::{EngineEvent, Query, QueryReply, Reply, Request, Snapshot};

pub struct EngineHandle {
    /// Commands and queries, each answered to whoever sent it.
    pub commands: Commands,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub events: broadcast::Sender<EngineEvent>,
    /// The compliance records' wall clock (tests move it across Colombian midnights).
    pub wall_clock: crate::store::WallClock,
    pub(super) intake: Arc<Intake>,
    pub(super) done: Option<oneshot::Receiver<()>>,
}

impl EngineHandle {
    /// What a front-end keeps of this engine (cheap to clone).
    pub fn frontend(&self) -> Frontend {
        Frontend {
            commands: self.commands.clone(),
            snapshot: self.snapshot.clone(),
            events: self.events.clone(),
            intake: self.intake.clone(),
        }
    }

    /// Asks the engine to drain and stop, and waits until it has.
    pub async fn shutdown(&mut self) {
        self.commands.stop().await;
        self.wait().await;
    }

    /// Waits until the engine has stopped. Cancel-safe: a wait dropped before the end
    /// (the loser of a `select!`, as `run`'s wait for a signal) leaves the next one
    /// waiting as long (it used to take the receiver with it, so a SIGINT's shutdown
    /// returned at once and the process exited mid-drain).
    pub async fn wait(&mut self) {
        if let Some(done) = self.done.as_mut() {
            let _ = done.await;
            self.done = None;
        }
    }
}

/// A Stripe event whose signature the front-end has verified.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedEvent {
    pub id: String,
    /// Its `type`, e.g. `product.updated`, `invoice.paid`.
    pub kind: String,
    /// Unix seconds.
    pub created: i64,
    /// `data.object`.
    pub object: Value,
}

/// Why a verified event was not stored; the sender should deliver it again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// It cannot be taken now, though it will be later (numbering not yet confirmed,
    /// the engine stopping).
    #[error("not taken now: {0}; retry")]
    NotNow(String),
    /// The store could not write it.
    #[error("could not store the event; retry")]
    Store,
    /// The task writing it failed.
    #[error("the engine's ingest task failed")]
    Failed,
}

/// The webhook counters, live (the snapshot carries them too, a tick late).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookCounts {
    pub accepted: u64,
    pub duplicate: u64,
    pub ignored: u64,
    pub rejected: u64,
}

/// What a front-end holds of a running engine; cheap to clone.
#[derive(Clone)]
pub struct Frontend {
    pub commands: Commands,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub events: broadcast::Sender<EngineEvent>,
    intake: Arc<Intake>,
}

impl Frontend {
    /// The latest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Sends one command and waits for its reply.
    pub async fn request(&self, request: Request) -> Reply {
        self.commands.request(request).await
    }

    /// Asks one query and waits for its answer.
    pub async fn query(&self, query: Query) -> QueryReply {
        self.commands.query(query).await
    }

    /// Takes one verified Stripe event: the engine routes it (catalog job, compliance
    /// record), stores its effect with its id, and counts it.
    pub async fn ingest(&self, event: VerifiedEvent) -> Result<Ingested, IngestError> {
        let intake = self.intake.clone();
        match tokio::task::spawn_blocking(move || intake.ingest(event)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("webhook task failed: {e}");
                Err(IngestError::Failed)
            }
        }
    }

    /// Counts a webhook refused before it reached the engine (a bad signature, a body
    /// that is not an event).
    pub fn webhook_rejected(&self) {
        self.intake
            .catalog
            .metrics
            .webhooks_rejected
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Writes an operator's action the engine did not carry out itself (the demo's
    /// sandbox outage toggle) into the audit trail, as kind `operator` with the line
    /// `<what>: <outcome>` or `<what>: refused: <why>` (see `protocol::journal`).
    pub fn audit_operator(
        &self,
        actor: &str,
        entity: &str,
        what: &str,
        outcome: Result<&str, &str>,
    ) {
        let line = match outcome {
            Ok(done) => format!("{what}: {done}"),
            Err(why) => format!("{what}: refused: {why}"),
        };
        if let Err(e) =
            self.intake
                .catalog
                .store
                .audit(crate::protocol::OPERATOR, entity, actor, &line)
        {
            tracing::error!("auditing {line:?}: {e}");
        }
    }

    /// The webhook counters as they are now.
    pub fn webhooks(&self) -> WebhookCounts {
        let m = &self.intake.catalog.metrics;
        WebhookCounts {
            accepted: m.webhooks_accepted.load(Ordering::Relaxed),
            duplicate: m.webhooks_duplicate.load(Ordering::Relaxed),
            ignored: m.webhooks_ignored.load(Ordering::Relaxed),
            rejected: m.webhooks_rejected.load(Ordering::Relaxed),
        }
    }
}

/// Where verified events enter the engine.
pub(super) struct Intake {
    pub(super) catalog: Arc<Catalog>,
    pub(super) compliance: Option<Arc<Compliance>>,
    /// Set once the engine has stopped and released its data dir: nothing is stored
    /// after that.
    pub(super) released: AtomicBool,
}

impl Intake {
    fn ingest(&self, e: VerifiedEvent) -> Result<Ingested, IngestError> {
        if self.released.load(Ordering::Acquire) {
            return Err(IngestError::NotNow("the engine is stopping".into()));
        }
        let paid = e.kind == "invoice.paid";
        let m = &self.catalog.metrics;
        match self
            .catalog
            .ingest_event(&e.id, &e.kind, e.created, &e.object, "webhook")
        {
            Ok(Ingested::New) => {
                m.webhooks_accepted.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = &self.compliance
                    && paid
                {
                    c.metrics.webhooks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ingested::New)
            }
            Ok(Ingested::Duplicate) => {
                m.webhooks_duplicate.fetch_add(1, Ordering::Relaxed);
                Ok(Ingested::Duplicate)
            }
            Ok(Ingested::Ignored(reason)) => {
                m.webhooks_ignored.fetch_add(1, Ordering::Relaxed);
                Ok(Ingested::Ignored(reason))
            }
            Err(e) => match e.downcast_ref::<NotNow>() {
                Some(why) => Err(IngestError::NotNow(why.to_string())),
                None => {
                    tracing::error!("webhook not stored: {e:#}");
                    Err(IngestError::Store)
                }
            },
        }
    }
}
