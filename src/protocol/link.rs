//! How a front-end drives an engine: the latest snapshot, a way to send commands and
//! queries (each answered to its sender), and
//! (in the demo) the sandbox's faults. The in-process engine implements it (`app.rs`);
//! an attached console will implement it over the network.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::attach::{AttachedConsole, Shown};
use super::command::{Query, Reply, Request};
use super::companies::{CompanyRow, CompanyTag};
use super::faults::FaultPatch;
use super::operator::Role;
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

    /// Where this front-end stands with its engine: hosting it, attached, or
    /// reconnecting. An engine in this process is always [`LinkState::Hosted`].
    fn state(&self) -> watch::Receiver<LinkState> {
        watch::Sender::new(LinkState::Hosted).subscribe()
    }

    /// What the console shows now of the parts an engine over the network sends only
    /// on demand (an engine in this process shares them for free).
    fn show(&self, _shown: Shown) {}

    /// The consoles attached to the engine over the network, changing as they come
    /// and go.
    fn consoles(&self) -> watch::Receiver<Vec<AttachedConsole>> {
        watch::Sender::new(Vec::new()).subscribe()
    }

    /// One row per company the engine's process serves, changing as they do (empty
    /// for one company: the console shows no selector).
    fn companies(&self) -> watch::Receiver<Vec<CompanyRow>> {
        watch::Sender::new(Vec::new()).subscribe()
    }

    /// The company whose snapshots [`snapshots`](Link::snapshots) gives and to which
    /// commands and queries go (None: the engine did not say).
    fn company(&self) -> Option<CompanyTag> {
        None
    }

    /// Watches company `id` from now on: [`snapshots`](Link::snapshots), asked again,
    /// gives its engine's, and every command and query goes to it. The error says why
    /// not (no such company, its engine is not running); the company watched stays.
    fn watch_company(&mut self, id: &str) -> impl Future<Output = Result<(), String>> + Send {
        let why = format!("this engine serves one company; there is no {id:?} to watch");
        async move { Err(why) }
    }
}

/// Where a front-end stands with its engine.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkState {
    /// The engine runs in this process; quitting drains it.
    Hosted,
    /// Attached over the network; quitting detaches and the engine keeps running.
    Attached(Attached),
    /// The connection was lost: what is shown is as of `since_ms`, and the console is
    /// trying again by itself.
    Reconnecting {
        /// The connection that was lost.
        was: Attached,
        /// When the engine was last heard from (ms since the epoch).
        since_ms: i64,
        /// Attempts made so far.
        attempt: u32,
        /// Why the last connection ended or the last attempt failed.
        why: String,
    },
    /// No engine: an incident bundle opened from a file (`syncctl bundle show`), its
    /// screens frozen as they were when it was taken; nothing can act.
    Bundle {
        /// The file it was read from.
        file: String,
        /// When it was taken (ms since the epoch).
        written_ms: i64,
        /// Version, who took it, uptime ([`Bundle::describe`](super::bundle::Bundle::describe)).
        about: String,
    },
}

/// An attached console's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Where the engine is (`127.0.0.1:9870`).
    pub to: String,
    /// What this console may do (a viewer: a viewer token or `--read-only`).
    pub role: Role,
    /// How the engine's audit trail names this console's actions.
    pub actor: String,
    /// This console's connection, as the list of attached consoles numbers it.
    pub connection: u64,
}

impl LinkState {
    /// Whether the engine runs in this process.
    pub fn hosted(&self) -> bool {
        matches!(self, LinkState::Hosted)
    }

    /// Whether this console may only read.
    pub fn read_only(&self) -> bool {
        match self {
            LinkState::Hosted => false,
            LinkState::Bundle { .. } => true,
            LinkState::Attached(a) | LinkState::Reconnecting { was: a, .. } => {
                a.role == Role::Viewer
            }
        }
    }
}

/// The sandbox's fault switches, as a console may flip them (demo only).
pub trait SandboxFaults: Send + Sync {
    /// Whether `service` simulates an outage now (None: no such service).
    fn outage(&self, service: &str) -> Option<bool>;

    /// Applies a patch (all or nothing); the error says why it was refused.
    fn patch_faults(&self, patch: &FaultPatch) -> Result<(), String>;

    /// [`patch_faults`](Self::patch_faults) as operator `actor` did it: where an engine
    /// runs beside the sandbox, the engine's audit trail says who broke or restored
    /// what, like every other action.
    fn patch_faults_as(&self, actor: &str, patch: &FaultPatch) -> Result<(), String> {
        let _ = actor;
        self.patch_faults(patch)
    }
}
