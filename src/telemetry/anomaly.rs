//! Anomaly detection on one metric's 1-second points.
//!
//! - The baseline **excludes the current point** (with it, |z| can never exceed
//!   (n−1)/√n: at n = 10 never 3), and anomalous points never join it, so an incident
//!   does not teach the detector that the incident is normal.
//! - No verdict before `min_samples` points of baseline.
//! - Two scores: the classic z = (x − mean)/σ, and the robust modified z
//!   = 0.6745·(x − median)/MAD for latency (heavy tails). A MAD of zero falls back to the
//!   mean absolute deviation (×1.2533), then to the floor: never a division by zero.
//! - `floor` is the smallest spread believed, so a flat metric does not alert on noise.
//! - An anomaly is reported after `consecutive` anomalous points in a row.

pub use crate::protocol::Method;
use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    pub method: Method,
    /// Points of baseline kept (one per second: 300 = five minutes).
    pub window: usize,
    pub min_samples: usize,
    /// |score| at or above which a point is anomalous (3 for z, 3.5 for MAD).
    pub threshold: f64,
    /// Anomalous points in a row before an anomaly is reported.
    pub consecutive: usize,
    /// The smallest spread (σ or MAD) believed, in the metric's unit.
    pub floor: f64,
}

impl DetectorConfig {
    pub fn zscore(threshold: f64, min_samples: usize, consecutive: usize, floor: f64) -> Self {
        Self {
            method: Method::ZScore,
            window: 300,
            min_samples,
            threshold,
            consecutive,
            floor,
        }
    }

    pub fn mad(threshold: f64, min_samples: usize, consecutive: usize, floor: f64) -> Self {
        Self {
            method: Method::Mad,
            ..Self::zscore(threshold, min_samples, consecutive, floor)
        }
    }
}

/// What one point looked like against its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub value: f64,
    /// Mean (z-score) or median (MAD) of the baseline.
    pub baseline: f64,
    /// σ or MAD actually used (after the floor).
    pub spread: f64,
    pub score: f64,
    /// This point is beyond the threshold.
    pub anomalous: bool,
    /// `consecutive` anomalous points in a row, this one included.
    pub anomaly: bool,
}

#[derive(Debug, Clone)]
pub struct Detector {
    cfg: DetectorConfig,
    baseline: VecDeque<f64>,
    run: usize,
}

/// MAD is scaled to σ by 1/0.6745 for a normal distribution; the mean absolute deviation
/// by √(π/2) ≈ 1.2533.
const MAD_SCALE: f64 = 0.6745;
const MEAN_AD_SCALE: f64 = 1.2533;

impl Detector {
    pub fn new(cfg: DetectorConfig) -> Self {
        Self {
            baseline: VecDeque::with_capacity(cfg.window),
            cfg,
            run: 0,
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// New thresholds; the baseline is kept.
    pub fn reconfigure(&mut self, cfg: DetectorConfig) {
        while self.baseline.len() > cfg.window {
            self.baseline.pop_front();
        }
        self.cfg = cfg;
    }

    pub fn samples(&self) -> usize {
        self.baseline.len()
    }

    /// Scores `x` against the points before it, then (when normal) adds it to them.
    /// `None` while the baseline has fewer than `min_samples` points.
    pub fn observe(&mut self, x: f64) -> Option<Verdict> {
        if !x.is_finite() {
            return None;
        }
        let verdict = if self.baseline.len() < self.cfg.min_samples.max(2) {
            None
        } else {
            let (center, spread) = self.center_and_spread();
            let spread = spread.max(self.cfg.floor).max(f64::MIN_POSITIVE);
            let score = match self.cfg.method {
                Method::ZScore => (x - center) / spread,
                Method::Mad => MAD_SCALE * (x - center) / spread,
            };
            let anomalous = score.abs() >= self.cfg.threshold;
            self.run = if anomalous { self.run + 1 } else { 0 };
            Some(Verdict {
                value: x,
                baseline: center,
                spread,
                score,
                anomalous,
                anomaly: anomalous && self.run >= self.cfg.consecutive.max(1),
            })
        };
        if !verdict.is_some_and(|v| v.anomalous) {
            if self.baseline.len() == self.cfg.window {
                self.baseline.pop_front();
            }
            self.baseline.push_back(x);
        }
        verdict
    }

    fn center_and_spread(&self) -> (f64, f64) {
        let n = self.baseline.len() as f64;
        match self.cfg.method {
            Method::ZScore => {
                let mean = self.baseline.iter().sum::<f64>() / n;
                let var = self
                    .baseline
                    .iter()
                    .map(|v| (v - mean).powi(2))
                    .sum::<f64>()
                    / (n - 1.0);
                (mean, var.sqrt())
            }
            Method::Mad => {
                let mut v: Vec<f64> = self.baseline.iter().copied().collect();
                let median = median(&mut v);
                let mut dev: Vec<f64> = v.iter().map(|x| (x - median).abs()).collect();
                let mad = median_of(&mut dev);
                if mad > 0.0 {
                    (median, mad)
                } else {
                    // More than half the points sit on the median: use the mean absolute
                    // deviation, rescaled to the MAD's scale.
                    let mean_ad = dev.iter().sum::<f64>() / n;
                    (median, mean_ad * MEAN_AD_SCALE * MAD_SCALE)
                }
            }
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    median_of(v)
}

fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repeatable wobble around `mean`: ±`amp` over a 4-point cycle.
    fn wobble(mean: f64, amp: f64, i: usize) -> f64 {
        mean + amp * [0.0, 1.0, 0.0, -1.0][i % 4]
    }

    #[test]
    fn no_verdict_below_the_minimum_of_samples() {
        let mut d = Detector::new(DetectorConfig::zscore(3.0, 30, 1, 0.0));
        for i in 0..30 {
            assert_eq!(d.observe(wobble(100.0, 5.0, i)), None, "point {i}");
        }
        let v = d.observe(1000.0).expect("verdict at 30 samples");
        assert!(v.anomalous && v.anomaly);
    }

    #[test]
    fn the_current_point_is_not_in_its_own_baseline() {
        // Ten points then a spike: with the spike in the baseline |z| could never reach
        // 3 at n = 10 ((n−1)/√n = 2.85). Excluding it, the spike scores far above.
        let mut d = Detector::new(DetectorConfig::zscore(3.0, 10, 1, 0.0));
        for i in 0..10 {
            d.observe(wobble(10.0, 1.0, i));
        }
        let v = d.observe(50.0).unwrap();
        assert!(v.score > 3.0 * 2.85, "z = {}", v.score);
        assert!((v.baseline - 10.0).abs() < 0.5, "baseline {}", v.baseline);
    }

    #[test]
    fn anomalous_points_stay_out_of_the_baseline() {
        let mut d = Detector::new(DetectorConfig::zscore(3.0, 8, 1, 0.0));
        for i in 0..8 {
            d.observe(wobble(10.0, 1.0, i));
        }
        for _ in 0..20 {
            assert!(d.observe(40.0).unwrap().anomalous);
        }
        assert_eq!(d.samples(), 8, "the incident did not become the baseline");
    }

    #[test]
    fn k_consecutive_points_make_an_anomaly() {
        let mut d = Detector::new(DetectorConfig::zscore(3.0, 8, 3, 0.0));
        for i in 0..8 {
            d.observe(wobble(10.0, 1.0, i));
        }
        let a = d.observe(40.0).unwrap();
        let b = d.observe(40.0).unwrap();
        assert!(a.anomalous && !a.anomaly && b.anomalous && !b.anomaly);
        // A normal point breaks the run.
        assert!(!d.observe(10.0).unwrap().anomalous);
        assert!(!d.observe(40.0).unwrap().anomaly);
        assert!(!d.observe(40.0).unwrap().anomaly);
        assert!(d.observe(40.0).unwrap().anomaly, "third in a row");
    }

    #[test]
    fn a_mad_of_zero_never_divides_by_zero() {
        // Most latencies identical (MAD = 0), a few different: the mean absolute
        // deviation takes over.
        let mut d = Detector::new(DetectorConfig::mad(3.5, 20, 1, 0.0));
        for i in 0..20 {
            d.observe(if i % 5 == 0 { 12.0 } else { 10.0 });
        }
        let v = d.observe(11.0).unwrap();
        assert!(v.score.is_finite() && v.spread > 0.0);
        assert!(!v.anomalous, "one step of the usual noise: {v:?}");
        assert!(d.observe(100.0).unwrap().anomalous);
        // Perfectly flat: the floor is the spread.
        let mut flat = Detector::new(DetectorConfig::mad(3.5, 10, 1, 0.0));
        for _ in 0..20 {
            flat.observe(10.0);
        }
        let v = flat.observe(10.0).unwrap();
        assert_eq!(v.score, 0.0);
        assert!(flat.observe(10.5).unwrap().score.is_finite());
    }

    #[test]
    fn the_floor_keeps_a_flat_metric_from_alerting_on_noise() {
        let mut d = Detector::new(DetectorConfig::zscore(3.0, 10, 1, 2.0));
        for _ in 0..30 {
            d.observe(0.0);
        }
        assert!(!d.observe(1.0).unwrap().anomalous, "1 against a floor of 2");
        assert!(d.observe(7.0).unwrap().anomalous);
    }

    #[test]
    fn mad_resists_the_outliers_that_inflate_sigma() {
        // A baseline with a few huge outliers: σ balloons and hides a real shift; the
        // median and MAD do not move.
        let points: Vec<f64> = (0..60)
            .map(|i| {
                if i % 15 == 0 {
                    5000.0
                } else {
                    wobble(100.0, 5.0, i)
                }
            })
            .collect();
        let mut z = Detector::new(DetectorConfig::zscore(3.0, 30, 1, 0.0));
        let mut m = Detector::new(DetectorConfig::mad(3.5, 30, 1, 0.0));
        for p in &points {
            z.observe(*p);
            m.observe(*p);
        }
        assert!(!z.observe(400.0).unwrap().anomalous, "σ hides it");
        assert!(m.observe(400.0).unwrap().anomalous, "MAD sees it");
    }
}
