//! An incident bundle as a [`Link`]: `syncctl bundle show FILE` draws the console's
//! screens over the bundle's snapshot, frozen as it was taken. There is no engine:
//! every command is refused with a message that says so, reads (the audit trail, an
//! invoice) are answered from what the bundle holds. Speaks the protocol only.

use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use crate::protocol::{
    Answer, AuditFilter, Bundle, CommandError, Disconnected, InvoiceDetail, Link, LinkState, Query,
    QueryReply, Reply, Request, Snapshot,
};

/// A bundle opened from a file.
pub struct FrozenBundle {
    bundle: Arc<Bundle>,
    file: String,
    // Held so that the snapshot never "changes" to a stopped engine.
    snapshot: watch::Sender<Arc<Snapshot>>,
    state: watch::Sender<LinkState>,
}

impl FrozenBundle {
    /// Reads and checks the bundle at `path`; the error names the file and what is
    /// wrong with it.
    pub fn open(path: &std::path::Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let bundle = Bundle::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::new(bundle, path.display().to_string()))
    }

    /// `bundle`, as read from `file`.
    pub fn new(bundle: Bundle, file: String) -> Self {
        let state = LinkState::Bundle {
            file: file.clone(),
            written_ms: bundle.written_ms,
            about: bundle.describe(),
        };
        FrozenBundle {
            snapshot: watch::Sender::new(Arc::new(bundle.snapshot.clone())),
            state: watch::Sender::new(state),
            bundle: Arc::new(bundle),
            file,
        }
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Why nothing can be done to a bundle.
    fn refusal(&self) -> CommandError {
        CommandError::Forbidden {
            reason: format!(
                "{} is an incident bundle, frozen as it was taken: there is no engine to act on",
                self.file
            ),
        }
    }

    fn answer(&self, query: Query) -> QueryReply {
        let s = &self.bundle.snapshot;
        match query {
            Query::Audit { filter } => Ok(Answer::Audit {
                entries: filter.apply(&s.audit),
            }),
            Query::Invoices {
                status,
                search,
                limit,
            } => {
                // As the live store searches: number, Stripe id or CUFE, trimmed, any case.
                let q = search.trim().to_lowercase();
                let invoices = s
                    .compliance
                    .invoices
                    .iter()
                    .filter(|r| status.is_none_or(|st| r.status == st))
                    .filter(|r| {
                        q.is_empty()
                            || [Some(&r.stripe_id), Some(&r.number), r.cufe.as_ref()]
                                .into_iter()
                                .flatten()
                                .any(|f| f.to_lowercase().contains(&q))
                    })
                    .take(limit)
                    .cloned()
                    .collect();
                Ok(Answer::Invoices { invoices })
            }
            Query::InvoiceDetail { key } => {
                let record = s
                    .compliance
                    .invoices
                    .iter()
                    .find(|r| {
                        r.stripe_id == key || r.number == key || r.cufe.as_deref() == Some(&key)
                    })
                    .cloned()
                    .ok_or_else(|| CommandError::not_found(format!("invoice {key:?}")))?;
                let history = s
                    .audit
                    .iter()
                    .filter(|e| e.entity == record.stripe_id || e.entity == record.number)
                    .count();
                Ok(Answer::InvoiceDetail(Box::new(InvoiceDetail {
                    record,
                    history: Vec::new(),
                    payload: format!(
                        "(an incident bundle keeps the queue, not each invoice's payload; the Events screen holds {history} entries about it)"
                    ),
                })))
            }
            Query::WhatIf { name, .. } => Err(CommandError::conflict(format!(
                "{} is an incident bundle: there is no history to replay {name} over",
                self.file
            ))),
            Query::AuditCount { filter } => Ok(Answer::AuditCount {
                total: AuditFilter {
                    limit: 0,
                    before_id: None,
                    ..filter
                }
                .apply(&s.audit)
                .len() as u64,
            }),
            Query::Reconciliation { .. } => Err(CommandError::conflict(format!(
                "{} is an incident bundle: its reconciliation is what its snapshot shows",
                self.file
            ))),
            Query::Chain { key } => Err(CommandError::conflict(format!(
                "{} is an incident bundle: it keeps no store to follow {key:?}'s chain through",
                self.file
            ))),
            Query::Preview { command } => Err(CommandError::conflict(format!(
                "{} is an incident bundle: `{command}` would act on nothing",
                self.file
            ))),
            // A copy of the bundle itself (`B` in a bundle writes it again).
            Query::Bundle { .. } => Ok(Answer::Bundle(Box::new((*self.bundle).clone()))),
        }
    }
}

impl Link for FrozenBundle {
    fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    async fn send(&self, _request: Request) -> Result<oneshot::Receiver<Reply>, Disconnected> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(self.refusal()));
        Ok(rx)
    }

    async fn query(&self, query: Query) -> Result<oneshot::Receiver<QueryReply>, Disconnected> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(self.answer(query));
        Ok(rx)
    }

    async fn shutdown(&mut self) {}

    fn state(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{InvoiceRecord, LocalInvoice, Status};

    fn invoice(stripe_id: &str, number: &str, cufe: Option<&str>) -> InvoiceRecord {
        InvoiceRecord {
            stripe_id: stripe_id.into(),
            number: number.into(),
            kind: "invoice".into(),
            status: Status::Validated,
            attempts: 1,
            next_at_ms: None,
            sending: false,
            alegra_id: None,
            cufe: cufe.map(Into::into),
            issue_date: "2026-11-22".into(),
            buyer_id: "900123456".into(),
            buyer_name: "Buyer SAS".into(),
            total: 11_900,
            invoice: LocalInvoice::example(stripe_id, "invoice"),
            last_code: None,
            last_message: None,
            contingency: false,
            deadline_at_ms: None,
            created_at_ms: 1,
            updated_at_ms: 2,
            validated_at_ms: Some(2),
        }
    }

    /// A bundle's invoices are found as the live store finds them: by number, Stripe
    /// id or CUFE, the search trimmed (a CUFE pasted with its line end) and of any case.
    #[test]
    fn a_bundles_invoice_search_finds_by_cufe_and_trims_the_search() {
        let mut snapshot = Snapshot::default();
        snapshot.compliance.invoices = vec![
            invoice("in_1", "SETP990000001", Some("ab12cd")),
            invoice("in_2", "SETP990000002", None),
        ];
        let bundle = Bundle {
            format: crate::protocol::BUNDLE_FORMAT,
            version: "syncctl test".into(),
            written_ms: 2,
            started_ms: 1,
            uptime_secs: 1,
            taken_by: "ops".into(),
            snapshot,
            transitions: Vec::new(),
            journal: Vec::new(),
            series: Vec::new(),
            config: String::new(),
        };
        let frozen = FrozenBundle::new(bundle, "incident.json.gz".into());
        let found = |search: &str| match frozen.answer(Query::Invoices {
            status: None,
            search: search.into(),
            limit: 10,
        }) {
            Ok(Answer::Invoices { invoices }) => invoices
                .into_iter()
                .map(|r| r.stripe_id)
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(found("AB12CD\n"), ["in_1"], "by CUFE, trimmed, any case");
        assert_eq!(found(" setp990000002 "), ["in_2"]);
        assert_eq!(found("IN_"), ["in_1", "in_2"]);
        assert!(found("zz").is_empty());
    }
}
