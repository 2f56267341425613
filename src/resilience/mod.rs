//! The resilience layer: one [`Downstream`] policy object per service (stripe,
//! quickbooks, alegra) guards every call to it — circuit breaker, rate and concurrency
//! limits, retries with a shared budget — and keeps the figures the console shows.
//! Connectors stay plain clients; this wraps them from outside.

pub mod autoscale;
pub mod breaker;
pub mod clock;
pub mod limiter;
pub mod retry;

pub use crate::protocol::DownstreamView;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use breaker::{Breaker, BreakerConfig, BreakerView, Rejected, State};
pub use clock::SharedClock;
pub use limiter::{Limiter, LimiterConfig, LimiterView};
pub use retry::{BudgetConfig, RetryBudget, RetryPolicy, Rng};

tokio::task_local! {
    /// Permit waits of the calls made under [`measuring_permit_wait`] (nanoseconds).
    static PERMIT_WAIT: std::cell::Cell<u64>;
}

/// Runs `f`, and says how long its calls waited for limiter permits (of any
/// downstream): queueing in front of a quota, to tell apart from the service's latency.
pub async fn measuring_permit_wait<F: Future>(f: F) -> (F::Output, Duration) {
    PERMIT_WAIT
        .scope(std::cell::Cell::new(0), async {
            let out = f.await;
            let waited = PERMIT_WAIT.with(std::cell::Cell::get);
            (out, Duration::from_nanos(waited))
        })
        .await
}

/// How an outcome counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    /// Transport errors and 5xx: the service's fault.
    Failure,
    /// The request timed out: a failure, and a signal to slow down.
    Timeout,
    /// 4xx caused by our request: not the service's fault, not counted.
    Ignored,
    /// 429: a rate signal for the limiter, never a breaker failure.
    Throttled(Option<Duration>),
}

/// Errors of a connector, as the resilience layer needs to see them.
pub trait Classify: Sized {
    fn class(&self) -> Class;
    /// Whether the same request may succeed if sent again.
    fn retryable(&self) -> bool;
    /// The error for a call the breaker refused (no request was sent).
    fn rejected(r: Rejected) -> Self;
    /// The error for a call given up after `after` without an answer (the downstream's
    /// adaptive timeout). None: this kind of call keeps only its client's own timeout.
    fn timed_out(after: Duration) -> Option<Self> {
        let _ = after;
        None
    }
}

#[derive(Debug, Clone)]
pub struct DownstreamConfig {
    pub breaker: BreakerConfig,
    pub limiter: LimiterConfig,
    pub retry: RetryPolicy,
    pub budget: BudgetConfig,
    /// The longest any call may take (the service's `timeout_secs`); calls are given up
    /// much sooner once the service's latency is known (see [`Downstream::timeout`]).
    pub timeout: Duration,
}

/// An attempt is given up after `TIMEOUT_P99S` × the p99 of the service's recent
/// successful calls (twice that while fewer than [`TIMEOUT_SAMPLES`] tell the p99)…
pub const TIMEOUT_P99S: u32 = 4;
/// …but never sooner than this…
pub const TIMEOUT_FLOOR: Duration = Duration::from_millis(250);
/// …nor, before [`TIMEOUT_MIN_SAMPLES`] successes, later than this (a first call that
/// hangs must not hold everything waiting on it for the configured minute).
pub const TIMEOUT_COLD: Duration = Duration::from_secs(5);
const TIMEOUT_MIN_SAMPLES: usize = 5;
const TIMEOUT_SAMPLES: usize = 20;
/// How far back the successes behind the adaptive timeout look.
const OK_WINDOW: Duration = Duration::from_secs(60);
/// How long the in-flight slot of a request given up at its deadline stays taken.
const ABANDONED_HOLD: Duration = Duration::from_millis(100);
/// A call in flight checks its deadline this often (a deadline learned meanwhile —
/// the first answers after a start — applies to calls already waiting).
const DEADLINE_SLICE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    ignored: AtomicU64,
    throttled: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    /// Failures and timeouts since the last success.
    consecutive_failures: AtomicU64,
    /// Sum of the successful calls' durations (nanoseconds).
    ok_nanos: AtomicU64,
}

/// The successful calls of the last [`OK_WINDOW`] and the timeout they give, worked out
/// again at most every [`DEADLINE_SLICE`].
struct OkWindow {
    v: VecDeque<(Duration, Duration)>,
    computed_at: Option<Duration>,
    p99: Option<Duration>,
    samples: usize,
}

impl OkWindow {
    fn push(&mut self, now: Duration, took: Duration) {
        if self.v.len() == LATENCY_WINDOW_CALLS {
            self.v.pop_front();
        }
        self.v.push_back((now, took));
    }

    /// The p99 of the window's successes (None below the minimum of samples).
    fn p99(&mut self, now: Duration) -> Option<Duration> {
        if self
            .computed_at
            .is_some_and(|at| now.saturating_sub(at) < DEADLINE_SLICE)
        {
            return self.p99;
        }
        while self
            .v
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > OK_WINDOW)
        {
            self.v.pop_front();
        }
        self.computed_at = Some(now);
        self.samples = self.v.len();
        self.p99 = (self.v.len() >= TIMEOUT_MIN_SAMPLES).then(|| {
            let mut s: Vec<Duration> = self.v.iter().map(|(_, d)| *d).collect();
            let i = ((s.len() as f64 * 0.99).ceil() as usize).clamp(1, s.len()) - 1;
            *s.select_nth_unstable(i).1
        });
        self.p99
    }
}

/// How far back a downstream's latency percentiles look: the one latency source of the
/// Circuits screen, the API, the Throughput charts, health and the latency alert.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(15);
/// At most this many calls are kept in the window (a busier window keeps the newest).
const LATENCY_WINDOW_CALLS: usize = 16_384;

/// The durations of the calls answered in the last [`LATENCY_WINDOW`], by the
/// downstream's clock: percentiles that follow what the service does now, whatever
/// the call rate (a ring of the last N calls lags by minutes when calls slow down).
struct LatencyWindow {
    /// (answered at, took), oldest first.
    v: VecDeque<(Duration, Duration)>,
}

impl LatencyWindow {
    fn new() -> Self {
        Self { v: VecDeque::new() }
    }

    fn expire(&mut self, now: Duration) {
        while self
            .v
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > LATENCY_WINDOW)
        {
            self.v.pop_front();
        }
    }

    fn push(&mut self, now: Duration, took: Duration) {
        self.expire(now);
        if self.v.len() == LATENCY_WINDOW_CALLS {
            self.v.pop_front();
        }
        self.v.push_back((now, took));
    }

    /// p50, p95, p99 of the window at `now` (None without calls in it).
    fn quantiles(&mut self, now: Duration) -> [Option<Duration>; 3] {
        self.expire(now);
        if self.v.is_empty() {
            return [None; 3];
        }
        let mut s: Vec<Duration> = self.v.iter().map(|(_, d)| *d).collect();
        s.sort_unstable();
        [0.5, 0.95, 0.99].map(|q| {
            let i = ((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1;
            Some(s[i])
        })
    }
}

/// Recent durations, for percentiles.
struct Ring {
    v: VecDeque<Duration>,
    cap: usize,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Self {
            v: VecDeque::with_capacity(cap),
            cap,
        }
    }
    fn push(&mut self, d: Duration) {
        if self.v.len() == self.cap {
            self.v.pop_front();
        }
        self.v.push_back(d);
    }
    fn quantile(&self, q: f64) -> Option<Duration> {
        if self.v.is_empty() {
            return None;
        }
        let mut s: Vec<_> = self.v.iter().copied().collect();
        s.sort_unstable();
        let i = ((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1;
        Some(s[i])
    }
}

pub struct Downstream {
    name: String,
    pub breaker: Arc<Breaker>,
    pub limiter: Arc<Limiter>,
    retry: RetryPolicy,
    pub budget: RetryBudget,
    clock: SharedClock,
    counters: Counters,
    timeout: Duration,
    ok: Mutex<OkWindow>,
    latencies: Mutex<LatencyWindow>,
    rejections: Mutex<Ring>,
    rng: Mutex<Rng>,
    /// Requests that take several cells (batches) take them one request at a time: taken
    /// interleaved, every batch would finish its cells late and together, and go out in
    /// a bunch that the service's batch throttle answers with a 429.
    weighted_turn: tokio::sync::Mutex<()>,
    /// Every answered call's duration (HDR), for `/metrics`, the profile and the series.
    pub latency: crate::telemetry::metrics::Latency,
}

impl Downstream {
    pub fn new(name: &str, cfg: DownstreamConfig, clock: SharedClock) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            breaker: Breaker::new(name, cfg.breaker, clock.clone()),
            limiter: Limiter::new(name, cfg.limiter, clock.clone()),
            retry: cfg.retry,
            budget: RetryBudget::new(cfg.budget, clock.clone()),
            clock,
            counters: Counters::default(),
            timeout: cfg.timeout,
            ok: Mutex::new(OkWindow {
                v: VecDeque::new(),
                computed_at: None,
                p99: None,
                samples: 0,
            }),
            latencies: Mutex::new(LatencyWindow::new()),
            rejections: Mutex::new(Ring::new(2048)),
            rng: Mutex::new(Rng::from_time()),
            weighted_turn: tokio::sync::Mutex::new(()),
            latency: Default::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `op` under the breaker and the limits, retrying what may be retried (only
    /// when `idempotent`: a request that is safe to send twice) within the policy's
    /// attempts and the downstream's budget, waiting max(backoff, pushback) between.
    pub async fn call<T, E, F, Fut>(&self, idempotent: bool, op: F) -> Result<T, E>
    where
        E: Classify,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_weighted(1, None, idempotent, op).await
    }

    /// [`Self::call`] for a request that counts as `units` requests toward the rate (a
    /// QuickBooks batch of `units` operations): each attempt takes `units` cells of the
    /// rate and one in-flight slot, and then a permit of `pace` (a throttle of its own
    /// on such requests, e.g. QuickBooks' batches a minute) right before it is sent.
    pub async fn call_weighted<T, E, F, Fut>(
        &self,
        units: u32,
        pace: Option<&Arc<Limiter>>,
        idempotent: bool,
        mut op: F,
    ) -> Result<T, E>
    where
        E: Classify,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let policy = &self.retry;
        self.budget.deposit();
        let mut prev = policy.base;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let asked = self.clock.now();
            let permit = match self.breaker.try_acquire() {
                Ok(p) => p,
                Err(r) => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    self.lock_ring(&self.rejections)
                        .push(self.clock.now().saturating_sub(asked));
                    return Err(E::rejected(r));
                }
            };
            // The wait for the rate (a batch's extra cells too) is waiting, not latency.
            let waiting = self.clock.now();
            let slot = if units > 1 || pace.is_some() {
                let _turn = self.weighted_turn.lock().await;
                if units > 1 {
                    self.limiter.acquire_cells(units - 1).await;
                }
                if let Some(pace) = pace {
                    drop(pace.acquire().await);
                }
                // A shared quota's tokens for every unit, taken with the slot: they
                // are counted when the request goes.
                self.limiter.acquire_weighted(units).await
            } else {
                self.limiter.acquire().await
            };
            self.counters.calls.fetch_add(1, Ordering::Relaxed);
            let started = self.clock.now();
            let waited = started.saturating_sub(waiting).as_nanos() as u64;
            let _ = PERMIT_WAIT.try_with(|w| w.set(w.get() + waited));
            let result = self
                .within_deadline(op(), started, attempt, permit.is_trial(), units)
                .await;
            let took = self.clock.now().saturating_sub(started);
            let class = match &result {
                Ok(_) => Class::Success,
                Err(e) => e.class(),
            };
            let pushback = self.settle(class, took, permit, slot);
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !idempotent || !err.retryable() || attempt >= policy.max_attempts {
                return Err(err);
            }
            if !self.budget.try_withdraw() {
                self.counters
                    .budget_exhausted
                    .fetch_add(1, Ordering::Relaxed);
                return Err(err);
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            let backoff = {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                policy.delay(attempt, prev, &mut rng)
            };
            prev = backoff;
            // A 429's pushback is already enforced by the limiter's pause.
            let wait = if matches!(class, Class::Throttled(_)) {
                backoff
            } else {
                retry::wait_before_retry(backoff, pushback)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Counts one attempt's outcome, tells the breaker and the limiter, and frees the
    /// in-flight slot; a 429's pushback, if any.
    fn settle(
        &self,
        class: Class,
        took: Duration,
        permit: breaker::Permit,
        slot: limiter::Slot,
    ) -> Option<Duration> {
        if class == Class::Timeout && took < self.timeout {
            // Given up by us, not answered: the service frees its slot only once it
            // sees the connection close, so ours is held a moment longer (else the
            // next request can find the service's in-flight cap still full: a 429).
            tokio::spawn(async move {
                tokio::time::sleep(ABANDONED_HOLD).await;
                drop(slot);
            });
        } else {
            drop(slot);
        }
        match class {
            Class::Success => {
                self.counters.successes.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .ok_nanos
                    .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                self.counters
                    .consecutive_failures
                    .store(0, Ordering::Relaxed);
                self.record_latency(took);
                self.ok
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(self.clock.now(), took);
                permit.success(took);
                self.limiter.on_success();
            }
            Class::Failure | Class::Timeout => {
                let c = if class == Class::Timeout {
                    &self.counters.timeouts
                } else {
                    &self.counters.failures
                };
                c.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .consecutive_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.record_latency(took);
                if class == Class::Timeout {
                    permit.timed_out(took);
                } else {
                    permit.failure(took);
                }
            }
            Class::Ignored => {
                self.counters.ignored.fetch_add(1, Ordering::Relaxed);
                self.record_latency(took);
                permit.ignore();
            }
            Class::Throttled(p) => {
                self.counters.throttled.fetch_add(1, Ordering::Relaxed);
                permit.ignore();
                self.limiter.on_throttle(p);
                return p;
            }
        }
        None
    }

    /// How long an attempt may take: [`TIMEOUT_P99S`] × the p99 of the recent successes
    /// (at least [`TIMEOUT_FLOOR`]; [`TIMEOUT_COLD`], never doubled, before any answer),
    /// doubled for each retry of the same call (and for a half-open trial), never more than the
    /// configured timeout. A hanging request then costs a fraction of a second of a
    /// slot, not the whole configured minute. A service that became slow is timed out
    /// until its successes leave the [`OK_WINDOW`]; from then on it gets the cold
    /// timeout, and its answers set the new p99.
    pub fn timeout(&self, attempt: u32, trial: bool) -> Duration {
        let attempt = attempt + u32::from(trial);
        let (p99, samples) = {
            let mut ok = self.ok.lock().unwrap_or_else(|p| p.into_inner());
            (ok.p99(self.clock.now()), ok.samples)
        };
        let base = match p99 {
            // Not doubled per retry: a service that has not answered yet gets the same
            // 5 s each time (doubling made three hangs in a row hold a cold start for
            // 35 s, the one call everything waits on).
            None => return TIMEOUT_COLD.min(self.timeout),
            // A few samples understate the p99: twice the margin.
            Some(p) if samples < TIMEOUT_SAMPLES => (p * TIMEOUT_P99S * 2).max(TIMEOUT_FLOOR),
            Some(p) => (p * TIMEOUT_P99S).max(TIMEOUT_FLOOR),
        };
        base.saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.timeout)
    }

    /// [`Self::timeout`] for a request carrying `units` operations (a QuickBooks
    /// batch): the service works through each, so a batch of 30 gets 4× a single
    /// call's deadline (never past the configured one), lest it be cut off after it
    /// landed and sent again for nothing.
    pub fn timeout_for(&self, attempt: u32, trial: bool, units: u32) -> Duration {
        let single = self.timeout(attempt, trial);
        if units <= 1 {
            return single;
        }
        single
            .mul_f64(1.0 + f64::from(units) / 10.0)
            .min(self.timeout)
            .max(single)
    }

    /// Runs one attempt until it answers or its deadline passes (the deadline is read
    /// again while waiting: it shortens as the first answers arrive).
    async fn within_deadline<T, E, Fut>(
        &self,
        fut: Fut,
        started: Duration,
        attempt: u32,
        trial: bool,
        units: u32,
    ) -> Result<T, E>
    where
        E: Classify,
        Fut: Future<Output = Result<T, E>>,
    {
        if E::timed_out(Duration::ZERO).is_none() {
            return fut.await;
        }
        let mut fut = std::pin::pin!(fut);
        loop {
            let limit = self.timeout_for(attempt, trial, units);
            let elapsed = self.clock.now().saturating_sub(started);
            if elapsed >= limit
                && let Some(e) = E::timed_out(limit)
            {
                return Err(e);
            }
            let slice = limit.saturating_sub(elapsed).min(DEADLINE_SLICE);
            tokio::select! {
                r = &mut fut => return r,
                () = tokio::time::sleep(slice.max(Duration::from_millis(1))) => {}
            }
        }
    }

    fn lock_ring<'a>(&self, r: &'a Mutex<Ring>) -> std::sync::MutexGuard<'a, Ring> {
        r.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One answered call's duration: the cumulative histogram (`/metrics`) and the
    /// window every view's percentiles come from.
    fn record_latency(&self, took: Duration) {
        self.latency.record(took);
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.clock.now(), took);
    }

    pub fn throttled(&self) -> u64 {
        self.counters.throttled.load(Ordering::Relaxed)
    }

    /// Requests sent so far (attempts that got a permit).
    pub fn calls(&self) -> u64 {
        self.counters.calls.load(Ordering::Relaxed)
    }

    /// Successful calls so far, and the sum of their durations: the service's own
    /// latency (no permit waits, no hung calls, no backoff).
    pub fn answered(&self) -> (u64, Duration) {
        (
            self.counters.successes.load(Ordering::Relaxed),
            Duration::from_nanos(self.counters.ok_nanos.load(Ordering::Relaxed)),
        )
    }

    pub fn timeouts(&self) -> u64 {
        self.counters.timeouts.load(Ordering::Relaxed)
    }

    pub fn view(&self) -> DownstreamView {
        let c = &self.counters;
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        let [p50, p95, p99] = self
            .latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .quantiles(self.clock.now());
        let rej = self.lock_ring(&self.rejections);
        DownstreamView {
            name: self.name.clone(),
            breaker: self.breaker.view(),
            limiter: self.limiter.view(),
            calls: c.calls.load(Ordering::Relaxed),
            successes: c.successes.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            budget_exhausted: c.budget_exhausted.load(Ordering::Relaxed),
            budget_available: self.budget.available(),
            p50_ms: ms(p50),
            p95_ms: ms(p95),
            p99_ms: ms(p99),
            consecutive_failures: c.consecutive_failures.load(Ordering::Relaxed),
            rejection_p99_us: rej.quantile(0.99).map(|d| d.as_secs_f64() * 1e6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[derive(Debug, PartialEq)]
    enum E {
        Server,
        BadRequest,
        Throttled,
        Rejected,
        TimedOut(Duration),
    }

    impl Classify for E {
        fn class(&self) -> Class {
            match self {
                E::Server => Class::Failure,
                E::BadRequest => Class::Ignored,
                E::Throttled => Class::Throttled(Some(Duration::from_secs(5))),
                E::Rejected => Class::Ignored,
                E::TimedOut(_) => Class::Timeout,
            }
        }
        fn retryable(&self) -> bool {
            matches!(self, E::Server | E::Throttled | E::TimedOut(_))
        }
        fn rejected(_: Rejected) -> Self {
            E::Rejected
        }
        fn timed_out(after: Duration) -> Option<Self> {
            Some(E::TimedOut(after))
        }
    }

    /// Issue 18 point 1: a call that hangs is given up at 4 × the p99 of the recent
    /// answers (at least 250 ms), its retry gets twice that, and before any answer a
    /// hanging call waits 5 s (its retries too), not the configured minute.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_call_is_given_up_at_the_adaptive_timeout_and_retried() {
        let d = downstream(2);
        let hang = || async {
            tokio::time::sleep(Duration::from_secs(130)).await;
            Ok::<(), E>(())
        };
        let start = tokio::time::Instant::now();
        let r = d.call(false, hang).await;
        assert_eq!(r, Err(E::TimedOut(TIMEOUT_COLD)), "before any answer");
        assert_eq!(start.elapsed(), TIMEOUT_COLD);
        assert_eq!(
            (d.timeout(2, false), d.timeout(3, true)),
            (TIMEOUT_COLD, TIMEOUT_COLD),
            "a retry before any answer waits no longer than the first try"
        );
        for _ in 0..30 {
            let r: Result<(), E> = d
                .call(true, || async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(())
                })
                .await;
            assert!(r.is_ok());
        }
        assert_eq!(d.timeout(1, false), Duration::from_millis(250), "the floor");
        assert_eq!(d.timeout(2, false), Duration::from_millis(500), "a retry");
        let sent = std::sync::atomic::AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let r: Result<(), E> = d
            .call(true, || async {
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(130)).await;
                Ok(())
            })
            .await;
        assert_eq!(r, Err(E::TimedOut(Duration::from_millis(500))));
        assert_eq!(sent.load(Ordering::SeqCst), 2, "sent again once");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(d.view().timeouts, 3);
        assert_eq!(d.breaker.state(), State::Closed, "timeouts make no run");
    }

    /// A batch of 30 operations is not cut off at a single call's deadline: it gets
    /// 4× it (never past the configured timeout), and a batch that answers within
    /// that is not sent twice.
    #[tokio::test(start_paused = true)]
    async fn a_batch_gets_a_deadline_for_its_operations_not_a_single_calls() {
        let d = downstream(2);
        for _ in 0..30 {
            let r: Result<(), E> = d
                .call(true, || async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(())
                })
                .await;
            assert!(r.is_ok());
        }
        let single = d.timeout(1, false);
        assert_eq!(single, Duration::from_millis(250));
        assert_eq!(d.timeout_for(1, false, 1), single);
        assert_eq!(d.timeout_for(1, false, 30), single * 4);
        assert_eq!(
            d.timeout_for(20, false, 30),
            Duration::from_secs(60),
            "capped"
        );
        // A batch answering in 3× a single call's deadline lands once.
        let sent = AtomicU32::new(0);
        let r: Result<(), E> = d
            .call_weighted(30, None, true, || async {
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(single * 3).await;
                Ok(())
            })
            .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(sent.load(Ordering::SeqCst), 1, "sent once");
    }

    fn downstream(max_attempts: u32) -> Arc<Downstream> {
        downstream_with_reserve(max_attempts, 0)
    }

    fn downstream_with_reserve(max_attempts: u32, reserve: u32) -> Arc<Downstream> {
        Downstream::new(
            "svc",
            DownstreamConfig {
                breaker: BreakerConfig {
                    window: breaker::WindowKind::Count,
                    window_size: 10,
                    minimum_calls: 4,
                    ..BreakerConfig::default()
                },
                limiter: LimiterConfig::default(),
                retry: RetryPolicy {
                    max_attempts,
                    ..RetryPolicy::default()
                },
                budget: BudgetConfig {
                    ttl: Duration::from_secs(10),
                    min_retries_per_sec: reserve,
                    percent_can_retry: 0.5,
                },
                timeout: Duration::from_secs(60),
            },
            SharedClock::tokio(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_rejects_without_calling_the_service() {
        let d = downstream(1);
        let sent = AtomicU32::new(0);
        for _ in 0..4 {
            let r: Result<(), E> = d
                .call(true, || async {
                    sent.fetch_add(1, Ordering::SeqCst);
                    Err(E::Server)
                })
                .await;
            assert_eq!(r, Err(E::Server));
        }
        assert_eq!(d.breaker.state(), State::Open);
        let r: Result<(), E> = d
            .call(true, || async {
                sent.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await;
        assert_eq!(r, Err(E::Rejected));
        assert_eq!(sent.load(Ordering::SeqCst), 4, "no request while OPEN");
        assert_eq!(d.view().rejected, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_and_429s_never_open_the_breaker() {
        let d = downstream(1);
        for _ in 0..20 {
            let _: Result<(), E> = d.call(true, || async { Err(E::BadRequest) }).await;
            let _: Result<(), E> = d.call(true, || async { Err(E::Throttled) }).await;
        }
        assert_eq!(d.breaker.state(), State::Closed);
        assert_eq!(d.view().breaker.calls, 0);
        assert_eq!(d.view().throttled, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn only_idempotent_requests_are_retried() {
        let d = downstream_with_reserve(3, 10);
        let sent = AtomicU32::new(0);
        let _: Result<(), E> = d
            .call(false, || async {
                sent.fetch_add(1, Ordering::SeqCst);
                Err(E::Server)
            })
            .await;
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        let _: Result<(), E> = d
            .call(true, || async {
                sent.fetch_add(1, Ordering::SeqCst);
                Err(E::Server)
            })
            .await;
        assert_eq!(sent.load(Ordering::SeqCst), 4, "1 + 3 attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_stops_retries_for_every_caller() {
        let d = downstream(5);
        let sent = AtomicU32::new(0);
        // Budget: 50 % of requests, no reserve. Two requests → one retry in all.
        for _ in 0..2 {
            let _: Result<(), E> = d
                .call(true, || async {
                    sent.fetch_add(1, Ordering::SeqCst);
                    Err(E::Server)
                })
                .await;
        }
        assert_eq!(sent.load(Ordering::SeqCst), 3);
        assert_eq!(d.view().budget_exhausted, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_the_next_call_for_the_pushback() {
        let d = downstream(1);
        let _: Result<(), E> = d.call(true, || async { Err(E::Throttled) }).await;
        let start = tokio::time::Instant::now();
        let _: Result<(), E> = d.call(true, || async { Ok(()) }).await;
        assert!(start.elapsed() >= Duration::from_secs(5));
    }
}
