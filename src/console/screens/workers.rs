//! Workers & queues (4): the catalog queue and its workers (current, target, bounds and
//! why), batch sizes, each downstream's rate limiter, and the autoscaler's recent
//! decisions. Actions (key table): worker bounds.
//!
//! At 100×30 (header and footer are the chrome's):
//!
//! ```text
//!  header (chrome): syncctl · SANDBOX · ▶ running · http://…   1  2  3  4 Workers  5  6  7  8           row 0
//! ┌ Catalog pipeline  (— paused) ────────────────────────────────────────────────────────────────────┐  6 rows
//! │queue 411 queued · oldest since HH:MM:SS · 5 in flight · 0 held back                              │
//! │workers 5 busy / 5 target · bounds 1–32  ((fixed) without autoscale)                              │
//! │why the autoscaler's current reason                                                               │
//! │batches claim 8 jobs · list page 100 products                                                     │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Rate limits (GCRA + in-flight cap; a 429 sets the ceiling) ──────────────────────────────────────┐  downstreams + 3 rows
//! │downstream   rate/min       in flight  pushback       429s   ceiling  budget                      │
//! │stripe       no limit       0 / –      –              0      –        101 left                    │
//! │quickbooks   4 800 of 6 000 2 / 10     paused 2.0s    4      6 000    290 left                    │
//! │alegra       1 500          0 / –      –              0      –        100 left                    │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Auto-scaler decisions (newest first) ────────────────────────────────────────────────────────────┐  the rest (16 rows)
//! │HH:MM:SS ▲  4 → 5  why                                                                            │
//! │HH:MM:SS ▼  5 → 4  why                                                                            │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//!  footer (chrome): key hints from the key table · or the flash line · or the prompt                    row 29
//! ```

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::console::chrome::columns::{self, Column};
use crate::console::chrome::{block, clock, group, secs};
use crate::console::state::App;

#[expect(
    clippy::too_many_lines,
    reason = "one screen's layout, read top to bottom as drawn"
)]
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let s = &app.snapshot;
    let c = &s.catalog;
    let [pipe, limits, decisions] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Length(s.downstreams.len() as u16 + 3),
        Constraint::Min(3),
    ])
    .areas(area);
    let lines = vec![
        Line::from(vec![
            Span::styled("queue ", t.dim),
            Span::raw(format!(
                "{} queued · oldest since {} · {} in flight · {} held back",
                group(c.counts.queued),
                c.counts
                    .oldest_queued_ms
                    .map_or_else(|| "–".to_owned(), clock),
                c.in_flight,
                group(c.deferred)
            )),
        ]),
        Line::from(vec![
            Span::styled("workers ", t.dim),
            Span::styled(
                format!("{} busy / {} target", c.workers_busy, c.workers_target),
                t.title,
            ),
            Span::raw(format!(
                " · bounds {}–{}{}",
                c.workers_min,
                c.workers_max,
                if c.autoscale { "" } else { " (fixed)" }
            )),
        ]),
        Line::from(vec![
            Span::styled("why ", t.dim),
            Span::raw(c.autoscale_status.clone()),
        ]),
        Line::from(vec![
            Span::styled("batches ", t.dim),
            Span::raw(format!(
                "claim {} jobs · list page {} products",
                c.claim_batch, c.page_size
            )),
        ]),
    ];
    frame.render_widget(
        Paragraph::new(lines).block(block(
            if c.paused {
                "Catalog pipeline — paused"
            } else {
                "Catalog pipeline"
            },
            app,
        )),
        pipe,
    );
    let rows: Vec<(Vec<Line>, Style)> = s
        .downstreams
        .iter()
        .map(|d| {
            let l = &d.limiter;
            let rate = if l.rate_per_min == 0 {
                "no limit".to_owned()
            } else if l.effective_per_min < l.rate_per_min {
                format!(
                    "{} of {}",
                    group(l.effective_per_min as u64),
                    group(l.rate_per_min as u64)
                )
            } else {
                group(l.rate_per_min as u64)
            };
            let conc = match (l.max_concurrent, l.effective_concurrent) {
                (0, 0) => format!("{} / –", l.in_flight),
                (_, e) => format!("{} / {}", l.in_flight, e),
            };
            let pushback = if l.paused_for_ms > 0 {
                Span::styled(format!("paused {}", secs(l.paused_for_ms)), t.warn)
            } else {
                Span::raw("–")
            };
            let cells = vec![
                Line::from(d.name.clone()),
                Line::from(rate),
                Line::from(conc),
                Line::from(pushback),
                Line::from(group(d.throttled)),
                // The rate the last 429 answered (learned, kept across restarts).
                Line::from(
                    l.ceiling_per_min
                        .map_or_else(|| "–".to_owned(), |c| group(c as u64)),
                ),
                Line::from(format!("{} left", d.budget_available)),
            ];
            (cells, Style::default())
        })
        .collect();
    // Figures are never cut: the pushback and the budget give way first.
    let cols = vec![
        Column::whole("downstream", 9),
        Column::num("rate/min", 9),
        Column::num("in flight", 9),
        Column::text("pushback", 14, 14, 1).droppable(),
        Column::num("429s", 9),
        Column::num("ceiling", 2).droppable(),
        Column::whole("budget", 0).droppable().flex(),
    ];
    let (table, note) = columns::table(cols, rows, limits.width.saturating_sub(2), t.title);
    let title = format!("Rate limits{note} (GCRA + in-flight cap; a 429 sets the ceiling)");
    frame.render_widget(table.block(block(&title, app)), limits);
    let items: Vec<Line> = if c.decisions.is_empty() {
        vec![Line::from(Span::styled("no scaling decision yet", t.dim))]
    } else {
        c.decisions
            .iter()
            .map(|d| {
                let arrow = if d.to > d.from { "▲" } else { "▼" };
                Line::from(vec![
                    Span::styled(format!("{} ", clock(d.at_ms)), t.dim),
                    Span::styled(format!("{arrow} {:>2} → {:<2} ", d.from, d.to), t.title),
                    Span::raw(d.reason.clone()),
                ])
            })
            .collect()
    };
    frame.render_widget(
        Paragraph::new(items).block(block("Auto-scaler decisions (newest first)", app)),
        decisions,
    );
}
