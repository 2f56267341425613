//! Telemetry: once a second the engine hands a [`Sample`] of its counters to
//! [`Telemetry::tick`], which keeps the 1-second series (an hour, fixed memory), runs the
//! anomaly detectors, evaluates the alert rules and scores health. Pure: time comes in
//! the sample, so tests drive it on simulated time.

pub mod alerts;
pub mod anomaly;
pub mod cache;
pub mod health;
pub mod history;
pub mod metrics;
pub mod settings;
pub mod trace;

pub use crate::protocol::{Anomaly, Chart, TelemetryView};
use std::collections::{BTreeMap, VecDeque};

use crate::protocol::{BreakerAction, Command, Recommendation, Service};
use alerts::{Alerts, Notification, Rule, Severity};
use anomaly::{Detector, DetectorConfig};
use cache::CacheStats;
use health::{Check, DownstreamSignals, Health, Targets};
use metrics::{Series, Window};
use settings::{AlertsConfig, AnomalyConfig};

/// One downstream's cumulative counters and its latency percentiles over the
/// resilience layer's time window (the same figures the Circuits screen and the API
/// show: [`crate::resilience::LATENCY_WINDOW`]).
#[derive(Debug, Clone, Default)]
pub struct DownstreamSample {
    pub name: String,
    pub calls: u64,
    /// Failures and timeouts.
    pub failures: u64,
    pub consecutive_failures: u64,
    /// p50, p95, p99 (ms) of the calls in the window; None without calls in it.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub breaker: String,
    pub in_flight: u64,
    pub limit: u64,
    /// Set while the service refuses our credentials (the reason).
    pub auth: Option<String>,
}

impl DownstreamSample {
    /// The sample of a downstream as its view shows it (breaker, limits, the latency
    /// window); credentials are the caller's to add.
    pub fn from_view(v: &crate::protocol::DownstreamView) -> Self {
        Self {
            name: v.name.clone(),
            calls: v.calls,
            failures: v.failures + v.timeouts,
            consecutive_failures: v.consecutive_failures,
            p50_ms: v.p50_ms,
            p95_ms: v.p95_ms,
            p99_ms: v.p99_ms,
            breaker: v.breaker.state.to_string(),
            in_flight: v.limiter.in_flight as u64,
            limit: v.limiter.max_concurrent as u64,
            auth: None,
        }
    }
}

/// The engine's counters at one second.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub now_ms: i64,
    /// Cumulative catalog jobs done and invoices validated.
    pub items_done: u64,
    pub invoices_validated: u64,
    /// Cumulative DIAN sends and the ones that did not end accepted.
    pub dian_sends: u64,
    pub dian_failures: u64,
    pub downstreams: Vec<DownstreamSample>,
    pub catalog_queue: u64,
    pub catalog_in_flight: u64,
    pub catalog_paused: bool,
    /// None when the compliance pipeline is off.
    pub dian_queue: Option<u64>,
    pub cache: CacheStats,
    /// Pipeline checks the engine scored itself (catalog, compliance, store).
    pub checks: Vec<Check>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    pub recommendations: Vec<crate::protocol::Recommendation>,
    /// What needs a person (health lists them; the console shows a banner).
    pub problems: Vec<health::Problem>,
}

/// Something to push to the feeds.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    Anomaly(Anomaly),
    Alert(Notification),
}

const KEPT: usize = 200;

pub struct Telemetry {
    alerts_cfg: AlertsConfig,
    anomaly_cfg: AnomalyConfig,
    series: BTreeMap<String, Series>,
    windows: BTreeMap<String, Window>,
    detectors: BTreeMap<String, Detector>,
    open: BTreeMap<String, Anomaly>,
    anomalies: VecDeque<Anomaly>,
    pub alerts: Alerts,
    health: Health,
    last: Option<Sample>,
    /// Per queue: when it was last empty or last saw work leave it (ms).
    queue_progress: BTreeMap<String, i64>,
    /// What the alert rules were given each second over the last hour, for a threshold
    /// what-if to replay: the (metric, label) pairs once, then per second the time and
    /// (pair, value).
    input_keys: Vec<(String, String)>,
    inputs: VecDeque<(i64, Vec<(u16, f64)>)>,
    /// The series downsampled for the next process.
    history: history::Downsampler,
    /// Moves with every anomaly opened or closed (what the next process keeps).
    anomalies_version: u64,
}

/// Seconds of alert inputs and series a what-if replays.
pub const REPLAY_SECS: usize = 3600;

/// What replaying the recorded hour under some thresholds gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    /// Seconds replayed (0: nothing recorded yet).
    pub window_secs: u64,
    /// Per rule: (times one of its alerts went firing, times that was notified).
    pub fired: BTreeMap<String, (u64, u64)>,
    /// Anomalies opened.
    pub anomalies: u64,
}

impl Telemetry {
    pub fn new(alerts_cfg: AlertsConfig, anomaly_cfg: AnomalyConfig) -> Self {
        Self {
            alerts: Alerts::new(rules(&alerts_cfg)),
            alerts_cfg,
            anomaly_cfg,
            series: BTreeMap::new(),
            windows: BTreeMap::new(),
            detectors: BTreeMap::new(),
            open: BTreeMap::new(),
            anomalies: VecDeque::new(),
            health: Health::default(),
            last: None,
            queue_progress: BTreeMap::new(),
            input_keys: Vec::new(),
            inputs: VecDeque::new(),
            history: history::Downsampler::default(),
            anomalies_version: 0,
        }
    }

    /// Changes with what [`Telemetry::saved`] would give.
    pub fn saved_version(&self) -> (u64, u64) {
        (self.alerts.version(), self.anomalies_version)
    }

    /// The alerts and anomalies for the next process ([`Telemetry::restore`]).
    pub fn saved(&self) -> history::SavedTelemetry {
        history::SavedTelemetry {
            alerts: self.alerts.saved(),
            anomalies: self.anomalies.iter().cloned().collect(),
        }
    }

    /// Takes back the alerts and anomalies a previous process kept (see
    /// [`alerts::Alerts::restore`]). Its open anomalies stay open until this process's
    /// detectors, once they have a baseline, see the metric back in its band.
    pub fn restore(&mut self, saved: history::SavedTelemetry, now_ms: i64) {
        self.alerts.restore(saved.alerts, now_ms);
        let mine = std::mem::take(&mut self.anomalies);
        for a in saved.anomalies.into_iter().chain(mine) {
            if a.ended_ms.is_none() {
                self.open
                    .entry(a.metric.clone())
                    .or_insert_with(|| a.clone());
            }
            if self.anomalies.len() == KEPT {
                self.anomalies.pop_front();
            }
            self.anomalies.push_back(a);
        }
        self.anomalies_version += 1;
    }

    /// Takes back the series a previous process kept, over the hour before `now_ms`
    /// (the seconds nobody measured stay empty). Series this process already has are
    /// left alone.
    pub fn restore_series(&mut self, points: &[history::SeriesPoint], now_ms: i64) {
        for (name, series) in history::series_from(points, now_ms) {
            self.series.entry(name).or_insert(series);
        }
    }

    /// Downsampled points to keep: the blocks finished since the last call, and with
    /// `partial` the block being filled.
    pub fn take_points(&mut self, partial: bool) -> Vec<history::SeriesPoint> {
        self.history.take(partial)
    }

    /// Finished blocks' points not taken yet.
    pub fn points_waiting(&self) -> usize {
        self.history.waiting()
    }

    /// New thresholds: rules rebuilt (alerts keep their state), detectors keep their
    /// baselines.
    pub fn configure(&mut self, alerts_cfg: AlertsConfig, anomaly_cfg: AnomalyConfig) {
        self.alerts.set_rules(rules(&alerts_cfg));
        self.alerts_cfg = alerts_cfg;
        self.anomaly_cfg = anomaly_cfg;
        let cfgs: Vec<(String, DetectorConfig)> = self
            .detectors
            .keys()
            .map(|k| (k.clone(), self.detector_config(k)))
            .collect();
        for (k, c) in cfgs {
            if let Some(d) = self.detectors.get_mut(&k) {
                d.reconfigure(c);
            }
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn series(&self, name: &str) -> Option<&Series> {
        self.series.get(name)
    }

    fn detector_config(&self, metric: &str) -> DetectorConfig {
        detector_config(&self.anomaly_cfg, metric)
    }

    /// Keeps what the alert rules are given this second (an hour of it).
    fn record_inputs(&mut self, now: i64, values: &[(String, String, f64)]) {
        let mut row = Vec::with_capacity(values.len());
        for (m, l, v) in values {
            let i = match self.input_keys.iter().position(|(a, b)| a == m && b == l) {
                Some(i) => i,
                None => {
                    self.input_keys.push((m.clone(), l.clone()));
                    self.input_keys.len() - 1
                }
            };
            row.push((u16::try_from(i).unwrap_or(u16::MAX), *v));
        }
        if self.inputs.len() == REPLAY_SECS {
            self.inputs.pop_front();
        }
        self.inputs.push_back((now, row));
    }

    /// The recorded hour replayed through the real rules and detectors, as they would
    /// run under `alerts` and `anomaly`: fresh alert state and baselines, the same
    /// values, the same clock. A what-if compares two replays (the values in force
    /// and the proposed ones).
    pub fn replay(&self, alerts: &AlertsConfig, anomaly: &AnomalyConfig) -> Replay {
        // The detectors first: which metrics are anomalous at each recorded second
        // (the `anomaly` rule's values), aligned on the newest second.
        let n = self.inputs.len();
        let mut open_at: Vec<Vec<&str>> = vec![Vec::new(); n];
        let mut anomalies = 0;
        for metric in self.detectors.keys() {
            let Some(series) = self.series.get(metric) else {
                continue;
            };
            let tail = series.tail(REPLAY_SECS);
            let (skip, offset) = (tail.len().saturating_sub(n), n.saturating_sub(tail.len()));
            let mut d = Detector::new(detector_config(anomaly, metric));
            let mut open = false;
            for (i, v) in tail.into_iter().enumerate() {
                // As `detect`: a second without a value is no verdict.
                if let Some(verdict) = d.observe(v) {
                    if verdict.anomaly && !open {
                        open = true;
                        // Counted over the recorded seconds only; the ones before (a
                        // previous process's, restored) only warm the detector up.
                        anomalies += u64::from(i >= skip);
                    } else if !verdict.anomalous {
                        open = false;
                    }
                }
                if open && i >= skip {
                    open_at[offset + i - skip].push(metric);
                }
            }
        }
        let mut a = Alerts::new(rules(alerts));
        let mut values = Vec::new();
        for ((now, row), open) in self.inputs.iter().zip(&open_at) {
            values.clear();
            values.extend(row.iter().filter_map(|(i, v)| {
                let (m, l) = self.input_keys.get(usize::from(*i))?;
                (m != "anomaly").then(|| (m.clone(), l.clone(), *v))
            }));
            values.extend(
                open.iter()
                    .map(|m| ("anomaly".to_owned(), (*m).to_owned(), 1.0)),
            );
            a.evaluate(*now, &values);
        }
        let window_secs = match (self.inputs.front(), self.inputs.back()) {
            (Some((first, _)), Some((last, _))) => ((last - first) / 1000 + 1) as u64,
            _ => 0,
        };
        Replay {
            window_secs,
            fired: a.fired().clone(),
            anomalies,
        }
    }

    /// The thresholds in force.
    pub fn settings(&self) -> (&AlertsConfig, &AnomalyConfig) {
        (&self.alerts_cfg, &self.anomaly_cfg)
    }
}

/// The detector of `metric` under `a`.
fn detector_config(a: &AnomalyConfig, metric: &str) -> DetectorConfig {
    let (min, k) = (a.min_samples as usize, a.consecutive as usize);
    let family = metric.split(':').next().unwrap_or(metric);
    match family {
        "latency_p95" => DetectorConfig::mad(a.mad_threshold, min, k, 5.0),
        "error_rate" => DetectorConfig::zscore(a.z_threshold, min, k, 2.0),
        "queue" => DetectorConfig::zscore(a.z_threshold, min, k, 10.0),
        "cache_miss_rate" => DetectorConfig::zscore(a.z_threshold, min, k, 5.0),
        _ => DetectorConfig::zscore(a.z_threshold, min, k, 1.0),
    }
}

impl Telemetry {
    fn push(&mut self, name: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.history.add(name, v);
        }
        self.series
            .entry(name.to_owned())
            .or_default()
            .push(v.unwrap_or(f64::NAN));
    }

    fn window(&mut self, name: &str, secs: usize, cumulative: u64) -> &Window {
        let w = self
            .windows
            .entry(name.to_owned())
            .or_insert_with(|| Window::new(secs));
        w.push(cumulative);
        w
    }

    /// How long the queue `name` (`depth` deep, `done` items left it so far) needs to
    /// empty, in seconds: at the rate work left it over the last minute, and at least as
    /// long as nothing has left it (a queue that does not move grows this by the second).
    fn queue_drain_secs(&mut self, name: &str, depth: u64, done: u64, now: i64) -> f64 {
        let w = self.window(&format!("drain:{name}"), 60, done);
        let full = w.len() > 60;
        let (left, moved, secs) = (w.increase(), w.last_second() > 0, w.len().max(2) - 1);
        let since = self.queue_progress.entry(name.to_owned()).or_insert(now);
        if depth == 0 || moved {
            *since = now;
        }
        if depth == 0 {
            return 0.0;
        }
        let still = (now - *since).max(0) as f64 / 1000.0;
        if left == 0 && full {
            // Nothing left it for a whole minute: at this rate it never empties.
            f64::INFINITY
        } else if left == 0 {
            still
        } else {
            (depth as f64 * secs as f64 / left as f64).max(still)
        }
    }

    /// The `queue_depth` alert's value: the depth while the queue is not draining
    /// (see [`AlertsConfig::queue_drain_secs`]), else 0 — a deep queue that drains, as
    /// a full sync's does, is work going as it should.
    fn queue_alert_value(&mut self, name: &str, depth: u64, done: u64, now: i64) -> f64 {
        let drain = self.queue_drain_secs(name, depth, done, now);
        if drain >= self.alerts_cfg.queue_drain_secs {
            depth as f64
        } else {
            0.0
        }
    }

    /// Runs the detector of `metric` on `v`; opens or closes its anomaly.
    fn detect(&mut self, metric: &str, v: Option<f64>, now: i64, out: &mut Vec<Signal>) {
        let Some(v) = v else { return };
        if !self.detectors.contains_key(metric) {
            let cfg = self.detector_config(metric);
            self.detectors.insert(metric.to_owned(), Detector::new(cfg));
        }
        let d = self.detectors.get_mut(metric).expect("inserted");
        let method = d.config().method;
        let Some(verdict) = d.observe(v) else { return };
        if verdict.anomaly && !self.open.contains_key(metric) {
            let a = Anomaly {
                metric: metric.to_owned(),
                value: verdict.value,
                baseline: verdict.baseline,
                score: verdict.score,
                method,
                at_ms: now,
                ended_ms: None,
            };
            self.open.insert(metric.to_owned(), a.clone());
            self.anomalies_version += 1;
            if self.anomalies.len() == KEPT {
                self.anomalies.pop_front();
            }
            self.anomalies.push_back(a.clone());
            out.push(Signal::Anomaly(a));
        } else if !verdict.anomalous
            && let Some(a) = self.open.remove(metric)
            && let Some(h) = self
                .anomalies
                .iter_mut()
                .rev()
                .find(|h| h.metric == a.metric && h.at_ms == a.at_ms)
        {
            h.ended_ms = Some(now);
            self.anomalies_version += 1;
        }
    }

    /// One second: series, anomalies, alerts, health. Returns what the feeds push.
    #[expect(
        clippy::too_many_lines,
        reason = "every check's signals and scores in one place"
    )]
    pub fn tick(&mut self, s: Sample) -> Vec<Signal> {
        let now = s.now_ms;
        self.history.tick(now);
        let mut out = Vec::new();
        let mut values: Vec<(String, String, f64)> = Vec::new();
        let mut value = |m: &str, l: &str, v: f64| values.push((m.into(), l.into(), v));

        let items = self.window("items", 2, s.items_done).last_second() as f64;
        let invoices = self
            .window("invoices", 2, s.invoices_validated)
            .last_second() as f64;
        self.push("items_per_sec", Some(items));
        self.push("invoices_per_sec", Some(invoices));
        self.detect("items_per_sec", Some(items), now, &mut out);

        let mut signals = Vec::new();
        for d in &s.downstreams {
            let calls = self
                .window(&format!("calls:{}", d.name), 60, d.calls)
                .increase();
            let failures = self
                .window(&format!("failures:{}", d.name), 60, d.failures)
                .increase();
            let error_rate = (calls > 0).then(|| failures as f64 * 100.0 / calls as f64);
            // One latency source: the window the Circuits screen and the API show.
            self.push(&format!("latency_p50:{}", d.name), d.p50_ms);
            self.push(&format!("latency_p95:{}", d.name), d.p95_ms);
            self.push(&format!("latency_p99:{}", d.name), d.p99_ms);
            self.push(&format!("error_rate:{}", d.name), error_rate);
            self.detect(&format!("error_rate:{}", d.name), error_rate, now, &mut out);
            self.detect(&format!("latency_p95:{}", d.name), d.p95_ms, now, &mut out);
            if let Some(e) = error_rate {
                value("error_rate", &d.name, e);
            }
            if let Some(p) = d.p95_ms {
                value("latency_p95", &d.name, p);
            }
            value(
                "consecutive_failures",
                &d.name,
                d.consecutive_failures as f64,
            );
            value("auth", &d.name, if d.auth.is_some() { 1.0 } else { 0.0 });
            signals.push(DownstreamSignals {
                name: d.name.clone(),
                breaker: d.breaker.clone(),
                error_rate,
                p95_ms: d.p95_ms,
                in_flight: d.in_flight,
                concurrency_limit: d.limit,
                open_anomalies: 0,
                auth: d.auth.clone(),
            });
        }

        let catalog_queue = s.catalog_queue as f64;
        self.push("queue:catalog", Some(catalog_queue));
        self.detect("queue:catalog", Some(catalog_queue), now, &mut out);
        // A paused pipeline's queue waits on purpose (health says it is paused).
        let depth = if s.catalog_paused { 0 } else { s.catalog_queue };
        let v = self.queue_alert_value("catalog", depth, s.items_done, now);
        value("queue_depth", "catalog", v);
        // Work waiting, nothing in flight and nothing done for a minute: stalled.
        let done_minute = self.window("items_minute", 60, s.items_done).increase();
        let stalled = s.catalog_queue > 0
            && !s.catalog_paused
            && s.catalog_in_flight == 0
            && done_minute == 0
            && self.windows["items_minute"].len() > 60;
        value(
            "no_active_workers",
            "catalog",
            if stalled { 1.0 } else { 0.0 },
        );
        if let Some(q) = s.dian_queue {
            self.push("queue:dian", Some(q as f64));
            self.detect("queue:dian", Some(q as f64), now, &mut out);
            let v = self.queue_alert_value("dian", q, s.invoices_validated, now);
            value("queue_depth", "dian", v);
            let sends = self.window("dian_sends", 300, s.dian_sends).increase();
            let failed = self
                .window("dian_failures", 300, s.dian_failures)
                .increase();
            if sends >= 3 {
                value(
                    "dian_failure_rate",
                    "",
                    failed as f64 * 100.0 / sends as f64,
                );
            }
        }
        // Only misses a cache could have avoided count: a cold start (every lookup new)
        // is not a cache problem.
        let hits = self.window("cache_hits", 60, s.cache.hits).increase();
        let misses = self
            .window("cache_misses", 60, s.cache.warm_misses())
            .increase();
        let lookups = hits + misses;
        let miss_rate = (lookups > 0).then(|| misses as f64 * 100.0 / lookups as f64);
        self.push("cache_miss_rate", miss_rate);
        self.detect("cache_miss_rate", miss_rate, now, &mut out);
        if lookups >= 20
            && let Some(m) = miss_rate
        {
            value("cache_miss_rate", "", m);
        }
        for metric in self.open.keys() {
            value("anomaly", metric, 1.0);
        }

        self.record_inputs(now, &values);
        for n in self.alerts.evaluate(now, &values) {
            out.push(Signal::Alert(n));
        }
        self.alerts.refresh_silences(now);

        // Health: downstreams, then the pipelines' own checks.
        let targets = Targets {
            error_rate: self.alerts_cfg.error_rate_percent,
            latency_ms: self.alerts_cfg.latency_p95_ms,
        };
        let mut recommendations = s.recommendations.clone();
        let mut checks: Vec<Check> = signals
            .iter_mut()
            .map(|sig| {
                sig.open_anomalies = self
                    .open
                    .keys()
                    .filter(|m| m.ends_with(&format!(":{}", sig.name)))
                    .count();
                let c = health::downstream(sig, &targets);
                if matches!(sig.breaker.as_str(), "OPEN" | "FORCED_OPEN") {
                    let r = Recommendation::new(
                        sig.name.clone(),
                        format!(
                            "the circuit is {}; check the service's status page — the engine tries again after the wait (close the circuit only if you know the service is back)",
                            sig.breaker
                        ),
                    );
                    recommendations.push(match sig.name.parse::<Service>() {
                        Ok(service) => r.with_action(Command::Breaker {
                            service,
                            action: BreakerAction::Close,
                        }),
                        Err(_) => r,
                    });
                } else if sig.error_rate.is_some_and(|e| e >= targets.error_rate) {
                    recommendations.push(Recommendation::new(
                        sig.name.clone(),
                        format!(
                            "{:.0} % of calls fail; the event log shows the errors",
                            sig.error_rate.unwrap_or(0.0)
                        ),
                    ));
                }
                c
            })
            .collect();
        checks.extend(s.checks.iter().cloned());
        if miss_rate.is_some_and(|m| m >= self.alerts_cfg.cache_miss_rate_percent) && lookups >= 20
        {
            recommendations.push(Recommendation::new(
                "cache",
                "most lookups miss; raise cache.ttl_secs or cache.max_entries",
            ));
        }
        let mut warnings = s.warnings.clone();
        let mut errors = s.errors.clone();
        for a in self.alerts.active() {
            if a.phase != alerts::Phase::Firing {
                continue;
            }
            let line = format!(
                "alert {}{}: {}",
                a.id,
                if a.acked_by.is_some() {
                    " (acknowledged)"
                } else {
                    ""
                },
                a.summary
            );
            match a.severity {
                Severity::Critical => errors.push(line),
                _ => warnings.push(line),
            }
        }
        self.health = health::Health {
            problems: s.problems.clone(),
            ..health::combine(checks, warnings, errors, recommendations)
        };
        self.last = Some(s);
        out
    }

    pub fn view(&self, now_ms: i64) -> TelemetryView {
        // Each series reduced as it is kept for the next process (history::reduce_of).
        let chart = |name: &str| {
            let how = history::reduce_of(name);
            self.series.get(name).map(|s| Chart {
                name: name.to_owned(),
                m1: s.downsample(60, 60, how),
                m5: s.downsample(300, 100, how),
                h1: s.downsample(3600, 120, how),
            })
        };
        let mut charts = Vec::new();
        for name in ["items_per_sec", "invoices_per_sec"] {
            charts.extend(chart(name));
        }
        let names: Vec<&String> = self
            .series
            .keys()
            .filter(|k| k.starts_with("latency_") || k.starts_with("error_rate:"))
            .collect();
        for n in names {
            charts.extend(chart(n));
        }
        for name in ["queue:catalog", "queue:dian", "cache_miss_rate"] {
            charts.extend(chart(name));
        }
        let rate = |name: &str| {
            self.series
                .get(name)
                .map(|s| {
                    let t = s.tail(10);
                    let v: Vec<f64> = t.into_iter().filter(|v| !v.is_nan()).collect();
                    if v.is_empty() {
                        0.0
                    } else {
                        v.iter().sum::<f64>() / v.len() as f64
                    }
                })
                .unwrap_or(0.0)
        };
        TelemetryView {
            health: self.health.clone(),
            alerts: self.alerts.active(),
            notifications: self.alerts.history().take(50).cloned().collect(),
            anomalies: self.anomalies.iter().rev().take(50).cloned().collect(),
            open_anomalies: self.open.len(),
            silences: self.alerts.silences(now_ms),
            charts,
            thresholds: Vec::new(),
            expiring: Vec::new(),
            cache: self.last.as_ref().map(|s| s.cache).unwrap_or_default(),
            items_per_sec: rate("items_per_sec"),
            invoices_per_sec: rate("invoices_per_sec"),
        }
    }

    /// The sample of the last tick.
    pub fn last_sample(&self) -> Option<&Sample> {
        self.last.as_ref()
    }

    pub fn anomalies(&self) -> impl Iterator<Item = &Anomaly> {
        self.anomalies.iter().rev()
    }
}

/// StatsD lines for one second: gauges of the rates, queues, health and alerts, and
/// counters of the calls and failures per downstream since the previous second.
pub fn statsd_lines(s: &Sample, prev: Option<&Sample>, view: &TelemetryView) -> Vec<String> {
    let mut out = vec![
        format!("syncctl.items_per_sec:{}|g", view.items_per_sec),
        format!("syncctl.invoices_per_sec:{}|g", view.invoices_per_sec),
        format!("syncctl.queue.catalog:{}|g", s.catalog_queue),
        format!("syncctl.health.score:{}|g", view.health.score),
        format!(
            "syncctl.alerts.firing:{}|g",
            view.alerts
                .iter()
                .filter(|a| a.phase == alerts::Phase::Firing)
                .count()
        ),
        format!("syncctl.anomalies.open:{}|g", view.open_anomalies),
        format!("syncctl.cache.entries:{}|g", view.cache.entries),
    ];
    if let Some(q) = s.dian_queue {
        out.push(format!("syncctl.queue.dian:{q}|g"));
    }
    for d in &s.downstreams {
        let before = prev.and_then(|p| p.downstreams.iter().find(|x| x.name == d.name));
        let delta =
            |now: u64, f: fn(&DownstreamSample) -> u64| now - before.map_or(now, f).min(now);
        out.push(format!(
            "syncctl.http.{}.calls:{}|c",
            d.name,
            delta(d.calls, |x| x.calls)
        ));
        out.push(format!(
            "syncctl.http.{}.failures:{}|c",
            d.name,
            delta(d.failures, |x| x.failures)
        ));
        if let Some(p95) = d.p95_ms {
            out.push(format!("syncctl.http.{}.p95_ms:{p95}|g", d.name));
        }
    }
    out
}

/// The default rules, from the thresholds.
pub fn rules(c: &AlertsConfig) -> Vec<Rule> {
    let for_ms = c.for_secs as i64 * 1000;
    let cooldown_ms = c.cooldown_secs as i64 * 1000;
    let rule = |name: &str, severity, fire: f64, summary: String| Rule {
        name: name.into(),
        metric: name.into(),
        severity,
        fire,
        clear: fire * c.clear_ratio,
        for_ms,
        cooldown_ms,
        summary,
    };
    vec![
        rule(
            "error_rate",
            Severity::Warning,
            c.error_rate_percent,
            format!(
                "error rate over the last minute ≥ {} %",
                c.error_rate_percent
            ),
        ),
        rule(
            "latency_p95",
            Severity::Warning,
            c.latency_p95_ms,
            format!("p95 latency ≥ {} ms", c.latency_p95_ms),
        ),
        rule(
            "cache_miss_rate",
            Severity::Info,
            c.cache_miss_rate_percent,
            format!(
                "avoidable cache misses ≥ {} % of lookups (keys cached before, since expired or evicted)",
                c.cache_miss_rate_percent
            ),
        ),
        Rule {
            // A count: it resolves at the first success, not at a ratio of it.
            clear: 1.0,
            for_ms: 0,
            ..rule(
                "consecutive_failures",
                Severity::Critical,
                c.consecutive_failures,
                format!("{} or more failed calls in a row", c.consecutive_failures),
            )
        },
        rule(
            "queue_depth",
            Severity::Warning,
            c.queue_depth,
            if c.queue_drain_secs > 0.0 {
                format!(
                    "queue deeper than {} and not draining (more than {} to empty at the current rate)",
                    c.queue_depth,
                    crate::protocol::format_duration(c.queue_drain_secs as u64)
                )
            } else {
                format!("queue deeper than {}", c.queue_depth)
            },
        ),
        Rule {
            // Refused credentials: nothing a retry fixes; at once, until they work.
            clear: 1.0,
            for_ms: 0,
            ..rule(
                "auth",
                Severity::Critical,
                1.0,
                "the service refuses our credentials: calls wait for an operator (see /health for the fix)".into(),
            )
        },
        Rule {
            clear: 1.0,
            ..rule(
                "no_active_workers",
                Severity::Critical,
                1.0,
                "work is waiting and no worker has done any for a minute".into(),
            )
        },
        rule(
            "dian_failure_rate",
            Severity::Critical,
            c.dian_failure_rate_percent,
            format!(
                "DIAN did not accept ≥ {} % of sends over 5 minutes",
                c.dian_failure_rate_percent
            ),
        ),
        Rule {
            clear: 1.0,
            for_ms: 0,
            ..rule(
                "anomaly",
                Severity::Info,
                1.0,
                "a metric left its usual band (see Anomalies)".into(),
            )
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: i64, calls: u64, failures: u64) -> Sample {
        Sample {
            now_ms: t * 1000,
            downstreams: vec![DownstreamSample {
                name: "alegra".into(),
                calls,
                failures,
                breaker: "CLOSED".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Twenty minutes of a downstream whose errors come in waves of different
    /// heights (a seeded walk), fed to `t` second by second; the samples.
    fn waves(t: &mut Telemetry) -> Vec<Sample> {
        let (mut calls, mut failures, mut seed) = (0u64, 0u64, 7u64);
        let mut fed = Vec::new();
        for s in 0..1200 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            calls += 20;
            // Every 100 s a wave of 40 s whose height (0–9 failures a second) the seed
            // picks.
            if s % 100 < 40 {
                failures += (s as u64 / 100 * 7 + seed % 3) % 10;
            }
            let sample = sample(s, calls, failures);
            t.tick(sample.clone());
            fed.push(sample);
        }
        fed
    }

    #[test]
    fn a_what_if_replay_counts_the_firings_the_rules_really_produce() {
        let alerts = AlertsConfig {
            for_secs: 5,
            cooldown_secs: 120,
            ..AlertsConfig::default()
        };
        let anomaly = AnomalyConfig::default();
        let mut live = Telemetry::new(alerts.clone(), anomaly.clone());
        let fed = waves(&mut live);
        let live_fired = live.alerts.fired().get("error_rate").copied();
        assert!(live_fired.is_some_and(|(f, _)| f >= 3), "{live_fired:?}");
        // Under the thresholds in force, the replay is what happened.
        let replay = live.replay(&alerts, &anomaly);
        assert_eq!(replay.window_secs, 1200);
        assert_eq!(replay.fired.get("error_rate").copied(), live_fired);
        assert_eq!(replay.anomalies, live.anomalies().count() as u64);
        // Under proposed ones, it is what an engine started with them would have done
        // with the same seconds: alert threshold, `for`, cooldown, anomaly z.
        let proposals = [
            (
                AlertsConfig {
                    error_rate_percent: 30.0,
                    ..alerts.clone()
                },
                anomaly.clone(),
            ),
            (
                AlertsConfig {
                    for_secs: 30,
                    ..alerts.clone()
                },
                anomaly.clone(),
            ),
            (
                AlertsConfig {
                    cooldown_secs: 0,
                    ..alerts.clone()
                },
                anomaly.clone(),
            ),
            (
                alerts.clone(),
                AnomalyConfig {
                    z_threshold: 6.0,
                    ..anomaly.clone()
                },
            ),
        ];
        let mut differs = 0;
        for (a, z) in proposals {
            let mut other = Telemetry::new(a.clone(), z.clone());
            for sample in &fed {
                other.tick(sample.clone());
            }
            let what_if = live.replay(&a, &z);
            assert_eq!(&what_if.fired, other.alerts.fired(), "{a:?} {z:?}");
            assert_eq!(what_if.anomalies, other.anomalies().count() as u64, "{z:?}");
            differs += usize::from(what_if != replay);
        }
        assert_eq!(differs, 4, "each proposal changes what would have fired");
    }

    #[test]
    fn an_error_burst_fires_an_alert_after_its_for_and_lowers_health() {
        let cfg = AlertsConfig {
            for_secs: 10,
            ..AlertsConfig::default()
        };
        let mut t = Telemetry::new(cfg.clone(), AnomalyConfig::default());
        let mut calls = 0;
        let mut failures = 0;
        for s in 0..60 {
            calls += 10;
            t.tick(sample(s, calls, failures));
        }
        assert_eq!(t.health().score, 100);
        let mut fired_at = None;
        for s in 60..90 {
            calls += 10;
            failures += 5;
            let out = t.tick(sample(s, calls, failures));
            if out
                .iter()
                .any(|x| matches!(x, Signal::Alert(n) if n.rule == "error_rate"))
            {
                fired_at.get_or_insert(s);
            }
        }
        // 5 failures a second against 600 calls a minute: 10 % at the 12th second of
        // errors (60/600, s = 71), pending for 10 s, then firing.
        assert_eq!(fired_at, Some(81));
        assert!(t.health().score < 50, "{:?}", t.health());
        assert!(
            t.anomalies().any(|a| a.metric == "error_rate:alegra"),
            "the burst is an anomaly too"
        );
        let v = t.view(90_000);
        assert_eq!(v.alerts[0].id, "error_rate/alegra");
        assert!(v.charts.iter().any(|c| c.name == "error_rate:alegra"));
        // Issue 17 point 6: a new process takes the alerts, their history and the
        // anomalies back as they were.
        let saved: history::SavedTelemetry =
            serde_json::from_str(&serde_json::to_string(&t.saved()).unwrap()).unwrap();
        let mut next = Telemetry::new(cfg, AnomalyConfig::default());
        next.restore(saved, 95_000);
        let w = next.view(95_000);
        assert_eq!(w.alerts, v.alerts);
        assert_eq!(w.notifications, v.notifications);
        assert_eq!(w.anomalies, v.anomalies);
        assert_eq!(w.open_anomalies, v.open_anomalies);
        assert!(w.open_anomalies > 0);
    }

    #[test]
    fn new_thresholds_apply_at_once_and_keep_the_alert_state() {
        let mut t = Telemetry::new(
            AlertsConfig {
                for_secs: 0,
                ..AlertsConfig::default()
            },
            AnomalyConfig::default(),
        );
        let (mut calls, mut failures) = (0, 0);
        for s in 0..5 {
            calls += 100;
            failures += 8; // 8 %
            t.tick(sample(s, calls, failures));
        }
        assert_eq!(t.alerts.firing(), 0);
        t.configure(
            AlertsConfig {
                for_secs: 0,
                error_rate_percent: 5.0,
                ..AlertsConfig::default()
            },
            AnomalyConfig::default(),
        );
        calls += 100;
        failures += 8;
        let out = t.tick(sample(5, calls, failures));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(t.alerts.firing(), 1);
    }

    /// Issue 17 point 6: a new process restored from the points the old one kept shows
    /// the hour as it was — every 1-hour chart bucket as before, moved on by the
    /// downtime — and the downtime as empty buckets, not as a line across it.
    #[test]
    fn charts_restored_from_kept_points_are_the_hour_as_it_was_and_the_downtime_a_gap() {
        let mut before = Telemetry::new(AlertsConfig::default(), AnomalyConfig::default());
        let (mut calls, mut failures, mut done, mut seed) = (0u64, 0u64, 0u64, 3u64);
        // 20 minutes from a second on a 10 s boundary; values that change every second.
        let t0 = 1_800_000_000i64;
        let mut kept = Vec::new();
        for i in 0..1200 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            calls += 20;
            failures += seed % 4;
            done += seed % 7;
            let p95 = 40.0 + (seed % 300) as f64;
            before.tick(Sample {
                now_ms: (t0 + i) * 1000,
                items_done: done,
                catalog_queue: seed % 50,
                downstreams: vec![DownstreamSample {
                    name: "quickbooks".into(),
                    calls,
                    failures,
                    p50_ms: Some(p95 / 2.0),
                    p95_ms: Some(p95),
                    p99_ms: Some(p95 * 1.5),
                    breaker: "CLOSED".into(),
                    ..Default::default()
                }],
                ..Default::default()
            });
            // Flushed every 10 s, as the engine does; the last block at the stop.
            if i % 10 == 0 {
                kept.extend(before.take_points(false));
            }
        }
        kept.extend(before.take_points(true));
        assert!(
            kept.len() <= 120 * 9,
            "one point per series per 10 s: {}",
            kept.len()
        );
        let last_s = t0 + 1199;
        let old = before.view(last_s * 1000);
        // Down for 5 minutes: the new process starts 300 s after the last second.
        let downtime = 300;
        let now_ms = (last_s + 1 + downtime) * 1000;
        let mut after = Telemetry::new(AlertsConfig::default(), AnomalyConfig::default());
        after.restore_series(&kept, now_ms);
        let new = after.view(now_ms);
        let shift = (downtime / 30) as usize;
        let mut compared = 0;
        for c in old
            .charts
            .iter()
            .filter(|c| c.h1.iter().any(Option::is_some))
        {
            let r = new
                .charts
                .iter()
                .find(|x| x.name == c.name)
                .unwrap_or_else(|| panic!("{} restored", c.name));
            for (i, (was, is)) in c.h1[shift..].iter().zip(&r.h1).enumerate() {
                match (was, is) {
                    (Some(a), Some(b)) => {
                        assert!((a - b).abs() < 1e-9, "{} [{i}]: {a} → {b}", c.name)
                    }
                    (a, b) => assert_eq!(a, b, "{} [{i}]", c.name),
                }
            }
            assert!(
                r.h1[120 - shift..].iter().all(Option::is_none),
                "{}: the downtime is a gap: {:?}",
                c.name,
                &r.h1[120 - shift..]
            );
            assert!(r.m1.iter().all(Option::is_none), "{}", c.name);
            compared += 1;
        }
        assert_eq!(compared, 7, "items, invoices, 3 latencies, errors, queue");
        // The next tick carries on from there.
        after.tick(Sample {
            now_ms,
            ..Default::default()
        });
        assert_eq!(
            after.view(now_ms).charts[0].m1.last().copied().flatten(),
            Some(0.0)
        );
    }

    /// Issue 15 point 11: a full sync's deep queue that drains never alerts; a queue
    /// that stops draining alerts once it has not moved for `queue_drain_secs`.
    #[test]
    fn a_deep_queue_alerts_only_when_it_is_not_draining() {
        let mut t = Telemetry::new(
            AlertsConfig {
                for_secs: 30,
                queue_drain_secs: 120.0,
                ..AlertsConfig::default()
            },
            AnomalyConfig::default(),
        );
        let queue_alerts = |out: &[Signal]| {
            out.iter()
                .filter(|x| matches!(x, Signal::Alert(n) if n.rule == "queue_depth"))
                .count()
        };
        // A full sync of 3,000 products: the queue holds 400 and 8 a second leave it.
        let mut done = 0;
        for s in 0..375 {
            done += 8;
            let queue = 3000u64.saturating_sub(done).min(400);
            let out = t.tick(Sample {
                now_ms: s * 1000,
                items_done: done,
                catalog_queue: queue,
                ..Default::default()
            });
            assert_eq!(queue_alerts(&out), 0, "at {s} s with {queue} queued");
        }
        // Then nothing leaves a queue of 400: not draining.
        let mut fired = None;
        for s in 375..1000 {
            let out = t.tick(Sample {
                now_ms: s * 1000,
                items_done: done,
                catalog_queue: 400,
                ..Default::default()
            });
            if queue_alerts(&out) > 0 {
                fired = Some(s);
                break;
            }
        }
        // At the last minute's rate it empties in 400 × 60 / (8 × (60 − x)) s, beyond
        // 120 s from x = 35 s after it stopped; then its `for` of 30 s.
        let fired = fired.expect("a stopped queue alerts");
        assert!((375 + 63..=375 + 67).contains(&fired), "fired at {fired}");
    }

    /// Issue 15 point 10: an alert resolved because its series stopped (no calls) says
    /// so, instead of showing its last value above the threshold as what resolved it.
    #[test]
    fn an_alert_whose_series_stops_resolves_as_no_data() {
        let mut t = Telemetry::new(
            AlertsConfig {
                for_secs: 0,
                cooldown_secs: 0,
                ..AlertsConfig::default()
            },
            AnomalyConfig::default(),
        );
        let slow = |s: i64, p95: Option<f64>| Sample {
            now_ms: s * 1000,
            downstreams: vec![DownstreamSample {
                name: "quickbooks".into(),
                p95_ms: p95,
                breaker: "CLOSED".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        t.tick(slow(0, Some(6021.0)));
        assert_eq!(t.alerts.firing(), 1);
        let out = t.tick(slow(1, None));
        let resolved = out
            .iter()
            .find_map(|x| match x {
                Signal::Alert(n) if n.phase == alerts::Phase::Resolved => Some(n.clone()),
                _ => None,
            })
            .expect("resolved");
        assert!(resolved.no_data, "{resolved:?}");
        assert!(
            resolved.message.contains("no data") && !resolved.message.contains("(value 6021"),
            "{}",
            resolved.message
        );
        // A series that comes back below the threshold resolves with that value.
        t.tick(slow(2, Some(6021.0)));
        let out = t.tick(slow(3, Some(40.0)));
        let resolved = out
            .iter()
            .find_map(|x| match x {
                Signal::Alert(n) if n.phase == alerts::Phase::Resolved => Some(n.clone()),
                _ => None,
            })
            .expect("resolved again");
        assert!(!resolved.no_data);
        assert_eq!(resolved.value, 40.0);
    }
}
