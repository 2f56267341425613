//! What one operator's console holds: the snapshot on screen, the screen and selection,
//! prompts and dialogs, the flash line, and the detail query in flight. Per-operator
//! state lives here, never in the engine. Rendering reads it through `&App` and the
//! read-only helpers below; only `update::update` changes it (this module does not
//! know that one: the edge runs update → state) — nothing here mutates, sends or draws.

use std::sync::Arc;

use super::command_line::{self, CommandLine, History};
pub use super::selection::{Selection, Step};
pub use super::tab::Tab;
use super::theme::Theme;
use crate::protocol::{
    AttachedConsole, AuditEntry, BreakerAction, CacheScope, Command, CompanyRow, CompanyTag,
    Discrepancy, ImpactPreview, InvoiceDetail, InvoiceRecord, KnownValues, LinkState, OPERATOR,
    Pipeline, SandboxFaults, Service, Shown, Snapshot, State as BreakerState,
    Status as InvoiceStatus, ThresholdChange, Watching, WhatIf, complete_with, filter_words,
    has_words, operator,
};

/// A threshold as the console writes it: no trailing zeros.
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// An amount as the Reconcile screen writes it: two decimals, thousands grouped with
/// a thin space (`12 345.60`).
pub fn money(v: f64) -> String {
    crate::protocol::text::amount(v)
}

/// A discrepancy's id in the Reconcile list: its product's, or its Item's (an orphan).
pub fn recon_id(d: &Discrepancy) -> String {
    match (&d.product_id, &d.item_id) {
        (Some(p), _) => format!("product:{p}"),
        (None, Some(i)) => format!("item:{i}"),
        (None, None) => String::new(),
    }
}

/// Entries the engine reads per page of the Events filter.
pub const EVENTS_PAGE: usize = 200;

/// The Events filter searched in the engine's store: the pages found so far and the
/// true total, for one filter text (and journal view).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventsSearch {
    /// The words searched, as typed (trimmed).
    pub text: String,
    pub journal: bool,
    /// Matches found, newest first, the pages answered so far.
    pub entries: Vec<AuditEntry>,
    /// The first page has been answered.
    pub loaded: bool,
    /// Older matches may follow the last page.
    pub more: bool,
    /// A page is asked and not yet answered (one at a time).
    pub pending: bool,
    /// Matches over the whole trail, once the engine has counted them.
    pub total: Option<u64>,
    pub counting: bool,
    /// Why the engine could not search (a page or the total): the screen says so, and
    /// shows what it holds itself.
    pub failed: Option<String>,
    /// Ticks of the console's 1-second clock before what failed (a page, the total, or
    /// both) is asked again; `None` while nothing waits for it.
    pub retry_in: Option<u32>,
    /// Retries so far: each waits twice as long as the one before, up to
    /// [`EVENTS_RETRY_MAX_TICKS`].
    pub retries: u32,
    /// What failed and is asked again: the next page (`more` was cleared), the total.
    pub page_failed: bool,
    pub total_failed: bool,
    /// The engine refused the search itself: nothing of it is asked again.
    pub refused: bool,
    /// The newest entry the snapshot held when the search was asked: newer matches
    /// come from the snapshot (live), on top of the pages.
    pub since_id: i64,
}

/// The longest wait before a failed Events search is asked again (ticks of 1 s).
pub const EVENTS_RETRY_MAX_TICKS: u32 = 30;

impl EventsSearch {
    /// A part of the search failed (`page` or the total): said why. When the engine
    /// could not search for now (`again`: busy, stopping, its store unreadable, the
    /// link down), asked again after the next wait (2 s, then 4, 8, 16, 30 at most);
    /// a search it refuses (an invalid filter, a token that may not read) is not asked
    /// again: the same words would be refused again, every 30 s for as long as the
    /// console stays open. Another filter is another search.
    pub fn failed_now(&mut self, why: String, page: bool, again: bool) {
        // (A refusal's reason stays: a part failing for now afterwards says less.)
        if !(self.refused && again) {
            self.failed = Some(why);
        }
        if page {
            self.page_failed = true;
            self.more = false;
        } else {
            self.total_failed = true;
        }
        if !again {
            self.refused = true;
            self.retry_in = None;
        } else if self.retry_in.is_none() && !self.refused {
            self.retry_in = Some((2u32 << self.retries.min(4)).min(EVENTS_RETRY_MAX_TICKS));
            self.retries += 1;
        }
    }

    /// A tick of the console's clock: once the wait is over, what failed is asked again
    /// (by the next look at the search).
    pub fn tick(&mut self) {
        match self.retry_in {
            Some(n) if n > 1 => self.retry_in = Some(n - 1),
            Some(_) => self.ask_again_now(),
            None => {}
        }
    }

    /// What failed is asked again by the next look at the search, its wait cut short
    /// (the wait over, or the link back): in flight, not failed (a page waits until
    /// the operator scrolls near the end, as any page does).
    pub fn ask_again_now(&mut self) {
        self.retry_in = None;
        self.failed = None;
        if std::mem::take(&mut self.page_failed) {
            self.more = true;
        }
        if std::mem::take(&mut self.total_failed) {
            self.counting = false;
        }
    }

    /// A part answered: once no failed part waits for its next try, the waits start
    /// from 2 s again.
    pub fn answered(&mut self) {
        if !self.page_failed && !self.total_failed {
            self.failed = None;
            self.retries = 0;
        }
    }

    /// The query for this search: its next page (`before`: older than that id), or its
    /// total (`limit` ignored).
    pub fn filter(&self, before: Option<i64>) -> crate::protocol::AuditFilter {
        crate::protocol::AuditFilter {
            kinds: if self.journal {
                vec![OPERATOR.to_owned()]
            } else {
                Vec::new()
            },
            text: Some(self.text.clone()),
            before_id: before,
            limit: EVENTS_PAGE,
            ..Default::default()
        }
    }

    /// Whether `f` was asked for this search.
    pub fn asked(&self, f: &crate::protocol::AuditFilter) -> bool {
        f.text.as_deref() == Some(self.text.as_str()) && f.kinds.is_empty() != self.journal
    }
}

/// A question that needs an answer before anything happens; focus starts on Cancel.
#[derive(Debug, Clone, PartialEq)]
pub enum Confirm {
    Quit,
    /// Set a circuit's state (`None`: reset to CLOSED with empty metrics).
    Breaker {
        service: String,
        to: Option<BreakerState>,
    },
    Bounds {
        min: u32,
        max: u32,
    },
    /// Retry every FAILED invoice; the count is what the operator saw.
    RetryFailed {
        count: u64,
    },
    /// Queue again every catalog job that failed; the count is what the operator saw.
    RetryFailedJobs {
        count: u64,
    },
    /// Run the catalog's full sync again; `products` is how many the store knows of.
    Resync {
        products: u64,
    },
    /// Write again every drifted and missing Item, as the reconciliation showed them.
    ResyncDrifted {
        drifted: u64,
        missing: u64,
        /// Drifted and missing amounts, per currency.
        amounts: Vec<crate::protocol::Money>,
    },
    /// Resume a paused pipeline with work waiting (`backlog` as the snapshot showed).
    Resume {
        pipeline: Pipeline,
        backlog: u64,
    },
    /// Drop cached QuickBooks lookups; `entries` is how many the cache holds now.
    InvalidateCache {
        scope: CacheScope,
        entries: usize,
    },
    /// Apply the thresholds staged in Settings: (name, old, new), and the file they
    /// are saved to.
    Thresholds {
        changes: Vec<(String, f64, f64)>,
        file: Option<String>,
        /// For how long (seconds), after which each comes back to its old value; None:
        /// for good.
        for_secs: Option<u64>,
    },
}

/// What the one-line prompt in the footer is asking for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptKind {
    /// Catalog worker bounds `MIN-MAX`.
    Bounds,
    /// A cache pattern, `tag:NAME`, or nothing for all.
    Cache,
    /// How long to silence the selected alert (`30m`, `2h`, `90s`).
    Silence { matcher: String },
    /// A new value for a threshold.
    Threshold { name: String },
}

impl PromptKind {
    pub fn label(&self) -> String {
        match self {
            PromptKind::Bounds => "catalog workers MIN-MAX".into(),
            PromptKind::Cache => "invalidate cache (empty = all, item:* pattern, tag:NAME)".into(),
            PromptKind::Silence { matcher } => format!("silence {matcher} for (30m, 2h, 1d)"),
            PromptKind::Threshold { name } => format!("{name} (VALUE, or VALUE for 1h)"),
        }
    }

    /// What Enter does with what was typed, for the prompt's hint: a threshold is only
    /// staged (`A` applies the staged changes); bounds and an invalidation are confirmed
    /// first; a silence acts at once.
    pub fn enter_does(&self) -> &'static str {
        match self {
            PromptKind::Threshold { .. } => "Enter stages (A applies)",
            PromptKind::Bounds | PromptKind::Cache => "Enter asks to confirm",
            PromptKind::Silence { .. } => "Enter silences",
        }
    }
}

impl Confirm {
    /// The command the confirmation sends (None for the quit, which drains).
    pub fn command(&self) -> Option<Command> {
        Some(match self {
            Confirm::Quit => return None,
            Confirm::Breaker { service, to } => {
                let service = service.parse::<Service>().ok()?;
                let action = match to {
                    None => BreakerAction::Reset,
                    Some(BreakerState::ForcedOpen) => BreakerAction::ForceOpen,
                    Some(BreakerState::Disabled) => BreakerAction::Disable,
                    Some(BreakerState::MetricsOnly) => BreakerAction::MetricsOnly,
                    Some(_) => BreakerAction::Close,
                };
                Command::Breaker { service, action }
            }
            Confirm::Bounds { min, max } => Command::WorkerBounds {
                pipeline: Pipeline::Catalog,
                min: *min,
                max: *max,
            },
            Confirm::RetryFailed { .. } => Command::RetryFailed {},
            Confirm::RetryFailedJobs { .. } => Command::RetryFailedJobs {},
            Confirm::Resync { .. } => Command::Resync {},
            Confirm::ResyncDrifted { .. } => Command::ResyncDrifted {},
            Confirm::Resume { pipeline, .. } => Command::Resume {
                pipeline: *pipeline,
            },
            Confirm::InvalidateCache { scope, .. } => Command::InvalidateCache {
                scope: scope.clone(),
            },
            Confirm::Thresholds {
                changes, for_secs, ..
            } => Command::SetThresholds {
                changes: changes
                    .iter()
                    .map(|(n, _, v)| ThresholdChange::new(n.clone(), *v))
                    .collect(),
                for_secs: *for_secs,
            },
        })
    }

    /// The command whose impact preview the confirmation shows: every bulk action's.
    pub fn previewed(&self) -> Option<Command> {
        match self {
            Confirm::Quit | Confirm::Bounds { .. } | Confirm::Thresholds { .. } => None,
            _ => self.command(),
        }
    }

    pub fn title(&self) -> String {
        match self {
            Confirm::Quit => "Quit syncctl?".into(),
            Confirm::Breaker { service, to: None } => format!("Reset the {service} circuit?"),
            Confirm::Breaker {
                service,
                to: Some(s),
            } => format!("Set the {service} circuit to {s}?"),
            Confirm::Bounds { .. } => "Change catalog worker bounds?".into(),
            Confirm::RetryFailed { count } => format!("Retry {count} FAILED invoices?"),
            Confirm::RetryFailedJobs { count } => {
                format!("Retry {count} failed catalog jobs?")
            }
            Confirm::Resync { .. } => "Run the full sync again?".into(),
            Confirm::ResyncDrifted {
                drifted, missing, ..
            } => {
                format!("Resync {} Item(s)?", drifted + missing)
            }
            Confirm::InvalidateCache { scope, .. } => format!("Invalidate cache: {scope}?"),
            Confirm::Resume { pipeline, backlog } => {
                format!("Resume the {pipeline} pipeline ({backlog} waiting)?")
            }
            Confirm::Thresholds { changes, .. } => {
                format!("Apply {} threshold change(s)?", changes.len())
            }
        }
    }
    pub fn effect(&self) -> String {
        match self {
            Confirm::Quit => "The engine stops claiming work, finishes what is in flight, then exits. Queued work stays queued for the next start.".into(),
            Confirm::Breaker { service, to: None } => format!("Every call to {service} is let through again: the circuit goes CLOSED with an empty window and the initial open wait."),
            Confirm::Breaker { service, to: Some(BreakerState::ForcedOpen) } => format!("Every call to {service} is refused without touching the network until you close it. Work waits in its queue."),
            Confirm::Breaker { service, to: Some(BreakerState::Disabled) } => format!("Every call to {service} is let through and nothing is recorded: the circuit can no longer protect it."),
            Confirm::Breaker { service, to: Some(BreakerState::MetricsOnly) } => format!("Calls to {service} are measured but the circuit never opens."),
            Confirm::Breaker { service, to: Some(s) } => format!("The {service} circuit goes {s}; calls are let through and judged afresh."),
            Confirm::RetryFailed { count } => format!("{count} invoices go back to the queue with a fresh retry schedule. Those already at Alegra are read there first, so none is issued twice."),
            Confirm::RetryFailedJobs { count } => format!("{count} products whose sync failed past its last attempt go back to the catalog queue with fresh attempts. An Item that exists is updated, never created twice."),
            Confirm::Resync { products } => format!("Every Stripe product is listed again and checked against its QuickBooks Item ({products} known now); Items that match are left as they are."),
            Confirm::ResyncDrifted { drifted, missing, amounts } => format!("{drifted} drifted, {missing} missing: {} Item(s) written again from Stripe through the catalog queue ({} involved). Orphans are left alone.", drifted + missing, crate::protocol::Money::list(amounts)),
            Confirm::Bounds { min, max } => format!("The auto-scaler keeps the catalog pipeline between {min} and {max} workers; the current target is clamped into that range at once."),
            Confirm::Resume { pipeline: Pipeline::Catalog, backlog } => format!("Workers claim again: the {backlog} queued catalog jobs run, oldest due first."),
            Confirm::Resume { backlog, .. } => format!("Invoices are sent to DIAN again: the {backlog} waiting go first, by deadline."),
            Confirm::InvalidateCache { scope: CacheScope::All, entries } => format!("All {entries} cached QuickBooks lookups are dropped; the next syncs look Items up in QuickBooks again."),
            Confirm::InvalidateCache { scope, entries } => format!("Cached QuickBooks lookups matching {scope} are dropped (the cache holds {entries} now); those Items are looked up again when next needed."),
            Confirm::Thresholds { changes, file, for_secs } => {
                let diff: Vec<String> = changes.iter().map(|(n, old, new)| format!("{n}: {} → {}", num(*old), num(*new))).collect();
                let until = match for_secs {
                    Some(s) => format!(" For {}, then each comes back to its old value (audited).", crate::protocol::format_duration(*s)),
                    None => String::new(),
                };
                let saved = match file {
                    Some(f) => format!("saved to {f} (comments kept)"),
                    None => "NOT saved: no config file, so they last until the engine stops".into(),
                };
                format!("{}. Alerts are judged against the new values at once; {saved}.{until}", diff.join("; "))
            }
        }
    }
    pub fn action_word(&self) -> &'static str {
        match self {
            Confirm::Quit => "Quit",
            Confirm::Breaker { to: None, .. } => "Reset",
            Confirm::Breaker { .. } | Confirm::Bounds { .. } | Confirm::Thresholds { .. } => {
                "Apply"
            }
            Confirm::RetryFailed { .. } | Confirm::RetryFailedJobs { .. } => "Retry",
            Confirm::Resync { .. } | Confirm::ResyncDrifted { .. } => "Sync",
            Confirm::Resume { .. } => "Resume",
            Confirm::InvalidateCache { .. } => "Invalidate",
        }
    }
}

/// The entity chain asked for and, once the engine answered, the chain or why not.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainPanel {
    pub key: String,
    pub answer: Option<Result<crate::protocol::EntityChain, String>>,
    /// Lines scrolled off the top.
    pub scroll: usize,
}

pub struct App {
    pub snapshot: Arc<Snapshot>,
    pub tab: Tab,
    pub theme: Theme,
    pub help: bool,
    /// How far the open help (`?` or `:help`) is scrolled down, in lines (the overlay
    /// clamps it to what there is).
    pub help_scroll: u16,
    /// The panel of who is attached (`W`, `:who`).
    pub who: bool,
    /// The entity chain panel (`L` on a list, `:chain KEY`).
    pub chain: Option<ChainPanel>,
    pub confirm: Option<Confirm>,
    /// True when focus is on the confirming button (starts on Cancel).
    pub confirm_focus_ok: bool,
    pub frozen: bool,
    /// Rows scrolled away from the newest event (0 = follow live).
    pub events_offset: usize,
    pub flash: Option<String>,
    pub quitting: bool,
    pub actor: String,
    /// Row selected on the Circuits screen.
    pub circuit: usize,
    /// Text typed at the footer prompt (`Some` while it is open), and what it asks.
    pub prompt: Option<String>,
    pub prompt_kind: PromptKind,
    /// Throughput: the charts' window (0: 1 min, 1: 5 min, 2: 1 h).
    pub chart_window: usize,
    /// Alerts screen: the selected alert, by id.
    pub alert_sel: Selection,
    /// Reconcile: the selected discrepancy, by product or Item id.
    pub recon_sel: Selection,
    /// Settings: the selected threshold, and the values staged but not applied.
    pub setting_row: usize,
    pub staged: Vec<(String, f64)>,
    /// Settings: the engine's what-if for each staged value (name, value, the answer
    /// or why there is none), asked when the value was staged.
    pub what_ifs: Vec<(String, f64, Result<WhatIf, String>)>,
    /// The open confirmation's impact preview: the command asked about, and the
    /// engine's answer once it came (or why there is none).
    pub preview: Option<(Command, Option<Result<ImpactPreview, String>>)>,
    /// Settings: how long the staged values last once applied (`12 for 1h` at the
    /// prompt); None: for good.
    pub staged_for: Option<u64>,
    /// The demo's sandbox, for the outage toggle (None on a live engine).
    pub sandbox: Option<Arc<dyn SandboxFaults>>,
    /// DIAN queue: the selected invoice (by Stripe id), state filter, search text
    /// (`search_open` while typed), and whether the detail pane shows the payload
    /// instead of the history.
    pub dian_sel: Selection,
    pub dian_filter: Option<InvoiceStatus>,
    pub dian_search: String,
    pub search_open: bool,
    /// Events: the filter typed after `/`.
    pub events_filter: String,
    /// Events: the operator journal only (`J`).
    pub events_journal: bool,
    /// Events: the filter's matches over the whole trail, as the engine answers them
    /// page by page (the snapshot holds only the newest entries).
    pub events_search: Option<EventsSearch>,
    /// The Events searches' asks not yet answered (a page or a total), each with the
    /// `since_id` of the search that asked it: a search typed again while its last
    /// ask is on its way (`a`, `ax`, `a`) takes that ask as its own, not a second.
    pub events_in_flight: Vec<(crate::protocol::Query, i64)>,
    /// Counts the times what the console held for its company was dropped (a switch
    /// of company): an answer to a query asked before the latest is another company's
    /// (or of a view left), and is not taken ([`super::update::Msg::Answer`]).
    pub company_epoch: u64,
    pub show_payload: bool,
    /// The payload's first row shown (`[` / `]`); back to the top for another invoice.
    pub payload_scroll: u16,
    /// The open invoice's record and history, as the engine last answered the query
    /// for it (shown only while that invoice is the selected one).
    pub detail: Option<InvoiceDetail>,
    /// The detail query: which invoice was last asked for, and whether its answer is
    /// still awaited (one query at a time).
    pub detail_asked: Option<String>,
    pub detail_pending: bool,
    /// The terminal hung up (SIGHUP): nothing to draw on or read from while the
    /// engine drains.
    pub hung_up: bool,
    /// Where this console stands with its engine: hosting it, attached, reconnecting.
    pub link: LinkState,
    /// The consoles attached to the engine over the network.
    pub consoles: Vec<AttachedConsole>,
    /// The `:` line while it is open, and the lines run from it this session.
    pub command_line: Option<CommandLine>,
    pub history: History,
    /// The commands the `:` line takes are shown (`:help`); any key closes them.
    pub commands_help: bool,
    /// Read-only: the engine actions of the key table are neither shown nor carried
    /// out, and the `:` line sends no command (`--read-only`, a viewer token).
    pub read_only: bool,
    /// Every company the engine's process serves, each one's row (empty for one
    /// company: no selector).
    pub companies: Vec<CompanyRow>,
    /// The company the snapshot is of, as the link says (None: it did not say).
    pub company: Option<CompanyTag>,
    /// All companies, or the one whose snapshot is shown and to which every command
    /// goes ([`App::company`]).
    pub watching: Watching,
    /// The company picker (`@`), open: the row selected (0: all, then each company).
    pub picker: Option<usize>,
}

impl App {
    pub fn new(snapshot: Arc<Snapshot>, theme: Theme) -> Self {
        Self {
            snapshot,
            tab: Tab::Overview,
            theme,
            help: false,
            help_scroll: 0,
            confirm: None,
            confirm_focus_ok: false,
            frozen: false,
            events_offset: 0,
            flash: None,
            quitting: false,
            actor: operator(),
            circuit: 0,
            prompt: None,
            prompt_kind: PromptKind::Bounds,
            chart_window: 0,
            alert_sel: Selection::default(),
            recon_sel: Selection::default(),
            setting_row: 0,
            staged: Vec::new(),
            what_ifs: Vec::new(),
            preview: None,
            staged_for: None,
            sandbox: None,
            dian_sel: Selection::default(),
            dian_filter: None,
            dian_search: String::new(),
            search_open: false,
            events_filter: String::new(),
            events_journal: false,
            events_search: None,
            events_in_flight: Vec::new(),
            company_epoch: 0,
            show_payload: false,
            payload_scroll: 0,
            detail: None,
            detail_asked: None,
            detail_pending: false,
            hung_up: false,
            link: LinkState::Hosted,
            consoles: Vec::new(),
            command_line: None,
            history: History::default(),
            commands_help: false,
            who: false,
            chain: None,
            read_only: false,
            companies: Vec::new(),
            company: None,
            watching: Watching::One(String::new()),
            picker: None,
        }
    }

    /// The company the snapshot is of, as the link says (one company: its tag, or none).
    #[must_use]
    pub fn with_company(mut self, company: Option<CompanyTag>) -> Self {
        self.watching = Watching::One(company.as_ref().map(|c| c.id.clone()).unwrap_or_default());
        self.company = company;
        self
    }

    /// The companies' rows (several: the selector `@` and the header's company).
    #[must_use]
    pub fn with_companies(mut self, rows: Vec<CompanyRow>) -> Self {
        self.companies = rows;
        self
    }

    /// Whether the engine's process serves several companies (the selector shows).
    pub fn several(&self) -> bool {
        self.companies.len() > 1
    }

    /// Whether the console shows every company (the Overview's rows; nothing acts).
    pub fn watching_all(&self) -> bool {
        self.several() && self.watching == Watching::All
    }

    /// The company every command names: the one watched (None: one company, or the
    /// link did not say which).
    /// How company `id` is named: its row's label, else the linked company's, else the id.
    pub fn company_label(&self, id: &str) -> String {
        self.companies
            .iter()
            .map(|r| &r.company)
            .chain(self.company.as_ref())
            .find(|c| c.id == id)
            .map_or_else(|| id.to_owned(), CompanyTag::label)
    }

    pub fn watched(&self) -> Option<&str> {
        match &self.watching {
            Watching::One(id) if !id.is_empty() => Some(id),
            _ => None,
        }
    }

    /// The picker's rows: "all companies", then each company (its label), in order.
    pub fn picker_rows(&self) -> Vec<(Watching, String)> {
        let mut rows = vec![(
            Watching::All,
            format!("all companies ({})", self.companies.len()),
        )];
        rows.extend(
            self.companies
                .iter()
                .map(|r| (Watching::One(r.company.id.clone()), r.company.label())),
        );
        rows
    }

    /// The picker's row of what is watched now.
    pub fn picker_row(&self) -> usize {
        self.picker_rows()
            .iter()
            .position(|(w, _)| *w == self.watching)
            .unwrap_or(0)
    }

    /// The flash line when "all companies" is shown and `what` would act on one.
    pub fn pick_first(&self, what: &str) -> String {
        format!(
            "all companies shown: {what} acts on one company — pick it with @ first ({})",
            self.companies
                .iter()
                .map(|r| r.company.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Read-only (`--read-only`, or attached with a viewer token): actions are hidden
    /// and refused, views and `q` still work.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Tab completion for the `:` line: the console's own words (`help`, `quit`,
    /// screens) and, unless read-only, the engine's commands, with the invoices,
    /// alerts and thresholds the snapshot names.
    pub fn command_completions(&self, line: &str) -> Vec<String> {
        let s = &self.snapshot;
        let invoices: Vec<&str> = s
            .compliance
            .invoices
            .iter()
            .map(|r| r.number.as_str())
            .collect();
        let alerts: Vec<&str> = s.telemetry.alerts.iter().map(|a| a.id.as_str()).collect();
        let thresholds: Vec<&str> = s
            .telemetry
            .thresholds
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let mut lines = if self.read_only {
            Vec::new()
        } else {
            let known = KnownValues {
                invoices: &invoices,
                alerts: &alerts,
                thresholds: &thresholds,
            };
            complete_with(line, known)
        };
        lines.extend(command_line::local_words().into_iter().filter(|w| {
            !line.contains(char::is_whitespace)
                && w.get(..line.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(line))
        }));
        lines
    }

    /// The flash line when this read-only console is asked for `what` (an action's
    /// [`engine_action`](super::keymap::Action::engine_action), or a typed command):
    /// an incident bundle has no engine to act on; an attached viewer may not act.
    pub fn refusal(&self, what: &str) -> String {
        match &self.link {
            LinkState::Bundle { .. } => format!(
                "incident bundle: {what} is not possible — a frozen copy, no engine to act on"
            ),
            _ => super::keymap::read_only_refusal(what),
        }
    }

    /// The demo's sandbox, for the outage toggle and the Circuits screen.
    pub fn with_sandbox(mut self, sandbox: Option<Arc<dyn SandboxFaults>>) -> Self {
        self.sandbox = sandbox;
        self
    }

    pub fn shows_list(&self) -> bool {
        matches!(
            self.tab,
            Tab::Events | Tab::Circuits | Tab::Dian | Tab::Alerts | Tab::Settings | Tab::Reconcile
        )
    }

    /// The Reconcile rows' ids (`product:ID`, or `item:ID` for an orphan), in order.
    pub fn recon_ids(&self) -> Vec<String> {
        self.snapshot
            .reconciliation
            .rows
            .iter()
            .map(recon_id)
            .collect()
    }

    /// The selected discrepancy (`None` when it has left the list: fixed, or gone).
    pub fn selected_discrepancy(&self) -> Option<&Discrepancy> {
        let ids = self.recon_ids();
        let row = self.recon_sel.row_in(&ids)?;
        self.snapshot.reconciliation.rows.get(row)
    }

    /// The ids of the alerts pending or firing, as listed.
    pub fn alert_ids(&self) -> Vec<&str> {
        let alerts = &self.snapshot.telemetry.alerts;
        alerts.iter().map(|a| a.id.as_str()).collect()
    }

    /// The selected alert's id (`None` when it has left the list: see
    /// [`App::alert_left`]).
    pub fn selected_alert(&self) -> Option<String> {
        let ids = self.alert_ids();
        self.alert_sel.row_in(&ids).map(|i| ids[i].to_owned())
    }

    /// What the Alerts screen and its keys say when the selected alert is no longer
    /// pending or firing.
    pub fn alert_left(&self) -> Option<String> {
        let ids = self.alert_ids();
        let id = self.alert_sel.gone(&ids)?;
        Some(format!("{id} is no longer pending or firing"))
    }

    /// The selected threshold's name and value in force.
    pub fn selected_setting(&self) -> Option<(String, f64)> {
        let t = &self.snapshot.telemetry.thresholds;
        t.get(self.setting_row.min(t.len().saturating_sub(1)))
            .cloned()
    }

    /// The what-if of the value staged for `name`, as one line: the firings over the
    /// recorded history with the value in force and with the staged one (or why there
    /// is none, or that it is being replayed).
    pub fn what_if_line(&self, name: &str) -> Option<String> {
        let staged = self.staged(name)?;
        let found = self
            .what_ifs
            .iter()
            .find(|(n, v, _)| n == name && *v == staged);
        Some(match found {
            None => format!("what-if {name} → {}: replaying the last hour…", num(staged)),
            Some((_, _, Ok(w))) => w.summary(),
            Some((_, _, Err(why))) => format!("what-if {name}: {why}"),
        })
    }

    /// The value staged for `name`, if any.
    pub fn staged(&self, name: &str) -> Option<f64> {
        self.staged.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The DIAN queue's rows after the state filter and the search.
    pub fn dian_rows(&self) -> Vec<&InvoiceRecord> {
        let q = self.dian_search.trim().to_lowercase();
        self.snapshot
            .compliance
            .invoices
            .iter()
            .filter(|r| self.dian_filter.is_none_or(|f| r.status == f))
            .filter(|r| {
                q.is_empty()
                    || r.number.to_lowercase().contains(&q)
                    || r.stripe_id.to_lowercase().contains(&q)
                    || r.cufe.as_deref().is_some_and(|c| c.contains(&q))
            })
            .collect()
    }

    /// The Stripe ids of the DIAN queue's rows, in order.
    pub fn dian_ids(&self) -> Vec<&str> {
        self.dian_rows()
            .into_iter()
            .map(|r| r.stripe_id.as_str())
            .collect()
    }

    /// The selected invoice's row in [`App::dian_rows`] (`None` when it has left the
    /// view: see [`App::dian_left`]).
    pub fn dian_selected_row(&self) -> Option<usize> {
        self.dian_sel.row_in(&self.dian_ids())
    }

    /// The selected invoice's Stripe id (`None` when it has left the view).
    pub fn selected_invoice(&self) -> Option<String> {
        let ids = self.dian_ids();
        self.dian_sel.row_in(&ids).map(|i| ids[i].to_owned())
    }

    /// What the DIAN screen and its keys say when the selected invoice has left the
    /// view: its number, and its state now or that it is gone from the queue.
    pub fn dian_left(&self) -> Option<String> {
        let ids = self.dian_ids();
        let key = self.dian_sel.gone(&ids)?;
        let invoices = &self.snapshot.compliance.invoices;
        Some(match invoices.iter().find(|r| r.stripe_id == key) {
            Some(r) => format!("{} is {} now, out of this view", r.number, r.status.name()),
            None => format!("{key} is no longer in the queue"),
        })
    }

    /// The invoice whose detail the DIAN screen shows, for `update` to ask the engine
    /// about (`Query::InvoiceDetail`): the selected one, while that screen is open.
    pub fn detail_wanted(&self) -> Option<String> {
        (self.tab == Tab::Dian)
            .then(|| self.selected_invoice())
            .flatten()
    }

    /// Whether the open invoice's detail is asked again on each tick of the detail
    /// clock (it moves on: a retry, DIAN's answer): on the DIAN screen, live, one
    /// query at a time.
    pub fn polls_detail(&self) -> bool {
        !self.frozen && !self.detail_pending && self.detail_wanted().is_some()
    }

    /// Whether the console's 1-second clock ticks: a detail polled, or a failed Events
    /// search waiting to be asked again.
    pub fn ticks(&self) -> bool {
        self.polls_detail()
            || self
                .events_search
                .as_ref()
                .is_some_and(|s| s.retry_in.is_some())
    }

    /// Seconds before the Events filter's failed search is asked again, if it waits.
    pub fn events_retry_in(&self) -> Option<u32> {
        self.events_search_now().and_then(|s| s.retry_in)
    }

    /// What the open screen shows of the parts an engine over the network sends only
    /// on demand.
    pub fn shown(&self) -> Shown {
        Shown {
            audit: self.tab == Tab::Events,
            charts: self.tab == Tab::Throughput,
            downstreams: matches!(self.tab, Tab::Circuits | Tab::Throughput | Tab::Workers),
            reconciliation: self.tab == Tab::Reconcile,
        }
    }

    /// The Events rows after the filter: every word of it must appear in the entry's
    /// kind, entity, actor or message (case-insensitive); in the journal view, only
    /// operators' actions. Once the engine has answered the filter, its matches over
    /// the whole trail (with newer ones from the snapshot on top); until then, the
    /// matches among the entries the snapshot holds.
    pub fn events_rows(&self) -> Vec<&AuditEntry> {
        let words = filter_words(&self.events_filter);
        let local = self
            .snapshot
            .audit
            .iter()
            .filter(|e| !self.events_journal || e.kind == OPERATOR)
            .filter(move |e| has_words(e, &words));
        match self.events_found() {
            Some(found) => {
                let newest = found
                    .entries
                    .first()
                    .map_or(0, |e| e.id)
                    .max(found.since_id);
                local
                    .filter(|e| e.id > newest)
                    .chain(found.entries.iter())
                    .collect()
            }
            None => local.collect(),
        }
    }

    /// The engine's search for the Events filter as it stands (not one typed over).
    fn events_search_now(&self) -> Option<&EventsSearch> {
        self.events_search
            .as_ref()
            .filter(|s| s.text == self.events_filter.trim() && s.journal == self.events_journal)
    }

    /// Why the engine could not search the whole trail for the Events filter as it
    /// stands, if it could not.
    pub fn events_failed(&self) -> Option<&str> {
        self.events_search_now().and_then(|s| s.failed.as_deref())
    }

    /// The engine refused the Events filter as it stands: it is not asked again.
    pub fn events_refused(&self) -> bool {
        self.events_search_now().is_some_and(|s| s.refused)
    }

    /// The engine's answer to the Events filter as it stands, once its first page came.
    pub fn events_found(&self) -> Option<&EventsSearch> {
        self.events_search_now().filter(|s| s.loaded)
    }

    /// The service of the selected circuit.
    pub fn selected_service(&self) -> Option<String> {
        self.snapshot
            .downstreams
            .get(self.circuit)
            .map(|d| d.name.clone())
    }

    /// Whether the demo's sandbox simulates an outage of `service` right now.
    pub fn sandbox_outage(&self, service: &str) -> Option<bool> {
        self.sandbox.as_ref().and_then(|s| s.outage(service))
    }
}
