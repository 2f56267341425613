//! One way in for every fact the engine learns from Stripe — a verified webhook, an
//! event read back from `/v1/events`, an object found by a listing. Each ends in an
//! [`Ingested`]: the event id is stored in the same transaction as its effect (a catalog
//! job, a compliance record), so an id is never "seen" without what it called for.

use serde::Serialize;

/// What became of one fact offered to the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Ingested {
    /// New: its effect is stored with it.
    New,
    /// Already known: the same event id, or the same invoice learnt by another path.
    Duplicate,
    /// Recorded with no effect, for this reason (an event type the engine does not act
    /// on, an invoice that cannot be an electronic invoice).
    Ignored(String),
}

impl Ingested {
    pub fn is_new(&self) -> bool {
        matches!(self, Ingested::New)
    }
}

/// A fact that cannot be taken now, though it will be later (numbering not yet checked
/// with Alegra): the caller keeps it (a webhook answers 503, a listing or the events
/// reconciliation keeps its cursor) and offers it again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotNow(pub String);
