//! Console state and its one `update` path. Rendering reads this; only `update`
//! changes it, and it never does I/O: what should reach the engine comes back as a
//! [`Command`] for the caller to send.

use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent};

use super::keymap::{self, Action};
use super::theme::Theme;
use crate::engine::{Command, Snapshot, operator};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Events,
}

impl Tab {
    pub const ALL: [Tab; 2] = [Tab::Overview, Tab::Events];
    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Events => "Events",
        }
    }
    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// A question that needs an answer before anything happens; focus starts on Cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    Quit,
}

impl Confirm {
    pub fn title(&self) -> &'static str {
        match self {
            Confirm::Quit => "Quit syncctl?",
        }
    }
    pub fn effect(&self) -> &'static str {
        match self {
            Confirm::Quit => {
                "The engine stops claiming work, finishes what is in flight, then exits. Queued work stays queued for the next start."
            }
        }
    }
    pub fn action_word(&self) -> &'static str {
        match self {
            Confirm::Quit => "Quit",
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
        }
    }

    pub fn shows_list(&self) -> bool {
        self.tab == Tab::Events
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
        if let Some(confirm) = self.confirm.clone() {
            return self.on_confirm_key(confirm, key);
        }
        if self.help {
            self.help = false;
            return None;
        }
        self.flash = None;
        let action = keymap::action_for(&key, self.shows_list())?;
        let page = 10;
        match action {
            Action::NextTab => self.tab = Tab::ALL[(self.tab.index() + 1) % Tab::ALL.len()],
            Action::PrevTab => {
                self.tab = Tab::ALL[(self.tab.index() + Tab::ALL.len() - 1) % Tab::ALL.len()]
            }
            Action::GoTab(t) => self.tab = t,
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
                let actor = self.actor.clone();
                return Some(if self.snapshot.catalog.paused {
                    self.flash = Some("resuming catalog pipeline…".into());
                    Command::ResumeCatalog { actor }
                } else {
                    self.flash = Some("pausing catalog pipeline (in-flight work finishes)…".into());
                    Command::PauseCatalog { actor }
                });
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

    fn clamp_offset(&self, offset: usize) -> usize {
        offset.min(self.snapshot.audit.len().saturating_sub(1))
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
                        Some(Command::Shutdown)
                    }
                }
            }
            _ => None,
        }
    }
}
