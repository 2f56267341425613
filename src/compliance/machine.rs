//! The compliance state machine: what an invoice becomes after each answer from
//! Alegra/DIAN. Pure (no I/O, time passed in), so every path is unit-tested.
//!
//! ```text
//! PENDING ─send─▶ VALIDATED | SENT (DIAN still processing) | REJECTED (rule errors)
//!    │              UNKNOWN (no answer: read before any resend) | RETRY | FAILED
//! RETRY ─(schedule)─▶ send again (stamp the existing document when there is one)
//! UNKNOWN ─read─▶ VALIDATED | SENT | REJECTED | RETRY (not there, or unstamped)
//! SENT ─poll─▶ VALIDATED | REJECTED | SENT
//! FAILED / REJECTED ─operator retry─▶ PENDING          FALLBACK: contingency
//! ```

use crate::connectors::alegra::{AlegraError, StampInfo};
pub use crate::protocol::{Status, explain};

/// What the machine decided: the next status, when to look again, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub to: Status,
    /// Milliseconds from now until the engine acts on it again (None: it will not).
    pub after_ms: Option<i64>,
    pub code: Option<String>,
    pub message: String,
    /// An attempt that never reached the provider is given back.
    pub refund_attempt: bool,
}

impl Decision {
    pub fn new(to: Status, after_ms: Option<i64>, code: Option<&str>, message: String) -> Self {
        Self {
            to,
            after_ms,
            code: code.map(str::to_owned),
            message,
            refund_attempt: false,
        }
    }
}

/// The retry schedule and polling period.
#[derive(Debug, Clone)]
pub struct Policy {
    pub schedule_ms: Vec<i64>,
    pub poll_ms: i64,
}

impl Policy {
    /// RETRY after the wait for `attempts` sends so far, or FAILED once the schedule
    /// is spent (the first send, then one retry per entry of the schedule).
    pub fn retry_or_fail(&self, attempts: u32, code: Option<&str>, why: &str) -> Decision {
        match self.schedule_ms.get(attempts.saturating_sub(1) as usize) {
            Some(&wait) => Decision::new(
                Status::Retry,
                Some(wait),
                code,
                format!(
                    "{why}; retry {} of {} in {}",
                    attempts,
                    self.schedule_ms.len(),
                    human(wait)
                ),
            ),
            None => Decision::new(
                Status::Failed,
                None,
                code,
                format!("{why}; {attempts} attempts spent, needs an operator"),
            ),
        }
    }

    /// After DIAN's answer (from a send, a poll or a read).
    pub fn on_stamp(&self, stamp: &StampInfo) -> Decision {
        let first = |v: &[String]| v.first().cloned().unwrap_or_default();
        match stamp.legal_status.as_str() {
            "STAMPED_AND_ACCEPTED" => Decision::new(
                Status::Validated,
                None,
                Some("00"),
                "accepted by DIAN".into(),
            ),
            "STAMPED_AND_ACCEPTED_WITH_OBSERVATIONS" => Decision::new(
                Status::Validated,
                None,
                Some("00"),
                format!(
                    "accepted by DIAN with observations: {}",
                    stamp.warnings.join("; ")
                ),
            ),
            "STAMPED_AND_WAITING_RESPONSE" => Decision::new(
                Status::Sent,
                Some(self.poll_ms),
                Some("98"),
                "DIAN is still processing it".into(),
            ),
            "STAMPED_AND_REJECTED" if stamp.errors.iter().any(|e| is_rule_90(e)) => Decision::new(
                Status::Validated,
                None,
                Some("90"),
                "DIAN had already processed this document (rule 90): accepted".into(),
            ),
            "STAMPED_AND_REJECTED" => Decision::new(
                Status::Rejected,
                None,
                Some("99"),
                format!("rejected by DIAN: {}", {
                    let e = first(&stamp.errors);
                    if e.is_empty() {
                        "no rule given".to_owned()
                    } else {
                        stamp.errors.join("; ")
                    }
                }),
            ),
            other => Decision::new(
                Status::Unknown,
                Some(self.poll_ms),
                None,
                format!("unexpected legal status {other:?}; will read it again"),
            ),
        }
    }

    /// After a send (create+stamp, or stamp of an existing document) that failed.
    /// `attempts` counts this send.
    pub fn on_send_error(&self, e: &AlegraError) -> Decision {
        match e {
            AlegraError::Rejected {
                message,
                retry_in_ms,
            } => Decision {
                refund_attempt: true,
                ..Decision::new(
                    Status::Retry,
                    Some((*retry_in_ms as i64).max(1000)),
                    None,
                    format!("not sent: {message}"),
                )
            },
            AlegraError::Api {
                status: 429,
                retry_after,
                ..
            } => Decision {
                refund_attempt: true,
                ..Decision::new(
                    Status::Retry,
                    Some(
                        retry_after
                            .map_or(60_000, |d| d.as_millis() as i64)
                            .max(1000),
                    ),
                    Some("429"),
                    "Alegra's rate limit: not processed".into(),
                )
            },
            AlegraError::Api { code, .. } if code == "AEP2011" => Decision::new(
                Status::Sent,
                Some(self.poll_ms),
                Some("AEP2011"),
                explain("AEP2011").to_owned(),
            ),
            e if e.outcome_unknown() => Decision::new(
                Status::Unknown,
                Some(self.poll_ms),
                e.code(),
                format!(
                    "{}: outcome unknown, will read it at Alegra before any resend",
                    describe(e)
                ),
            ),
            e => Decision::new(Status::Failed, None, e.code(), describe(e)),
        }
    }

    /// After reading the provider for an UNKNOWN send: the document found (if any).
    pub fn on_check(&self, attempts: u32, found: Option<&StampInfo>, exists: bool) -> Decision {
        match (exists, found) {
            (true, Some(stamp)) => self.on_stamp(stamp),
            (true, None) => self.retry_or_fail(
                attempts,
                None,
                "the document is at Alegra but DIAN has not stamped it",
            ),
            (false, _) => self.retry_or_fail(
                attempts,
                None,
                "no document at Alegra: the send never arrived",
            ),
        }
    }
}

impl Policy {
    /// RETRY at once.
    pub fn retry_now(&self, why: &str) -> Decision {
        Decision::new(Status::Retry, Some(0), None, why.to_owned())
    }

    /// DIAN did not answer while an outage is suspected (`outage` false) or confirmed:
    /// the attempt is given back. Confirmed, an invoice takes the contingency path
    /// (FALLBACK, held until DIAN is back); a credit note never does, it waits.
    pub fn on_dian_down(
        &self,
        outage: bool,
        credit_note: bool,
        code: Option<&str>,
        recheck_ms: i64,
    ) -> Decision {
        let decision = if outage && !credit_note {
            Decision::new(
                Status::Fallback,
                None,
                code,
                "DIAN outage confirmed: issued in contingency, to be transmitted within the deadline after DIAN is back".into(),
            )
        } else if outage {
            Decision::new(
                Status::Retry,
                Some(recheck_ms),
                code,
                "DIAN is down and credit notes have no contingency path: waiting for DIAN (no attempt spent)".into(),
            )
        } else {
            Decision::new(
                Status::Retry,
                Some(recheck_ms),
                code,
                "DIAN is not answering (confirming an outage): held, no attempt spent".into(),
            )
        };
        Decision {
            refund_attempt: true,
            ..decision
        }
    }
}

pub fn is_rule_90(error: &str) -> bool {
    let e = error.to_lowercase();
    e.contains("regla: 90") || e.contains("procesado anteriormente")
}

fn human(ms: i64) -> String {
    if ms >= 60_000 && ms % 60_000 == 0 {
        format!("{} min", ms / 60_000)
    } else {
        format!("{} s", (ms as f64 / 1000.0).ceil() as i64)
    }
}

fn describe(e: &AlegraError) -> String {
    match e {
        AlegraError::Api { code, message, .. } => {
            let what = explain(code);
            if what.is_empty() {
                crate::connectors::alegra::code_and_message(code, message)
            } else {
                format!("{code}: {what}")
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            schedule_ms: vec![60_000, 300_000, 900_000],
            poll_ms: 5_000,
        }
    }

    fn stamp(status: &str, errors: &[&str]) -> StampInfo {
        StampInfo {
            legal_status: status.into(),
            cufe: Some("c".into()),
            date: None,
            warnings: vec![],
            errors: errors.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn api(status: u16, code: &str) -> AlegraError {
        AlegraError::Api {
            status,
            code: code.into(),
            message: "m".into(),
            retry_after: None,
        }
    }

    #[test]
    fn dian_down_holds_without_spending_and_credit_notes_never_fall_back() {
        let p = policy();
        let suspected = p.on_dian_down(false, false, Some("EPR503"), 20_000);
        assert_eq!(
            (suspected.to, suspected.after_ms, suspected.refund_attempt),
            (Status::Retry, Some(20_000), true)
        );
        let outage = p.on_dian_down(true, false, Some("EPR503"), 20_000);
        assert_eq!((outage.to, outage.after_ms), (Status::Fallback, None));
        assert!(outage.refund_attempt);
        let note = p.on_dian_down(true, true, Some("EPR503"), 20_000);
        assert_eq!(note.to, Status::Retry, "{}", note.message);
        assert!(note.message.contains("credit notes"));
    }

    #[test]
    fn accepted_and_accepted_with_observations_are_validated() {
        let p = policy();
        assert_eq!(
            p.on_stamp(&stamp("STAMPED_AND_ACCEPTED", &[])).to,
            Status::Validated
        );
        assert_eq!(
            p.on_stamp(&stamp("STAMPED_AND_ACCEPTED_WITH_OBSERVATIONS", &[]))
                .to,
            Status::Validated
        );
    }

    #[test]
    fn rule_90_already_processed_counts_as_accepted() {
        let d = policy().on_stamp(&stamp(
            "STAMPED_AND_REJECTED",
            &["Regla: 90, Rechazo: Documento procesado anteriormente."],
        ));
        assert_eq!((d.to, d.code.as_deref()), (Status::Validated, Some("90")));
    }

    #[test]
    fn rule_errors_reject_and_waiting_polls() {
        let p = policy();
        let d = p.on_stamp(&stamp(
            "STAMPED_AND_REJECTED",
            &["Regla: FAJ43b, Rechazo: x"],
        ));
        assert_eq!((d.to, d.after_ms), (Status::Rejected, None));
        assert!(d.message.contains("FAJ43b"));
        let d = p.on_stamp(&stamp("STAMPED_AND_WAITING_RESPONSE", &[]));
        assert_eq!((d.to, d.after_ms), (Status::Sent, Some(5_000)));
    }

    #[test]
    fn a_timeout_or_dian_error_is_unknown_never_a_blind_retry() {
        let p = policy();
        for e in [
            api(503, "EPR503"),
            api(502, "EPR500"),
            AlegraError::Timeout("t".into()),
        ] {
            let d = p.on_send_error(&e);
            assert_eq!(d.to, Status::Unknown, "{e}");
        }
    }

    #[test]
    fn numbering_rejection_needs_an_operator_and_says_why() {
        let d = policy().on_send_error(&api(400, "AEP6009"));
        assert_eq!(d.to, Status::Failed);
        assert!(d.message.contains("numbering"), "{}", d.message);
    }

    #[test]
    fn breaker_and_rate_limit_refusals_give_the_attempt_back() {
        let p = policy();
        let d = p.on_send_error(&AlegraError::Rejected {
            message: "circuit open".into(),
            retry_in_ms: 4_000,
        });
        assert_eq!(
            (d.to, d.after_ms, d.refund_attempt),
            (Status::Retry, Some(4_000), true)
        );
        let d = p.on_send_error(&api(429, "429"));
        assert!(d.refund_attempt);
    }

    #[test]
    fn retries_follow_the_schedule_then_fail() {
        let p = policy();
        let waits: Vec<_> = (1..=4)
            .map(|n| {
                let d = p.on_check(n, None, false);
                (d.to, d.after_ms)
            })
            .collect();
        assert_eq!(
            waits,
            vec![
                (Status::Retry, Some(60_000)),
                (Status::Retry, Some(300_000)),
                (Status::Retry, Some(900_000)),
                (Status::Failed, None)
            ]
        );
    }

    #[test]
    fn a_check_finding_the_accepted_document_validates_without_a_resend() {
        let d = policy().on_check(1, Some(&stamp("STAMPED_AND_ACCEPTED", &[])), true);
        assert_eq!(d.to, Status::Validated);
    }

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.name()), Some(s));
        }
        assert_eq!(Status::parse("failed"), Some(Status::Failed));
    }
}
