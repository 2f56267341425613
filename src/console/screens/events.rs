//! Events (7): the audit trail, newest first, live until scrolled: sync events and
//! operator actions, filtered with `/`.
//!
//! At 100×30 (header and footer are the chrome's):
//!
//! ```text
//!  header (chrome): syncctl · SANDBOX · ▶ running · http://…   1  2  3  4  5  6  7 Events  8            row 0
//! ┌ Events  500 shown · newest first · live · times UTC ─────────────────────────────────────────────┐  the whole body (28 rows)
//! │time     kind     entity              who              what                                       │
//! │HH:MM:SS item     prod_F4g9b8WWzCvfxJ engine           created Item 903 "Licencia Clásico"        │
//! │HH:MM:SS operator prod_…              ana@10.0.0.7     paused catalog pipeline                    │
//! │(below 100 cols no "who" column: a person is named before the message instead)                    │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//!  footer (chrome): key hints from the key table · or the flash line · or the prompt                    row 29
//! ```
//!
//! With `/` the title shows the filter instead: `Events  filter: text▏ · 12 of 500 · live`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row, Table};

use crate::console::chrome::{block, clock};
use crate::console::state::App;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let audit = app.events_rows();
    let visible = area.height.saturating_sub(3) as usize;
    let offset = app.events_offset.min(audit.len().saturating_sub(1));
    let follow = if offset == 0 {
        "live"
    } else {
        "scrolled — g for live"
    };
    let filtering = app.search_open || !app.events_filter.is_empty();
    let title = if filtering {
        format!(
            "Events  filter: {}{} · {} of {} · {follow}",
            app.events_filter,
            if app.search_open { "▏" } else { "" },
            audit.len(),
            app.snapshot.audit.len()
        )
    } else {
        format!(
            "Events  {} shown · newest first · {follow} · times UTC",
            audit.len()
        )
    };
    // Narrow terminals drop the "who" column and name a person in the message instead.
    let wide = area.width >= 100;
    let rows = audit.iter().skip(offset).take(visible).map(|e| {
        let kind_style = match e.kind.as_str() {
            "error" => t.error,
            "rejected" => t.warn,
            "operator" => t.key,
            _ => t.base,
        };
        let mut cells = vec![
            Cell::from(Span::styled(clock(e.at_ms), t.dim)),
            Cell::from(Span::styled(e.kind.clone(), kind_style)),
            Cell::from(e.entity.clone()),
        ];
        if wide {
            cells.push(Cell::from(Span::styled(e.actor.clone(), t.dim)));
            cells.push(Cell::from(e.message.clone()));
        } else if e.actor != "engine" {
            cells.push(Cell::from(Line::from(vec![
                Span::styled(format!("{} ", e.actor), t.key),
                Span::raw(e.message.clone()),
            ])));
        } else {
            cells.push(Cell::from(e.message.clone()));
        }
        Row::new(cells)
    });
    let (header, widths) = if wide {
        (
            Row::new(vec!["time", "kind", "entity", "who", "what"]),
            vec![
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(19),
                Constraint::Length(16),
                Constraint::Min(10),
            ],
        )
    } else {
        (
            Row::new(vec!["time", "kind", "entity", "what"]),
            vec![
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(19),
                Constraint::Min(10),
            ],
        )
    };
    let table = Table::new(rows, widths)
        .header(header.style(t.title))
        .block(block(&title, app));
    frame.render_widget(table, area);
}
