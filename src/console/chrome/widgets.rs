//! Small widgets the screens and overlays share.

use ratatui::layout::Rect;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders};

use crate::console::state::App;
use crate::protocol::Severity;

/// A bordered box with a bold title, the frame of every panel.
pub fn block<'a>(title: &'a str, app: &App) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(app.theme.dim)
        .title(Span::styled(format!(" {title} "), app.theme.title))
}

/// A `width`×`height` rectangle in the middle of `area` (clipped to it).
pub fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// An alert's severity as a symbol and a word (readable without colour).
pub fn severity_span(app: &App, s: Severity) -> Span<'static> {
    let t = &app.theme;
    match s {
        Severity::Critical => Span::styled("✖ critical", t.error),
        Severity::Warning => Span::styled("▲ warning", t.warn),
        Severity::Info => Span::styled("● info", t.base),
    }
}
