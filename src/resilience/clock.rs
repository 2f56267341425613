//! Injected time. Every time-based part of the resilience layer reads a [`Clock`], so
//! tests run on simulated time and never sleep.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Monotonic time since the clock's own epoch.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

/// Tokio's clock: real time, or simulated under `tokio::time::pause`.
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A clock that moves only when told to.
#[derive(Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// A cloneable handle to any clock; also a `governor` clock.
#[derive(Clone)]
pub struct SharedClock(pub Arc<dyn Clock>);

impl SharedClock {
    pub fn tokio() -> Self {
        Self(Arc::new(TokioClock::default()))
    }
    pub fn manual() -> (Self, Arc<ManualClock>) {
        let m = Arc::new(ManualClock::default());
        (Self(m.clone()), m)
    }
    pub fn now(&self) -> Duration {
        self.0.now()
    }
}

impl governor::clock::Clock for SharedClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.0.now()
    }
}
