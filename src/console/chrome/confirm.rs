//! The confirm dialog for actions that change the engine's behaviour at scale.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Wrap};

use super::widgets::{block, centered};
use crate::console::state::App;

/// The pending confirmation: its title, the exact effect, and the buttons with the
/// focus on Cancel until the operator moves it.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let Some(confirm) = &app.confirm else { return };
    let t = &app.theme;
    // Thresholds: how often each would have fired, under the diff.
    let what_if: Vec<String> = match confirm {
        crate::console::state::Confirm::Thresholds { changes, .. } => changes
            .iter()
            .filter_map(|(name, _, _)| app.what_if_line(name))
            .collect(),
        _ => Vec::new(),
    };
    let preview = preview_lines(app);
    let extra = u16::try_from(what_if.len() * 2).unwrap_or(u16::MAX);
    let (width, height) = if preview.is_empty() {
        (60, 8u16.saturating_add(extra))
    } else {
        // Every line wrapped at the dialog's inside width (one row of slack for the
        // effect's word wrap), plus the borders and the buttons.
        let inner = usize::from(68u16.min(area.width).saturating_sub(2)).max(1);
        let rows: usize = std::iter::once(confirm.effect().chars().count())
            .chain(preview.iter().map(Line::width))
            .map(|w| w.div_ceil(inner).max(1))
            .sum();
        (68, u16::try_from(rows + 4).unwrap_or(u16::MAX))
    };
    let rect = centered(area, width, height);
    frame.render_widget(Clear, rect);
    let title = confirm.title();
    let b = block(&title, app);
    let inner = b.inner(rect);
    frame.render_widget(b, rect);
    let [text, buttons] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    let mut lines = vec![Line::raw(confirm.effect())];
    lines.extend(what_if.into_iter().map(|w| Line::styled(w, t.warn)));
    lines.extend(preview);
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), text);
    let (cancel_style, ok_style) = if app.confirm_focus_ok {
        (t.base, t.button_focus)
    } else {
        (t.button_focus, t.base)
    };
    let line = Line::from(vec![
        Span::styled(" [ Cancel ] ", cancel_style),
        Span::raw("   "),
        Span::styled(format!(" [ {} ] ", confirm.action_word()), ok_style),
        Span::styled("   ←/→ choose · Enter · y/n", t.dim),
    ]);
    frame.render_widget(Paragraph::new(line).alignment(Alignment::Center), buttons);
}

/// The impact preview of a bulk action, compact: items and held, one line per
/// downstream (calls, minutes of its quota at the limit in force), what runs first.
/// "estimating…" until the engine answers; why not, if it cannot.
fn preview_lines(app: &App) -> Vec<Line<'static>> {
    let t = &app.theme;
    let Some((_, answer)) = &app.preview else {
        return Vec::new();
    };
    let p = match answer {
        None => return vec![Line::styled("impact: estimating…", t.dim)],
        Some(Err(why)) => return vec![Line::styled(format!("impact: no preview ({why})"), t.warn)],
        Some(Ok(p)) => p,
    };
    let mut lines = if p.held == 0 {
        vec![Line::from(vec![
            Span::styled("impact: ", t.dim),
            Span::raw(format!("{} {} · held 0", p.items, p.noun)),
        ])]
    } else {
        // What would wait, on a line of its own (it wraps), in the warning style.
        vec![
            Line::from(vec![
                Span::styled("impact: ", t.dim),
                Span::raw(format!("{} {}", p.items, p.noun)),
            ]),
            Line::styled(format!("· {}", p.held_line()), t.warn),
        ]
    };
    lines.extend(
        p.cost_lines()
            .into_iter()
            .map(|c| Line::raw(format!("· {c}"))),
    );
    if let Some(first) = p.first_line_of(3) {
        lines.push(Line::styled(format!("· {first}"), t.dim));
    }
    // The first caveat (the API and `ctl --dry-run` give them all).
    if let Some(note) = p.notes.first() {
        lines.push(Line::styled(format!("· {note}"), t.dim));
    }
    lines
}
