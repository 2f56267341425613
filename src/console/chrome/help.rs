//! The help overlays: the keys (`?`), generated from the same key table as the hints
//! bar (a read-only console lists no engine action), and the commands the `:` line
//! takes (`:help`), from the protocol's grammar.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};

use super::widgets::{block, centered};
use crate::console::keymap::{Action, Binding, Scope, bindings_on};
use crate::console::state::{App, Tab};
use crate::protocol::grammar;

/// Help for the current screen, from the key table: the screen's own keys, the list
/// keys (on one line), then the global ones not shadowed by a screen key; the screen
/// numbers on one line.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let applies: Vec<_> = bindings_on(app.tab)
        .filter(|b| b.shown(app.read_only))
        .collect();
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
        line(&format!("5–{}", Tab::ALL.len()), &screens[4..].join(" · ")),
    ];
    if app.read_only {
        lines.insert(0, read_only_line(app));
    }
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
    overlay(frame, area, app, &title, lines);
}

/// `:help`: the console's own words, then (unless read-only) every command form of
/// the grammar and what it does.
pub fn draw_commands(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let mut lines = Vec::new();
    if app.read_only {
        lines.push(read_only_line(app));
    } else {
        // What each form does on a line of its own where the height allows, else
        // after it (cut at the edge).
        let roomy = usize::from(area.height) >= 2 * grammar().len() + 4;
        for (usage, what) in grammar() {
            let usage = Span::styled(format!(" {usage}"), t.key);
            if roomy {
                lines.push(Line::from(usage));
                lines.push(Line::from(format!("     {what}")));
            } else {
                lines.push(Line::from(vec![
                    usage,
                    Span::styled(format!("  {what}"), t.dim),
                ]));
            }
        }
    }
    let screens: Vec<String> = Tab::ALL.iter().map(|t| t.title().to_lowercase()).collect();
    lines.push(Line::from(vec![
        Span::styled(" help · quit · who · a screen's name", t.key),
        Span::raw(format!("  ({})", screens.join(" "))),
    ]));
    overlay(
        frame,
        area,
        app,
        "Commands (: then Tab completes; any key closes)",
        lines,
    );
}

/// The read-only console's line at the top of both overlays.
fn read_only_line(app: &App) -> Line<'static> {
    let text = match &app.link {
        crate::protocol::LinkState::Bundle { about, .. } => {
            format!(
                " incident bundle ({about}): frozen, actions are hidden and refused; views and q work"
            )
        }
        _ => " read-only console: actions are hidden and refused; views and q work".to_owned(),
    };
    Line::styled(text, app.theme.warn)
}

/// `lines` in a box with `title`, centred, as wide as fits (at most 96 columns).
pub(super) fn overlay(frame: &mut Frame, area: Rect, app: &App, title: &str, lines: Vec<Line<'_>>) {
    let width = area.width.saturating_sub(2).min(96);
    let rect = centered(area, width, (lines.len() as u16 + 2).min(area.height));
    frame.render_widget(Clear, rect);
    frame.render_widget(Paragraph::new(lines).block(block(title, app)), rect);
}
