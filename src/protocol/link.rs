//! How a front-end drives an engine: the latest snapshot, a way to send commands and
//! queries (each answered to its sender), and
//! (in the demo) the sandbox's faults. The in-process engine implements it (`app.rs`);
//! an attached console will implement it over the network.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::command::{Query, Reply, Request};
use super::faults::FaultPatch;
use super::query::QueryReply;
use super::snapshot::Snapshot;

/// The engine no longer takes commands (it has stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnected;

impl std::fmt::Display for Disconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the engine is not running")
    }
}

impl std::error::Error for Disconnected {}

/// A front-end's connection to one engine.
///
/// Commands and queries are answered to whoever sent them: [`send`](Link::send) hands
/// the [`Request`] over and returns the receiver its own [`Reply`] arrives on, so two
/// front-ends (or two commands of one) never see each other's answers. A receiver whose
/// sender is dropped means the engine stopped before answering.
pub trait Link: Send {
    /// The latest snapshot; `changed()` fails once the engine has stopped.
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>>;

    /// Sends one command; the receiver gets its reply. An error when the engine no
    /// longer runs (nothing was sent).
    fn send(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<oneshot::Receiver<Reply>, Disconnected>> + Send;

    /// Asks one query; the receiver gets its answer. An error when the engine no
    /// longer runs.
    fn query(
        &self,
        query: Query,
    ) -> impl Future<Output = Result<oneshot::Receiver<QueryReply>, Disconnected>> + Send;

    /// Asks the engine to drain and stop, and waits until it has (the console calls it
    /// when it fails, so no engine runs on without anyone watching).
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;

    /// The demo's sandbox faults (None on a live engine).
    fn sandbox(&self) -> Option<Arc<dyn SandboxFaults>> {
        None
    }
}

/// The sandbox's fault switches, as a console may flip them (demo only).
pub trait SandboxFaults: Send + Sync {
    /// Whether `service` simulates an outage now (None: no such service).
    fn outage(&self, service: &str) -> Option<bool>;

    /// Applies a patch (all or nothing); the error says why it was refused.
    fn patch_faults(&self, patch: &FaultPatch) -> Result<(), String>;
}
