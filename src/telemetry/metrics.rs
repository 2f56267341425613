//! Metric storage: fixed-memory 1-second series kept for an hour, and HDR latency
//! histograms (cumulative for export, per-second for the series).

pub use crate::protocol::{LATENCY_BUCKETS_S, Summary};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

/// One hour of 1-second points.
pub const SERIES_LEN: usize = 3600;

/// A ring of one point per second. Memory is fixed at creation (3600 × 8 bytes);
/// a second with no data is NaN and is skipped by the downsampler.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    points: Box<[f64]>,
    /// Index of the next write.
    head: usize,
    /// Points written so far (saturates at the capacity).
    len: usize,
}

impl Default for Series {
    fn default() -> Self {
        Self::new(SERIES_LEN)
    }
}

impl Series {
    pub fn new(cap: usize) -> Self {
        Self {
            points: vec![f64::NAN; cap.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    pub fn push(&mut self, v: f64) {
        self.points[self.head] = v;
        self.head = (self.head + 1) % self.points.len();
        self.len = (self.len + 1).min(self.points.len());
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn last(&self) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let i = (self.head + self.points.len() - 1) % self.points.len();
        Some(self.points[i]).filter(|v| !v.is_nan())
    }

    /// The last `secs` seconds (at most what is kept), oldest first; NaN for gaps and for
    /// seconds before the first point.
    pub fn tail(&self, secs: usize) -> Vec<f64> {
        let cap = self.points.len();
        let secs = secs.min(cap);
        let mut out = Vec::with_capacity(secs);
        for back in (1..=secs).rev() {
            if back > self.len {
                out.push(f64::NAN);
            } else {
                out.push(self.points[(self.head + cap - back) % cap]);
            }
        }
        out
    }

    /// The last `secs` seconds in `buckets` buckets, each the mean (or the max, for
    /// spikes that must stay visible) of its points; None for a bucket without data.
    pub fn downsample(&self, secs: usize, buckets: usize, how: Reduce) -> Vec<Option<f64>> {
        let tail = self.tail(secs);
        let buckets = buckets.clamp(1, tail.len().max(1));
        let per = tail.len() as f64 / buckets as f64;
        (0..buckets)
            .map(|b| {
                let from = (b as f64 * per).round() as usize;
                let to = (((b + 1) as f64 * per).round() as usize).min(tail.len());
                let vals = tail[from..to].iter().copied().filter(|v| !v.is_nan());
                match how {
                    Reduce::Mean => {
                        let (s, n) = vals.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
                        (n > 0).then(|| s / n as f64)
                    }
                    Reduce::Max => vals.reduce(f64::max),
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Mean,
    Max,
}

struct Pair {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    total_sum_us: u128,
    /// Every call since start, by `/metrics` bucket.
    buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
}

/// An operation's latency: every call since start (for `/metrics` and the profile)
/// and the calls of the current second (for the series). Microseconds, 3 significant
/// digits, 1 µs – 1 h; longer values are clamped to the top.
pub struct Latency {
    inner: Mutex<Pair>,
}

const MAX_US: u64 = 3_600_000_000;

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Latency").field(&self.summary()).finish()
    }
}

impl Default for Latency {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, MAX_US, 3).expect("valid HDR bounds");
        Self {
            inner: Mutex::new(Pair {
                total: h(),
                interval: h(),
                total_sum_us: 0,
                buckets: [0; LATENCY_BUCKETS_S.len() + 1],
            }),
        }
    }
}

fn summarize(h: &Histogram<u64>, sum_us: u128) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    Summary {
        count: h.len(),
        sum_ms: sum_us as f64 / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
        buckets: [0; LATENCY_BUCKETS_S.len() + 1],
    }
}

impl Latency {
    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_US);
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        p.total.saturating_record(us);
        p.interval.saturating_record(us);
        p.total_sum_us += us as u128;
        p.buckets[Summary::bucket_of(us as f64 / 1e6)] += 1;
    }

    /// Everything since start.
    pub fn summary(&self) -> Summary {
        let p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Summary {
            buckets: p.buckets,
            ..summarize(&p.total, p.total_sum_us)
        }
    }

    /// The calls since the last call to this, then starts a new interval.
    pub fn take_interval(&self) -> Summary {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let sum: u128 = p
            .interval
            .iter_recorded()
            .map(|v| v.value_iterated_to() as u128 * v.count_at_value() as u128)
            .sum();
        let s = summarize(&p.interval, sum);
        p.interval.reset();
        s
    }
}

/// A counter's increase per window, from cumulative readings one second apart.
#[derive(Debug, Clone)]
pub struct Window {
    readings: std::collections::VecDeque<u64>,
    secs: usize,
}

impl Window {
    pub fn new(secs: usize) -> Self {
        Self {
            readings: std::collections::VecDeque::with_capacity(secs + 1),
            secs,
        }
    }

    pub fn push(&mut self, cumulative: u64) {
        if self.readings.len() > self.secs {
            self.readings.pop_front();
        }
        self.readings.push_back(cumulative);
    }

    /// Readings kept (at most the window + 1).
    pub fn len(&self) -> usize {
        self.readings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }

    /// Increase over the window (or since the first reading, if younger).
    pub fn increase(&self) -> u64 {
        match (self.readings.front(), self.readings.back()) {
            (Some(a), Some(b)) => b.saturating_sub(*a),
            _ => 0,
        }
    }

    /// Increase over the last second.
    pub fn last_second(&self) -> u64 {
        let n = self.readings.len();
        if n < 2 {
            return 0;
        }
        self.readings[n - 1].saturating_sub(self.readings[n - 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_keeps_an_hour_in_fixed_memory() {
        let mut s = Series::default();
        for i in 0..10_000 {
            s.push(i as f64);
        }
        assert_eq!(s.len(), 3600);
        assert_eq!(s.points.len(), 3600, "never grows");
        let t = s.tail(3600);
        assert_eq!(t[0], 6400.0);
        assert_eq!(*t.last().unwrap(), 9999.0);
        assert_eq!(s.last(), Some(9999.0));
    }

    #[test]
    fn downsampling_averages_buckets_and_skips_gaps() {
        let mut s = Series::new(3600);
        for i in 0..60 {
            s.push(if i == 30 { f64::NAN } else { i as f64 });
        }
        let b = s.downsample(60, 6, Reduce::Mean);
        assert_eq!(b.len(), 6);
        assert_eq!(b[0], Some(4.5));
        assert_eq!(
            b[3],
            Some((31 + 32 + 33 + 34 + 35 + 36 + 37 + 38 + 39) as f64 / 9.0)
        );
        let m = s.downsample(60, 6, Reduce::Max);
        assert_eq!(m[5], Some(59.0));
        // A window longer than the data: the early buckets are empty.
        let b = s.downsample(120, 4, Reduce::Mean);
        assert_eq!(b[0], None);
        assert!(b[3].is_some());
    }

    #[test]
    fn hdr_percentiles_and_intervals() {
        let l = Latency::default();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.take_interval();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p95_ms - 95.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert_eq!(l.take_interval().count, 0, "a new interval");
        let total = l.summary();
        assert_eq!(total.count, 100);
        assert!((total.sum_ms - 5050.0).abs() < 1.0);
    }

    #[test]
    fn a_window_counts_the_increase_of_the_last_minute() {
        let mut w = Window::new(60);
        for i in 0..100u64 {
            w.push(i * 2);
        }
        assert_eq!(w.increase(), 120);
        assert_eq!(w.last_second(), 2);
    }
}
