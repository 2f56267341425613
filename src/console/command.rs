//! The commands the console sends, field for field the engine's `engine::Command`
//! (without its HTTP-only `Reply`), with the cache scope they carry.
//!
//! A stand-in: the typed command vocabulary is being written as `protocol::Command`
//! (protocol/command.rs), and the console may import nothing of the engine, so until it
//! lands the console keeps its own copy here and `app.rs` translates each one into an
//! `engine::Command` (through [`crate::protocol::Link`], generic over the command type).
//! The next step deletes this file and uses `protocol::Command` directly.

use crate::protocol::State as BreakerState;

/// One operator action (see `engine::Command` for what each does).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    PauseCatalog {
        actor: String,
    },
    ResumeCatalog {
        actor: String,
    },
    /// An operator's breaker state: CLOSED, FORCED_OPEN, DISABLED or METRICS_ONLY.
    SetBreaker {
        service: String,
        state: BreakerState,
        actor: String,
    },
    /// CLOSED with empty metrics and the initial wait.
    ResetBreaker {
        service: String,
        actor: String,
    },
    SetWorkerBounds {
        pipeline: String,
        min: u32,
        max: u32,
        actor: String,
    },
    PauseCompliance {
        actor: String,
    },
    ResumeCompliance {
        actor: String,
    },
    /// Send one invoice again (by Stripe id, DIAN number or CUFE).
    RetryInvoice {
        key: String,
        actor: String,
    },
    /// Send every FAILED invoice again.
    RetryFailedInvoices {
        actor: String,
    },
    /// The invoice whose full history the snapshot carries (None: none).
    FocusInvoice {
        key: Option<String>,
    },
    /// Acknowledges the alerts whose id starts with `matcher`.
    AckAlerts {
        matcher: String,
        actor: String,
    },
    /// Mutes the alerts whose id starts with `matcher` for `secs` seconds.
    SilenceAlerts {
        matcher: String,
        secs: u64,
        actor: String,
    },
    /// Sets thresholds (all or nothing) and saves them to the config file.
    SetThresholds {
        changes: Vec<(String, f64)>,
        actor: String,
    },
    /// Drops cached QuickBooks lookups.
    InvalidateCache {
        scope: CacheScope,
        actor: String,
    },
    /// Stop claiming work, finish what is in flight, then stop.
    Shutdown,
}

/// Which cache entries to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheScope {
    All,
    Key(String),
    /// `*` globs; without one, a prefix.
    Pattern(String),
    Tag(String),
}

impl std::fmt::Display for CacheScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheScope::All => f.write_str("all entries"),
            CacheScope::Key(k) => write!(f, "key {k:?}"),
            CacheScope::Pattern(p) => write!(f, "pattern {p:?}"),
            CacheScope::Tag(t) => write!(f, "tag {t:?}"),
        }
    }
}
