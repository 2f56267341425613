//! What a [`Query`](super::Query) answers: reads a front-end asks of the engine for
//! itself (the invoice it has open), answered to whoever asked, never through the
//! shared snapshot.

use serde::{Deserialize, Serialize};

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

/// What a query returns to whoever sent it: the answer, or why not
/// ([`CommandError::NotFound`] for an unknown invoice, [`CommandError::Unavailable`]
/// when the engine cannot read or no longer runs).
pub type QueryReply = Result<Answer, CommandError>;
