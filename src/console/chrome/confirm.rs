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
    let extra = u16::try_from(what_if.len() * 2).unwrap_or(u16::MAX);
    let rect = centered(area, 60, 8u16.saturating_add(extra));
    frame.render_widget(Clear, rect);
    let title = confirm.title();
    let b = block(&title, app);
    let inner = b.inner(rect);
    frame.render_widget(b, rect);
    let [text, buttons] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    let mut lines = vec![Line::raw(confirm.effect())];
    lines.extend(what_if.into_iter().map(|w| Line::styled(w, t.warn)));
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
