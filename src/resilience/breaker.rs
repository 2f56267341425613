//! Circuit breaker with count- or time-based sliding windows, failure- and slow-call
//! rate thresholds, HALF_OPEN with exactly N trial permits, operator states, and one
//! event per transition carrying its reason (semantics: docs/resilience.md).

pub use crate::protocol::{BreakerView, State, Transition, TransitionView};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::SharedClock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// The last N outcomes.
    Count,
    /// N one-second buckets.
    Time,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub window: WindowKind,
    /// Outcomes (count window) or seconds (time window).
    pub window_size: u32,
    pub minimum_calls: u32,
    /// Percent; trips at `>=`.
    pub failure_rate: f64,
    /// Percent; trips at `>=`.
    pub slow_call_rate: f64,
    /// A call is slow when strictly longer than this.
    pub slow_call: Duration,
    pub open_wait: Duration,
    /// Each consecutive open multiplies the wait, up to `open_wait_max`.
    pub open_wait_multiplier: f64,
    pub open_wait_max: Duration,
    pub half_open_permits: u32,
    /// A run of this many answered failures in a row (5xx, resets, refused
    /// connections) opens the circuit at once, whatever the window holds (Envoy's
    /// consecutive-5xx outlier detection): a total outage after a long healthy run trips
    /// in a second at full rate, not after the window turns over. The run needed grows
    /// with the failure rate seen before it, so a service failing at random (30 % of
    /// calls) does not trip on an unlucky streak. Timeouts count in the window but
    /// neither extend nor end a run: a burst of them can be our own stall (a loaded
    /// box), not the service's outage. 0 = off.
    pub consecutive_failures: u32,
}

/// How unlikely a run of failures must be, given the failure rate seen before it, to
/// open the circuit: one streak in a million.
const STREAK_ODDS: f64 = 1e-6;
/// Weight of each answered call in the failure rate a run is judged against (about
/// the last 20 calls; kept across transitions).
const BASELINE_WEIGHT: f64 = 0.05;

impl BreakerConfig {
    /// The run of consecutive failures that opens the circuit when a share
    /// `baseline` (0–1) of the calls before it failed: the configured run for a
    /// healthy service, longer when random failures make a streak likely (10 % → 6,
    /// 30 % → 12), never more than four times the configured run.
    pub fn streak_needed(&self, baseline: f64) -> u32 {
        let min = self.consecutive_failures;
        if min == 0 {
            return u32::MAX;
        }
        let by_odds = if baseline <= 0.0 {
            0.0
        } else if baseline >= 1.0 {
            f64::INFINITY
        } else {
            (STREAK_ODDS.ln() / baseline.ln()).ceil()
        };
        (by_odds.min(f64::from(min) * 4.0) as u32).max(min)
    }

    /// Calls needed for a verdict: for a count window, capped at the window size.
    fn effective_minimum(&self) -> u32 {
        match self.window {
            WindowKind::Count => self.minimum_calls.min(self.window_size),
            WindowKind::Time => self.minimum_calls,
        }
        .max(1)
    }
}

impl Default for BreakerConfig {
    /// Defaults for a few requests per second: a 10-second window, 10 calls minimum
    /// (a short window so an outage after a long healthy run trips in seconds), five
    /// answered failures in a row trip at once, and a probe every 15 s while OPEN (work
    /// resumes within 15 s of the service's return).
    fn default() -> Self {
        Self {
            window: WindowKind::Time,
            window_size: 10,
            minimum_calls: 10,
            failure_rate: 50.0,
            slow_call_rate: 100.0,
            slow_call: Duration::from_secs(10),
            open_wait: Duration::from_secs(15),
            // No backoff between probes: a probe costs `half_open_permits` calls per
            // `open_wait` (3 per 15 s), and a wait that doubled with each failed probe
            // left a long silence after a long outage (24 s after a 30 s one).
            open_wait_multiplier: 1.0,
            open_wait_max: Duration::from_secs(300),
            half_open_permits: 3,
            consecutive_failures: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// No answer in time: a failure in the window, neutral for a run of failures.
    Timeout,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("illegal breaker transition {from} → {to}")]
pub struct IllegalTransition {
    pub from: State,
    pub to: State,
}

/// Why a call was not let through.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    #[error("circuit {0} is OPEN; retry in {wait}", wait = wait_words(*.1))]
    Open(String, Duration),
    #[error("circuit {0} is FORCED_OPEN by an operator")]
    ForcedOpen(String),
    #[error("circuit {0} is HALF_OPEN and its trial calls are taken")]
    HalfOpenFull(String),
}

/// A wait as an operator reads it: whole seconds, rounded up (`28s`, `4m59s`).
pub fn wait_words(d: Duration) -> String {
    let secs = d.as_millis().div_ceil(1000) as u64;
    crate::protocol::format_duration(secs.max(1))
}

impl Rejected {
    /// When a caller should try again: the wait left in OPEN, else a second.
    pub fn retry_in_ms(&self) -> u64 {
        match self {
            Rejected::Open(_, d) => d.as_millis() as u64,
            _ => 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

/// Sliding-window totals.
#[derive(Debug, Clone)]
struct Window {
    kind: WindowKind,
    size: usize,
    /// Count window: one entry per outcome (failed, slow). Time window: per-second buckets.
    outcomes: VecDeque<(bool, bool)>,
    buckets: VecDeque<Bucket>,
    calls: u32,
    failures: u32,
    slow: u32,
}

impl Window {
    fn new(kind: WindowKind, size: u32) -> Self {
        Self {
            kind,
            size: size.max(1) as usize,
            outcomes: VecDeque::new(),
            buckets: VecDeque::new(),
            calls: 0,
            failures: 0,
            slow: 0,
        }
    }

    fn expire(&mut self, now: Duration) {
        if self.kind != WindowKind::Time {
            return;
        }
        let second = now.as_secs();
        while let Some(b) = self.buckets.front() {
            if b.second + (self.size as u64) <= second {
                self.calls -= b.calls;
                self.failures -= b.failures;
                self.slow -= b.slow;
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn record(&mut self, now: Duration, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += failed as u32;
        self.slow += slow as u32;
        match self.kind {
            WindowKind::Count => {
                self.outcomes.push_back((failed, slow));
                if self.outcomes.len() > self.size
                    && let Some((f, s)) = self.outcomes.pop_front()
                {
                    self.calls -= 1;
                    self.failures -= f as u32;
                    self.slow -= s as u32;
                }
            }
            WindowKind::Time => {
                self.expire(now);
                let second = now.as_secs();
                match self.buckets.back_mut() {
                    Some(b) if b.second == second => {
                        b.calls += 1;
                        b.failures += failed as u32;
                        b.slow += slow as u32;
                    }
                    _ => self.buckets.push_back(Bucket {
                        second,
                        calls: 1,
                        failures: failed as u32,
                        slow: slow as u32,
                    }),
                }
            }
        }
    }

    fn rates(&self) -> (f64, f64) {
        if self.calls == 0 {
            return (0.0, 0.0);
        }
        let c = self.calls as f64;
        (
            self.failures as f64 * 100.0 / c,
            self.slow as f64 * 100.0 / c,
        )
    }
}

struct Inner {
    state: State,
    window: Window,
    opened_at: Duration,
    wait: Duration,
    consecutive_opens: u32,
    trial_issued: u32,
    trial_done: u32,
    trial_failures: u32,
    trial_slow: u32,
    rejections: u64,
    /// Answered failures in a row while CLOSED (a success ends the run).
    streak: u32,
    /// The answered calls' failure rate before the current run (an EWMA).
    baseline: f64,
    transitions: VecDeque<Transition>,
}

type Listener = Box<dyn Fn(&str, &Transition) + Send + Sync>;

pub struct Breaker {
    name: String,
    cfg: BreakerConfig,
    clock: SharedClock,
    inner: Mutex<Inner>,
    listener: Mutex<Option<Listener>>,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Breaker {
    pub fn new(name: &str, cfg: BreakerConfig, clock: SharedClock) -> Arc<Self> {
        let window = Window::new(cfg.window, cfg.window_size);
        let wait = cfg.open_wait;
        Arc::new(Self {
            name: name.to_owned(),
            cfg,
            clock,
            inner: Mutex::new(Inner {
                state: State::Closed,
                window,
                opened_at: Duration::ZERO,
                wait,
                consecutive_opens: 0,
                trial_issued: 0,
                trial_done: 0,
                trial_failures: 0,
                trial_slow: 0,
                rejections: 0,
                streak: 0,
                baseline: 0.0,
                transitions: VecDeque::new(),
            }),
            listener: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Called once per transition (not for self-transitions).
    pub fn on_transition(&self, f: impl Fn(&str, &Transition) + Send + Sync + 'static) {
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Whether a call made now would be let through (CLOSED, an OPEN whose wait is
    /// over, a HALF_OPEN with a trial permit free…). Lets callers hold work back instead
    /// of spending it on a refusal; when not, also how long until the wait ends (OPEN).
    pub fn admits_now(&self) -> (bool, Option<Duration>) {
        let now = self.clock.now();
        let inner = self.lock();
        match inner.state {
            State::ForcedOpen => (false, None),
            State::Open => {
                let elapsed = now.saturating_sub(inner.opened_at);
                (elapsed > inner.wait, inner.wait.checked_sub(elapsed))
            }
            State::HalfOpen => (inner.trial_issued < self.cfg.half_open_permits.max(1), None),
            _ => (true, None),
        }
    }

    pub fn transitions(&self) -> Vec<Transition> {
        self.lock().transitions.iter().cloned().collect()
    }

    /// Asks to make a call. An OPEN or FORCED_OPEN breaker answers at once, without I/O.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Rejected> {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let mut inner = self.lock();
        match inner.state {
            State::Closed | State::MetricsOnly | State::Disabled => Ok(self.permit(false)),
            State::ForcedOpen => {
                inner.rejections += 1;
                Err(Rejected::ForcedOpen(self.name.clone()))
            }
            State::Open => {
                let elapsed = now.saturating_sub(inner.opened_at);
                if elapsed > inner.wait {
                    let reason = format!("waited {} in OPEN", fmt_duration(inner.wait));
                    self.transition_locked(&mut inner, cfg, State::HalfOpen, reason, now);
                    inner.trial_issued = 1;
                    Ok(self.permit(true))
                } else {
                    inner.rejections += 1;
                    Err(Rejected::Open(self.name.clone(), inner.wait - elapsed))
                }
            }
            State::HalfOpen => {
                if inner.trial_issued < cfg.half_open_permits.max(1) {
                    inner.trial_issued += 1;
                    Ok(self.permit(true))
                } else {
                    inner.rejections += 1;
                    Err(Rejected::HalfOpenFull(self.name.clone()))
                }
            }
        }
    }

    fn permit(self: &Arc<Self>, trial: bool) -> Permit {
        Permit {
            breaker: Some(self.clone()),
            trial,
        }
    }

    fn record(&self, trial: bool, outcome: Option<Outcome>, duration: Duration) {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let mut inner = self.lock();
        let Some(outcome) = outcome else {
            // Cancelled, or an error that does not count: a trial gives its permit back.
            if trial && inner.state == State::HalfOpen {
                inner.trial_issued = inner.trial_issued.saturating_sub(1);
            }
            return;
        };
        let failed = outcome != Outcome::Success;
        let slow = duration > cfg.slow_call;
        match inner.state {
            State::Disabled | State::ForcedOpen | State::Open => {}
            State::Closed | State::MetricsOnly => {
                if trial {
                    return; // a trial from a half-open period that has since ended
                }
                inner.window.record(now, failed, slow);
                if inner.state == State::MetricsOnly {
                    return;
                }
                match outcome {
                    Outcome::Failure => inner.streak += 1,
                    Outcome::Timeout => {}
                    Outcome::Success => {
                        // The run is over: it joins the baseline the next one is judged by.
                        let keep = 1.0 - BASELINE_WEIGHT;
                        let f = keep.powi(inner.streak.min(1000) as i32);
                        inner.baseline = (1.0 - (1.0 - inner.baseline) * f) * keep;
                        inner.streak = 0;
                    }
                }
                let reason = if inner.window.calls < cfg.effective_minimum() {
                    None
                } else {
                    Self::rate_verdict(&inner.window, cfg)
                }
                .or_else(|| Self::streak_verdict(&inner, cfg));
                if let Some(reason) = reason {
                    self.transition_locked(&mut inner, cfg, State::Open, reason, now);
                }
            }
            State::HalfOpen => {
                if !trial {
                    return;
                }
                inner.trial_done += 1;
                inner.trial_failures += failed as u32;
                inner.trial_slow += slow as u32;
                let permits = cfg.half_open_permits.max(1);
                if inner.trial_done >= permits {
                    let n = inner.trial_done as f64;
                    let fr = inner.trial_failures as f64 * 100.0 / n;
                    let sr = inner.trial_slow as f64 * 100.0 / n;
                    if fr >= cfg.failure_rate || sr >= cfg.slow_call_rate {
                        let reason = format!(
                            "{} of {} trial calls failed, {} slow",
                            inner.trial_failures, inner.trial_done, inner.trial_slow
                        );
                        self.transition_locked(&mut inner, cfg, State::Open, reason, now);
                    } else {
                        let reason = format!(
                            "{} trial calls passed ({} failed)",
                            inner.trial_done, inner.trial_failures
                        );
                        self.transition_locked(&mut inner, cfg, State::Closed, reason, now);
                    }
                }
            }
        }
    }

    /// The rate trigger: failure or slow-call rate at or above its threshold.
    fn rate_verdict(w: &Window, cfg: &BreakerConfig) -> Option<String> {
        let (fr, sr) = w.rates();
        if fr >= cfg.failure_rate {
            Some(format!(
                "failure rate {fr:.0}% ≥ {:.0}% over {} calls",
                cfg.failure_rate, w.calls
            ))
        } else if sr >= cfg.slow_call_rate {
            Some(format!(
                "slow-call rate {sr:.0}% ≥ {:.0}% over {} calls",
                cfg.slow_call_rate, w.calls
            ))
        } else {
            None
        }
    }

    /// The streak trigger: a run of answered failures too long to be chance at the
    /// failure rate of the answered calls before it.
    fn streak_verdict(inner: &Inner, cfg: &BreakerConfig) -> Option<String> {
        let needed = cfg.streak_needed(inner.baseline);
        (inner.streak >= needed).then(|| {
            format!(
                "{} consecutive failures (≥ {needed} at the {:.0}% failure rate before them)",
                inner.streak,
                inner.baseline * 100.0
            )
        })
    }

    /// An operator's (or the API's) transition. Self-transitions do nothing.
    pub fn transition(&self, to: State, reason: &str) -> Result<bool, IllegalTransition> {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let mut inner = self.lock();
        let from = inner.state;
        if !from.can_become(to) {
            return Err(IllegalTransition { from, to });
        }
        if from == to {
            return Ok(false);
        }
        self.transition_locked(&mut inner, cfg, to, reason.to_owned(), now);
        Ok(true)
    }

    /// Back to CLOSED with empty metrics and the initial wait (an operator's reset).
    pub fn reset(&self, reason: &str) {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.rejections = 0;
        inner.consecutive_opens = 0;
        inner.wait = cfg.open_wait;
        if inner.state != State::Closed {
            self.transition_locked(&mut inner, cfg, State::Closed, reason.to_owned(), now);
        } else {
            inner.window = Window::new(cfg.window, cfg.window_size);
            inner.streak = 0;
        }
    }

    fn transition_locked(
        &self,
        inner: &mut Inner,
        cfg: &BreakerConfig,
        to: State,
        reason: String,
        now: Duration,
    ) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        // Every transition starts with fresh metrics.
        inner.window = Window::new(cfg.window, cfg.window_size);
        inner.streak = 0;
        inner.trial_issued = 0;
        inner.trial_done = 0;
        inner.trial_failures = 0;
        inner.trial_slow = 0;
        match to {
            State::Open => {
                inner.consecutive_opens += 1;
                let factor = cfg
                    .open_wait_multiplier
                    .max(1.0)
                    .powi(inner.consecutive_opens.saturating_sub(1).min(30) as i32);
                inner.wait = cfg
                    .open_wait
                    .mul_f64(factor)
                    .min(cfg.open_wait_max.max(cfg.open_wait));
                inner.opened_at = now;
            }
            State::Closed => {
                inner.consecutive_opens = 0;
                inner.wait = cfg.open_wait;
            }
            _ => {}
        }
        let t = Transition {
            from,
            to,
            at: now,
            at_ms: wall_ms(),
            reason,
        };
        if inner.transitions.len() >= 32 {
            inner.transitions.pop_front();
        }
        inner.transitions.push_back(t.clone());
        if let Some(f) = &*self.listener.lock().unwrap_or_else(|p| p.into_inner()) {
            f(&self.name, &t);
        }
    }

    pub fn view(&self) -> BreakerView {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.window.expire(now);
        let min = cfg.effective_minimum();
        let (fr, sr) = inner.window.rates();
        let enough = inner.window.calls >= min;
        BreakerView {
            name: self.name.clone(),
            state: inner.state,
            calls: inner.window.calls,
            failures: inner.window.failures,
            slow_calls: inner.window.slow,
            failure_rate: enough.then_some(fr),
            slow_call_rate: enough.then_some(sr),
            failure_threshold: cfg.failure_rate,
            slow_call_threshold: cfg.slow_call_rate,
            minimum_calls: min,
            rejections: inner.rejections,
            half_open_permits: cfg.half_open_permits,
            half_open_in_use: inner.trial_issued,
            until_half_open_ms: (inner.state == State::Open).then(|| {
                (inner.opened_at + inner.wait)
                    .saturating_sub(now)
                    .as_millis() as u64
            }),
            open_wait_ms: inner.wait.as_millis() as u64,
            last_transition: inner.transitions.back().map(|t| TransitionView {
                from: t.from,
                to: t.to,
                at_ms: t.at_ms,
                reason: t.reason.clone(),
            }),
        }
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Leave to make one call. Report how it went with [`Permit::success`] /
/// [`Permit::failure`] / [`Permit::ignore`]; dropping it unreported counts as cancelled
/// (a trial permit is given back).
pub struct Permit {
    breaker: Option<Arc<Breaker>>,
    trial: bool,
}

impl Permit {
    pub fn is_trial(&self) -> bool {
        self.trial
    }
    pub fn success(mut self, duration: Duration) {
        if let Some(b) = self.breaker.take() {
            b.record(self.trial, Some(Outcome::Success), duration);
        }
    }
    pub fn failure(mut self, duration: Duration) {
        if let Some(b) = self.breaker.take() {
            b.record(self.trial, Some(Outcome::Failure), duration);
        }
    }
    /// No answer in time: a failure, but no part of a run of failures.
    pub fn timed_out(mut self, duration: Duration) {
        if let Some(b) = self.breaker.take() {
            b.record(self.trial, Some(Outcome::Timeout), duration);
        }
    }
    /// An outcome that is not the service's fault (4xx of ours, 429): not counted.
    pub fn ignore(mut self) {
        if let Some(b) = self.breaker.take() {
            b.record(self.trial, None, Duration::ZERO);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(b) = self.breaker.take() {
            b.record(self.trial, None, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15 point 10: a wait reads in whole seconds, never `27.999391431s`.
    #[test]
    fn a_refusal_says_its_wait_in_whole_seconds() {
        let r = Rejected::Open("alegra".into(), Duration::from_nanos(27_999_391_431));
        assert_eq!(r.to_string(), "circuit alegra is OPEN; retry in 28s");
        let r = Rejected::Open("alegra".into(), Duration::from_millis(298_998));
        assert_eq!(r.to_string(), "circuit alegra is OPEN; retry in 4m59s");
    }
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn count_breaker(min: u32) -> (Arc<Breaker>, Arc<super::super::clock::ManualClock>) {
        let (clock, manual) = SharedClock::manual();
        let cfg = BreakerConfig {
            window: WindowKind::Count,
            window_size: 10,
            minimum_calls: min,
            failure_rate: 50.0,
            slow_call_rate: 100.0,
            slow_call: Duration::from_secs(1),
            open_wait: Duration::from_secs(10),
            open_wait_multiplier: 2.0,
            open_wait_max: Duration::from_secs(30),
            half_open_permits: 2,
            // The rate trigger alone (the streak trigger has its own tests).
            consecutive_failures: 0,
        };
        (Breaker::new("qb", cfg, clock), manual)
    }

    fn call(b: &Arc<Breaker>, ok: bool) {
        let p = b.try_acquire().expect("permitted");
        if ok {
            p.success(Duration::from_millis(10))
        } else {
            p.failure(Duration::from_millis(10))
        }
    }

    fn open(b: &Arc<Breaker>) {
        for _ in 0..5 {
            call(b, false);
        }
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn fffss_opens_on_the_fifth_call_a_success_at_sixty_percent() {
        let (b, _) = count_breaker(5);
        for ok in [false, false, false, true] {
            call(&b, ok);
            assert_eq!(b.state(), State::Closed);
        }
        call(&b, true);
        assert_eq!(b.state(), State::Open);
        assert!(b.transitions()[0].reason.contains("60%"));
    }

    #[test]
    fn sssff_stays_closed_at_forty_percent_and_one_more_failure_opens_at_fifty() {
        let (b, _) = count_breaker(5);
        for ok in [true, true, true, false, false] {
            call(&b, ok);
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.view().failure_rate, Some(40.0));
        call(&b, false);
        assert_eq!(b.state(), State::Open);
        assert!(b.transitions()[0].reason.contains("50%"));
    }

    #[test]
    fn below_minimum_calls_reads_not_enough_data() {
        let (b, _) = count_breaker(5);
        for _ in 0..4 {
            call(&b, false);
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.view().failure_rate, None);
    }

    #[test]
    fn count_window_caps_minimum_calls_at_window_size() {
        let (b, _) = count_breaker(100);
        for _ in 0..9 {
            call(&b, false);
        }
        assert_eq!(b.state(), State::Closed);
        call(&b, false);
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn slow_call_is_strictly_longer_than_the_threshold() {
        let (clock, _) = SharedClock::manual();
        let cfg = BreakerConfig {
            window: WindowKind::Count,
            window_size: 4,
            minimum_calls: 4,
            slow_call_rate: 50.0,
            slow_call: Duration::from_secs(1),
            ..BreakerConfig::default()
        };
        let b = Breaker::new("s", cfg, clock);
        for _ in 0..4 {
            b.try_acquire().unwrap().success(Duration::from_secs(1));
        }
        assert_eq!(
            b.state(),
            State::Closed,
            "exactly at the threshold is not slow"
        );
        b.try_acquire()
            .unwrap()
            .success(Duration::from_millis(1001));
        assert_eq!(b.state(), State::Closed, "25% slow");
        b.try_acquire()
            .unwrap()
            .success(Duration::from_millis(1001));
        assert_eq!(b.state(), State::Open, "50% slow trips at >=");
        assert!(b.transitions()[0].reason.contains("slow-call"));
    }

    #[test]
    fn time_window_forgets_outcomes_older_than_its_seconds() {
        let (clock, manual) = SharedClock::manual();
        let cfg = BreakerConfig {
            window: WindowKind::Time,
            window_size: 10,
            minimum_calls: 4,
            consecutive_failures: 0,
            ..BreakerConfig::default()
        };
        let b = Breaker::new("t", cfg, clock);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure(Duration::ZERO);
        }
        manual.advance(Duration::from_secs(11));
        assert_eq!(b.view().calls, 0);
        b.try_acquire().unwrap().failure(Duration::ZERO);
        assert_eq!(b.state(), State::Closed, "old failures expired");
        for _ in 0..3 {
            b.try_acquire().unwrap().failure(Duration::ZERO);
        }
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn open_rejects_and_counts_rejections_until_strictly_after_the_wait() {
        let (b, clock) = count_breaker(5);
        open(&b);
        clock.advance(Duration::from_secs(10));
        assert!(matches!(b.try_acquire(), Err(Rejected::Open(..))));
        assert_eq!(b.view().rejections, 1);
        clock.advance(Duration::from_millis(1));
        let p = b.try_acquire().expect("a trial after the wait");
        assert_eq!(b.state(), State::HalfOpen);
        assert!(p.is_trial());
    }

    #[test]
    fn half_open_admits_exactly_the_permitted_trials() {
        let (b, clock) = count_breaker(5);
        open(&b);
        clock.advance(Duration::from_secs(11));
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert!(matches!(b.try_acquire(), Err(Rejected::HalfOpenFull(_))));
        p1.success(Duration::ZERO);
        assert_eq!(
            b.state(),
            State::HalfOpen,
            "decides once all trials complete"
        );
        p2.success(Duration::ZERO);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.view().calls, 0, "closed with an empty window");
    }

    #[test]
    fn failed_trials_reopen_with_a_longer_wait_capped() {
        let (b, clock) = count_breaker(5);
        open(&b);
        assert_eq!(b.view().open_wait_ms, 10_000);
        for expected in [20_000, 30_000, 30_000] {
            clock.advance(Duration::from_secs(31));
            b.try_acquire().unwrap().failure(Duration::ZERO);
            b.try_acquire().unwrap().failure(Duration::ZERO);
            assert_eq!(b.state(), State::Open);
            assert_eq!(b.view().open_wait_ms, expected);
        }
    }

    #[test]
    fn cancelled_or_ignored_trial_gives_its_permit_back() {
        let (b, clock) = count_breaker(5);
        open(&b);
        clock.advance(Duration::from_secs(11));
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        drop(p1); // cancelled
        p2.ignore(); // a 4xx of ours
        assert_eq!(b.state(), State::HalfOpen);
        let p3 = b.try_acquire().expect("permit returned");
        let p4 = b.try_acquire().expect("permit returned");
        p3.success(Duration::ZERO);
        p4.success(Duration::ZERO);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn forced_open_rejects_all_and_never_half_opens() {
        let (b, clock) = count_breaker(5);
        b.transition(State::ForcedOpen, "operator").unwrap();
        clock.advance(Duration::from_secs(3600));
        assert!(matches!(b.try_acquire(), Err(Rejected::ForcedOpen(_))));
        assert_eq!(b.state(), State::ForcedOpen);
    }

    #[test]
    fn disabled_permits_all_and_records_nothing() {
        let (b, _) = count_breaker(5);
        b.transition(State::Disabled, "operator").unwrap();
        for _ in 0..20 {
            call(&b, false);
        }
        assert_eq!(b.state(), State::Disabled);
        assert_eq!(b.view().calls, 0);
    }

    #[test]
    fn metrics_only_records_but_never_trips() {
        let (b, _) = count_breaker(5);
        b.transition(State::MetricsOnly, "operator").unwrap();
        for _ in 0..20 {
            call(&b, false);
        }
        assert_eq!(b.state(), State::MetricsOnly);
        assert_eq!(b.view().failure_rate, Some(100.0));
    }

    #[test]
    fn illegal_transitions_are_refused_not_applied() {
        let (b, _) = count_breaker(5);
        assert_eq!(
            b.transition(State::HalfOpen, "x"),
            Err(IllegalTransition {
                from: State::Closed,
                to: State::HalfOpen
            })
        );
        assert_eq!(b.state(), State::Closed);
        b.transition(State::Disabled, "x").unwrap();
        assert!(b.transition(State::Open, "x").is_err());
        assert!(b.transition(State::HalfOpen, "x").is_err());
        assert_eq!(b.state(), State::Disabled);
    }

    #[test]
    fn one_event_per_transition_with_its_reason_and_none_for_self_transitions() {
        let (b, clock) = count_breaker(5);
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        b.on_transition(move |name, t| {
            assert_eq!(name, "qb");
            assert!(!t.reason.is_empty());
            s.fetch_add(1, Ordering::SeqCst);
        });
        open(&b);
        assert_eq!(b.transition(State::Open, "again"), Ok(false));
        clock.advance(Duration::from_secs(11));
        let p = b.try_acquire().unwrap();
        let q = b.try_acquire().unwrap();
        p.success(Duration::ZERO);
        q.success(Duration::ZERO);
        let kinds: Vec<_> = b.transitions().iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            kinds,
            vec![
                (State::Closed, State::Open),
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed)
            ]
        );
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }

    /// Issue 14 point 4: a 10-second window full of successes no longer hides an
    /// outage for seconds; five failures in a row open the circuit.
    #[test]
    fn a_run_of_failures_after_a_healthy_window_opens_at_once() {
        let (clock, manual) = SharedClock::manual();
        let b = Breaker::new("qb", BreakerConfig::default(), clock);
        for _ in 0..80 {
            b.try_acquire().unwrap().success(Duration::from_millis(100));
            manual.advance(Duration::from_millis(120));
        }
        for i in 1..=5 {
            assert_eq!(b.state(), State::Closed, "open before failure {i}");
            b.try_acquire().unwrap().failure(Duration::from_millis(5));
        }
        assert_eq!(b.state(), State::Open);
        let why = &b.transitions()[0].reason;
        assert!(why.contains("5 consecutive failures"), "{why}");
    }

    #[test]
    fn a_success_ends_the_run_and_random_failures_need_a_longer_one() {
        let (clock, _) = SharedClock::manual();
        let b = Breaker::new("qb", BreakerConfig::default(), clock);
        // 30 % of calls fail at random: five, seven, nine in a row are still chance.
        for i in 0..100 {
            let p = b.try_acquire().unwrap();
            if i % 10 < 3 {
                p.failure(Duration::ZERO)
            } else {
                p.success(Duration::ZERO)
            }
        }
        assert_eq!(b.state(), State::Closed);
        let mut run = 0;
        while b.state() == State::Closed {
            b.try_acquire().unwrap().failure(Duration::ZERO);
            run += 1;
        }
        assert!((10..=20).contains(&run), "opened after {run}");
        let why = &b.transitions()[0].reason;
        assert!(why.contains("% failure rate before them"), "{why}");
        // On a healthy service a success ends the run.
        let (clock, _) = SharedClock::manual();
        let b = Breaker::new("qb", BreakerConfig::default(), clock);
        for ok in [false, false, false, false, true, false, false, false, false] {
            let p = b.try_acquire().unwrap();
            if ok {
                p.success(Duration::ZERO)
            } else {
                p.failure(Duration::ZERO)
            }
        }
        assert_eq!(b.state(), State::Closed);
    }

    /// Timeouts fill the window, but a burst of them (our own stall, or a service
    /// hanging on some calls) is no run of failures.
    #[test]
    fn timeouts_count_in_the_window_but_neither_make_nor_break_a_run() {
        let (clock, _) = SharedClock::manual();
        let b = Breaker::new("qb", BreakerConfig::default(), clock);
        for _ in 0..40 {
            b.try_acquire().unwrap().success(Duration::ZERO);
        }
        for _ in 0..12 {
            b.try_acquire()
                .unwrap()
                .timed_out(Duration::from_millis(250));
        }
        assert_eq!(b.state(), State::Closed, "twelve timeouts in a row");
        assert_eq!(b.view().failures, 12);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure(Duration::ZERO);
        }
        b.try_acquire().unwrap().timed_out(Duration::ZERO);
        for _ in 0..2 {
            b.try_acquire().unwrap().failure(Duration::ZERO);
        }
        assert_eq!(
            b.state(),
            State::Open,
            "five answered failures, a timeout between"
        );
    }

    #[test]
    fn the_streak_needed_grows_with_the_failure_rate_and_is_capped() {
        let cfg = BreakerConfig::default();
        assert_eq!(cfg.streak_needed(0.0), 5);
        assert_eq!(cfg.streak_needed(0.05), 5);
        assert_eq!(cfg.streak_needed(0.1), 6);
        assert_eq!(cfg.streak_needed(0.3), 12);
        assert_eq!(cfg.streak_needed(0.45), 18);
        assert_eq!(cfg.streak_needed(0.99), 20);
        let off = BreakerConfig {
            consecutive_failures: 0,
            ..cfg
        };
        assert_eq!(off.streak_needed(0.0), u32::MAX);
    }

    #[test]
    fn every_transition_starts_with_fresh_metrics() {
        let (b, _) = count_breaker(5);
        for _ in 0..4 {
            call(&b, false);
        }
        b.transition(State::MetricsOnly, "op").unwrap();
        assert_eq!(b.view().calls, 0);
    }
}
