//! Threshold what-if ([`Query::WhatIf`](crate::protocol::Query::WhatIf)): before an
//! operator applies a threshold, how often its rule would have fired over the recorded
//! hour with the proposed value versus the value in force. Both numbers come from the
//! same replay ([`Telemetry::replay`]): the real rules and detectors, fed the values
//! they were given each second, on the recorded clock — so the count under the value in
//! force is the count the engine really produced over that window.

use crate::config::Config;
use crate::protocol::{Answer, CommandError, QueryReply, WhatIf, WhatIfWindow, check_threshold};
use crate::telemetry::{Replay, Telemetry};

/// What a threshold's what-if counts.
enum Counted {
    /// The alerts of these rules.
    Rules(&'static [&'static str]),
    /// Every alert (a setting all rules share: `for`, cooldown, clear ratio).
    AllRules,
    /// Anomalies opened.
    Anomalies,
}

fn counted(name: &str) -> Result<Counted, CommandError> {
    Ok(match name {
        "alerts.error_rate_percent" => Counted::Rules(&["error_rate"]),
        "alerts.latency_p95_ms" => Counted::Rules(&["latency_p95"]),
        "alerts.cache_miss_rate_percent" => Counted::Rules(&["cache_miss_rate"]),
        "alerts.consecutive_failures" => Counted::Rules(&["consecutive_failures"]),
        "alerts.queue_depth" => Counted::Rules(&["queue_depth"]),
        "alerts.dian_failure_rate_percent" => Counted::Rules(&["dian_failure_rate"]),
        "alerts.for_secs" | "alerts.cooldown_secs" | "alerts.clear_ratio" => Counted::AllRules,
        n if n.starts_with("anomaly.") => Counted::Anomalies,
        _ => {
            return Err(CommandError::conflict(format!(
                "no what-if for {name}: it changes how a value is computed, not the line it is judged against, so the recorded values cannot be replayed under it"
            )));
        }
    })
}

/// (fired, notified) of `replay` as `what` counts them.
fn count(replay: &Replay, what: &Counted) -> (u64, u64) {
    let sum = |keep: &dyn Fn(&str) -> bool| {
        replay
            .fired
            .iter()
            .filter(|(rule, _)| keep(rule))
            .fold((0, 0), |(f, n), (_, (a, b))| (f + a, n + b))
    };
    match what {
        Counted::Rules(rules) => sum(&|r| rules.contains(&r)),
        Counted::AllRules => sum(&|_| true),
        Counted::Anomalies => (replay.anomalies, 0),
    }
}

/// The what-if of setting `name` to `value`, over what `telemetry` recorded, against
/// the thresholds of `config` (those in force).
pub(super) fn what_if(
    config: &Config,
    telemetry: &Telemetry,
    name: &str,
    value: f64,
) -> QueryReply {
    let t = check_threshold(name, value).map_err(|e| CommandError::invalid(name, e))?;
    let what = counted(t.name)?;
    let current = config.threshold(t.name).unwrap_or(f64::NAN);
    let mut next = config.clone();
    next.set_thresholds(&[(t.name.to_owned(), value)])
        .map_err(|e| CommandError::invalid(name, e))?;
    let now = telemetry.replay(&config.alerts, &config.anomaly);
    let then = telemetry.replay(&next.alerts, &next.anomaly);
    let (current_fired, current_notified) = count(&now, &what);
    let (proposed_fired, proposed_notified) = count(&then, &what);
    Ok(Answer::WhatIf(WhatIf {
        name: t.name.to_owned(),
        current,
        proposed: value,
        counts: match what {
            Counted::Rules(r) => format!("{} alerts", r.join(", ")),
            Counted::AllRules => "alerts".into(),
            Counted::Anomalies => "anomalies".into(),
        },
        hour: WhatIfWindow {
            secs: now.window_secs,
            current: current_fired,
            proposed: proposed_fired,
            current_notified,
            proposed_notified,
        },
        // The engine keeps an hour of history in memory.
        day: None,
    }))
}
