//! Console state and its one `update` path. Rendering reads this; only `update`
//! changes it, and it never does I/O: what should reach the engine comes back as a
//! [`Command`] for the caller to send, and the engine's replies and query answers come
//! in through [`App::on_reply`] and [`App::on_detail`]. Per-operator state — the flash
//! line, the selection, the open invoice's detail — lives here, never in the engine.

use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent};

use super::keymap::{self, Action};
use super::theme::Theme;
use crate::protocol::{
    AlertMatcher, Answer, AuditEntry, BreakerAction, CacheScope, Command, CommandError, FaultPatch,
    InvoiceDetail, InvoiceRecord, MAX_SILENCE_SECS, Pipeline, QueryReply, Reply, SandboxFaults,
    Service, Snapshot, State as BreakerState, Status as InvoiceStatus, ThresholdChange,
    check_threshold, operator,
};

/// A threshold as the console writes it: no trailing zeros.
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Throughput,
    Circuits,
    Workers,
    Alerts,
    Dian,
    Events,
    Settings,
}

impl Tab {
    pub const ALL: [Tab; 8] = [
        Tab::Overview,
        Tab::Throughput,
        Tab::Circuits,
        Tab::Workers,
        Tab::Alerts,
        Tab::Dian,
        Tab::Events,
        Tab::Settings,
    ];
    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Throughput => "Throughput",
            Tab::Circuits => "Circuits",
            Tab::Workers => "Workers",
            Tab::Alerts => "Alerts",
            Tab::Dian => "DIAN",
            Tab::Events => "Events",
            Tab::Settings => "Settings",
        }
    }
    /// The screen's number key (fixed across versions, as docs/console.md lists them).
    pub fn key(self) -> char {
        match self {
            Tab::Overview => '1',
            Tab::Throughput => '2',
            Tab::Circuits => '3',
            Tab::Workers => '4',
            Tab::Alerts => '5',
            Tab::Dian => '6',
            Tab::Events => '7',
            Tab::Settings => '8',
        }
    }
    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
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
            PromptKind::Threshold { name } => name.clone(),
        }
    }
}

/// `90s`, `30m`, `2h`, `1d` (or plain seconds) → seconds, from 1 s to 7 days
/// ([`MAX_SILENCE_SECS`]); anything else is an error to show.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    const FORM: &str = "a duration such as 30m, 2h or 1d";
    let max = MAX_SILENCE_SECS;
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let mult: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{t:?} is not {FORM}")),
    };
    if num.is_empty() {
        return Err(format!("{t:?} is not {FORM}"));
    }
    let too_long = || format!("{t} is too long: a silence lasts at most 7d");
    // Checked all the way: a huge number is refused, never wrapped into a short one.
    let n: u64 = num.parse().map_err(|_| too_long())?;
    match n.checked_mul(mult) {
        Some(0) => Err("a silence lasts at least 1s".into()),
        Some(secs) if secs <= max => Ok(secs),
        _ => Err(too_long()),
    }
}

impl Confirm {
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
            Confirm::InvalidateCache { scope, .. } => format!("Invalidate cache: {scope}?"),
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
            Confirm::Bounds { min, max } => format!("The auto-scaler keeps the catalog pipeline between {min} and {max} workers; the current target is clamped into that range at once."),
            Confirm::InvalidateCache { scope: CacheScope::All, entries } => format!("All {entries} cached QuickBooks lookups are dropped; the next syncs look Items up in QuickBooks again."),
            Confirm::InvalidateCache { scope, entries } => format!("Cached QuickBooks lookups matching {scope} are dropped (the cache holds {entries} now); those Items are looked up again when next needed."),
            Confirm::Thresholds { changes, file } => {
                let diff: Vec<String> = changes.iter().map(|(n, old, new)| format!("{n}: {} → {}", num(*old), num(*new))).collect();
                let saved = match file {
                    Some(f) => format!("saved to {f} (comments kept)"),
                    None => "NOT saved: no config file, so they last until the engine stops".into(),
                };
                format!("{}. Alerts are judged against the new values at once; {saved}.", diff.join("; "))
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
            Confirm::RetryFailed { .. } => "Retry",
            Confirm::InvalidateCache { .. } => "Invalidate",
        }
    }
}

pub struct App {
    pub snapshot: Arc<Snapshot>,
    pub tab: Tab,
    pub theme: Theme,
    pub help: bool,
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
    /// Alerts screen: the selected alert.
    pub alert_row: usize,
    /// Settings: the selected threshold, and the values staged but not applied.
    pub setting_row: usize,
    pub staged: Vec<(String, f64)>,
    /// The demo's sandbox, for the outage toggle (None on a live engine).
    pub sandbox: Option<Arc<dyn SandboxFaults>>,
    /// DIAN queue: selected row, state filter, search text (`search_open` while typed),
    /// and whether the detail pane shows the payload instead of the history.
    pub dian_row: usize,
    pub dian_filter: Option<InvoiceStatus>,
    pub dian_search: String,
    pub search_open: bool,
    /// Events: the filter typed after `/`.
    pub events_filter: String,
    pub show_payload: bool,
    /// The open invoice's record and history, as the engine last answered the query
    /// for it (shown only while that invoice is the selected one).
    pub detail: Option<InvoiceDetail>,
}

impl App {
    pub fn new(snapshot: Arc<Snapshot>, theme: Theme) -> Self {
        Self {
            snapshot,
            tab: Tab::Overview,
            theme,
            help: false,
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
            alert_row: 0,
            setting_row: 0,
            staged: Vec::new(),
            sandbox: None,
            dian_row: 0,
            dian_filter: None,
            dian_search: String::new(),
            search_open: false,
            events_filter: String::new(),
            show_payload: false,
            detail: None,
        }
    }

    pub fn shows_list(&self) -> bool {
        matches!(
            self.tab,
            Tab::Events | Tab::Circuits | Tab::Dian | Tab::Alerts | Tab::Settings
        )
    }

    /// The selected alert's id.
    pub fn selected_alert(&self) -> Option<String> {
        let a = &self.snapshot.telemetry.alerts;
        a.get(self.alert_row.min(a.len().saturating_sub(1)))
            .map(|a| a.id.clone())
    }

    /// The selected threshold's name and value in force.
    pub fn selected_setting(&self) -> Option<(String, f64)> {
        let t = &self.snapshot.telemetry.thresholds;
        t.get(self.setting_row.min(t.len().saturating_sub(1)))
            .cloned()
    }

    /// The value staged for `name`, if any.
    pub fn staged(&self, name: &str) -> Option<f64> {
        self.staged.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    fn open_prompt(&mut self, kind: PromptKind, text: String) {
        self.prompt = Some(text);
        self.prompt_kind = kind;
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

    /// The selected invoice's Stripe id.
    pub fn selected_invoice(&self) -> Option<String> {
        let rows = self.dian_rows();
        rows.get(self.dian_row.min(rows.len().saturating_sub(1)))
            .map(|r| r.stripe_id.clone())
    }

    /// The invoice whose detail the DIAN screen shows, for the caller to ask the
    /// engine about (`Query::InvoiceDetail`): the selected one, while that screen is
    /// open.
    pub fn detail_wanted(&self) -> Option<String> {
        (self.tab == Tab::Dian)
            .then(|| self.selected_invoice())
            .flatten()
    }

    /// The engine's answer to the detail query for `key`; true when the screen changes.
    /// An invoice that is gone clears the pane; other errors keep what it shows.
    pub fn on_detail(&mut self, key: &str, reply: QueryReply) -> bool {
        let is_key = |d: &InvoiceDetail| d.record.stripe_id == key || d.record.number == key;
        let detail = match reply {
            Ok(Answer::InvoiceDetail(d)) if is_key(&d) => Some(*d),
            Err(CommandError::NotFound { .. }) if self.detail.as_ref().is_some_and(is_key) => None,
            _ => return false,
        };
        if self.detail == detail {
            return false;
        }
        self.detail = detail;
        true
    }

    /// The engine's reply to a command this console sent: the flash line says what
    /// happened (the reply to a quit is not shown: the drain message stays).
    pub fn on_reply(&mut self, command: &Command, reply: Reply) {
        if matches!(command, Command::Shutdown {}) {
            return;
        }
        self.flash = Some(match reply {
            Ok(outcome) => outcome.message,
            Err(e) => format!("refused: {e}"),
        });
    }

    fn on_search_key(&mut self, key: KeyEvent) -> Option<Command> {
        let events = self.tab == Tab::Events;
        let text = if events {
            &mut self.events_filter
        } else {
            &mut self.dian_search
        };
        match key.code {
            KeyCode::Esc => {
                text.clear();
                self.search_open = false;
            }
            KeyCode::Enter => self.search_open = false,
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char(c) if !c.is_control() && text.len() < 96 => text.push(c),
            _ => return None,
        }
        if events {
            self.events_offset = 0;
            return None;
        }
        self.dian_row = 0;
        None
    }

    /// The Events rows after the filter: every word of it must appear in the entry's
    /// kind, entity, actor or message (case-insensitive).
    pub fn events_rows(&self) -> Vec<&AuditEntry> {
        let words: Vec<String> = self
            .events_filter
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
        self.snapshot
            .audit
            .iter()
            .filter(|e| {
                words.is_empty() || {
                    let hay =
                        format!("{} {} {} {}", e.kind, e.entity, e.actor, e.message).to_lowercase();
                    words.iter().all(|w| hay.contains(w))
                }
            })
            .collect()
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

    fn on_prompt_key(&mut self, key: KeyEvent) -> Option<Command> {
        let kind = self.prompt_kind.clone();
        let text = self.prompt.as_mut()?;
        match key.code {
            KeyCode::Esc => {
                self.prompt = None;
                self.flash = None;
                return None;
            }
            KeyCode::Backspace => {
                text.pop();
                return None;
            }
            KeyCode::Char(c) if !c.is_control() && text.len() < 96 => {
                let allowed = match kind {
                    PromptKind::Bounds => c.is_ascii_digit() || c == '-' || c == ' ',
                    PromptKind::Threshold { .. } => c.is_ascii_digit() || c == '.' || c == '-',
                    PromptKind::Silence { .. } => c.is_ascii_alphanumeric(),
                    PromptKind::Cache => true,
                };
                if allowed {
                    text.push(c);
                }
                return None;
            }
            KeyCode::Enter => {}
            _ => return None,
        }
        let text = text.trim().to_owned();
        match kind {
            PromptKind::Bounds => {
                let parsed = text.split_once('-').and_then(|(a, b)| {
                    Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
                });
                let limit = self.snapshot.catalog.workers as u32;
                match parsed {
                    Some((min, max)) if min >= 1 && min <= max && max <= limit => {
                        self.prompt = None;
                        self.confirm = Some(Confirm::Bounds { min, max });
                        self.confirm_focus_ok = false;
                    }
                    _ => {
                        // The old bounds stay; the prompt stays open to fix the typo.
                        self.flash = Some(format!(
                            "bounds must read MIN-MAX with 1 ≤ MIN ≤ MAX ≤ {limit}, e.g. 2-16"
                        ));
                    }
                }
                None
            }
            PromptKind::Cache => {
                let scope = match text.as_str() {
                    "" | "*" => CacheScope::All,
                    t => match t.strip_prefix("tag:") {
                        Some(tag) if !tag.is_empty() => CacheScope::Tag(tag.to_owned()),
                        _ => CacheScope::Pattern(t.to_owned()),
                    },
                };
                self.prompt = None;
                self.confirm = Some(Confirm::InvalidateCache {
                    scope,
                    entries: self.snapshot.telemetry.cache.entries,
                });
                self.confirm_focus_ok = false;
                None
            }
            PromptKind::Silence { matcher } => match parse_duration(&text) {
                Ok(secs) => {
                    self.prompt = None;
                    self.flash = Some(format!("silencing {matcher}…"));
                    Some(Command::SilenceAlerts {
                        matcher: AlertMatcher::Prefix(matcher),
                        secs,
                    })
                }
                Err(why) => {
                    self.flash = Some(why);
                    None
                }
            },
            PromptKind::Threshold { name } => {
                let checked = text
                    .parse::<f64>()
                    .map_err(|_| format!("{name}: {text:?} is not a number"))
                    .and_then(|v| check_threshold(&name, v).map(|_| v));
                match checked {
                    Ok(v) => {
                        self.prompt = None;
                        self.staged.retain(|(n, _)| *n != name);
                        let current = self
                            .snapshot
                            .telemetry
                            .thresholds
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, v)| *v);
                        if current != Some(v) {
                            self.staged.push((name.clone(), v));
                        }
                        self.flash = Some(format!(
                            "{name} staged at {} — A applies {} change(s)",
                            num(v),
                            self.staged.len()
                        ));
                    }
                    // The value in force stays; the prompt stays open to fix it. (The
                    // prompt already names the threshold.)
                    Err(e) => {
                        let prefix = format!("{name}: ");
                        self.flash = Some(e.strip_prefix(&prefix).unwrap_or(&e).to_owned());
                    }
                }
                None
            }
        }
    }

    /// A new snapshot from the engine; ignored while frozen (except to learn of draining).
    pub fn on_snapshot(&mut self, s: Arc<Snapshot>) -> bool {
        if self.frozen && !s.draining {
            return false;
        }
        if !self.snapshot.audit.is_empty() && self.events_offset > 0 {
            // Keep the rows the operator is reading in place as new ones arrive on top.
            let newest_before = self.snapshot.audit[0].id;
            let arrived = s.audit.iter().take_while(|e| e.id > newest_before).count();
            self.events_offset =
                (self.events_offset + arrived).min(s.audit.len().saturating_sub(1));
        }
        if s.catalog.paused != self.snapshot.catalog.paused {
            self.flash = Some(if s.catalog.paused {
                "catalog pipeline paused — p resumes".into()
            } else {
                "catalog pipeline resumed".into()
            });
        }
        self.snapshot = s;
        true
    }

    /// Applies a key; returns the command to send to the engine, if any.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Command> {
        if self.quitting {
            return None;
        }
        if keymap::is_interrupt(&key) {
            // Ctrl-C asks like `q`, from anywhere: a prompt, a search, another dialog.
            self.prompt = None;
            self.search_open = false;
            self.help = false;
            self.confirm = Some(Confirm::Quit);
            self.confirm_focus_ok = false;
            return None;
        }
        if let Some(confirm) = self.confirm.clone() {
            return self.on_confirm_key(confirm, key);
        }
        if self.help {
            self.help = false;
            return None;
        }
        if self.prompt.is_some() {
            return self.on_prompt_key(key);
        }
        if self.search_open {
            return self.on_search_key(key);
        }
        self.flash = None;
        let action = keymap::action_for(&key, self.tab)?;
        let circuit = |app: &mut Self, to: Option<BreakerState>| {
            if let Some(service) = app.selected_service() {
                app.confirm = Some(Confirm::Breaker { service, to });
                app.confirm_focus_ok = false;
            }
        };
        let page = 10;
        match action {
            Action::NextTab | Action::PrevTab | Action::GoTab(_) => {
                self.tab = match action {
                    Action::NextTab => Tab::ALL[(self.tab.index() + 1) % Tab::ALL.len()],
                    Action::PrevTab => {
                        Tab::ALL[(self.tab.index() + Tab::ALL.len() - 1) % Tab::ALL.len()]
                    }
                    Action::GoTab(t) => t,
                    _ => self.tab,
                };
                // (The DIAN queue's detail is asked for by the caller: `detail_wanted`.)
            }
            Action::Help => self.help = true,
            Action::Back => {}
            Action::Quit => {
                self.confirm = Some(Confirm::Quit);
                self.confirm_focus_ok = false;
            }
            Action::ToggleFreeze => {
                self.frozen = !self.frozen;
                self.flash = Some(if self.frozen {
                    "display frozen (engine keeps running); f to unfreeze".into()
                } else {
                    "display live".into()
                });
            }
            Action::TogglePause => {
                let pipeline = Pipeline::Catalog;
                return Some(if self.snapshot.catalog.paused {
                    self.flash = Some("resuming catalog pipeline…".into());
                    Command::Resume { pipeline }
                } else {
                    self.flash = Some("pausing catalog pipeline (in-flight work finishes)…".into());
                    Command::Pause { pipeline }
                });
            }
            Action::ForceOpen => circuit(self, Some(BreakerState::ForcedOpen)),
            Action::CloseCircuit => circuit(self, Some(BreakerState::Closed)),
            Action::DisableCircuit => circuit(self, Some(BreakerState::Disabled)),
            Action::MetricsOnly => circuit(self, Some(BreakerState::MetricsOnly)),
            Action::ResetCircuit => circuit(self, None),
            Action::ToggleOutage => self.toggle_outage(),
            Action::SetBounds => {
                let c = &self.snapshot.catalog;
                let text = format!("{}-{}", c.workers_min, c.workers_max);
                self.open_prompt(PromptKind::Bounds, text);
            }
            Action::InvalidateCache => self.open_prompt(PromptKind::Cache, String::new()),
            Action::ChartWindow => self.chart_window = (self.chart_window + 1) % 3,
            Action::AckAlert => {
                let Some(id) = self.selected_alert() else {
                    self.flash = Some("no alert selected".into());
                    return None;
                };
                return Some(Command::AckAlerts {
                    matcher: AlertMatcher::Prefix(id),
                });
            }
            Action::SilenceAlert => {
                let Some(id) = self.selected_alert() else {
                    self.flash = Some("no alert selected".into());
                    return None;
                };
                self.open_prompt(PromptKind::Silence { matcher: id }, "1h".into());
            }
            Action::EditSetting => {
                if let Some((name, v)) = self.selected_setting() {
                    let text = num(self.staged(&name).unwrap_or(v));
                    self.open_prompt(PromptKind::Threshold { name }, text);
                }
            }
            Action::UndoSetting => {
                if let Some((name, _)) = self.selected_setting() {
                    self.staged.retain(|(n, _)| *n != name);
                }
            }
            Action::ApplySettings => {
                if self.staged.is_empty() {
                    self.flash = Some("nothing staged: Enter edits the selected threshold".into());
                    return None;
                }
                let current = &self.snapshot.telemetry.thresholds;
                let changes = self
                    .staged
                    .iter()
                    .map(|(n, v)| {
                        let old = current
                            .iter()
                            .find(|(c, _)| c == n)
                            .map_or(f64::NAN, |c| c.1);
                        (n.clone(), old, *v)
                    })
                    .collect();
                self.confirm = Some(Confirm::Thresholds {
                    changes,
                    file: self.snapshot.config_file.clone(),
                });
                self.confirm_focus_ok = false;
            }
            Action::Tune => self.tab = Tab::Settings,
            Action::RetryInvoice => {
                let Some(id) = self.selected_invoice() else {
                    self.flash = Some("no invoice selected".into());
                    return None;
                };
                self.flash = Some("retrying…".into());
                return Some(Command::RetryInvoice { key: id });
            }
            Action::RetryFailed => {
                let count = self.snapshot.compliance.counts.get(InvoiceStatus::Failed);
                if count == 0 {
                    self.flash = Some("no FAILED invoices to retry".into());
                } else {
                    self.confirm = Some(Confirm::RetryFailed { count });
                    self.confirm_focus_ok = false;
                }
            }
            Action::CycleStatus => {
                let all = InvoiceStatus::ALL;
                self.dian_filter = match self.dian_filter {
                    None => Some(all[0]),
                    Some(s) => all
                        .iter()
                        .position(|x| *x == s)
                        .and_then(|i| all.get(i + 1).copied()),
                };
                self.dian_row = 0;
            }
            Action::Search => self.search_open = true,
            Action::TogglePayload => self.show_payload = !self.show_payload,
            Action::Up if self.tab == Tab::Dian => {
                self.dian_row = self.dian_row.saturating_sub(1);
            }
            Action::Down if self.tab == Tab::Dian => {
                self.dian_row = (self.dian_row + 1).min(self.dian_rows().len().saturating_sub(1));
            }
            Action::PageUp if self.tab == Tab::Dian => {
                self.dian_row = self.dian_row.saturating_sub(page);
            }
            Action::PageDown if self.tab == Tab::Dian => {
                self.dian_row =
                    (self.dian_row + page).min(self.dian_rows().len().saturating_sub(1));
            }
            Action::Top if self.tab == Tab::Dian => {
                self.dian_row = 0;
            }
            Action::Bottom if self.tab == Tab::Dian => {
                self.dian_row = self.dian_rows().len().saturating_sub(1);
            }
            Action::Up if self.tab == Tab::Alerts => {
                self.alert_row = self.alert_row.saturating_sub(1)
            }
            Action::Down if self.tab == Tab::Alerts => {
                self.alert_row =
                    (self.alert_row + 1).min(self.snapshot.telemetry.alerts.len().saturating_sub(1))
            }
            Action::Up if self.tab == Tab::Settings => {
                self.setting_row = self.setting_row.saturating_sub(1)
            }
            Action::Down if self.tab == Tab::Settings => {
                self.setting_row = (self.setting_row + 1)
                    .min(self.snapshot.telemetry.thresholds.len().saturating_sub(1))
            }
            Action::Up if self.tab == Tab::Circuits => {
                self.circuit = self.circuit.saturating_sub(1)
            }
            Action::Down if self.tab == Tab::Circuits => {
                self.circuit =
                    (self.circuit + 1).min(self.snapshot.downstreams.len().saturating_sub(1))
            }
            Action::Up => self.events_offset = self.events_offset.saturating_sub(1),
            Action::Down => self.events_offset = self.clamp_offset(self.events_offset + 1),
            Action::PageUp => self.events_offset = self.events_offset.saturating_sub(page),
            Action::PageDown => self.events_offset = self.clamp_offset(self.events_offset + page),
            Action::Top => self.events_offset = 0,
            Action::Bottom => self.events_offset = self.clamp_offset(usize::MAX),
        }
        None
    }

    /// Demo only: simulates (or ends) an outage of the selected service in the sandbox.
    fn toggle_outage(&mut self) {
        let Some(service) = self.selected_service() else {
            return;
        };
        let Some(sandbox) = self.sandbox.clone() else {
            self.flash = Some("outages can only be simulated in the demo (syncctl demo)".into());
            return;
        };
        let on = !self.sandbox_outage(&service).unwrap_or(false);
        let patch = FaultPatch {
            service: service.clone(),
            outage: Some(on),
            ..Default::default()
        };
        self.flash = Some(match sandbox.patch_faults(&patch) {
            Ok(_) if on => format!(
                "sandbox: {service} is DOWN (every request answers 503) — O again restores it"
            ),
            Ok(_) => format!("sandbox: {service} restored"),
            Err(e) => format!("sandbox: {e}"),
        });
    }

    fn clamp_offset(&self, offset: usize) -> usize {
        offset.min(self.events_rows().len().saturating_sub(1))
    }

    fn on_confirm_key(&mut self, confirm: Confirm, key: KeyEvent) -> Option<Command> {
        match key.code {
            KeyCode::Left
            | KeyCode::Right
            | KeyCode::Tab
            | KeyCode::BackTab
            | KeyCode::Char('h')
            | KeyCode::Char('l') => {
                self.confirm_focus_ok = !self.confirm_focus_ok;
                None
            }
            KeyCode::Esc | KeyCode::Char('n') => {
                self.confirm = None;
                None
            }
            KeyCode::Enter if !self.confirm_focus_ok => {
                self.confirm = None;
                None
            }
            KeyCode::Enter | KeyCode::Char('y') => {
                self.confirm = None;
                match confirm {
                    Confirm::Quit => {
                        self.quitting = true;
                        self.frozen = false;
                        self.flash = Some("draining in-flight work…".into());
                        Some(Command::Shutdown {})
                    }
                    Confirm::Breaker { service, to } => {
                        let Ok(service) = service.parse::<Service>() else {
                            self.flash = Some(format!("no circuit named {service:?}"));
                            return None;
                        };
                        let action = match to {
                            None => BreakerAction::Reset,
                            Some(BreakerState::ForcedOpen) => BreakerAction::ForceOpen,
                            Some(BreakerState::Disabled) => BreakerAction::Disable,
                            Some(BreakerState::MetricsOnly) => BreakerAction::MetricsOnly,
                            Some(_) => BreakerAction::Close,
                        };
                        Some(Command::Breaker { service, action })
                    }
                    Confirm::RetryFailed { .. } => Some(Command::RetryFailed {}),
                    Confirm::InvalidateCache { scope, .. } => {
                        self.flash = Some("invalidating…".into());
                        Some(Command::InvalidateCache { scope })
                    }
                    Confirm::Thresholds { changes, .. } => {
                        self.staged.clear();
                        self.flash = Some("applying thresholds…".into());
                        Some(Command::SetThresholds {
                            changes: changes
                                .into_iter()
                                .map(|(n, _, v)| ThresholdChange::new(n, v))
                                .collect(),
                        })
                    }
                    Confirm::Bounds { min, max } => Some(Command::WorkerBounds {
                        pipeline: Pipeline::Catalog,
                        min,
                        max,
                    }),
                }
            }
            _ => None,
        }
    }
}
