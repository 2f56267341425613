//! Settings (8): the thresholds in force, the changes staged, and what each means; edits
//! are checked, applied with `A`, and saved to the config file when there is one.
//!
//! At 100×30 (header and footer are the chrome's):
//!
//! ```text
//!  header (chrome): syncctl · SANDBOX · ▶ running · http://…   1  2  3  4  5  6  7  8 Settings          row 0
//! ┌ Settings  thresholds in force  (N change(s) staged — A applies, u undoes) ───────────────────────┐  the rest (25 rows)
//! │  threshold                        value   staged     meaning                                     │
//! │▶ alerts.error_rate_percent        10      → 12       error rate of a downstream over the last min│
//! │  alerts.latency_p95_ms            5000               p95 latency of a downstream (ms)            │
//! │  …                                                   (one row per threshold)                     │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! Enter edits (checked first: a bad value leaves the old one in force). Applied values are saved        3 rows
//! to FILE, comments kept. Also: PUT /api/v1/thresholds.  (wrapped)
//! ```
//!
//!  footer (chrome): key hints from the key table · or the flash line · or the prompt                    row 29

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};

use crate::console::chrome::block;
use crate::console::state::{App, num};
use crate::protocol::THRESHOLDS;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let current = &app.snapshot.telemetry.thresholds;
    let sel = app.setting_row.min(current.len().saturating_sub(1));
    let rows: Vec<Row> = current
        .iter()
        .enumerate()
        .map(|(i, (name, v))| {
            let staged = app.staged(name);
            let (new, style) = match staged {
                Some(s) => (format!("→ {}", num(s)), t.warn),
                None => (String::new(), t.base),
            };
            let help = THRESHOLDS
                .iter()
                .find(|x| x.name == name)
                .map_or("", |x| x.help);
            let row_style = if i == sel { t.tab_active } else { t.base };
            let mark = if i == sel { "▶ " } else { "  " };
            Row::new(vec![
                Cell::from(format!("{mark}{name}")),
                Cell::from(num(*v)),
                Cell::from(Span::styled(new, style)),
                Cell::from(Span::styled(help, t.dim)),
            ])
            .style(row_style)
        })
        .collect();
    let title = if app.staged.is_empty() {
        "Settings  thresholds in force".to_owned()
    } else {
        format!(
            "Settings  {} change(s) staged — A applies, u undoes",
            app.staged.len()
        )
    };
    let [table_area, foot] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(area);
    let table = Table::new(
        rows,
        [
            Constraint::Length(34),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Min(10),
        ],
    )
    .header(Row::new(["  threshold", "value", "staged", "meaning"]).style(t.dim))
    .block(block(&title, app));
    frame.render_widget(table, table_area);
    let saved = match &app.snapshot.config_file {
        Some(f) => format!("Applied values are saved to {f}, comments kept."),
        None => "No config file: applied values last until the engine stops (start with --config FILE to keep them).".into(),
    };
    let note = format!(
        "Enter edits (checked first: a bad value leaves the old one in force). {saved} Also: PUT /api/v1/thresholds."
    );
    frame.render_widget(
        Paragraph::new(Span::styled(note, t.dim)).wrap(Wrap { trim: true }),
        foot,
    );
}
