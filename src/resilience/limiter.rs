//! Rate limits per downstream: a proactive GCRA (`governor`) at the published quota, a
//! concurrency cap, and a reactive pause of every caller on 429 until the pushback
//! ends (then a jittered resume, without a burst).
//!
//! A 429 teaches the limiter a **ceiling**: the rate that was throttled. It resumes at
//! [`RESUME_SHARE`] of that rate and probes upward by [`PROBE_STEP`] of the configured
//! rate once per probe interval ([`PROBE_PAUSES`] × the pushback), a quarter step once
//! within [`NEAR_CEILING`] of the ceiling — so a configured rate above the real quota
//! costs a 429 per many probe intervals instead of a 60 s pause a minute.
//! The in-flight cap halves on a 429 and wins back a slot per quiet second.
//!
//! What a restart needs (the requests of the last minute, a pushback still running,
//! the ceiling) is read with [`Limiter::persisted`] and given back to a new limiter
//! with [`Limiter::restore`]: a fresh process does not open with a burst the service's
//! window cannot take.
//!
//! On a shared store several boxes send to one company's quota: [`Limiter::share`]
//! puts a [`QuotaShare`] (the engine's: a Postgres row every box takes from) in front
//! of every request. A task of the limiter leases a few tokens at a time for the
//! callers waiting (spent locally within [`LEASE_TTL`], dropped after), holds this
//! box's in-flight slots of the company's cap, and publishes a 429's pushback to every
//! box; a pushback another box published pauses this one's callers. The adaptive
//! parts above keep working as they do alone.
//!
//! The leased tokens serve the callers waiting **in turn** (the oldest first), and a
//! request weighing more than the burst (a QuickBooks batch of 30 operations) is
//! leased alone, whole, when the bucket can give it: a single read waiting behind a
//! batch never takes the batch's tokens. Before, it could: the batch was left a token
//! short, its other tokens ran out unspent while it waited for one more, and with
//! every lot counted spent at the bucket, a fifth of the company's quota was lost
//! (issue 16: 3 boxes × 4 companies at 1,200/min used 79–87 % of it; in turn, 97 %).
//! A take that gets fewer tokens than it asked is tried again when the bucket has the
//! rest, not half a second later: a bucket left full loses what it refills.

pub use crate::protocol::LimiterView;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;

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

/// After a 429, the rate resumes at this share of the rate that was throttled.
pub const RESUME_SHARE: f64 = 0.8;
/// Each probe interval without a 429 wins back this share of the configured rate…
pub const PROBE_STEP: f64 = 0.02;
/// …a quarter of it once the rate is within this share of the ceiling, where the next
/// 429 is likely: the ceiling is approached slowly, and found again seldom.
pub const NEAR_CEILING: f64 = 0.9;
/// The probe interval, in pushbacks: a probe that finds the ceiling costs one pause,
/// a small share of the time between probes.
pub const PROBE_PAUSES: u32 = 5;
/// The longest a 429 pauses callers, whatever its `Retry-After` says (or a previous
/// process's saved state, or a clock that jumped, claims): a broken proxy's
/// `Retry-After: 99999999` must not stop a downstream for years. A configured
/// pushback longer than this is kept.
pub const MAX_PUSHBACK: Duration = Duration::from_secs(15 * 60);
/// How far back the requests sent are remembered (the quota windows are a minute).
const RECENT_WINDOW_SECS: u64 = 60;

/// Tokens leased from a shared quota are spent within this long, or dropped: the
/// shared bucket counts a token when it is leased, so a lease kept longer could land
/// in the next minute of the service's window on top of that minute's own.
pub const LEASE_TTL: Duration = Duration::from_millis(500);
/// A box holding shared in-flight slots renews them this often while it works (they
/// run out after `store::pg_quota::HOLD_MS` without it); a take that gave fewer slots
/// than asked is tried again no sooner than this either.
pub const SHARE_RENEW: Duration = Duration::from_millis(500);

/// What one take from a shared quota asks (see [`QuotaShare`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShareAsk {
    /// Tokens wanted now (0: none).
    pub want: u32,
    /// Fewer tokens than this are no use (a weighted request's units).
    pub need: u32,
    /// This box's requests in flight.
    pub in_flight: u32,
    /// In-flight slots wanted (0: give them back).
    pub want_slots: u32,
    /// A 429 this box saw: every box pauses this long.
    pub block: Option<Duration>,
}

/// What a take gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShareTaken {
    pub granted: u32,
    pub slots: u32,
    /// A pushback in force for every box, this long from now.
    pub blocked_for: Duration,
    /// Nothing granted: the next token is due in this long.
    pub next_in: Duration,
    /// Boxes holding slots, this one included.
    pub boxes: u32,
}

/// A quota shared with other boxes (the engine's: Postgres rows). One take is one
/// round trip.
pub trait QuotaShare: Send + Sync + 'static {
    fn take(&self, ask: ShareAsk) -> BoxFuture<'_, Result<ShareTaken, String>>;
    /// The most tokens one take asks for (the shared bucket's burst).
    fn burst(&self) -> u32;
}

/// This box's side of a shared quota.
#[derive(Default)]
struct ShareState {
    /// Leased tokens and when each lot must be spent by, oldest first.
    lots: VecDeque<(u32, Duration)>,
    /// Shared in-flight slots this box holds (with a capped downstream).
    slots: u32,
    /// The callers waiting, oldest first: (turn, shared units it needs). Leased tokens
    /// serve them in this order (see [`ShareState::ahead`]).
    needs: VecDeque<(u64, u32)>,
    /// The next caller's turn.
    next_turn: u64,
    /// A pushback to publish to every box.
    block: Option<Duration>,
    boxes: u32,
    /// Tokens leased so far.
    leased: u64,
    /// The last take failed (the store): why.
    error: Option<String>,
    /// Leased tokens that ran out unspent.
    unspent: u64,
}

impl ShareState {
    fn tokens(&mut self, now: Duration) -> u32 {
        while self.lots.front().is_some_and(|(_, until)| *until <= now) {
            if let Some((n, _)) = self.lots.pop_front() {
                self.unspent += u64::from(n);
            }
        }
        self.lots.iter().map(|(n, _)| n).sum()
    }

    /// The units the callers waiting before `turn` need (every caller waiting, for
    /// none): they have the first claim on the leased tokens. A small request never
    /// takes the tokens a batch was leased (it would leave the batch short, and its
    /// tokens would run out unspent while the batch waits for the rest).
    fn ahead(&self, turn: Option<u64>) -> u32 {
        self.needs
            .iter()
            .filter(|(t, _)| turn.is_none_or(|mine| *t < mine))
            .map(|(_, n)| *n)
            .sum()
    }

    /// What to lease for the first `usable` callers waiting, with `tokens` in hand:
    /// (want, need). The tokens cover the callers in turn; `need` is what the first
    /// one not covered still lacks (fewer is of no use to it), and `want` adds the
    /// callers after it while they fit in one take of `most_per_take` (the burst) — a
    /// batch is leased alone, when the bucket can give it whole, so no small request's
    /// lease ages while the batch's comes.
    fn lease_for(&self, usable: usize, tokens: u32, most_per_take: u32) -> (u32, u32) {
        let mut acc = 0u32;
        let mut first = None;
        let mut rest = self.needs.iter().take(usable).map(|(_, n)| *n);
        for n in rest.by_ref() {
            acc = acc.saturating_add(n);
            if acc > tokens {
                first = Some(acc - tokens);
                break;
            }
        }
        let Some(need) = first else {
            return (0, 0);
        };
        let cap = most_per_take.max(need);
        let mut want = need;
        for n in rest {
            match want.checked_add(n) {
                Some(w) if w <= cap => want = w,
                _ => break,
            }
        }
        (want, need)
    }

    /// Spends `n` leased tokens, oldest first (the caller checked there are enough).
    fn spend(&mut self, mut n: u32) {
        while n > 0 {
            let Some((lot, _)) = self.lots.front_mut() else {
                return;
            };
            let used = (*lot).min(n);
            *lot -= used;
            n -= used;
            if *lot == 0 {
                self.lots.pop_front();
            }
        }
    }
}

/// What a limiter hands to the next process (see [`Limiter::persisted`]); times are
/// wall-clock milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Persisted {
    pub at_ms: i64,
    /// Requests granted in the minute before `at_ms`.
    pub recent: u32,
    /// A 429's pushback in force until then.
    pub paused_until_ms: Option<i64>,
    /// The share of the configured rate in force.
    pub factor: f64,
    /// The learned ceiling, requests per minute.
    pub ceiling_per_min: Option<f64>,
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
    /// The quota shared with other boxes has no token for this box yet.
    Shared,
}

struct LState {
    factor: f64,
    conc_cap: u32,
    in_flight: u32,
    paused_until: Option<Duration>,
    /// When the in-flight cap last changed (it wins a slot back per quiet interval).
    last_change: Duration,
    last_decrease: Option<Duration>,
    /// The rate (per minute) a 429 answered, lowest recent first.
    ceiling: Option<f64>,
    /// The rate may step up at this time (a probe).
    probe_at: Duration,
    /// The GCRA's burst is used up when the pause ends: the rate resumes evenly.
    drain_on_resume: bool,
    /// Requests granted per second (second, count), the last minute's.
    recent: VecDeque<(u64, u32)>,
    throttles: u64,
    rate_waits: u64,
    granted: u64,
    /// Set once the quota is shared with other boxes.
    shared: Option<ShareState>,
}

impl LState {
    /// The in-flight cap in force: the adaptive one, within the shared slots this box
    /// holds (None: no cap).
    fn cap(&self, cfg: &LimiterConfig) -> Option<u32> {
        let local = (self.conc_cap > 0).then_some(self.conc_cap);
        match &self.shared {
            Some(sh) if cfg.max_concurrent > 0 => Some(local.map_or(sh.slots, |c| c.min(sh.slots))),
            _ => local,
        }
    }

    /// Counts `n` cells granted at `now`, in the total and in the last minute's.
    fn note_granted(&mut self, now: Duration, n: u32) {
        self.granted += u64::from(n);
        let second = now.as_secs();
        match self.recent.back_mut() {
            Some((s, c)) if *s == second => *c += n,
            _ => self.recent.push_back((second, n)),
        }
        while self
            .recent
            .front()
            .is_some_and(|(s, _)| s + RECENT_WINDOW_SECS <= second)
        {
            self.recent.pop_front();
        }
    }
}

pub struct Limiter {
    name: String,
    cfg: LimiterConfig,
    clock: SharedClock,
    st: Mutex<LState>,
    gcra: Mutex<Option<Arc<Gcra>>>,
    freed: Notify,
    /// Woken on each 429 that changes the limits (the state is persisted at once).
    throttle_seen: Notify,
    rng: Mutex<Rng>,
    /// Wakes the shared quota's task (callers waiting, a pushback to publish).
    share_wake: Arc<Notify>,
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
                ceiling: None,
                probe_at: clock.now(),
                drain_on_resume: false,
                recent: VecDeque::new(),
                throttles: 0,
                rate_waits: 0,
                granted: 0,
                shared: None,
            }),
            cfg,
            clock,
            gcra: Mutex::new(None),
            freed: Notify::new(),
            throttle_seen: Notify::new(),
            rng: Mutex::new(Rng::from_time()),
            share_wake: Arc::new(Notify::new()),
        });
        l.rebuild(1.0);
        l
    }

    /// From now on every request also takes a token of `quota`, shared with the other
    /// boxes (and, for a capped downstream, a slot of the company's in-flight cap); a
    /// pushback from any box pauses this one. Spawns the task that leases them (it
    /// ends with the limiter).
    pub fn share(self: &Arc<Self>, quota: Arc<dyn QuotaShare>) {
        self.lock().shared = Some(ShareState {
            boxes: 1,
            ..ShareState::default()
        });
        tokio::spawn(share_loop(Arc::downgrade(self), quota));
    }

    /// Whether the quota is shared with other boxes.
    pub fn is_shared(&self) -> bool {
        self.lock().shared.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A GCRA at the new rate that starts with the burst the old one had left: a rate
    /// change is never a fresh burst (one every probe would pile up at the service).
    fn rebuild(&self, factor: f64) {
        let cfg = &self.cfg;
        let burst = cfg.burst.max(1);
        let mut slot = self.gcra.lock().unwrap_or_else(|p| p.into_inner());
        let left = slot.as_ref().map_or(burst, |old| {
            let mut n = 0;
            while n < burst && old.check().is_ok() {
                n += 1;
            }
            n
        });
        *slot = (cfg.rate_per_min > 0).then(|| {
            let per_min = (cfg.rate_per_min as f64 * factor).max(1.0);
            let period = Duration::from_secs_f64(60.0 / per_min);
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
            let g = Arc::new(RateLimiter::direct_with_clock(quota, self.clock.clone()));
            Self::drain(&g, burst - left);
            g
        });
    }

    /// Takes a slot now, or says why and for how long not.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Slot, Wait> {
        self.try_acquire_weighted(1)
    }

    /// [`Self::try_acquire`] for a request of `units` units (a QuickBooks batch): one
    /// slot and one cell of this box's rate (the other cells are
    /// [`Self::acquire_cells`]'), and `units` tokens of a shared quota, taken together
    /// right before the request goes.
    pub fn try_acquire_weighted(self: &Arc<Self>, units: u32) -> Result<Slot, Wait> {
        self.try_acquire_in_turn(units, None)
    }

    /// [`Self::try_acquire_weighted`] for the caller waiting in `turn` (None: one that
    /// is not waiting, after every caller who is): the leased tokens of a shared quota
    /// serve the callers waiting before it first.
    fn try_acquire_in_turn(self: &Arc<Self>, units: u32, turn: Option<u64>) -> Result<Slot, Wait> {
        let now = self.clock.now();
        let mut st = self.lock();
        if let Some(until) = st.paused_until {
            if now < until {
                return Err(Wait::Paused(until - now));
            }
            st.paused_until = None;
        }
        if st.cap(&self.cfg).is_some_and(|cap| st.in_flight >= cap) {
            if st.shared.is_some() {
                self.share_wake.notify_one();
            }
            return Err(Wait::Concurrency);
        }
        let units = units.max(1);
        if let Some(sh) = st.shared.as_mut()
            && sh.tokens(now) < units.saturating_add(sh.ahead(turn))
        {
            self.share_wake.notify_one();
            return Err(Wait::Shared);
        }
        let gcra = self.gcra.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(g) = &gcra
            && std::mem::take(&mut st.drain_on_resume)
        {
            // The burst the pause saved up is not spent: one request now, then the
            // rate's spacing.
            Self::drain(g, self.cfg.burst.saturating_sub(1));
        }
        if let Some(g) = gcra
            && let Err(not_until) = g.check()
        {
            st.rate_waits += 1;
            return Err(Wait::Rate(not_until.wait_time_from(self.clock.now())));
        }
        if let Some(sh) = st.shared.as_mut() {
            sh.spend(units);
        }
        st.in_flight += 1;
        st.note_granted(now, 1);
        Ok(Slot {
            limiter: self.clone(),
        })
    }

    /// Resolves at the next 429 that changes the limits (or at once if one came since
    /// the last wait).
    pub async fn throttled(&self) {
        self.throttle_seen.notified().await;
    }

    /// Uses up to `n` cells of the GCRA's burst.
    fn drain(g: &Gcra, n: u32) {
        for _ in 0..n {
            if g.check().is_err() {
                break;
            }
        }
    }

    /// The longest pause: [`MAX_PUSHBACK`], or the configured pushback if longer.
    fn max_pushback(&self) -> Duration {
        MAX_PUSHBACK.max(self.cfg.default_pushback)
    }

    /// The probe interval: [`PROBE_PAUSES`] pushbacks (at least a recovery interval).
    fn probe_interval(&self) -> Duration {
        (self.cfg.default_pushback * PROBE_PAUSES).max(self.cfg.recovery_interval)
    }

    /// Waits for a slot: through any pause (resuming with jitter), a free in-flight
    /// slot and the rate.
    pub async fn acquire(self: &Arc<Self>) -> Slot {
        self.acquire_weighted(1).await
    }

    /// [`Self::acquire`] for a request of `units` units (see
    /// [`Self::try_acquire_weighted`]).
    pub async fn acquire_weighted(self: &Arc<Self>, units: u32) -> Slot {
        let need = Need::new(self, units.max(1));
        loop {
            let freed = self.freed.notified();
            match self.try_acquire_in_turn(units, need.turn) {
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
                Err(Wait::Concurrency | Wait::Shared) => {
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
                Ok(()) => {
                    left -= 1;
                    self.lock().note_granted(now, 1);
                }
                Err(not_until) => {
                    self.lock().rate_waits += 1;
                    let d = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(d.max(Duration::from_micros(100))).await;
                }
            }
        }
    }

    /// A 429: pause every caller for the pushback; learn the ceiling (the rate that
    /// was throttled), resume at [`RESUME_SHARE`] of it, and halve the in-flight cap —
    /// once per pushback, however many in-flight calls report it.
    pub fn on_throttle(&self, pushback: Option<Duration>) {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let pushback = pushback
            .unwrap_or(cfg.default_pushback)
            .min(self.max_pushback());
        let (factor, ceiling) = {
            let mut st = self.lock();
            st.throttles += 1;
            let until = now + pushback;
            st.paused_until = Some(st.paused_until.map_or(until, |u| u.max(until)));
            st.drain_on_resume = true;
            if let Some(sh) = st.shared.as_mut() {
                // Every box pauses as long (published by the shared quota's task).
                sh.block = Some(sh.block.map_or(pushback, |b| b.max(pushback)));
                self.share_wake.notify_one();
            }
            let recent = st
                .last_decrease
                .is_some_and(|t| now.saturating_sub(t) < pushback.max(cfg.recovery_interval));
            if recent {
                return;
            }
            st.last_decrease = Some(now);
            st.last_change = until;
            st.probe_at = until + self.probe_interval();
            let throttled_at = f64::from(cfg.rate_per_min) * st.factor;
            if cfg.rate_per_min > 0 {
                st.ceiling = Some(throttled_at);
            }
            st.factor = (st.factor * RESUME_SHARE).max(cfg.min_factor);
            if st.conc_cap > 0 {
                st.conc_cap = (st.conc_cap / 2).max(1);
            } else if cfg.max_concurrent == 0 && st.in_flight > 1 {
                // No configured cap: start capping at half of what was in flight.
                st.conc_cap = (st.in_flight / 2).max(1);
            }
            (st.factor, throttled_at)
        };
        self.throttle_seen.notify_one();
        tracing::warn!(
            "{}: throttled (429) at {:.0}/min; pausing {:?}, then {:.0}/min and probing up",
            self.name,
            ceiling,
            pushback,
            f64::from(cfg.rate_per_min) * factor
        );
        self.rebuild(factor);
    }

    /// A success: after each quiet `recovery_interval`, win back an in-flight slot;
    /// after each quiet probe interval, a [`PROBE_STEP`] of rate (above the ceiling too:
    /// a quota may grow back).
    pub fn on_success(&self) {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let factor = {
            let mut st = self.lock();
            if st.paused_until.is_some_and(|u| now < u) {
                return;
            }
            let full_conc = st.conc_cap == cfg.max_concurrent;
            if !full_conc && now.saturating_sub(st.last_change) >= cfg.recovery_interval {
                st.last_change = now;
                if cfg.max_concurrent == 0 {
                    st.conc_cap += 1;
                    if st.conc_cap > 64 {
                        st.conc_cap = 0; // uncapped again
                    }
                } else {
                    st.conc_cap = (st.conc_cap + 1).min(cfg.max_concurrent);
                }
                self.freed.notify_waiters();
            }
            if st.factor >= 1.0 || now < st.probe_at {
                return;
            }
            st.probe_at = now + self.probe_interval();
            let rate = f64::from(cfg.rate_per_min) * st.factor;
            let near = st.ceiling.is_some_and(|c| rate >= NEAR_CEILING * c);
            let step = if near { PROBE_STEP / 4.0 } else { PROBE_STEP };
            st.factor = (st.factor + step).min(1.0);
            st.factor
        };
        self.rebuild(factor);
    }

    /// What the next process needs to start where this one stands, at wall-clock
    /// `wall_ms` (now).
    pub fn persisted(&self, wall_ms: i64) -> Persisted {
        let now = self.clock.now();
        let st = self.lock();
        let second = now.as_secs();
        let recent = st
            .recent
            .iter()
            .filter(|(s, _)| s + RECENT_WINDOW_SECS > second)
            .map(|(_, n)| *n)
            .sum();
        Persisted {
            at_ms: wall_ms,
            recent,
            paused_until_ms: st
                .paused_until
                .filter(|u| *u > now)
                .map(|u| wall_ms + (u - now).as_millis() as i64),
            factor: st.factor,
            ceiling_per_min: st.ceiling,
        }
    }

    /// Starts from what a previous process left (at wall-clock `wall_ms`, now): the
    /// pushback still running, the learned rate and ceiling, and a burst no larger
    /// than the quota minute still has room for after the requests already sent in it.
    /// Returns the pause it kept (if any).
    pub fn restore(&self, p: &Persisted, wall_ms: i64) -> Option<Duration> {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let mut kept = None;
        let factor = {
            let mut st = self.lock();
            if let Some(until) = p.paused_until_ms.filter(|u| *u > wall_ms) {
                // What was left of the pause when it was saved bounds what is left now
                // (the wall clock may have gone back since). No pause is longer than
                // the longest pushback: a row that says so is not believed at all.
                let at_save = until.saturating_sub(p.at_ms);
                let left = until.saturating_sub(wall_ms).min(at_save);
                let believed =
                    u128::try_from(at_save).is_ok_and(|ms| ms <= self.max_pushback().as_millis());
                if !believed {
                    tracing::warn!(
                        "{}: the saved limiter state claims a pause of {at_save} ms: not believed",
                        self.name
                    );
                }
                let left = Duration::from_millis(left.max(0) as u64);
                if believed && !left.is_zero() {
                    kept = Some(left);
                    st.paused_until = Some(now + left);
                    st.drain_on_resume = true;
                }
            }
            if !p.factor.is_nan() {
                st.factor = p.factor.clamp(cfg.min_factor, 1.0);
            }
            st.ceiling = p.ceiling_per_min.filter(|c| c.is_finite() && *c >= 1.0);
            st.probe_at = st.paused_until.unwrap_or(now) + self.probe_interval();
            st.factor
        };
        self.rebuild(factor);
        let ago = Duration::from_millis(wall_ms.saturating_sub(p.at_ms).max(0) as u64);
        let window = Duration::from_secs(RECENT_WINDOW_SECS);
        if cfg.rate_per_min == 0 || ago >= window {
            return kept;
        }
        // The previous process's requests still in the service's minute, if they were
        // spread evenly over the minute before it stopped.
        let rate = f64::from(cfg.rate_per_min) * factor;
        let mut still_counted = f64::from(p.recent) * (window - ago).as_secs_f64() / 60.0;
        if p.recent > 0 {
            // It was working: add what it may have sent after its last save (a second).
            still_counted += rate / 60.0;
        }
        let room = rate - still_counted;
        let burst = cfg.burst.max(1);
        let take = (f64::from(burst) - room.max(0.0)).clamp(0.0, f64::from(burst)) as u32;
        let gcra = self.gcra.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(g) = gcra {
            Self::drain(&g, take);
        }
        kept
    }

    pub fn view(&self) -> LimiterView {
        let cfg = &self.cfg;
        let now = self.clock.now();
        let st = self.lock();
        LimiterView {
            rate_per_min: cfg.rate_per_min,
            effective_per_min: (cfg.rate_per_min as f64 * st.factor).round() as u32,
            max_concurrent: cfg.max_concurrent,
            effective_concurrent: st.cap(cfg).unwrap_or(0),
            in_flight: st.in_flight,
            paused_for_ms: st
                .paused_until
                .map_or(0, |u| u.saturating_sub(now).as_millis() as u64),
            throttles: st.throttles,
            rate_waits: st.rate_waits,
            granted: st.granted,
            ceiling_per_min: st.ceiling.map(|c| c.round() as u32),
            shared: st
                .shared
                .as_ref()
                .map(|sh| crate::protocol::SharedQuotaView {
                    boxes: sh.boxes,
                    slots: sh.slots,
                    leased: sh.leased,
                    unspent: sh.unspent,
                    error: sh.error.clone(),
                }),
        }
    }
}

/// A caller waiting on a shared quota: its units are asked for while it waits, in
/// its turn.
struct Need<'a> {
    limiter: &'a Limiter,
    turn: Option<u64>,
}

impl<'a> Need<'a> {
    fn new(limiter: &'a Limiter, units: u32) -> Self {
        let mut st = limiter.lock();
        let turn = st.shared.as_mut().map(|sh| {
            let turn = sh.next_turn;
            sh.next_turn += 1;
            sh.needs.push_back((turn, units));
            turn
        });
        drop(st);
        if turn.is_some() {
            limiter.share_wake.notify_one();
        }
        Self { limiter, turn }
    }
}

impl Drop for Need<'_> {
    fn drop(&mut self) {
        let Some(turn) = self.turn else {
            return;
        };
        let mut st = self.limiter.lock();
        if let Some(sh) = st.shared.as_mut()
            && let Some(i) = sh.needs.iter().position(|(t, _)| *t == turn)
        {
            sh.needs.remove(i);
        }
        drop(st);
        // The callers after it may go now.
        self.limiter.freed.notify_waiters();
    }
}

/// How long `tokens` take to refill at `per_min` a minute (a second with no rate).
fn refill_time(tokens: u32, per_min: u32) -> Duration {
    if per_min == 0 {
        return SHARE_RENEW;
    }
    Duration::from_secs_f64(f64::from(tokens) * 60.0 / f64::from(per_min))
}

/// The shared quota's task: leases tokens for the callers waiting, holds and renews
/// this box's in-flight slots, publishes this box's pushbacks and applies the others'.
/// Ends with the limiter.
#[expect(
    clippy::too_many_lines,
    reason = "one pass of the loop: what to ask, whether now, the take, and what it gave"
)]
async fn share_loop(limiter: Weak<Limiter>, quota: Arc<dyn QuotaShare>) {
    // No take for tokens before this (a take that gave fewer than asked, or failed),
    // nor for slots before `slots_at` (one that gave fewer slots than asked).
    let mut retry_at = Duration::ZERO;
    let mut slots_at = Duration::ZERO;
    let mut renew_at = Duration::ZERO;
    let mut complained_at: Option<Duration> = None;
    loop {
        let Some(l) = limiter.upgrade() else {
            return;
        };
        let now = l.clock.now();
        let (ask, holding) = {
            let mut st = l.lock();
            let in_flight = st.in_flight;
            let local_cap = (st.conc_cap > 0).then_some(st.conc_cap);
            let capped = l.cfg.max_concurrent > 0;
            let Some(sh) = st.shared.as_mut() else {
                return;
            };
            let tokens = sh.tokens(now);
            let waiting = u32::try_from(sh.needs.len()).unwrap_or(u32::MAX);
            // Tokens only for the callers a slot is free for: a token waiting on a slot
            // would run out unspent.
            let usable = if capped {
                sh.slots.saturating_sub(in_flight)
            } else {
                waiting
            };
            let (want, need) = sh.lease_for(usable as usize, tokens, quota.burst().max(1));
            let want_slots = if capped {
                let wanted = in_flight.saturating_add(waiting);
                local_cap
                    .map_or(wanted, |c| wanted.min(c))
                    .min(l.cfg.max_concurrent)
            } else {
                0
            };
            let ask = ShareAsk {
                want,
                need,
                in_flight: if capped { in_flight } else { 0 },
                want_slots,
                block: sh.block.take(),
            };
            (ask, capped && (sh.slots > 0 || in_flight > 0))
        };
        let short_tokens = ask.want > 0;
        let short_slots = ask.want_slots > 0 && !holding;
        let due = ask.block.is_some()
            || (short_tokens && now >= retry_at)
            || (short_slots && now >= slots_at)
            || (holding && now >= renew_at)
            || (holding && ask.want_slots == 0 && ask.in_flight == 0);
        if !due {
            let mut sleep = Duration::from_secs(1);
            if short_tokens {
                sleep = sleep.min(retry_at.saturating_sub(now));
            }
            if short_slots {
                sleep = sleep.min(slots_at.saturating_sub(now));
            }
            if holding {
                sleep = sleep.min(renew_at.saturating_sub(now));
            }
            let wake = l.share_wake.clone();
            drop(l);
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(sleep.max(Duration::from_millis(1))) => {}
            }
            continue;
        }
        match quota.take(ask).await {
            Ok(t) => {
                complained_at = None;
                let now = l.clock.now();
                renew_at = now + SHARE_RENEW;
                // Short of tokens: again when the bucket has them (the store says when
                // it gave none; after a part, when the rest has come at the company's
                // rate), not later: a bucket left full loses what it refills.
                retry_at = if t.granted < ask.want {
                    let wait = if t.next_in.is_zero() {
                        refill_time(ask.want - t.granted, l.cfg.rate_per_min)
                    } else {
                        t.next_in
                    };
                    now + wait.clamp(Duration::from_millis(2), Duration::from_secs(1))
                } else {
                    now
                };
                // Short of slots: again at the next renewal.
                slots_at = if t.slots < ask.want_slots {
                    now + SHARE_RENEW
                } else {
                    now
                };
                let mut st = l.lock();
                if !t.blocked_for.is_zero() {
                    let until = now + t.blocked_for.min(l.max_pushback());
                    if st.paused_until.is_none_or(|u| u < until) {
                        st.paused_until = Some(until);
                        st.drain_on_resume = true;
                    }
                }
                if let Some(sh) = st.shared.as_mut() {
                    if t.granted > 0 {
                        sh.lots.push_back((t.granted, now + LEASE_TTL));
                        sh.leased += u64::from(t.granted);
                    }
                    sh.slots = t.slots;
                    sh.boxes = t.boxes;
                    sh.error = None;
                }
                drop(st);
                l.freed.notify_waiters();
            }
            Err(e) => {
                let now = l.clock.now();
                retry_at = now + SHARE_RENEW;
                slots_at = retry_at;
                renew_at = retry_at;
                let mut st = l.lock();
                if let Some(sh) = st.shared.as_mut() {
                    // Published at the next take.
                    sh.block = sh.block.max(ask.block);
                    sh.error = Some(e.clone());
                }
                drop(st);
                if complained_at.is_none_or(|t| now.saturating_sub(t) >= Duration::from_secs(30)) {
                    complained_at = Some(now);
                    tracing::warn!(
                        "{}: the shared quota cannot be taken ({e}); this box sends nothing until it can",
                        l.name
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(needs: &[u32]) -> ShareState {
        let mut sh = ShareState::default();
        for n in needs {
            sh.needs.push_back((sh.next_turn, *n));
            sh.next_turn += 1;
        }
        sh
    }

    /// Issue 16: the leased tokens serve the callers in turn, and a batch larger than
    /// the burst is leased alone (whole), so no small request's lease ages while the
    /// batch's comes and no small request takes the batch's tokens.
    #[test]
    fn shared_tokens_are_leased_and_spent_in_turn_a_batch_alone() {
        // A batch first: leased whole, the single reads after it wait for the next take.
        let sh = waiting(&[30, 1, 1]);
        assert_eq!(sh.lease_for(3, 0, 10), (30, 30));
        // Single reads first: leased together up to the burst, the batch left for later.
        let sh = waiting(&[1, 1, 30, 1]);
        assert_eq!(sh.lease_for(4, 0, 10), (2, 1));
        // Their tokens in hand: now the batch.
        assert_eq!(sh.lease_for(4, 2, 10), (30, 30));
        // Part of the batch in hand: the rest of it alone.
        assert_eq!(sh.lease_for(4, 12, 10), (20, 20));
        // Only the callers a slot is free for.
        assert_eq!(sh.lease_for(2, 0, 10), (2, 1));
        assert_eq!(sh.lease_for(0, 0, 10), (0, 0));
        // Covered: nothing to lease.
        assert_eq!(sh.lease_for(4, 33, 10), (0, 0));

        // A single read behind a batch may not take the batch's tokens...
        let sh = waiting(&[30, 1]);
        assert_eq!(sh.ahead(Some(1)), 30);
        assert_eq!(sh.ahead(Some(0)), 0);
        // ...and a caller not waiting comes after every one who is.
        assert_eq!(sh.ahead(None), 31);
    }

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

    /// Issue 14 point 6: a 429 teaches the ceiling; the rate resumes below it, evenly.
    #[test]
    fn a_429_sets_the_ceiling_and_the_rate_resumes_below_it_without_a_burst() {
        let (clock, manual) = SharedClock::manual();
        let l = Limiter::new(
            "qb",
            LimiterConfig {
                rate_per_min: 600,
                max_concurrent: 10,
                burst: 5,
                default_pushback: Duration::from_secs(2),
                ..LimiterConfig::default()
            },
            clock,
        );
        for _ in 0..5 {
            l.on_throttle(None); // five in-flight calls see the 429
        }
        let v = l.view();
        assert_eq!(
            (
                v.effective_per_min,
                v.ceiling_per_min,
                v.effective_concurrent
            ),
            (480, Some(600), 5)
        );
        assert_eq!(v.throttles, 5);
        manual.advance(Duration::from_secs(2));
        // The pause saved up a burst of 5; only one request goes, then the spacing.
        let _first = l
            .try_acquire()
            .expect("one request at the end of the pause");
        assert!(
            matches!(l.try_acquire(), Err(Wait::Rate(_))),
            "a burst after the pause"
        );
    }

    #[test]
    fn the_rate_probes_up_a_step_per_probe_interval_and_concurrency_per_second() {
        let (l, clock) = limiter(600, 10); // pushback 60 s: a probe every 5 minutes
        l.on_throttle(None);
        clock.advance(Duration::from_secs(60));
        let mut rates = vec![480];
        let mut concs = vec![];
        let mut changed_at = vec![];
        for s in 1..=2200 {
            clock.advance(Duration::from_secs(1));
            l.on_success();
            let r = l.view().effective_per_min;
            if rates.last() != Some(&r) {
                rates.push(r);
                changed_at.push(s);
            }
            if s <= 6 {
                concs.push(l.view().effective_concurrent);
            }
        }
        assert_eq!(concs, [6, 7, 8, 9, 10, 10]);
        // 2 % of the rate per probe interval (5 minutes) up to 90 % of the ceiling, then
        // a quarter of that.
        assert_eq!(rates, [480, 492, 504, 516, 528, 540, 543, 546]);
        assert_eq!(
            changed_at[0], 300,
            "the first probe a probe interval after the pause"
        );
        assert!(
            changed_at.windows(2).all(|w| w[1] - w[0] == 300),
            "{changed_at:?}"
        );
        assert_eq!(l.view().ceiling_per_min, Some(600), "remembered");
    }

    /// Issue 14 point 3: what a restart needs survives it.
    #[test]
    fn a_restored_limiter_keeps_the_pushback_the_ceiling_and_spends_no_burst() {
        let cfg = LimiterConfig {
            rate_per_min: 600,
            max_concurrent: 10,
            burst: 5,
            default_pushback: Duration::from_secs(60),
            ..LimiterConfig::default()
        };
        let (clock, manual) = SharedClock::manual();
        let old = Limiter::new("qb", cfg.clone(), clock);
        // A full minute at the rate, then a 429.
        for _ in 0..600 {
            drop(old.try_acquire().unwrap());
            manual.advance(Duration::from_millis(100));
        }
        old.on_throttle(None);
        manual.advance(Duration::from_secs(10));
        let p = old.persisted(1_000_000);
        assert_eq!(p.paused_until_ms, Some(1_050_000));
        // The minute before the save: 50 s of the run (the last 10 s paused).
        assert!((490..=501).contains(&p.recent), "{p:?}");
        // The new process starts 2 s later: 48 s of pushback left, the learned rate.
        let (clock, _) = SharedClock::manual();
        let new = Limiter::new("qb", cfg.clone(), clock);
        new.restore(&p, 1_002_000);
        assert!(matches!(new.try_acquire(), Err(Wait::Paused(d)) if d == Duration::from_secs(48)));
        let v = new.view();
        assert_eq!((v.effective_per_min, v.ceiling_per_min), (480, Some(600)));
        // Without a pushback, a second after a full-rate minute: no burst, the rate's
        // spacing.
        let p = crate::resilience::limiter::Persisted {
            at_ms: 1_001_000,
            recent: 600,
            paused_until_ms: None,
            factor: 1.0,
            ceiling_per_min: None,
        };
        let (clock, _) = SharedClock::manual();
        let new = Limiter::new("qb", cfg.clone(), clock);
        new.restore(&p, 1_002_000);
        assert!(matches!(new.try_acquire(), Err(Wait::Rate(_))));
        // An hour later, the whole burst.
        let (clock, _) = SharedClock::manual();
        let new = Limiter::new("qb", cfg, clock);
        new.restore(&p, 1_000_000 + 3_600_000);
        let slots: Vec<_> = (0..5).map(|_| new.try_acquire().unwrap()).collect();
        assert_eq!(slots.len(), 5);
    }

    /// A saved state that is garbage (a far-future pushback, a wall clock that went
    /// back an hour since the save, an impossible ceiling or factor) never stops the
    /// downstream for longer than the pause that was really left.
    #[test]
    fn a_restored_limiter_believes_no_garbage_pushback_nor_a_clock_that_went_back() {
        let cfg = LimiterConfig {
            rate_per_min: 600,
            max_concurrent: 10,
            burst: 5,
            default_pushback: Duration::from_secs(60),
            ..LimiterConfig::default()
        };
        let fresh = |p: &Persisted, wall_ms: i64| {
            let (clock, _) = SharedClock::manual();
            let l = Limiter::new("qb", cfg.clone(), clock);
            l.restore(p, wall_ms);
            l
        };
        let paused = |l: &Arc<Limiter>| match l.try_acquire() {
            Err(Wait::Paused(d)) => d,
            Ok(_) | Err(_) => Duration::ZERO,
        };
        // Saved with 50 s of pushback left; the wall clock went back an hour since.
        let p = Persisted {
            at_ms: 10_000_000,
            recent: 0,
            paused_until_ms: Some(10_050_000),
            factor: 0.8,
            ceiling_per_min: Some(600.0),
        };
        let l = fresh(&p, 10_000_000 - 3_600_000);
        assert!(paused(&l) <= Duration::from_secs(50), "{:?}", paused(&l));
        // A row that claims a pushback until the year 2500, or an unknown save time:
        // longer than any pause, so no pause at all.
        for at_ms in [10_000_000, 0, -5] {
            let p = Persisted {
                at_ms,
                paused_until_ms: Some(16_725_225_600_000),
                ..p.clone()
            };
            let l = fresh(&p, 10_000_000);
            assert_eq!(paused(&l), Duration::ZERO);
        }
        // An impossible ceiling is forgotten, a NaN factor leaves the rate alone.
        let p = Persisted {
            paused_until_ms: None,
            factor: f64::NAN,
            ceiling_per_min: Some(-3.0),
            ..p
        };
        let v = fresh(&p, 10_000_000).view();
        assert_eq!((v.effective_per_min, v.ceiling_per_min), (600, None));
        // A live 429 whose Retry-After says years pauses the longest pause at most.
        let (l, _) = limiter(600, 10);
        l.on_throttle(Some(Duration::from_secs(99_999_999)));
        assert!(paused(&l) <= MAX_PUSHBACK, "{:?}", paused(&l));
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
