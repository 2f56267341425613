//! `GET /metrics`: the engine's snapshot in the OpenMetrics text format, written by the
//! `prometheus-client` crate. Latencies are histograms on fixed buckets
//! ([`LATENCY_BUCKETS_S`]), so that the buckets of several engines add up in a query
//! (percentiles of summaries do not).

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::protocol::{LATENCY_BUCKETS_S, Snapshot, Summary};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A sample's labels.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One sample's value as it is encoded.
enum Values {
    Counter(u64),
    Gauge(f64),
    /// A latency: sum in seconds, count, and (upper bound, cumulative count) buckets.
    Histogram {
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
}

/// One family: its descriptor and every company's samples.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: MetricType,
    samples: Vec<(Labels<'a>, Values)>,
}

/// The families of every company's snapshot, gathered before any is written (a family
/// is written once, with the samples of all companies).
#[derive(Default)]
struct Families<'a> {
    /// The company whose snapshot is being read: its id labels every sample.
    company: &'a str,
    list: Vec<Family<'a>>,
}

/// Adds one family's samples (each labelled with the company). A counter is named
/// without `_total` here; the format adds it.
fn family<'a>(
    out: &mut Families<'a>,
    name: &'a str,
    help: &'a str,
    samples: Vec<(Labels<'a>, Values)>,
) -> std::fmt::Result {
    let kind = match samples.first() {
        Some((_, Values::Counter(_))) => MetricType::Counter,
        Some((_, Values::Histogram { .. })) => MetricType::Histogram,
        // No sample (yet): the name says which (only latencies are histograms).
        None if name.ends_with("_duration_seconds") => MetricType::Histogram,
        _ => MetricType::Gauge,
    };
    let name = name.strip_suffix("_total").unwrap_or(name);
    let company = out.company;
    let labelled = samples.into_iter().map(|(mut labels, v)| {
        labels.insert(0, ("company", company));
        (labels, v)
    });
    match out.list.iter_mut().find(|f| f.name == name) {
        Some(f) => {
            if f.samples.is_empty() {
                f.kind = kind;
            }
            f.samples.extend(labelled);
        }
        None => out.list.push(Family {
            name,
            help,
            kind,
            samples: labelled.collect(),
        }),
    }
    Ok(())
}

/// Writes one family: its descriptor, then each sample.
fn write_family(enc: &mut DescriptorEncoder<'_>, f: &Family<'_>) -> std::fmt::Result {
    let mut metric = enc.encode_descriptor(f.name, f.help, None, f.kind)?;
    for (labels, v) in &f.samples {
        let mut sample = metric.encode_family(labels)?;
        match v {
            Values::Counter(v) => ConstCounter::new(*v).encode(sample)?,
            Values::Gauge(v) => ConstGauge::new(*v).encode(sample)?,
            Values::Histogram {
                sum,
                count,
                buckets,
            } => sample.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?,
        }
    }
    Ok(())
}

fn counter<'a>(out: &mut Families<'a>, name: &'a str, help: &'a str, v: u64) -> std::fmt::Result {
    family(out, name, help, vec![(vec![], Values::Counter(v))])
}

fn gauge<'a>(out: &mut Families<'a>, name: &'a str, help: &'a str, v: f64) -> std::fmt::Result {
    family(out, name, help, vec![(vec![], Values::Gauge(v))])
}

fn flag(on: bool) -> f64 {
    f64::from(u8::from(on))
}

/// A latency's buckets as the encoder takes them: (upper bound in seconds, how many
/// fell in it), the last one +Inf.
fn buckets(s: &Summary) -> Vec<(f64, u64)> {
    LATENCY_BUCKETS_S
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(s.buckets)
        .collect()
}

/// The companies' snapshots (id, snapshot), as the registry's one collector.
#[derive(Debug)]
struct Exposition(Vec<(String, std::sync::Arc<Snapshot>)>);

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut out = Families::default();
        for (company, snap) in &self.0 {
            out.company = company;
            encode(snap, &mut out)?;
        }
        for f in &out.list {
            write_family(&mut enc, f)?;
        }
        Ok(())
    }
}

/// The exposition of the companies' snapshots (id, snapshot): every series labelled
/// `company="<id>"`.
pub fn render(snaps: &[(String, std::sync::Arc<Snapshot>)]) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(snaps.to_vec())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        // Writing to a String does not fail; a collector's error would.
        let _ = write!(out, "# the exposition failed: {e}\n# EOF\n");
    }
    out
}

#[expect(clippy::too_many_lines, reason = "the exposition, family by family")]
fn encode<'a>(s: &'a Snapshot, enc: &mut Families<'a>) -> std::fmt::Result {
    use Values::{Counter, Gauge};
    let c = &s.catalog;
    counter(
        enc,
        "syncctl_catalog_jobs_completed_total",
        "Catalog jobs finished (items synced or found unchanged).",
        c.completed,
    )?;
    counter(
        enc,
        "syncctl_catalog_job_errors_total",
        "Catalog job attempts that ended in an error.",
        c.errors,
    )?;
    family(
        enc,
        "syncctl_webhooks_total",
        "Stripe webhooks received, by result.",
        [
            ("accepted", c.webhooks_accepted),
            ("duplicate", c.webhooks_duplicate),
            ("ignored", c.webhooks_ignored),
            ("rejected", c.webhooks_rejected),
        ]
        .into_iter()
        .map(|(result, n)| (vec![("result", result)], Counter(n)))
        .collect(),
    )?;
    let mut queues = vec![(vec![("queue", "catalog")], Gauge(c.counts.queued as f64))];
    let mut in_flight = vec![(vec![("pipeline", "catalog")], Gauge(c.in_flight as f64))];
    let mut paused = vec![(vec![("pipeline", "catalog")], Gauge(flag(c.paused)))];
    if s.compliance.enabled {
        let waiting = s.compliance.counts.waiting();
        queues.push((vec![("queue", "dian")], Gauge(waiting as f64)));
        in_flight.push((
            vec![("pipeline", "compliance")],
            Gauge(s.compliance.in_flight as f64),
        ));
        paused.push((
            vec![("pipeline", "compliance")],
            Gauge(flag(s.compliance.paused)),
        ));
    }
    family(
        enc,
        "syncctl_queue_depth",
        "Work waiting, by queue.",
        queues,
    )?;
    family(
        enc,
        "syncctl_workers",
        "Catalog workers: target of the auto-scaler and bounds.",
        [
            ("target", c.workers_target),
            ("min", c.workers_min),
            ("max", c.workers_max),
        ]
        .into_iter()
        .map(|(kind, n)| {
            (
                vec![("pipeline", "catalog"), ("kind", kind)],
                Gauge(n as f64),
            )
        })
        .collect(),
    )?;
    family(
        enc,
        "syncctl_in_flight",
        "Jobs or sends in progress, by pipeline.",
        in_flight,
    )?;
    family(
        enc,
        "syncctl_pipeline_paused",
        "1 when the pipeline is paused by an operator.",
        paused,
    )?;
    if s.compliance.enabled {
        family(
            enc,
            "syncctl_dian_invoices",
            "Invoices in the compliance store, by state.",
            s.compliance
                .counts
                .by_status
                .iter()
                .map(|(st, n)| (vec![("status", st.name())], Gauge(*n as f64)))
                .collect(),
        )?;
        counter(
            enc,
            "syncctl_dian_sends_total",
            "Transmissions to DIAN through Alegra.",
            s.compliance.sends,
        )?;
        counter(
            enc,
            "syncctl_dian_validated_total",
            "Invoices DIAN accepted.",
            s.compliance.validated,
        )?;
    }

    let ds = &s.downstreams;
    let by_service = |f: &dyn Fn(&crate::protocol::DownstreamView) -> Values| {
        ds.iter()
            .map(|d| (vec![("service", d.name.as_str())], f(d)))
            .collect::<Vec<_>>()
    };
    for (name, help, f) in [
        (
            "syncctl_downstream_calls_total",
            "Requests sent to a downstream.",
            (|d| d.calls) as fn(&crate::protocol::DownstreamView) -> u64,
        ),
        (
            "syncctl_downstream_failures_total",
            "Requests that failed (transport errors and 5xx).",
            |d| d.failures,
        ),
        (
            "syncctl_downstream_timeouts_total",
            "Requests that timed out.",
            |d| d.timeouts,
        ),
        (
            "syncctl_downstream_throttled_total",
            "Requests answered 429.",
            |d| d.throttled,
        ),
        (
            "syncctl_downstream_rejected_total",
            "Calls the open circuit refused without sending.",
            |d| d.rejected,
        ),
        (
            "syncctl_downstream_retries_total",
            "Retries made within the retry budget.",
            |d| d.retries,
        ),
    ] {
        family(enc, name, help, by_service(&|d| Counter(f(d))))?;
    }
    let mut states = Vec::new();
    for d in ds {
        for st in [
            "CLOSED",
            "OPEN",
            "HALF_OPEN",
            "FORCED_OPEN",
            "DISABLED",
            "METRICS_ONLY",
        ] {
            states.push((
                vec![("service", d.name.as_str()), ("state", st)],
                Gauge(flag(d.breaker.state.name() == st)),
            ));
        }
    }
    family(
        enc,
        "syncctl_circuit_state",
        "1 for the circuit's current state, 0 for the others.",
        states,
    )?;
    family(
        enc,
        "syncctl_rate_limit_per_minute",
        "Requests per minute the limiter allows now.",
        by_service(&|d| Gauge(d.limiter.effective_per_min as f64)),
    )?;

    family(
        enc,
        "syncctl_operation_duration_seconds",
        "Duration of operations since start.",
        s.profile
            .iter()
            .map(|op| {
                (
                    vec![("operation", op.name.as_str())],
                    Values::Histogram {
                        sum: op.summary.sum_ms / 1000.0,
                        count: op.summary.count,
                        buckets: buckets(&op.summary),
                    },
                )
            })
            .collect(),
    )?;
    family(
        enc,
        "syncctl_operation_duration_max_seconds",
        "Longest duration of an operation since start.",
        s.profile
            .iter()
            .map(|op| {
                (
                    vec![("operation", op.name.as_str())],
                    Gauge(op.summary.max_ms / 1000.0),
                )
            })
            .collect(),
    )?;
    let t = &s.telemetry;
    gauge(
        enc,
        "syncctl_health_score",
        "Health score 0-100 (the minimum of the components).",
        t.health.score as f64,
    )?;
    let mut alerts = Vec::new();
    for sev in ["info", "warning", "critical"] {
        for phase in ["pending", "firing"] {
            let n = t
                .alerts
                .iter()
                .filter(|a| a.severity.to_string() == sev && a.phase.to_string() == phase)
                .count();
            alerts.push((vec![("severity", sev), ("state", phase)], Gauge(n as f64)));
        }
    }
    family(
        enc,
        "syncctl_alerts",
        "Alerts pending or firing, by severity and state.",
        alerts,
    )?;
    gauge(
        enc,
        "syncctl_anomalies_open",
        "Metrics outside their usual band now.",
        t.open_anomalies as f64,
    )?;
    family(
        enc,
        "syncctl_cache_lookups_total",
        "QuickBooks lookup cache, by result.",
        vec![
            (vec![("result", "hit")], Counter(t.cache.hits)),
            (vec![("result", "miss")], Counter(t.cache.misses)),
        ],
    )?;
    counter(
        enc,
        "syncctl_cache_evictions_total",
        "Entries dropped for room (LRU).",
        t.cache.evictions,
    )?;
    counter(
        enc,
        "syncctl_cache_invalidations_total",
        "Entries dropped by an operator's invalidation.",
        t.cache.invalidations,
    )?;
    gauge(
        enc,
        "syncctl_cache_entries",
        "Entries in the lookup cache.",
        t.cache.entries as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Operation, Snapshot};

    #[test]
    fn latencies_are_cumulative_histograms_and_counters_end_in_total() {
        let mut snap = Snapshot::default();
        let mut summary = Summary {
            count: 4,
            sum_ms: 1_503.0,
            max_ms: 1_500.0,
            ..Summary::default()
        };
        // 1 ms, 1 ms, 1 ms (the first bound holds values equal to it), 1.5 s.
        summary.buckets[Summary::bucket_of(0.001)] += 3;
        summary.buckets[Summary::bucket_of(1.5)] += 1;
        snap.profile.push(Operation {
            name: "http.quickbooks".into(),
            summary,
        });
        snap.catalog.completed = 20;
        let text = render(&[("co1".into(), std::sync::Arc::new(snap))]);
        assert!(
            text.contains("syncctl_catalog_jobs_completed_total{company=\"co1\"} 20\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE syncctl_catalog_jobs_completed counter\n"),
            "{text}"
        );
        let bucket = |le: &str| {
            let head = format!(
                "syncctl_operation_duration_seconds_bucket{{le=\"{le}\",company=\"co1\",operation=\"http.quickbooks\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(head.as_str()))
                .unwrap_or_else(|| panic!("no {le} bucket: {text}"))
                .to_owned()
        };
        assert_eq!(bucket("0.001"), "3");
        assert_eq!(bucket("1.0"), "3");
        assert_eq!(bucket("2.5"), "4");
        assert_eq!(bucket("+Inf"), "4");
        assert!(
            text.contains(
                "syncctl_operation_duration_seconds_sum{company=\"co1\",operation=\"http.quickbooks\"} 1.503\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("{}"), "{text}");
    }
}
