//! Drawing: free functions over `&App`, one file per screen, each starting with its
//! layout. [`draw`] lays out the frame, lets the chrome draw the header and footer,
//! hands the body to the current screen, then draws the overlays on top. Nothing here
//! mutates.
//!
//! ```text
//! ┌ header (chrome::header) ───────────────────────────────────────┐  1 row (2 when narrow)
//! │ body: the current tab's screen, one file each: overview,       │  the rest
//! │       throughput, circuits, workers, alerts, dian, events,     │
//! │       settings, reconcile                                      │
//! │              ┌ help (?, :help) / confirm ┐                     │  overlays (chrome)
//! │              └─────────────────────────────┘                   │
//! └ footer (chrome::footer): prompt │ flash │ key hints ───────────┘  1 row
//! ```
//!
//! Below [`chrome::MIN_WIDTH`]×[`chrome::MIN_HEIGHT`] only "terminal too small" is shown.
//! Every frame's cells are cleaned last ([`chrome::cells`]): no emoji a terminal draws
//! at a width of its own reaches it.

mod alerts;
mod circuits;
mod companies;
mod dian;
mod events;
mod overview;
mod reconcile;
mod settings;
mod throughput;
mod workers;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};

use crate::console::chrome;
use crate::console::state::{App, Tab};

/// The whole frame for the current state.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if chrome::is_too_small(area) {
        chrome::too_small(frame, area);
        return;
    }
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(chrome::header::height(app, area.width)),
        Constraint::Min(0),
        Constraint::Length(chrome::footer::height(app, area.width)),
    ])
    .areas(area);
    chrome::header::draw(frame, header, app);
    match app.tab {
        // Every company (the selector's "all"): one row each; the other screens are
        // one company's, so they say to pick one.
        Tab::Overview if app.watching_all() => companies::draw_overview(frame, body, app),
        _ if app.watching_all() => companies::draw_pick(frame, body, app),
        Tab::Overview => overview::draw(frame, body, app),
        Tab::Throughput => throughput::draw(frame, body, app),
        Tab::Circuits => circuits::draw(frame, body, app),
        Tab::Workers => workers::draw(frame, body, app),
        Tab::Alerts => alerts::draw(frame, body, app),
        Tab::Dian => dian::draw(frame, body, app),
        Tab::Events => events::draw(frame, body, app),
        Tab::Settings => settings::draw(frame, body, app),
        Tab::Reconcile => reconcile::draw(frame, body, app),
    }
    chrome::footer::draw(frame, footer, app);
    if app.help {
        chrome::help::draw(frame, area, app);
    }
    if app.commands_help {
        chrome::help::draw_commands(frame, area, app);
    }
    if app.who {
        chrome::who::draw(frame, area, app);
    }
    if app.chain.is_some() {
        chrome::chain::draw(frame, area, app);
    }
    if app.picker.is_some() {
        chrome::picker::draw(frame, area, app);
    }
    if app.confirm.is_some() {
        chrome::confirm::draw(frame, area, app);
    }
    // Last: whatever any string put in a cell, the terminal gets graphemes of the
    // width ratatui laid out.
    chrome::cells::clean_buffer(frame.buffer_mut());
}
