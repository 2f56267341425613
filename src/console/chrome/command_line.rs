//! The `:` command line at the bottom, as in vim and k9s: `:` and the text with its
//! cursor in the footer row (scrolled sideways when longer than the terminal); above
//! it, over the body's last rows, what the operator must read — the error of the last
//! Enter (wrapped, up to three rows), the completions being cycled through (the chosen
//! one highlighted), or that nothing completes.
//!
//! ```text
//! │ catalog  [compliance]                                                     │  completions
//! └ :pause compliance█             Enter run · Tab complete · ↑↓ history · Esc ┘  the line
//! ```

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Wrap};

use crate::console::command_line::CommandLine;
use crate::console::state::App;

/// What the footer says after the text, room permitting.
const KEYS: &str = "Enter run · Tab complete · ↑↓ history · Esc cancel";
const KEYS_READ_ONLY: &str = "read-only: help, quit, screens · Esc cancel";

/// The line in `area` (the footer row) and its note above it.
pub fn draw(frame: &mut Frame, area: Rect, app: &App, line: &CommandLine) {
    let t = &app.theme;
    let room = usize::from(area.width).saturating_sub(2);
    let start = line.scroll(room);
    let chars: Vec<char> = line.text().chars().skip(start).take(room).collect();
    let at = line.cursor() - start;
    let before: String = chars.iter().take(at).collect();
    let under = chars.get(at).map_or(" ".to_owned(), char::to_string);
    let after: String = chars.iter().skip(at + 1).collect();
    let used = 2 + chars.len().max(at + 1);
    let mut spans = vec![
        Span::styled(" :", t.title),
        Span::styled(before, t.base),
        Span::styled(under, t.key.add_modifier(Modifier::REVERSED)),
        Span::styled(after, t.base),
    ];
    let keys = if app.read_only { KEYS_READ_ONLY } else { KEYS };
    if room + 2 >= used + 4 + keys.chars().count() {
        spans.push(Span::raw("   "));
        spans.push(Span::styled(keys, t.dim));
    }
    frame.render_widget(Clear, area);
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
    note(frame, area, app, line);
}

/// The error, the completions or "no completion", over the rows above `footer`.
fn note(frame: &mut Frame, footer: Rect, app: &App, line: &CommandLine) {
    let t = &app.theme;
    let width = usize::from(footer.width).max(1);
    let (text, rows) = if let Some(error) = &line.error {
        let rows = (error.chars().count() + 2).div_ceil(width).clamp(1, 3);
        (Line::styled(format!(" {error}"), t.flash), rows)
    } else if let Some((words, chosen)) = line.candidates() {
        (candidates(app, &words, chosen, width), 1)
    } else if line.found_no_completion() {
        (Line::styled(" no completion", t.dim), 1)
    } else {
        return;
    };
    let rows = (rows as u16).min(footer.y);
    let rect = Rect {
        y: footer.y - rows,
        height: rows,
        ..footer
    };
    frame.render_widget(Clear, rect);
    frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: false }), rect);
}

/// The completed words on one line, from the first that lets the chosen one show.
fn candidates(app: &App, words: &[&str], chosen: usize, width: usize) -> Line<'static> {
    let t = &app.theme;
    let widths: Vec<usize> = words.iter().map(|w| w.chars().count() + 2).collect();
    let first = first_shown(&widths, chosen, width.saturating_sub(1));
    let mut spans = vec![Span::raw(if first > 0 { "…" } else { " " })];
    for (i, w) in words.iter().enumerate().skip(first) {
        let style = if i == chosen { t.tab_active } else { t.dim };
        spans.push(Span::styled(format!(" {w} "), style));
    }
    Line::from(spans)
}

/// The first of the items (of `widths` columns each) to show so that the `chosen`
/// one ends within `room` columns.
fn first_shown(widths: &[usize], chosen: usize, room: usize) -> usize {
    let mut first = 0;
    while first < chosen && widths[first..=chosen].iter().sum::<usize>() > room {
        first += 1;
    }
    first
}

#[cfg(test)]
mod tests {
    use super::first_shown;

    #[test]
    fn the_chosen_completion_is_always_in_view() {
        let widths = [10, 10, 10, 10];
        assert_eq!(first_shown(&widths, 0, 25), 0);
        assert_eq!(first_shown(&widths, 1, 25), 0);
        assert_eq!(first_shown(&widths, 3, 25), 2);
        // Wider than the room: shown from itself (cut at the edge).
        assert_eq!(first_shown(&widths, 3, 5), 3);
    }
}
