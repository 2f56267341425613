//! The health score: each component scored 0–100, the whole is the **minimum** (a mean
//! would let two healthy services hide a dead one), with the reasons kept.
//!
//! A downstream's score is the lowest of its error-rate, latency and saturation scores,
//! less 15 per open anomaly; an OPEN (or FORCED_OPEN) breaker caps it at 0, HALF_OPEN at 50.
//! Levels: excellent ≥ 90, good ≥ 75, fair ≥ 50, poor ≥ 25, else critical.

pub use crate::protocol::{Check, Health, Level, Problem};

/// What a downstream looked like over the last minute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DownstreamSignals {
    pub name: String,
    /// "CLOSED", "OPEN", "HALF_OPEN", "FORCED_OPEN", "DISABLED", "METRICS_ONLY".
    pub breaker: String,
    /// Percent of calls in the last minute that failed (None: no calls).
    pub error_rate: Option<f64>,
    pub p95_ms: Option<f64>,
    pub in_flight: u64,
    /// 0 = no cap.
    pub concurrency_limit: u64,
    pub open_anomalies: usize,
    /// Set when the service refuses our credentials: calls wait for an operator.
    pub auth: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// Error rate (percent) that scores 50.
    pub error_rate: f64,
    /// p95 latency (ms) that scores 50.
    pub latency_ms: f64,
}

/// A pipeline with work waiting that stops making progress for this long is degraded.
pub const STALL_MS: i64 = 5 * 60_000;

/// Tells a pipeline that stopped making progress with work waiting from one that is
/// idle, paused or waiting for a reason already reported (an open circuit, an outage).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// When the current stretch of waiting-without-progress began.
    since_ms: Option<i64>,
    mark: u64,
}

impl Progress {
    /// `mark` grows whenever the pipeline makes progress; `waiting`: work is due and
    /// nothing excuses the wait. Returns how long (ms) it has waited without progress.
    pub fn observe(&mut self, now_ms: i64, mark: u64, waiting: bool) -> Option<i64> {
        match self.since_ms {
            Some(since) if waiting && mark == self.mark => Some(now_ms - since),
            _ => {
                self.since_ms = Some(now_ms);
                self.mark = mark;
                None
            }
        }
    }

    /// The stall, if it has lasted [`STALL_MS`].
    pub fn stalled(&mut self, now_ms: i64, mark: u64, waiting: bool) -> Option<i64> {
        self.observe(now_ms, mark, waiting)
            .filter(|ms| *ms >= STALL_MS)
    }
}

/// 100 at or below `good`, 50 at `target`, 0 at twice the target; linear between.
fn against(value: f64, good: f64, target: f64) -> f64 {
    if value <= good {
        100.0
    } else if value <= target {
        100.0 - 50.0 * (value - good) / (target - good).max(f64::MIN_POSITIVE)
    } else {
        (50.0 - 50.0 * (value - target) / target.max(f64::MIN_POSITIVE)).max(0.0)
    }
}

pub fn downstream(s: &DownstreamSignals, t: &Targets) -> Check {
    let mut score: f64 = 100.0;
    let mut notes = Vec::new();
    if let Some(e) = s.error_rate {
        let v = against(e, 0.0, t.error_rate);
        if v < 100.0 {
            notes.push(format!("error rate {e:.1} % (alert at {} %)", t.error_rate));
        }
        score = score.min(v);
    }
    if let Some(p) = s.p95_ms {
        let v = against(p, t.latency_ms / 2.0, t.latency_ms);
        if v < 100.0 {
            notes.push(format!("p95 {p:.0} ms (target {} ms)", t.latency_ms));
        }
        score = score.min(v);
    }
    if s.concurrency_limit > 0 {
        let sat = s.in_flight as f64 / s.concurrency_limit as f64;
        // Running at the cap is normal in a backlog: it costs a little, not a lot.
        let v = if sat >= 1.0 { 80.0 } else { 100.0 };
        if v < 100.0 {
            notes.push(format!(
                "saturated: {}/{} in flight",
                s.in_flight, s.concurrency_limit
            ));
        }
        score = score.min(v);
    }
    if s.open_anomalies > 0 {
        score -= 15.0 * s.open_anomalies as f64;
        notes.push(format!("{} open anomalies", s.open_anomalies));
    }
    if let Some(reason) = &s.auth {
        // Nothing gets through until someone acts: down, and the reason first.
        score = 0.0;
        notes.insert(0, format!("authorisation: {reason}"));
    }
    match s.breaker.as_str() {
        // The circuit's state explains the rest: it comes first.
        "OPEN" | "FORCED_OPEN" => {
            score = 0.0;
            notes.insert(0, format!("circuit {}", s.breaker));
        }
        "HALF_OPEN" => {
            score = score.min(50.0);
            notes.insert(0, "circuit HALF_OPEN (trial calls)".into());
        }
        _ => {}
    }
    check(&s.name, score, notes)
}

pub fn check(name: &str, score: f64, notes: Vec<String>) -> Check {
    let score = score.clamp(0.0, 100.0).round() as u8;
    Check {
        name: name.to_owned(),
        score,
        level: Level::of(score),
        notes,
    }
}

/// The whole: the minimum of the checks.
pub fn combine(
    checks: Vec<Check>,
    warnings: Vec<String>,
    errors: Vec<String>,
    recommendations: Vec<crate::protocol::Recommendation>,
) -> Health {
    let score = checks.iter().map(|c| c.score).min().unwrap_or(100);
    let level = Level::of(score);
    Health {
        score,
        level,
        status: level.status(),
        checks,
        warnings,
        errors,
        recommendations,
        problems: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Targets {
        Targets {
            error_rate: 10.0,
            latency_ms: 5000.0,
        }
    }

    fn healthy(name: &str) -> DownstreamSignals {
        DownstreamSignals {
            name: name.into(),
            breaker: "CLOSED".into(),
            error_rate: Some(0.0),
            p95_ms: Some(100.0),
            in_flight: 2,
            concurrency_limit: 10,
            open_anomalies: 0,
            auth: None,
        }
    }

    #[test]
    fn a_refused_credential_takes_the_service_down_with_its_reason_first() {
        let mut s = healthy("quickbooks");
        s.auth = Some("token refresh refused (400 invalid_grant)".into());
        let c = downstream(&s, &t());
        assert_eq!((c.score, c.level), (0, Level::Critical));
        assert!(c.notes[0].contains("invalid_grant"), "{:?}", c.notes);
    }

    #[test]
    fn progress_is_stalled_only_with_work_waiting_and_nothing_done_for_five_minutes() {
        let mut p = Progress::default();
        let min = 60_000;
        assert_eq!(p.stalled(0, 0, true), None);
        assert_eq!(p.stalled(4 * min, 0, true), None);
        assert_eq!(p.stalled(5 * min, 0, true), Some(5 * min));
        // Progress restarts the count; so does a stretch with nothing waiting.
        assert_eq!(p.stalled(6 * min, 1, true), None);
        assert_eq!(p.stalled(10 * min, 1, true), None);
        assert_eq!(p.stalled(11 * min, 1, true), Some(5 * min));
        assert_eq!(p.stalled(12 * min, 1, false), None);
        assert_eq!(p.stalled(16 * min, 1, true), None);
        assert_eq!(p.stalled(17 * min, 1, true), Some(5 * min));
    }

    #[test]
    fn levels_follow_the_seed_boundaries() {
        let l: Vec<Level> = [100, 90, 89, 75, 74, 50, 49, 25, 24, 0]
            .into_iter()
            .map(Level::of)
            .collect();
        use Level::*;
        assert_eq!(
            l,
            [
                Excellent, Excellent, Good, Good, Fair, Fair, Poor, Poor, Critical, Critical
            ]
        );
    }

    #[test]
    fn error_rate_scores_50_at_the_alert_threshold_and_0_at_twice() {
        let mut s = healthy("alegra");
        s.error_rate = Some(10.0);
        assert_eq!(downstream(&s, &t()).score, 50);
        s.error_rate = Some(20.0);
        assert_eq!(downstream(&s, &t()).score, 0);
        s.error_rate = Some(5.0);
        assert_eq!(downstream(&s, &t()).score, 75);
    }

    #[test]
    fn breaker_states_cap_the_score() {
        let mut s = healthy("quickbooks");
        s.breaker = "OPEN".into();
        assert_eq!(downstream(&s, &t()).score, 0);
        s.breaker = "HALF_OPEN".into();
        assert_eq!(downstream(&s, &t()).score, 50);
        s.breaker = "CLOSED".into();
        assert_eq!(downstream(&s, &t()).score, 100);
    }

    #[test]
    fn the_whole_is_the_minimum_not_the_mean() {
        let mut dead = healthy("alegra");
        dead.breaker = "OPEN".into();
        let h = combine(
            vec![
                downstream(&healthy("stripe"), &t()),
                downstream(&healthy("quickbooks"), &t()),
                downstream(&dead, &t()),
            ],
            vec![],
            vec![],
            vec![],
        );
        assert_eq!(h.score, 0);
        assert_eq!(h.level, Level::Critical);
        assert_eq!(h.status, "down");
        assert!(h.checks[2].notes.iter().any(|n| n.contains("OPEN")));
    }

    #[test]
    fn anomalies_and_latency_lower_the_score() {
        let mut s = healthy("stripe");
        s.open_anomalies = 1;
        assert_eq!(downstream(&s, &t()).score, 85);
        let mut s = healthy("stripe");
        s.p95_ms = Some(5000.0);
        assert_eq!(downstream(&s, &t()).score, 50);
        s.p95_ms = Some(2000.0);
        assert_eq!(downstream(&s, &t()).score, 100);
    }
}
