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
        LinkState::Hosted | LinkState::Reconnecting { .. } | LinkState::Bundle { .. } => None,
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
            LinkState::Bundle { file, .. } => {
                format!(" incident bundle {file}: no engine, the list is as it was when taken")
            }
        },
        t.dim,
    )];
    if app.consoles.is_empty() {
        lines.push(Line::raw(" no console is attached over the network"));
    }
    // The person's column as wide as the longest (at most 28); the address each
    // connection comes from only where the row has room for it.
    let person = |c: &crate::protocol::AttachedConsole| match &c.ssh {
        Some(at) => format!("{}@{at}", c.user),
        None => c.user.clone(),
    };
    let wide = app
        .consoles
        .iter()
        .map(|c| person(c).chars().count())
        .max()
        .unwrap_or(0)
        .min(28);
    let room = usize::from(area.width.saturating_sub(2).min(96)).saturating_sub(2);
    for c in &app.consoles {
        let this = Some(c.connection) == me;
        let role = match c.role {
            Role::Operator => Span::raw("operator"),
            Role::Viewer => Span::styled("viewer  ", t.warn),
        };
        let head = format!("#{:<4}", c.connection);
        let body = format!("{:<wide$}  ", person(c));
        let tail = format!("  token {}  since {}", c.token, clock(c.since_ms));
        let from = format!("  from {}", c.remote);
        let used = 2 + head.chars().count() + body.chars().count() + 8 + tail.chars().count();
        let mut spans = vec![
            Span::styled(if this { " ▶" } else { "  " }, t.key),
            Span::styled(head, t.key),
            Span::raw(body),
            role,
            Span::raw(tail),
        ];
        if used + from.chars().count() <= room {
            spans.push(Span::styled(from, t.dim));
        }
        lines.push(Line::from(spans));
    }
    let title = format!("Attached consoles: {} (any key closes)", app.consoles.len());
    overlay(frame, area, app, &title, lines);
}
