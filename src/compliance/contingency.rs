//! DIAN's contingency procedure as a pure state machine (time passed in).
//!
//! ```text
//! NORMAL ─a transmission fails for DIAN (EPR503/EPR500)─▶ PROBING (1 of N)
//! PROBING ─probe fails, ≥ interval after the last counted one─▶ PROBING (k of N)
//!         ─the N-th failure─▶ OUTAGE (confirmed: invoices go FALLBACK)
//!         ─DIAN answers─▶ NORMAL (no outage)
//! OUTAGE  ─a probe reaches DIAN─▶ NORMAL, restored at t: FALLBACK invoices are
//!          transmitted by t + deadline, oldest deadline first
//! ```
//!
//! While PROBING or OUTAGE, sends are held (no attempt of the retry schedule is spent
//! on a DIAN that is down); one probe transmission goes out every interval. The
//! failures that confirmed the outage are kept as evidence, as the procedure asks.

pub use crate::protocol::Evidence;
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContingencyConfig {
    /// Failed transmissions, `probe_interval_ms` apart, that confirm an outage (DIAN: 4).
    pub probes: u32,
    /// DIAN: 20 s.
    pub probe_interval_ms: i64,
    /// From restoration to the transmission deadline (DIAN: 48 h).
    pub deadline_ms: i64,
}

impl Default for ContingencyConfig {
    fn default() -> Self {
        Self {
            probes: 4,
            probe_interval_ms: 20_000,
            deadline_ms: 48 * 3_600_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Normal,
    Probing {
        failures: u32,
        first_at: i64,
        last_failure_at: i64,
        next_probe_at: i64,
    },
    Outage {
        since: i64,
        confirmed_at: i64,
        next_probe_at: i64,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Normal => "NORMAL",
            Phase::Probing { .. } => "PROBING",
            Phase::Outage { .. } => "OUTAGE",
        }
    }
}

/// What changed, for the audit trail and the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A transmission failed for DIAN: probing begins.
    Suspected,
    /// A probe failed (k of N), not yet confirmed.
    ProbeFailed { failures: u32 },
    /// N failures, `interval` apart: the outage is confirmed (since the first one).
    Confirmed { since: i64 },
    /// DIAN answered before the outage was confirmed.
    Cleared,
    /// DIAN answered after a confirmed outage: contingency invoices are due by `deadline`.
    Restored { at: i64, deadline: i64 },
}

const EVIDENCE_KEPT: usize = 16;

#[derive(Debug, Clone)]
pub struct Monitor {
    cfg: ContingencyConfig,
    phase: Phase,
    evidence: VecDeque<Evidence>,
    restored_at: Option<i64>,
}

impl Monitor {
    pub fn new(cfg: ContingencyConfig) -> Self {
        Self {
            cfg,
            phase: Phase::Normal,
            evidence: VecDeque::new(),
            restored_at: None,
        }
    }

    /// A monitor for a process that starts with contingency invoices still waiting for
    /// DIAN (the previous run saw the outage and never its end): probing at once.
    pub fn resume_outage(cfg: ContingencyConfig, since: i64, now: i64) -> Self {
        Self {
            phase: Phase::Outage {
                since,
                confirmed_at: now,
                next_probe_at: now,
            },
            ..Self::new(cfg)
        }
    }

    pub fn config(&self) -> &ContingencyConfig {
        &self.cfg
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn evidence(&self) -> impl Iterator<Item = &Evidence> {
        self.evidence.iter()
    }

    pub fn restored_at(&self) -> Option<i64> {
        self.restored_at
    }

    /// Sends wait (only reads and one probe per interval go out).
    pub fn holds_sends(&self) -> bool {
        self.phase != Phase::Normal
    }

    pub fn in_outage(&self) -> bool {
        matches!(self.phase, Phase::Outage { .. })
    }

    /// When the next probe may go out (None: no probing).
    pub fn next_probe_at(&self) -> Option<i64> {
        match self.phase {
            Phase::Normal => None,
            Phase::Probing { next_probe_at, .. } | Phase::Outage { next_probe_at, .. } => {
                Some(next_probe_at)
            }
        }
    }

    pub fn probe_due(&self, now: i64) -> bool {
        self.next_probe_at().is_some_and(|at| now >= at)
    }

    /// A probe left: the next one waits a full interval.
    pub fn probe_sent(&mut self, now: i64) {
        let next = now + self.cfg.probe_interval_ms;
        match &mut self.phase {
            Phase::Normal => {}
            Phase::Probing { next_probe_at, .. } | Phase::Outage { next_probe_at, .. } => {
                *next_probe_at = next
            }
        }
    }

    /// A transmission failed because DIAN did not answer (EPR503, EPR500).
    pub fn dian_failed(&mut self, now: i64, code: &str, message: &str) -> Option<Event> {
        let interval = self.cfg.probe_interval_ms;
        let keep = |m: &mut Self| {
            if m.evidence.len() == EVIDENCE_KEPT {
                m.evidence.pop_front();
            }
            m.evidence.push_back(Evidence {
                at_ms: now,
                code: code.to_owned(),
                message: message.to_owned(),
            });
        };
        if self.cfg.probes == 0 {
            return None; // the contingency path is turned off
        }
        match self.phase {
            Phase::Normal => {
                self.evidence.clear();
                keep(self);
                self.phase = Phase::Probing {
                    failures: 1,
                    first_at: now,
                    last_failure_at: now,
                    next_probe_at: now + interval,
                };
                if self.cfg.probes <= 1 {
                    return self.confirm(now, now);
                }
                Some(Event::Suspected)
            }
            Phase::Probing {
                failures,
                first_at,
                last_failure_at,
                ..
            } => {
                // Failures of sends already in flight together are one attempt, not many:
                // the procedure's attempts are an interval apart.
                if now - last_failure_at < interval {
                    return None;
                }
                keep(self);
                let failures = failures + 1;
                if failures >= self.cfg.probes {
                    return self.confirm(first_at, now);
                }
                self.phase = Phase::Probing {
                    failures,
                    first_at,
                    last_failure_at: now,
                    next_probe_at: now + interval,
                };
                Some(Event::ProbeFailed { failures })
            }
            Phase::Outage { .. } => {
                keep(self);
                None
            }
        }
    }

    fn confirm(&mut self, since: i64, now: i64) -> Option<Event> {
        self.phase = Phase::Outage {
            since,
            confirmed_at: now,
            next_probe_at: now + self.cfg.probe_interval_ms,
        };
        Some(Event::Confirmed { since })
    }

    /// A transmission reached DIAN (whatever DIAN said of the document).
    pub fn dian_answered(&mut self, now: i64) -> Option<Event> {
        match self.phase {
            Phase::Normal => None,
            Phase::Probing { .. } => {
                self.phase = Phase::Normal;
                Some(Event::Cleared)
            }
            Phase::Outage { .. } => {
                self.phase = Phase::Normal;
                self.restored_at = Some(now);
                Some(Event::Restored {
                    at: now,
                    deadline: now + self.cfg.deadline_ms,
                })
            }
        }
    }
}

/// The provider codes that mean DIAN itself did not answer: evidence for the
/// contingency procedure (Alegra's codes, so they live with its client).
pub use crate::connectors::alegra::is_dian_unavailable;

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn monitor() -> Monitor {
        Monitor::new(ContingencyConfig {
            probes: 4,
            probe_interval_ms: 20 * S,
            deadline_ms: 48 * 3600 * S,
        })
    }

    #[test]
    fn four_failures_twenty_seconds_apart_confirm_an_outage() {
        let mut m = monitor();
        assert!(!m.holds_sends());
        assert_eq!(m.dian_failed(0, "EPR503", "x"), Some(Event::Suspected));
        assert!(m.holds_sends() && !m.in_outage());
        assert!(!m.probe_due(19 * S));
        assert!(m.probe_due(20 * S));
        m.probe_sent(20 * S);
        assert!(!m.probe_due(21 * S), "one probe per interval");
        assert_eq!(
            m.dian_failed(20 * S, "EPR503", "x"),
            Some(Event::ProbeFailed { failures: 2 })
        );
        assert_eq!(
            m.dian_failed(40 * S, "EPR500", "y"),
            Some(Event::ProbeFailed { failures: 3 })
        );
        assert_eq!(
            m.dian_failed(60 * S, "EPR503", "z"),
            Some(Event::Confirmed { since: 0 })
        );
        assert!(m.in_outage());
        assert_eq!(m.evidence().count(), 4, "the failures are kept as evidence");
        assert_eq!(m.evidence().nth(2).unwrap().code, "EPR500");
    }

    #[test]
    fn failures_closer_than_the_interval_count_once() {
        let mut m = monitor();
        m.dian_failed(0, "EPR503", "x");
        // Sends that were in flight together fail together: still one attempt.
        for t in [10, 500, 19_999] {
            assert_eq!(m.dian_failed(t, "EPR503", "x"), None);
        }
        assert_eq!(
            m.dian_failed(20 * S, "EPR503", "x"),
            Some(Event::ProbeFailed { failures: 2 })
        );
        assert!(!m.in_outage());
    }

    #[test]
    fn an_answer_before_confirmation_clears_without_contingency() {
        let mut m = monitor();
        m.dian_failed(0, "EPR503", "x");
        m.dian_failed(20 * S, "EPR503", "x");
        assert_eq!(m.dian_answered(30 * S), Some(Event::Cleared));
        assert!(!m.holds_sends());
        assert_eq!(m.restored_at(), None);
        // A new failure starts the count again.
        assert_eq!(m.dian_failed(31 * S, "EPR503", "x"), Some(Event::Suspected));
    }

    #[test]
    fn restoration_sets_the_deadline_48_hours_later() {
        let mut m = monitor();
        for t in [0, 20, 40, 60] {
            m.dian_failed(t * S, "EPR503", "x");
        }
        assert!(m.in_outage());
        // Failures during the outage are evidence, nothing more.
        assert_eq!(m.dian_failed(80 * S, "EPR503", "x"), None);
        let at = 3600 * S;
        assert_eq!(
            m.dian_answered(at),
            Some(Event::Restored {
                at,
                deadline: at + 48 * 3600 * S
            })
        );
        assert!(!m.holds_sends());
        assert_eq!(m.dian_answered(at + 1), None);
    }

    #[test]
    fn zero_probes_turn_the_procedure_off() {
        let mut m = Monitor::new(ContingencyConfig {
            probes: 0,
            ..ContingencyConfig::default()
        });
        assert_eq!(m.dian_failed(0, "EPR503", "x"), None);
        assert!(!m.holds_sends());
    }

    #[test]
    fn a_restarted_outage_probes_at_once() {
        let m = Monitor::resume_outage(ContingencyConfig::default(), 5, 100);
        assert!(m.in_outage() && m.probe_due(100));
    }

    #[test]
    fn only_dian_codes_are_evidence() {
        assert!(is_dian_unavailable(Some("EPR503")));
        assert!(is_dian_unavailable(Some("EPR500")));
        assert!(!is_dian_unavailable(Some("429")));
        assert!(!is_dian_unavailable(Some("AEP2011")));
        assert!(!is_dian_unavailable(None));
    }
}
