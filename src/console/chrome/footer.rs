//! The footer line, one of four things in this order: the `:` command line (see
//! [`super::command_line`]), the prompt being typed (with a problem in what was
//! typed, if any), the flash line with the result of the last action, or the hints
//! bar built from the key table.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::console::keymap;
use crate::console::state::{App, Tab};

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

/// The current screen's keys, then the global ones, then the screen numbers.
fn hints(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let mut spans = vec![Span::raw(" ")];
    for (keys, hint) in keymap::hints(app.tab, app.read_only) {
        spans.push(Span::styled(keys, t.key));
        spans.push(Span::styled(format!(" {hint}  "), t.dim));
    }
    let keys: Vec<String> = Tab::ALL.iter().map(|t| t.key().to_string()).collect();
    spans.push(Span::styled(keys.join(" "), t.key));
    spans.push(Span::styled(" screens", t.dim));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}
