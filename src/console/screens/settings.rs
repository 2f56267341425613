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
//! what-if alerts.error_rate_percent 10 → 12: last 1h: 3 → 1 error_rate alerts would…    2 rows
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
use crate::console::chrome::format::clock;
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
            let expiring = app
                .snapshot
                .telemetry
                .expiring
                .iter()
                .find(|e| e.name == *name);
            let (new, style) = match (staged, expiring) {
                (Some(s), _) => (format!("→ {}", num(s)), t.warn),
                // Set for a while: when it comes back (the footer says to what).
                (None, Some(e)) => (format!("↺ {}", clock(e.until_ms)), t.dim),
                (None, None) => (String::new(), t.base),
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
        let lasting = app.staged_for.map_or(String::new(), |s| {
            format!(" for {}", crate::protocol::format_duration(s))
        });
        format!(
            "Settings  {} change(s) staged{lasting} — A applies, u undoes",
            app.staged.len()
        )
    };
    let [table_area, what_if, foot] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(2),
        Constraint::Length(3),
    ])
    .areas(area);
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
    let line = what_if_line(app, current.get(sel).map(|(n, _)| n.as_str()));
    frame.render_widget(Paragraph::new(line).wrap(Wrap { trim: true }), what_if);
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

/// The selected threshold's what-if once a value is staged for it; else, when it is
/// set for a while, when and to what it comes back; else how to get either.
fn what_if_line<'a>(app: &App, selected: Option<&str>) -> Span<'a> {
    let t = &app.theme;
    let Some(name) = selected else {
        return Span::raw("");
    };
    let expiring = app
        .snapshot
        .telemetry
        .expiring
        .iter()
        .find(|e| e.name == name)
        .map(|e| {
            format!(
                "{name} is {} until {} UTC (set by {}), then back to {}.",
                num(e.value),
                clock(e.until_ms),
                e.by,
                num(e.back_to)
            )
        });
    match (app.what_if_line(name), expiring) {
        (Some(w), _) => Span::styled(w, t.warn),
        (None, Some(e)) => Span::styled(e, t.dim),
        (None, None) => Span::styled(
            "A staged value shows here how often it would have fired over the last hour; `12 for 1h` sets it for a while.",
            t.dim,
        ),
    }
}
