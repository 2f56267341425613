//! The DIAN queue as a front-end sees it: the compliance view, invoice records and
//! their history, the invoice status and the words for provider codes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::wire::{Word, one_of};

/// The DIAN queue, for the console.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ComplianceView {
    /// False when `[alegra]` is not configured.
    pub enabled: bool,
    pub paused: bool,
    pub counts: ComplianceCounts,
    /// Newest first (the most recent few hundred, plus every one needing attention).
    pub invoices: Vec<InvoiceRecord>,
    pub sends: u64,
    pub validated: u64,
    pub in_flight: usize,
    /// Alegra's rate window from its last response headers.
    pub window: RateWindow,
    /// DIAN's contingency procedure: probing, outage, restoration.
    pub contingency: ContingencyView,
    /// The records' wall clock, to the second (deadlines count down against it).
    pub now_ms: i64,
    /// Why no invoice is numbered now (Alegra not yet asked about the range, or a lost
    /// store found there); None when numbering works.
    pub numbering_hold: Option<String>,
}

/// One invoice in full, the answer to [`Query::InvoiceDetail`](super::Query::InvoiceDetail).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceDetail {
    pub record: InvoiceRecord,
    pub history: Vec<HistoryEntry>,
    /// The body Alegra is (or would be) sent, pretty-printed.
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceRecord {
    pub stripe_id: String,
    pub number: String,
    pub kind: String,
    pub status: Status,
    pub attempts: u32,
    pub next_at_ms: Option<i64>,
    /// A send began and its outcome was never recorded (the process stopped).
    pub sending: bool,
    pub alegra_id: Option<String>,
    pub cufe: Option<String>,
    pub issue_date: String,
    pub buyer_id: String,
    pub buyer_name: String,
    pub total: i64,
    pub invoice: LocalInvoice,
    pub last_code: Option<String>,
    pub last_message: Option<String>,
    pub contingency: bool,
    pub deadline_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub validated_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub from: Option<String>,
    pub to: String,
    pub attempt: u32,
    pub code: Option<String>,
    pub message: String,
    pub actor: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceCounts {
    /// Indexed like [`Status::ALL`].
    pub by_status: Vec<(Status, u64)>,
    pub total: u64,
    pub oldest_active_ms: Option<i64>,
    pub earliest_deadline_ms: Option<i64>,
}

impl ComplianceCounts {
    /// Invoices still on their way to DIAN (not validated, failed nor rejected): the
    /// DIAN queue's depth.
    pub fn waiting(&self) -> u64 {
        [
            Status::Pending,
            Status::Retry,
            Status::Unknown,
            Status::Fallback,
            Status::Sent,
        ]
        .into_iter()
        .map(|s| self.get(s))
        .sum()
    }

    /// `{"PENDING": n, …}` for JSON answers.
    pub fn by_name(&self) -> serde_json::Map<String, serde_json::Value> {
        self.by_status
            .iter()
            .map(|(s, n)| (s.name().to_owned(), serde_json::json!(n)))
            .collect()
    }

    pub fn get(&self, s: Status) -> u64 {
        self.by_status
            .iter()
            .find(|(x, _)| *x == s)
            .map_or(0, |(_, n)| *n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    Sent,
    Unknown,
    Validated,
    Retry,
    Failed,
    Rejected,
    Fallback,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Sent,
        Status::Unknown,
        Status::Retry,
        Status::Fallback,
        Status::Failed,
        Status::Rejected,
        Status::Validated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Sent => "SENT",
            Status::Unknown => "UNKNOWN",
            Status::Validated => "VALIDATED",
            Status::Retry => "RETRY",
            Status::Failed => "FAILED",
            Status::Rejected => "REJECTED",
            Status::Fallback => "FALLBACK",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|x| x.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The engine works on it by itself (as opposed to done, or waiting for a person).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Status::Pending | Status::Sent | Status::Unknown | Status::Retry | Status::Fallback
        )
    }

    /// An operator may send it again.
    pub fn is_retryable_by_operator(self) -> bool {
        matches!(self, Status::Failed | Status::Rejected | Status::Retry)
    }

    /// A symbol that reads without colour.
    pub fn symbol(self) -> &'static str {
        match self {
            Status::Pending => "…",
            Status::Sent => "→",
            Status::Unknown => "?",
            Status::Validated => "✓",
            Status::Retry => "↻",
            Status::Failed => "✗",
            Status::Rejected => "⊘",
            Status::Fallback => "⚑",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A provider or DIAN code in words, for the operator.
pub fn explain(code: &str) -> &'static str {
    match code {
        "EPR503" => {
            "DIAN did not answer in time (timeout or outage); the document may have been accepted anyway"
        }
        "EPR500" => {
            "communication error between Alegra and DIAN; the document may have been accepted anyway"
        }
        "AEP2011" => "DIAN is already processing this document; its answer is awaited",
        "AEP6009" | "AEP6011" => {
            "the invoice numbering was rejected (prefix or range not authorised, or expired): fix the resolution in Alegra"
        }
        "AEP1005" => "the digital signature certificate has expired: renew it in Alegra",
        "00" => "accepted by DIAN",
        "90" => "DIAN had already processed this document: it counts as accepted",
        "98" => "DIAN is still processing the document",
        "99" => {
            "DIAN rejected the document (rule errors listed); it needs a fix before it is sent again"
        }
        "401" => "Alegra refused the credentials (alegra.email / alegra.token)",
        "429" => "Alegra's rate limit was reached; the request was not processed",
        _ => "",
    }
}

/// The DIAN rule a rejection names, from its message (`… Regla: FAJ43b, Rechazo: …`):
/// the rule's code and DIAN's own words.
pub fn dian_rule(message: &str) -> Option<(&str, &str)> {
    let at = message.find("Regla:")?;
    let rest = message[at + "Regla:".len()..].trim_start();
    let (code, words) = rest.split_once(',').unwrap_or((rest, ""));
    let words = words.trim();
    let words = words
        .split_once(':')
        .map_or(words, |(_, w)| w)
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let code = code.trim();
    (!code.is_empty()).then_some((code, words))
}

/// What fixes a rejection by DIAN rule `code`: what the rule checks, in words, and
/// where the data it judged comes from. A retry alone reads the same rejection (the
/// document at Alegra is what DIAN judged): the data must change first.
pub fn rule_fix(code: &str) -> (&'static str, &'static str) {
    match code {
        "FAJ43b" => (
            "the buyer's name is not the name registered in the RUT",
            "correct the customer's name (or legal name) in Stripe to the one in the buyer's RUT, and the same on the document at Alegra, then retry it",
        ),
        "FAJ44b" => (
            "the buyer's NIT is not registered in the RUT",
            "correct the customer's tax id (NIT) in Stripe, and on the document at Alegra, then retry it",
        ),
        "FAU14" => (
            "the invoice total is not the sum of its lines",
            "check the Stripe invoice's line amounts, discounts and taxes (the total is computed from them), correct the document at Alegra, then retry it",
        ),
        "FAD09e" => (
            "the issue date is later than the validation date",
            "check this machine's clock and time zone, and the document's issue date at Alegra, then retry it",
        ),
        "FAK24" => (
            "the buyer's e-mail is missing",
            "add the customer's e-mail in Stripe, and on the document at Alegra, then retry it",
        ),
        _ => (
            "DIAN refused the document's data",
            "fix what DIAN's words name at its source (the Stripe invoice or customer) and on the document at Alegra, then retry it",
        ),
    }
}

/// The local invoice: everything needed to send it again, durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalInvoice {
    pub stripe_id: String,
    pub stripe_number: Option<String>,
    pub buyer_id: String,
    pub buyer_name: String,
    pub lines: Vec<Line>,
    pub taxes: Vec<Tax>,
    pub subtotal: i64,
    pub iva: i64,
    pub inc: i64,
    pub ica: i64,
    pub total: i64,
    /// `invoice` or `credit_note` (credit notes never take the contingency path).
    pub kind: String,
}

impl LocalInvoice {
    /// One line of COP 100.00 with IVA 19 % to a company buyer: a fixture for tests and
    /// examples (`kind`: `invoice` or `credit_note`).
    pub fn example(stripe_id: &str, kind: &str) -> Self {
        Self {
            stripe_id: stripe_id.into(),
            stripe_number: None,
            buyer_id: "900123456".into(),
            buyer_name: "Buyer SAS".into(),
            lines: vec![Line {
                product: None,
                item_id: None,
                description: "Café".into(),
                quantity: 1,
                unit: 10_000,
            }],
            taxes: vec![Tax {
                name: "IVA".into(),
                percent: 19,
            }],
            subtotal: 10_000,
            iva: 1_900,
            inc: 0,
            ica: 0,
            total: 11_900,
            kind: kind.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product: Option<String>,
    /// The QuickBooks Item the product maps to (through the catalog mapping), if synced.
    pub item_id: Option<String>,
    pub description: String,
    pub quantity: i64,
    /// Unit price in cents.
    pub unit: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tax {
    /// `IVA`, `INC` or `ICA`.
    pub name: String,
    pub percent: u32,
}

/// Alegra's rate-limit window as its headers last told it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateWindow {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
    /// When those headers came (unix ms; 0 from an engine that did not say): with no
    /// call since (an open circuit, a pause), the reset counts down from here, and once
    /// it has passed the figures are only what was last seen.
    #[serde(default)]
    pub seen_at_ms: i64,
}

impl RateWindow {
    /// The window's reset at `now_ms`: `Some(ms left)` while it is ahead, `None` once it
    /// has passed (what is left now is unknown until the next answer). An engine that
    /// did not say when it saw the headers gives them as they were.
    pub fn reset_in_ms(&self, now_ms: i64) -> Option<i64> {
        let reset = i64::try_from(self.reset_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        if self.seen_at_ms == 0 {
            return Some(reset);
        }
        let left = self.seen_at_ms.saturating_add(reset) - now_ms;
        (left > 0).then_some(left)
    }
}

/// The contingency procedure as the console shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContingencyView {
    /// NORMAL, PROBING or OUTAGE.
    #[serde(deserialize_with = "contingency_phase")]
    pub phase: Word,
    pub failures: u32,
    pub probes: u32,
    pub probe_interval_ms: i64,
    /// When DIAN stopped answering (first failed transmission).
    pub since_ms: Option<i64>,
    pub confirmed_at_ms: Option<i64>,
    pub next_probe_ms: Option<i64>,
    pub restored_at_ms: Option<i64>,
    pub evidence: Vec<Evidence>,
}

/// One failed transmission kept as evidence of the outage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub at_ms: i64,
    pub code: String,
    pub message: String,
}

/// The words [`ContingencyView::phase`] takes ("" before the first snapshot).
fn contingency_phase<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    one_of(d, &["", "NORMAL", "PROBING", "OUTAGE"])
}
