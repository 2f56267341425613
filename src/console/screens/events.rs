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
//! With `/` the title shows the filter instead: `Events  filter: text▏ · 200 of 34444 · live`:
//! the engine searches its whole trail (pages load as you scroll; the total is its count),
//! and until it answers, the entries held here are searched. When it cannot search, the
//! title says why after the count of those held here: `· 3 of 500 · whole trail not
//! searched: the store: disk I/O error · live`.
//!
//! `J` toggles the operator journal: only operators' actions (from any front-end), each
//! with who, the result, and the `syncctl ctl …` line that does the same from a shell
//! (the command's text, dim, when it has none):
//!
//! ```text
//! ┌ Events  journal: operator actions · 3 shown · newest first · live · times UTC ──────────────────┐
//! │time     who                    result  syncctl ctl …                   what                      │
//! │HH:MM:SS ana@10.0.0.7 via ops   done    syncctl ctl pause catalog       paused catalog pipeline   │
//! │HH:MM:SS api:ops@10.0.0.7       refused syncctl ctl retry 'INV 12'      invoice "INV 12" not found│
//! │(below 100 cols: time, result, then who, the line and the engine's words in one column)           │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! With `/` there: `Events  journal  filter: ana▏ · 2 of 3 · live`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row, Table};

use crate::console::chrome::{block, clock};
use crate::console::state::App;
use crate::protocol::{AuditEntry, JournalEntry, JournalResult, OPERATOR};

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let audit = app.events_rows();
    let visible = area.height.saturating_sub(3) as usize;
    let offset = app.events_offset.min(audit.len().saturating_sub(1));
    let bundle = matches!(app.link, crate::protocol::LinkState::Bundle { .. });
    let follow = if bundle {
        "as taken"
    } else if offset == 0 {
        "live"
    } else {
        "scrolled — g for live"
    };
    // What the filter is counted against: the journal holds operators' actions only.
    let (view, held) = if app.events_journal {
        let operators = app.snapshot.audit.iter().filter(|e| e.kind == OPERATOR);
        ("Events  journal", operators.count())
    } else {
        ("Events", app.snapshot.audit.len())
    };
    // Once the engine has searched the whole trail: its true total (and those newer
    // since, shown live), "…" while it counts; until then, the entries held here.
    let total = match app.events_found() {
        Some(found) => match found.total {
            Some(n) => {
                let live = audit.len().saturating_sub(found.entries.len());
                (n + live as u64).to_string()
            }
            None => "…".to_owned(),
        },
        None => held.to_string(),
    };
    // The engine could not search: what is shown is what this console holds, and why.
    let failed = app
        .events_failed()
        .map(|why| match app.events_retry_in() {
            Some(n) => format!(" · whole trail not searched: {why} (again in {n} s)"),
            None if app.events_refused() => {
                format!(" · whole trail not searched: {why} (refused: not asked again)")
            }
            None => format!(" · whole trail not searched: {why}"),
        })
        .unwrap_or_default();
    let filtering = app.search_open || !app.events_filter.is_empty();
    let title = if filtering {
        format!(
            "{view}  filter: {}{} · {} of {total}{failed} · {follow}",
            app.events_filter,
            if app.search_open { "▏" } else { "" },
            audit.len(),
        )
    } else if app.events_journal {
        // Read from the store: every action, not only those among the newest entries.
        format!(
            "{view}: operator actions · {} of {total}{failed} · newest first · {follow} · times UTC",
            audit.len()
        )
    } else {
        format!(
            "{view}  {} shown · newest first · {follow} · times UTC",
            audit.len()
        )
    };
    // Narrow terminals drop the "who" column and name a person in the message instead.
    let wide = area.width >= 100;
    let shown = audit.iter().skip(offset).take(visible).copied();
    let table = if app.events_journal {
        journal(shown.filter_map(JournalEntry::from_audit), wide, app)
    } else {
        trail(shown, wide, app)
    };
    frame.render_widget(table.block(block(&title, app)), area);
}

/// The audit trail's rows: time, kind, entity, who, what.
fn trail<'a>(
    entries: impl Iterator<Item = &'a AuditEntry>,
    wide: bool,
    app: &App,
) -> Table<'static> {
    let t = &app.theme;
    let rows = entries.map(|e| {
        let kind_style = match e.kind.as_str() {
            "error" => t.error,
            "rejected" => t.warn,
            OPERATOR => t.key,
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
    Table::new(rows, widths).header(header.style(t.title))
}

/// The journal's rows: time, who, result, the `syncctl ctl …` line, what came of it.
fn journal(entries: impl Iterator<Item = JournalEntry>, wide: bool, app: &App) -> Table<'static> {
    let t = &app.theme;
    let rows = entries.map(|e| {
        let result = match e.result {
            JournalResult::Done => Span::styled(e.result.word(), t.ok),
            JournalResult::Refused => Span::styled(e.result.word(), t.warn),
        };
        // The line to type again, or the command's text when it has none.
        let what = match &e.cli {
            Some(cli) => Span::raw(cli.clone()),
            None => Span::styled(e.command.clone(), t.dim),
        };
        let time = Cell::from(Span::styled(clock(e.at_ms), t.dim));
        if wide {
            Row::new(vec![
                time,
                Cell::from(e.actor.clone()),
                Cell::from(result),
                Cell::from(what),
                Cell::from(Span::styled(e.message.clone(), t.dim)),
            ])
        } else {
            Row::new(vec![
                time,
                Cell::from(result),
                Cell::from(Line::from(vec![
                    Span::styled(format!("{}  ", e.actor), t.key),
                    what,
                    Span::styled(
                        if e.message.is_empty() {
                            String::new()
                        } else {
                            format!(" — {}", e.message)
                        },
                        t.dim,
                    ),
                ])),
            ])
        }
    });
    let (header, widths) = if wide {
        (
            Row::new(vec!["time", "who", "result", "syncctl ctl …", "what"]),
            vec![
                Constraint::Length(8),
                Constraint::Length(22),
                Constraint::Length(7),
                Constraint::Fill(1),
                Constraint::Fill(1),
            ],
        )
    } else {
        (
            Row::new(vec!["time", "result", "who  syncctl ctl … — what"]),
            vec![
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Min(10),
            ],
        )
    };
    Table::new(rows, widths).header(header.style(t.title))
}
