//! Alert rules and their state machine, evaluated once a second on injected time.
//!
//! - A condition must hold for the rule's `for` before the alert fires
//!   (inactive → pending → firing); one that clears while pending sends nothing.
//! - Hysteresis: an alert fires at `value ≥ fire` and resolves only below `clear`
//!   (`clear < fire`), so a metric hovering at the threshold does not flap.
//! - Cooldown: after a notification, the same alert does not notify again for
//!   `cooldown` (a re-fire inside it is recorded but stays quiet).
//! - Acknowledged alerts stay firing but do not notify again; the acknowledgement ends
//!   with the alert. A silence mutes every alert whose id starts with its matcher until
//!   it expires.
//! - A rule may apply to several series (`error_rate` for each downstream): one alert
//!   per label, with id `rule/label`.
//! - A restart keeps what was firing ([`Alerts::saved`], [`Alerts::restore`]): a
//!   firing alert comes back firing, acknowledged as it was, without a second
//!   notification (it was announced once; its resolution will be), and its cooldowns
//!   and the history come back too. For [`RESTORE_GRACE_MS`] after the restart it stays
//!   firing whatever the new process reads: its windows start empty and its counters
//!   at zero, which says nothing about the service yet. A pending alert is not kept: the
//!   downtime broke its `for`.

pub use crate::protocol::{Alert, Notification, Phase, Severity, Silence};
use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// After a restart, how long a restored firing alert holds against a reading below its
/// clear value or no reading at all (the longest window a rule's value comes from,
/// the error rate's minute).
pub const RESTORE_GRACE_MS: i64 = 60_000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub name: String,
    /// The series it watches (values come as `(metric, label, value)`).
    pub metric: String,
    pub severity: Severity,
    /// Fires at `value >= fire`.
    pub fire: f64,
    /// Resolves at `value < clear` (≤ `fire`).
    pub clear: f64,
    pub for_ms: i64,
    pub cooldown_ms: i64,
    /// What it means, for people: "error rate above 10 %".
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    alert: Alert,
    /// Last notification sent (not quiet) — the cooldown runs from it.
    last_sent_ms: Option<i64>,
    /// Whether the firing was announced (a resolution is announced only then).
    announced: bool,
    /// Restored from the previous process: until then, it stays firing unless its
    /// value confirms it (see [`RESTORE_GRACE_MS`]).
    #[serde(skip)]
    held_until_ms: Option<i64>,
}

/// What outlives a restart (JSON in the store): the firing alerts, the history
/// (oldest first) and when each alert last notified (its cooldown).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedAlerts {
    pub firing: Vec<Tracked>,
    pub history: Vec<Notification>,
    pub last_sent: BTreeMap<String, i64>,
}

pub struct Alerts {
    rules: Vec<Rule>,
    active: BTreeMap<String, Tracked>,
    silences: Vec<Silence>,
    history: VecDeque<Notification>,
    history_cap: usize,
    /// Cooldowns outlive an alert: a re-fire right after a resolve stays quiet.
    last_sent: BTreeMap<String, i64>,
    /// Per rule: how many times one of its alerts went firing, and how many of those
    /// were notified (not quiet) — what a threshold what-if compares.
    fired: BTreeMap<String, (u64, u64)>,
    /// Moves with every change worth keeping for the next process (not with values).
    version: u64,
}

impl Alerts {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            active: BTreeMap::new(),
            silences: Vec::new(),
            history: VecDeque::new(),
            history_cap: 500,
            last_sent: BTreeMap::new(),
            fired: BTreeMap::new(),
            version: 0,
        }
    }

    /// Changes with what [`Alerts::saved`] would give (phases, acknowledgements,
    /// history), not with each second's values.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// What the next process takes back with [`Alerts::restore`].
    pub fn saved(&self) -> SavedAlerts {
        SavedAlerts {
            firing: self
                .active
                .values()
                .filter(|t| t.alert.phase == Phase::Firing)
                .cloned()
                .collect(),
            history: self.history.iter().cloned().collect(),
            last_sent: self.last_sent.clone(),
        }
    }

    /// Takes back what a previous process kept: its firing alerts (of rules that still
    /// exist) stay firing, held for [`RESTORE_GRACE_MS`]; its history comes before
    /// this one's; its cooldowns run on.
    pub fn restore(&mut self, saved: SavedAlerts, now_ms: i64) {
        for mut t in saved.firing {
            if t.alert.phase != Phase::Firing || !self.rules.iter().any(|r| r.name == t.alert.rule)
            {
                continue;
            }
            t.held_until_ms = Some(now_ms + RESTORE_GRACE_MS);
            self.active.entry(t.alert.id.clone()).or_insert(t);
        }
        let mine = std::mem::take(&mut self.history);
        self.history = saved.history.into_iter().chain(mine).collect();
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
        for (id, at) in saved.last_sent {
            let kept = self.last_sent.entry(id).or_insert(at);
            *kept = (*kept).max(at);
        }
        self.refresh_silences(now_ms);
        self.version += 1;
    }

    /// Per rule, since this value was made: (times an alert of it went firing, times
    /// that was notified).
    pub fn fired(&self) -> &BTreeMap<String, (u64, u64)> {
        &self.fired
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// New rules (thresholds changed). Alerts of rules that still exist keep their state.
    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        self.active
            .retain(|_, t| rules.iter().any(|r| r.name == t.alert.rule));
        self.rules = rules;
    }

    /// Pending and firing alerts, most severe first.
    pub fn active(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.active.values().map(|t| t.alert.clone()).collect();
        v.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then((b.phase == Phase::Firing).cmp(&(a.phase == Phase::Firing)))
                .then(a.id.cmp(&b.id))
        });
        v
    }

    pub fn firing(&self) -> usize {
        self.active
            .values()
            .filter(|t| t.alert.phase == Phase::Firing)
            .count()
    }

    /// Newest first.
    pub fn history(&self) -> impl Iterator<Item = &Notification> {
        self.history.iter().rev()
    }

    pub fn silences(&self, now_ms: i64) -> Vec<Silence> {
        self.silences
            .iter()
            .filter(|s| s.until_ms > now_ms)
            .cloned()
            .collect()
    }

    /// Evaluates every rule against this second's values. Returns the notifications to
    /// send (quiet ones are only kept in the history).
    pub fn evaluate(&mut self, now_ms: i64, values: &[(String, String, f64)]) -> Vec<Notification> {
        self.silences.retain(|s| s.until_ms > now_ms);
        let mut out = Vec::new();
        let rules = self.rules.clone();
        for rule in &rules {
            let mut seen = Vec::new();
            for (metric, label, value) in values {
                if *metric != rule.metric || !value.is_finite() {
                    continue;
                }
                seen.push(label.clone());
                self.step(rule, label, *value, now_ms, &mut out);
            }
            // A series that stopped reporting no longer holds its condition.
            let gone: Vec<String> = self
                .active
                .values()
                .filter(|t| t.alert.rule == rule.name && !seen.contains(&t.alert.label))
                .map(|t| t.alert.label.clone())
                .collect();
            for label in gone {
                self.step(rule, &label, f64::NEG_INFINITY, now_ms, &mut out);
            }
        }
        self.refresh_silences(now_ms);
        out
    }

    fn step(
        &mut self,
        rule: &Rule,
        label: &str,
        value: f64,
        now: i64,
        out: &mut Vec<Notification>,
    ) {
        let id = if label.is_empty() {
            rule.name.clone()
        } else {
            format!("{}/{label}", rule.name)
        };
        let Some(t) = self.active.get_mut(&id) else {
            if value >= rule.fire {
                let alert = Alert {
                    id: id.clone(),
                    rule: rule.name.clone(),
                    label: label.to_owned(),
                    severity: rule.severity,
                    phase: Phase::Pending,
                    since_ms: now,
                    value,
                    threshold: rule.fire,
                    summary: rule.summary.clone(),
                    acked_by: None,
                    silenced_until_ms: None,
                };
                self.active.insert(
                    id.clone(),
                    Tracked {
                        alert,
                        last_sent_ms: None,
                        announced: false,
                        held_until_ms: None,
                    },
                );
                self.version += 1;
                // `for` = 0: fires on the first point.
                self.step(rule, label, value, now, out);
            }
            return;
        };
        if let Some(until) = t.held_until_ms {
            if value >= rule.clear {
                // The new process's own reading confirms it: held no longer.
                t.held_until_ms = None;
            } else if now < until {
                // Restored, and this process has not measured enough to judge it.
                return;
            } else {
                t.held_until_ms = None;
            }
        }
        if value.is_finite() {
            t.alert.value = value;
        }
        t.alert.threshold = rule.fire;
        match t.alert.phase {
            Phase::Pending if value < rule.fire => {
                // Cleared before `for` elapsed: forgotten, nothing sent.
                self.active.remove(&id);
                self.version += 1;
            }
            Phase::Pending if now - t.alert.since_ms >= rule.for_ms => {
                t.alert.phase = Phase::Firing;
                t.alert.since_ms = now;
                self.version += 1;
                let n = self.notify(&id, Phase::Firing, now, rule.cooldown_ms);
                let count = self.fired.entry(rule.name.clone()).or_default();
                count.0 += 1;
                count.1 += u64::from(n.is_some());
                out.extend(n);
            }
            Phase::Firing if value < rule.clear => {
                let announced = t.announced;
                let mut n = self.notification(&id, Phase::Resolved, now);
                if value == f64::NEG_INFINITY {
                    // The series stopped: its last value is not what resolved it.
                    n.no_data = true;
                    n.message = format!(
                        "{} resolved{}: {} (no data: the series stopped reporting; it last read {}, threshold {})",
                        n.severity,
                        if n.label.is_empty() {
                            String::new()
                        } else {
                            format!(" on {}", n.label)
                        },
                        self.active[&id].alert.summary,
                        round(n.value),
                        round(n.threshold)
                    );
                }
                if !announced {
                    n.quiet = Some("its firing was not announced".into());
                } else if let Some(s) = self.silenced(&id, now) {
                    n.quiet = Some(s);
                }
                self.active.remove(&id);
                self.record(n.clone());
                if n.quiet.is_none() {
                    out.push(n);
                }
            }
            _ => {}
        }
    }

    /// The firing notification, sent unless silenced, acknowledged or cooling down.
    fn notify(
        &mut self,
        id: &str,
        phase: Phase,
        now: i64,
        cooldown_ms: i64,
    ) -> Option<Notification> {
        let mut n = self.notification(id, phase, now);
        let t = &self.active[id];
        let last = t.last_sent_ms.or(self.last_sent.get(id).copied());
        n.quiet = if let Some(s) = self.silenced(id, now) {
            Some(s)
        } else if let Some(by) = &t.alert.acked_by {
            Some(format!("acknowledged by {by}"))
        } else {
            last.filter(|l| now - l < cooldown_ms)
                .map(|l| format!("cooldown: notified {}s ago", (now - l) / 1000))
        };
        let t = self.active.get_mut(id).expect("tracked");
        if n.quiet.is_none() {
            t.last_sent_ms = Some(now);
            t.announced = true;
            self.last_sent.insert(id.to_owned(), now);
        }
        self.record(n.clone());
        n.quiet.is_none().then_some(n)
    }

    fn notification(&self, id: &str, phase: Phase, now: i64) -> Notification {
        let a = &self.active[id].alert;
        let what = match phase {
            Phase::Firing => "firing",
            Phase::Resolved => "resolved",
            Phase::Pending => "pending",
        };
        Notification {
            id: id.to_owned(),
            rule: a.rule.clone(),
            label: a.label.clone(),
            severity: a.severity,
            phase,
            at_ms: now,
            value: a.value,
            threshold: a.threshold,
            message: format!(
                "{} {what}{}: {} (value {}, threshold {})",
                a.severity,
                if a.label.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", a.label)
                },
                a.summary,
                round(a.value),
                round(a.threshold)
            ),
            quiet: None,
            no_data: false,
        }
    }

    fn silenced(&self, id: &str, now: i64) -> Option<String> {
        self.silences
            .iter()
            .find(|s| s.until_ms > now && id.starts_with(&s.matcher))
            .map(|s| {
                format!(
                    "silenced by {} for {}s more",
                    s.by,
                    (s.until_ms - now) / 1000
                )
            })
    }

    fn record(&mut self, n: Notification) {
        self.version += 1;
        if self.history.len() == self.history_cap {
            self.history.pop_front();
        }
        self.history.push_back(n);
    }

    /// Acknowledges the alerts whose id starts with `matcher`; how many.
    pub fn acknowledge(&mut self, matcher: &str, by: &str) -> usize {
        let mut n = 0;
        for t in self.active.values_mut() {
            if t.alert.id.starts_with(matcher) && t.alert.acked_by.is_none() {
                t.alert.acked_by = Some(by.to_owned());
                n += 1;
            }
        }
        self.version += u64::from(n > 0);
        n
    }

    /// Mutes alerts whose id starts with `matcher` until `until_ms`.
    pub fn silence(&mut self, matcher: &str, until_ms: i64, by: &str) {
        self.silences.retain(|s| s.matcher != matcher);
        self.silences.push(Silence {
            matcher: matcher.to_owned(),
            until_ms,
            by: by.to_owned(),
        });
        for t in self.active.values_mut() {
            if t.alert.id.starts_with(matcher) {
                t.alert.silenced_until_ms = Some(until_ms);
            }
        }
    }

    /// Refreshes each alert's silence mark (after silences expire).
    pub fn refresh_silences(&mut self, now_ms: i64) {
        self.silences.retain(|s| s.until_ms > now_ms);
        let silences = self.silences.clone();
        for t in self.active.values_mut() {
            t.alert.silenced_until_ms = silences
                .iter()
                .filter(|s| t.alert.id.starts_with(&s.matcher))
                .map(|s| s.until_ms)
                .max();
        }
    }
}

fn round(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(for_ms: i64, cooldown_ms: i64) -> Rule {
        Rule {
            name: "error_rate".into(),
            metric: "error_rate".into(),
            severity: Severity::Warning,
            fire: 10.0,
            clear: 8.0,
            for_ms,
            cooldown_ms,
            summary: "error rate above 10 %".into(),
        }
    }

    fn at(a: &mut Alerts, t_s: i64, v: f64) -> Vec<Notification> {
        a.evaluate(t_s * 1000, &[("error_rate".into(), "alegra".into(), v)])
    }

    fn phase(a: &Alerts) -> Option<Phase> {
        a.active().first().map(|x| x.phase)
    }

    #[test]
    fn pending_until_the_condition_held_for_its_duration() {
        let mut a = Alerts::new(vec![rule(30_000, 0)]);
        assert!(at(&mut a, 0, 12.0).is_empty());
        assert_eq!(phase(&a), Some(Phase::Pending));
        assert!(at(&mut a, 29, 12.0).is_empty(), "29 s < for 30 s");
        let n = at(&mut a, 30, 12.0);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].phase, Phase::Firing);
        assert_eq!(n[0].id, "error_rate/alegra");
        assert_eq!(phase(&a), Some(Phase::Firing));
    }

    #[test]
    fn cleared_while_pending_sends_nothing() {
        let mut a = Alerts::new(vec![rule(30_000, 0)]);
        at(&mut a, 0, 12.0);
        assert!(at(&mut a, 10, 3.0).is_empty());
        assert_eq!(phase(&a), None);
        assert!(a.history().next().is_none(), "not even in the history");
        // And the `for` starts over.
        at(&mut a, 11, 12.0);
        assert!(at(&mut a, 40, 12.0).is_empty(), "29 s since it came back");
        assert_eq!(at(&mut a, 41, 12.0).len(), 1);
    }

    #[test]
    fn hysteresis_keeps_it_firing_between_clear_and_fire() {
        let mut a = Alerts::new(vec![rule(0, 0)]);
        assert_eq!(
            at(&mut a, 0, 10.0)[0].phase,
            Phase::Firing,
            "fires at >= 10"
        );
        for (t, v) in [(1, 9.0), (2, 8.0), (3, 9.9)] {
            assert!(at(&mut a, t, v).is_empty(), "still firing at {v}");
            assert_eq!(phase(&a), Some(Phase::Firing));
        }
        let n = at(&mut a, 4, 7.9);
        assert_eq!(n[0].phase, Phase::Resolved, "resolves below 8");
        assert_eq!(phase(&a), None);
    }

    #[test]
    fn the_cooldown_keeps_a_refire_quiet() {
        let mut a = Alerts::new(vec![rule(0, 300_000)]);
        assert_eq!(at(&mut a, 0, 20.0).len(), 1);
        assert_eq!(at(&mut a, 10, 1.0)[0].phase, Phase::Resolved);
        assert!(
            at(&mut a, 20, 20.0).is_empty(),
            "re-fired 20 s after: quiet"
        );
        assert_eq!(phase(&a), Some(Phase::Firing), "but firing all the same");
        assert!(
            a.history()
                .next()
                .unwrap()
                .quiet
                .as_deref()
                .unwrap()
                .starts_with("cooldown"),
            "and kept in the history"
        );
        // Its resolution is quiet too: the firing was never announced.
        assert!(at(&mut a, 30, 1.0).is_empty());
        // Past the cooldown, a new firing is announced.
        assert_eq!(at(&mut a, 301, 20.0).len(), 1);
    }

    #[test]
    fn silence_mutes_until_it_expires_and_acknowledge_mutes_the_alert() {
        let mut a = Alerts::new(vec![rule(0, 0)]);
        a.silence("error_rate", 60_000, "ops");
        assert!(at(&mut a, 0, 20.0).is_empty(), "silenced");
        assert_eq!(a.active()[0].silenced_until_ms, Some(60_000));
        assert!(
            at(&mut a, 1, 1.0).is_empty(),
            "resolution of a quiet firing"
        );
        assert!(at(&mut a, 61, 20.0).len() == 1, "silence over");
        assert_eq!(a.acknowledge("error_rate/alegra", "ops"), 1);
        assert_eq!(a.active()[0].acked_by.as_deref(), Some("ops"));
        // Acknowledged: the resolution is still announced (the firing was).
        assert_eq!(at(&mut a, 62, 1.0)[0].phase, Phase::Resolved);
        // A new firing is not acknowledged.
        assert_eq!(at(&mut a, 63, 20.0).len(), 1);
        assert_eq!(a.active()[0].acked_by, None);
    }

    /// Issue 17 point 6: a new process takes back a firing acknowledged alert — still
    /// firing, no second notification, its history and cooldown intact — and judges it
    /// on its own readings only after the grace.
    #[test]
    fn a_restored_firing_alert_stays_firing_without_a_second_notification() {
        let mut a = Alerts::new(vec![rule(0, 300_000)]);
        assert_eq!(at(&mut a, 0, 20.0).len(), 1);
        assert_eq!(a.acknowledge("error_rate", "ana"), 1);
        let version = a.version();
        assert!(at(&mut a, 1, 25.0).is_empty());
        assert_eq!(a.version(), version, "a value alone is nothing new to keep");
        let saved: SavedAlerts =
            serde_json::from_str(&serde_json::to_string(&a.saved()).unwrap()).unwrap();

        let mut b = Alerts::new(vec![rule(0, 300_000)]);
        b.restore(saved.clone(), 100_000);
        assert_eq!(
            b.active(),
            a.active(),
            "firing, acknowledged, since when it was"
        );
        assert_eq!(b.history().count(), 1);
        // Still over its threshold: firing on, nothing sent.
        assert!(at(&mut b, 100, 30.0).is_empty());
        assert_eq!(b.history().count(), 1, "not even a quiet one");
        // A fresh process reads nothing or zero: held for the grace…
        let mut c = Alerts::new(vec![rule(0, 300_000)]);
        c.restore(saved.clone(), 100_000);
        assert!(c.evaluate(101_000, &[]).is_empty());
        assert!(at(&mut c, 150, 0.0).is_empty());
        assert_eq!(phase(&c), Some(Phase::Firing));
        // …then resolved, announced (its firing was).
        let n = at(&mut c, 161, 0.0);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].phase, Phase::Resolved);
        // A re-fire inside the cooldown of the first process's notification is quiet.
        let mut d = Alerts::new(vec![rule(0, 300_000)]);
        d.restore(
            SavedAlerts {
                firing: Vec::new(),
                ..saved
            },
            100_000,
        );
        assert!(at(&mut d, 100, 30.0).is_empty(), "notified 100 s ago");
        assert_eq!(phase(&d), Some(Phase::Firing));
    }

    #[test]
    fn one_alert_per_label_and_a_silent_series_resolves() {
        let mut a = Alerts::new(vec![rule(0, 0)]);
        let n = a.evaluate(
            0,
            &[
                ("error_rate".into(), "alegra".into(), 50.0),
                ("error_rate".into(), "stripe".into(), 0.0),
                ("error_rate".into(), "quickbooks".into(), 15.0),
            ],
        );
        assert_eq!(n.len(), 2);
        assert_eq!(a.firing(), 2);
        let n = a.evaluate(1000, &[("error_rate".into(), "alegra".into(), 50.0)]);
        assert_eq!(n.len(), 1, "quickbooks stopped reporting: {n:?}");
        assert_eq!(n[0].id, "error_rate/quickbooks");
        assert_eq!(n[0].phase, Phase::Resolved);
    }
}
