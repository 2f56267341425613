//! The telemetry a restarted engine takes back, so its charts and alerts show the last
//! hour as it was: the 1-second series downsampled to one point per [`BLOCK_SECS`]
//! (an hour of them), and the alerts and anomalies as they stood.
//!
//! Pure: [`Downsampler`] folds each tick's values into the current block (a few map
//! updates a second, nothing per item), and hands finished blocks to whoever flushes
//! them; the store and the flush cadence are the engine's. Restoring puts each point
//! back over the seconds it covered and leaves every other second empty, so the time
//! the engine was down shows as a gap, not as a line drawn across it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Anomaly;
use super::alerts::SavedAlerts;
use super::metrics::{Reduce, SERIES_LEN, Series};

/// One downsampled point of a metric series, as a process left it (the store keeps
/// them: migration 12).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoint {
    /// The first second it covers (seconds since the epoch).
    pub at_s: i64,
    pub series: String,
    /// Seconds it covers from `at_s` (1 to [`BLOCK_SECS`]).
    pub secs: u32,
    pub value: f64,
}

/// Seconds one kept point covers.
pub const BLOCK_SECS: i64 = 10;
/// Seconds of series kept for the next process.
pub const KEPT_SECS: i64 = SERIES_LEN as i64;

/// How a series is charted, and so downsampled: latency and error rates by their max
/// (a spike must stay visible), the rest by their mean.
pub fn reduce_of(series: &str) -> Reduce {
    if series.starts_with("latency_") || series.starts_with("error_rate:") {
        Reduce::Max
    } else {
        Reduce::Mean
    }
}

#[derive(Debug, Clone, Copy)]
struct Acc {
    first_s: i64,
    last_s: i64,
    sum: f64,
    n: u32,
    max: f64,
}

/// Folds each second's values into blocks of [`BLOCK_SECS`] (aligned on the epoch) and
/// keeps the finished ones until they are taken — at most an hour of them, should the
/// store stop taking them.
#[derive(Debug, Default)]
pub struct Downsampler {
    /// The block being filled (its first second) and the second being added.
    block_s: Option<i64>,
    now_s: i64,
    open: BTreeMap<String, Acc>,
    finished: Vec<SeriesPoint>,
}

impl Downsampler {
    /// A new second: finishes the block it leaves.
    pub fn tick(&mut self, now_ms: i64) {
        let s = now_ms.div_euclid(1000);
        let block = s - s.rem_euclid(BLOCK_SECS);
        if self.block_s != Some(block) {
            self.finish();
            self.block_s = Some(block);
        }
        self.now_s = s;
    }

    /// This second's value of `series` (gaps are not values).
    pub fn add(&mut self, series: &str, v: f64) {
        if !v.is_finite() || self.block_s.is_none() {
            return;
        }
        let s = self.now_s;
        match self.open.get_mut(series) {
            Some(a) => {
                a.last_s = a.last_s.max(s);
                a.sum += v;
                a.n += 1;
                a.max = a.max.max(v);
            }
            None => {
                self.open.insert(
                    series.to_owned(),
                    Acc {
                        first_s: s,
                        last_s: s,
                        sum: v,
                        n: 1,
                        max: v,
                    },
                );
            }
        }
    }

    fn point(series: &str, a: &Acc) -> SeriesPoint {
        SeriesPoint {
            at_s: a.first_s,
            series: series.to_owned(),
            secs: (a.last_s - a.first_s + 1).clamp(1, BLOCK_SECS) as u32,
            value: match reduce_of(series) {
                Reduce::Max => a.max,
                Reduce::Mean => a.sum / f64::from(a.n.max(1)),
            },
        }
    }

    fn finish(&mut self) {
        let open = std::mem::take(&mut self.open);
        self.finished
            .extend(open.iter().map(|(name, a)| Self::point(name, a)));
        // Never more than an hour waiting (a store that cannot write loses the oldest).
        if let Some(newest) = self.finished.last().map(|p| p.at_s) {
            self.finished.retain(|p| p.at_s > newest - KEPT_SECS);
        }
    }

    /// Finished blocks not taken yet, points waiting.
    pub fn waiting(&self) -> usize {
        self.finished.len()
    }

    /// The finished blocks since the last take; with `partial`, the block being filled
    /// too (it goes on filling: its next flush replaces the point).
    pub fn take(&mut self, partial: bool) -> Vec<SeriesPoint> {
        let mut out = std::mem::take(&mut self.finished);
        if partial {
            out.extend(self.open.iter().map(|(name, a)| Self::point(name, a)));
        }
        out
    }
}

/// Series rebuilt from kept points as the second-by-second rings the charts read,
/// ending with the second before `now_ms`: each point over the seconds it covered,
/// every other second empty. (A process that starts within the second its predecessor
/// last measured ends them with that second instead: nothing kept is left out. Points
/// further ahead than a block were written under a clock that ran ahead: they do not
/// move the hour, which stays the one before now.)
pub fn series_from(points: &[SeriesPoint], now_ms: i64) -> BTreeMap<String, Series> {
    let now_s = now_ms.div_euclid(1000);
    let newest = points
        .iter()
        .map(|p| p.at_s + i64::from(p.secs.clamp(1, BLOCK_SECS as u32)))
        .filter(|&end| end <= now_s + BLOCK_SECS)
        .max();
    let now_s = now_s.max(newest.unwrap_or(i64::MIN));
    let from = now_s - KEPT_SECS;
    let mut secs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for p in points {
        let row = secs
            .entry(p.series.as_str())
            .or_insert_with(|| vec![f64::NAN; SERIES_LEN]);
        let covered = i64::from(p.secs.clamp(1, BLOCK_SECS as u32));
        for s in p.at_s..p.at_s + covered {
            if (from..now_s).contains(&s) && p.value.is_finite() {
                row[(s - from) as usize] = p.value;
            }
        }
    }
    secs.into_iter()
        .map(|(name, row)| {
            let mut series = Series::default();
            for v in row {
                series.push(v);
            }
            (name.to_owned(), series)
        })
        .collect()
}

/// The alerts and anomalies as a process left them (JSON in the store).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedTelemetry {
    pub alerts: SavedAlerts,
    /// Oldest first; the ones still open have no end.
    pub anomalies: Vec<Anomaly>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_the_mean_or_the_max_and_the_seconds_they_cover() {
        let mut d = Downsampler::default();
        // Seconds 103..=125: block 100 from 103, block 110 whole, block 120 open.
        for s in 103..=125 {
            d.tick(s * 1000);
            d.add("items_per_sec", s as f64);
            d.add(
                "latency_p95:quickbooks",
                if s == 115 { 900.0 } else { 10.0 },
            );
            d.add("queue:catalog", f64::NAN);
        }
        let p = d.take(false);
        let find = |at: i64, name: &str| p.iter().find(|x| x.at_s == at && x.series == name);
        assert_eq!(p.len(), 4, "{p:?}");
        let first = find(103, "items_per_sec").unwrap();
        assert_eq!((first.secs, first.value), (7, 106.0));
        assert_eq!(find(110, "items_per_sec").unwrap().value, 114.5);
        assert_eq!(find(110, "latency_p95:quickbooks").unwrap().value, 900.0);
        assert!(d.take(false).is_empty(), "taken once");
        let open = d.take(true);
        assert_eq!(open.len(), 2);
        assert_eq!((open[0].at_s, open[0].secs), (120, 6));
    }

    #[test]
    fn restored_series_put_each_point_over_its_seconds_and_leave_the_rest_empty() {
        let points = vec![SeriesPoint {
            at_s: 1000,
            series: "items_per_sec".into(),
            secs: 4,
            value: 5.0,
        }];
        let s = series_from(&points, 1010 * 1000);
        let tail = s["items_per_sec"].tail(12);
        // Seconds 998..=1009.
        let shown: Vec<Option<f64>> = tail.iter().map(|v| (!v.is_nan()).then_some(*v)).collect();
        assert_eq!(
            shown,
            [vec![None, None], vec![Some(5.0); 4], vec![None; 6]].concat()
        );
        // A point left by a process whose clock ran an hour ahead does not carry the
        // restored hour into the future: the real points still show where they were.
        let mut ahead = points.clone();
        ahead.push(SeriesPoint {
            at_s: 1000 + 3600,
            series: "items_per_sec".into(),
            secs: 10,
            value: 9.0,
        });
        let s = series_from(&ahead, 1010 * 1000);
        let tail = s["items_per_sec"].tail(12);
        let shown: Vec<Option<f64>> = tail.iter().map(|v| (!v.is_nan()).then_some(*v)).collect();
        assert_eq!(
            shown,
            [vec![None, None], vec![Some(5.0); 4], vec![None; 6]].concat()
        );
    }
}
