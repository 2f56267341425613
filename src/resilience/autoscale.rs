//! Worker auto-scaling (AIMD on measured latency) and adaptive batch sizing.
//!
//! Each tick the pipeline reports what it measured. The target grows by one worker
//! when there is a backlog, at least half of the workers are busy and latency is within
//! `tolerance` × baseline; it shrinks ×0.9 on a 429, on timeouts outnumbering the work
//! done (a service that stopped answering, not one that drops a call now and then), or
//! latency beyond the tolerance. Latency is the service's: time spent waiting for a
//! rate-limiter permit is queueing in front of the quota, and when it is a large share
//! of the work ([`RATE_BOUND`]), or the limiter's rate is nearly all used
//! ([`RATE_USED`]), the limiter is the bottleneck — more workers would only queue, fewer
//! would not go faster — so the target holds and says so. The baseline is the lowest smoothed latency seen, and it may only rise
//! while the target sits at its floor — so sustained overload can never be mistaken for
//! the new normal (the upward drift of Gradient2 that docs/resilience.md describes).

pub use crate::protocol::ScaleDecision as Decision;
use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleConfig {
    pub min: u32,
    pub max: u32,
    /// Latency above `tolerance` × baseline means we are queueing somewhere.
    pub tolerance: f64,
    /// Multiplicative decrease.
    pub decrease: f64,
    /// EWMA weight of the newest latency sample.
    pub smoothing: f64,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        Self {
            min: 1,
            max: 32,
            tolerance: 1.25,
            decrease: 0.9,
            smoothing: 0.5,
        }
    }
}

/// The auto-scaler as a process left it (JSON in the store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedScaler {
    /// The config's bounds then: an operator's bounds are taken back only while the
    /// config still says the same.
    pub configured: (u32, u32),
    pub min: u32,
    pub max: u32,
    pub target: u32,
    /// Seconds.
    pub baseline: Option<f64>,
    pub smoothed: Option<f64>,
    /// Oldest first.
    pub decisions: Vec<Decision>,
}

/// The share of job time spent waiting for a limiter permit above which the pipeline
/// is rate-bound…
pub const RATE_BOUND: f64 = 0.25;
/// …or the share of the limiter's rate used.
pub const RATE_USED: f64 = 0.98;

/// What a pipeline measured over one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Mean latency of the work finished in the tick, waits for a limiter permit
    /// excluded (None when nothing finished).
    pub latency: Option<Duration>,
    /// Share (0–1) of the tick's job time spent waiting for a limiter permit.
    pub limited: f64,
    /// Share (0–1) of the limiter's rate the tick's requests used (0 without a limit).
    pub rate_use: f64,
    pub completed: u64,
    /// Mean number of busy workers over the tick.
    pub busy: f64,
    pub queued: u64,
    pub throttled: u64,
    pub timeouts: u64,
    /// Calls the downstream answered in the tick (a batch is one).
    pub answered: u64,
    /// Why the downstream takes no work now (its circuit is open): the tick says
    /// nothing of how many workers it could take.
    pub held: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Autoscaler {
    cfg: AutoscaleConfig,
    /// The bounds it was built with (the config's), before any operator's.
    configured: (u32, u32),
    target: u32,
    smoothed: Option<f64>,
    baseline: Option<f64>,
    decisions: VecDeque<Decision>,
    /// Timeouts and answered calls of the last few ticks, newest last.
    recent_calls: VecDeque<(u64, u64)>,
    /// Why the target is what it is right now (also when nothing changed).
    pub status: String,
}

/// Ticks over which timeouts are weighed against answers: batches answer seconds
/// apart, so one tick with a timeout and no answer says nothing.
const STALL_TICKS: usize = 5;

impl Autoscaler {
    pub fn new(cfg: AutoscaleConfig, initial: u32) -> Self {
        let target = initial.clamp(cfg.min.max(1), cfg.max.max(cfg.min.max(1)));
        Self {
            configured: (cfg.min, cfg.max),
            cfg,
            target,
            smoothed: None,
            baseline: None,
            decisions: VecDeque::new(),
            recent_calls: VecDeque::with_capacity(STALL_TICKS),
            status: "waiting for measurements".into(),
        }
    }

    pub fn target(&self) -> u32 {
        self.target
    }

    /// What the next process takes back with [`Autoscaler::restore`].
    pub fn saved(&self) -> SavedScaler {
        SavedScaler {
            configured: self.configured,
            min: self.cfg.min,
            max: self.cfg.max,
            target: self.target,
            baseline: self.baseline,
            smoothed: self.smoothed,
            decisions: self.decisions.iter().cloned().collect(),
        }
    }

    /// Takes back what a previous process learned: its target (within the bounds), its
    /// latency baseline and its decisions, and the bounds an operator set — unless the
    /// config's bounds changed since (the file is the newer word then).
    pub fn restore(&mut self, saved: SavedScaler) {
        if saved.configured == self.configured {
            self.cfg.min = saved.min.max(1);
            self.cfg.max = saved.max.max(self.cfg.min);
        }
        self.target = saved.target.clamp(self.cfg.min.max(1), self.cfg.max.max(1));
        self.baseline = saved.baseline.filter(|b| b.is_finite() && *b > 0.0);
        self.smoothed = saved.smoothed.filter(|b| b.is_finite() && *b > 0.0);
        self.decisions = saved.decisions.into_iter().rev().take(20).rev().collect();
        self.status = format!(
            "{} workers, as the previous run left it (bounds {}–{})",
            self.target, self.cfg.min, self.cfg.max
        );
    }

    pub fn config(&self) -> &AutoscaleConfig {
        &self.cfg
    }

    /// New bounds from an operator; the target is clamped into them at once.
    pub fn set_bounds(&mut self, min: u32, max: u32, at_ms: i64) -> Option<Decision> {
        self.cfg.min = min.max(1);
        self.cfg.max = max.max(self.cfg.min);
        let to = self.target.clamp(self.cfg.min, self.cfg.max);
        self.change(
            to,
            at_ms,
            format!("bounds set to {}–{}", self.cfg.min, self.cfg.max),
        )
    }

    /// Newest first.
    pub fn decisions(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().rev()
    }

    fn change(&mut self, to: u32, at_ms: i64, reason: String) -> Option<Decision> {
        self.status = reason.clone();
        if to == self.target {
            return None;
        }
        let d = Decision {
            at_ms,
            from: self.target,
            to,
            reason,
        };
        self.target = to;
        if self.decisions.len() >= 20 {
            self.decisions.pop_front();
        }
        self.decisions.push_back(d.clone());
        Some(d)
    }

    fn decreased(&self) -> u32 {
        let t = ((self.target as f64) * self.cfg.decrease).floor() as u32;
        t.min(self.target.saturating_sub(1)).max(self.cfg.min)
    }

    /// One tick's measurements in; a decision out when the target changed.
    pub fn observe(&mut self, s: &Sample, at_ms: i64) -> Option<Decision> {
        // Calls refused at once by an open circuit look like fast work: more workers
        // would only wait for it to close.
        if let Some(why) = &s.held {
            return self.change(self.target, at_ms, format!("held: {why}; holding"));
        }
        // Timeouts are a load signal when they outnumber the work done; a few hanging
        // calls among many answers are the service's, and fewer workers would not help.
        if self.recent_calls.len() == STALL_TICKS {
            self.recent_calls.pop_front();
        }
        self.recent_calls.push_back((s.timeouts, s.answered));
        let (timeouts, answered) = self
            .recent_calls
            .iter()
            .fold((0, 0), |(t, a), (dt, da)| (t + dt, a + da));
        let stalled = s.timeouts > 0 && timeouts >= answered;
        if s.throttled > 0 || stalled {
            let to = self.decreased();
            let why = match (s.throttled, stalled) {
                (t, false) => format!("{t} throttled (429)"),
                (0, true) => format!("{} timed out, {} done", s.timeouts, s.completed),
                (t, true) => format!("{t} throttled (429), {} timed out", s.timeouts),
            };
            return self.change(to, at_ms, why);
        }
        let Some(lat) = s.latency.map(|d| d.as_secs_f64()) else {
            let why = if s.queued == 0 {
                "idle: nothing queued".to_owned()
            } else if s.rate_use >= RATE_USED {
                // Batches finish a claim at once, seconds apart: a tick with none done
                // while the rate is all used is the quota at work, not a stall.
                format!(
                    "rate-bound: {:.0}% of the rate limit used, none finished this second; holding",
                    s.rate_use * 100.0
                )
            } else {
                format!("nothing finished; {} queued", s.queued)
            };
            return self.change(self.target, at_ms, why);
        };
        let a = self.cfg.smoothing.clamp(0.01, 1.0);
        let smoothed = match self.smoothed {
            None => lat,
            Some(prev) => prev + a * (lat - prev),
        };
        self.smoothed = Some(smoothed);
        let baseline = match self.baseline {
            None => smoothed,
            Some(b) if smoothed < b => smoothed,
            // Only at the floor can slower work be the service's new normal.
            Some(b) if self.target <= self.cfg.min => b + 0.1 * (smoothed - b),
            Some(b) => b,
        };
        self.baseline = Some(baseline);
        let ms = |x: f64| format!("{:.0} ms", x * 1000.0);
        // The quota is the bottleneck: the limiter's rate is (nearly) all used, or the
        // workers spend a good share of their time waiting for it. More workers would
        // only queue; fewer could leave permits unused; the service's latency (which
        // swings with its own noise) says nothing about either.
        let rate_bound = s.rate_use >= RATE_USED || s.limited >= RATE_BOUND;
        if rate_bound && s.queued > 0 {
            return self.change(
                self.target,
                at_ms,
                format!(
                    "rate-bound: {:.0}% of the rate limit used, {:.0}% of job time waiting for a permit; holding (latency {})",
                    s.rate_use * 100.0,
                    s.limited * 100.0,
                    ms(smoothed)
                ),
            );
        }
        if smoothed > self.cfg.tolerance * baseline {
            let to = self.decreased();
            return self.change(
                to,
                at_ms,
                format!(
                    "latency {} > {:.2} × baseline {}",
                    ms(smoothed),
                    self.cfg.tolerance,
                    ms(baseline)
                ),
            );
        }
        let half_busy = s.busy * 2.0 >= self.target as f64;
        if s.queued > 0 && half_busy && self.target < self.cfg.max {
            let to = self.target + 1;
            return self.change(
                to,
                at_ms,
                format!(
                    "latency {} within {:.2} × baseline, {} queued, {:.1} of {} busy",
                    ms(smoothed),
                    self.cfg.tolerance,
                    s.queued,
                    s.busy,
                    self.target
                ),
            );
        }
        let why = if s.queued == 0 {
            format!("light load: nothing queued, {:.1} busy", s.busy)
        } else if !half_busy {
            format!("{:.1} of {} busy: no need for more", s.busy, self.target)
        } else {
            format!("at the upper bound {}", self.cfg.max)
        };
        self.change(self.target, at_ms, why)
    }
}

/// Batch size (list pages, job claims): grows additively while under the latency
/// target, shrinks by a step above it, halves on 429 / 413 / timeouts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchSizer {
    pub min: u32,
    pub max: u32,
    pub step: u32,
    pub current: u32,
    pub target_ms: u64,
}

impl BatchSizer {
    pub fn new(min: u32, max: u32, step: u32, initial: u32, target: Duration) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        Self {
            min,
            max,
            step: step.max(1),
            current: initial.clamp(min, max),
            target_ms: target.as_millis() as u64,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        if latency.as_millis() as u64 <= self.target_ms {
            self.current = (self.current + self.step).min(self.max);
        } else {
            self.current = self.current.saturating_sub(self.step).max(self.min);
        }
    }

    pub fn cut(&mut self) {
        self.current = (self.current / 2).max(self.min);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server with capacity `c` concurrent requests and 100 ms service time; beyond
    /// capacity requests queue (latency grows with the excess), throughput is capped.
    fn serve(limit: u32, c: u32) -> (Duration, f64) {
        let s = 0.1;
        let lat = s * (limit as f64 / c as f64).max(1.0);
        let throughput = limit.min(c) as f64 / s;
        (Duration::from_secs_f64(lat), throughput)
    }

    #[test]
    fn an_open_circuit_holds_the_workers_however_fast_its_refusals() {
        let mut a = Autoscaler::new(AutoscaleConfig::default(), 2);
        let fast = Sample {
            latency: Some(Duration::from_millis(1)),
            completed: 50,
            busy: 2.0,
            queued: 400,
            held: Some("QuickBooks circuit OPEN".into()),
            ..Sample::default()
        };
        for t in 0..30 {
            a.observe(&fast, t * 1000);
        }
        assert_eq!(a.target(), 2);
        assert!(a.status.contains("QuickBooks circuit OPEN"), "{}", a.status);
        // Closed again, the same sample scales up.
        let closed = Sample { held: None, ..fast };
        a.observe(&closed, 31_000);
        assert_eq!(a.target(), 3);
    }

    fn busy_sample(limit: u32, c: u32) -> Sample {
        let (lat, tp) = serve(limit, c);
        Sample {
            latency: Some(lat),
            completed: tp as u64,
            busy: limit as f64,
            queued: 10_000,
            ..Sample::default()
        }
    }

    fn scaler() -> Autoscaler {
        Autoscaler::new(
            AutoscaleConfig {
                min: 1,
                max: 500,
                ..AutoscaleConfig::default()
            },
            1,
        )
    }

    #[test]
    fn against_a_simulated_server_the_limit_stays_near_capacity_for_ten_minutes() {
        let c = 50;
        let mut a = scaler();
        let (mut sum, mut n, mut done, mut best) = (0.0, 0.0, 0.0, 0.0);
        let mut lats = vec![];
        for t in 0..600 {
            let (lat, tp) = serve(a.target(), c);
            if t >= 120 {
                // after warm-up
                sum += a.target() as f64;
                n += 1.0;
                done += tp;
                best += serve(c, c).1;
                lats.push(lat);
            }
            a.observe(&busy_sample(a.target(), c), t);
        }
        let mean = sum / n;
        assert!(
            (0.8 * c as f64..=1.3 * c as f64).contains(&mean),
            "mean limit {mean}"
        );
        assert!(done / best >= 0.9, "throughput {:.2} of max", done / best);
        lats.sort();
        let p99 = lats[lats.len() * 99 / 100];
        assert!(p99 <= Duration::from_millis(150), "p99 {p99:?}");
    }

    #[test]
    fn under_sustained_overload_the_limit_does_not_drift_upward() {
        let c = 50;
        let mut a = scaler();
        let mut at_120 = 0;
        for t in 0..600 {
            if t == 120 {
                at_120 = a.target();
            }
            a.observe(&busy_sample(a.target(), c), t);
        }
        assert!(
            a.target() <= (1.3 * c as f64) as u32,
            "{} at 600 s",
            a.target()
        );
        assert!(
            a.target() <= at_120 + 10,
            "{} vs {at_120} at 120 s",
            a.target()
        );
    }

    #[test]
    fn follows_a_drop_of_capacity_to_half_within_seconds() {
        let mut a = scaler();
        for t in 0..300 {
            a.observe(&busy_sample(a.target(), 50), t);
        }
        assert!(a.target() >= 45);
        let mut took = None;
        for t in 0..60 {
            a.observe(&busy_sample(a.target(), 25), 300 + t);
            if a.target() as f64 <= 1.3 * 25.0 {
                took = Some(t);
                break;
            }
        }
        let took = took.expect("followed the drop");
        assert!(took <= 10, "took {took} ticks");
        let mut sum = 0.0;
        for t in 0..120 {
            a.observe(&busy_sample(a.target(), 25), 400 + t);
            sum += a.target() as f64;
        }
        let mean = sum / 120.0;
        assert!((20.0..=32.5).contains(&mean), "mean after drop {mean}");
    }

    #[test]
    fn never_grows_under_light_load() {
        let mut a = Autoscaler::new(AutoscaleConfig::default(), 2);
        for t in 0..600 {
            // Two jobs a second, each done in 50 ms: mostly idle, nothing waiting.
            let s = Sample {
                latency: Some(Duration::from_millis(50)),
                completed: 2,
                busy: 0.1,
                queued: (t % 7 == 0) as u64,
                ..Sample::default()
            };
            assert_eq!(a.observe(&s, t), None);
        }
        assert_eq!(a.target(), 2);
        assert!(a.status.contains("busy") || a.status.contains("light"));
    }

    #[test]
    fn throttling_or_timeouts_cut_the_target_multiplicatively_and_say_why() {
        let mut a = Autoscaler::new(AutoscaleConfig::default(), 20);
        let d = a
            .observe(
                &Sample {
                    throttled: 3,
                    ..Sample::default()
                },
                1,
            )
            .unwrap();
        assert_eq!((d.from, d.to), (20, 18));
        assert!(d.reason.contains("3 throttled"));
        let d = a
            .observe(
                &Sample {
                    timeouts: 1,
                    ..Sample::default()
                },
                2,
            )
            .unwrap();
        assert_eq!(d.to, 16);
        assert_eq!(a.decisions().next().unwrap().to, 16, "newest first");
    }

    /// Issue 14 point 5: at the quota, job latency swings with the wait for a permit
    /// and the service's noise; the target holds and says why.
    #[test]
    fn a_rate_bound_pipeline_holds_and_says_the_rate_is_the_bottleneck() {
        let mut a = Autoscaler::new(AutoscaleConfig::default(), 6);
        let mut changes = 0;
        for t in 0..120 {
            // 90 ms ± 30 ms of service time; the quota used in full.
            let noise = [0.0, 0.03, -0.02, 0.025, -0.03, 0.01][t % 6];
            let s = Sample {
                latency: Some(Duration::from_secs_f64(0.09 + noise)),
                limited: 0.4,
                rate_use: 0.98,
                completed: 4,
                busy: 6.0,
                queued: 500,
                ..Sample::default()
            };
            changes += a.observe(&s, t as i64).is_some() as u32;
        }
        assert_eq!(changes, 0, "{:?}", a.decisions().collect::<Vec<_>>());
        assert!(a.status.starts_with("rate-bound"), "{}", a.status);
    }

    /// Batches finish a claim of up to 30 jobs at once, a second or more apart: a tick
    /// with none finished while the rate is all used is still the quota at work.
    #[test]
    fn batches_finishing_seconds_apart_still_read_as_rate_bound() {
        let mut a = Autoscaler::new(AutoscaleConfig::default(), 6);
        let mut changes = 0;
        for t in 0..120 {
            let finished = t % 3 == 0;
            let s = Sample {
                latency: finished.then(|| Duration::from_millis(120)),
                limited: if finished { 0.9 } else { 0.0 },
                rate_use: 1.0,
                completed: if finished { 30 } else { 0 },
                busy: 6.0,
                queued: 900,
                ..Sample::default()
            };
            changes += a.observe(&s, t as i64).is_some() as u32;
            assert!(a.status.starts_with("rate-bound"), "{t}: {}", a.status);
        }
        assert_eq!(changes, 0, "{:?}", a.decisions().collect::<Vec<_>>());
    }

    /// Issue 18 point 1: a service that hangs on one call in five times out every tick;
    /// fewer workers would not help, so that alone does not cut the target.
    #[test]
    fn a_few_hanging_calls_do_not_cut_the_target_but_a_stalled_service_does() {
        let mut a = Autoscaler::new(AutoscaleConfig::default(), 10);
        let hanging = Sample {
            latency: Some(Duration::from_millis(50)),
            completed: 40,
            answered: 40,
            busy: 8.0,
            queued: 500,
            timeouts: 10,
            ..Sample::default()
        };
        for t in 0..30 {
            a.observe(&hanging, t);
        }
        assert!(a.target() >= 10, "{}", a.target());
        // Batches answer seconds apart: a tick with a timeout and none answered, between
        // ticks that answered, is not a stall.
        let between = Sample {
            latency: None,
            completed: 0,
            answered: 0,
            timeouts: 1,
            ..hanging.clone()
        };
        for t in 30..40 {
            a.observe(if t % 2 == 0 { &hanging } else { &between }, t);
        }
        assert!(a.target() >= 10, "{}", a.target());
        // A service that answers almost nothing any more is stalled within a few ticks.
        let stalled = Sample {
            completed: 1,
            answered: 1,
            timeouts: 8,
            ..hanging
        };
        let d = (41..41 + STALL_TICKS as i64)
            .find_map(|t| a.observe(&stalled, t).filter(|d| d.to < d.from))
            .expect("a stall cuts the target");
        assert!(d.reason.contains("8 timed out"), "{d:?}");
    }

    #[test]
    fn bounds_are_respected_and_an_operator_change_clamps_at_once() {
        let mut a = Autoscaler::new(
            AutoscaleConfig {
                min: 2,
                max: 4,
                ..AutoscaleConfig::default()
            },
            9,
        );
        assert_eq!(a.target(), 4);
        for t in 0..50 {
            a.observe(&busy_sample(a.target(), 100), t);
        }
        assert_eq!(a.target(), 4);
        let d = a.set_bounds(1, 2, 60).unwrap();
        assert_eq!((d.from, d.to), (4, 2));
        for _ in 0..10 {
            a.observe(
                &Sample {
                    throttled: 1,
                    ..Sample::default()
                },
                70,
            );
        }
        assert_eq!(a.target(), 1);
    }

    #[test]
    fn batch_grows_additively_under_target_and_halves_on_throttling() {
        let mut b = BatchSizer::new(1, 16, 2, 4, Duration::from_millis(100));
        b.record(Duration::from_millis(20));
        b.record(Duration::from_millis(20));
        assert_eq!(b.current, 8);
        b.record(Duration::from_millis(200));
        assert_eq!(b.current, 6);
        b.cut();
        assert_eq!(b.current, 3);
        for _ in 0..20 {
            b.record(Duration::ZERO);
        }
        assert_eq!(b.current, 16);
        for _ in 0..10 {
            b.cut();
        }
        assert_eq!(b.current, 1);
    }

    /// Issue 17 point 6: a restart keeps what the scaler learned and the bounds an
    /// operator set — unless the config's bounds changed meanwhile.
    #[test]
    fn a_restart_keeps_the_target_the_baseline_and_an_operators_bounds() {
        let cfg = AutoscaleConfig {
            min: 1,
            max: 32,
            ..AutoscaleConfig::default()
        };
        let mut a = Autoscaler::new(cfg.clone(), 8);
        for t in 0..5 {
            a.observe(&busy_sample(a.target(), 50), t * 1000);
        }
        a.set_bounds(4, 12, 6000);
        let saved: SavedScaler =
            serde_json::from_str(&serde_json::to_string(&a.saved()).unwrap()).unwrap();
        let mut b = Autoscaler::new(cfg.clone(), 8);
        b.restore(saved.clone());
        assert_eq!((b.config().min, b.config().max), (4, 12));
        assert_eq!(b.target(), a.target());
        assert_eq!(b.saved(), a.saved());
        assert!(b.status.contains("previous run"), "{}", b.status);
        // The config's bounds changed while it was down: they win, the target fits them.
        let mut c = Autoscaler::new(
            AutoscaleConfig {
                min: 1,
                max: 6,
                ..cfg
            },
            4,
        );
        c.restore(saved);
        assert_eq!((c.config().min, c.config().max), (1, 6));
        assert!(c.target() <= 6);
    }
}
