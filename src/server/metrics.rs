//! `GET /metrics`: the engine's snapshot in the Prometheus text format.

use crate::protocol::Snapshot;
use crate::telemetry::prom::{Exposition, Kind};

#[expect(
    clippy::too_many_lines,
    reason = "the Prometheus exposition, family by family"
)]
pub fn render(s: &Snapshot) -> String {
    let mut e = Exposition::default();
    let c = &s.catalog;

    e.one(
        "syncctl_catalog_jobs_completed_total",
        Kind::Counter,
        "Catalog jobs finished (items synced or found unchanged).",
        c.completed as f64,
    );
    e.one(
        "syncctl_catalog_job_errors_total",
        Kind::Counter,
        "Catalog job attempts that ended in an error.",
        c.errors as f64,
    );
    e.family(
        "syncctl_webhooks_total",
        Kind::Counter,
        "Stripe webhooks received, by result.",
    );
    for (result, n) in [
        ("accepted", c.webhooks_accepted),
        ("duplicate", c.webhooks_duplicate),
        ("ignored", c.webhooks_ignored),
        ("rejected", c.webhooks_rejected),
    ] {
        e.with(&[("result", result)], n as f64);
    }
    e.family(
        "syncctl_queue_depth",
        Kind::Gauge,
        "Work waiting, by queue.",
    )
    .with(&[("queue", "catalog")], c.counts.queued as f64);
    if s.compliance.enabled {
        let waiting = s.compliance.counts.waiting();
        e.with(&[("queue", "dian")], waiting as f64);
    }
    e.family(
        "syncctl_workers",
        Kind::Gauge,
        "Catalog workers: target of the auto-scaler and bounds.",
    );
    for (kind, n) in [
        ("target", c.workers_target),
        ("min", c.workers_min),
        ("max", c.workers_max),
    ] {
        e.with(&[("pipeline", "catalog"), ("kind", kind)], n as f64);
    }
    e.family(
        "syncctl_in_flight",
        Kind::Gauge,
        "Jobs or sends in progress, by pipeline.",
    )
    .with(&[("pipeline", "catalog")], c.in_flight as f64);
    if s.compliance.enabled {
        e.with(&[("pipeline", "compliance")], s.compliance.in_flight as f64);
    }
    e.family(
        "syncctl_pipeline_paused",
        Kind::Gauge,
        "1 when the pipeline is paused by an operator.",
    )
    .with(&[("pipeline", "catalog")], f64::from(u8::from(c.paused)));
    if s.compliance.enabled {
        e.with(
            &[("pipeline", "compliance")],
            f64::from(u8::from(s.compliance.paused)),
        );
        e.family(
            "syncctl_dian_invoices",
            Kind::Gauge,
            "Invoices in the compliance store, by state.",
        );
        for (st, n) in &s.compliance.counts.by_status {
            e.with(&[("status", st.name())], *n as f64);
        }
        e.one(
            "syncctl_dian_sends_total",
            Kind::Counter,
            "Transmissions to DIAN through Alegra.",
            s.compliance.sends as f64,
        );
        e.one(
            "syncctl_dian_validated_total",
            Kind::Counter,
            "Invoices DIAN accepted.",
            s.compliance.validated as f64,
        );
    }

    let ds = &s.downstreams;
    let counter = |e: &mut Exposition,
                   name: &str,
                   help: &str,
                   f: &dyn Fn(&crate::protocol::DownstreamView) -> u64| {
        e.family(name, Kind::Counter, help);
        for d in ds {
            e.with(&[("service", &d.name)], f(d) as f64);
        }
    };
    counter(
        &mut e,
        "syncctl_downstream_calls_total",
        "Requests sent to a downstream.",
        &|d| d.calls,
    );
    counter(
        &mut e,
        "syncctl_downstream_failures_total",
        "Requests that failed (transport errors and 5xx).",
        &|d| d.failures,
    );
    counter(
        &mut e,
        "syncctl_downstream_timeouts_total",
        "Requests that timed out.",
        &|d| d.timeouts,
    );
    counter(
        &mut e,
        "syncctl_downstream_throttled_total",
        "Requests answered 429.",
        &|d| d.throttled,
    );
    counter(
        &mut e,
        "syncctl_downstream_rejected_total",
        "Calls the open circuit refused without sending.",
        &|d| d.rejected,
    );
    counter(
        &mut e,
        "syncctl_downstream_retries_total",
        "Retries made within the retry budget.",
        &|d| d.retries,
    );
    e.family(
        "syncctl_circuit_state",
        Kind::Gauge,
        "1 for the circuit's current state, 0 for the others.",
    );
    for d in ds {
        for st in [
            "CLOSED",
            "OPEN",
            "HALF_OPEN",
            "FORCED_OPEN",
            "DISABLED",
            "METRICS_ONLY",
        ] {
            let on = d.breaker.state.name() == st;
            e.with(
                &[("service", &d.name), ("state", st)],
                f64::from(u8::from(on)),
            );
        }
    }
    e.family(
        "syncctl_rate_limit_per_minute",
        Kind::Gauge,
        "Requests per minute the limiter allows now.",
    );
    for d in ds {
        e.with(&[("service", &d.name)], d.limiter.effective_per_min as f64);
    }

    e.family(
        "syncctl_operation_duration_seconds",
        Kind::Summary,
        "Duration of operations since start (HDR histogram).",
    );
    for op in &s.profile {
        let l = [("operation", op.name.as_str())];
        for (q, v) in [
            ("0.5", op.summary.p50_ms),
            ("0.95", op.summary.p95_ms),
            ("0.99", op.summary.p99_ms),
        ] {
            e.with(&[l[0], ("quantile", q)], v / 1000.0);
        }
        e.sample(
            "syncctl_operation_duration_seconds_sum",
            &l,
            op.summary.sum_ms / 1000.0,
        );
        e.sample(
            "syncctl_operation_duration_seconds_count",
            &l,
            op.summary.count as f64,
        );
    }

    e.family(
        "syncctl_operation_duration_max_seconds",
        Kind::Gauge,
        "Longest duration of an operation since start.",
    );
    for op in &s.profile {
        e.with(
            &[("operation", op.name.as_str())],
            op.summary.max_ms / 1000.0,
        );
    }
    let t = &s.telemetry;
    e.one(
        "syncctl_health_score",
        Kind::Gauge,
        "Health score 0-100 (the minimum of the components).",
        t.health.score as f64,
    );
    e.family(
        "syncctl_alerts",
        Kind::Gauge,
        "Alerts pending or firing, by severity and state.",
    );
    for sev in ["info", "warning", "critical"] {
        for phase in ["pending", "firing"] {
            let n = t
                .alerts
                .iter()
                .filter(|a| a.severity.to_string() == sev && a.phase.to_string() == phase)
                .count();
            e.with(&[("severity", sev), ("state", phase)], n as f64);
        }
    }
    e.one(
        "syncctl_anomalies_open",
        Kind::Gauge,
        "Metrics outside their usual band now.",
        t.open_anomalies as f64,
    );
    e.family(
        "syncctl_cache_lookups_total",
        Kind::Counter,
        "QuickBooks lookup cache, by result.",
    );
    e.with(&[("result", "hit")], t.cache.hits as f64);
    e.with(&[("result", "miss")], t.cache.misses as f64);
    e.one(
        "syncctl_cache_evictions_total",
        Kind::Counter,
        "Entries dropped for room (LRU).",
        t.cache.evictions as f64,
    );
    e.one(
        "syncctl_cache_invalidations_total",
        Kind::Counter,
        "Entries dropped by an operator's invalidation.",
        t.cache.invalidations as f64,
    );
    e.one(
        "syncctl_cache_entries",
        Kind::Gauge,
        "Entries in the lookup cache.",
        t.cache.entries as f64,
    );
    e.finish()
}
