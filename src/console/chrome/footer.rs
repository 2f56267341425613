//! The footer line, one of four things in this order: the `:` command line (see
//! [`super::command_line`]), the prompt being typed (with a problem in what was
//! typed, if any), the flash line with the result of the last action, or the hints
//! bar built from the key table (as many as fit, most useful first; `?` and `q`
//! always).

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::console::keymap;
use unicode_width::UnicodeWidthStr;

use crate::console::state::App;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    if let Some(line) = &app.command_line {
        super::command_line::draw(frame, area, app, line);
    } else if let Some(text) = &app.prompt {
        prompt(frame, area, app, text);
    } else if let Some(flash) = &app.flash {
        let line = Span::styled(format!(" {flash}"), app.theme.flash);
        frame.render_widget(Paragraph::new(line), area);
    } else {
        hints(frame, area, app);
    }
}

/// ` alerts.queue_depth: 12▏  Enter apply · Esc cancel`
fn prompt(frame: &mut Frame, area: Rect, app: &App, text: &str) {
    let t = &app.theme;
    let mut spans = vec![
        Span::styled(format!(" {}: ", app.prompt_kind.label()), t.title),
        Span::styled(format!("{text}▏"), t.key),
    ];
    // A problem with what was typed replaces the key hints: it must be read.
    match &app.flash {
        Some(flash) => spans.push(Span::styled(format!("  {flash}"), t.flash)),
        None => spans.push(Span::styled("  Enter apply · Esc cancel", t.dim)),
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The current screen's keys, then the global ones, as many as fit, most useful
/// first; help and quit always. (The screen numbers are on the header's tabs.)
fn hints(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let shown = fitting_hints(app, usize::from(area.width));
    let mut spans = vec![Span::raw(" ")];
    for (i, (keys, hint)) in shown.into_iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw("  "));
        }
        spans.push(Span::styled(keys, t.key));
        spans.push(Span::styled(format!(" {hint}"), t.dim));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The hints that fit in `width` columns, in the key table's order of usefulness:
/// those that must always show, then the others while they fit.
fn fitting_hints(app: &App, width: usize) -> Vec<(&'static str, &'static str)> {
    let all: Vec<_> = keymap::hinted(app.tab, app.read_only).collect();
    // `keys hint` and the two columns before the next.
    let cost = |b: &keymap::Binding| b.label.width() + 1 + b.hint.map_or(0, str::width) + 2;
    let mut room = width.saturating_sub(1) + 2;
    room = room.saturating_sub(
        all.iter()
            .filter(|b| b.action.always_hinted())
            .map(|b| cost(b))
            .sum(),
    );
    let mut shown = Vec::new();
    for b in all {
        if !b.action.always_hinted() {
            if cost(b) > room {
                continue;
            }
            room -= cost(b);
        }
        shown.push((b.label, b.hint.unwrap_or_default()));
    }
    shown
}
