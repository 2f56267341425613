//! Impact previews: what a bulk command would do, told before it is run — how many
//! items, how many calls each downstream would be charged (and how many minutes of its
//! quota at the limit in force), how many would be held and why, and what runs first.
//!
//! The engine answers a [`Query::Preview`](super::Query::Preview) with one
//! ([`Answer::Preview`](super::Answer::Preview)); the console shows it in the bulk
//! action's confirmation, the API answers it to `?dry_run=true`, `syncctl ctl …
//! --dry-run` prints it. A preview changes nothing and is not audited (it is a read,
//! asked each time a confirmation opens); the real run's audit line carries the same
//! estimate, from the same code, so what was expected stays next to what was done.
//!
//! A call here is what the downstream's quota is charged: a QuickBooks batch of N
//! operations counts N (the requests themselves may be fewer, up to 30 operations each).

use std::fmt::{self, Display};

use serde::{Deserialize, Serialize};

/// Items a preview names as running first, at most.
pub const PREVIEW_FIRST: usize = 5;

/// What a bulk command would do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImpactPreview {
    /// The command, in the grammar (`retry-failed-jobs`).
    pub command: String,
    /// How many items it acts on.
    pub items: u64,
    /// What the items are (`failed catalog jobs`, `invoices`, `cache entries`).
    pub noun: String,
    /// Calls per downstream it would cost (downstreams it costs nothing are left out).
    pub calls: Vec<DownstreamCost>,
    /// Items that would wait instead of running (a circuit open, a paused pipeline).
    pub held: u64,
    /// Why they would wait, one sentence each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_why: Vec<String>,
    /// Work already queued that runs before these.
    pub ahead: u64,
    /// The first items to run, in order (at most [`PREVIEW_FIRST`]).
    pub first: Vec<String>,
    /// What the estimate cannot know, one sentence each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What one downstream would be charged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DownstreamCost {
    /// `stripe`, `quickbooks`, `alegra`.
    pub service: String,
    /// Calls its quota is charged (a batch operation counts as one).
    pub calls: u64,
    /// The limit in force, calls a minute (0: not limited).
    pub rate_per_min: u32,
    /// Minutes those calls take at that limit (0 when not limited).
    pub minutes: f64,
    /// Its circuit's state now (`CLOSED`, `FORCED_OPEN`…).
    pub circuit: String,
}

impl DownstreamCost {
    /// `calls` to `service`, at `rate_per_min`, its circuit in `circuit`.
    pub fn new(service: &str, calls: u64, rate_per_min: u32, circuit: &str) -> Self {
        let minutes = if rate_per_min == 0 {
            0.0
        } else {
            calls as f64 / f64::from(rate_per_min)
        };
        DownstreamCost {
            service: service.to_owned(),
            calls,
            rate_per_min,
            minutes,
            circuit: circuit.to_owned(),
        }
    }
}

impl ImpactPreview {
    /// Calls to `service` (0 when it costs none).
    pub fn calls_to(&self, service: &str) -> u64 {
        self.calls
            .iter()
            .find(|c| c.service == service)
            .map_or(0, |c| c.calls)
    }

    /// Every call, all downstreams together.
    pub fn total_calls(&self) -> u64 {
        self.calls.iter().map(|c| c.calls).sum()
    }

    /// One line per downstream: `quickbooks 60 calls, ≈ 0.1 min at 500/min`.
    pub fn cost_lines(&self) -> Vec<String> {
        if self.calls.is_empty() {
            return vec!["no API calls".into()];
        }
        self.calls
            .iter()
            .map(|c| {
                let open = matches!(c.circuit.as_str(), "OPEN" | "FORCED_OPEN");
                let circuit = if open {
                    format!(" (circuit {})", c.circuit)
                } else {
                    String::new()
                };
                if c.rate_per_min == 0 {
                    format!("{} {} calls{circuit}", c.service, c.calls)
                } else {
                    format!(
                        "{} {} calls, {} at {}/min{circuit}",
                        c.service,
                        c.calls,
                        minutes(c.minutes),
                        c.rate_per_min
                    )
                }
            })
            .collect()
    }

    /// `held 3: the quickbooks circuit is FORCED_OPEN` or `held 0`.
    pub fn held_line(&self) -> String {
        if self.held == 0 {
            "held 0".into()
        } else {
            format!("held {}: {}", self.held, self.held_why.join("; "))
        }
    }

    /// `first prod_1, prod_2, … (after 4 queued)`, or None with nothing to run.
    pub fn first_line(&self) -> Option<String> {
        self.first_line_of(PREVIEW_FIRST)
    }

    /// [`Self::first_line`] naming at most `n` items.
    pub fn first_line_of(&self, n: usize) -> Option<String> {
        if self.first.is_empty() {
            return None;
        }
        let shown = &self.first[..n.min(self.first.len())];
        let more = if self.items > shown.len() as u64 {
            ", …"
        } else {
            ""
        };
        let after = if self.ahead > 0 {
            format!(" (after {} already queued)", self.ahead)
        } else {
            String::new()
        };
        Some(format!("first {}{more}{after}", shown.join(", ")))
    }

    /// The estimate as the real run's audit line ends: `est. quickbooks 12, stripe 12
    /// calls; held 0`.
    pub fn estimate_words(&self) -> String {
        let calls: Vec<String> = self
            .calls
            .iter()
            .map(|c| format!("{} {}", c.service, c.calls))
            .collect();
        let calls = if calls.is_empty() {
            "no calls".into()
        } else {
            format!("{} calls", calls.join(", "))
        };
        format!("estimated {calls}; held {}", self.held)
    }
}

/// `≈ 0.4 min`, `≈ 12 min`, `≈ 2 h 05 min`, `< 0.1 min`.
fn minutes(m: f64) -> String {
    if m > 0.0 && m < 0.05 {
        "< 0.1 min".into()
    } else if m < 10.0 {
        format!("≈ {m:.1} min")
    } else if m < 60.0 {
        format!("≈ {m:.0} min")
    } else {
        let total = m.round() as u64;
        format!("≈ {} h {:02} min", total / 60, total % 60)
    }
}

impl Display for ImpactPreview {
    /// The CLI's dry run: a heading, then one fact a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} — dry run, nothing changed", self.command)?;
        writeln!(f, "  {} {}", self.items, self.noun)?;
        for line in self.cost_lines() {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "  {}", self.held_line())?;
        if let Some(first) = self.first_line() {
            writeln!(f, "  {first}")?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_reads_as_lines_of_facts() {
        let p = ImpactPreview {
            command: "retry-failed-jobs".into(),
            items: 12,
            noun: "failed catalog jobs".into(),
            calls: vec![
                DownstreamCost::new("quickbooks", 12, 500, "FORCED_OPEN"),
                DownstreamCost::new("stripe", 30, 0, "CLOSED"),
            ],
            held: 12,
            held_why: vec!["the quickbooks circuit is FORCED_OPEN".into()],
            ahead: 4,
            first: vec!["prod_1".into(), "prod_2".into()],
            notes: vec![],
        };
        let text = p.to_string();
        assert!(text.starts_with("retry-failed-jobs — dry run, nothing changed\n"));
        assert!(text.contains("  12 failed catalog jobs\n"), "{text}");
        assert!(
            text.contains("  quickbooks 12 calls, < 0.1 min at 500/min (circuit FORCED_OPEN)\n"),
            "{text}"
        );
        assert!(text.contains("  stripe 30 calls\n"), "{text}");
        assert!(
            text.contains("  held 12: the quickbooks circuit is FORCED_OPEN\n"),
            "{text}"
        );
        assert!(
            text.contains("  first prod_1, prod_2, … (after 4 already queued)\n"),
            "{text}"
        );
        assert_eq!(p.calls_to("quickbooks"), 12);
        assert_eq!(p.total_calls(), 42);
        assert_eq!(minutes(125.2), "≈ 2 h 05 min");
        assert_eq!(minutes(0.4), "≈ 0.4 min");
        assert_eq!(minutes(0.0), "≈ 0.0 min");
        assert_eq!(
            p.estimate_words(),
            "estimated quickbooks 12, stripe 30 calls; held 12"
        );
    }
}
