//! What a [`Query`](super::Query) answers: reads a front-end asks of the engine for
//! itself (the invoice it has open), answered to whoever asked, never through the
//! shared snapshot.

use serde::{Deserialize, Serialize};

use super::command::CommandError;
use super::invoices::InvoiceDetail;

/// The answer to one query, in the shape of the query that asked it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    /// [`Query::InvoiceDetail`](super::Query::InvoiceDetail): the record, its full
    /// history and the body Alegra is (or would be) sent.
    InvoiceDetail(Box<InvoiceDetail>),
}

/// What a query returns to whoever sent it: the answer, or why not
/// ([`CommandError::NotFound`] for an unknown invoice, [`CommandError::Unavailable`]
/// when the engine cannot read or no longer runs).
pub type QueryReply = Result<Answer, CommandError>;
