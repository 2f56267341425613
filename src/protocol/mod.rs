//! What crosses the engine boundary, serializable: the snapshot (the view model the
//! engine publishes), the events it pushes, the threshold specs front-ends check values
//! against, the sandbox's fault patch, who is acting, the operator journal read from the
//! audit trail, and the [`Link`] a front-end drives an engine through.
//!
//! This module imports nothing of the crate but itself (only std and external crates),
//! so a console in another process — or another program — can depend on it alone. The
//! domain modules re-export these types (`engine::Snapshot`, `store::AuditEntry`,
//! `resilience::State`…); behaviour that needs engine internals stays there, as free
//! functions or extension traits over this data.

pub mod attach;
pub mod bundle;
pub mod casefold;
pub mod command;
pub mod companies;
pub mod events;
pub mod faults;
pub mod invoices;
pub mod journal;
pub mod link;
pub mod operator;
pub mod pace;
pub mod preview;
pub mod query;
pub mod reconcile;
pub mod resilience;
pub mod snapshot;
pub mod telemetry;
pub mod text;
pub mod thresholds;
mod wire;

#[cfg(test)]
mod tests;

pub use attach::{
    AttachedConsole, CONSOLE_PATH, Change, ClientFrame, Hello, PROTOCOL_VERSION, ServerFrame,
    Shown, Welcome,
};
pub use bundle::{BUNDLE_EVENTS, BUNDLE_FORMAT, Bundle, BundleSeries, MAX_BUNDLE_EVENTS, REDACTED};
pub use casefold::fold;
pub use command::*;
pub use companies::{CompanyRow, CompanyTag, QuotaMeter, Watching};
pub use events::*;
pub use faults::*;
pub use invoices::*;
pub use journal::*;
pub use link::*;
pub use operator::*;
pub use pace::Pacer;
pub use preview::{DownstreamCost, ImpactPreview, PREVIEW_FIRST};
pub use query::*;
pub use reconcile::*;
pub use resilience::*;
pub use snapshot::*;
pub use telemetry::*;
pub use thresholds::*;
