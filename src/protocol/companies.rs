//! The companies an engine process serves, as a console sees them: which one it is
//! watching ([`CompanyTag`]), and one summary row per company ([`CompanyRow`]) for the
//! "all companies" overview. A row is computed from that company's snapshot alone
//! ([`CompanyRow::of`]), so an engine in this process and an engine over the network
//! ([`ServerFrame::Companies`](super::ServerFrame::Companies)) give the same rows.

use serde::{Deserialize, Serialize};

use super::invoices::Status;
use super::resilience::State as BreakerState;
use super::snapshot::Snapshot;
use super::telemetry::Level;

/// A company: its `[[companies]]` id and its name ("default" for one company).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompanyTag {
    pub id: String,
    pub name: String,
}

impl CompanyTag {
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        CompanyTag {
            id: id.into(),
            name: name.into(),
        }
    }

    /// `co2 (Company Two)`, or the id alone when the name says nothing more.
    pub fn label(&self) -> String {
        if self.name.is_empty() || self.name == self.id {
            self.id.clone()
        } else {
            format!("{} ({})", self.id, self.name)
        }
    }
}

/// Which company a console is watching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watching {
    /// Every company: the Overview shows one row each; nothing acts.
    All,
    /// One company, by id: every screen shows its engine and every command goes to it.
    One(String),
}

impl Watching {
    /// The company watched, if one.
    pub fn one(&self) -> Option<&str> {
        match self {
            Watching::All => None,
            Watching::One(id) => Some(id),
        }
    }
}

/// One company's line in the "all companies" overview.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompanyRow {
    #[serde(flatten)]
    pub company: CompanyTag,
    /// Why its engine does not run (it did not start); None while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    /// Health score 0–100 and its level.
    pub score: u8,
    pub level: Option<Level>,
    /// The catalog pipeline is paused.
    pub paused: bool,
    /// DIAN sending is paused.
    pub dian_paused: bool,
    /// Items synced per second over the last complete second.
    pub items_per_s: u64,
    /// Catalog jobs queued (waiting) and failed past their last attempt.
    pub queued: u64,
    pub failed: u64,
    /// Circuits not letting calls through (open, forced open, half-open).
    pub circuits_open: u32,
    /// Invoices on their way to DIAN, and those FAILED.
    pub dian_pending: u64,
    pub dian_failed: u64,
    /// QuickBooks requests in the last minute (as measured by [`QuotaMeter`]) and the
    /// company's quota per minute; None until a few seconds were measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_used_per_min: Option<u32>,
    pub quota_per_min: u32,
}

impl CompanyRow {
    /// `company`'s row from its snapshot (`per_min`: QuickBooks requests in the last
    /// minute, from its [`QuotaMeter`]).
    pub fn of(company: CompanyTag, s: &Snapshot, per_min: Option<u32>) -> Self {
        let circuits_open = s
            .downstreams
            .iter()
            .filter(|d| {
                matches!(
                    d.breaker.state,
                    BreakerState::Open | BreakerState::ForcedOpen | BreakerState::HalfOpen
                )
            })
            .count() as u32;
        let quota = s
            .downstreams
            .iter()
            .find(|d| d.name == "quickbooks")
            .map_or(0, |d| d.limiter.rate_per_min);
        let health = &s.telemetry.health;
        CompanyRow {
            company,
            down: None,
            score: health.score,
            level: Some(health.level),
            paused: s.catalog.paused,
            dian_paused: s.compliance.paused,
            items_per_s: s.catalog.rate(),
            queued: s.catalog.counts.queued,
            failed: s.catalog.counts.failed,
            circuits_open,
            dian_pending: s.compliance.counts.waiting(),
            dian_failed: s.compliance.counts.get(Status::Failed),
            quota_used_per_min: per_min,
            quota_per_min: quota,
        }
    }

    /// The row of a company whose engine did not start.
    pub fn down(company: CompanyTag, why: impl Into<String>) -> Self {
        CompanyRow {
            company,
            down: Some(why.into()),
            ..Default::default()
        }
    }

    /// The state word the overview shows: DOWN, PAUSED, or the health level.
    pub fn state(&self) -> String {
        if self.down.is_some() {
            return "DOWN".into();
        }
        if self.paused {
            return "PAUSED".into();
        }
        match self.level {
            Some(l) => format!("{l:?}").to_uppercase(),
            None => "—".into(),
        }
    }

    /// `312/500 62%`, or `—/500` before it was measured.
    pub fn quota(&self) -> String {
        match (self.quota_used_per_min, self.quota_per_min) {
            (_, 0) => "—".into(),
            (Some(u), q) => format!("{u}/{q} {}%", (u64::from(u) * 100 / u64::from(q))),
            (None, q) => format!("—/{q}"),
        }
    }
}

/// QuickBooks requests a company made in the last minute, from the limiter's running
/// count of requests granted (`LimiterView::granted`), sampled about once a second.
#[derive(Debug, Clone, Default)]
pub struct QuotaMeter {
    /// (ms, granted so far), oldest first, at most a minute's worth.
    samples: std::collections::VecDeque<(i64, u64)>,
}

impl QuotaMeter {
    /// Takes `s`'s QuickBooks count at `now_ms`; requests per minute over what was
    /// measured (scaled to a minute), once at least 5 s were.
    pub fn sample(&mut self, now_ms: i64, s: &Snapshot) -> Option<u32> {
        let granted = s
            .downstreams
            .iter()
            .find(|d| d.name == "quickbooks")?
            .limiter
            .granted;
        self.count(now_ms, granted)
    }

    /// [`QuotaMeter::sample`] of a count `granted` at `now_ms`.
    pub fn count(&mut self, now_ms: i64, granted: u64) -> Option<u32> {
        // A count that went back (a restarted engine) starts over.
        if self.samples.back().is_some_and(|(_, g)| *g > granted) {
            self.samples.clear();
        }
        self.samples.push_back((now_ms, granted));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now_ms - t > 60_000)
        {
            self.samples.pop_front();
        }
        let (t0, g0) = *self.samples.front()?;
        let span = now_ms - t0;
        if span < 5_000 {
            return None;
        }
        let per_min = (granted - g0) as f64 * 60_000.0 / span as f64;
        Some(per_min.round().min(f64::from(u32::MAX)) as u32)
    }
}

/// The rows of `companies` (each with its latest snapshot, or why its engine does not
/// run) at `now_ms`, measuring each one's quota with its meter in `meters` (kept by the
/// caller between calls, one per company in this order).
pub fn rows(
    companies: &[(CompanyTag, Result<std::sync::Arc<Snapshot>, String>)],
    meters: &mut Vec<QuotaMeter>,
    now_ms: i64,
) -> Vec<CompanyRow> {
    meters.resize_with(companies.len(), QuotaMeter::default);
    companies
        .iter()
        .zip(meters.iter_mut())
        .map(|((tag, snapshot), meter)| match snapshot {
            Ok(s) => {
                let per_min = meter.sample(now_ms, s);
                CompanyRow::of(tag.clone(), s, per_min)
            }
            Err(why) => CompanyRow::down(tag.clone(), why.clone()),
        })
        .collect()
}

/// Milliseconds since the epoch, by this machine's clock (the meters' time).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_meter_counts_a_minute_of_requests() {
        let mut m = QuotaMeter::default();
        assert_eq!(m.sample(0, &Snapshot::default()), None, "no QuickBooks");
        assert_eq!(m.count(0, 100), None);
        for sec in 1..=90u64 {
            let got = m.count(sec as i64 * 1000, 100 + sec * 5);
            if sec < 5 {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(300), "at {sec} s");
            }
        }
        // A restarted engine counts from 0 again: measured afresh.
        assert_eq!(m.count(91_000, 3), None);
    }
}
