//! The help overlay (`?`), generated from the same key table as the hints bar.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};

use super::widgets::{block, centered};
use crate::console::keymap::{Action, Binding, Scope, bindings_on};
use crate::console::state::{App, Tab};

/// Help for the current screen, from the key table: the screen's own keys, the list
/// keys (on one line), then the global ones not shadowed by a screen key; the screen
/// numbers on one line.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let applies: Vec<_> = bindings_on(app.tab).collect();
    let line = |label: &str, help: &str| {
        Line::from(vec![
            Span::styled(format!("{label:>6}  "), t.key),
            Span::raw(help.to_owned()),
        ])
    };
    let screens: Vec<String> = Tab::ALL
        .iter()
        .map(|tab| format!("{} {}", tab.key(), tab.title()))
        .collect();
    let mut lines = vec![
        line("1–4", &screens[..4].join(" · ")),
        line("5–8", &screens[4..].join(" · ")),
    ];
    for b in applies
        .iter()
        .filter(|b| !matches!(b.scope, Scope::Global | Scope::Lists))
    {
        lines.push(line(b.label, b.help));
    }
    let lists: Vec<&&Binding> = applies.iter().filter(|b| b.scope == Scope::Lists).collect();
    if !lists.is_empty() {
        let labels: Vec<&str> = lists.iter().map(|b| b.label).collect();
        lines.push(line(
            &labels.join(" "),
            "move: up, down, a page, newest, oldest",
        ));
    }
    for b in applies
        .iter()
        .filter(|b| b.scope == Scope::Global && !matches!(b.action, Action::GoTab(_)))
    {
        lines.push(line(b.label, b.help));
    }
    let title = format!("Keys — {} (any key closes)", app.tab.title());
    let width = area.width.saturating_sub(2).min(96);
    let rect = centered(area, width, (lines.len() as u16 + 2).min(area.height));
    frame.render_widget(Clear, rect);
    frame.render_widget(Paragraph::new(lines).block(block(&title, app)), rect);
}
