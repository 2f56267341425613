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

/// Most flash lines fit one row; one that does not (a bundle's file name, a refusal
/// with its reason) takes up to this many, wrapped, rather than being cut.
const MAX_FLASH_ROWS: u16 = 3;

/// The footer's height at this width: one row, or the rows a long flash line needs
/// (up to [`MAX_FLASH_ROWS`]) when the flash line is what the footer shows.
pub fn height(app: &App, width: u16) -> u16 {
    match (&app.command_line, &app.prompt, &app.flash) {
        (None, None, Some(flash)) => {
            let width = usize::from(width.max(1));
            let rows = (1 + flash.width()).div_ceil(width);
            u16::try_from(rows)
                .unwrap_or(u16::MAX)
                .clamp(1, MAX_FLASH_ROWS)
        }
        _ => 1,
    }
}

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    if let Some(line) = &app.command_line {
        super::command_line::draw(frame, area, app, line);
    } else if let Some(text) = &app.prompt {
        prompt(frame, area, app, text);
    } else if let Some(flash) = &app.flash {
        let line = Span::styled(format!(" {flash}"), app.theme.flash);
        // Wrapped at any character: a path or a token has no spaces to break at.
        let rows = wrap_chars(&line.content, usize::from(area.width.max(1)));
        let lines: Vec<Line> = rows
            .into_iter()
            .map(|r| Line::styled(r, app.theme.flash))
            .collect();
        frame.render_widget(Paragraph::new(lines), area);
    } else {
        hints(frame, area, app);
    }
}

/// `text` cut into rows of at most `width` columns, at word ends where a row has one,
/// else at the character that no longer fits (a path, a token).
fn wrap_chars(text: &str, width: usize) -> Vec<String> {
    use unicode_width::UnicodeWidthChar;
    let mut rows = Vec::new();
    let mut row = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width && !row.is_empty() {
            // Break after the row's last space when it has one past its start.
            match row.rfind(' ').filter(|&i| i > 1) {
                Some(i) => {
                    let rest = row.split_off(i + 1);
                    rows.push(row.trim_end().to_owned());
                    used = rest.width();
                    row = rest;
                }
                None => {
                    rows.push(std::mem::take(&mut row));
                    used = 0;
                }
            }
        }
        row.push(c);
        used += w;
    }
    if !row.is_empty() {
        rows.push(row);
    }
    rows
}

/// ` alerts.queue_depth: 12▏  Enter stages · Esc cancel`
fn prompt(frame: &mut Frame, area: Rect, app: &App, text: &str) {
    let t = &app.theme;
    let mut spans = vec![
        Span::styled(format!(" {}: ", app.prompt_kind.label()), t.title),
        Span::styled(format!("{text}▏"), t.key),
    ];
    // A problem with what was typed replaces the key hints: it must be read.
    match &app.flash {
        Some(flash) => spans.push(Span::styled(format!("  {flash}"), t.flash)),
        None => spans.push(Span::styled(
            format!("  {} · Esc cancel", app.prompt_kind.enter_does()),
            t.dim,
        )),
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
