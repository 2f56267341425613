//! The panel of who is attached (`W`, `:who`): every console the engine serves over its
//! WebSocket — the person (OS user and SSH address its console sent), the token it came
//! with, what it may do, since when and from where — and which one is this console.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};

use super::format::clock;
use super::help::overlay;
use crate::console::state::App;
use crate::protocol::{LinkState, Role};

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let me = match &app.link {
        LinkState::Attached(a) => Some(a.connection),
        LinkState::Hosted | LinkState::Reconnecting { .. } => None,
    };
    let mut lines = vec![Line::styled(
        match &app.link {
            LinkState::Hosted => " this console hosts the engine (in this process)".to_owned(),
            LinkState::Attached(a) => format!(
                " ▶ this console: #{} to {}, acting as {}",
                a.connection, a.to, a.actor
            ),
            LinkState::Reconnecting { was, .. } => format!(
                " reconnecting to {}: the list is as of the last word from the engine",
                was.to
            ),
        },
        t.dim,
    )];
    if app.consoles.is_empty() {
        lines.push(Line::raw(" no console is attached over the network"));
    }
    for c in &app.consoles {
        let person = match &c.ssh {
            Some(at) => format!("{}@{at}", c.user),
            None => c.user.clone(),
        };
        let role = match c.role {
            Role::Operator => Span::raw("operator"),
            Role::Viewer => Span::styled("viewer  ", t.warn),
        };
        let this = Some(c.connection) == me;
        let spans = vec![
            Span::styled(if this { " ▶" } else { "  " }, t.key),
            Span::styled(format!("#{:<4}", c.connection), t.key),
            Span::raw(format!("{person:<24} ")),
            role,
            Span::raw(format!(
                "  token {:<10} since {}  from {}",
                c.token,
                clock(c.since_ms),
                c.remote
            )),
        ];
        lines.push(Line::from(spans));
    }
    let title = format!("Attached consoles: {} (any key closes)", app.consoles.len());
    overlay(frame, area, app, &title, lines);
}
