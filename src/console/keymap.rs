//! The one table of key bindings: (key, screen) → [`Action`], as data. The same table
//! feeds `update` (which interprets the action), the hints bar and the `?` help, so the
//! three can never disagree. Pure: it names screens ([`Tab`]) and nothing else of the
//! console, and changes nothing.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::tab::Tab;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    NextTab,
    PrevTab,
    GoTab(Tab),
    TogglePause,
    /// `p` on the DIAN screen: pause / resume sending to DIAN (the compliance pipeline).
    ToggleCompliancePause,
    ToggleFreeze,
    Help,
    Quit,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    Back,
    ForceOpen,
    CloseCircuit,
    DisableCircuit,
    MetricsOnly,
    ResetCircuit,
    ToggleOutage,
    SetBounds,
    RetryInvoice,
    RetryFailed,
    /// `F` on Workers: queue again every catalog job that failed (after a preview).
    RetryFailedJobs,
    /// `S` on Workers: run the catalog's full sync again (after a preview).
    Resync,
    /// `r` on Reconcile: write the selected product's Item again from Stripe.
    ResyncItem,
    /// `R` on Reconcile: write every drifted and missing Item again (after a preview).
    ResyncDrifted,
    CycleStatus,
    Search,
    ToggleJournal,
    TogglePayload,
    /// Scroll the DIAN detail pane's payload up / down a few rows.
    PayloadUp,
    PayloadDown,
    InvalidateCache,
    ChartWindow,
    AckAlert,
    SilenceAlert,
    EditSetting,
    UndoSetting,
    ApplySettings,
    Tune,
    CommandLine,
    /// `W`: who is attached to the engine.
    Who,
    /// `L`: the entity chain of the selected invoice (DIAN), event (Events) or
    /// discrepancy (Reconcile).
    Chain,
    /// `B`: write an incident bundle to a file (`syncctl bundle show FILE` opens it).
    WriteBundle,
    /// `@`: the company picker — all companies, or one (an engine serving several).
    PickCompany,
}

impl Action {
    /// What the action does to the engine, as the read-only refusal says it
    /// ("pausing"); `None` for what only changes this console's view (screens, moves,
    /// search, freeze, help) and for quitting it. A read-only console neither shows
    /// nor carries out the actions this names.
    pub fn engine_action(self) -> Option<&'static str> {
        match self {
            Action::TogglePause => Some("pausing or resuming a pipeline"),
            Action::ToggleCompliancePause => Some("pausing or resuming DIAN sending"),
            Action::ForceOpen => Some("forcing a circuit open"),
            Action::CloseCircuit => Some("closing a circuit"),
            Action::DisableCircuit => Some("disabling a circuit"),
            Action::MetricsOnly => Some("setting a circuit to metrics only"),
            Action::ResetCircuit => Some("resetting a circuit"),
            Action::ToggleOutage => Some("simulating an outage"),
            Action::SetBounds => Some("changing worker bounds"),
            Action::RetryInvoice => Some("retrying an invoice"),
            Action::RetryFailed => Some("retrying failed invoices"),
            Action::RetryFailedJobs => Some("retrying failed catalog jobs"),
            Action::Resync => Some("re-running the full sync"),
            Action::ResyncItem => Some("resyncing an Item"),
            Action::ResyncDrifted => Some("resyncing every drifted Item"),
            Action::InvalidateCache => Some("invalidating the cache"),
            Action::AckAlert => Some("acknowledging alerts"),
            Action::SilenceAlert => Some("silencing alerts"),
            Action::EditSetting | Action::UndoSetting => Some("editing thresholds"),
            Action::ApplySettings => Some("applying thresholds"),
            Action::NextTab
            | Action::PrevTab
            | Action::GoTab(_)
            | Action::ToggleFreeze
            | Action::Help
            | Action::Quit
            | Action::Up
            | Action::Down
            | Action::PageUp
            | Action::PageDown
            | Action::Top
            | Action::Bottom
            | Action::Back
            | Action::CycleStatus
            | Action::Search
            | Action::TogglePayload
            | Action::PayloadUp
            | Action::PayloadDown
            | Action::ChartWindow
            | Action::Tune
            | Action::ToggleJournal
            | Action::CommandLine
            | Action::Who
            | Action::Chain
            | Action::WriteBundle
            | Action::PickCompany => None,
        }
    }
}

impl Action {
    /// Whether the hints bar shows the action however narrow the terminal: the way
    /// out and the way to every other key.
    pub fn always_hinted(self) -> bool {
        matches!(self, Action::Help | Action::Quit)
    }
}

/// The flash line when a read-only console is asked for `what` (an action's
/// [`Action::engine_action`], or a command typed at the `:` line).
pub fn read_only_refusal(what: &str) -> String {
    format!(
        "read-only console: {what} is not allowed (attached with --read-only or a viewer token)"
    )
}

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    /// Screens with a list to move through (Circuits, Events).
    Lists,
    Circuits,
    Workers,
    Dian,
    Throughput,
    Alerts,
    Settings,
    Events,
    Reconcile,
    /// Screens with a search or filter (DIAN, Events).
    Searchable,
}

impl Scope {
    /// One screen's own keys (or a few screens'), as opposed to global and list keys.
    fn is_screen(self) -> bool {
        !matches!(self, Scope::Global | Scope::Lists)
    }

    pub fn applies(self, tab: Tab) -> bool {
        match self {
            Scope::Global => true,
            Scope::Lists => matches!(
                tab,
                Tab::Events
                    | Tab::Circuits
                    | Tab::Dian
                    | Tab::Alerts
                    | Tab::Settings
                    | Tab::Reconcile
            ),
            Scope::Circuits => tab == Tab::Circuits,
            Scope::Workers => tab == Tab::Workers,
            Scope::Dian => tab == Tab::Dian,
            Scope::Throughput => tab == Tab::Throughput,
            Scope::Alerts => tab == Tab::Alerts,
            Scope::Settings => tab == Tab::Settings,
            Scope::Events => tab == Tab::Events,
            Scope::Reconcile => tab == Tab::Reconcile,
            Scope::Searchable => matches!(tab, Tab::Dian | Tab::Events),
        }
    }
}

pub struct Binding {
    pub keys: &'static [KeyCode],
    /// How the keys are written in hints and help.
    pub label: &'static str,
    pub action: Action,
    pub scope: Scope,
    /// Short word for the hints bar; `None` keeps it to the help only.
    pub hint: Option<&'static str>,
    pub help: &'static str,
}

impl Binding {
    /// Whether hints and help show the binding: not an engine action on a read-only
    /// console.
    pub fn shown(&self, read_only: bool) -> bool {
        !read_only || self.action.engine_action().is_none()
    }
}

pub const BINDINGS: &[Binding] = &[
    Binding {
        keys: &[KeyCode::Char('1')],
        label: "1",
        action: Action::GoTab(Tab::Overview),
        scope: Scope::Global,
        hint: None,
        help: "Overview",
    },
    Binding {
        keys: &[KeyCode::Char('2')],
        label: "2",
        action: Action::GoTab(Tab::Throughput),
        scope: Scope::Global,
        hint: None,
        help: "Throughput (items/s, invoices/s, latency, errors)",
    },
    Binding {
        keys: &[KeyCode::Char('3')],
        label: "3",
        action: Action::GoTab(Tab::Circuits),
        scope: Scope::Global,
        hint: None,
        help: "Circuits (breaker per downstream)",
    },
    Binding {
        keys: &[KeyCode::Char('4')],
        label: "4",
        action: Action::GoTab(Tab::Workers),
        scope: Scope::Global,
        hint: None,
        help: "Workers & queues (auto-scaler, limits)",
    },
    Binding {
        keys: &[KeyCode::Char('5')],
        label: "5",
        action: Action::GoTab(Tab::Alerts),
        scope: Scope::Global,
        hint: None,
        help: "Anomalies & alerts",
    },
    Binding {
        keys: &[KeyCode::Char('6')],
        label: "6",
        action: Action::GoTab(Tab::Dian),
        scope: Scope::Global,
        hint: None,
        help: "DIAN queue (invoice compliance)",
    },
    Binding {
        keys: &[KeyCode::Char('r')],
        label: "r",
        action: Action::RetryInvoice,
        scope: Scope::Dian,
        hint: Some("retry"),
        help: "retry the selected invoice (DIAN)",
    },
    Binding {
        keys: &[KeyCode::Char('R')],
        label: "R",
        action: Action::RetryFailed,
        scope: Scope::Dian,
        hint: Some("retry failed"),
        help: "retry every FAILED invoice, after a preview of how many (DIAN)",
    },
    Binding {
        keys: &[KeyCode::Char('s')],
        label: "s",
        action: Action::CycleStatus,
        scope: Scope::Dian,
        hint: Some("state"),
        help: "filter by state: all, then each state in turn (DIAN)",
    },
    Binding {
        keys: &[KeyCode::Char('/')],
        label: "/",
        action: Action::Search,
        scope: Scope::Searchable,
        hint: Some("search"),
        help: "search: DIAN by number, CUFE or Stripe id; Events by any words; Esc clears",
    },
    Binding {
        keys: &[KeyCode::Char('J')],
        label: "J",
        action: Action::ToggleJournal,
        scope: Scope::Events,
        hint: Some("journal"),
        help: "journal: operators' actions only, with who, result, `syncctl ctl` line (Events)",
    },
    Binding {
        keys: &[KeyCode::Char('v')],
        label: "v",
        action: Action::TogglePayload,
        scope: Scope::Dian,
        hint: None,
        help: "detail pane: history or the payload sent to Alegra (DIAN)",
    },
    Binding {
        keys: &[KeyCode::Char('[')],
        label: "[",
        action: Action::PayloadUp,
        scope: Scope::Dian,
        hint: None,
        help: "scroll the payload up (DIAN)",
    },
    Binding {
        keys: &[KeyCode::Char(']')],
        label: "]",
        action: Action::PayloadDown,
        scope: Scope::Dian,
        hint: None,
        help: "scroll the payload down (DIAN)",
    },
    Binding {
        keys: &[KeyCode::Char('p')],
        label: "p",
        action: Action::ToggleCompliancePause,
        scope: Scope::Dian,
        hint: Some("pause sending"),
        help: "pause / resume sending to DIAN; paid invoices still arrive and wait (DIAN)",
    },
    Binding {
        keys: &[KeyCode::Char('7')],
        label: "7",
        action: Action::GoTab(Tab::Events),
        scope: Scope::Global,
        hint: None,
        help: "Events (audit trail)",
    },
    Binding {
        keys: &[KeyCode::Char('8')],
        label: "8",
        action: Action::GoTab(Tab::Settings),
        scope: Scope::Global,
        hint: None,
        help: "Settings (thresholds)",
    },
    Binding {
        keys: &[KeyCode::Char('9')],
        label: "9",
        action: Action::GoTab(Tab::Reconcile),
        scope: Scope::Global,
        hint: None,
        help: "Reconcile (Stripe against QuickBooks, live)",
    },
    Binding {
        keys: &[KeyCode::Char('r')],
        label: "r",
        action: Action::ResyncItem,
        scope: Scope::Reconcile,
        hint: Some("resync"),
        help: "write the selected product's Item again from Stripe (Reconcile)",
    },
    Binding {
        keys: &[KeyCode::Char('R')],
        label: "R",
        action: Action::ResyncDrifted,
        scope: Scope::Reconcile,
        hint: Some("resync all"),
        help: "write every drifted and missing Item again, after a preview (Reconcile)",
    },
    Binding {
        keys: &[KeyCode::Char('t')],
        label: "t",
        action: Action::Tune,
        scope: Scope::Global,
        hint: None,
        help: "tune thresholds (opens Settings)",
    },
    Binding {
        keys: &[KeyCode::Char('W')],
        label: "W",
        action: Action::Who,
        scope: Scope::Global,
        hint: None,
        help: "who is attached: every console on this engine (user, SSH address, token, role)",
    },
    Binding {
        keys: &[KeyCode::Char('L')],
        label: "L",
        action: Action::Chain,
        scope: Scope::Global,
        hint: None,
        help: "chain of the selected row: product → Item → Alegra → DIAN (:chain KEY)",
    },
    Binding {
        keys: &[KeyCode::Char('@')],
        label: "@",
        action: Action::PickCompany,
        scope: Scope::Global,
        hint: None,
        help: "company: all (one row each on the Overview) or one (every screen and command is its)",
    },
    Binding {
        keys: &[KeyCode::Char('B')],
        label: "B",
        action: Action::WriteBundle,
        scope: Scope::Global,
        hint: None,
        help: "incident bundle: snapshot, alerts, series, audit, redacted config to one file here",
    },
    Binding {
        keys: &[KeyCode::Char('c')],
        label: "c",
        action: Action::InvalidateCache,
        scope: Scope::Global,
        hint: None,
        help: "invalidate cached QuickBooks lookups: all, a pattern or a tag (asks first)",
    },
    Binding {
        keys: &[KeyCode::Char('w')],
        label: "w",
        action: Action::ChartWindow,
        scope: Scope::Throughput,
        hint: Some("window 1m/5m/1h"),
        help: "charts over 1 minute, 5 minutes or 1 hour (Throughput)",
    },
    Binding {
        keys: &[KeyCode::Char('a')],
        label: "a",
        action: Action::AckAlert,
        scope: Scope::Alerts,
        hint: Some("acknowledge"),
        help: "acknowledge the selected alert: no more notifications while it fires (Alerts)",
    },
    Binding {
        keys: &[KeyCode::Char('z')],
        label: "z",
        action: Action::SilenceAlert,
        scope: Scope::Alerts,
        hint: Some("silence"),
        help: "silence the selected alert for a while (30m, 2h, 1d) (Alerts)",
    },
    Binding {
        keys: &[KeyCode::Enter, KeyCode::Char('e')],
        label: "Enter",
        action: Action::EditSetting,
        scope: Scope::Settings,
        hint: Some("edit"),
        help: "edit the selected threshold (checked before it is staged) (Settings)",
    },
    Binding {
        keys: &[KeyCode::Char('u')],
        label: "u",
        action: Action::UndoSetting,
        scope: Scope::Settings,
        hint: Some("undo"),
        help: "drop the selected threshold's staged value (Settings)",
    },
    Binding {
        keys: &[KeyCode::Char('A')],
        label: "A",
        action: Action::ApplySettings,
        scope: Scope::Settings,
        hint: Some("apply"),
        help: "apply the staged thresholds, after the diff; saved to the config file (Settings)",
    },
    Binding {
        keys: &[KeyCode::Char('o')],
        label: "o",
        action: Action::ForceOpen,
        scope: Scope::Circuits,
        hint: Some("force open"),
        help: "force the selected circuit open (Circuits)",
    },
    Binding {
        keys: &[KeyCode::Char('C')],
        label: "C",
        action: Action::CloseCircuit,
        scope: Scope::Circuits,
        hint: Some("close"),
        help: "close the selected circuit (Circuits)",
    },
    Binding {
        keys: &[KeyCode::Char('d')],
        label: "d",
        action: Action::DisableCircuit,
        scope: Scope::Circuits,
        hint: Some("disable"),
        help: "disable: let all calls through, record nothing (Circuits)",
    },
    Binding {
        keys: &[KeyCode::Char('m')],
        label: "m",
        action: Action::MetricsOnly,
        scope: Scope::Circuits,
        hint: None,
        help: "metrics only: record, never trip (Circuits)",
    },
    Binding {
        keys: &[KeyCode::Char('x')],
        label: "x",
        action: Action::ResetCircuit,
        scope: Scope::Circuits,
        hint: Some("reset"),
        help: "reset: CLOSED with metrics cleared (Circuits)",
    },
    Binding {
        keys: &[KeyCode::Char('O')],
        label: "O",
        action: Action::ToggleOutage,
        scope: Scope::Circuits,
        hint: None,
        help: "demo: simulate / end an outage of the service (Circuits)",
    },
    Binding {
        keys: &[KeyCode::Char('b')],
        label: "b",
        action: Action::SetBounds,
        scope: Scope::Workers,
        hint: Some("worker bounds"),
        help: "set catalog worker bounds MIN-MAX (Workers)",
    },
    Binding {
        keys: &[KeyCode::Char('F')],
        label: "F",
        action: Action::RetryFailedJobs,
        scope: Scope::Workers,
        hint: None,
        help: "retry every failed catalog job, after a preview of how many (Workers)",
    },
    Binding {
        keys: &[KeyCode::Char('S')],
        label: "S",
        action: Action::Resync,
        scope: Scope::Workers,
        hint: None,
        help: "run the catalog's full sync again, after a preview (Workers)",
    },
    Binding {
        keys: &[KeyCode::Char(':')],
        label: ":",
        action: Action::CommandLine,
        scope: Scope::Global,
        hint: Some("command"),
        help: "type a command, e.g. pause compliance; Tab completes, :help lists",
    },
    Binding {
        keys: &[KeyCode::Tab],
        label: "Tab",
        action: Action::NextTab,
        scope: Scope::Global,
        hint: Some("tabs"),
        help: "next tab",
    },
    Binding {
        keys: &[KeyCode::BackTab],
        label: "S-Tab",
        action: Action::PrevTab,
        scope: Scope::Global,
        hint: None,
        help: "previous tab",
    },
    Binding {
        keys: &[KeyCode::Char('p')],
        label: "p",
        action: Action::TogglePause,
        scope: Scope::Global,
        hint: Some("pause"),
        help: "pause / resume the catalog pipeline (in-flight work finishes)",
    },
    Binding {
        keys: &[KeyCode::Char('f')],
        label: "f",
        action: Action::ToggleFreeze,
        scope: Scope::Global,
        hint: Some("freeze"),
        help: "freeze / unfreeze the display (the engine keeps running)",
    },
    Binding {
        keys: &[KeyCode::Up, KeyCode::Char('k')],
        label: "↑/k",
        action: Action::Up,
        scope: Scope::Lists,
        hint: None,
        help: "scroll up",
    },
    Binding {
        keys: &[KeyCode::Down, KeyCode::Char('j')],
        label: "↓/j",
        action: Action::Down,
        scope: Scope::Lists,
        hint: Some("scroll"),
        help: "scroll down",
    },
    Binding {
        keys: &[KeyCode::PageUp],
        label: "PgUp",
        action: Action::PageUp,
        scope: Scope::Lists,
        hint: None,
        help: "page up",
    },
    Binding {
        keys: &[KeyCode::PageDown],
        label: "PgDn",
        action: Action::PageDown,
        scope: Scope::Lists,
        hint: None,
        help: "page down",
    },
    Binding {
        keys: &[KeyCode::Char('g'), KeyCode::Home],
        label: "g",
        action: Action::Top,
        scope: Scope::Lists,
        hint: None,
        help: "newest (follow live)",
    },
    Binding {
        keys: &[KeyCode::Char('G'), KeyCode::End],
        label: "G",
        action: Action::Bottom,
        scope: Scope::Lists,
        hint: None,
        help: "oldest",
    },
    Binding {
        keys: &[KeyCode::Char('?')],
        label: "?",
        action: Action::Help,
        scope: Scope::Global,
        hint: Some("help"),
        help: "this help",
    },
    Binding {
        keys: &[KeyCode::Esc],
        label: "Esc",
        action: Action::Back,
        scope: Scope::Global,
        hint: None,
        help: "close / back",
    },
    Binding {
        keys: &[KeyCode::Char('q')],
        label: "q",
        action: Action::Quit,
        scope: Scope::Global,
        hint: Some("quit"),
        help: "quit (asks first; drains in-flight work)",
    },
];

/// Ctrl-C: in raw mode a key like any other, which must still mean "quit?".
pub fn is_interrupt(key: &KeyEvent) -> bool {
    key.modifiers.contains(KeyModifiers::CONTROL)
        && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C'))
}

/// The action bound to `key` on the screen `tab`.
pub fn action_for(key: &KeyEvent, tab: Tab) -> Option<Action> {
    if is_interrupt(key) {
        return Some(Action::Quit);
    }
    bindings_on(tab)
        .find(|b| b.keys.contains(&key.code))
        .map(|b| b.action)
}

/// The bindings in force on the screen `tab`, in table order. A screen's own binding of
/// a key shadows a global or list one: `p` on DIAN pauses what DIAN shows, not the
/// catalog, and its hint and help are the ones shown there.
pub fn bindings_on(tab: Tab) -> impl Iterator<Item = &'static Binding> {
    BINDINGS
        .iter()
        .filter(move |b| b.scope.applies(tab) && !shadowed(b, tab))
}

/// Whether a screen binding on `tab` takes one of `b`'s keys.
fn shadowed(b: &Binding, tab: Tab) -> bool {
    !b.scope.is_screen()
        && BINDINGS.iter().any(|o| {
            o.scope.is_screen() && o.scope.applies(tab) && o.keys.iter().any(|k| b.keys.contains(k))
        })
}

/// The bindings with a hint on the current screen, most useful first: the screen's
/// own keys, then the list keys, then the global ones, each in table order (no engine action on a
/// read-only console).
pub fn hinted(tab: Tab, read_only: bool) -> impl Iterator<Item = &'static Binding> {
    let local = bindings_on(tab).filter(|b| b.scope.is_screen());
    let lists = bindings_on(tab).filter(|b| b.scope == Scope::Lists);
    let global = bindings_on(tab).filter(|b| b.scope == Scope::Global);
    local
        .chain(lists)
        .chain(global)
        .filter(move |b| b.shown(read_only) && b.hint.is_some())
}

/// `(keys, hint)` pairs for the hints bar on the current screen, as [`hinted`].
pub fn hints(tab: Tab, read_only: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
    hinted(tab, read_only).filter_map(|b| b.hint.map(|h| (b.label, h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_bound_twice_on_one_screen() {
        for tab in Tab::ALL {
            let mut seen = std::collections::HashSet::new();
            for b in bindings_on(tab) {
                for k in b.keys {
                    assert!(seen.insert(*k), "{k:?} bound twice on {tab:?}");
                }
            }
        }
        // Nor twice in one scope, where shadowing cannot choose.
        for (i, a) in BINDINGS.iter().enumerate() {
            for b in &BINDINGS[i + 1..] {
                let shared = a.keys.iter().find(|k| b.keys.contains(k));
                assert!(
                    a.scope != b.scope || shared.is_none(),
                    "{shared:?} bound twice in {:?}",
                    a.scope
                );
            }
        }
    }

    #[test]
    fn p_pauses_what_the_screen_shows_and_its_hint_says_which() {
        let p = KeyEvent::from(KeyCode::Char('p'));
        assert_eq!(
            action_for(&p, Tab::Dian),
            Some(Action::ToggleCompliancePause)
        );
        for tab in Tab::ALL.into_iter().filter(|t| *t != Tab::Dian) {
            assert_eq!(action_for(&p, tab), Some(Action::TogglePause), "{tab:?}");
        }
        let on = |tab| {
            hints(tab, false)
                .filter(|(k, _)| *k == "p")
                .collect::<Vec<_>>()
        };
        assert_eq!(on(Tab::Dian), [("p", "pause sending")]);
        assert_eq!(on(Tab::Overview), [("p", "pause")]);
    }

    #[test]
    fn list_keys_only_act_on_list_screens() {
        let j = KeyEvent::from(KeyCode::Char('j'));
        assert_eq!(action_for(&j, Tab::Overview), None);
        assert_eq!(action_for(&j, Tab::Events), Some(Action::Down));
        let o = KeyEvent::from(KeyCode::Char('o'));
        assert_eq!(action_for(&o, Tab::Events), None);
        assert_eq!(action_for(&o, Tab::Circuits), Some(Action::ForceOpen));
    }

    #[test]
    fn read_only_hints_hold_no_engine_action() {
        for tab in Tab::ALL {
            let all: Vec<_> = hints(tab, false).collect();
            let read_only: Vec<_> = hints(tab, true).collect();
            for (label, hint) in &all {
                let b = BINDINGS.iter().find(|b| b.label == *label);
                let acts = b.is_some_and(|b| b.action.engine_action().is_some());
                assert_eq!(read_only.contains(&(label, hint)), !acts, "{tab:?} {label}");
            }
            assert!(read_only.contains(&("q", "quit")) && read_only.contains(&(":", "command")));
        }
    }
}
