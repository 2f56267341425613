//! Rate limits per downstream: a proactive GCRA (`governor`) at the published quota, a
//! concurrency cap, and a reactive pause of every caller on 429 until the pushback
//! ends (then a jittered resume). Both limits fall multiplicatively on a 429 and climb
//! back additively while calls succeed.

pub use crate::protocol::LimiterView;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{Quota, RateLimiter};
use tokio::sync::Notify;

use super::clock::SharedClock;
use super::retry::Rng;

type Gcra = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    SharedClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

#[derive(Debug, Clone, PartialEq)]
pub struct LimiterConfig {
    /// Requests per minute; 0 = no rate limit.
    pub rate_per_min: u32,
    /// Requests in flight; 0 = no cap.
    pub max_concurrent: u32,
    /// Requests allowed back to back before spacing applies.
    pub burst: u32,
    /// How long a 429 without `Retry-After` pauses callers.
    pub default_pushback: Duration,
    /// The lowest share of the configured limits a 429 can push us to.
    pub min_factor: f64,
    /// Share of the configured rate won back per `recovery_interval` of success.
    pub recovery_step: f64,
    pub recovery_interval: Duration,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            rate_per_min: 0,
            max_concurrent: 0,
            burst: 1,
            default_pushback: Duration::from_secs(1),
            min_factor: 0.1,
            recovery_step: 0.1,
            recovery_interval: Duration::from_secs(1),
        }
    }
}

/// Why a caller must wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wait {
    /// A 429's pushback is in force for this long.
    Paused(Duration),
    /// Every in-flight slot is taken.
    Concurrency,
    /// The rate allows the next request after this long.
    Rate(Duration),
}

struct LState {
    factor: f64,
    conc_cap: u32,
    in_flight: u32,
    paused_until: Option<Duration>,
    last_change: Duration,
    last_decrease: Option<Duration>,
    throttles: u64,
    rate_waits: u64,
    granted: u64,
}

pub struct Limiter {
    name: String,
    cfg: LimiterConfig,
    clock: SharedClock,
    st: Mutex<LState>,
    gcra: Mutex<Option<Arc<Gcra>>>,
    freed: Notify,
    rng: Mutex<Rng>,
}

/// One in-flight slot; freed on drop.
pub struct Slot {
    limiter: Arc<Limiter>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.limiter.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        drop(st);
        self.limiter.freed.notify_one();
    }
}

impl Limiter {
    pub fn new(name: &str, cfg: LimiterConfig, clock: SharedClock) -> Arc<Self> {
        let l = Arc::new(Self {
            name: name.to_owned(),
            st: Mutex::new(LState {
                factor: 1.0,
                conc_cap: cfg.max_concurrent,
                in_flight: 0,
                paused_until: None,
                last_change: clock.now(),
                last_decrease: None,
                throttles: 0,
                rate_waits: 0,
                granted: 0,
            }),
            cfg,
            clock,
            gcra: Mutex::new(None),
            freed: Notify::new(),
            rng: Mutex::new(Rng::from_time()),
        });
        l.rebuild(1.0);
        l
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rebuild(&self, factor: f64) {
        let cfg = &self.cfg;
        let g = (cfg.rate_per_min > 0).then(|| {
            let per_min = (cfg.rate_per_min as f64 * factor).max(1.0);
            let period = Duration::from_secs_f64(60.0 / per_min);
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(cfg.burst.max(1)).unwrap_or(NonZeroU32::MIN));
            Arc::new(RateLimiter::direct_with_clock(quota, self.clock.clone()))
        });
        *self.gcra.lock().unwrap_or_else(|p| p.into_inner()) = g;
    }

    /// Takes a slot now, or says why and for how long not.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Slot, Wait> {
        let now = self.clock.now();
        let mut st = self.lock();
        if let Some(until) = st.paused_until {
            if now < until {
                return Err(Wait::Paused(until - now));
            }
            st.paused_until = None;
        }
        if st.conc_cap > 0 && st.in_flight >= st.conc_cap {
            return Err(Wait::Concurrency);
        }
        let gcra = self.gcra.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(g) = gcra
            && let Err(not_until) = g.check()
        {
            st.rate_waits += 1;
            return Err(Wait::Rate(not_until.wait_time_from(self.clock.now())));
        }
        st.in_flight += 1;
        st.granted += 1;
        Ok(Slot {
            limiter: self.clone(),
        })
    }

    /// Waits for a slot: through any pause (resuming with jitter), a free in-flight
    /// slot and the rate.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            match self.try_acquire() {
                Ok(slot) => return slot,
                Err(Wait::Paused(d)) => {
                    // Resume with jitter so paused callers do not return in lock step.
                    let spread = (d / 5).clamp(Duration::from_millis(10), Duration::from_secs(2));
                    let j = self
                        .rng
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .between(Duration::ZERO, spread);
                    tokio::time::sleep(d + j).await;
                }
                Err(Wait::Concurrency) => {
                    tokio::select! {
                        _ = freed => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                Err(Wait::Rate(d)) => tokio::time::sleep(d.max(Duration::from_micros(100))).await,
            }
        }
    }

    /// Takes `cells` more of the rate without an in-flight slot: what a request that
    /// carries several operations (a QuickBooks batch, each operation counted toward
    /// the per-minute quota) spends beyond its own slot. Waits through any pause, then
    /// for each cell in turn (a burst smaller than `cells` still works).
    pub async fn acquire_cells(self: &Arc<Self>, cells: u32) {
        let mut left = cells;
        while left > 0 {
            let now = self.clock.now();
            let paused = self.lock().paused_until.filter(|u| now < *u);
            if let Some(until) = paused {
                tokio::time::sleep(until - now).await;
                continue;
            }
            let gcra = self.gcra.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let Some(g) = gcra else {
                return;
            };
            match g.check() {
                Ok(()) => left -= 1,
                Err(not_until) => {
                    self.lock().rate_waits += 1;
                    let d = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(d.max(Duration::from_micros(100))).await;
                }
            }
        }
    }

    /// A 429: pause every caller for the pushback, and halve the limits (once per
    /// pushback, however many in-flight calls report it).
    pub fn on_throttle(&self, pushback: Option<Duration>) {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let pushback = pushback.unwrap_or(cfg.default_pushback);
        let factor = {
            let mut st = self.lock();
            st.throttles += 1;
            let until = now + pushback;
            st.paused_until = Some(st.paused_until.map_or(until, |u| u.max(until)));
            let recent = st
                .last_decrease
                .is_some_and(|t| now.saturating_sub(t) < pushback.max(cfg.recovery_interval));
            if recent {
                return;
            }
            st.last_decrease = Some(now);
            st.last_change = until;
            st.factor = (st.factor * 0.5).max(cfg.min_factor);
            if st.conc_cap > 0 {
                st.conc_cap = (st.conc_cap / 2).max(1);
            } else if cfg.max_concurrent == 0 && st.in_flight > 1 {
                // No configured cap: start capping at half of what was in flight.
                st.conc_cap = (st.in_flight / 2).max(1);
            }
            st.factor
        };
        tracing::warn!(
            "{}: throttled (429); pausing {:?}, limits now {:.0}%",
            self.name,
            pushback,
            factor * 100.0
        );
        self.rebuild(factor);
    }

    /// A success: after each quiet `recovery_interval`, win back a step of rate and one
    /// in-flight slot.
    pub fn on_success(&self) {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let factor = {
            let mut st = self.lock();
            if now.saturating_sub(st.last_change) < cfg.recovery_interval
                || st.paused_until.is_some_and(|u| now < u)
            {
                return;
            }
            let full_conc = st.conc_cap == cfg.max_concurrent;
            if st.factor >= 1.0 && full_conc {
                return;
            }
            st.last_change = now;
            let before = st.factor;
            st.factor = (st.factor + cfg.recovery_step).min(1.0);
            if !full_conc {
                if cfg.max_concurrent == 0 {
                    st.conc_cap += 1;
                    if st.conc_cap > 64 {
                        st.conc_cap = 0; // uncapped again
                    }
                } else {
                    st.conc_cap = (st.conc_cap + 1).min(cfg.max_concurrent);
                }
            }
            if st.factor == before {
                None
            } else {
                Some(st.factor)
            }
        };
        self.freed.notify_waiters();
        if let Some(f) = factor {
            self.rebuild(f);
        }
    }

    pub fn view(&self) -> LimiterView {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let st = self.lock();
        LimiterView {
            rate_per_min: cfg.rate_per_min,
            effective_per_min: (cfg.rate_per_min as f64 * st.factor).round() as u32,
            max_concurrent: cfg.max_concurrent,
            effective_concurrent: st.conc_cap,
            in_flight: st.in_flight,
            paused_for_ms: st
                .paused_until
                .map_or(0, |u| u.saturating_sub(now).as_millis() as u64),
            throttles: st.throttles,
            rate_waits: st.rate_waits,
            granted: st.granted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, conc: u32) -> (Arc<Limiter>, Arc<super::super::clock::ManualClock>) {
        let (clock, manual) = SharedClock::manual();
        let l = Limiter::new(
            "qb",
            LimiterConfig {
                rate_per_min: rate,
                max_concurrent: conc,
                default_pushback: Duration::from_secs(60),
                ..LimiterConfig::default()
            },
            clock,
        );
        (l, manual)
    }

    /// Grants over `secs` simulated seconds, stepping 1 ms and releasing at once.
    fn grants_over(l: &Arc<Limiter>, clock: &super::super::clock::ManualClock, secs: u64) -> u64 {
        let mut n = 0;
        for _ in 0..secs * 1000 {
            while l.try_acquire().is_ok() {
                n += 1;
            }
            clock.advance(Duration::from_millis(1));
        }
        n
    }

    #[test]
    fn gcra_grants_exactly_the_published_quota_per_minute() {
        // QuickBooks: 500 requests/min.
        let (l, clock) = limiter(500, 0);
        let n = grants_over(&l, &clock, 60);
        assert!((499..=501).contains(&n), "{n} in a minute");
    }

    #[test]
    fn gcra_spaces_requests_and_says_how_long_to_wait() {
        let (l, _) = limiter(6000, 0); // 100/s → one per 10 ms
        let _a = l.try_acquire().unwrap();
        match l.try_acquire() {
            Err(Wait::Rate(d)) => assert_eq!(d, Duration::from_millis(10)),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn concurrency_cap_holds_and_a_released_slot_is_reusable() {
        let (l, _) = limiter(0, 10);
        let slots: Vec<_> = (0..10).map(|_| l.try_acquire().unwrap()).collect();
        assert!(matches!(l.try_acquire(), Err(Wait::Concurrency)));
        drop(slots);
        assert_eq!(l.view().in_flight, 0);
        assert!(l.try_acquire().is_ok());
    }

    #[test]
    fn throttle_pauses_every_caller_until_the_pushback_ends() {
        let (l, clock) = limiter(0, 10);
        l.on_throttle(None); // QuickBooks: 60 s
        assert!(matches!(l.try_acquire(), Err(Wait::Paused(d)) if d == Duration::from_secs(60)));
        clock.advance(Duration::from_secs(59));
        assert!(matches!(l.try_acquire(), Err(Wait::Paused(_))));
        clock.advance(Duration::from_secs(1));
        assert!(l.try_acquire().is_ok());
    }

    #[test]
    fn throttle_halves_limits_once_per_pushback_and_recovers_additively() {
        let (l, clock) = limiter(600, 10);
        for _ in 0..5 {
            l.on_throttle(Some(Duration::from_secs(2))); // five in-flight calls see the 429
        }
        let v = l.view();
        assert_eq!((v.effective_per_min, v.effective_concurrent), (300, 5));
        assert_eq!(v.throttles, 5);
        // Recovery starts after the pause, one step per quiet second.
        clock.advance(Duration::from_secs(2));
        l.on_success();
        assert_eq!(l.view().effective_per_min, 300);
        let mut seen = vec![];
        for _ in 0..6 {
            clock.advance(Duration::from_secs(1));
            l.on_success();
            seen.push(l.view().effective_per_min);
        }
        assert_eq!(seen, [360, 420, 480, 540, 600, 600]);
        assert_eq!(l.view().effective_concurrent, 10);
    }

    #[test]
    fn repeated_throttles_never_go_below_the_floor() {
        let (l, clock) = limiter(600, 10);
        for _ in 0..20 {
            l.on_throttle(Some(Duration::from_secs(1)));
            clock.advance(Duration::from_secs(2));
        }
        let v = l.view();
        assert_eq!(v.effective_per_min, 60);
        assert_eq!(v.effective_concurrent, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_out_the_rate_on_tokio_time() {
        let l = Limiter::new(
            "s",
            LimiterConfig {
                rate_per_min: 600,
                ..LimiterConfig::default()
            },
            SharedClock::tokio(),
        );
        let start = tokio::time::Instant::now();
        for _ in 0..11 {
            drop(l.acquire().await);
        }
        // 11 requests at 10/s: the 11th goes at 1 s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
            "{took:?}"
        );
    }
}
