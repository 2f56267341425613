//! The help overlays: the keys (`?`), generated from the same key table as the hints
//! bar (a read-only console lists no engine action), and the commands the `:` line
//! takes (`:help`), from the protocol's grammar. A line too long for the box wraps
//! under its text, and a help taller than the terminal scrolls (↑↓ j k PgUp PgDn;
//! any other key closes), so no line is ever lost at an edge.

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
    let title = format!("Keys — {}", app.tab.title());
    scrolled(frame, area, app, &title, lines, 8);
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
        Span::styled(" chain KEY", t.key),
        Span::styled(
            "  the chain of a product, Item, invoice, DIAN number or CUFE",
            t.dim,
        ),
    ]));
    lines.push(Line::from(vec![
        Span::styled(" help · quit · who · a screen's name", t.key),
        Span::raw(format!("  ({})", screens.join(" "))),
    ]));
    scrolled(
        frame,
        area,
        app,
        "Commands (: then Tab completes)",
        lines,
        5,
    );
}

/// `lines` in a box with `title` as [`overlay`] draws it, each line wrapped under its
/// text (`indent` cells in) where it is too wide, scrolled by `app.help_scroll`; the
/// title says how to scroll and close, and which lines show when not all fit.
fn scrolled(
    frame: &mut Frame,
    area: Rect,
    app: &App,
    title: &str,
    lines: Vec<Line<'_>>,
    indent: usize,
) {
    let width = area.width.saturating_sub(2).min(96);
    let inner = usize::from(width.saturating_sub(2));
    let lines: Vec<Line> = lines
        .into_iter()
        .flat_map(|l| wrap(l, inner, indent))
        .collect();
    let room = usize::from(area.height.saturating_sub(2));
    let total = lines.len();
    let first = usize::from(app.help_scroll).min(total.saturating_sub(room));
    let title = if total > room {
        let last = (first + room).min(total);
        let more = if last < total { " ↓" } else { "" };
        format!(
            "{title} {}–{last}/{total}{more} · ↑↓ scroll · other keys close",
            first + 1
        )
    } else {
        format!("{title} · any key closes")
    };
    let shown: Vec<Line> = lines.into_iter().skip(first).collect();
    let rect = centered(area, width, (total as u16 + 2).min(area.height));
    frame.render_widget(Clear, rect);
    frame.render_widget(Paragraph::new(shown).block(block(&title, app)), rect);
}

/// `line` cut into lines of at most `width` cells, at a space where there is one; the
/// lines after the first start `indent` cells in.
fn wrap(line: Line<'_>, width: usize, indent: usize) -> Vec<Line<'static>> {
    use unicode_width::UnicodeWidthChar;
    let cells: Vec<(char, ratatui::style::Style)> = line
        .spans
        .iter()
        .flat_map(|s| s.content.chars().map(move |c| (c, s.style)))
        .collect();
    let to_line = |cells: &[(char, ratatui::style::Style)], pad: usize| {
        let mut spans: Vec<Span<'static>> = Vec::new();
        if pad > 0 {
            spans.push(Span::raw(" ".repeat(pad)));
        }
        for (c, style) in cells {
            match spans.last_mut() {
                Some(last) if last.style == *style => {
                    last.content.to_mut().push(*c);
                }
                _ => spans.push(Span::styled(c.to_string(), *style)),
            }
        }
        Line::from(spans)
    };
    let mut out = Vec::new();
    let mut rest: &[(char, ratatui::style::Style)] = &cells;
    let mut pad = 0;
    let indent = indent.min(width / 2);
    while !rest.is_empty() {
        let room = width.saturating_sub(pad).max(1);
        let mut used = 0;
        let mut cut = rest.len();
        for (i, (c, _)) in rest.iter().enumerate() {
            used += c.width().unwrap_or(0);
            if used > room {
                cut = i.max(1);
                break;
            }
        }
        if cut < rest.len()
            && let Some(space) = rest[..cut].iter().rposition(|(c, _)| *c == ' ')
            && space > 0
        {
            cut = space;
        }
        out.push(to_line(&rest[..cut], pad));
        rest = &rest[cut..];
        while rest.first().is_some_and(|(c, _)| *c == ' ') {
            rest = &rest[1..];
        }
        pad = indent;
    }
    if out.is_empty() {
        out.push(Line::from(""));
    }
    out
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
