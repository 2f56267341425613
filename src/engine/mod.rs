//! The sync engine. Knows nothing of terminals nor of HTTP: it is started with a config
//! ([`start`]) and returns an [`EngineHandle`] — commands and queries in (each answered
//! to its sender); the latest [`Snapshot`] (a `watch`, republished only when something
//! changed) and a broadcast of discrete events out; verified Stripe events in through
//! [`Frontend::ingest`]. Every change an operator makes arrives as a
//! [`crate::protocol::Request`], so it is validated and audited the same way from the
//! console, the HTTP API or an attached console (see [`commands`]). Serving it over
//! HTTP is the caller's (`app` wires the server to it).
//!
//! - [`handle`]: what front-ends call (the handle, the [`Frontend`], ingest).
//! - [`runtime`]: [`start`] — building the pipelines and spawning their tasks.
//! - [`commands`]: the one audited wrapper every command goes through.
//! - [`publisher`]: building and publishing snapshots, gathering health signals.
//! - [`periodic`]: retention, housekeeping, the store probe, audit writers.
//! - [`reconcile`]: Stripe against QuickBooks, kept live (CDC, events).
//! - `preview`: what a bulk command would do, before it is run.
//! - [`catalog`], [`compliance`], [`ingest`], [`item`], [`housekeeping`]: the pipelines.

mod bundle;
pub mod catalog;
pub mod chain;
pub mod commands;
pub mod compliance;
pub mod handle;
pub mod housekeeping;
pub mod ingest;
pub mod item;
mod periodic;
mod preview;
mod publisher;
pub mod quota;
pub mod reconcile;
pub mod runtime;
mod whatif;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use crate::protocol::{
    CatalogView, ComplianceView, EngineEvent, MAX_SILENCE_SECS, Mode, Operation, Snapshot, operator,
};
pub use commands::Commands;
pub use handle::{EngineHandle, Frontend, IngestError, VerifiedEvent, WebhookCounts};
pub use ingest::Ingested;
pub use runtime::start;

use crate::config::Config;

pub struct EngineOptions {
    pub config: Config,
    pub data_dir: PathBuf,
    pub mode: Mode,
    /// Where a front-end serves this engine, shown in its snapshots (the engine itself
    /// listens on nothing).
    pub server_addr: Option<SocketAddr>,
    /// Start over on purpose where the data dir shows a store was lost (`--fresh-store`):
    /// Alegra's documents are adopted, QuickBooks' Items found by Sku.
    pub fresh_store: bool,
    /// The company this engine serves (`[[companies]]` id; "default" for one company).
    pub company: String,
}

/// Why a compliance command or query is refused when `[alegra]` is not configured.
pub const COMPLIANCE_OFF: &str = "the compliance pipeline is off ([alegra] base_url not set)";
