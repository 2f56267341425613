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

/// `90` → "1m30s", `3600` → "1h".
pub fn human_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// What to do when the store cannot write.
pub const STORE_WRITE_FIX: &str = "free space on the data dir's filesystem, make sure the file is writable (not read-only, not immutable) and that no other process holds a lock on it; the engine keeps trying and recovers by itself once a write succeeds";

/// What the engine gathered about its pipelines and its store for one health tick: plain
/// numbers and reasons; [`pipelines`] scores them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineSignals {
    pub catalog: CatalogSignals,
    /// Set while QuickBooks refuses our credentials.
    pub quickbooks_auth: Option<AuthSignal>,
    pub store: StoreSignals,
    /// Set when the compliance pipeline runs.
    pub compliance: Option<ComplianceSignals>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogSignals {
    pub failed: u64,
    pub rejected: u64,
    pub paused: bool,
    pub queued: u64,
    pub in_flight: u64,
    /// How long (ms) work has waited with no job finishing (see [`Progress::stalled`]).
    pub stalled_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthSignal {
    pub reason: String,
    pub fix: String,
    /// Until the token endpoint is tried again.
    pub retry_in_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreSignals {
    /// The store's file, as shown.
    pub path: String,
    /// Writes failing: for how long (ms), and the last error.
    pub write_failing: Option<(i64, String)>,
    /// Reads failing: the error.
    pub read_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComplianceSignals {
    /// Invoices FAILED (their retries ran out: a retry sends them again).
    pub failed: u64,
    /// Invoices REJECTED by DIAN, by the rule that rejected them (a retry alone reads
    /// the same rejection: the data must be fixed first).
    pub rejected: Vec<RejectedByRule>,
    /// The contingency phase ("OUTAGE", "PROBING", …).
    pub contingency: String,
    pub paused: bool,
    pub numbering: NumberingSignal,
    /// How long (ms) invoices were due with none progressing.
    pub stalled_ms: Option<i64>,
}

/// REJECTED invoices that one DIAN rule rejected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RejectedByRule {
    /// The rule's code (`FAJ43b`), or empty when the rejection named none.
    pub rule: String,
    /// DIAN's own words for it.
    pub words: String,
    /// How many invoices, and the numbers of the first few.
    pub count: u64,
    pub numbers: Vec<String>,
}

impl RejectedByRule {
    /// Groups REJECTED invoices (number, last message) by rule, largest group first.
    pub fn group<'a>(invoices: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Self> {
        let mut groups: Vec<RejectedByRule> = Vec::new();
        for (number, message) in invoices {
            let (rule, words) = crate::protocol::dian_rule(message).unwrap_or(("", ""));
            let g = match groups.iter().position(|g| g.rule == rule) {
                Some(i) => &mut groups[i],
                None => {
                    groups.push(RejectedByRule {
                        rule: rule.to_owned(),
                        words: words.to_owned(),
                        ..Default::default()
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            g.count += 1;
            if g.numbers.len() < 5 {
                g.numbers.push(number.to_owned());
            }
        }
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.rule.cmp(&b.rule)));
        groups
    }

    /// The recommendation: the rule, what it checks in words, and where to fix it.
    fn recommendation(&self) -> String {
        let (meaning, fix) = crate::protocol::rule_fix(&self.rule);
        let rule = if self.rule.is_empty() {
            "a rejection that names no rule".to_owned()
        } else if self.words.is_empty() {
            format!("rule {}", self.rule)
        } else {
            format!("rule {} ({})", self.rule, self.words)
        };
        let more = if self.count > self.numbers.len() as u64 {
            format!(" and {} more", self.count - self.numbers.len() as u64)
        } else {
            String::new()
        };
        format!(
            "{} invoice(s) REJECTED by DIAN, {rule}: {meaning}. Fix: {fix} (a retry alone reads the same rejection). Invoices: {}{more}",
            self.count,
            self.numbers.join(", ")
        )
    }
}

/// Whether the numbering range is confirmed with Alegra.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum NumberingSignal {
    #[default]
    Ready,
    Checking(String),
    Refused {
        why: String,
        fix: String,
    },
}

/// The pipelines' and the store's part of the health judgement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineVerdict {
    pub checks: Vec<Check>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    pub recommendations: Vec<crate::protocol::Recommendation>,
    pub problems: Vec<Problem>,
}

/// Scores the catalog and compliance pipelines and the store from what the engine saw.
#[expect(
    clippy::too_many_lines,
    reason = "every check's signals and scores in one place"
)]
pub fn pipelines(s: &PipelineSignals) -> PipelineVerdict {
    use crate::protocol::Recommendation;
    let mut v = PipelineVerdict::default();
    let c = &s.catalog;
    let mut notes = Vec::new();
    let mut score: f64 = 100.0;
    if c.failed > 0 {
        notes.push(format!("{} jobs failed", c.failed));
        v.warnings.push(format!("{} catalog jobs failed", c.failed));
        v.recommendations.push(
            Recommendation::new(
                "catalog",
                "fix the cause in each failed product's last error (Events), then retry the failed catalog jobs",
            )
            .with_action(crate::protocol::Command::RetryFailedJobs {}),
        );
        // Work given up on needs a person: degraded (fair), as FAILED invoices are.
        score = score.min(60.0);
    }
    if c.rejected > 0 {
        v.warnings
            .push(format!("{} products rejected as invalid", c.rejected));
    }
    if c.paused {
        notes.push("paused".into());
        v.warnings.push("catalog pipeline paused".into());
        score = score.min(90.0);
    }
    if let Some(ms) = c.stalled_ms {
        let line = format!(
            "no job finished for {} with {} queued, {} in flight",
            human_secs(ms as u64 / 1000),
            c.queued,
            c.in_flight
        );
        v.warnings.push(format!("catalog stalled: {line}"));
        v.recommendations.push(Recommendation::new(
            "catalog",
            "work is waiting and nothing finishes; the workers' activity and the event log show what they are doing",
        ));
        notes.push(line);
        score = score.min(40.0);
    }
    v.checks.push(check("catalog", score, notes));
    if let Some(p) = &s.quickbooks_auth {
        // An error, not only a problem: nothing reaches QuickBooks until someone acts.
        v.errors
            .push(format!("quickbooks: {} — fix: {}", p.reason, p.fix));
        v.recommendations
            .push(Recommendation::new("quickbooks", p.fix.clone()));
        v.problems.push(Problem {
            component: "quickbooks".into(),
            reason: format!(
                "{} — catalog jobs wait (none lost); next token attempt in {}",
                p.reason,
                human_secs(p.retry_in_ms.div_ceil(1000))
            ),
            fix: p.fix.clone(),
        });
    }
    // The store: writes (their outcomes and the probe's) and the publisher's reads.
    let mut store_notes = Vec::new();
    let path = &s.store.path;
    if let Some((for_ms, err)) = &s.store.write_failing {
        store_notes.push(format!(
            "writes failing for {}: {err}",
            human_secs((*for_ms).max(0) as u64 / 1000)
        ));
        v.recommendations
            .push(Recommendation::new("store", STORE_WRITE_FIX));
        v.problems.push(Problem {
            component: "store".into(),
            reason: format!("cannot write to {path}: {err}"),
            fix: STORE_WRITE_FIX.into(),
        });
    }
    if let Some(err) = &s.store.read_error {
        store_notes.push(format!("reads failing: {err}"));
        v.problems.push(Problem {
            component: "store".into(),
            reason: format!("cannot read {path}: {err}"),
            fix: format!("stop syncctl and check the file (sqlite3 {path} \"PRAGMA quick_check\"); restore it from a backup, or recover it with sqlite3 {path} \".recover\""),
        });
    }
    for n in &store_notes {
        v.errors.push(format!("store: {n}"));
    }
    let store_score = if store_notes.is_empty() { 100.0 } else { 0.0 };
    v.checks.push(check("store", store_score, store_notes));
    if let Some(k) = &s.compliance {
        let mut notes = Vec::new();
        let mut score: f64 = 100.0;
        let rejected: u64 = k.rejected.iter().map(|g| g.count).sum();
        if k.failed > 0 {
            notes.push(format!("{} invoices FAILED", k.failed));
            v.warnings.push(format!(
                "{} invoices FAILED: their retries ran out",
                k.failed
            ));
            v.recommendations.push(
                Recommendation::new(
                    "compliance",
                    "fix the cause shown in each FAILED invoice's history, then retry the failed invoices",
                )
                .with_action(crate::protocol::Command::RetryFailed {}),
            );
            score = score.min(60.0);
        }
        if rejected > 0 {
            notes.push(format!("{rejected} invoices REJECTED by DIAN"));
            v.warnings.push(format!(
                "{rejected} invoices REJECTED by DIAN: their data must be fixed"
            ));
            for g in &k.rejected {
                v.recommendations
                    .push(Recommendation::new("compliance", g.recommendation()));
            }
            score = score.min(60.0);
        }
        match k.contingency.as_str() {
            "OUTAGE" => {
                notes.push("DIAN outage: contingency".into());
                v.warnings
                    .push("DIAN is down: invoices wait in contingency".into());
                score = score.min(40.0);
            }
            "PROBING" => {
                notes.push("DIAN not answering: probing".into());
                score = score.min(60.0);
            }
            _ => {}
        }
        if k.paused {
            notes.push("paused".into());
            v.warnings.push("compliance pipeline paused".into());
            score = score.min(90.0);
        }
        match &k.numbering {
            NumberingSignal::Ready => {}
            NumberingSignal::Checking(why) => {
                notes.push("numbering not confirmed with Alegra".into());
                v.warnings.push(format!("compliance: {why}"));
                score = score.min(60.0);
            }
            NumberingSignal::Refused { why, fix } => {
                notes.push("numbering refused: no invoice is numbered".into());
                v.errors.push(format!("compliance: {why}"));
                v.problems.push(Problem {
                    component: "compliance".into(),
                    reason: why.clone(),
                    fix: fix.clone(),
                });
                score = 0.0;
            }
        }
        if let Some(ms) = k.stalled_ms {
            let line = format!(
                "invoices due and none progressed for {}",
                human_secs(ms as u64 / 1000)
            );
            v.warnings.push(format!("compliance stalled: {line}"));
            notes.push(line);
            score = score.min(40.0);
        }
        v.checks.push(check("compliance", score, notes));
    }
    v
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

    #[test]
    fn pipelines_score_what_the_engine_gathered() {
        let quiet = pipelines(&PipelineSignals::default());
        let scores: Vec<(&str, u8)> = quiet
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.score))
            .collect();
        assert_eq!(scores, [("catalog", 100), ("store", 100)]);
        assert!(quiet.warnings.is_empty() && quiet.problems.is_empty());

        let v = pipelines(&PipelineSignals {
            catalog: CatalogSignals {
                queued: 4,
                stalled_ms: Some(STALL_MS),
                ..Default::default()
            },
            store: StoreSignals {
                path: "/d/syncctl.db".into(),
                write_failing: Some((90_000, "disk full".into())),
                read_error: None,
            },
            compliance: Some(ComplianceSignals {
                failed: 2,
                numbering: NumberingSignal::Refused {
                    why: "a document Alegra has is missing here".into(),
                    fix: "start with --fresh-store".into(),
                },
                ..Default::default()
            }),
            ..Default::default()
        });
        let scores: Vec<(&str, u8)> = v
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.score))
            .collect();
        assert_eq!(scores, [("catalog", 40), ("store", 0), ("compliance", 0)]);
        assert_eq!(
            v.warnings[0],
            "catalog stalled: no job finished for 5m with 4 queued, 0 in flight"
        );
        assert_eq!(v.errors[0], "store: writes failing for 1m30s: disk full");
        let components: Vec<&str> = v.problems.iter().map(|p| p.component.as_str()).collect();
        assert_eq!(components, ["store", "compliance"]);
        let retry = v
            .recommendations
            .iter()
            .find(|r| r.component == "compliance")
            .and_then(|r| r.action.clone());
        assert_eq!(retry, Some(crate::protocol::Command::RetryFailed {}));
    }

    #[test]
    fn human_secs_words_durations() {
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(90), "1m30s");
        assert_eq!(human_secs(3600), "1h");
    }
}
