//! Retry delays (exponential, linear, fibonacci; full, equal and decorrelated jitter,
//! always inside the cap), server pushback (`Retry-After` as seconds or an HTTP date),
//! and a retry budget per downstream shared by every caller (Finagle's shape).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::clock::SharedClock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    Exponential,
    Linear,
    Fibonacci,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    None,
    Full,
    Equal,
    Decorrelated,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    pub jitter: Jitter,
    pub base: Duration,
    pub cap: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff: Backoff::Exponential,
            jitter: Jitter::Full,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            max_attempts: 3,
        }
    }
}

/// A small, fast generator (SplitMix64) for jitter; seeded per caller.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn from_time() -> Self {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Self::new(t ^ (&t as *const u64 as u64))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi] (nanosecond resolution).
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo).as_nanos() as u64;
        lo + Duration::from_nanos(self.next_u64() % (span + 1))
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl RetryPolicy {
    /// The un-jittered delay before retry number `n` (1 = the first retry), capped.
    pub fn raw(&self, n: u32) -> Duration {
        let n = n.max(1);
        let d = match self.backoff {
            Backoff::Exponential => self.base.saturating_mul(1u32 << (n - 1).min(30)),
            Backoff::Linear => self.base.saturating_mul(n),
            Backoff::Fibonacci => {
                let (mut a, mut b) = (1u32, 1u32);
                for _ in 1..n.min(45) {
                    (a, b) = (b, a.saturating_add(b));
                }
                self.base.saturating_mul(a)
            }
        };
        d.min(self.cap)
    }

    /// The delay before retry `n`; `prev` is the previous delay (decorrelated jitter).
    /// Never above the cap: jitter is drawn inside it, not added on top.
    pub fn delay(&self, n: u32, prev: Duration, rng: &mut Rng) -> Duration {
        let expo = self.raw(n);
        let d = match self.jitter {
            Jitter::None => expo,
            Jitter::Full => rng.between(Duration::ZERO, expo),
            Jitter::Equal => expo / 2 + rng.between(Duration::ZERO, expo / 2),
            Jitter::Decorrelated => {
                let hi = prev.max(self.base).saturating_mul(3).min(self.cap);
                rng.between(self.base.min(hi), hi)
            }
        };
        d.min(self.cap)
    }
}

/// Parses `Retry-After`: delta seconds, or an HTTP date (a past date = 0).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let fmt = time::format_description::well_known::Rfc2822;
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") parses as RFC 2822 once GMT is +0000.
    let normalized = v.replace(" GMT", " +0000").replace(" UTC", " +0000");
    let at = time::OffsetDateTime::parse(&normalized, &fmt).ok()?;
    let at =
        SystemTime::UNIX_EPOCH + Duration::try_from(at - time::OffsetDateTime::UNIX_EPOCH).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How long to wait before the next attempt: the longer of our backoff and the server's.
pub fn wait_before_retry(backoff: Duration, pushback: Option<Duration>) -> Duration {
    backoff.max(pushback.unwrap_or(Duration::ZERO))
}

#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// How long deposits and withdrawals are remembered.
    pub ttl: Duration,
    /// Retries always allowed per second of the ttl, even with little traffic.
    pub min_retries_per_sec: u32,
    /// Retries allowed as a share of requests (0.2 = 20 %).
    pub percent_can_retry: f64,
}

impl Default for BudgetConfig {
    /// Finagle's defaults: 20 % of requests plus 10 retries/s over 10 s.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            min_retries_per_sec: 10,
            percent_can_retry: 0.2,
        }
    }
}

/// One budget per downstream: retries may not exceed `percent` of requests plus a
/// reserve, over a sliding `ttl`.
pub struct RetryBudget {
    cfg: BudgetConfig,
    clock: SharedClock,
    /// Per-second buckets: (second, requests, retries).
    buckets: Mutex<VecDeque<(u64, u64, u64)>>,
}

impl RetryBudget {
    pub fn new(cfg: BudgetConfig, clock: SharedClock) -> Self {
        Self {
            cfg,
            clock,
            buckets: Mutex::new(VecDeque::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut VecDeque<(u64, u64, u64)>, u64) -> R) -> R {
        let second = self.clock.now().as_secs();
        let ttl = self.cfg.ttl.as_secs().max(1);
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        while b.front().is_some_and(|(s, _, _)| s + ttl <= second) {
            b.pop_front();
        }
        if b.back().is_none_or(|(s, _, _)| *s != second) {
            b.push_back((second, 0, 0));
        }
        f(&mut b, second)
    }

    /// Every request (first attempts) deposits.
    pub fn deposit(&self) {
        self.with(|b, _| {
            if let Some(last) = b.back_mut() {
                last.1 += 1;
            }
        });
    }

    /// Retries the window still allows: reserve + percent × requests − retries.
    fn left(&self, b: &VecDeque<(u64, u64, u64)>) -> f64 {
        let (req, ret) = b
            .iter()
            .fold((0u64, 0u64), |(a, r), (_, x, y)| (a + x, r + y));
        self.cfg.min_retries_per_sec as f64 * self.cfg.ttl.as_secs_f64()
            + self.cfg.percent_can_retry * req as f64
            - ret as f64
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.with(|b, _| {
            let ok = self.left(b) >= 1.0;
            if ok && let Some(last) = b.back_mut() {
                last.2 += 1;
            }
            ok
        })
    }

    /// Retries still available now.
    pub fn available(&self) -> u64 {
        self.with(|b, _| self.left(b).max(0.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff, jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            backoff,
            jitter,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            max_attempts: 10,
        }
    }

    #[test]
    fn exponential_linear_and_fibonacci_delays_grow_then_stop_at_the_cap() {
        let ms = |p: &RetryPolicy| (1..=7).map(|n| p.raw(n).as_millis()).collect::<Vec<_>>();
        assert_eq!(
            ms(&policy(Backoff::Exponential, Jitter::None)),
            [100, 200, 400, 800, 1600, 2000, 2000]
        );
        assert_eq!(
            ms(&policy(Backoff::Linear, Jitter::None)),
            [100, 200, 300, 400, 500, 600, 700]
        );
        assert_eq!(
            ms(&policy(Backoff::Fibonacci, Jitter::None)),
            [100, 100, 200, 300, 500, 800, 1300]
        );
        assert_eq!(
            policy(Backoff::Exponential, Jitter::None).raw(200),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_capped_exponential() {
        let p = policy(Backoff::Exponential, Jitter::Full);
        let mut rng = Rng::new(1);
        let mut at_cap = 0;
        for n in 1..=20 {
            for _ in 0..500 {
                let d = p.delay(n, Duration::ZERO, &mut rng);
                assert!(d <= p.raw(n), "{d:?} > {:?}", p.raw(n));
                at_cap += (d == p.cap) as u32;
            }
        }
        assert!(at_cap < 10, "draws must not pile up at the cap ({at_cap})");
    }

    #[test]
    fn equal_jitter_stays_within_half_and_all_of_the_capped_exponential() {
        let p = policy(Backoff::Exponential, Jitter::Equal);
        let mut rng = Rng::new(2);
        for n in 1..=20 {
            for _ in 0..500 {
                let d = p.delay(n, Duration::ZERO, &mut rng);
                assert!(d >= p.raw(n) / 2 && d <= p.raw(n));
            }
        }
    }

    #[test]
    fn decorrelated_jitter_stays_between_base_and_three_times_previous_inside_the_cap() {
        let p = policy(Backoff::Exponential, Jitter::Decorrelated);
        let mut rng = Rng::new(3);
        let mut prev = p.base;
        for n in 1..=2000 {
            let d = p.delay(n, prev, &mut rng);
            assert!(d >= p.base, "{d:?}");
            assert!(d <= (prev * 3).min(p.cap), "{d:?} prev {prev:?}");
            prev = d;
        }
    }

    #[test]
    fn retry_after_in_seconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_as_http_date_and_a_past_date_is_zero() {
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 - 30);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(30))
        );
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 + 30);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn pushback_is_honoured_as_the_max_of_backoff_and_retry_after() {
        let s = Duration::from_secs;
        assert_eq!(wait_before_retry(s(2), Some(s(60))), s(60));
        assert_eq!(wait_before_retry(s(90), Some(s(60))), s(90));
        assert_eq!(wait_before_retry(s(2), None), s(2));
    }

    #[test]
    fn budget_allows_the_reserve_plus_twenty_percent_then_is_exhausted() {
        let (clock, manual) = SharedClock::manual();
        let b = RetryBudget::new(
            BudgetConfig {
                ttl: Duration::from_secs(10),
                min_retries_per_sec: 1,
                percent_can_retry: 0.2,
            },
            clock,
        );
        for _ in 0..100 {
            b.deposit();
        }
        // reserve 10 + 20 % of 100 = 30 retries.
        let granted = (0..100).filter(|_| b.try_withdraw()).count();
        assert_eq!(granted, 30);
        assert!(!b.try_withdraw(), "exhausted");
        // After the ttl everything is forgotten: the reserve is back.
        manual.advance(Duration::from_secs(10));
        assert_eq!(b.available(), 10);
        assert!(b.try_withdraw());
    }

    #[test]
    fn budget_is_shared_by_every_caller() {
        let (clock, _) = SharedClock::manual();
        let b = std::sync::Arc::new(RetryBudget::new(
            BudgetConfig {
                ttl: Duration::from_secs(10),
                min_retries_per_sec: 0,
                percent_can_retry: 0.5,
            },
            clock,
        ));
        for _ in 0..4 {
            b.deposit();
        }
        let other = b.clone();
        assert!(b.try_withdraw());
        assert!(other.try_withdraw());
        assert!(!b.try_withdraw(), "the second caller spent the rest");
    }
}
