//! The one path by which the console's state changes: [`update`] takes a [`Msg`] —
//! a key, a resize, a tick of the detail clock, a new snapshot, the reply to a command,
//! the answer to a query, the sandbox's answer, a signal — changes the [`App`], and
//! returns the [`Effect`]s for the run loop (`console/mod.rs`) to carry out: send a
//! request, ask a query, patch the sandbox's faults, redraw, exit. It never does I/O
//! and never waits; what comes back from an effect comes back as another `Msg`.
//!
//! ```text
//!   crossterm / snapshot watch / replies / signals ──Msg──▶ update(&mut App) ──▶ Vec<Effect>
//!            ▲                                                                       │
//!            └──────────── the run loop executes each Effect through the Link ◀──────┘
//! ```

use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::command_line::{self, CommandLine, LineEvent, Local};
use super::keymap::{self, Action};
use super::state::{App, Confirm, EVENTS_PAGE, EventsSearch, PromptKind, Step, Tab, num};
use crate::protocol::{
    AlertMatcher, Answer, AttachedConsole, AuditFilter, BUNDLE_EVENTS, BreakerAction, Bundle,
    CacheScope, Command, CommandError, CompanyRow, CompanyTag, FaultPatch, InvoiceDetail,
    LinkState, MAX_SILENCE_SECS, Pipeline, Query, QueryReply, Reply, Request, Snapshot,
    State as BreakerState, Status as InvoiceStatus, Watching, check_threshold, parse_duration,
};

/// How far the help may be scrolled at most (more than any help has lines).
const HELP_SCROLL_MAX: u16 = 500;

/// Something that happened, for [`update`] to take in.
#[derive(Debug)]
pub enum Msg {
    /// A key pressed (or repeated) at the terminal.
    Key(KeyEvent),
    /// The terminal's new size.
    Resize { width: u16, height: u16 },
    /// The detail clock (once a second while [`App::polls_detail`]): the open invoice
    /// moves on, so its detail is asked again.
    Tick,
    /// The engine published a new snapshot.
    Snapshot(Arc<Snapshot>),
    /// The engine stopped publishing: drained after a quit, or stopped on its own.
    EngineStopped,
    /// The engine's reply to a command this console sent, for the company it was sent
    /// for ([`Request::company`]).
    Reply {
        command: Command,
        reply: Reply,
        company: Option<String>,
    },
    /// A command that could not be sent: the engine no longer runs.
    NotSent(Command),
    /// The engine's answer to a query this console asked (an error if it could not be
    /// asked), with the [`App::company_epoch`] it was asked in.
    Answer {
        query: Query,
        reply: QueryReply,
        epoch: u64,
    },
    /// The sandbox's answer to a fault patch.
    FaultsPatched {
        patch: FaultPatch,
        result: Result<(), String>,
    },
    /// The incident bundle the console was asked for, written (the file's path) or not
    /// (why).
    BundleWritten(Result<String, String>),
    /// A signal asking the console to stop.
    Signal(Signal),
    /// Where the console stands with its engine (hosting it, attached, reconnecting).
    Link(LinkState),
    /// The consoles attached to the engine now.
    Consoles(Vec<AttachedConsole>),
    /// Every company's row now (several companies).
    Companies(Vec<CompanyRow>),
    /// The link watches another company now, with its first snapshot, or why not.
    Watched(Result<(CompanyTag, Arc<Snapshot>), String>),
}

/// Something for the run loop to do, as [`update`] decided.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Send a command as this console's operator; the reply comes back as
    /// [`Msg::Reply`] (or [`Msg::NotSent`]). A [`Command::Shutdown`] is the drain.
    Send(Request),
    /// Ask the engine a query; the answer comes back as [`Msg::Answer`].
    Ask(Query),
    /// Demo only: patch the sandbox's faults; the result comes back as
    /// [`Msg::FaultsPatched`].
    PatchFaults(FaultPatch),
    /// Write an incident bundle to a new file in the working directory; the outcome
    /// comes back as [`Msg::BundleWritten`].
    WriteBundle(Box<Bundle>),
    /// Draw the frame: at once after input (`urgent`), otherwise at the frame rate.
    Redraw { urgent: bool },
    /// Leave the run loop: the engine has stopped, or this attached console detaches.
    Exit,
    /// Watch company `id` through the link from now on; the outcome comes back as
    /// [`Msg::Watched`].
    Watch(String),
}

/// A signal that asks the console to stop (SIGTERM, SIGHUP, SIGINT from `kill`;
/// Ctrl-C typed in raw mode is a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Hangup,
    Interrupt,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Hangup => "SIGHUP",
            Signal::Interrupt => "SIGINT",
        }
    }
}

/// Takes in one message: the only place the console's state changes.
pub fn update(app: &mut App, msg: Msg) -> Vec<Effect> {
    let mut effects = Vec::new();
    let redraw = |urgent| Effect::Redraw { urgent };
    match msg {
        Msg::Key(key) => {
            effects.extend(app.apply_key(key));
            effects.push(redraw(true));
        }
        Msg::Resize { .. } => effects.push(redraw(true)),
        Msg::Tick => {
            if app.polls_detail()
                && let Some(key) = app.detail_wanted()
            {
                effects.push(app.ask_detail(key));
            }
            // A failed Events search counts down to its next try (asked below, by
            // `follow_events`); the title shows the wait.
            if !app.frozen
                && let Some(s) = app.events_search.as_mut()
                && s.retry_in.is_some()
            {
                s.tick();
                effects.push(redraw(false));
            }
        }
        Msg::Snapshot(snapshot) => {
            if app.apply_snapshot(snapshot) {
                effects.push(redraw(false));
            }
        }
        Msg::EngineStopped => return vec![Effect::Exit],
        Msg::Link(state) => {
            app.apply_link(state);
            effects.push(redraw(true));
        }
        Msg::Consoles(consoles) => {
            app.consoles = consoles;
            effects.push(redraw(false));
        }
        Msg::Companies(rows) => {
            app.companies = rows;
            effects.push(redraw(false));
        }
        Msg::Watched(result) => {
            app.apply_watched(result);
            effects.push(redraw(true));
        }
        Msg::Reply {
            command,
            reply,
            company,
        } => {
            app.apply_reply(&command, reply, company.as_deref());
            effects.push(redraw(true));
        }
        Msg::NotSent(_) => {
            app.flash = Some("the engine is not running; the command was not sent".into());
            effects.push(redraw(true));
        }
        // An answer asked before a switch of company is the other company's: an Events
        // page, a total, an invoice's detail, a what-if or a preview of identical words
        // asked of this one would otherwise take it as its own. (An incident bundle is
        // written whatever the company shown: the operator asked for it, and it names
        // its company.)
        Msg::Answer {
            query,
            reply,
            epoch,
        } => {
            if epoch == app.company_epoch || matches!(query, Query::Bundle { .. }) {
                effects.extend(app.apply_answer(query, reply));
            }
        }
        Msg::BundleWritten(result) => {
            app.flash = Some(match result {
                Ok(path) => format!("incident bundle (secrets redacted) written: {path}"),
                Err(why) => format!("incident bundle not written: {why}"),
            });
            effects.push(redraw(true));
        }
        Msg::FaultsPatched { patch, result } => {
            app.apply_faults_patched(&patch, result);
            effects.push(redraw(true));
        }
        Msg::Signal(signal) => {
            effects.extend(app.apply_signal(signal));
            effects.push(redraw(true));
        }
    }
    app.follow_selections();
    effects.extend(app.follow_detail());
    effects.extend(app.follow_events());
    effects
}

impl App {
    /// `update(Msg::Key(key))` for a caller that drives the console without its run
    /// loop (tests/api.rs sends the command through a real engine): the command it
    /// would send, if any.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Command> {
        update(self, Msg::Key(key))
            .into_iter()
            .find_map(|effect| match effect {
                Effect::Send(request) => Some(request.command),
                _ => None,
            })
    }

    /// `update(Msg::Reply { .. })`, for the same callers.
    pub fn on_reply(&mut self, command: &Command, reply: Reply) {
        let command = command.clone();
        let company = self.watched().map(str::to_owned);
        update(
            self,
            Msg::Reply {
                command,
                reply,
                company,
            },
        );
    }

    /// `command` as a request from this console's operator, for the company it
    /// watches (the link delivers it there or nowhere).
    fn send(&self, command: Command) -> Option<Effect> {
        Some(Effect::Send(
            Request::new(self.actor.clone(), command).for_company(self.watched()),
        ))
    }

    /// The link watches another company now (or could not): what was chosen, staged,
    /// asked or selected for the company before is dropped, so nothing of it reaches
    /// this one.
    fn apply_watched(&mut self, result: Result<(CompanyTag, Arc<Snapshot>), String>) {
        match result {
            Ok((tag, snapshot)) => {
                self.flash = Some(format!("watching company {}", tag.label()));
                self.watching = Watching::One(tag.id.clone());
                self.company = Some(tag);
                self.forget_company_state();
                // Another company's view, whole: not a change of the one shown (no
                // "resumed" flash), and not frozen.
                self.snapshot = snapshot;
                self.frozen = false;
            }
            Err(why) => self.flash = Some(format!("company not switched: {why}")),
        }
    }

    /// Drops what belongs to the company watched until now: dialogs, prompts, staged
    /// thresholds and their what-ifs, selections, searches, the invoice detail.
    fn forget_company_state(&mut self) {
        self.confirm = None;
        self.preview = None;
        self.prompt = None;
        self.chain = None;
        self.staged.clear();
        self.staged_for = None;
        self.what_ifs.clear();
        self.setting_row = 0;
        self.circuit = 0;
        self.alert_sel = Default::default();
        self.recon_sel = Default::default();
        self.dian_sel = Default::default();
        self.events_search = None;
        // (Another company's asks are not this one's: never taken as its own, nor their
        // answers.)
        self.events_in_flight.clear();
        self.company_epoch += 1;
        self.events_offset = 0;
        self.detail = None;
        self.detail_asked = None;
        self.detail_pending = false;
    }

    /// A key while the company picker is open: move, choose (Enter), or close (Esc, @).
    fn apply_picker_key(&mut self, row: usize, key: KeyEvent) -> Option<Effect> {
        let rows = self.picker_rows();
        let last = rows.len().saturating_sub(1);
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.picker = Some(row.saturating_sub(1)),
            KeyCode::Down | KeyCode::Char('j') => self.picker = Some((row + 1).min(last)),
            KeyCode::Home | KeyCode::Char('g') => self.picker = Some(0),
            KeyCode::End | KeyCode::Char('G') => self.picker = Some(last),
            KeyCode::Enter => {
                self.picker = None;
                let (choice, label) = rows.get(row)?.clone();
                if choice == self.watching {
                    return None;
                }
                match choice {
                    Watching::All => {
                        self.watching = Watching::All;
                        self.forget_company_state();
                        self.tab = Tab::Overview;
                        self.flash = Some(format!(
                            "showing {label}: one row each; pick one with @ to see or act on it"
                        ));
                    }
                    // Back from "all" to the company the link shows: nothing to switch.
                    Watching::One(id) if self.company.as_ref().is_some_and(|c| c.id == id) => {
                        self.watching = Watching::One(id);
                        self.flash = Some(format!("watching company {label}"));
                    }
                    Watching::One(id) => {
                        self.flash = Some(format!("switching to company {label}…"));
                        return Some(Effect::Watch(id));
                    }
                }
            }
            KeyCode::Esc | KeyCode::Char('@') | KeyCode::Char('q') => self.picker = None,
            _ => {}
        }
        None
    }

    /// A query's answer: the invoice detail, the chain, a bundle to write, a what-if.
    fn apply_answer(&mut self, query: Query, reply: QueryReply) -> Vec<Effect> {
        let redraw = |urgent| Effect::Redraw { urgent };
        let mut effects = Vec::new();
        match query {
            Query::InvoiceDetail { key } => {
                self.detail_pending = false;
                if self.apply_detail(&key, reply) {
                    effects.push(redraw(false));
                }
            }
            Query::Chain { key } => {
                if let Some(panel) = self.chain.as_mut().filter(|p| p.key == key) {
                    panel.answer = Some(match reply {
                        Ok(Answer::Chain(chain)) => Ok(*chain),
                        Ok(_) => Err("the engine answered another query".into()),
                        Err(e) => Err(e.to_string()),
                    });
                    effects.push(redraw(false));
                }
            }
            Query::Bundle { .. } => {
                match reply {
                    Ok(Answer::Bundle(bundle)) => effects.push(Effect::WriteBundle(bundle)),
                    Ok(_) => {
                        self.flash =
                            Some("no incident bundle: the engine answered something else".into())
                    }
                    Err(e) => self.flash = Some(format!("no incident bundle: {e}")),
                }
                effects.push(redraw(true));
            }
            Query::WhatIf { name, value } => {
                let answer = match reply {
                    Ok(Answer::WhatIf(w)) => Ok(w),
                    Ok(_) => Err("the engine answered something else".to_owned()),
                    Err(e) => Err(e.to_string()),
                };
                self.what_ifs
                    .retain(|(n, v, _)| !(*n == name && *v == value));
                self.what_ifs.push((name, value, answer));
                effects.push(redraw(false));
            }
            // The console asks no other query.
            Query::Audit { .. } | Query::AuditCount { .. } => {
                if let Some(i) = self.events_in_flight.iter().position(|(q, _)| *q == query) {
                    self.events_in_flight.remove(i);
                }
                let changed = match query {
                    Query::Audit { filter } => self.apply_events_page(&filter, reply),
                    Query::AuditCount { filter } => self.apply_events_total(&filter, reply),
                    _ => false,
                };
                if changed {
                    effects.push(redraw(false));
                }
            }
            Query::Preview { command } => {
                if let Some((asked, answer)) = self.preview.as_mut()
                    && *asked == command
                {
                    *answer = Some(match reply {
                        Ok(Answer::Preview(p)) => Ok(*p),
                        Ok(_) => Err("the engine answered another query".into()),
                        Err(e) => Err(e.to_string()),
                    });
                    effects.push(redraw(true));
                }
            }
            Query::Invoices { .. } | Query::Reconciliation { .. } => {}
        }
        effects
    }

    /// Opens the chain panel on `key` and asks the engine for it.
    fn ask_chain(&mut self, key: String) -> Effect {
        self.chain = Some(super::state::ChainPanel {
            key: key.clone(),
            answer: None,
            scroll: 0,
        });
        Effect::Ask(Query::Chain { key })
    }

    /// Asks for `key`'s detail (one query at a time).
    fn ask_detail(&mut self, key: String) -> Effect {
        self.detail_asked = Some(key.clone());
        self.detail_pending = true;
        Effect::Ask(Query::InvoiceDetail { key })
    }

    /// Keeps the shown list's selection on the item it names as the list moves (and
    /// pins the first row where nothing is chosen yet), so keys act on what is drawn.
    /// A list not on screen is left alone: opened, it selects its first row then.
    fn follow_selections(&mut self) {
        match self.tab {
            Tab::Dian => {
                let ids = owned(self.dian_ids());
                self.dian_sel.follow(&ids);
            }
            Tab::Alerts => {
                let ids = owned(self.alert_ids());
                self.alert_sel.follow(&ids);
            }
            Tab::Reconcile => {
                let ids = self.recon_ids();
                if ids.is_empty() {
                    // Nothing left to point at: the next discrepancy is selected.
                    self.recon_sel.reset();
                }
                self.recon_sel.follow(&ids);
            }
            _ => {}
        }
    }

    /// The Events filter searched in the engine's store, one query at a time: a new
    /// filter's first page, then its total, then older pages as the operator scrolls
    /// towards the end of those found.
    fn follow_events(&mut self) -> Option<Effect> {
        let text = self.events_filter.trim();
        // With no filter the snapshot's newest entries are the list; the journal is
        // read from the store even then: operators' actions are a few among thousands
        // of entries, and the snapshot's newest hold none of the older ones.
        if text.is_empty() && !self.events_journal {
            self.events_search = None;
            return None;
        }
        let journal = self.events_journal;
        let query = match &mut self.events_search {
            Some(s) if s.text == text && s.journal == journal => {
                if s.pending {
                    None
                } else if s.total.is_none() && !s.counting {
                    s.counting = true;
                    Some(Query::AuditCount {
                        filter: s.filter(None),
                    })
                } else if s.more && self.events_offset + EVENTS_PAGE / 2 >= s.entries.len() {
                    s.pending = true;
                    let before = s.entries.last().map(|e| e.id);
                    Some(Query::Audit {
                        filter: s.filter(before),
                    })
                } else {
                    None
                }
            }
            _ => {
                let mut search = EventsSearch {
                    text: text.to_owned(),
                    journal,
                    pending: true,
                    since_id: self.snapshot.audit.first().map_or(0, |e| e.id),
                    ..Default::default()
                };
                let first = Query::Audit {
                    filter: search.filter(None),
                };
                // Typed again while its last search's asks are on their way: those
                // asks are this search's (their answers would be taken as its own
                // anyway, a refusal included), with the newest entry they were asked
                // beside.
                let on_its_way = |q: &Query| self.events_in_flight.iter().find(|(f, _)| f == q);
                let asked = on_its_way(&first).map(|(_, since)| *since);
                let counting = on_its_way(&Query::AuditCount {
                    filter: search.filter(None),
                })
                .is_some();
                search.counting = counting;
                if let Some(since) = asked {
                    search.since_id = since;
                }
                self.events_search = Some(search);
                asked.is_none().then_some(first)
            }
        }?;
        let since = self.events_search.as_ref().map_or(0, |s| s.since_id);
        if self.events_in_flight.len() >= EVENTS_IN_FLIGHT_MAX {
            self.events_in_flight.remove(0);
        }
        self.events_in_flight.push((query.clone(), since));
        Some(Effect::Ask(query))
    }

    /// A page of the Events filter's matches; true when the screen changes. An answer
    /// to another filter (typed over since) is dropped; a refusal keeps the local view.
    fn apply_events_page(&mut self, filter: &AuditFilter, reply: QueryReply) -> bool {
        let Some(s) = self.events_search.as_mut().filter(|s| s.asked(filter)) else {
            return false;
        };
        let expected = s.entries.last().map(|e| e.id);
        if !s.pending || filter.before_id != expected {
            return false;
        }
        s.pending = false;
        match reply {
            Ok(Answer::Audit { entries }) => {
                s.more = entries.len() >= filter.limit;
                s.entries.extend(entries);
                s.loaded = true;
                s.answered();
                true
            }
            Err(e) => {
                s.failed_now(e.to_string(), true, e.for_now());
                true
            }
            _ => {
                s.more = false;
                false
            }
        }
    }

    /// The Events filter's total over the whole trail; true when the screen changes.
    fn apply_events_total(&mut self, filter: &AuditFilter, reply: QueryReply) -> bool {
        let Some(s) = self.events_search.as_mut().filter(|s| s.asked(filter)) else {
            return false;
        };
        match reply {
            Ok(Answer::AuditCount { total }) => {
                s.total = Some(total);
                s.counting = false;
                s.answered();
                true
            }
            Err(e) => {
                s.failed_now(e.to_string(), false, e.for_now());
                true
            }
            _ => false,
        }
    }

    /// A newly selected invoice on the DIAN screen: ask for its detail now.
    fn follow_detail(&mut self) -> Option<Effect> {
        let wanted = self.detail_wanted();
        match wanted {
            Some(key) if self.detail_asked.as_ref() != Some(&key) && !self.detail_pending => {
                // Another invoice: its payload from the top.
                self.payload_scroll = 0;
                Some(self.ask_detail(key))
            }
            Some(_) => None,
            None => {
                self.detail_asked = None;
                None
            }
        }
    }

    /// Where the console stands with its engine now: an attached console's role decides
    /// whether it may act.
    fn apply_link(&mut self, state: LinkState) {
        if !state.hosted() {
            // What the engine granted: a viewer token or `--read-only` may only read.
            self.read_only = state.read_only();
        }
        match (&self.link, &state) {
            (LinkState::Reconnecting { .. }, LinkState::Attached(a)) => {
                self.flash = Some(format!("reconnected to the engine at {}", a.to));
                // The engine may be another now (restarted, upgraded, another role
                // granted): a search it refused is asked anew, and one that failed for
                // now (the link down, most likely) at once, not after its wait.
                if self.events_search.as_ref().is_some_and(|s| s.refused) {
                    self.events_search = None;
                } else if let Some(s) = self.events_search.as_mut().filter(|s| s.retry_in.is_some())
                {
                    s.ask_again_now();
                }
            }
            (LinkState::Attached(_), LinkState::Reconnecting { why, .. }) => {
                self.flash = Some(format!("lost the engine ({why}); reconnecting…"));
            }
            _ => {}
        }
        self.link = state;
    }

    /// SIGTERM, SIGHUP or SIGINT: the same path as `q` confirmed — stop claiming,
    /// drain, exit. After a hangup there is no terminal to draw on or read from.
    fn apply_signal(&mut self, signal: Signal) -> Option<Effect> {
        self.hung_up |= signal == Signal::Hangup;
        if !self.link.hosted() {
            // An attached console only lets go; the engine runs on.
            return Some(Effect::Exit);
        }
        if self.quitting {
            return None;
        }
        self.quitting = true;
        self.confirm = None;
        self.prompt = None;
        self.command_line = None;
        self.frozen = false;
        self.flash = Some(format!("{}: draining in-flight work…", signal.name()));
        tracing::info!("{}: draining in-flight work", signal.name());
        self.send(Command::Shutdown {})
    }

    fn open_prompt(&mut self, kind: PromptKind, text: String) {
        self.prompt = Some(text);
        self.prompt_kind = kind;
    }

    /// The engine's answer to the detail query for `key`; true when the screen changes.
    /// An invoice that is gone clears the pane; other errors keep what it shows.
    fn apply_detail(&mut self, key: &str, reply: QueryReply) -> bool {
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
    /// A reply for another company than the one shown now (the operator switched
    /// while it was on its way) names its company: "paused" is not this one's.
    fn apply_reply(&mut self, command: &Command, reply: Reply, company: Option<&str>) {
        if matches!(command, Command::Shutdown {}) {
            return;
        }
        let said = match reply {
            Ok(outcome) => outcome.message,
            Err(e) => format!("refused: {e}"),
        };
        self.flash = Some(match company.filter(|c| Some(*c) != self.watched()) {
            Some(other) => format!("company {}: {said}", self.company_label(other)),
            None => said,
        });
    }

    fn apply_search_key(&mut self, key: KeyEvent) -> Option<Effect> {
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
        // A new view: its first row.
        self.dian_sel.reset();
        None
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one match over the actions; each arm is a line or two"
    )]
    fn apply_prompt_key(&mut self, key: KeyEvent) -> Option<Effect> {
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
                    PromptKind::Threshold { .. } => {
                        c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ' '
                    }
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
                let scope = match cache_scope(&text) {
                    Ok(scope) => scope,
                    Err(e) => {
                        // Nothing is dropped; the prompt stays open to fix it.
                        self.flash = Some(format!(
                            "{e} — a tag after tag: (tag:NAME), a pattern (item:*), or nothing for all"
                        ));
                        return None;
                    }
                };
                self.prompt = None;
                self.open_confirm(Confirm::InvalidateCache {
                    scope,
                    entries: self.snapshot.telemetry.cache.entries,
                })
            }
            PromptKind::Silence { matcher } => match crate::protocol::parse_duration(&text) {
                Ok(secs) => {
                    self.prompt = None;
                    self.flash = Some(format!("silencing {matcher}…"));
                    self.send(Command::SilenceAlerts {
                        matcher: AlertMatcher::Prefix(matcher),
                        secs,
                    })
                }
                Err(why) => {
                    self.flash = Some(why.to_string());
                    None
                }
            },
            PromptKind::Threshold { name } => {
                // `VALUE` or `VALUE for DURATION`.
                let (value, until) = match text.split_once(" for ") {
                    Some((v, d)) => (v.trim(), Some(d.trim())),
                    None => (text.as_str(), None),
                };
                let for_secs = until.map(|d| {
                    parse_duration(d)
                        .ok()
                        .filter(|s| (1..=MAX_SILENCE_SECS).contains(s))
                        .ok_or_else(|| format!("{d:?} is not a duration of 1s to 7d (30m, 2h, 1d)"))
                });
                let checked = value
                    .parse::<f64>()
                    .map_err(|_| format!("{name}: {value:?} is not a number"))
                    .and_then(|v| check_threshold(&name, v).map(|_| v))
                    .and_then(|v| Ok((v, for_secs.transpose()?)));
                match checked {
                    Ok((v, for_secs)) => {
                        self.prompt = None;
                        if for_secs.is_some() {
                            self.staged_for = for_secs;
                        }
                        self.staged.retain(|(n, _)| *n != name);
                        let current = self
                            .snapshot
                            .telemetry
                            .thresholds
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, v)| *v);
                        let staged = current != Some(v);
                        if staged {
                            self.staged.push((name.clone(), v));
                        }
                        let lasting = self.staged_for.map_or(String::new(), |s| {
                            format!(" (for {})", crate::protocol::format_duration(s))
                        });
                        self.flash = Some(format!(
                            "{name} staged at {}{lasting} — A applies {} change(s)",
                            num(v),
                            self.staged.len()
                        ));
                        if staged && !self.what_ifs.iter().any(|(n, x, _)| *n == name && *x == v) {
                            // How often it would have fired: shown beside it once the
                            // engine has replayed its history.
                            return Some(Effect::Ask(Query::WhatIf { name, value: v }));
                        }
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
    fn apply_snapshot(&mut self, s: Arc<Snapshot>) -> bool {
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
        if s.compliance.paused != self.snapshot.compliance.paused {
            self.flash = Some(if s.compliance.paused {
                "DIAN sending paused (paid invoices wait) — p on the DIAN screen resumes".into()
            } else {
                "DIAN sending resumed".into()
            });
        }
        self.snapshot = s;
        true
    }

    /// Applies a key; returns what should reach the engine or the sandbox, if anything.
    fn apply_key(&mut self, key: KeyEvent) -> Option<Effect> {
        if self.quitting {
            return None;
        }
        if keymap::is_interrupt(&key) && !self.link.hosted() {
            // An attached console detaches at once: nothing is lost, the engine runs on.
            return Some(Effect::Exit);
        }
        if keymap::is_interrupt(&key) {
            // Ctrl-C asks like `q`, from anywhere: a prompt, a search, another dialog.
            self.prompt = None;
            self.search_open = false;
            self.help = false;
            self.commands_help = false;
            self.who = false;
            self.chain = None;
            self.command_line = None;
            self.confirm = Some(Confirm::Quit);
            self.confirm_focus_ok = false;
            return None;
        }
        // Ctrl with a key is not that key: Ctrl-P (a shell's history habit) must not
        // pause a pipeline, Ctrl-R retry an invoice, Ctrl-Y confirm, Ctrl-U type a `u`.
        // Only the command line, which edits with them (Ctrl-A, E, U, W), takes them.
        if key.modifiers.contains(KeyModifiers::CONTROL) && self.command_line.is_none() {
            return None;
        }
        if let Some(confirm) = self.confirm.clone() {
            return self.apply_confirm_key(confirm, key);
        }
        if let Some(row) = self.picker {
            return self.apply_picker_key(row, key);
        }
        if let Some(panel) = &mut self.chain {
            // The chain scrolls; any other key closes it.
            match key.code {
                KeyCode::Down | KeyCode::Char('j') => panel.scroll += 1,
                KeyCode::Up | KeyCode::Char('k') => panel.scroll = panel.scroll.saturating_sub(1),
                KeyCode::PageDown => panel.scroll += 10,
                KeyCode::PageUp => panel.scroll = panel.scroll.saturating_sub(10),
                _ => self.chain = None,
            }
            return None;
        }
        if self.help || self.commands_help {
            // The help scrolls (it may be longer than the terminal); any other key
            // closes it.
            let s = &mut self.help_scroll;
            match key.code {
                KeyCode::Down | KeyCode::Char('j') => *s = s.saturating_add(1).min(HELP_SCROLL_MAX),
                KeyCode::Up | KeyCode::Char('k') => *s = s.saturating_sub(1),
                KeyCode::PageDown => *s = s.saturating_add(10).min(HELP_SCROLL_MAX),
                KeyCode::PageUp => *s = s.saturating_sub(10),
                _ => {
                    self.help = false;
                    self.commands_help = false;
                }
            }
            return None;
        }
        if self.who {
            self.help = false;
            self.commands_help = false;
            self.who = false;
            return None;
        }
        if self.command_line.is_some() {
            return self.apply_command_line_key(key);
        }
        if self.prompt.is_some() {
            return self.apply_prompt_key(key);
        }
        if self.search_open {
            return self.apply_search_key(key);
        }
        self.flash = None;
        let action = keymap::action_for(&key, self.tab)?;
        self.apply_action(action)
    }

    /// The action the key table found for a key on the current screen.
    #[expect(
        clippy::too_many_lines,
        reason = "one match over the actions; each arm is a line or two"
    )]
    fn apply_action(&mut self, action: Action) -> Option<Effect> {
        // The one place a read-only console refuses what the key table marks as acting.
        if self.read_only
            && let Some(what) = action.engine_action()
        {
            self.flash = Some(self.refusal(what));
            return None;
        }
        // And the one place "all companies" refuses it: every action acts on one.
        if self.watching_all()
            && let Some(what) = action.engine_action()
        {
            self.flash = Some(self.pick_first(what));
            return None;
        }
        let circuit = |app: &mut Self, to: Option<BreakerState>| {
            let service = app.selected_service()?;
            app.open_confirm(Confirm::Breaker { service, to })
        };
        match action {
            Action::NextTab | Action::PrevTab | Action::GoTab(_) => {
                self.tab = match action {
                    Action::NextTab => self.tab.next(),
                    Action::PrevTab => self.tab.prev(),
                    Action::GoTab(t) => t,
                    _ => self.tab,
                };
                // (The DIAN queue's detail is asked for after every message: `follow_detail`.)
            }
            Action::Help => {
                self.help = true;
                self.help_scroll = 0;
            }
            Action::Who => self.who = true,
            Action::Chain => {
                let key = match self.tab {
                    Tab::Dian => self.selected_invoice(),
                    Tab::Events => self
                        .events_rows()
                        .get(self.events_offset)
                        .map(|e| e.entity.clone()),
                    Tab::Reconcile => self
                        .selected_discrepancy()
                        .and_then(|d| d.product_id.clone().or_else(|| d.item_id.clone())),
                    _ => None,
                };
                match key {
                    Some(key) => return Some(self.ask_chain(key)),
                    None => {
                        self.flash = Some(
                            "L shows the chain of the selected invoice (DIAN), event (Events) or discrepancy (Reconcile); anywhere, :chain KEY".into(),
                        );
                    }
                }
            }
            Action::Back => {}
            // An attached console detaches at once: nothing is lost, the engine runs on.
            Action::WriteBundle => {
                self.flash = Some("taking an incident bundle…".into());
                return Some(Effect::Ask(Query::Bundle {
                    events: BUNDLE_EVENTS,
                    actor: self.actor.clone(),
                }));
            }
            Action::Quit if !self.link.hosted() => return Some(Effect::Exit),
            Action::Quit => {
                self.confirm = Some(Confirm::Quit);
                self.confirm_focus_ok = false;
            }
            Action::PickCompany if !self.several() => {
                self.flash = Some("this engine serves one company: nothing to pick".into());
            }
            Action::PickCompany => self.picker = Some(self.picker_row()),
            Action::ToggleFreeze if matches!(self.link, LinkState::Bundle { .. }) => {
                self.flash = Some("an incident bundle is frozen as it was taken".into());
            }
            Action::ToggleFreeze => {
                self.frozen = !self.frozen;
                self.flash = Some(if self.frozen {
                    "display frozen (engine keeps running); f to unfreeze".into()
                } else {
                    "display live".into()
                });
            }
            Action::TogglePause => return self.toggle_pause(Pipeline::Catalog),
            Action::ToggleCompliancePause => return self.toggle_pause(Pipeline::Compliance),
            Action::ForceOpen => return circuit(self, Some(BreakerState::ForcedOpen)),
            Action::CloseCircuit => return circuit(self, Some(BreakerState::Closed)),
            Action::DisableCircuit => return circuit(self, Some(BreakerState::Disabled)),
            Action::MetricsOnly => return circuit(self, Some(BreakerState::MetricsOnly)),
            Action::ResetCircuit => return circuit(self, None),
            Action::ToggleOutage => return self.toggle_outage(),
            Action::SetBounds => {
                let c = &self.snapshot.catalog;
                let text = format!("{}-{}", c.workers_min, c.workers_max);
                self.open_prompt(PromptKind::Bounds, text);
            }
            Action::InvalidateCache => self.open_prompt(PromptKind::Cache, String::new()),
            Action::ChartWindow => self.chart_window = (self.chart_window + 1) % 3,
            Action::AckAlert => {
                let Some(id) = self.selected_alert() else {
                    self.flash = Some(self.nothing_selected(self.alert_left(), "acknowledged"));
                    return None;
                };
                return self.send(Command::AckAlerts {
                    matcher: AlertMatcher::Prefix(id),
                });
            }
            Action::SilenceAlert => {
                let Some(id) = self.selected_alert() else {
                    self.flash = Some(self.nothing_selected(self.alert_left(), "silenced"));
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
                if self.staged.is_empty() {
                    self.staged_for = None;
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
                    for_secs: self.staged_for,
                });
                self.confirm_focus_ok = false;
            }
            Action::Tune => self.tab = Tab::Settings,
            Action::RetryInvoice => {
                let Some(id) = self.selected_invoice() else {
                    self.flash = Some(self.nothing_selected(self.dian_left(), "retried"));
                    return None;
                };
                self.flash = Some("retrying…".into());
                return self.send(Command::RetryInvoice { key: id });
            }
            Action::RetryFailed => {
                let count = self.snapshot.compliance.counts.get(InvoiceStatus::Failed);
                if count == 0 {
                    self.flash = Some("no FAILED invoices to retry".into());
                } else {
                    return self.open_confirm(Confirm::RetryFailed { count });
                }
            }
            Action::RetryFailedJobs => return self.run_typed(Command::RetryFailedJobs {}),
            Action::Resync => return self.run_typed(Command::Resync {}),
            Action::ResyncItem => {
                let Some(d) = self.selected_discrepancy() else {
                    self.flash = Some(
                        self.nothing_selected(
                            self.recon_sel
                                .gone(&self.recon_ids())
                                .map(|id| format!("{id} agrees now or is gone")),
                            "resynced",
                        ),
                    );
                    return None;
                };
                let Some(key) = d.product_id.clone() else {
                    self.flash = Some(format!(
                        "Item {} has no Stripe product to write it from: nothing resynced",
                        d.item_id.as_deref().unwrap_or("?")
                    ));
                    return None;
                };
                return self.run_typed(Command::ResyncItem { key });
            }
            Action::ResyncDrifted => return self.run_typed(Command::ResyncDrifted {}),
            Action::CycleStatus => {
                let all = InvoiceStatus::ALL;
                self.dian_filter = match self.dian_filter {
                    None => Some(all[0]),
                    Some(s) => all
                        .iter()
                        .position(|x| *x == s)
                        .and_then(|i| all.get(i + 1).copied()),
                };
                self.dian_sel.reset();
            }
            Action::Search => self.search_open = true,
            Action::ToggleJournal => {
                self.events_journal = !self.events_journal;
                self.events_offset = 0;
            }
            Action::CommandLine => self.command_line = Some(CommandLine::new()),
            Action::TogglePayload => {
                self.show_payload = !self.show_payload;
                self.payload_scroll = 0;
            }
            Action::PayloadUp | Action::PayloadDown => self.scroll_payload(action),
            Action::Up
            | Action::Down
            | Action::PageUp
            | Action::PageDown
            | Action::Top
            | Action::Bottom => self.scroll(action),
        }
        None
    }

    /// Moves the current screen's selection (or the Events scroll) by one, a page of
    /// ten, or to either end.
    fn scroll(&mut self, action: Action) {
        let page = 10;
        match action {
            Action::Up
            | Action::Down
            | Action::PageUp
            | Action::PageDown
            | Action::Top
            | Action::Bottom
                if matches!(self.tab, Tab::Dian | Tab::Alerts | Tab::Reconcile) =>
            {
                let step = match action {
                    Action::Up => Step::Up(1),
                    Action::Down => Step::Down(1),
                    Action::PageUp => Step::Up(page),
                    Action::PageDown => Step::Down(page),
                    Action::Top => Step::First,
                    _ => Step::Last,
                };
                if self.tab == Tab::Dian {
                    let ids = owned(self.dian_ids());
                    self.dian_sel.step(&ids, step);
                } else if self.tab == Tab::Reconcile {
                    let ids = self.recon_ids();
                    self.recon_sel.step(&ids, step);
                } else {
                    let ids = owned(self.alert_ids());
                    self.alert_sel.step(&ids, step);
                }
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
            _ => {}
        }
    }

    /// `[` / `]` on the DIAN screen: the payload moves by a few rows, within its
    /// lines (the pane keeps the last ones in view).
    fn scroll_payload(&mut self, action: Action) {
        if !self.show_payload {
            self.flash = Some("v shows the payload; [ and ] scroll it".into());
            return;
        }
        let step = 5;
        let lines = self
            .detail
            .as_ref()
            .map_or(0, |d| d.payload.lines().count());
        let last = u16::try_from(lines.saturating_sub(1)).unwrap_or(u16::MAX);
        self.payload_scroll = if action == Action::PayloadUp {
            self.payload_scroll.saturating_sub(step)
        } else {
            self.payload_scroll.saturating_add(step).min(last)
        };
    }

    /// The flash line when a key that acts on the selected item finds none: the
    /// selected one has left the view (`left` says how), or the list is empty.
    fn nothing_selected(&self, left: Option<String>, done: &str) -> String {
        match left {
            Some(left) => format!("{left}: nothing {done} — ↑/↓ selects another"),
            None => format!("nothing selected: nothing {done}"),
        }
    }

    /// Whether the snapshot shows `pipeline` paused.
    fn paused(&self, pipeline: Pipeline) -> bool {
        match pipeline {
            Pipeline::Catalog => self.snapshot.catalog.paused,
            Pipeline::Compliance => self.snapshot.compliance.paused,
        }
    }

    /// Work waiting in `pipeline`, as the snapshot shows it.
    fn backlog(&self, pipeline: Pipeline) -> u64 {
        match pipeline {
            Pipeline::Catalog => self.snapshot.catalog.counts.queued,
            Pipeline::Compliance => [
                InvoiceStatus::Pending,
                InvoiceStatus::Retry,
                InvoiceStatus::Unknown,
                InvoiceStatus::Sent,
                InvoiceStatus::Fallback,
            ]
            .into_iter()
            .map(|s| self.snapshot.compliance.counts.get(s))
            .sum(),
        }
    }

    /// Pauses `pipeline` if the snapshot shows it running, resumes it otherwise.
    fn toggle_pause(&mut self, pipeline: Pipeline) -> Option<Effect> {
        let (paused, name, pausing) = match pipeline {
            Pipeline::Catalog => (
                self.snapshot.catalog.paused,
                "catalog pipeline",
                "in-flight work finishes",
            ),
            Pipeline::Compliance => (
                self.snapshot.compliance.paused,
                "DIAN sending",
                "sends under way finish; paid invoices wait",
            ),
        };
        let command = if paused {
            let backlog = self.backlog(pipeline);
            if backlog > 0 {
                return self.open_confirm(Confirm::Resume { pipeline, backlog });
            }
            self.flash = Some(format!("resuming {name}…"));
            Command::Resume { pipeline }
        } else {
            self.flash = Some(format!("pausing {name} ({pausing})…"));
            Command::Pause { pipeline }
        };
        self.send(command)
    }

    /// Demo only: asks the sandbox to simulate (or end) an outage of the selected
    /// service; [`Msg::FaultsPatched`] says how it went.
    fn toggle_outage(&mut self) -> Option<Effect> {
        let service = self.selected_service()?;
        if self.sandbox.is_none() {
            self.flash = Some("outages can only be simulated in the demo (syncctl demo)".into());
            return None;
        }
        let on = !self.sandbox_outage(&service).unwrap_or(false);
        Some(Effect::PatchFaults(FaultPatch {
            service,
            outage: Some(on),
            ..Default::default()
        }))
    }

    /// The sandbox's answer to an outage patch, on the flash line.
    fn apply_faults_patched(&mut self, patch: &FaultPatch, result: Result<(), String>) {
        let service = &patch.service;
        self.flash = Some(match result {
            Ok(()) if patch.outage == Some(true) => format!(
                "sandbox: {service} is DOWN (every request answers 503) — O again restores it"
            ),
            Ok(()) => format!("sandbox: {service} restored"),
            Err(e) => format!("sandbox: {e}"),
        });
    }

    fn clamp_offset(&self, offset: usize) -> usize {
        offset.min(self.events_rows().len().saturating_sub(1))
    }

    fn apply_confirm_key(&mut self, confirm: Confirm, key: KeyEvent) -> Option<Effect> {
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
                self.preview = None;
                None
            }
            KeyCode::Enter if !self.confirm_focus_ok => {
                self.confirm = None;
                self.preview = None;
                None
            }
            KeyCode::Enter | KeyCode::Char('y') => {
                self.confirm = None;
                self.preview = None;
                match confirm {
                    Confirm::Quit => {
                        self.quitting = true;
                        self.frozen = false;
                        self.flash = Some("draining in-flight work…".into());
                        self.send(Command::Shutdown {})
                    }
                    Confirm::Breaker { ref service, .. } if confirm.command().is_none() => {
                        self.flash = Some(format!("no circuit named {service:?}"));
                        None
                    }
                    Confirm::InvalidateCache { .. } => {
                        self.flash = Some("invalidating…".into());
                        self.send(confirm.command()?)
                    }
                    Confirm::Thresholds { ref changes, .. } => {
                        // (Applied from a `:set`, the other staged values stay staged.)
                        self.staged
                            .retain(|(n, _)| !changes.iter().any(|(c, _, _)| c == n));
                        if self.staged.is_empty() {
                            self.staged_for = None;
                        }
                        self.flash = Some("applying thresholds…".into());
                        self.send(confirm.command()?)
                    }
                    _ => self.send(confirm.command()?),
                }
            }
            _ => None,
        }
    }
}

/// The `:` line: its keys, and what a submitted line runs.
impl App {
    /// A key while the `:` line is open: every key edits the line (no screen
    /// shortcut fires); Enter runs it, Esc closes it.
    fn apply_command_line_key(&mut self, key: KeyEvent) -> Option<Effect> {
        let mut line = self.command_line.take()?;
        match line.key(key, &self.history, |text| self.command_completions(text)) {
            LineEvent::Edited => {
                self.command_line = Some(line);
                None
            }
            LineEvent::Cancel => None,
            LineEvent::Submit(text) => self.run_line(line, &text),
        }
    }

    /// A submitted line: one of the console's own words, or a command of the
    /// protocol's grammar. A line that does not parse stays open with the error,
    /// which names the word at fault; a read-only console sends nothing.
    fn run_line(&mut self, mut line: CommandLine, text: &str) -> Option<Effect> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if let Some(local) = command_line::local(text) {
            self.history.push(text);
            match local {
                Local::Help => {
                    self.commands_help = true;
                    self.help_scroll = 0;
                }
                Local::Who => self.who = true,
                Local::Chain(key) if key.is_empty() => {
                    self.flash = Some(
                        "chain KEY: a product, Item, invoice, DIAN number, CUFE or Alegra document id".into(),
                    );
                }
                Local::Chain(key) => return Some(self.ask_chain(key)),
                // An attached console detaches at once; the engine runs on.
                Local::Quit if !self.link.hosted() => return Some(Effect::Exit),
                Local::Quit => {
                    self.confirm = Some(Confirm::Quit);
                    self.confirm_focus_ok = false;
                }
                Local::Screen(tab) => self.tab = tab,
            }
            return None;
        }
        let command = match text.parse::<Command>() {
            Ok(command) => command,
            Err(e) => {
                line.error = Some(e.to_string());
                self.command_line = Some(line);
                return None;
            }
        };
        self.history.push(text);
        if self.read_only {
            self.flash = Some(self.refusal(&format!("`{command}`")));
            return None;
        }
        self.run_typed(command)
    }

    /// A typed command, as its key would run it: what changes the engine at scale
    /// (retry every failed invoice, invalidate, a breaker, thresholds) and `shutdown`
    /// (the quit's drain) ask first in the same dialog, the exact effect spelled out;
    /// the rest is sent at once. The reply comes back to the flash line.
    fn run_typed(&mut self, command: Command) -> Option<Effect> {
        if self.watching_all() && !matches!(command, Command::Shutdown {}) {
            self.flash = Some(self.pick_first(&format!("`{command}`")));
            return None;
        }
        if matches!(command, Command::Shutdown {}) && !self.link.hosted() {
            // Only the console hosting the engine drains it.
            self.flash = Some(
                "an attached console does not stop the engine: q detaches; stop the engine \
                 where it runs (e.g. systemctl stop syncctl)"
                    .into(),
            );
            return None;
        }
        let confirm = match &command {
            Command::Shutdown {} => Confirm::Quit,
            Command::RetryFailed {} => {
                let count = self.snapshot.compliance.counts.get(InvoiceStatus::Failed);
                if count == 0 {
                    self.flash = Some("no FAILED invoices to retry".into());
                    return None;
                }
                Confirm::RetryFailed { count }
            }
            Command::RetryFailedJobs {} => {
                let count = self.snapshot.catalog.counts.failed;
                if count == 0 {
                    self.flash = Some("no failed catalog jobs to retry".into());
                    return None;
                }
                Confirm::RetryFailedJobs { count }
            }
            Command::Resync {} => {
                if !self.snapshot.catalog.full_sync.done {
                    self.flash = Some("a full sync is already running".into());
                    return None;
                }
                Confirm::Resync {
                    products: self.snapshot.catalog.counts.products_seen,
                }
            }
            Command::ResyncDrifted {} => {
                let r = &self.snapshot.reconciliation;
                let (drifted, missing) = (r.drifted.count, r.missing.count);
                if !r.ready {
                    self.flash = Some(format!("the reconciliation is not ready: {}", r.status));
                    return None;
                }
                if drifted + missing == 0 {
                    self.flash =
                        Some("nothing to resync: no Item drifted and none is missing".into());
                    return None;
                }
                Confirm::ResyncDrifted {
                    drifted,
                    missing,
                    amounts: {
                        let mut both = r.drifted.clone();
                        for m in &r.missing.amounts {
                            both.add(&m.currency, m.amount);
                        }
                        both.amounts
                    },
                }
            }
            Command::InvalidateCache { scope } => Confirm::InvalidateCache {
                scope: scope.clone(),
                entries: self.snapshot.telemetry.cache.entries,
            },
            Command::Resume { pipeline }
                if self.paused(*pipeline) && self.backlog(*pipeline) > 0 =>
            {
                Confirm::Resume {
                    pipeline: *pipeline,
                    backlog: self.backlog(*pipeline),
                }
            }
            Command::Breaker { service, action } => Confirm::Breaker {
                service: service.to_string(),
                to: match action {
                    BreakerAction::ForceOpen => Some(BreakerState::ForcedOpen),
                    BreakerAction::Close => Some(BreakerState::Closed),
                    BreakerAction::Disable => Some(BreakerState::Disabled),
                    BreakerAction::MetricsOnly => Some(BreakerState::MetricsOnly),
                    BreakerAction::Reset => None,
                },
            },
            Command::SetThresholds { changes, for_secs } => Confirm::Thresholds {
                changes: changes
                    .iter()
                    .map(|c| (c.name.clone(), self.threshold(&c.name), c.value))
                    .collect(),
                file: self.snapshot.config_file.clone(),
                for_secs: *for_secs,
            },
            _ => {
                self.flash = Some(format!("{command}…"));
                return self.send(command);
            }
        };
        self.open_confirm(confirm)
    }

    /// Opens a confirmation (focus on Cancel); for a bulk action, asks the engine for
    /// its impact preview, which the dialog shows once it comes.
    fn open_confirm(&mut self, confirm: Confirm) -> Option<Effect> {
        self.preview = confirm.previewed().map(|c| (c, None));
        self.confirm = Some(confirm);
        self.confirm_focus_ok = false;
        let (command, _) = self.preview.as_ref()?;
        Some(Effect::Ask(Query::Preview {
            command: command.clone(),
        }))
    }

    /// The value in force of threshold `name` (NaN when the snapshot has none).
    fn threshold(&self, name: &str) -> f64 {
        self.snapshot
            .telemetry
            .thresholds
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, v)| *v)
    }
}

/// Asks of Events searches kept as on their way, at most (one is answered or refused
/// in time, even over a link that drops: a bound against a leak, never reached).
const EVENTS_IN_FLIGHT_MAX: usize = 64;

/// A list's ids, owned, so its selection can move while they are read.
fn owned(ids: Vec<&str>) -> Vec<String> {
    ids.into_iter().map(str::to_owned).collect()
}

/// The cache prompt's text as the scope `:invalidate` would take it (the same
/// grammar and checks): nothing is all; `tag:` needs a name.
fn cache_scope(text: &str) -> Result<CacheScope, CommandError> {
    if text.is_empty() {
        return Ok(CacheScope::All);
    }
    let command = Command::from_words(["invalidate", text])?;
    command.validate()?;
    match command {
        Command::InvalidateCache { scope } => Ok(scope),
        other => Err(CommandError::invalid(
            "scope",
            format!("{text:?} reads as {other}, not a cache scope"),
        )),
    }
}
