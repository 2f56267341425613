//! What a [`Query`](super::Query) answers: reads a front-end asks of the engine for
//! itself (the invoice it has open), answered to whoever asked, never through the
//! shared snapshot.

use serde::{Deserialize, Serialize};

use super::casefold::fold;
use super::command::CommandError;
use super::invoices::{InvoiceDetail, InvoiceRecord};
use super::snapshot::AuditEntry;

/// The answer to one query, in the shape of the query that asked it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    /// [`Query::InvoiceDetail`](super::Query::InvoiceDetail): the record, its full
    /// history and the body Alegra is (or would be) sent.
    InvoiceDetail(Box<InvoiceDetail>),
    /// [`Query::Invoices`](super::Query::Invoices): the records found.
    Invoices { invoices: Vec<InvoiceRecord> },
    /// [`Query::Audit`](super::Query::Audit): the entries found.
    Audit { entries: Vec<AuditEntry> },
    /// [`Query::AuditCount`](super::Query::AuditCount): how many entries match.
    AuditCount { total: u64 },
    /// [`Query::Bundle`](super::Query::Bundle): the incident bundle.
    Bundle(Box<super::bundle::Bundle>),
    /// [`Query::WhatIf`](super::Query::WhatIf): the firings with the proposed value.
    WhatIf(super::thresholds::WhatIf),
    /// [`Query::Reconciliation`](super::Query::Reconciliation): counts, amounts and
    /// the rows asked for.
    Reconciliation(Box<super::reconcile::ReconciliationView>),
    /// [`Query::Chain`](super::Query::Chain): everything linked to what was asked.
    Chain(Box<EntityChain>),
    /// [`Query::Preview`](super::Query::Preview): what the command would do.
    Preview(Box<super::preview::ImpactPreview>),
}

/// One entity's chain across the systems: Stripe product → QuickBooks Item → the
/// invoices that use it → their Alegra documents → DIAN's verdict and CUFE (or, asked
/// for an invoice, the same chain from its products on).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityChain {
    /// What was asked for, as given.
    pub asked: String,
    pub links: Vec<ChainLink>,
    /// Invoices using the product beyond those listed (the chain lists the newest).
    #[serde(default)]
    pub more_invoices: u64,
    /// Other things the key names, and how to ask for them (`:chain item:3`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
}

/// One link of a chain: one object in one system.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainLink {
    /// `stripe product`, `quickbooks item`, `stripe invoice`, `alegra document`, `dian`.
    pub system: String,
    pub id: String,
    /// How deep in the chain (0 for its start), for indenting.
    pub depth: u8,
    /// What the engine knows of it, as (field, value) pairs.
    pub facts: Vec<(String, String)>,
    /// Where two systems disagree on a field, as far as the engine has recorded them.
    pub disagreements: Vec<FieldDiff>,
    /// The audit trail's entries about it, newest first.
    pub events: Vec<AuditEntry>,
}

/// A field two systems hold different values of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDiff {
    pub field: String,
    /// The value on this link's side, and the other side's (named in `against`).
    pub here: String,
    pub there: String,
    pub against: String,
}

impl FieldDiff {
    /// One line naming both sides: `≠ price: 13.50 in quickbooks item · 398 000.00 in
    /// Stripe (live)`, where `system` is the link's.
    pub fn describe(&self, system: &str) -> String {
        format!(
            "≠ {}: {} in {system} · {} in {}",
            self.field, self.here, self.there, self.against
        )
    }
}

/// Which audit entries to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditFilter {
    /// `kind` equals one of these (any when empty).
    pub kinds: Vec<String>,
    /// `entity` equals this.
    pub entity: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Entries with a smaller id (paging backwards).
    pub before_id: Option<i64>,
    pub limit: usize,
    /// Every word of it appears in the entry's kind, entity, actor or message
    /// (case-insensitive): the console's `/` filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl AuditFilter {
    /// Its text as the API takes it: at most [`MAX_TEXT`](super::command::MAX_TEXT)
    /// characters, none a control character (a NUL would cut the text index's query
    /// short: a store error, not a clear refusal).
    pub fn check(&self) -> Result<(), CommandError> {
        match &self.text {
            Some(t) => super::command::bounded_text("text", t),
            None => Ok(()),
        }
    }

    /// The entries of `audit` (newest first) this filter keeps, its page of them (all
    /// when `limit` is 0): what a store's query answers, over entries in hand.
    pub fn apply(&self, audit: &[AuditEntry]) -> Vec<AuditEntry> {
        let words = self.text.as_deref().map(filter_words).unwrap_or_default();
        audit
            .iter()
            .filter(|e| self.kinds.is_empty() || self.kinds.contains(&e.kind))
            .filter(|e| self.entity.as_ref().is_none_or(|x| *x == e.entity))
            .filter(|e| self.since_ms.is_none_or(|t| e.at_ms >= t))
            .filter(|e| self.until_ms.is_none_or(|t| e.at_ms < t))
            .filter(|e| self.before_id.is_none_or(|id| e.id < id))
            .filter(|e| has_words(e, &words))
            .take(if self.limit == 0 {
                usize::MAX
            } else {
                self.limit
            })
            .cloned()
            .collect()
    }
}

/// The words of an [`AuditFilter::text`], folded.
pub fn filter_words(text: &str) -> Vec<String> {
    text.split_whitespace().map(fold).collect()
}

/// Whether every word (folded, see [`filter_words`]) appears in what is shown of the
/// entry (its kind, entity, actor and message), folded as the store compares them.
pub fn has_words(e: &AuditEntry, words: &[String]) -> bool {
    words.is_empty() || {
        let hay = fold(&format!(
            "{} {} {} {}",
            e.kind, e.entity, e.actor, e.message
        ));
        words.iter().all(|w| hay.contains(w.as_str()))
    }
}

/// What a query returns to whoever sent it: the answer, or why not
/// ([`CommandError::NotFound`] for an unknown invoice, [`CommandError::Unavailable`]
/// when the engine cannot read or no longer runs).
pub type QueryReply = Result<Answer, CommandError>;

#[cfg(test)]
mod tests {
    #[test]
    fn a_filter_text_with_a_control_character_or_too_long_is_refused_naming_it() {
        let f = |t: &str| super::AuditFilter {
            text: Some(t.into()),
            ..Default::default()
        };
        assert!(f("prod_12 created").check().is_ok());
        assert!(super::AuditFilter::default().check().is_ok());
        for bad in ["a\0b", "tab\there", &"x".repeat(201)] {
            let e = f(bad).check().unwrap_err();
            assert!(e.to_string().starts_with("text: "), "{e}");
        }
    }
}
