//! Impact previews ([`Query::Preview`](crate::protocol::Query::Preview)): what a bulk
//! command would do if it were sent now — items, calls per downstream and minutes of
//! its quota at the limit in force, what would be held and why, what runs first.
//!
//! It must never change anything nor call anyone: it reads the store, the
//! reconciliation, the cache, the breakers and the limiters. It picks its items with
//! the very functions the command then acts on (the failed jobs a retry re-queues, the
//! targets a resync queues, the keys an invalidation drops) and costs each with the
//! pipelines' own decisions ([`Catalog::job_cost`], [`Compliance::send_cost`]); the
//! real run puts the same estimate in its audit line ([`Ctx::estimate`]).

use std::sync::Arc;

use super::catalog::{Catalog, JobCost, Write};
use super::commands::Ctx;
use crate::connectors::quickbooks::BATCH_MAX;
use crate::protocol::{
    BreakerAction, CacheScope, Command, CommandError, DownstreamCost, ImpactPreview, PREVIEW_FIRST,
    Pipeline, Service,
};
use crate::resilience::Downstream;

/// Catalog jobs a preview costs one by one at most (a larger backlog is costed from
/// these, scaled).
const COSTED_MAX: usize = 100_000;

/// Calls summed per downstream while items are costed.
#[derive(Debug, Default, Clone, Copy)]
struct Calls {
    stripe: u64,
    quickbooks: u64,
    alegra: u64,
}

impl Ctx {
    /// What `command` would do now, or why it would be refused (as the real run would
    /// refuse it: nothing failed to retry, the reconciliation not ready…).
    pub fn preview(&self, command: &Command) -> Result<ImpactPreview, CommandError> {
        command.validate()?;
        let mut p = ImpactPreview {
            command: command.to_string(),
            ..Default::default()
        };
        match command {
            Command::RetryFailedJobs {} | Command::RetryJob { .. } => {
                let key = match command {
                    Command::RetryJob { key } => Some(key.as_str()),
                    _ => None,
                };
                let rows = self
                    .catalog
                    .store
                    .failed_jobs_to_requeue(super::catalog::JOB_KIND, key)
                    .map_err(|e| CommandError::unavailable(format!("the store: {e}")))?;
                if rows.is_empty() {
                    return Err(match key {
                        Some(k) => {
                            CommandError::not_found(format!("a failed catalog job for {k:?}"))
                        }
                        None => CommandError::conflict("no failed catalog job to retry"),
                    });
                }
                p.noun = "failed catalog jobs".into();
                self.catalog_jobs(&mut p, &rows, true);
            }
            Command::ResyncDrifted {} | Command::ResyncItem { .. } => {
                let key = match command {
                    Command::ResyncItem { key } => Some(key.as_str()),
                    _ => None,
                };
                let targets = super::commands::resync_targets(&self.reconciler, key)?;
                p.noun = "drifted or missing Items".into();
                // A resync's job carries no payload: the worker reads the product.
                let rows: Vec<(String, Option<String>)> =
                    targets.into_iter().map(|k| (k, None)).collect();
                self.catalog_jobs(&mut p, &rows, true);
            }
            Command::Resync {} => self.full_sync(&mut p)?,
            Command::RetryFailed {} | Command::RetryInvoice { .. } => {
                self.retried_invoices(&mut p, command)?;
            }
            Command::InvalidateCache { scope } => self.invalidation(&mut p, scope),
            Command::Breaker { service, action } => self.breaker(&mut p, *service, *action)?,
            Command::Resume { pipeline } => self.resumed(&mut p, *pipeline)?,
            _ => {
                return Err(CommandError::invalid(
                    "command",
                    format!(
                        "`{command}` is not a bulk action: previews are for retry-failed, retry-failed-jobs, resync, resync-drifted, invalidate, breaker and resume (and retry, retry-job, resync-item)"
                    ),
                ));
            }
        }
        // A resume is held by nothing it resumes itself.
        if let Command::Resume { pipeline } = command {
            let paused_why = format!("the {pipeline} pipeline is paused");
            if let Some(i) = p.held_why.iter().position(|w| w.starts_with(&paused_why)) {
                p.held_why.remove(i);
                if p.held_why.is_empty() {
                    p.held = 0;
                }
            }
        }
        Ok(p)
    }

    /// The estimate the real run of `command` puts in its audit line (None for a
    /// command without a preview, or one the preview would refuse).
    pub fn estimate(&self, command: &Command) -> Option<String> {
        matches!(
            command,
            Command::RetryFailed {}
                | Command::RetryFailedJobs {}
                | Command::Resync {}
                | Command::ResyncDrifted {}
        )
        .then(|| self.preview(command).ok())
        .flatten()
        .map(|p| p.estimate_words())
    }

    /// An operator's retry of one invoice or every FAILED one: each read at Alegra
    /// first, then sent if need be.
    fn retried_invoices(
        &self,
        p: &mut ImpactPreview,
        command: &Command,
    ) -> Result<(), CommandError> {
        let c = self
            .compliance
            .as_deref()
            .ok_or_else(|| CommandError::conflict(super::COMPLIANCE_OFF))?;
        let records = match command {
            Command::RetryInvoice { key } => vec![c.find(key)?],
            _ => c
                .invoices
                .invoices_in(crate::protocol::Status::Failed)
                .map_err(|e| CommandError::unavailable(format!("the store: {e}")))?
                .iter()
                .filter_map(|id| c.invoices.invoice(id).ok().flatten())
                .collect(),
        };
        if records.is_empty() {
            return Err(CommandError::conflict("no FAILED invoices to retry"));
        }
        p.noun = "invoices".into();
        self.invoices(p, &records, true);
        Ok(())
    }

    /// A pipeline resumed: the work waiting in it runs.
    fn resumed(&self, p: &mut ImpactPreview, pipeline: Pipeline) -> Result<(), CommandError> {
        let paused = match pipeline {
            Pipeline::Catalog => self.catalog.is_paused(),
            Pipeline::Compliance => self.compliance.as_deref().is_some_and(|c| c.is_paused()),
        };
        if !paused && (pipeline == Pipeline::Catalog || self.compliance.is_some()) {
            // The resume itself answers "changed: false": what is queued runs as it
            // would without it, and none of it is this command's doing.
            p.noun = match pipeline {
                Pipeline::Catalog => "queued catalog jobs",
                Pipeline::Compliance => "invoices waiting",
            }
            .into();
            p.notes.push(format!(
                "the {pipeline} pipeline is not paused: resuming it changes nothing"
            ));
            return Ok(());
        }
        match pipeline {
            Pipeline::Catalog => {
                p.noun = "queued catalog jobs".into();
                let rows = self.queued_catalog();
                self.catalog_jobs(p, &rows, false);
            }
            Pipeline::Compliance => {
                let c = self
                    .compliance
                    .as_deref()
                    .ok_or_else(|| CommandError::conflict(super::COMPLIANCE_OFF))?;
                p.noun = "invoices waiting".into();
                let records = c.backlog();
                self.invoices(p, &records, false);
            }
        }
        Ok(())
    }

    fn downstream(&self, name: &str) -> Option<&Arc<Downstream>> {
        self.downstreams.iter().find(|d| d.name() == name)
    }

    /// `calls` to `service` as the preview lists them (with its limit and circuit).
    fn cost(&self, service: &str, calls: u64) -> Option<DownstreamCost> {
        (calls > 0).then(|| match self.downstream(service) {
            Some(d) => {
                let view = d.view();
                DownstreamCost::new(
                    service,
                    calls,
                    view.limiter.effective_per_min,
                    view.breaker.state.name(),
                )
            }
            None => DownstreamCost::new(service, calls, 0, "CLOSED"),
        })
    }

    /// Why work needing `service` would wait now (its circuit refuses calls).
    fn refused_by(&self, service: &str) -> Option<String> {
        let d = self.downstream(service)?;
        let (admits, _) = d.breaker.admits_now();
        (!admits).then(|| {
            format!(
                "the {service} circuit is {}: they wait until it lets calls through",
                d.breaker.state().name()
            )
        })
    }

    fn queued_catalog(&self) -> Vec<(String, Option<String>)> {
        self.catalog
            .store
            .queued_jobs(super::catalog::JOB_KIND, COSTED_MAX)
            .unwrap_or_default()
    }

    /// Costs catalog jobs (key, payload) in the order they would run; `queued_after`:
    /// they join the queue behind what is queued now.
    fn catalog_jobs(
        &self,
        p: &mut ImpactPreview,
        rows: &[(String, Option<String>)],
        queued_after: bool,
    ) {
        let catalog: &Catalog = &self.catalog;
        let mut calls = Calls::default();
        let (mut updates, mut creates) = (0u64, 0u64);
        for (key, payload) in rows.iter().take(COSTED_MAX) {
            let JobCost { stripe, write } = catalog.job_cost(key, payload.as_deref());
            calls.stripe += stripe;
            match write {
                Write::None => {}
                Write::Update => updates += 1,
                Write::Create => creates += 1,
            }
        }
        // Two or more writes claimed together leave in batches, each operation one
        // call of the quota; a create finds its name in the bulk index (read first
        // if stale). One write alone goes as a single call; a single create finds
        // its name in the index when it is read and fresh, else looks it up first.
        calls.quickbooks = updates + creates;
        if creates > 0 {
            let fresh = catalog.index_reads(0) == 0;
            if updates + creates >= 2 {
                let items = self.reconciler.view(0).items;
                calls.quickbooks += catalog.index_reads(items);
            } else if !fresh {
                calls.quickbooks += creates;
            }
            p.notes.push(if fresh {
                format!("{creates} Item(s) to create: names found in the bulk index (no lookups)")
            } else {
                format!(
                    "{creates} Item(s) to create: a create claimed alone looks its name up first (one call more each)"
                )
            });
        }
        let n = rows.len() as u64;
        p.items = n;
        p.first = rows
            .iter()
            .take(PREVIEW_FIRST)
            .map(|(k, _)| k.clone())
            .collect();
        if queued_after {
            p.ahead = catalog.store.queued(super::catalog::JOB_KIND).unwrap_or(0);
        }
        let writes = updates + creates;
        if writes >= 2 {
            p.notes.push(format!(
                "QuickBooks writes leave in batches of up to {BATCH_MAX}: each operation is one call of the quota"
            ));
        }
        self.hold_catalog(p, calls);
        p.calls = [
            self.cost("quickbooks", calls.quickbooks),
            self.cost("stripe", calls.stripe),
        ]
        .into_iter()
        .flatten()
        .collect();
    }

    /// Holds catalog work: a paused pipeline, a circuit that refuses what it needs.
    fn hold_catalog(&self, p: &mut ImpactPreview, calls: Calls) {
        let mut why = Vec::new();
        if self.catalog.is_paused() {
            why.push("the catalog pipeline is paused: they wait in the queue".to_owned());
        }
        for (service, n) in [("quickbooks", calls.quickbooks), ("stripe", calls.stripe)] {
            if n > 0
                && let Some(w) = self.refused_by(service)
            {
                why.push(w);
            }
        }
        if !why.is_empty() {
            p.held = p.items;
            p.held_why = why;
        }
    }

    /// Costs invoices in the order they would run (`retried`: by an operator's retry).
    fn invoices(
        &self,
        p: &mut ImpactPreview,
        records: &[crate::protocol::InvoiceRecord],
        retried: bool,
    ) {
        let Some(c) = self.compliance.as_deref() else {
            return;
        };
        let calls = Calls {
            alegra: records.iter().map(|r| c.send_cost(r, retried)).sum(),
            ..Default::default()
        };
        p.items = records.len() as u64;
        p.first = records
            .iter()
            .take(PREVIEW_FIRST)
            .map(|r| r.number.clone())
            .collect();
        if retried {
            p.ahead = c.backlog().len() as u64;
        }
        let mut why = Vec::new();
        if c.is_paused() {
            why.push("the compliance pipeline is paused: nothing is sent to DIAN".to_owned());
        }
        if calls.alegra > 0
            && let Some(w) = self.refused_by("alegra")
        {
            why.push(w);
        }
        if !why.is_empty() {
            p.held = p.items;
            p.held_why = why;
        }
        p.notes
            .push("a DIAN that answers later costs a status read each".into());
        p.calls = self.cost("alegra", calls.alegra).into_iter().collect();
    }

    /// The full sync again: every product listed, those that disagree written.
    fn full_sync(&self, p: &mut ImpactPreview) -> Result<(), CommandError> {
        let state = self
            .catalog
            .metrics
            .full_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !state.done {
            return Err(CommandError::conflict(format!(
                "a full sync is already running ({} pages, {} products listed so far)",
                state.pages, state.listed
            )));
        }
        let view = self.reconciler.view(0);
        let products = if view.ready {
            view.products
        } else {
            state.listed
        };
        let page = u64::from(self.catalog.settings().page_size.max(1));
        let mut calls = Calls {
            stripe: products / page + 1,
            ..Default::default()
        };
        // Listed products carry their prices: only those that disagree are written.
        let (updates, creates) = (view.drifted.count, view.missing.count);
        calls.quickbooks = updates + creates;
        if creates > 0 {
            calls.quickbooks += self.catalog.index_reads(view.items);
        }
        if !view.ready {
            p.notes.push(format!(
                "the reconciliation is not ready ({}): writes are not counted",
                view.status
            ));
        }
        p.noun = "products listed again".into();
        p.items = products;
        p.ahead = self
            .catalog
            .store
            .queued(super::catalog::JOB_KIND)
            .unwrap_or(0);
        p.first = vec!["the newest Stripe products first, 1 page at a time".into()];
        p.notes.push(format!(
            "{updates} drifted and {creates} missing Item(s) written, the rest left as they are"
        ));
        self.hold_catalog(p, calls);
        p.calls = [
            self.cost("stripe", calls.stripe),
            self.cost("quickbooks", calls.quickbooks),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(())
    }

    /// Cache entries dropped; each Item looked up by name again when next synced.
    fn invalidation(&self, p: &mut ImpactPreview, scope: &CacheScope) {
        let mut keys = {
            let c = self.catalog.cache.lock().unwrap_or_else(|e| e.into_inner());
            match scope {
                CacheScope::All => c.keys(),
                CacheScope::Key(k) => c.keys().into_iter().filter(|x| x == k).collect(),
                CacheScope::Pattern(pat) => c.pattern_keys(pat),
                CacheScope::Tag(t) => c.tag_keys(t),
            }
        };
        keys.sort();
        let lookups = keys.iter().filter(|k| k.starts_with("item:name:")).count();
        p.noun = "cache entries".into();
        p.items = keys.len() as u64;
        p.first = keys.into_iter().take(PREVIEW_FIRST).collect();
        // Dropping calls no one: the cost comes later, product by product.
        p.notes.push(format!(
            "later: up to {lookups} QuickBooks name lookups, one as each of those products next syncs"
        ));
    }

    /// A breaker set: the work waiting on the service is held (force-open) or let
    /// through (the rest).
    fn breaker(
        &self,
        p: &mut ImpactPreview,
        service: Service,
        action: BreakerAction,
    ) -> Result<(), CommandError> {
        let name = service.name();
        let Some(d) = self.downstream(name) else {
            return Err(CommandError::not_found(format!("circuit {name:?}")));
        };
        match service {
            Service::QuickBooks | Service::Stripe => {
                p.noun = "queued catalog jobs".into();
                let rows = self.queued_catalog();
                self.catalog_jobs(p, &rows, false);
            }
            Service::Alegra => {
                p.noun = "invoices waiting".into();
                if let Some(c) = self.compliance.as_deref() {
                    let records = c.backlog();
                    self.invoices(p, &records, false);
                }
            }
        }
        let now = d.breaker.state().name();
        // Closing a circuit that opened on failures sends the work to a downstream
        // that was failing: the preview says why it opened, so the calls it counts
        // are not read as calls that will succeed.
        if action != BreakerAction::ForceOpen && matches!(now, "OPEN" | "HALF_OPEN") {
            let view = d.view().breaker;
            let why = view
                .last_transition
                .map(|t| format!(": {}", t.reason))
                .unwrap_or_default();
            p.notes.push(format!(
                "the {name} circuit is {now} because calls failed{why}; closing it sends these calls now, and while {name} still fails they fail too and spend their attempts"
            ));
        }
        // What this circuit refuses now stops being a reason once it is set.
        p.held_why
            .retain(|w| !w.starts_with(&format!("the {name} circuit")));
        if action != BreakerAction::ForceOpen {
            let to = action.state_name().unwrap_or("CLOSED");
            for c in &mut p.calls {
                if c.service == name {
                    c.circuit = to.into();
                }
            }
        } else {
            let needs = p.calls.iter().any(|c| c.service == name);
            for c in &mut p.calls {
                if c.service == name {
                    c.circuit = "FORCED_OPEN".into();
                }
            }
            if needs {
                p.held_why.push(format!(
                    "the {name} circuit would be FORCED_OPEN (now {now}): they wait until you close it; new work too"
                ));
            }
        }
        p.held = if p.held_why.is_empty() { 0 } else { p.items };
        Ok(())
    }
}
