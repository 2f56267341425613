//! The operator's command vocabulary: what any front-end (the console's keys and `:`
//! mode, the HTTP API, `syncctl ctl`, an attached console) may ask an engine to do, and
//! the typed answer it gets back.
//!
//! A [`Request`] carries who acts and one [`Command`]; the engine answers it with a
//! [`Reply`]: an [`Outcome`] or a typed [`CommandError`] that the HTTP API maps to a
//! status code ([`CommandError::http_status`]) and a JSON error ([`CommandError::body`]).
//!
//! # One text grammar
//!
//! Every command parses from one line of text ([`FromStr`]) and prints back as exactly
//! that text ([`Display`]): `parse(display(c)) == c` for every valid command. The
//! grammar, also listed by [`grammar`] for help screens:
//!
//! ```text
//! pause <catalog|compliance>
//! resume <catalog|compliance>
//! breaker <stripe|quickbooks|alegra> <force-open|close|disable|metrics-only|reset>
//! workers <catalog|compliance> <MIN>-<MAX>           workers catalog 2-16
//! retry <invoice>                                    retry SETP990000012
//! retry-failed
//! retry-job <product>                                retry-job prod_0042
//! retry-failed-jobs
//! resync
//! resync-item <product>                              resync-item prod_0042
//! resync-drifted
//! ack <alert|*>                                      ack queue_depth
//! silence <alert|*> <duration>                       silence queue_depth 1h30m
//! set <threshold> <value> […] [for <duration>]       set alerts.error_rate_percent 12 for 1h
//! invalidate all
//! invalidate key <key>
//! invalidate tag:<tag>                               (or: invalidate tag <tag>)
//! invalidate <pattern>                               invalidate item:name:*
//! shutdown
//! ```
//!
//! Words are separated by whitespace. A word holding whitespace or a `"` is written in
//! double quotes, with `\"` and `\\` escapes (and `\n`, `\t`, `\r`, `\u{…}` for control
//! characters, which no valid command holds): `retry "INV 12"`, `ack "say \"hi\""`.
//! Keywords (verbs, pipeline, service and breaker words, `all`, `key`, `tag`) are read
//! case-insensitively and printed in lower case. A keyword only counts as one when it
//! is not quoted, so a quoted word is always a value: `ack *` acknowledges every alert
//! but `ack "*"` those whose id starts with `*`; `invalidate all` drops every entry but
//! `invalidate "all"` is the pattern `all`.
//!
//! Durations are `90s`, `30m`, `2h`, `1d`, units combined from the largest down
//! (`1h30m`, `1d12h`), or plain seconds (`90`); a silence lasts 1 s to
//! [`MAX_SILENCE_SECS`] (7 days). They print in the combined form (`5400` → `1h30m`).
//! Threshold values are `f64` and print with `{}`, which reads back to the same value.
//!
//! # JSON
//!
//! A [`Command`] is internally tagged by `"verb"`, the same word that starts its text:
//! `{"verb": "pause", "pipeline": "compliance"}`, `{"verb": "retry-failed"}`,
//! `{"verb": "invalidate", "scope": {"tag": "prod_1"}}`, so a [`Request`] reads
//! `{"actor": "ana", "command": {"verb": "retry", "key": "SETP990000012"}}`. Unknown
//! fields are refused (a typo must never widen an action).
//!
//! Deserializing does not check values (a silence of 0 s, an empty key): the engine
//! calls [`Command::validate`] on every request, whatever front-end sent it, and
//! [`FromStr`] calls it too.
//!
//! This module imports nothing of the crate: only std and serde.

use std::fmt::{self, Display, Write as _};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest silence an operator may set (console, API, `ctl`): 7 days.
pub const MAX_SILENCE_SECS: u64 = 7 * 86_400;

/// Longest text (invoice key, alert matcher, cache key, pattern or tag) a command may
/// hold, in characters.
pub const MAX_TEXT: usize = 200;

/// What a command returns to whoever sent it.
pub type Reply = Result<Outcome, CommandError>;

/// One command and who sends it (for the audit trail: an OS user and SSH address, an
/// API token's name and client address…).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Who acts, as the audit trail records it.
    pub actor: String,
    /// What they ask for.
    pub command: Command,
    /// What the sender may do, as the front-end that authenticated it says (a token's
    /// role, a console attached read-only). The engine refuses a viewer's command —
    /// the one place that decides, whatever a client sends.
    #[serde(default)]
    pub role: super::operator::Role,
    /// The company the sender is looking at, when it serves several: a front-end that
    /// hosts or reaches several engines delivers the request to that company's only,
    /// and refuses it when it cannot (None: the one the front-end is connected to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
}

impl Request {
    /// A request by `actor`, an operator.
    pub fn new(actor: impl Into<String>, command: Command) -> Self {
        Request {
            actor: actor.into(),
            command,
            role: super::operator::Role::Operator,
            company: None,
        }
    }

    /// The same request, for company `id` (None: whichever the front-end reaches).
    #[must_use]
    pub fn for_company(mut self, id: Option<&str>) -> Self {
        self.company = id.map(str::to_owned);
        self
    }

    /// The same request, by a caller of `role`.
    #[must_use]
    pub fn with_role(mut self, role: super::operator::Role) -> Self {
        self.role = role;
        self
    }
}

/// Everything an operator may ask the engine to do. Reads (an invoice's history…) are
/// [`Query`]s, not commands; per-operator state (focus, selection) stays in the
/// front-end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// `pause <pipeline>`: stop claiming work in a pipeline; queued work waits.
    Pause {
        /// The pipeline to pause.
        pipeline: Pipeline,
    },
    /// `resume <pipeline>`: claim work again.
    Resume {
        /// The pipeline to resume.
        pipeline: Pipeline,
    },
    /// `breaker <service> <action>`: an operator's word on a service's circuit breaker.
    Breaker {
        /// Whose circuit.
        service: Service,
        /// What to do with it.
        action: BreakerAction,
    },
    /// `workers <pipeline> <min>-<max>`: the range the auto-scaler keeps a pipeline's
    /// workers in (1 ≤ min ≤ max; the engine refuses a max above its limit, and a
    /// pipeline without scaled workers).
    #[serde(rename = "workers")]
    WorkerBounds {
        /// The pipeline whose workers are bounded.
        pipeline: Pipeline,
        /// Fewest workers (at least 1).
        min: u32,
        /// Most workers (at least `min`).
        max: u32,
    },
    /// `retry <key>`: send one invoice again, by Stripe id, DIAN number or CUFE.
    #[serde(rename = "retry")]
    RetryInvoice {
        /// The invoice: its Stripe id, DIAN number or CUFE.
        key: String,
    },
    /// `retry-failed`: send every FAILED invoice again.
    ///
    /// A struct variant without fields (`Command::RetryFailed {}`), not a unit one, so
    /// that JSON with any field besides `verb` is refused like everywhere else (serde
    /// ignores extra fields beside a unit variant's tag).
    RetryFailed {},
    /// `retry-job <product>`: queue again a catalog job that failed past its last
    /// attempt, by Stripe product id, with fresh attempts.
    RetryJob {
        /// The Stripe product id of the failed job.
        key: String,
    },
    /// `retry-failed-jobs`: queue again every catalog job that failed past its last
    /// attempt. (`Command::RetryFailedJobs {}`: see [`Command::RetryFailed`].)
    RetryFailedJobs {},
    /// `resync`: run the catalog's full sync again (every Stripe product listed and
    /// checked against its Item); refused while one runs. (`Command::Resync {}`.)
    Resync {},
    /// `resync-item <product>`: write one product's Item again from Stripe, whatever
    /// the engine last recorded of it (the reconciliation found it drifted or missing).
    ResyncItem {
        /// The Stripe product id.
        key: String,
    },
    /// `resync-drifted`: [`Command::ResyncItem`] for every product the reconciliation
    /// finds drifted or without an Item. (`Command::ResyncDrifted {}`: see
    /// [`Command::RetryFailed`].)
    ResyncDrifted {},
    /// `ack <matcher>`: acknowledge the active alerts the matcher selects.
    #[serde(rename = "ack")]
    AckAlerts {
        /// Which alerts.
        matcher: AlertMatcher,
    },
    /// `silence <matcher> <duration>`: mute the alerts the matcher selects.
    #[serde(rename = "silence")]
    SilenceAlerts {
        /// Which alerts.
        matcher: AlertMatcher,
        /// For how long, in seconds: 1 to [`MAX_SILENCE_SECS`].
        secs: u64,
    },
    /// `set <name> <value> […] [for <duration>]`: set thresholds, all or nothing (the
    /// engine checks the names and ranges and saves them to the config file). With
    /// `for`, each comes back to the value it had before once the duration is over
    /// (audited).
    #[serde(rename = "set")]
    SetThresholds {
        /// At least one change, each name at most once, in the order given.
        changes: Vec<ThresholdChange>,
        /// How long the change lasts, in seconds: 1 to [`MAX_SILENCE_SECS`]; None: for
        /// good.
        #[serde(default, rename = "for_secs", skip_serializing_if = "Option::is_none")]
        for_secs: Option<u64>,
    },
    /// `invalidate <scope>`: drop cached QuickBooks lookups.
    #[serde(rename = "invalidate")]
    InvalidateCache {
        /// Which entries.
        scope: CacheScope,
    },
    /// `shutdown`: stop claiming work, finish what is in flight, then stop.
    /// (`Command::Shutdown {}`: see [`Command::RetryFailed`].)
    Shutdown {},
}

/// A sync pipeline an operator can pause, resume or scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pipeline {
    /// Stripe products and prices → QuickBooks Items.
    Catalog,
    /// Stripe invoices → Alegra electronic invoices at DIAN.
    Compliance,
}

/// A downstream service with its own circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// Stripe.
    Stripe,
    /// QuickBooks Online.
    QuickBooks,
    /// Alegra (DIAN electronic invoicing).
    Alegra,
}

/// What an operator may do to a circuit breaker. OPEN and HALF_OPEN are reached by the
/// breaker itself, never set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerAction {
    /// FORCED_OPEN: every call is refused without touching the network.
    ForceOpen,
    /// CLOSED: calls go through and are judged afresh.
    Close,
    /// DISABLED: calls go through and nothing is recorded.
    Disable,
    /// METRICS_ONLY: calls are measured but the circuit never opens.
    MetricsOnly,
    /// CLOSED with empty metrics and the initial open wait.
    Reset,
}

/// Which alerts an `ack` or `silence` applies to: never every alert by omission.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertMatcher {
    /// Every alert (`*`).
    All,
    /// The alerts whose id starts with this text.
    Prefix(String),
}

/// Which cache entries to drop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// Every entry.
    All,
    /// The entry with exactly this key.
    Key(String),
    /// The entries whose key matches: `*` globs; without one, a prefix.
    Pattern(String),
    /// The entries carrying this tag.
    Tag(String),
}

/// One threshold's new value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdChange {
    /// The threshold's config key, `section.key` (e.g. `alerts.error_rate_percent`).
    pub name: String,
    /// Its new value (finite; the engine checks its range).
    pub value: f64,
}

impl ThresholdChange {
    /// `name` set to `value`.
    pub fn new(name: impl Into<String>, value: f64) -> Self {
        ThresholdChange {
            name: name.into(),
            value,
        }
    }
}

/// A read a front-end asks of the engine, answered to whoever asked (not through the
/// shared snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Query {
    /// One invoice's record and full history, by Stripe id, DIAN number or CUFE.
    InvoiceDetail {
        /// The invoice: its Stripe id, DIAN number or CUFE.
        key: String,
    },
    /// The compliance records, newest first: those in `status` (any when unset) whose
    /// Stripe id, number, buyer or CUFE contains `search`, at most `limit`.
    Invoices {
        status: Option<super::invoices::Status>,
        search: String,
        limit: usize,
    },
    /// The audit trail, newest first, as the filter says.
    Audit { filter: super::query::AuditFilter },
    /// The reconciliation of Stripe and QuickBooks: its counts and amounts, and at most
    /// `limit` of its rows (worst first).
    Reconciliation { limit: usize },
    /// The chain of `key` across the systems: a Stripe product or invoice id, a
    /// QuickBooks Item id, a DIAN number, a CUFE or an Alegra document id.
    Chain { key: String },
    /// An incident bundle ([`Bundle`](super::bundle::Bundle)) with the newest `events`
    /// audit events (1 to [`MAX_BUNDLE_EVENTS`](super::bundle::MAX_BUNDLE_EVENTS)),
    /// taken by `actor`. Secrets redacted.
    Bundle { events: usize, actor: String },
    /// How often the rule a threshold sets would have fired over the recorded history
    /// with `value` instead of the value in force ([`WhatIf`](super::thresholds::WhatIf)).
    WhatIf { name: String, value: f64 },
    /// How many audit entries the filter matches, over the whole trail (its `limit`
    /// and `before_id` are ignored).
    AuditCount { filter: super::query::AuditFilter },
    /// What a bulk command would do if it were sent now
    /// ([`ImpactPreview`](super::preview::ImpactPreview)): nothing changes, nothing is
    /// audited. A command the real run would refuse is refused the same way.
    Preview { command: Command },
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// One line for people: the console's flash line, the API's `message`, the audit.
    pub message: String,
    /// False when nothing had to change (a circuit already in that state, a pipeline
    /// already paused).
    pub changed: bool,
    /// How many things the command acted on, where that is a count: invoices sent
    /// again, alerts acknowledged, cache entries dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// When what the command set ends (a silence), in milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
}

impl Outcome {
    /// A change, described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Outcome {
            message: message.into(),
            changed: true,
            count: None,
            until_ms: None,
        }
    }

    /// Nothing had to change; `message` says why.
    pub fn unchanged(message: impl Into<String>) -> Self {
        Outcome {
            changed: false,
            ..Outcome::new(message)
        }
    }

    /// With how many things the command acted on.
    #[must_use]
    pub fn with_count(mut self, count: u64) -> Self {
        self.count = Some(count);
        self
    }

    /// With when what it set ends (milliseconds since the epoch).
    #[must_use]
    pub fn with_until_ms(mut self, until_ms: i64) -> Self {
        self.until_ms = Some(until_ms);
        self
    }
}

impl Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a command was not carried out. Serialized with its [`code`](Self::code) as the
/// tag: `{"code": "bad_request", "field": "alerts.queue_depth", "reason": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code")]
pub enum CommandError {
    /// What the command names does not exist (an unknown invoice). HTTP 404.
    #[serde(rename = "not_found")]
    NotFound {
        /// What was looked for, e.g. `invoice "SETP990000012"`.
        what: String,
    },
    /// The command is well formed but the engine's state refuses it (no alert matches,
    /// the pipeline is off, the invoice is already accepted). HTTP 409.
    #[serde(rename = "refused")]
    Conflict {
        /// Why, as a sentence.
        reason: String,
    },
    /// A value is wrong: a parse error, an unknown threshold, one out of range. HTTP 400.
    #[serde(rename = "bad_request")]
    Invalid {
        /// The field or word at fault (`pipeline`, `duration`, a threshold's name…).
        field: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// The caller may not act (a viewer token). HTTP 403.
    #[serde(rename = "forbidden")]
    Forbidden {
        /// Why, as a sentence.
        reason: String,
    },
    /// The engine cannot act now (stopping, its store unreadable). HTTP 503.
    #[serde(rename = "unavailable")]
    Unavailable {
        /// Why, as a sentence.
        reason: String,
    },
}

impl CommandError {
    /// [`CommandError::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        CommandError::NotFound { what: what.into() }
    }

    /// [`CommandError::Conflict`].
    pub fn conflict(reason: impl Into<String>) -> Self {
        CommandError::Conflict {
            reason: reason.into(),
        }
    }

    /// [`CommandError::Invalid`], naming the field at fault.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CommandError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// [`CommandError::Forbidden`].
    pub fn forbidden(reason: impl Into<String>) -> Self {
        CommandError::Forbidden {
            reason: reason.into(),
        }
    }

    /// [`CommandError::Unavailable`].
    pub fn unavailable(reason: impl Into<String>) -> Self {
        CommandError::Unavailable {
            reason: reason.into(),
        }
    }

    /// The HTTP status the API answers: 404, 409, 400, 403 or 503.
    pub fn http_status(&self) -> u16 {
        match self {
            CommandError::NotFound { .. } => 404,
            CommandError::Conflict { .. } => 409,
            CommandError::Invalid { .. } => 400,
            CommandError::Forbidden { .. } => 403,
            CommandError::Unavailable { .. } => 503,
        }
    }

    /// The `code` of the API's JSON error (`{"error": {"code", "message"}}`), the same
    /// codes the API has always answered: `not_found`, `refused`, `bad_request`,
    /// `forbidden`, `unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::NotFound { .. } => "not_found",
            CommandError::Conflict { .. } => "refused",
            CommandError::Invalid { .. } => "bad_request",
            CommandError::Forbidden { .. } => "forbidden",
            CommandError::Unavailable { .. } => "unavailable",
        }
    }

    /// Whether the same request may be answered if sent again later: only when the
    /// engine could not act for now ([`Unavailable`](Self::Unavailable): busy,
    /// stopping, its store unreadable, no link to it). Any other error is the answer
    /// the same request gets again; a front-end that retries it only repeats it.
    pub fn for_now(&self) -> bool {
        matches!(self, CommandError::Unavailable { .. })
    }

    /// The field at fault, for an [`Invalid`](Self::Invalid) error.
    pub fn field(&self) -> Option<&str> {
        match self {
            CommandError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The inside of the API's JSON error: the API answers `{"error": body}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code().to_owned(),
            message: self.to_string(),
            field: self.field().map(str::to_owned),
        }
    }
}

impl Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::NotFound { what } => write!(f, "{what} not found"),
            CommandError::Invalid { field, reason } => write!(f, "{field}: {reason}"),
            CommandError::Conflict { reason }
            | CommandError::Forbidden { reason }
            | CommandError::Unavailable { reason } => f.write_str(reason),
        }
    }
}

impl std::error::Error for CommandError {}

/// The API's JSON error, inside `{"error": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// [`CommandError::code`].
    pub code: String,
    /// The error's [`Display`] text.
    pub message: String,
    /// The field at fault, for a 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// ---- names ----

/// An enum whose values are keywords of the grammar.
trait Keyword: Copy + 'static {
    /// Every value, in the order help and completion list them.
    const ALL: &'static [Self];
    /// The field a wrong word is reported under.
    const FIELD: &'static str;
    /// The value's word.
    fn word(self) -> &'static str;
}

/// `a, b or c`.
fn one_of(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// A keyword, read case-insensitively.
fn keyword<K: Keyword>(text: &str) -> Result<K, CommandError> {
    K::ALL
        .iter()
        .copied()
        .find(|k| k.word().eq_ignore_ascii_case(text))
        .ok_or_else(|| {
            let words: Vec<&str> = K::ALL.iter().map(|k| k.word()).collect();
            CommandError::invalid(
                K::FIELD,
                format!("expected {}, got {}", one_of(&words), shown(text)),
            )
        })
}

macro_rules! keyword_enum {
    ($ty:ty, $field:literal, [$($variant:ident => $word:literal),+ $(,)?]) => {
        impl Keyword for $ty {
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            const FIELD: &'static str = $field;
            fn word(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }
        }

        impl $ty {
            /// Every value, in the order help and completion list them.
            pub const ALL: &'static [Self] = <Self as Keyword>::ALL;

            /// Its word in the grammar and in JSON.
            pub fn name(self) -> &'static str {
                self.word()
            }
        }

        impl Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.word())
            }
        }

        impl FromStr for $ty {
            type Err = CommandError;

            /// Its word, in any case.
            fn from_str(s: &str) -> Result<Self, CommandError> {
                keyword(s)
            }
        }
    };
}

keyword_enum!(Pipeline, "pipeline", [Catalog => "catalog", Compliance => "compliance"]);
keyword_enum!(Service, "service", [
    Stripe => "stripe",
    QuickBooks => "quickbooks",
    Alegra => "alegra",
]);
keyword_enum!(BreakerAction, "action", [
    ForceOpen => "force-open",
    Close => "close",
    Disable => "disable",
    MetricsOnly => "metrics-only",
    Reset => "reset",
]);

impl BreakerAction {
    /// The breaker state the action sets, as the API and the snapshot spell it
    /// (`FORCED_OPEN`, `CLOSED`, `DISABLED`, `METRICS_ONLY`); `None` for a reset.
    pub fn state_name(self) -> Option<&'static str> {
        match self {
            BreakerAction::ForceOpen => Some("FORCED_OPEN"),
            BreakerAction::Close => Some("CLOSED"),
            BreakerAction::Disable => Some("DISABLED"),
            BreakerAction::MetricsOnly => Some("METRICS_ONLY"),
            BreakerAction::Reset => None,
        }
    }

    /// The action that sets a state the API names (`{"state": "FORCED_OPEN"}`), in any
    /// case; `None` for a state an operator may not set (OPEN, HALF_OPEN) or no state.
    pub fn from_state_name(state: &str) -> Option<Self> {
        BreakerAction::ALL.iter().copied().find(|a| {
            a.state_name()
                .is_some_and(|s| s.eq_ignore_ascii_case(state))
        })
    }
}

impl AlertMatcher {
    /// The id prefix the engine's alerts match on: empty for every alert. A `*` at the
    /// end is read as the glob the operator meant (`queue*` is `queue`); one anywhere
    /// else is refused by [`Command::validate`].
    pub fn prefix(&self) -> &str {
        match self {
            AlertMatcher::All => "",
            AlertMatcher::Prefix(p) => p.strip_suffix('*').unwrap_or(p),
        }
    }
}

impl Display for AlertMatcher {
    /// `*` for every alert, else the prefix as it is (for messages; a command prints
    /// it quoted where the grammar needs it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlertMatcher::All => f.write_str("*"),
            AlertMatcher::Prefix(p) => f.write_str(p),
        }
    }
}

impl FromStr for AlertMatcher {
    type Err = CommandError;

    /// As the API's `matcher` field reads: `*` is every alert, any other text an id
    /// prefix (checked like a command's text).
    fn from_str(s: &str) -> Result<Self, CommandError> {
        if s == "*" {
            return Ok(AlertMatcher::All);
        }
        check_text("matcher", s)?;
        Ok(AlertMatcher::Prefix(s.to_owned()))
    }
}

impl Display for CacheScope {
    /// For sentences ("Invalidate cache: tag \"prod_1\"?"), as the engine always
    /// worded it; a command prints its scope in the grammar.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheScope::All => f.write_str("all entries"),
            CacheScope::Key(k) => write!(f, "key {k:?}"),
            CacheScope::Pattern(p) => write!(f, "pattern {p:?}"),
            CacheScope::Tag(t) => write!(f, "tag {t:?}"),
        }
    }
}

// ---- durations ----

/// Duration units, largest first.
const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Reads a silence's duration: `90s`, `30m`, `2h`, `1d`, units combined from the
/// largest down (`1h30m`), or plain seconds (`90`); 1 s to [`MAX_SILENCE_SECS`].
///
/// # Errors
///
/// [`CommandError::Invalid`] on the field `duration`: not a duration, 0, or too long.
pub fn parse_duration(text: &str) -> Result<u64, CommandError> {
    const FORM: &str = "a duration such as 90s, 30m, 2h, 1d or 1h30m";
    let t = text.trim();
    let bad = || CommandError::invalid("duration", format!("expected {FORM}, got {}", shown(t)));
    let too_long = || {
        CommandError::invalid(
            "duration",
            format!(
                "{} is too long: a silence lasts at most {}",
                shown(t),
                format_duration(MAX_SILENCE_SECS)
            ),
        )
    };
    if t.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    // Units still allowed: only smaller ones may follow a unit.
    let mut units = &UNITS[..];
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let (number, after) = rest.split_at(digits);
        // Checked all the way: a huge number is refused, never wrapped into a short one.
        let n: u64 = number.parse().map_err(|_| too_long())?;
        let mut chars = after.chars();
        let (mult, after) = match chars.next() {
            // Plain seconds: only as the whole text.
            None if rest.len() == t.len() => (1, ""),
            None => return Err(bad()),
            Some(u) => {
                let u = u.to_ascii_lowercase();
                let Some(((_, mult), smaller)) = units
                    .iter()
                    .position(|(c, _)| *c == u)
                    .and_then(|i| units.get(i..))
                    .and_then(<[_]>::split_first)
                else {
                    return Err(bad());
                };
                units = smaller;
                (*mult, chars.as_str())
            }
        };
        total = n
            .checked_mul(mult)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(too_long)?;
        rest = after;
    }
    match total {
        0 => Err(CommandError::invalid(
            "duration",
            "a silence lasts at least 1s",
        )),
        s if s > MAX_SILENCE_SECS => Err(too_long()),
        s => Ok(s),
    }
}

/// Seconds as the grammar writes them, largest units first: `90` → `1m30s`, `5400` →
/// `1h30m`, `86400` → `1d`, `0` → `0s`. [`parse_duration`] reads it back.
pub fn format_duration(secs: u64) -> String {
    let mut out = String::new();
    let mut left = secs;
    for (unit, size) in UNITS {
        let n = left / size;
        if n > 0 {
            left %= size;
            let _ = write!(out, "{n}{unit}");
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

// ---- validation ----

/// A text value: not blank, at most [`MAX_TEXT`] characters, no control characters.
fn check_text(field: &str, s: &str) -> Result<(), CommandError> {
    if s.trim().is_empty() {
        return Err(CommandError::invalid(field, "empty"));
    }
    bounded_text(field, s)
}

/// At most [`MAX_TEXT`] characters, none a control character (a NUL would cut a query
/// of the text index short); else why, naming `field`.
pub fn bounded_text(field: &str, s: &str) -> Result<(), CommandError> {
    if s.chars().count() > MAX_TEXT {
        return Err(CommandError::invalid(
            field,
            format!("longer than {MAX_TEXT} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(CommandError::invalid(field, "contains control characters"));
    }
    Ok(())
}

/// A threshold's name is a config key: `section.key`, lower-case words of letters,
/// digits and `_` joined by dots. Whether this build knows it is the engine's call.
fn check_threshold_name(name: &str) -> Result<(), CommandError> {
    let word_ok = |w: &str| {
        !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if name.contains('.') && name.split('.').all(word_ok) {
        Ok(())
    } else {
        Err(CommandError::invalid(
            "threshold",
            format!(
                "{} is not a threshold name (section.key, e.g. alerts.error_rate_percent)",
                shown(name)
            ),
        ))
    }
}

impl Command {
    /// The word the command's text starts with, also its JSON `verb`.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::Breaker { .. } => "breaker",
            Command::WorkerBounds { .. } => "workers",
            Command::RetryInvoice { .. } => "retry",
            Command::RetryFailed {} => "retry-failed",
            Command::RetryJob { .. } => "retry-job",
            Command::RetryFailedJobs {} => "retry-failed-jobs",
            Command::Resync {} => "resync",
            Command::ResyncItem { .. } => "resync-item",
            Command::ResyncDrifted {} => "resync-drifted",
            Command::AckAlerts { .. } => "ack",
            Command::SilenceAlerts { .. } => "silence",
            Command::SetThresholds { .. } => "set",
            Command::InvalidateCache { .. } => "invalidate",
            Command::Shutdown {} => "shutdown",
        }
    }

    /// Checks what can be checked without the engine's state: texts are 1 to
    /// [`MAX_TEXT`] characters without control characters, 1 ≤ min ≤ max, a silence
    /// lasts 1 s to [`MAX_SILENCE_SECS`], thresholds are well-named, finite, each given
    /// once. (KnownValues threshold names, their ranges and the workers limit are the
    /// engine's to check.)
    ///
    /// # Errors
    ///
    /// [`CommandError::Invalid`] naming the field at fault.
    pub fn validate(&self) -> Result<(), CommandError> {
        match self {
            Command::Pause { .. }
            | Command::Resume { .. }
            | Command::Breaker { .. }
            | Command::RetryFailed {}
            | Command::RetryFailedJobs {}
            | Command::Resync {}
            | Command::ResyncDrifted {}
            | Command::Shutdown {} => Ok(()),
            Command::WorkerBounds { min, max, .. } => check_bounds(*min, *max),
            Command::RetryInvoice { key }
            | Command::RetryJob { key }
            | Command::ResyncItem { key } => check_text("key", key),
            Command::AckAlerts { matcher } => check_matcher(matcher),
            Command::SilenceAlerts { matcher, secs } => {
                check_matcher(matcher)?;
                if (1..=MAX_SILENCE_SECS).contains(secs) {
                    Ok(())
                } else {
                    Err(CommandError::invalid(
                        "duration",
                        format!(
                            "a silence lasts 1s to {} (asked {secs} s)",
                            format_duration(MAX_SILENCE_SECS)
                        ),
                    ))
                }
            }
            Command::SetThresholds { changes, for_secs } => {
                check_changes(changes)?;
                match for_secs {
                    Some(secs) if !(1..=MAX_SILENCE_SECS).contains(secs) => {
                        Err(CommandError::invalid(
                            "duration",
                            format!(
                                "a temporary threshold lasts 1s to {} (asked {secs} s)",
                                format_duration(MAX_SILENCE_SECS)
                            ),
                        ))
                    }
                    _ => Ok(()),
                }
            }
            Command::InvalidateCache { scope } => match scope {
                CacheScope::All => Ok(()),
                CacheScope::Key(k) => check_text("key", k),
                CacheScope::Pattern(p) => check_text("pattern", p),
                CacheScope::Tag(t) => check_text("tag", t),
            },
        }
    }

    /// Parses a command already split into words (a CLI's arguments: `syncctl ctl
    /// silence "queue depth" 2h`). Each argument is one word as it is, so no quoting
    /// is needed; keywords are still keywords (`*`, `all`).
    ///
    /// # Errors
    ///
    /// As [`FromStr`]: [`CommandError::Invalid`] naming the field at fault.
    pub fn from_words<I, S>(words: I) -> Result<Command, CommandError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let words = words
            .into_iter()
            .map(|w| Word {
                text: w.into(),
                quoted: false,
            })
            .collect();
        parse(words)
    }
}

fn check_bounds(min: u32, max: u32) -> Result<(), CommandError> {
    if min < 1 {
        Err(CommandError::invalid("bounds", "MIN must be at least 1"))
    } else if min > max {
        Err(CommandError::invalid(
            "bounds",
            format!("{min}-{max}: MIN must not be above MAX"),
        ))
    } else {
        Ok(())
    }
}

fn check_matcher(matcher: &AlertMatcher) -> Result<(), CommandError> {
    match matcher {
        AlertMatcher::All => Ok(()),
        AlertMatcher::Prefix(p) => {
            check_text("matcher", p)?;
            // A matcher is a prefix, and a trailing `*` the glob it reads as; a `*`
            // elsewhere would be a literal no alert id holds: `queue*depth` would
            // silence nothing while saying it silenced.
            if p.trim_end_matches('*').contains('*') || p.ends_with("**") {
                return Err(CommandError::invalid(
                    "matcher",
                    format!(
                        "{p:?}: a matcher is the start of alert ids (`queue` or `queue*` matches every queue alert, `*` every alert); a `*` goes only at the end"
                    ),
                ));
            }
            Ok(())
        }
    }
}

fn check_changes(changes: &[ThresholdChange]) -> Result<(), CommandError> {
    if changes.is_empty() {
        return Err(CommandError::invalid(
            "threshold",
            "no threshold given: expected NAME VALUE, e.g. set alerts.error_rate_percent 12",
        ));
    }
    for (i, c) in changes.iter().enumerate() {
        check_threshold_name(&c.name)?;
        if !c.value.is_finite() {
            return Err(CommandError::invalid(
                &c.name,
                format!("{} is not a finite number", c.value),
            ));
        }
        if changes.iter().take(i).any(|d| d.name == c.name) {
            return Err(CommandError::invalid(&c.name, "given twice"));
        }
    }
    Ok(())
}

// ---- words ----

/// One word of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Word {
    pub(super) text: String,
    /// Written in quotes: never a keyword.
    quoted: bool,
}

impl Word {
    /// An unquoted word equal to `keyword`, in any case.
    fn is(&self, keyword: &str) -> bool {
        !self.quoted && self.text.eq_ignore_ascii_case(keyword)
    }
}

/// A text fit to echo in an error: quoted, short, control characters escaped.
pub fn shown(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    format!("{t:?}")
}

/// Splits a line into words: runs of non-whitespace, or double-quoted strings with
/// `\"`, `\\`, `\n`, `\t`, `\r` and `\u{…}` escapes.
pub(super) fn split_words(line: &str) -> Result<Vec<Word>, CommandError> {
    let syntax = |reason: String| CommandError::invalid("command", reason);
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None => return Ok(words),
            Some('"') => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(syntax(format!(
                                "unclosed quote: {} needs a closing \"",
                                shown(&text)
                            )));
                        }
                        Some('"') => break,
                        Some('\\') => text.push(unescape(&mut chars)?),
                        Some(c) => text.push(c),
                    }
                }
                if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                    return Err(syntax(format!(
                        "a closing quote must end its word (after {})",
                        shown(&text)
                    )));
                }
                words.push(Word { text, quoted: true });
            }
            Some(_) => {
                let mut text = String::new();
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    if c == '"' {
                        return Err(syntax(format!(
                            "a quote may only open a word (after {}): quote the whole word",
                            shown(&text)
                        )));
                    }
                    text.push(c);
                }
                words.push(Word {
                    text,
                    quoted: false,
                });
            }
        }
    }
}

/// The character an escape (after its `\`) stands for.
fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, CommandError> {
    let bad = |what: &str| {
        CommandError::invalid(
            "command",
            format!(
                "unknown escape \\{what} in quotes (expected \\\", \\\\, \\n, \\t, \\r or \\u{{…}})"
            ),
        )
    };
    match chars.next() {
        Some('"') => Ok('"'),
        Some('\\') => Ok('\\'),
        Some('n') => Ok('\n'),
        Some('t') => Ok('\t'),
        Some('r') => Ok('\r'),
        Some('u') => {
            if chars.next() != Some('{') {
                return Err(bad("u"));
            }
            let mut hex = String::new();
            loop {
                match chars.next() {
                    Some('}') => break,
                    Some(c) if c.is_ascii_hexdigit() && hex.len() < 6 => hex.push(c),
                    _ => return Err(bad(&format!("u{{{hex}"))),
                }
            }
            u32::from_str_radix(&hex, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| bad(&format!("u{{{hex}}}")))
        }
        Some(c) => Err(bad(&c.escape_debug().to_string())),
        None => Err(bad("")),
    }
}

/// A value written as one word of the grammar (quoted when it must be).
struct AsWord<'a>(&'a str);

impl Display for AsWord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_word(f, self.0, false)
    }
}

/// Whether a value must be written in quotes to read back as one word.
fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c == '"' || c.is_control())
}

/// Writes a value as one word: bare when it reads back as itself, else quoted
/// (`reserved`: it would read as a keyword there).
fn write_word(f: &mut fmt::Formatter<'_>, s: &str, reserved: bool) -> fmt::Result {
    if !reserved && !needs_quotes(s) {
        return f.write_str(s);
    }
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

/// The tag of a `tag:TAG` word (`tag:` in any case).
fn tag_of(word: &str) -> Option<&str> {
    word.get(..4)
        .filter(|p| p.eq_ignore_ascii_case("tag:"))
        .and_then(|_| word.get(4..))
}

/// Whether a pattern would read as another scope unless quoted.
fn reserved_scope(p: &str) -> bool {
    ["all", "*", "key", "tag"]
        .iter()
        .any(|k| p.eq_ignore_ascii_case(k))
        || tag_of(p).is_some()
}

// ---- display ----

impl Display for Command {
    /// The command in the grammar: [`FromStr`] reads it back to the same command.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb())?;
        match self {
            Command::Pause { pipeline } | Command::Resume { pipeline } => {
                write!(f, " {pipeline}")
            }
            Command::Breaker { service, action } => write!(f, " {service} {action}"),
            Command::WorkerBounds { pipeline, min, max } => {
                write!(f, " {pipeline} {min}-{max}")
            }
            Command::RetryInvoice { key }
            | Command::RetryJob { key }
            | Command::ResyncItem { key } => {
                f.write_char(' ')?;
                write_word(f, key, false)
            }
            Command::RetryFailed {}
            | Command::RetryFailedJobs {}
            | Command::Resync {}
            | Command::ResyncDrifted {}
            | Command::Shutdown {} => Ok(()),
            Command::AckAlerts { matcher } => write_matcher(f, matcher),
            Command::SilenceAlerts { matcher, secs } => {
                write_matcher(f, matcher)?;
                write!(f, " {}", format_duration(*secs))
            }
            Command::SetThresholds { changes, for_secs } => {
                for c in changes {
                    f.write_char(' ')?;
                    write_word(f, &c.name, false)?;
                    write!(f, " {}", c.value)?;
                }
                if let Some(secs) = for_secs {
                    write!(f, " for {}", format_duration(*secs))?;
                }
                Ok(())
            }
            Command::InvalidateCache { scope } => {
                f.write_char(' ')?;
                match scope {
                    CacheScope::All => f.write_str("all"),
                    CacheScope::Key(k) => {
                        f.write_str("key ")?;
                        write_word(f, k, false)
                    }
                    CacheScope::Tag(t) if needs_quotes(t) => {
                        f.write_str("tag ")?;
                        write_word(f, t, false)
                    }
                    CacheScope::Tag(t) => write!(f, "tag:{t}"),
                    CacheScope::Pattern(p) => write_word(f, p, reserved_scope(p)),
                }
            }
        }
    }
}

fn write_matcher(f: &mut fmt::Formatter<'_>, matcher: &AlertMatcher) -> fmt::Result {
    f.write_char(' ')?;
    match matcher {
        AlertMatcher::All => f.write_str("*"),
        AlertMatcher::Prefix(p) => write_word(f, p, p == "*"),
    }
}

// ---- parse ----

impl FromStr for Command {
    type Err = CommandError;

    /// Reads one command of the grammar (see the module's documentation) and
    /// [validates](Command::validate) it. Errors are [`CommandError::Invalid`], naming
    /// the field at fault and what was expected there.
    fn from_str(line: &str) -> Result<Command, CommandError> {
        parse(split_words(line)?)
    }
}

/// The words of a command, read from the front.
struct Words {
    words: std::vec::IntoIter<Word>,
    /// What has been read, for "unexpected … after `…`".
    read: Vec<String>,
}

impl Words {
    /// The next word, or an error naming `field` and what belongs there.
    fn next(&mut self, field: &str, expected: &str) -> Result<Word, CommandError> {
        let Some(w) = self.words.next() else {
            return Err(CommandError::invalid(
                field,
                format!("missing: `{}` needs {expected}", self.read.join(" ")),
            ));
        };
        self.read.push(AsWord(&w.text).to_string());
        Ok(w)
    }

    /// Whether every word has been read.
    fn is_done(&self) -> bool {
        self.words.as_slice().is_empty()
    }

    /// The next word as a keyword of `K`.
    fn keyword<K: Keyword>(&mut self) -> Result<K, CommandError> {
        let words: Vec<&str> = K::ALL.iter().map(|k| k.word()).collect();
        let w = self.next(K::FIELD, &one_of(&words))?;
        keyword(&w.text)
    }

    /// Fails on any word left.
    fn end(mut self) -> Result<(), CommandError> {
        match self.words.next() {
            None => Ok(()),
            Some(w) => Err(CommandError::invalid(
                "command",
                format!(
                    "unexpected {} after `{}`",
                    shown(&w.text),
                    self.read.join(" ")
                ),
            )),
        }
    }
}

const INVOICE: &str = "an invoice (its Stripe id, DIAN number or CUFE)";
const PRODUCT: &str = "a Stripe product id whose catalog job failed, e.g. prod_0042";
const RESYNC_PRODUCT: &str = "a Stripe product id, e.g. prod_0042";
const MATCHER: &str = "an alert id prefix, or * for every alert";
const SCOPE: &str = "all, key KEY, tag:TAG or a pattern such as item:name:*";

/// A command from its words, validated.
fn parse(words: Vec<Word>) -> Result<Command, CommandError> {
    let mut w = Words {
        words: words.into_iter(),
        read: Vec::new(),
    };
    let Some(verb) = w.words.next() else {
        return Err(CommandError::invalid(
            "verb",
            format!("empty: expected one of {}", verb_list()),
        ));
    };
    w.read.push(verb.text.to_ascii_lowercase());
    let command = match verb.text.to_ascii_lowercase().as_str() {
        "pause" => Command::Pause {
            pipeline: w.keyword()?,
        },
        "resume" => Command::Resume {
            pipeline: w.keyword()?,
        },
        "breaker" => Command::Breaker {
            service: w.keyword()?,
            action: w.keyword()?,
        },
        "workers" => {
            let pipeline = w.keyword()?;
            let (min, max) = parse_bounds(&w.next("bounds", "MIN-MAX, e.g. 2-16")?.text)?;
            Command::WorkerBounds { pipeline, min, max }
        }
        "retry" => Command::RetryInvoice {
            key: w.next("key", INVOICE)?.text,
        },
        "retry-failed" => Command::RetryFailed {},
        "retry-job" => Command::RetryJob {
            key: w.next("key", PRODUCT)?.text,
        },
        "retry-failed-jobs" => Command::RetryFailedJobs {},
        "resync" => Command::Resync {},
        "resync-item" => Command::ResyncItem {
            key: w.next("key", RESYNC_PRODUCT)?.text,
        },
        "resync-drifted" => Command::ResyncDrifted {},
        "ack" => Command::AckAlerts {
            matcher: matcher(w.next("matcher", MATCHER)?),
        },
        "silence" => Command::SilenceAlerts {
            matcher: matcher(w.next("matcher", MATCHER)?),
            secs: parse_duration(&w.next("duration", "a duration such as 30m, 2h or 1d")?.text)?,
        },
        "set" => parse_set(&mut w)?,
        "invalidate" => Command::InvalidateCache {
            scope: parse_scope(&mut w)?,
        },
        "shutdown" => Command::Shutdown {},
        _ => {
            return Err(CommandError::invalid(
                "verb",
                format!(
                    "unknown command {}: expected one of {}",
                    shown(&verb.text),
                    verb_list()
                ),
            ));
        }
    };
    w.end()?;
    command.validate()?;
    Ok(command)
}

/// Every verb, for "expected one of …".
fn verb_list() -> String {
    let verbs: Vec<&str> = VERBS.iter().map(|(v, _)| *v).collect();
    one_of(&verbs)
}

/// An alert matcher: an unquoted `*` is every alert.
fn matcher(w: Word) -> AlertMatcher {
    if w.is("*") {
        AlertMatcher::All
    } else {
        AlertMatcher::Prefix(w.text)
    }
}

/// `MIN-MAX`.
fn parse_bounds(text: &str) -> Result<(u32, u32), CommandError> {
    text.split_once('-')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| {
            CommandError::invalid(
                "bounds",
                format!("expected MIN-MAX, e.g. 2-16, got {}", shown(text)),
            )
        })
}

/// `NAME VALUE [NAME VALUE…]`.
fn parse_set(w: &mut Words) -> Result<Command, CommandError> {
    let mut changes = Vec::new();
    let mut for_secs = None;
    while changes.is_empty() || !w.is_done() {
        let word = w.next(
            "threshold",
            "a threshold and its value, e.g. alerts.error_rate_percent 12",
        )?;
        if word.is("for") && !changes.is_empty() {
            let d = w.next("duration", "a duration such as 30m, 2h or 1d")?;
            for_secs = Some(parse_duration(&d.text)?);
            break;
        }
        let name = word.text;
        check_threshold_name(&name)?;
        let value = w.next(&name, "a number")?.text;
        let value: f64 = value.parse().map_err(|_| {
            CommandError::invalid(&name, format!("expected a number, got {}", shown(&value)))
        })?;
        changes.push(ThresholdChange { name, value });
    }
    Ok(Command::SetThresholds { changes, for_secs })
}

/// `all`, `*`, `key KEY`, `tag:TAG`, `tag TAG`, or a pattern.
fn parse_scope(w: &mut Words) -> Result<CacheScope, CommandError> {
    let scope = w.next("scope", SCOPE)?;
    Ok(if scope.is("all") || scope.is("*") {
        CacheScope::All
    } else if scope.is("key") {
        CacheScope::Key(w.next("key", "the cache key")?.text)
    } else if scope.is("tag") {
        CacheScope::Tag(w.next("tag", "the tag")?.text)
    } else if let Some(tag) = tag_of(&scope.text).filter(|_| !scope.quoted) {
        CacheScope::Tag(tag.to_owned())
    } else {
        CacheScope::Pattern(scope.text)
    })
}

// ---- help and completion ----

/// Every value of `K` as a completion: (word, what follows it).
fn all<K: Keyword>(then: &'static str) -> Vec<(&'static str, &'static str)> {
    K::ALL.iter().map(|k| (k.word(), then)).collect()
}

/// Every verb, and whether more words follow it.
const VERBS: [(&str, bool); 16] = [
    ("pause", true),
    ("resume", true),
    ("breaker", true),
    ("workers", true),
    ("retry", true),
    ("retry-failed", false),
    ("retry-job", true),
    ("retry-failed-jobs", false),
    ("resync", false),
    ("resync-item", true),
    ("resync-drifted", false),
    ("ack", true),
    ("silence", true),
    ("set", true),
    ("invalidate", true),
    ("shutdown", false),
];

/// The grammar, one line per form: (usage, what it does), for help screens and `ctl
/// --help`.
pub fn grammar() -> &'static [(&'static str, &'static str)] {
    &[
        (
            "pause <catalog|compliance>",
            "stop claiming work in a pipeline; queued work waits",
        ),
        (
            "resume <catalog|compliance>",
            "claim work in a pipeline again",
        ),
        (
            "breaker <stripe|quickbooks|alegra> <force-open|close|disable|metrics-only|reset>",
            "set a service's circuit: refuse every call, let calls through, stop recording, only measure, or reset to CLOSED with empty metrics",
        ),
        (
            "workers <catalog|compliance> <MIN>-<MAX>",
            "keep a pipeline's workers between MIN and MAX (e.g. workers catalog 2-16)",
        ),
        (
            "retry <invoice>",
            "send one invoice again, by Stripe id, DIAN number or CUFE",
        ),
        ("retry-failed", "send every FAILED invoice again"),
        (
            "retry-job <product>",
            "queue again one catalog job that failed past its last attempt, by Stripe product id",
        ),
        (
            "retry-failed-jobs",
            "queue again every catalog job that failed past its last attempt, with fresh attempts",
        ),
        (
            "resync",
            "run the catalog's full sync again: every Stripe product listed and checked against its Item",
        ),
        (
            "resync-item <product>",
            "write one product's Item again from Stripe (the reconciliation shows it drifted or missing)",
        ),
        (
            "resync-drifted",
            "write again every Item the reconciliation shows drifted, and create the missing ones",
        ),
        (
            "ack <alert|*>",
            "acknowledge the alerts whose id starts with <alert> (* for all)",
        ),
        (
            "silence <alert|*> <duration>",
            "mute those alerts for 90s, 30m, 2h, 1d, 1h30m… (at most 7d)",
        ),
        (
            "set <threshold> <value> [<threshold> <value>…]",
            "set thresholds, all or nothing, saved to the config file (e.g. set alerts.error_rate_percent 12)",
        ),
        ("invalidate all", "drop every cached QuickBooks lookup"),
        (
            "invalidate key <key>",
            "drop the cached lookup with that key",
        ),
        (
            "invalidate tag:<tag>",
            "drop the cached lookups carrying that tag",
        ),
        (
            "invalidate <pattern>",
            "drop the cached lookups whose key matches (* globs, else a prefix; e.g. item:name:*)",
        ),
        (
            "shutdown",
            "stop claiming work, finish what is in flight, then stop the engine",
        ),
    ]
}

/// Values a front-end knows of (from the snapshot it shows), for completing the words
/// the grammar leaves open: the invoice of `retry`, the alert of `ack` and `silence`,
/// the thresholds of `set`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KnownValues<'a> {
    /// Invoices, as the key `retry` takes (DIAN numbers, Stripe ids).
    pub invoices: &'a [&'a str],
    /// Alert ids.
    pub alerts: &'a [&'a str],
    /// Threshold names (`section.key`).
    pub thresholds: &'a [&'a str],
}

/// Tab completion for a `:` command line: the whole lines `line` may become, the
/// word being typed completed (a verb, then a pipeline, service, breaker action or
/// cache scope). A candidate ends with a space when more words follow it. Values
/// (keys, alerts, thresholds) are not completed: an empty list ([`complete_with`]
/// completes those a front-end knows of).
pub fn complete(line: &str) -> Vec<String> {
    complete_with(line, KnownValues::default())
}

/// [`complete`], and the values in `known` where the grammar wants a value: an
/// invoice after `retry`, an alert (or `*`) after `ack` and `silence`, a threshold
/// name (each at most once) where `set` wants one. Values are written as the grammar
/// reads them back (quoted when they must be) and matched case-insensitively.
pub fn complete_with(line: &str, known: KnownValues<'_>) -> Vec<String> {
    let cut = line
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let (head, partial) = line.split_at(cut);
    let Ok(done) = split_words(head) else {
        return Vec::new();
    };
    let values = |values: &[&str], then: &'static str| -> Vec<(String, &'static str)> {
        values
            .iter()
            .map(|v| (AsWord(v).to_string(), then))
            .collect()
    };
    let words = |words: Vec<(&'static str, &'static str)>| -> Vec<(String, &'static str)> {
        words.into_iter().map(|(w, t)| (w.to_owned(), t)).collect()
    };
    let candidates: Vec<(String, &str)> = match done.as_slice() {
        [] => VERBS
            .iter()
            .map(|(v, more)| ((*v).to_owned(), if *more { " " } else { "" }))
            .collect(),
        [verb] if verb.is("pause") || verb.is("resume") => words(all::<Pipeline>("")),
        [verb] if verb.is("workers") => words(all::<Pipeline>(" ")),
        [verb] if verb.is("breaker") => words(all::<Service>(" ")),
        [verb] if verb.is("invalidate") => words(vec![("all", ""), ("key", " "), ("tag:", "")]),
        [verb] if verb.is("retry") => values(known.invoices, ""),
        [verb] if verb.is("ack") => [("*".to_owned(), "")]
            .into_iter()
            .chain(values(known.alerts, ""))
            .collect(),
        [verb] if verb.is("silence") => [("*".to_owned(), " ")]
            .into_iter()
            .chain(values(known.alerts, " "))
            .collect(),
        [verb, service] if verb.is("breaker") && keyword::<Service>(&service.text).is_ok() => {
            words(all::<BreakerAction>(""))
        }
        [verb, rest @ ..] if verb.is("set") && rest.len() % 2 == 0 => {
            let named: Vec<&str> = rest.iter().step_by(2).map(|w| w.text.as_str()).collect();
            let left: Vec<&str> = known
                .thresholds
                .iter()
                .copied()
                .filter(|t| !named.contains(t))
                .collect();
            values(&left, " ")
        }
        _ => Vec::new(),
    };
    candidates
        .into_iter()
        .filter(|(word, _)| {
            word.get(..partial.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(partial))
        })
        .map(|(word, space)| format!("{head}{word}{space}"))
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, CommandError> {
        s.parse()
    }

    fn prefix(s: &str) -> AlertMatcher {
        AlertMatcher::Prefix(s.into())
    }

    fn set(pairs: &[(&str, f64)]) -> Command {
        Command::SetThresholds {
            changes: pairs
                .iter()
                .map(|(n, v)| ThresholdChange::new(*n, *v))
                .collect(),
            for_secs: None,
        }
    }

    fn scope(s: CacheScope) -> Command {
        Command::InvalidateCache { scope: s }
    }

    /// Awkward texts: spaces, quotes, backslashes, keywords, non-ASCII.
    const AWKWARD: &[&str] = &[
        "SETP990000012",
        "in_1Nv0 ice",
        "say \"hi\"",
        "back\\slash",
        "\\\"",
        "\"",
        " leading",
        "trailing ",
        "*",
        "all",
        "ALL",
        "key",
        "tag",
        "tag:x",
        "TAG:x",
        "retry-failed",
        "ñandú ✓",
        "a\u{a0}b",
        "item:name:*",
        "#1",
        "-x",
    ];

    /// Every variant, with plain and awkward values (the journal's tests use it too).
    pub(crate) fn every_command() -> Vec<Command> {
        let mut all = Vec::new();
        for &pipeline in Pipeline::ALL {
            all.push(Command::Pause { pipeline });
            all.push(Command::Resume { pipeline });
            all.push(Command::WorkerBounds {
                pipeline,
                min: 2,
                max: 16,
            });
        }
        all.push(Command::WorkerBounds {
            pipeline: Pipeline::Catalog,
            min: 1,
            max: u32::MAX,
        });
        for &service in Service::ALL {
            for &action in BreakerAction::ALL {
                all.push(Command::Breaker { service, action });
            }
        }
        all.push(Command::RetryFailed {});
        all.push(Command::RetryFailedJobs {});
        all.push(Command::Resync {});
        all.push(Command::ResyncDrifted {});
        all.push(Command::ResyncItem {
            key: "prod_0042".into(),
        });
        all.push(Command::RetryJob {
            key: "prod_0042".into(),
        });
        all.push(Command::Shutdown {});
        all.push(Command::AckAlerts {
            matcher: AlertMatcher::All,
        });
        for secs in [1, 59, 60, 90, 3600, 5400, 86_400, 90_061, MAX_SILENCE_SECS] {
            all.push(Command::SilenceAlerts {
                matcher: AlertMatcher::All,
                secs,
            });
        }
        for text in AWKWARD {
            all.push(Command::RetryInvoice {
                key: (*text).into(),
            });
            all.push(Command::RetryJob {
                key: (*text).into(),
            });
            all.push(Command::AckAlerts {
                matcher: prefix(text),
            });
            all.push(Command::SilenceAlerts {
                matcher: prefix(text),
                secs: 7200,
            });
            all.push(scope(CacheScope::Key((*text).into())));
            all.push(scope(CacheScope::Pattern((*text).into())));
            all.push(scope(CacheScope::Tag((*text).into())));
        }
        all.push(scope(CacheScope::All));
        all.push(Command::RetryInvoice {
            key: "x".repeat(MAX_TEXT),
        });
        for v in [
            12.0,
            0.0,
            -0.0,
            0.1,
            1.0 / 3.0,
            -2.5,
            1e-7,
            123_456_789.123_456_79,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ] {
            all.push(set(&[("alerts.error_rate_percent", v)]));
        }
        all.push(set(&[
            ("alerts.error_rate_percent", 12.0),
            ("anomaly.z_threshold", 3.5),
            ("alerts.for_secs", 60.0),
        ]));
        all.push(Command::SetThresholds {
            changes: vec![
                ThresholdChange::new("alerts.error_rate_percent", 25.0),
                ThresholdChange::new("alerts.for_secs", 5.0),
            ],
            for_secs: Some(5400),
        });
        all
    }

    #[test]
    fn every_command_round_trips_through_text() {
        let all = every_command();
        // Every variant is in the list.
        let verbs: std::collections::BTreeSet<&str> = all.iter().map(Command::verb).collect();
        assert_eq!(verbs.len(), VERBS.len());
        for c in all {
            assert_eq!(c.validate(), Ok(()), "{c:?}");
            let text = c.to_string();
            assert_eq!(p(&text), Ok(c.clone()), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn a_matchers_trailing_star_is_a_glob_and_one_elsewhere_is_refused() {
        let silence = |m: &str| Command::SilenceAlerts {
            matcher: AlertMatcher::Prefix(m.into()),
            secs: 3600,
        };
        let e = silence("queue*depth").validate().unwrap_err();
        assert!(e.to_string().contains("queue*depth"), "{e}");
        assert!(
            Command::AckAlerts {
                matcher: AlertMatcher::Prefix("error*/x".into())
            }
            .validate()
            .is_err()
        );
        assert!(silence("queue**").validate().is_err());
        // A trailing `*` is the glob it looks like.
        assert_eq!(silence("queue*").validate(), Ok(()));
        assert_eq!(AlertMatcher::Prefix("queue*".into()).prefix(), "queue");
        assert_eq!(AlertMatcher::Prefix("*".into()).prefix(), "");
        assert_eq!(silence("queue").validate(), Ok(()));
    }

    #[test]
    fn a_temporary_set_reads_and_prints_as_written() {
        let c = Command::SetThresholds {
            changes: vec![ThresholdChange::new("alerts.error_rate_percent", 12.0)],
            for_secs: Some(5400),
        };
        let text = "set alerts.error_rate_percent 12 for 1h30m";
        assert_eq!(text.parse::<Command>(), Ok(c.clone()));
        assert_eq!(c.to_string(), text);
        // `for` ends the command; it is no threshold's name.
        assert!(
            "set alerts.error_rate_percent 12 for 1h x"
                .parse::<Command>()
                .is_err()
        );
        assert!("set for 1h".parse::<Command>().is_err());
        assert!(
            "set alerts.error_rate_percent 12 for 8d"
                .parse::<Command>()
                .is_err()
        );
    }

    #[test]
    fn the_issue_examples_read_and_print_as_written() {
        let cases = [
            (
                "retry SETP990000012",
                Command::RetryInvoice {
                    key: "SETP990000012".into(),
                },
            ),
            ("retry-failed", Command::RetryFailed {}),
            (
                "retry-job prod_0042",
                Command::RetryJob {
                    key: "prod_0042".into(),
                },
            ),
            ("retry-failed-jobs", Command::RetryFailedJobs {}),
            ("resync", Command::Resync {}),
            (
                "pause compliance",
                Command::Pause {
                    pipeline: Pipeline::Compliance,
                },
            ),
            (
                "resume catalog",
                Command::Resume {
                    pipeline: Pipeline::Catalog,
                },
            ),
            (
                "invalidate item:name:*",
                scope(CacheScope::Pattern("item:name:*".into())),
            ),
            (
                "invalidate tag:prod_1",
                scope(CacheScope::Tag("prod_1".into())),
            ),
            ("invalidate all", scope(CacheScope::All)),
            (
                "invalidate key item:name:Widget",
                scope(CacheScope::Key("item:name:Widget".into())),
            ),
            (
                "set alerts.error_rate_percent 12",
                set(&[("alerts.error_rate_percent", 12.0)]),
            ),
            (
                "set alerts.error_rate_percent 12.5 alerts.for_secs 30",
                set(&[
                    ("alerts.error_rate_percent", 12.5),
                    ("alerts.for_secs", 30.0),
                ]),
            ),
            (
                "breaker quickbooks force-open",
                Command::Breaker {
                    service: Service::QuickBooks,
                    action: BreakerAction::ForceOpen,
                },
            ),
            (
                "workers catalog 2-16",
                Command::WorkerBounds {
                    pipeline: Pipeline::Catalog,
                    min: 2,
                    max: 16,
                },
            ),
            (
                "ack queue_depth",
                Command::AckAlerts {
                    matcher: prefix("queue_depth"),
                },
            ),
            (
                "ack *",
                Command::AckAlerts {
                    matcher: AlertMatcher::All,
                },
            ),
            (
                "silence queue_depth 2h",
                Command::SilenceAlerts {
                    matcher: prefix("queue_depth"),
                    secs: 7200,
                },
            ),
            (
                "silence * 1h30m",
                Command::SilenceAlerts {
                    matcher: AlertMatcher::All,
                    secs: 5400,
                },
            ),
            ("shutdown", Command::Shutdown {}),
        ];
        for (text, command) in cases {
            assert_eq!(p(text), Ok(command.clone()), "{text}");
            assert_eq!(command.to_string(), text);
        }
    }

    #[test]
    fn awkward_values_are_quoted_only_when_needed() {
        let shown = |c: Command| c.to_string();
        assert_eq!(
            shown(Command::RetryInvoice {
                key: "in 1 \"x\" \\".into()
            }),
            r#"retry "in 1 \"x\" \\""#
        );
        assert_eq!(
            shown(Command::RetryInvoice { key: "a\\b".into() }),
            r"retry a\b"
        );
        assert_eq!(
            shown(Command::AckAlerts {
                matcher: prefix("*")
            }),
            r#"ack "*""#
        );
        assert_eq!(
            shown(scope(CacheScope::Pattern("all".into()))),
            r#"invalidate "all""#
        );
        assert_eq!(
            shown(scope(CacheScope::Pattern("tag:x".into()))),
            r#"invalidate "tag:x""#
        );
        assert_eq!(
            shown(scope(CacheScope::Tag("prod 1".into()))),
            r#"invalidate tag "prod 1""#
        );
        assert_eq!(
            shown(scope(CacheScope::Key("all".into()))),
            "invalidate key all"
        );
        // Control characters never reach a terminal raw, even from an invalid command.
        assert_eq!(
            shown(Command::RetryInvoice {
                key: "a\u{1b}[2Jb\n".into()
            }),
            r#"retry "a\u{1b}[2Jb\n""#
        );
    }

    #[test]
    fn alternative_spellings_read_to_the_same_command() {
        let same = [
            ("PAUSE Compliance", "pause compliance"),
            ("  retry   SETP1  ", "retry SETP1"),
            ("retry \"SETP1\"", "retry SETP1"),
            ("invalidate *", "invalidate all"),
            ("invalidate ALL", "invalidate all"),
            ("invalidate tag prod_1", "invalidate tag:prod_1"),
            ("invalidate TAG:prod_1", "invalidate tag:prod_1"),
            (
                "Breaker QuickBooks Force-Open",
                "breaker quickbooks force-open",
            ),
            ("silence x 120m", "silence x 2h"),
            ("silence x 90", "silence x 1m30s"),
            ("silence x 1H30M", "silence x 1h30m"),
            ("silence x 1d0h", "silence x 1d"),
            ("set alerts.queue_depth 1e3", "set alerts.queue_depth 1000"),
            ("set alerts.queue_depth +5.0", "set alerts.queue_depth 5"),
            (r#"retry "\u{41}\\""#, r"retry A\"),
        ];
        for (alt, canonical) in same {
            assert_eq!(p(alt), p(canonical), "{alt}");
            assert_eq!(p(alt).map(|c| c.to_string()), Ok(canonical.to_owned()));
        }
        // An escaped control character reads, then validation refuses it.
        assert_eq!(
            p(r#"retry "a\tb""#).map_err(|e| e.field().map(str::to_owned)),
            Err(Some("key".into()))
        );
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases = [
            ("", "verb"),
            ("   ", "verb"),
            ("pasue catalog", "verb"),
            ("pause", "pipeline"),
            ("pause catalogue", "pipeline"),
            ("pause catalog now", "command"),
            ("resume", "pipeline"),
            ("breaker", "service"),
            ("breaker qb close", "service"),
            ("breaker stripe", "action"),
            ("breaker stripe open", "action"),
            ("breaker stripe half-open", "action"),
            ("workers catalog", "bounds"),
            ("workers catalog 16", "bounds"),
            ("workers catalog a-b", "bounds"),
            ("workers catalog 0-4", "bounds"),
            ("workers catalog 8-4", "bounds"),
            ("workers catalog -1-4", "bounds"),
            ("workers dian 2-4", "pipeline"),
            ("retry", "key"),
            ("retry \"\"", "key"),
            ("retry \"  \"", "key"),
            ("retry-failed now", "command"),
            ("ack", "matcher"),
            ("silence", "matcher"),
            ("silence x", "duration"),
            ("silence x forever", "duration"),
            ("silence x 0s", "duration"),
            ("silence x 8d", "duration"),
            ("silence x 7d1s", "duration"),
            ("silence x 30m1h", "duration"),
            ("silence x 1h1h", "duration"),
            ("silence x 99999999999999999999999d", "duration"),
            ("silence x 999999999999999999d", "duration"),
            ("silence x 1h 30m", "command"),
            ("silence x 1w", "duration"),
            ("silence x -1h", "duration"),
            ("set", "threshold"),
            ("set alerts", "threshold"),
            ("set Alerts.Queue_Depth 3", "threshold"),
            ("set alerts. 3", "threshold"),
            ("set alerts.queue_depth", "alerts.queue_depth"),
            ("set alerts.queue_depth abc", "alerts.queue_depth"),
            ("set alerts.queue_depth inf", "alerts.queue_depth"),
            ("set alerts.queue_depth NaN", "alerts.queue_depth"),
            (
                "set alerts.queue_depth 1 alerts.queue_depth 2",
                "alerts.queue_depth",
            ),
            (
                "set alerts.queue_depth 1 alerts.for_secs",
                "alerts.for_secs",
            ),
            ("invalidate", "scope"),
            ("invalidate key", "key"),
            ("invalidate tag", "tag"),
            ("invalidate tag:", "tag"),
            ("invalidate a b", "command"),
            ("retry \"open", "command"),
            ("retry a\"b\"", "command"),
            ("retry \"a\"b", "command"),
            ("retry \"a\\qb\"", "command"),
            ("retry \"a\\u{110000}\"", "command"),
            ("retry \"a\\u{zz}\"", "command"),
            ("retry \"a\\", "command"),
        ];
        for (text, field) in cases {
            match p(text) {
                Err(e @ CommandError::Invalid { .. }) => {
                    assert_eq!(e.field(), Some(field), "{text}: {e}");
                    assert_eq!(e.http_status(), 400);
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let long = format!("retry {}", "x".repeat(MAX_TEXT + 1));
        assert_eq!(
            p(&long).map_err(|e| e.field().map(str::to_owned)),
            Err(Some("key".into()))
        );
    }

    #[test]
    fn parse_errors_say_what_was_expected() {
        let message = |text: &str| p(text).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(
            message("pause catalogue"),
            Err("pipeline: expected catalog or compliance, got \"catalogue\"".into())
        );
        assert_eq!(
            message("breaker stripe open"),
            Err(
                "action: expected force-open, close, disable, metrics-only or reset, got \"open\""
                    .into()
            )
        );
        assert_eq!(
            message("pause"),
            Err("pipeline: missing: `pause` needs catalog or compliance".into())
        );
        assert_eq!(
            message("retry \"a b\" c"),
            Err("command: unexpected \"c\" after `retry \"a b\"`".into())
        );
        assert_eq!(
            message("pause catalog now"),
            Err("command: unexpected \"now\" after `pause catalog`".into())
        );
        assert_eq!(
            message("silence x 8d"),
            Err("duration: \"8d\" is too long: a silence lasts at most 7d".into())
        );
        let unknown = message("frobnicate").err().unwrap_or_default();
        for verb in ["pause", "retry-failed", "invalidate", "shutdown"] {
            assert!(unknown.contains(verb), "{unknown}");
        }
    }

    #[test]
    fn durations() {
        for (text, secs) in [
            ("90s", 90),
            ("30m", 1800),
            ("2h", 7200),
            ("1d", 86_400),
            ("1h30m", 5400),
            ("1d2h3m4s", 93_784),
            ("90", 90),
            (" 7d ", MAX_SILENCE_SECS),
            ("168h", MAX_SILENCE_SECS),
            ("0h1s", 1),
        ] {
            assert_eq!(parse_duration(text), Ok(secs), "{text}");
        }
        for bad in [
            "", "s", "0", "1x", "h1", "1.5h", "1h30", "1m1h", "1 h", "8d", "604801",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for (secs, text) in [
            (0, "0s"),
            (1, "1s"),
            (90, "1m30s"),
            (3600, "1h"),
            (5400, "1h30m"),
            (86_400, "1d"),
            (93_784, "1d2h3m4s"),
        ] {
            assert_eq!(format_duration(secs), text);
        }
        for secs in (1..=MAX_SILENCE_SECS)
            .step_by(997)
            .chain([MAX_SILENCE_SECS])
        {
            assert_eq!(parse_duration(&format_duration(secs)), Ok(secs));
        }
    }

    #[test]
    fn thresholds_print_back_exactly() {
        let mut x = 0.1_f64;
        for _ in 0..200 {
            x = x * 1.37 + 1e-3 / x;
            let c = set(&[("anomaly.z_threshold", x)]);
            assert_eq!(p(&c.to_string()), Ok(c));
        }
    }

    #[test]
    fn errors_map_to_http_statuses_and_codes() {
        let cases = [
            (CommandError::not_found("invoice \"X\""), 404, "not_found"),
            (CommandError::conflict("already accepted"), 409, "refused"),
            (
                CommandError::invalid("alerts.queue_depth", "out of range"),
                400,
                "bad_request",
            ),
            (
                CommandError::forbidden("a viewer may only read"),
                403,
                "forbidden",
            ),
            (
                CommandError::unavailable("the engine is stopping"),
                503,
                "unavailable",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.http_status(), e.code()), (status, code));
            // Only a 503 may be answered otherwise if asked again.
            assert_eq!(e.for_now(), status == 503, "{e:?}");
            // The serde tag is the same code.
            let v = serde_json::to_value(&e).unwrap_or_default();
            assert_eq!(v["code"], code);
            let back: CommandError = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, e);
            let body = e.body();
            assert_eq!((body.code.as_str(), body.message), (code, e.to_string()));
        }
        let e = CommandError::invalid("alerts.queue_depth", "0 is out of range (1 to 100000)");
        assert_eq!(
            e.to_string(),
            "alerts.queue_depth: 0 is out of range (1 to 100000)"
        );
        assert_eq!(e.body().field.as_deref(), Some("alerts.queue_depth"));
        assert_eq!(
            serde_json::to_value(CommandError::not_found("invoice \"FE-404\"").body())
                .unwrap_or_default(),
            serde_json::json!({"code": "not_found", "message": "invoice \"FE-404\" not found"})
        );
        let boxed: Box<dyn std::error::Error> = Box::new(CommandError::conflict("no"));
        assert_eq!(boxed.to_string(), "no");
    }

    #[test]
    fn requests_round_trip_through_json() {
        // serde_json's default float parser may miss by one ulp on a number written
        // with 16-17 significant digits (its `float_roundtrip` feature reads every f64
        // exactly); the text grammar has no such limit.
        let short = |c: &Command| match c {
            Command::SetThresholds { changes, .. } => changes.iter().all(|t| {
                let e = format!("{:e}", t.value);
                let mantissa = e.split('e').next().unwrap_or_default();
                mantissa.chars().filter(char::is_ascii_digit).count() <= 15
            }),
            _ => true,
        };
        for (i, command) in every_command().into_iter().filter(short).enumerate() {
            let r = Request::new(format!("ana@10.0.0.{i}"), command);
            let json = serde_json::to_string(&r).unwrap_or_default();
            let back: Request =
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(back, r, "{json}");
        }
    }

    #[test]
    fn the_json_shape() {
        use serde_json::json;
        let cases = [
            (
                Command::Pause {
                    pipeline: Pipeline::Compliance,
                },
                json!({"verb": "pause", "pipeline": "compliance"}),
            ),
            (Command::RetryFailed {}, json!({"verb": "retry-failed"})),
            (
                Command::Breaker {
                    service: Service::QuickBooks,
                    action: BreakerAction::MetricsOnly,
                },
                json!({"verb": "breaker", "service": "quickbooks", "action": "metrics-only"}),
            ),
            (
                Command::WorkerBounds {
                    pipeline: Pipeline::Catalog,
                    min: 2,
                    max: 16,
                },
                json!({"verb": "workers", "pipeline": "catalog", "min": 2, "max": 16}),
            ),
            (
                Command::SilenceAlerts {
                    matcher: AlertMatcher::All,
                    secs: 60,
                },
                json!({"verb": "silence", "matcher": "all", "secs": 60}),
            ),
            (
                Command::AckAlerts {
                    matcher: prefix("queue"),
                },
                json!({"verb": "ack", "matcher": {"prefix": "queue"}}),
            ),
            (
                set(&[("alerts.queue_depth", 5.5)]),
                json!({"verb": "set", "changes": [{"name": "alerts.queue_depth", "value": 5.5}]}),
            ),
            (
                scope(CacheScope::Tag("prod_1".into())),
                json!({"verb": "invalidate", "scope": {"tag": "prod_1"}}),
            ),
            (
                scope(CacheScope::All),
                json!({"verb": "invalidate", "scope": "all"}),
            ),
        ];
        for (command, expected) in cases {
            assert_eq!(serde_json::to_value(&command).unwrap_or_default(), expected);
            let verb = command.verb();
            assert_eq!(expected["verb"], verb);
        }
        let r = Request::new("ana", Command::RetryFailed {});
        assert_eq!(
            serde_json::to_value(&r).unwrap_or_default(),
            json!({"actor": "ana", "command": {"verb": "retry-failed"}, "role": "operator"})
        );
        // A typo never widens an action.
        for bad in [
            json!({"actor": "a", "command": {"verb": "ack", "matchr": "all"}}),
            json!({"actor": "a", "command": {"verb": "ack"}}),
            json!({"actor": "a", "command": {"verb": "pause", "pipeline": "dian"}}),
            json!({"actor": "a", "command": {"verb": "retry-failed", "all": true}}),
            json!({"actor": "a", "command": {"verb": "nope"}}),
            json!({"actor": "a", "cmd": {"verb": "shutdown"}}),
            json!({"actor": "a", "command": {"verb": "shutdown"}, "extra": 1}),
        ] {
            assert!(
                serde_json::from_value::<Request>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let outcome = Outcome::new("sent 3 invoices again").with_count(3);
        assert_eq!(
            serde_json::to_value(&outcome).unwrap_or_default(),
            json!({"message": "sent 3 invoices again", "changed": true, "count": 3})
        );
        let q = Query::InvoiceDetail {
            key: "SETP1".into(),
        };
        assert_eq!(
            serde_json::to_value(&q).unwrap_or_default(),
            json!({"query": "invoice-detail", "key": "SETP1"})
        );
    }

    #[test]
    fn from_words_takes_each_argument_as_one_word() {
        assert_eq!(
            Command::from_words(["silence", "queue depth", "2h"]),
            Ok(Command::SilenceAlerts {
                matcher: prefix("queue depth"),
                secs: 7200,
            })
        );
        assert_eq!(
            Command::from_words(["ack", "*"]),
            Ok(Command::AckAlerts {
                matcher: AlertMatcher::All
            })
        );
        assert_eq!(
            Command::from_words(["retry", "a\"b"]),
            Ok(Command::RetryInvoice { key: "a\"b".into() })
        );
        assert!(Command::from_words(Vec::<String>::new()).is_err());
    }

    #[test]
    fn names_and_breaker_states() {
        assert_eq!("QuickBooks".parse(), Ok(Service::QuickBooks));
        assert_eq!(Service::QuickBooks.to_string(), "quickbooks");
        assert_eq!(Pipeline::ALL, &[Pipeline::Catalog, Pipeline::Compliance]);
        assert_eq!(
            "dian"
                .parse::<Pipeline>()
                .map_err(|e| e.field().map(str::to_owned)),
            Err(Some("pipeline".into()))
        );
        for &a in BreakerAction::ALL {
            match a.state_name() {
                Some(s) => assert_eq!(BreakerAction::from_state_name(s), Some(a)),
                None => assert_eq!(a, BreakerAction::Reset),
            }
        }
        assert_eq!(BreakerAction::from_state_name("HALF_OPEN"), None);
        assert_eq!(BreakerAction::from_state_name("OPEN"), None);
        assert_eq!(
            BreakerAction::from_state_name("forced_open"),
            Some(BreakerAction::ForceOpen)
        );
        assert_eq!("*".parse(), Ok(AlertMatcher::All));
        assert_eq!(AlertMatcher::All.prefix(), "");
        assert_eq!("queue".parse(), Ok(prefix("queue")));
        assert!("".parse::<AlertMatcher>().is_err());
        assert_eq!(
            CacheScope::Tag("prod_1".into()).to_string(),
            "tag \"prod_1\""
        );
    }

    #[test]
    fn grammar_lists_every_verb() {
        for (verb, _) in VERBS {
            assert!(
                grammar()
                    .iter()
                    .any(|(usage, _)| usage.split(' ').next() == Some(verb)),
                "{verb}"
            );
        }
        for (usage, what) in grammar() {
            assert!(!usage.is_empty() && !what.is_empty());
        }
    }

    #[test]
    fn completion_of_known_values() {
        let known = KnownValues {
            invoices: &["SETP990000001", "SETP990000002", "in 3"],
            alerts: &["queue_depth", "error_rate"],
            thresholds: &["alerts.queue_depth", "alerts.error_rate_percent"],
        };
        let c = |s: &str| complete_with(s, known);
        assert_eq!(
            c("retry setp"),
            ["retry SETP990000001", "retry SETP990000002"]
        );
        // A value with a space is written in quotes, and reads back as one word.
        assert_eq!(c("retry \"in"), ["retry \"in 3\""]);
        assert_eq!(
            p(&c("retry \"in")[0]),
            Ok(Command::RetryInvoice { key: "in 3".into() })
        );
        assert_eq!(c("ack "), ["ack *", "ack queue_depth", "ack error_rate"]);
        assert_eq!(c("silence q"), ["silence queue_depth "]);
        assert_eq!(c("set alerts.q"), ["set alerts.queue_depth "]);
        // A threshold is named at most once; a value is not completed.
        assert_eq!(
            c("set alerts.queue_depth 5 "),
            ["set alerts.queue_depth 5 alerts.error_rate_percent "]
        );
        assert!(c("set alerts.queue_depth ").is_empty());
        // Keywords still complete as without values.
        assert_eq!(c("pause c"), complete("pause c"));
        assert!(complete("retry S").is_empty());
    }

    #[test]
    fn completion() {
        let c = |s: &str| complete(s);
        assert_eq!(c("pa"), ["pause "]);
        let re = [
            "resume ",
            "retry ",
            "retry-failed",
            "retry-job ",
            "retry-failed-jobs",
            "resync",
            "resync-item ",
            "resync-drifted",
        ];
        assert_eq!(c("re"), re);
        assert_eq!(c("RE"), re);
        assert_eq!(c("").len(), VERBS.len());
        assert_eq!(c("pause "), ["pause catalog", "pause compliance"]);
        assert_eq!(c("pause  com"), ["pause  compliance"]);
        assert_eq!(c("workers ca"), ["workers catalog "]);
        assert_eq!(c("breaker q"), ["breaker quickbooks "]);
        assert_eq!(c("breaker quickbooks f"), ["breaker quickbooks force-open"]);
        assert_eq!(
            c("breaker stripe "),
            [
                "breaker stripe force-open",
                "breaker stripe close",
                "breaker stripe disable",
                "breaker stripe metrics-only",
                "breaker stripe reset"
            ]
        );
        assert_eq!(c("invalidate t"), ["invalidate tag:"]);
        assert_eq!(
            c("invalidate "),
            ["invalidate all", "invalidate key ", "invalidate tag:"]
        );
        assert_eq!(c("ack "), ["ack *"]);
        assert_eq!(c("silence "), ["silence * "]);
        assert!(c("retry ").is_empty());
        assert!(c("breaker nope ").is_empty());
        assert!(c("retry \"a b").is_empty());
        assert!(c("pause catalog ").is_empty());
        assert!(c("xyz").is_empty());
        // Every completed verb line parses or wants more words.
        for line in c("") {
            let parsed = p(&line);
            assert!(parsed.is_ok() || line.ends_with(' '), "{line}");
        }
    }
}
