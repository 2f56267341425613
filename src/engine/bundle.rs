//! Incident bundles ([`Query::Bundle`](crate::protocol::Query::Bundle)): what the
//! engine holds of an incident, in one value a front-end writes to a file.
//!
//! Taken in two steps: on the engine's loop, what only it holds (the snapshot, the
//! config, the series of the alerts and anomalies) — [`Taken::now`]; off the loop, the
//! audit trail read from the store — [`build`]. Secrets never leave: the config is
//! redacted key by key ([`Config::redacted_toml`]), then every secret value the config
//! holds is cut out of every string of the bundle (an error line or an audit message
//! that quoted one), whatever field it hides in.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::protocol::{
    Answer, AuditEntry, AuditFilter, BUNDLE_FORMAT, Bundle, BundleSeries, CommandError,
    MAX_BUNDLE_EVENTS, OPERATOR, QueryReply, REDACTED, Snapshot,
};
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::Reduce;

/// The audit kind of breaker transitions (see `periodic::transitions_loop`).
const CIRCUIT: &str = "circuit";
/// A bundle's series: the last hour in points of this many seconds.
const STEP_SECS: usize = 10;
const HOUR_SECS: usize = 3600;

/// What the engine's loop hands over for a bundle.
pub(super) struct Taken {
    pub snapshot: Arc<Snapshot>,
    pub config: Config,
    pub series: Vec<BundleSeries>,
    pub started_ms: i64,
    pub now_ms: i64,
}

impl Taken {
    /// Takes the engine's part of a bundle (cheap: clones and one pass over the
    /// series).
    pub fn now(
        snapshot: Arc<Snapshot>,
        config: &Config,
        telemetry: &Telemetry,
        started_ms: i64,
        now_ms: i64,
    ) -> Self {
        Taken {
            series: series(telemetry, &snapshot),
            snapshot,
            config: config.clone(),
            started_ms,
            now_ms,
        }
    }
}

/// The series each alert (active or in the history) and each anomaly watches.
fn series(telemetry: &Telemetry, snapshot: &Snapshot) -> Vec<BundleSeries> {
    let t = &snapshot.telemetry;
    let metric_of = |rule: &str| {
        telemetry
            .alerts
            .rules()
            .iter()
            .find(|r| r.name == rule)
            .map(|r| r.metric.clone())
    };
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let alerts = t
        .alerts
        .iter()
        .map(|a| (&a.id, &a.rule, &a.label))
        .chain(t.notifications.iter().map(|n| (&n.id, &n.rule, &n.label)));
    for (id, rule, label) in alerts {
        let Some(metric) = metric_of(rule) else {
            continue;
        };
        let candidates = [
            format!("{metric}:{label}"),
            // The queue_depth alert watches the queue's depth.
            format!("queue:{label}"),
            metric.clone(),
        ];
        if let Some(name) = candidates
            .into_iter()
            .find(|n| telemetry.series(n).is_some())
        {
            let why = wanted.entry(name).or_default();
            if !why.contains(id) {
                why.push(id.clone());
            }
        }
    }
    for a in &t.anomalies {
        if telemetry.series(&a.metric).is_some() {
            let why = wanted.entry(a.metric.clone()).or_default();
            let what = format!("anomaly {}", a.metric);
            if !why.contains(&what) {
                why.push(what);
            }
        }
    }
    wanted
        .into_iter()
        .filter_map(|(name, watched_by)| {
            let s = telemetry.series(&name)?;
            Some(BundleSeries {
                points: s.downsample(HOUR_SECS, HOUR_SECS / STEP_SECS, Reduce::Mean),
                name,
                watched_by,
                step_secs: STEP_SECS as u32,
            })
        })
        .collect()
}

/// Builds the bundle: the audit trail's newest `events` entries, operator actions and
/// breaker transitions read from the store, everything redacted.
pub(super) fn build(store: &Store, taken: Taken, events: usize, actor: String) -> QueryReply {
    if !(1..=MAX_BUNDLE_EVENTS).contains(&events) {
        return Err(CommandError::invalid(
            "events",
            format!("a bundle holds 1 to {MAX_BUNDLE_EVENTS} audit events, not {events}"),
        ));
    }
    let read = |kinds: &[&str]| {
        store
            .audit_query(&AuditFilter {
                kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
                limit: events,
                ..AuditFilter::default()
            })
            .map_err(|e| CommandError::unavailable(format!("the store: {e}")))
    };
    let recent = read(&[])?;
    let journal = read(&[OPERATOR])?;
    let transitions = read(&[CIRCUIT])?;
    let mut snapshot = (*taken.snapshot).clone();
    snapshot.audit = merged(&[&recent, &journal, &transitions]);
    let bundle = Bundle {
        format: BUNDLE_FORMAT,
        version: format!("syncctl {}", env!("CARGO_PKG_VERSION")),
        written_ms: taken.now_ms,
        started_ms: taken.started_ms,
        uptime_secs: u64::try_from((taken.now_ms - taken.started_ms) / 1000).unwrap_or(0),
        taken_by: actor,
        snapshot,
        transitions,
        journal,
        series: taken.series,
        config: taken.config.redacted_toml(),
    };
    let bundle = scrubbed(bundle, &taken.config.secret_values())?;
    // Who took what is itself part of the incident's story.
    let _ = store.audit(
        "bundle",
        "engine",
        &bundle.taken_by,
        &format!(
            "incident bundle taken ({} audit events, {} operator actions, {} breaker transitions, {} series)",
            bundle.snapshot.audit.len(),
            bundle.journal.len(),
            bundle.transitions.len(),
            bundle.series.len()
        ),
    );
    Ok(Answer::Bundle(Box::new(bundle)))
}

/// The entries of all `lists`, each once, newest first.
fn merged(lists: &[&Vec<AuditEntry>]) -> Vec<AuditEntry> {
    let mut by_id: BTreeMap<i64, AuditEntry> = BTreeMap::new();
    for e in lists.iter().flat_map(|l| l.iter()) {
        by_id.entry(e.id).or_insert_with(|| e.clone());
    }
    by_id.into_values().rev().collect()
}

/// The bundle with every occurrence of each secret, in any string, replaced by
/// [`REDACTED`].
fn scrubbed(bundle: Bundle, secrets: &[String]) -> Result<Bundle, CommandError> {
    let mut secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    // The longest first: a secret that holds another is cut whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let failed = |e: serde_json::Error| CommandError::unavailable(format!("the bundle: {e}"));
    let mut value = serde_json::to_value(&bundle).map_err(failed)?;
    scrub(&mut value, &secrets);
    serde_json::from_value(value).map_err(failed)
}

fn scrub(value: &mut serde_json::Value, secrets: &[&str]) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            for secret in secrets {
                if s.contains(secret) {
                    *s = s.replace(secret, REDACTED);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(v, secrets)),
        Value::Object(map) => {
            // Keys too: a map keyed by something that quoted a secret.
            let keyed: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            for (mut k, mut v) in keyed {
                for secret in secrets {
                    if k.contains(secret) {
                        k = k.replace(secret, REDACTED);
                    }
                }
                scrub(&mut v, secrets);
                map.insert(k, v);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_cut_out_of_any_string_and_key() {
        let mut v = serde_json::json!({
            "line": "401 for key sk_live_123 at /v1",
            "list": ["x sk_live_123", "ok"],
            "sk_live_123": 1,
        });
        scrub(&mut v, &["sk_live_123"]);
        let text = v.to_string();
        assert!(!text.contains("sk_live_123"), "{text}");
        assert!(text.contains("401 for key [redacted] at /v1"), "{text}");
    }
}
