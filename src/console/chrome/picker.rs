//! The company picker (`@`, an engine serving several companies): "all companies",
//! then each company with its state; ↑↓ move, Enter chooses, Esc closes. The row
//! watched now is marked ●, the highlighted one ▶.
//!
//! ```text
//! ┌ Company (↑↓ Enter · Esc) ──────────────┐
//! │ ▶ ● all companies (3)                  │
//! │     co1 (Company One)      EXCELLENT   │
//! │     co2 (Company Two)      PAUSED      │
//! └────────────────────────────────────────┘
//! ```

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};

use super::widgets::{block, centered};
use crate::console::state::App;
use crate::protocol::Watching;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let Some(at) = app.picker else {
        return;
    };
    let t = &app.theme;
    let rows = app.picker_rows();
    let label_w = rows
        .iter()
        .map(|(_, l)| l.chars().count())
        .max()
        .unwrap_or(0)
        .min(40);
    let lines: Vec<Line> = rows
        .iter()
        .enumerate()
        .map(|(i, (w, label))| {
            let here = i == at;
            let state = match w {
                Watching::All => String::new(),
                Watching::One(id) => app
                    .companies
                    .iter()
                    .find(|r| r.company.id == *id)
                    .map(|r| r.state())
                    .unwrap_or_default(),
            };
            let label: String = label.chars().take(label_w).collect();
            let style = if here { t.tab_active } else { t.base };
            Line::from(vec![
                Span::styled(if here { " ▶ " } else { "   " }, t.key),
                Span::styled(if *w == app.watching { "● " } else { "  " }, t.key),
                Span::styled(format!("{label:<label_w$}"), style),
                Span::styled(format!("  {state}"), t.dim),
            ])
        })
        .collect();
    let width = (label_w as u16 + 20)
        .max(30)
        .min(area.width.saturating_sub(2));
    let rect = centered(area, width, (lines.len() as u16 + 2).min(area.height));
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(block("Company (↑↓ Enter · Esc)", app)),
        rect,
    );
}
