//! Operator commands and queries: how a [`Request`] reaches the engine, the one audited
//! wrapper every command goes through, and what each command does.
//!
//! Whoever sends a command (the console's keys, the HTTP API, `syncctl ctl`, an
//! attached console) gets its own [`Reply`] on its own oneshot: an [`Outcome`] or a
//! typed [`CommandError`]. Every command is validated ([`Command::validate`]), applied,
//! and audited as `kind = "operator"`, the actor, the entity it acted on, and a line
//! `<command text>: <outcome>` or `<command text>: refused: <why>` — the command's
//! [`Display`](std::fmt::Display) form, the same grammar `:` mode and `ctl` read.
//! [`audit_command`] writes that line, so a command applied to the store without an
//! engine (the CLI's `dian retry`) is audited the same way. The operator journal (the
//! console's Events screen, `syncctl ctl journal`) reads it back with
//! [`JournalEntry::from_audit`](crate::protocol::JournalEntry::from_audit).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::COMPLIANCE_OFF;
use super::catalog::Catalog;
use super::compliance::{self, Compliance};
use super::publisher::Publisher;
use crate::protocol::{
    AlertMatcher, Answer, BreakerAction, CacheScope, Command, CommandError, Disconnected,
    InvoiceDetail, Outcome, Pipeline, Query, QueryReply, Reply, Request, Role, Service,
    ThresholdChange, check_threshold,
};
use crate::resilience::{Downstream, State as BreakerState};
use crate::store::Store;

/// What the engine's loop receives: a command or a query with where its answer goes,
/// or the engine's own request to stop (signals, a failed console), not audited.
pub(super) enum Message {
    Request {
        request: Request,
        reply: oneshot::Sender<Reply>,
    },
    Query {
        query: Query,
        reply: oneshot::Sender<QueryReply>,
    },
    Shutdown,
}

/// Sends commands and queries to a running engine; cheap to clone (the console's
/// link, the HTTP API and the tests each hold one).
#[derive(Clone)]
pub struct Commands {
    tx: mpsc::Sender<Message>,
}

/// The error a command gets when the engine stops before (or instead of) answering.
pub fn stopping() -> CommandError {
    CommandError::unavailable("the engine is stopping")
}

impl Commands {
    pub(super) fn new(tx: mpsc::Sender<Message>) -> Self {
        Commands { tx }
    }

    /// Sends one command; its reply arrives on the receiver (dropped unanswered only
    /// when the engine stops first).
    pub async fn send(&self, request: Request) -> Result<oneshot::Receiver<Reply>, Disconnected> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Message::Request { request, reply })
            .await
            .map_err(|_| Disconnected)?;
        Ok(rx)
    }

    /// Sends one command and waits for its reply.
    pub async fn request(&self, request: Request) -> Reply {
        match self.send(request).await {
            Ok(rx) => rx.await.unwrap_or_else(|_| Err(stopping())),
            Err(Disconnected) => Err(stopping()),
        }
    }

    /// Asks one query; its answer arrives on the receiver.
    pub async fn send_query(
        &self,
        query: Query,
    ) -> Result<oneshot::Receiver<QueryReply>, Disconnected> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Message::Query { query, reply })
            .await
            .map_err(|_| Disconnected)?;
        Ok(rx)
    }

    /// Asks one query and waits for its answer.
    pub async fn query(&self, query: Query) -> QueryReply {
        match self.send_query(query).await {
            Ok(rx) => rx.await.unwrap_or_else(|_| Err(stopping())),
            Err(Disconnected) => Err(stopping()),
        }
    }

    /// The engine's own stop (a signal, a console that failed): drain, then stop.
    /// Not an operator command, so not audited as one.
    pub(super) async fn stop(&self) {
        let _ = self.tx.send(Message::Shutdown).await;
    }
}

/// The audit trail's line for one command and its reply (see the module doc).
pub fn audit_line(command: &Command, reply: &Reply) -> String {
    match reply {
        Ok(o) => format!("{command}: {}", o.message),
        Err(e) => format!("{command}: refused: {e}"),
    }
}

/// Writes one command's audit entry: `operator`, `entity`, `actor`, [`audit_line`].
pub fn audit_command(store: &Store, entity: &str, actor: &str, command: &Command, reply: &Reply) {
    // What a caller typed is written bounded and with control characters escaped: a
    // refused request cannot fill the trail or carry terminal sequences into it.
    let _ = store.audit(
        "operator",
        &bounded(entity, 120),
        &bounded(actor, 120),
        &bounded(&audit_line(command, reply), 1000),
    );
}

/// `text` with control characters escaped, cut to `max` characters (`…` when cut).
fn bounded(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What a command's audit entry names, before the engine resolves it (a retried
/// invoice is named by its number once found).
fn entity(command: &Command) -> String {
    match command {
        Command::Pause { pipeline }
        | Command::Resume { pipeline }
        | Command::WorkerBounds { pipeline, .. } => pipeline.name().to_owned(),
        Command::Breaker { service, .. } => service.name().to_owned(),
        Command::RetryInvoice { key } => key.clone(),
        Command::RetryFailed {} => "compliance".into(),
        Command::RetryJob { key } | Command::ResyncItem { key } => key.clone(),
        Command::RetryFailedJobs {} | Command::Resync {} | Command::ResyncDrifted {} => {
            "catalog".into()
        }
        Command::AckAlerts { .. } | Command::SilenceAlerts { .. } => "alerts".into(),
        Command::SetThresholds { .. } => "thresholds".into(),
        Command::InvalidateCache { .. } => "cache".into(),
        Command::Shutdown {} => "engine".into(),
    }
}

/// What commands act on.
pub(super) struct Ctx {
    pub catalog: Arc<Catalog>,
    pub compliance: Option<Arc<Compliance>>,
    pub downstreams: Vec<Arc<Downstream>>,
    pub reconciler: Arc<super::reconcile::Reconciler>,
}

impl Ctx {
    /// The one audited wrapper: validates, applies and audits one request, and returns
    /// its reply (for whoever sent it).
    pub fn run(&self, publisher: &mut Publisher, request: Request) -> Reply {
        let Request {
            actor,
            command,
            role,
            company: _,
        } = request;
        let mut entity = entity(&command);
        let reply = allowed(role, &actor)
            .and_then(|()| command.validate())
            .and_then(|()| {
                // A bulk command's audit line ends with what its preview estimated,
                // taken from the state it acts on.
                let estimate = self.estimate(&command);
                let mut outcome = self.apply(publisher, &command, &actor, &mut entity)?;
                if let Some(e) = estimate {
                    outcome.message = format!("{} — {e}", outcome.message);
                }
                Ok(outcome)
            });
        audit_command(&self.catalog.store, &entity, &actor, &command, &reply);
        if reply.is_ok()
            && matches!(
                command,
                Command::SetThresholds { .. } | Command::SilenceAlerts { .. }
            )
        {
            publisher.persist_operator_state();
        }
        if reply.is_ok()
            && matches!(
                command,
                Command::AckAlerts { .. } | Command::WorkerBounds { .. }
            )
        {
            // Kept at once, not at the next tick.
            publisher.flush_history(super::publisher::Flush::Operator);
        }
        publisher.refresh_view();
        reply
    }

    fn compliance(&self) -> Result<&Compliance, CommandError> {
        self.compliance
            .as_deref()
            .ok_or_else(|| CommandError::conflict(COMPLIANCE_OFF))
    }

    fn apply(
        &self,
        publisher: &mut Publisher,
        command: &Command,
        actor: &str,
        entity: &mut String,
    ) -> Reply {
        let store = &self.catalog.store;
        match command {
            Command::Pause { pipeline } => self.pause(*pipeline, true),
            Command::Resume { pipeline } => self.pause(*pipeline, false),
            Command::Breaker { service, action } => {
                apply_breaker(&self.downstreams, *service, *action, actor)
            }
            Command::WorkerBounds { pipeline, min, max } => {
                apply_bounds(&self.catalog, *pipeline, *min, *max)
            }
            Command::RetryInvoice { key } => {
                let c = self.compliance()?;
                let rec = c.find(key)?;
                entity.clone_from(&rec.number);
                c.retry(&rec, actor)
            }
            Command::RetryFailed {} => self.compliance()?.retry_failed(actor),
            Command::RetryJob { .. } | Command::RetryFailedJobs {} | Command::Resync {} => {
                self.catalog_command(command)
            }
            Command::ResyncItem { key } => self.resync_items(Some(key)),
            Command::ResyncDrifted {} => self.resync_items(None),
            Command::AckAlerts { matcher } => {
                let n = publisher
                    .telemetry
                    .alerts
                    .acknowledge(matcher.prefix(), actor);
                if n == 0 {
                    Err(CommandError::conflict(format!(
                        "no unacknowledged alert matches {:?}",
                        matcher.to_string()
                    )))
                } else {
                    Ok(Outcome::new(format!(
                        "acknowledged {n} alert(s) matching {:?}",
                        matcher.prefix()
                    ))
                    .with_count(n as u64))
                }
            }
            Command::SilenceAlerts { matcher, secs } => {
                let until = i64::try_from(*secs)
                    .ok()
                    .and_then(|s| s.checked_mul(1000))
                    .and_then(|ms| store.now_ms().checked_add(ms))
                    .ok_or_else(|| CommandError::invalid("duration", "too long"))?;
                publisher
                    .telemetry
                    .alerts
                    .silence(matcher.prefix(), until, actor);
                let shown = match matcher {
                    AlertMatcher::All => "*",
                    AlertMatcher::Prefix(p) => p,
                };
                Ok(Outcome::new(format!(
                    "silenced alerts matching {shown:?} for {}",
                    crate::protocol::format_duration(*secs)
                ))
                .with_until_ms(until))
            }
            Command::SetThresholds { changes, for_secs } => {
                publisher.set_thresholds_for(changes, *for_secs, actor)
            }
            Command::InvalidateCache { scope } => {
                let mut c = self.catalog.cache.lock().unwrap_or_else(|p| p.into_inner());
                let n = match scope {
                    CacheScope::All => c.clear(),
                    CacheScope::Key(k) => c.invalidate_key(k),
                    CacheScope::Pattern(p) => c.invalidate_pattern(p),
                    CacheScope::Tag(t) => c.invalidate_tag(t),
                };
                drop(c);
                Ok(
                    Outcome::new(format!("cache: dropped {n} entries ({scope})"))
                        .with_count(n as u64),
                )
            }
            // The loop stops once this is answered.
            Command::Shutdown {} => Ok(Outcome::new("draining and stopping")),
        }
    }

    /// The catalog's operator commands: retry failed jobs (one, all), run the full
    /// sync again.
    fn catalog_command(&self, command: &Command) -> Reply {
        match command {
            Command::RetryJob { key } => {
                let keys = self
                    .catalog
                    .retry_failed_jobs(Some(key))
                    .map_err(CommandError::unavailable)?;
                if keys.is_empty() {
                    return Err(CommandError::not_found(format!(
                        "a failed catalog job for {key:?} (only jobs past their last attempt, not queued again, can be retried)"
                    )));
                }
                Ok(Outcome::new(format!(
                    "re-queued the failed catalog job of {key} with fresh attempts"
                ))
                .with_count(1))
            }
            Command::RetryFailedJobs {} => {
                let keys = self
                    .catalog
                    .retry_failed_jobs(None)
                    .map_err(CommandError::unavailable)?;
                let n = keys.len() as u64;
                if n == 0 {
                    return Err(CommandError::conflict("no failed catalog job to retry"));
                }
                let shown: Vec<&str> = keys.iter().take(5).map(String::as_str).collect();
                let more = if keys.len() > 5 { ", …" } else { "" };
                Ok(Outcome::new(format!(
                    "re-queued {n} failed catalog job(s) with fresh attempts ({}{more})",
                    shown.join(", ")
                ))
                .with_count(n))
            }
            Command::Resync {} => {
                let before = self.catalog.resync().map_err(CommandError::conflict)?;
                Ok(Outcome::new(format!(
                    "full sync started again (the last one listed {} products in {} pages)",
                    before.listed, before.pages
                )))
            }
            _ => Err(CommandError::invalid("verb", "not a catalog command")),
        }
    }

    /// Writes again one product's Item, or every drifted and missing one the
    /// reconciliation shows (`None`).
    fn resync_items(&self, key: Option<&str>) -> Reply {
        let targets = resync_targets(&self.reconciler, key)?;
        let n = self
            .reconciler
            .resync(&self.catalog.queue, &targets)
            .map_err(CommandError::unavailable)? as u64;
        let paused = if self.catalog.is_paused() {
            " (the catalog is paused: they wait in the queue)"
        } else {
            ""
        };
        let message = match key {
            Some(k) => format!("queued {k} to be written again from Stripe{paused}"),
            None => {
                let shown: Vec<&str> = targets.iter().take(5).map(String::as_str).collect();
                let more = if targets.len() > 5 { ", …" } else { "" };
                format!(
                    "queued {n} drifted or missing product(s) to be written again from Stripe ({}{more}){paused}",
                    shown.join(", ")
                )
            }
        };
        Ok(Outcome::new(message).with_count(n))
    }

    fn pause(&self, pipeline: Pipeline, paused: bool) -> Reply {
        match pipeline {
            Pipeline::Catalog => {
                let was = self.catalog.is_paused();
                let what = if paused {
                    "paused catalog pipeline"
                } else {
                    "resumed catalog pipeline"
                };
                self.catalog
                    .set_paused(paused)
                    .map_err(|e| CommandError::unavailable(format!("{what}: failed: {e}")))?;
                Ok(changed(Outcome::new(what), was != paused))
            }
            Pipeline::Compliance => {
                let c = self.compliance()?;
                let was = c.is_paused();
                let what = if paused {
                    "paused compliance pipeline (invoices wait; nothing is sent to DIAN)"
                } else {
                    "resumed compliance pipeline"
                };
                c.set_paused(paused).map_err(|e| {
                    let verb = if paused { "pause" } else { "resume" };
                    let stays = if was { "paused" } else { "running" };
                    CommandError::unavailable(format!(
                        "could not {verb} the compliance pipeline (it stays {stays}): {e}"
                    ))
                })?;
                Ok(changed(Outcome::new(what), was != paused))
            }
        }
    }
}

/// Whether a caller of `role` may act: a viewer (a viewer token, a console attached
/// read-only) may not, whichever front-end sent its command.
fn allowed(role: Role, actor: &str) -> Result<(), CommandError> {
    match role {
        Role::Operator => Ok(()),
        Role::Viewer => Err(CommandError::forbidden(format!(
            "{actor} is a viewer: it may read, not act"
        ))),
    }
}

fn changed(outcome: Outcome, changed: bool) -> Outcome {
    Outcome { changed, ..outcome }
}

/// An operator's word on a breaker: a state (CLOSED, FORCED_OPEN, DISABLED,
/// METRICS_ONLY) or a reset.
pub fn apply_breaker(
    downstreams: &[Arc<Downstream>],
    service: Service,
    action: BreakerAction,
    actor: &str,
) -> Reply {
    let name = service.name();
    let Some(d) = downstreams.iter().find(|d| d.name() == name) else {
        return Err(CommandError::not_found(format!("circuit {name:?}")));
    };
    let reason = format!("operator {actor}");
    let Some(state) = action.state_name().and_then(BreakerState::parse) else {
        d.breaker.reset(&reason);
        return Ok(Outcome::new(format!(
            "reset circuit {name} (CLOSED, metrics cleared)"
        )));
    };
    match d.breaker.transition(state, &reason) {
        Ok(true) => Ok(Outcome::new(format!("circuit {name} set to {state}"))),
        Ok(false) => Ok(Outcome::unchanged(format!(
            "circuit {name} already {state}"
        ))),
        Err(e) => Err(CommandError::conflict(e.to_string())),
    }
}

fn apply_bounds(catalog: &Catalog, pipeline: Pipeline, min: u32, max: u32) -> Reply {
    if pipeline != Pipeline::Catalog {
        return Err(CommandError::invalid(
            "pipeline",
            format!("the {pipeline} pipeline has no scaled workers to bound"),
        ));
    }
    let limit = catalog.max_workers();
    if max as usize > limit {
        return Err(CommandError::invalid(
            "max",
            format!("worker bounds must satisfy 1 ≤ min ≤ max ≤ {limit}"),
        ));
    }
    catalog
        .set_worker_bounds(min, max)
        .map_err(CommandError::conflict)?;
    Ok(Outcome::new(format!(
        "catalog workers bounded to {min}–{max}"
    )))
}

impl Publisher {
    /// [`Publisher::set_thresholds`], for `for_secs` when given: then each comes back
    /// to the value it had before at that time (a change of one already temporary
    /// keeps the value from before the first). A change for good ends a pending return.
    pub(super) fn set_thresholds_for(
        &mut self,
        changes: &[ThresholdChange],
        for_secs: Option<u64>,
        actor: &str,
    ) -> Reply {
        let before: Vec<(String, f64)> = changes
            .iter()
            .map(|c| {
                let pending = self.expiring.iter().find(|e| e.name == c.name);
                let old = pending.map_or_else(
                    || self.config.threshold(&c.name).unwrap_or(f64::NAN),
                    |e| e.back_to,
                );
                (c.name.clone(), old)
            })
            .collect();
        let outcome = self.set_thresholds(changes)?;
        self.expiring
            .retain(|e| !changes.iter().any(|c| c.name == e.name));
        let Some(secs) = for_secs else {
            return Ok(outcome);
        };
        let until_ms = self
            .now_ms()
            .saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX));
        for (c, (name, back_to)) in changes.iter().zip(before) {
            self.expiring.push(crate::protocol::ExpiringThreshold {
                name,
                value: c.value,
                back_to,
                until_ms,
                by: actor.to_owned(),
            });
        }
        let back: Vec<String> = self
            .expiring
            .iter()
            .filter(|e| e.until_ms == until_ms)
            .map(|e| format!("{} {}", e.name, e.back_to))
            .collect();
        Ok(Outcome {
            message: format!(
                "{} — for {}, then back to {} at {}",
                outcome.message,
                crate::protocol::format_duration(secs),
                back.join(", "),
                crate::protocol::utc_time(until_ms)
            ),
            ..outcome
        }
        .with_until_ms(until_ms))
    }

    /// Applies thresholds (all or nothing), saves them to the config file, and
    /// reconfigures the rules. A file that cannot be written leaves everything as it was.
    pub(super) fn set_thresholds(&mut self, changes: &[ThresholdChange]) -> Reply {
        if changes.is_empty() {
            return Err(CommandError::invalid("changes", "no threshold given"));
        }
        for c in changes {
            check_threshold(&c.name, c.value).map_err(|e| {
                let prefix = format!("{}: ", c.name);
                let reason = e.strip_prefix(&prefix).unwrap_or(&e).to_owned();
                CommandError::invalid(c.name.clone(), reason)
            })?;
        }
        let pairs: Vec<(String, f64)> = changes.iter().map(|c| (c.name.clone(), c.value)).collect();
        let mut next = self.config.clone();
        next.set_thresholds(&pairs)
            .map_err(|e| CommandError::invalid("changes", e))?;
        let diff: Vec<String> = pairs
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k} {} → {v}",
                    self.config
                        .threshold(k)
                        .map_or("?".into(), |o| o.to_string())
                )
            })
            .collect();
        let saved = match &self.config.source {
            Some(path) => {
                let company = self.config.company.as_deref();
                crate::config::persist_thresholds(path, company, &pairs)
                    .map_err(|e| CommandError::unavailable(format!("not applied: {e:#}")))?;
                match company {
                    Some(id) => format!("saved to {} for company {id} alone", path.display()),
                    None => format!("saved to {}", path.display()),
                }
            }
            None => "not saved: no config file; start with --config FILE to keep them".into(),
        };
        self.telemetry
            .configure(next.alerts.clone(), next.anomaly.clone());
        self.config = next;
        Ok(
            Outcome::new(format!("thresholds: {} ({saved})", diff.join(", ")))
                .with_count(pairs.len() as u64),
        )
    }
}

/// Answers one query (off the engine's loop: it reads the store).
pub(super) fn answer(store: &Store, compliance: Option<&Compliance>, query: Query) -> QueryReply {
    let unreadable =
        |e: crate::store::SqlError| CommandError::unavailable(format!("the store: {e}"));
    match query {
        Query::Invoices {
            status,
            search,
            limit,
        } => Ok(Answer::Invoices {
            // The compliance records where they are kept (shared on Postgres).
            invoices: match compliance {
                Some(c) => c
                    .invoices
                    .invoices(status, &search, limit)
                    .map_err(|e| CommandError::unavailable(format!("the store: {e}")))?,
                None => store.invoices(status, &search, limit).map_err(unreadable)?,
            },
        }),
        Query::Audit { filter } => Ok(Answer::Audit {
            entries: {
                filter.check()?;
                store.audit_query(&filter).map_err(unreadable)?
            },
        }),
        // Answered on the engine's loop, from the reconciler's view.
        Query::Reconciliation { .. } => Err(CommandError::unavailable(
            "the reconciliation is answered by the engine's loop",
        )),
        // Without the live reconciliation (the engine's loop adds it).
        Query::Chain { key } => super::chain::chain(store, &(), &key),
        Query::Bundle { .. } | Query::WhatIf { .. } => {
            Err(CommandError::unavailable("answered on the engine's loop"))
        }
        Query::AuditCount { filter } => Ok(Answer::AuditCount {
            total: {
                filter.check()?;
                store.audit_count(&filter).map_err(unreadable)?
            },
        }),
        // Answered on the engine's loop, where the command would run.
        Query::Preview { .. } => Err(CommandError::unavailable(
            "a preview is answered by the engine's loop",
        )),
        Query::InvoiceDetail { key } => {
            let c = compliance.ok_or_else(|| CommandError::conflict(COMPLIANCE_OFF))?;
            let record = c.find(&key)?;
            let history = c
                .invoices
                .invoice_history(&record.stripe_id)
                .map_err(|e| CommandError::unavailable(format!("the store: {e}")))?;
            let payload =
                serde_json::to_string_pretty(&compliance::alegra_body(&record)).unwrap_or_default();
            Ok(Answer::InvoiceDetail(Box::new(InvoiceDetail {
                record,
                history,
                payload,
            })))
        }
    }
}

/// The products a resync of `key` (one product, or every drifted and missing one with
/// `None`) writes again, or why there are none: what the command and its preview share.
pub(super) fn resync_targets(
    reconciler: &super::reconcile::Reconciler,
    key: Option<&str>,
) -> Result<Vec<String>, CommandError> {
    let targets = reconciler.resync_targets(key).map_err(|why| match key {
        Some(_) if why.starts_with("product") => CommandError::not_found(why),
        _ => CommandError::conflict(why),
    })?;
    if targets.is_empty() {
        return Err(CommandError::conflict(
            "nothing to resync: no Item drifted and none is missing",
        ));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use crate::protocol::{
        AlertMatcher, AuditEntry, Command, CommandError, JournalEntry, JournalResult, Outcome,
    };

    #[test]
    fn the_journal_reads_back_what_the_audit_line_says() {
        let silence = Command::SilenceAlerts {
            matcher: AlertMatcher::Prefix("queue: depth".into()),
            secs: 5400,
        };
        let cases = [
            (
                Ok(Outcome::new(
                    "silenced alerts matching \"queue: depth\" for 1h30m",
                )),
                JournalResult::Done,
                "silenced alerts matching \"queue: depth\" for 1h30m",
            ),
            (
                Err(CommandError::invalid("duration", "too long")),
                JournalResult::Refused,
                "duration: too long",
            ),
        ];
        for (reply, result, message) in cases {
            let entry = AuditEntry {
                id: 1,
                at_ms: 0,
                kind: "operator".into(),
                entity: "alerts".into(),
                actor: "api:ops@10.0.0.7".into(),
                message: super::audit_line(&silence, &reply),
                trace_id: None,
            };
            let j = JournalEntry::from_audit(&entry).unwrap_or_else(|| panic!("{entry:?}"));
            assert_eq!(j.command, "silence \"queue: depth\" 1h30m");
            assert_eq!((j.result, j.message.as_str()), (result, message));
            assert_eq!(
                j.cli.as_deref(),
                Some("syncctl ctl silence 'queue: depth' 1h30m")
            );
        }
    }

    #[test]
    fn what_a_caller_typed_is_audited_bounded_and_escaped() {
        assert_eq!(super::bounded("a\nb\u{0}c", 100), "a\\nb\\u{0}c");
        let long = "x".repeat(60_000);
        let b = super::bounded(&long, 120);
        assert_eq!(b.chars().count(), 121);
        assert!(b.ends_with('…'));
    }
}
