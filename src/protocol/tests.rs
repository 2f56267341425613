//! Everything that crosses the boundary survives JSON unchanged.

use std::time::Duration;

use super::*;

fn record() -> InvoiceRecord {
    InvoiceRecord {
        stripe_id: "in_1".into(),
        number: "SETP990000001".into(),
        kind: "invoice".into(),
        status: Status::Fallback,
        attempts: 2,
        next_at_ms: Some(1_000),
        sending: true,
        alegra_id: Some("77".into()),
        cufe: Some("cufe".into()),
        issue_date: "2026-11-22".into(),
        buyer_id: "900123456".into(),
        buyer_name: "Buyer SAS".into(),
        total: 11_900,
        invoice: LocalInvoice::example("in_1", "invoice"),
        last_code: Some("EPR503".into()),
        last_message: Some("DIAN did not answer".into()),
        contingency: true,
        deadline_at_ms: Some(9_000),
        created_at_ms: 1,
        updated_at_ms: 2,
        validated_at_ms: None,
    }
}

fn downstream() -> DownstreamView {
    DownstreamView {
        name: "quickbooks".into(),
        breaker: BreakerView {
            name: "quickbooks".into(),
            state: State::HalfOpen,
            calls: 10,
            failures: 4,
            slow_calls: 1,
            failure_rate: Some(40.0),
            slow_call_rate: None,
            failure_threshold: 50.0,
            slow_call_threshold: 100.0,
            minimum_calls: 10,
            rejections: 3,
            half_open_permits: 3,
            half_open_in_use: 1,
            until_half_open_ms: Some(1_500),
            open_wait_ms: 15_000,
            last_transition: Some(TransitionView {
                from: State::Open,
                to: State::HalfOpen,
                at_ms: 5,
                reason: "wait elapsed".into(),
            }),
        },
        limiter: LimiterView {
            rate_per_min: 500,
            effective_per_min: 250,
            max_concurrent: 10,
            effective_concurrent: 5,
            in_flight: 2,
            paused_for_ms: 0,
            throttles: 1,
            rate_waits: 2,
            granted: 99,
            ceiling_per_min: Some(300),
            shared: None,
        },
        calls: 100,
        successes: 90,
        failures: 8,
        timeouts: 2,
        ignored: 0,
        throttled: 1,
        rejected: 3,
        retries: 4,
        budget_exhausted: 0,
        budget_available: 10,
        p50_ms: Some(12.5),
        p95_ms: Some(80.0),
        p99_ms: None,
        consecutive_failures: 1,
        rejection_p99_us: Some(3.0),
    }
}

fn telemetry() -> TelemetryView {
    TelemetryView {
        health: Health {
            score: 40,
            level: Level::Poor,
            status: "degraded",
            checks: vec![Check {
                name: "quickbooks".into(),
                score: 40,
                level: Level::Poor,
                notes: vec!["error rate 8.0 %".into()],
            }],
            warnings: vec!["w".into()],
            errors: vec!["e".into()],
            recommendations: vec![
                Recommendation::new("compliance", "r").with_action(Command::RetryFailed {}),
                Recommendation::new("cache", "raise cache.ttl_secs"),
            ],
            problems: vec![Problem {
                component: "quickbooks".into(),
                reason: "credentials refused".into(),
                fix: "reconnect".into(),
            }],
        },
        alerts: vec![Alert {
            id: "error_rate/quickbooks".into(),
            rule: "error_rate".into(),
            label: "quickbooks".into(),
            severity: Severity::Critical,
            phase: Phase::Firing,
            since_ms: 7,
            value: 12.0,
            threshold: 10.0,
            summary: "error rate above 10 %".into(),
            acked_by: Some("ana".into()),
            silenced_until_ms: None,
        }],
        notifications: vec![Notification {
            id: "error_rate/quickbooks".into(),
            rule: "error_rate".into(),
            label: "quickbooks".into(),
            severity: Severity::Warning,
            phase: Phase::Resolved,
            at_ms: 8,
            value: 1.0,
            threshold: 10.0,
            message: "resolved".into(),
            quiet: Some("silenced".into()),
            no_data: false,
        }],
        anomalies: vec![Anomaly {
            metric: "latency".into(),
            value: 900.0,
            baseline: 100.0,
            score: 5.5,
            method: Method::Mad,
            at_ms: 9,
            ended_ms: None,
        }],
        open_anomalies: 1,
        silences: vec![Silence {
            matcher: "error_rate".into(),
            until_ms: 10,
            by: "ana".into(),
        }],
        charts: vec![Chart {
            name: "items_per_sec".into(),
            m1: vec![Some(1.0), None],
            m5: vec![Some(2.5)],
            h1: vec![],
        }],
        thresholds: vec![("alerts.error_rate_percent".into(), 10.0)],
        expiring: vec![super::ExpiringThreshold {
            name: "alerts.error_rate_percent".into(),
            value: 10.0,
            back_to: 12.0,
            until_ms: 1_795_000_000_000,
            by: "ana".into(),
        }],
        cache: CacheStats {
            entries: 3,
            capacity: 10,
            hits: 5,
            misses: 2,
            cold_misses: 1,
            evictions: 0,
            expirations: 1,
            invalidations: 0,
        },
        items_per_sec: 4.5,
        invoices_per_sec: 0.5,
    }
}

/// A snapshot with every part filled (no field left at a default that could hide a
/// field lost on the way).
#[expect(
    clippy::too_many_lines,
    reason = "one fully populated snapshot, field by field"
)]
fn populated() -> Snapshot {
    let rec = record();
    Snapshot {
        mode: Mode::Sandbox,
        server_addr: "127.0.0.1:9870".into(),
        catalog: CatalogView {
            paused: true,
            counts: CatalogCounts {
                products_seen: 10,
                synced: 5,
                queued: 3,
                in_flight: 1,
                failed: 1,
                rejected: 0,
                oldest_queued_ms: Some(4),
            },
            full_sync: FullSyncState {
                after: Some("prod_x".into()),
                pages: 2,
                listed: 200,
                done: false,
            },
            workers: 4,
            in_flight: 1,
            workers_busy: 1,
            per_second: vec![1, 2, 3],
            completed: 6,
            errors: 1,
            webhooks_accepted: 2,
            webhooks_duplicate: 1,
            webhooks_ignored: 1,
            webhooks_rejected: 0,
            last_reconcile_ms: Some(3),
            workers_target: 6,
            workers_min: 2,
            workers_max: 16,
            autoscale: true,
            autoscale_status: "latency rising".into(),
            decisions: vec![ScaleDecision {
                at_ms: 2,
                from: 4,
                to: 6,
                reason: "backlog".into(),
            }],
            claim_batch: 8,
            page_size: 100,
            deferred: 2,
        },
        recent_errors: vec![ErrorLine {
            at_ms: 1,
            entity: "prod_1".into(),
            message: "quickbooks 400".into(),
        }],
        audit: vec![AuditEntry {
            id: 1,
            at_ms: 2,
            kind: "operator".into(),
            entity: "catalog".into(),
            actor: "ana@10.0.0.7".into(),
            message: "paused".into(),
            trace_id: Some("00-abc-def-01".into()),
        }],
        token_refreshes: 3,
        draining: true,
        downstreams: vec![downstream()],
        compliance: ComplianceView {
            enabled: true,
            paused: false,
            counts: ComplianceCounts {
                by_status: vec![(Status::Pending, 2), (Status::Validated, 5)],
                total: 7,
                oldest_active_ms: Some(1),
                earliest_deadline_ms: Some(9),
            },
            invoices: vec![rec.clone()],
            sends: 9,
            validated: 5,
            in_flight: 1,
            window: RateWindow {
                limit: 60,
                remaining: 12,
                reset_secs: 30,
                seen_at_ms: 1_764_600_000_000,
            },
            contingency: ContingencyView {
                phase: "OUTAGE",
                failures: 4,
                probes: 4,
                probe_interval_ms: 20_000,
                since_ms: Some(1),
                confirmed_at_ms: Some(2),
                next_probe_ms: Some(3),
                restored_at_ms: None,
                evidence: vec![Evidence {
                    at_ms: 1,
                    code: "EPR503".into(),
                    message: "timeout".into(),
                }],
            },
            now_ms: 10,
            numbering_hold: Some("range not yet read".into()),
        },
        telemetry: telemetry(),
        profile: vec![Operation {
            name: "quickbooks.query".into(),
            summary: Summary {
                count: 3,
                sum_ms: 30.0,
                p50_ms: 10.0,
                p95_ms: 12.0,
                p99_ms: 12.5,
                max_ms: 13.0,
                buckets: [0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
        }],
        config_file: Some("/etc/syncctl.toml".into()),
        reconciliation: crate::protocol::ReconciliationView {
            ready: true,
            status: "live".into(),
            products: 3,
            items: 3,
            in_sync: 1,
            unsyncable: 1,
            missing: crate::protocol::Tally {
                count: 1,
                amount: 9.5,
                amounts: vec![crate::protocol::Money {
                    currency: "USD".into(),
                    amount: 9.5,
                }],
            },
            orphans: crate::protocol::Tally {
                count: 1,
                amount: 2.0,
                amounts: vec![crate::protocol::Money {
                    currency: "COP".into(),
                    amount: 2.0,
                }],
            },
            drifted: crate::protocol::Tally {
                count: 1,
                amount: 1.25,
                amounts: vec![crate::protocol::Money {
                    currency: "USD".into(),
                    amount: 1.25,
                }],
            },
            drift_name: 1,
            drift_price: 1,
            drift_active: 0,
            refreshed_ms: Some(5),
            refreshes: 2,
            items_changed: 3,
            events_read: 4,
            stripe_pages: 1,
            rows: vec![crate::protocol::Discrepancy {
                kind: crate::protocol::DiscrepancyKind::Drift,
                product_id: Some("prod_1".into()),
                item_id: Some("7".into()),
                fields: vec!["name".into(), "price".into()],
                stripe: Some(crate::protocol::Side {
                    name: "Café".into(),
                    price: Some(10.0),
                    active: true,
                    currency: Some("USD".into()),
                }),
                quickbooks: Some(crate::protocol::Side {
                    name: "Cafe".into(),
                    price: Some(8.75),
                    active: true,
                    currency: None,
                }),
                amount: 1.25,
                currency: "USD".into(),
                since_ms: 4,
            }],
        },
    }
}

#[test]
fn a_populated_snapshot_round_trips_through_json() {
    let snap = populated();
    let json = serde_json::to_string(&snap).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
    // The default one too (empty words, no focus).
    let json = serde_json::to_string(&Snapshot::default()).unwrap();
    assert_eq!(
        serde_json::from_str::<Snapshot>(&json).unwrap(),
        Snapshot::default()
    );
}

#[test]
fn a_word_outside_its_set_is_refused() {
    let mut v = serde_json::to_value(populated()).unwrap();
    v["compliance"]["contingency"]["phase"] = "MAYBE".into();
    assert!(serde_json::from_value::<Snapshot>(v).is_err());
}

#[test]
fn events_thresholds_and_fault_patches_round_trip() {
    let events = [
        EngineEvent::Audit(populated().audit[0].clone()),
        EngineEvent::Breaker {
            service: "alegra".into(),
            transition: Transition {
                from: State::Closed,
                to: State::Open,
                at: Duration::from_millis(1_500),
                at_ms: 3,
                reason: "failure rate 60 % ≥ 50 %".into(),
            },
        },
        EngineEvent::Alert(populated().telemetry.notifications[0].clone()),
        EngineEvent::Anomaly(populated().telemetry.anomalies[0].clone()),
    ];
    for e in events {
        let json = serde_json::to_value(&e).unwrap();
        let back: EngineEvent = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
    }

    for t in THRESHOLDS {
        let back: Threshold = serde_json::from_str(&serde_json::to_string(t).unwrap()).unwrap();
        assert_eq!(&back, t);
    }
    assert!(serde_json::from_str::<Threshold>(r#"{"name":"nope"}"#).is_err());

    let patch = FaultPatch {
        service: "quickbooks".into(),
        outage: Some(true),
        latency_distribution: Some(Distribution::LongTail),
        ..Default::default()
    };
    let back: FaultPatch = serde_json::from_str(&serde_json::to_string(&patch).unwrap()).unwrap();
    assert_eq!(format!("{back:?}"), format!("{patch:?}"));
}

#[test]
fn a_query_answer_round_trips_through_json() {
    let answer = Answer::InvoiceDetail(Box::new(InvoiceDetail {
        record: record(),
        history: vec![HistoryEntry {
            at_ms: 1,
            from: Some("PENDING".into()),
            to: "FALLBACK".into(),
            attempt: 1,
            code: Some("EPR503".into()),
            message: "outage".into(),
            actor: "engine".into(),
        }],
        payload: "{}".into(),
    }));
    let json = serde_json::to_string(&answer).unwrap();
    assert!(json.contains("\"answer\":\"invoice-detail\""), "{json}");
    assert_eq!(serde_json::from_str::<Answer>(&json).unwrap(), answer);
    let reply: QueryReply = Err(CommandError::not_found("invoice \"FE-404\""));
    let json = serde_json::to_string(&reply).unwrap();
    assert_eq!(serde_json::from_str::<QueryReply>(&json).unwrap(), reply);
}

#[test]
fn the_api_reads_are_queries_in_json() {
    let q = Query::Audit {
        filter: AuditFilter {
            kinds: vec!["operator".into()],
            limit: 10,
            ..Default::default()
        },
    };
    let json = serde_json::to_value(&q).unwrap();
    assert_eq!(json["query"], "audit");
    assert_eq!(serde_json::from_value::<Query>(json).unwrap(), q);
    let q = Query::Invoices {
        status: Some(Status::Failed),
        search: "SETP".into(),
        limit: 100,
    };
    let json = serde_json::to_value(&q).unwrap();
    assert_eq!(json["query"], "invoices");
    assert_eq!(json["status"], "FAILED");
    assert_eq!(serde_json::from_value::<Query>(json).unwrap(), q);
    let answer = Answer::Invoices {
        invoices: vec![record()],
    };
    let json = serde_json::to_string(&answer).unwrap();
    assert_eq!(serde_json::from_str::<Answer>(&json).unwrap(), answer);
}
