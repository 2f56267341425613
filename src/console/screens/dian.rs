//! DIAN queue (6): the electronic invoices — counts by state, Alegra's quota and DIAN's
//! contingency state, the invoices (filtered by state, searched), and the selected one's
//! history or payload. Actions (key table): retry one, retry all failed, filter, search,
//! pause / resume sending to DIAN (`p` here; the catalog's `p` elsewhere).
//!
//! At 100×30 (header and footer are the chrome's):
//!
//! ```text
//!  header (chrome): syncctl · SANDBOX · ▶ running · http://…   1  2  3  4  5  6 DIAN  7  8              row 0
//! ✓ VALIDATED 2  ↻ RETRY 1  …  (counts by state, the filtered one highlighted)                          2–3 rows
//! 2 sends · 2 validated · 0 in flight · PAUSED (p resumes sending) · Alegra quota 1497/1500 left, resets in 48s · search: …
//! ⚑ contingency / ⚠ DIAN not answering / ⚑ DIAN OUTAGE …  (only when there is one)
//! ┌ DIAN queue — 2 of 2 (all) ───────────────────────────────────────────────────────────────────────┐  the rest (17 rows, 16 with the third line); CUFE ≥120 cols
//! │  number        buyer                total COP     state       att next       last                │
//! │▶ SETP990000002 Comercializadora And  1 204 280,00 ✓ VALIDATED 1   –          00 accepted by DIAN │
//! │  SETP990000001 Café Montaña S.A.S.   3 882 970,00 ↻ RETRY     2   HH:MM:SS   code and its words  │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ History (v: payload) ────────────────────────────────────────────────────────────────────────────┐  a third, 6–14 rows (9); v: payload
//! │SETP990000002 in_… · buyer 900123456 Name · issued 2026-11-30 · CUFE … (· contingency …)          │
//! │HH:MM:SS PENDING→VALIDATED #1 00 accepted by DIAN — engine   (newest last, wrapped)               │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//!  footer (chrome): key hints from the key table · or the flash line · or the prompt                    row 29
//! ```
//!
//! With the compliance pipeline off, the body is one "DIAN queue" box saying how to turn
//! it on.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};

use crate::console::chrome::columns::{self, Column};
use crate::console::chrome::{block, clock, countdown, group};
use crate::console::state::App;
use crate::protocol::{Status as InvoiceStatus, explain};

#[expect(
    clippy::too_many_lines,
    reason = "one screen's layout, read top to bottom as drawn"
)]
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let c = &app.snapshot.compliance;
    if !c.enabled {
        frame.render_widget(
            Paragraph::new(vec![
                Line::from("The invoice compliance pipeline is off."),
                Line::from(Span::styled(
                    "Set [alegra] base_url, email and token in the config to send paid invoices to DIAN.",
                    t.dim,
                )),
            ])
            .wrap(Wrap { trim: true })
            .block(block("DIAN queue", app)),
            area,
        );
        return;
    }
    let detail_h = (area.height / 3).clamp(6, 14);
    let contingency = contingency_line(app);
    let [summary, table_area, detail] = Layout::vertical([
        Constraint::Length(2 + contingency.is_some() as u16),
        Constraint::Min(4),
        Constraint::Length(detail_h),
    ])
    .areas(area);
    // Counts by state, each with its symbol (readable without colour).
    // States with invoices in them (and the filtered one), so it fits 80 columns.
    let mut spans = Vec::new();
    for s in InvoiceStatus::ALL {
        let n = c.counts.get(s);
        let active = app.dian_filter == Some(s);
        if n == 0 && !active {
            continue;
        }
        let style = invoice_style(app, s);
        spans.push(Span::styled(
            format!("{} {} {}", s.symbol(), s.name(), group(n)),
            if active {
                style.patch(t.tab_active)
            } else {
                style
            },
        ));
        spans.push(Span::raw("  "));
    }
    if c.counts.total == 0 {
        spans.push(Span::styled("no paid invoices yet", t.dim));
    }
    let mut second = vec![Span::styled(
        format!(
            "{} sends · {} validated · {} in flight",
            group(c.sends),
            group(c.validated),
            c.in_flight
        ),
        t.dim,
    )];
    // Before the quota, so 80 columns still show it.
    if c.paused {
        second.push(Span::styled(" · PAUSED (p resumes sending)", t.warn));
    }
    if c.window.limit > 0 {
        // Counted down between answers (none come while the circuit is open or sending
        // is paused); once the reset has passed, what was last seen is only that.
        let quota = match c.window.reset_in_ms(c.now_ms) {
            Some(left) => format!(
                " · Alegra quota {}/{} left, resets in {}",
                c.window.remaining,
                c.window.limit,
                countdown(left)
            ),
            None => format!(
                " · Alegra quota {}/{} left at {} (that window has reset)",
                c.window.remaining,
                c.window.limit,
                clock(c.window.seen_at_ms)
            ),
        };
        second.push(Span::styled(quota, t.dim));
    }
    if app.search_open || !app.dian_search.is_empty() {
        second.push(Span::styled(
            format!(
                " · search: {}{}",
                app.dian_search,
                if app.search_open { "▏" } else { "" }
            ),
            t.title,
        ));
    }
    let mut summary_lines = vec![Line::from(spans), Line::from(second)];
    summary_lines.extend(contingency);
    frame.render_widget(Paragraph::new(summary_lines), summary);

    let rows = app.dian_rows();
    // The selected invoice by identity: none while it has left the view.
    let selected = app.dian_selected_row();
    let anchor = app.dian_sel.anchor(&app.dian_ids());
    let wide = area.width >= 120;
    let visible = table_area.height.saturating_sub(3) as usize;
    let first = anchor.saturating_sub(visible.saturating_sub(1));
    let body: Vec<(Vec<Line>, Style)> = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(visible.max(1))
        .map(|(i, r)| {
            // Contingency invoices count down to their deadline instead.
            let next = match (r.status, r.deadline_at_ms, r.next_at_ms) {
                (s, Some(deadline), _) if s.is_active() && r.contingency => Span::styled(
                    countdown(deadline - c.now_ms),
                    deadline_style(app, deadline - c.now_ms),
                ),
                (InvoiceStatus::Fallback, None, _) => Span::styled("held", t.warn),
                (s, _, Some(at)) if s.is_active() => Span::raw(clock(at)),
                _ => Span::raw("–"),
            };
            let last = match r.last_code.as_deref() {
                Some(code) => {
                    let words = explain(code);
                    if words.is_empty() {
                        code.to_owned()
                    } else {
                        format!("{code} {words}")
                    }
                }
                None => r.last_message.clone().unwrap_or_default(),
            };
            let mut cells = vec![
                Line::from(if Some(i) == selected { "▶" } else { " " }),
                Line::from(r.number.clone()),
                Line::from(r.buyer_name.clone()),
                Line::from(crate::protocol::text::pesos(r.total)),
                Line::from(Span::styled(
                    format!("{} {}", r.status.symbol(), r.status.name()),
                    invoice_style(app, r.status),
                )),
                Line::from(r.attempts.to_string()),
                Line::from(next),
                Line::from(last),
            ];
            if wide {
                cells.push(Line::from(r.cufe.as_deref().map_or_else(
                    || "–".to_owned(),
                    |c| format!("{}…", &c[..c.len().min(16)]),
                )));
            }
            let style = if Some(i) == selected {
                t.tab_active
            } else {
                Style::default()
            };
            (cells, style)
        })
        .collect();
    // Numbers and invoice numbers are never cut: the buyer shrinks first, then the
    // last answer, the next attempt and the CUFE give way.
    let mut cols = vec![
        Column::text("", 1, 1, 9),
        Column::whole("number", 9),
        Column::text("buyer", 24, 8, 1).flex(),
        Column::num("total COP", 9),
        Column::text("state", 11, 11, 9),
        Column::num("att", 9),
        // Room for "late 1m00s" when there is room at all.
        Column::text("next", 10, 8, 2).droppable(),
        Column::text("last", 30, 12, 3).droppable(),
    ];
    if wide {
        cols.push(Column::text("CUFE", 17, 17, 0).droppable());
    }
    let filter = app
        .dian_filter
        .map_or("all".to_owned(), |f| f.name().to_owned());
    let (table, note) = columns::table(cols, body, table_area.width.saturating_sub(2), t.title);
    let title = format!(
        "DIAN queue — {} of {} ({filter}){note}",
        rows.len(),
        group(c.counts.total)
    );
    frame.render_widget(table.block(block(&title, app)), table_area);

    // Detail: the selected invoice's history (or payload), once the engine sent it.
    let chosen = selected.and_then(|i| rows.get(i));
    let focus = app
        .detail
        .as_ref()
        .filter(|d| chosen.is_some_and(|r| r.stripe_id == d.record.stripe_id));
    let lines: Vec<Line> = match (focus, chosen) {
        (_, None) => match app.dian_left() {
            Some(left) => vec![
                Line::from(Span::styled(format!("{left}."), t.warn)),
                Line::from(Span::styled(
                    "r acts on nothing until ↑/↓ selects another invoice",
                    t.dim,
                )),
            ],
            None => vec![Line::from(Span::styled("no invoice matches", t.dim))],
        },
        (None, Some(r)) => vec![
            Line::from(format!("{} · {} · {}", r.number, r.stripe_id, r.buyer_id)),
            Line::from(Span::styled("↑/↓ to load the history", t.dim)),
        ],
        (Some(d), _) if app.show_payload => d
            .payload
            .lines()
            .map(|l| Line::from(l.to_owned()))
            .collect(),
        (Some(d), _) => {
            let r = &d.record;
            let mut head = vec![
                Span::styled(format!("{} ", r.number), t.title),
                Span::raw(format!(
                    "{} · buyer {} {} · issued {} · CUFE {}",
                    r.stripe_id,
                    r.buyer_id,
                    r.buyer_name,
                    r.issue_date,
                    r.cufe.as_deref().unwrap_or("–")
                )),
            ];
            if r.contingency {
                head.push(Span::styled(
                    match (r.status, r.deadline_at_ms) {
                        (InvoiceStatus::Validated, _) => {
                            " · contingency invoice, validated".to_owned()
                        }
                        (_, Some(d)) => format!(
                            " · contingency: transmit by {} ({})",
                            clock_cot(d),
                            countdown(d - c.now_ms)
                        ),
                        (_, None) => " · contingency: deadline set when DIAN is back".to_owned(),
                    },
                    t.warn,
                ));
            }
            let mut out = vec![Line::from(head)];
            // Newest last; keep the end in view.
            let room = detail_h.saturating_sub(3) as usize;
            let skip = d.history.len().saturating_sub(room);
            for h in d.history.iter().skip(skip) {
                let code = h.code.as_deref().unwrap_or("");
                let words = explain(code);
                let mut line = vec![
                    Span::styled(format!("{} ", clock(h.at_ms)), t.dim),
                    Span::raw(format!(
                        "{}→{} #{} ",
                        h.from.as_deref().unwrap_or("·"),
                        h.to,
                        h.attempt
                    )),
                ];
                if !code.is_empty() {
                    line.push(Span::styled(format!("{code} "), t.warn));
                }
                line.push(Span::raw(h.message.clone()));
                if !words.is_empty() && !h.message.contains(words) {
                    line.push(Span::styled(format!(" ({words})"), t.dim));
                }
                line.push(Span::styled(format!(" — {}", h.actor), t.dim));
                out.push(Line::from(line));
            }
            out
        }
    };
    // The payload scrolls (`[` / `]`) within its rows once wrapped, the last ones
    // staying in view; the title says which rows show.
    let inner_width = usize::from(detail.width.saturating_sub(2)).max(1);
    let inner_height = detail.height.saturating_sub(2);
    let (title, scroll) = if app.show_payload && focus.is_some() {
        let rows: usize = lines
            .iter()
            .map(|l| l.width().div_ceil(inner_width).max(1))
            .sum();
        let rows = u16::try_from(rows).unwrap_or(u16::MAX);
        let scroll = app.payload_scroll.min(rows.saturating_sub(inner_height));
        let shown_to = rows.min(scroll + inner_height);
        (
            format!(
                "Payload for Alegra (v: history · [ ] scroll · rows {}–{shown_to} of {rows})",
                scroll + 1
            ),
            scroll,
        )
    } else if app.show_payload {
        ("Payload for Alegra (v: history)".to_owned(), 0)
    } else {
        ("History (v: payload)".to_owned(), 0)
    };
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0))
            .block(block(&title, app)),
        detail,
    );
}

pub(super) fn invoice_style(app: &App, s: InvoiceStatus) -> Style {
    let t = &app.theme;
    match s {
        InvoiceStatus::Validated => t.ok,
        InvoiceStatus::Failed | InvoiceStatus::Rejected => t.error,
        InvoiceStatus::Unknown | InvoiceStatus::Retry | InvoiceStatus::Fallback => t.warn,
        InvoiceStatus::Pending | InvoiceStatus::Sent => t.base,
    }
}

/// `HH:MM` in Colombia, with the day when it is not the same day as now.
fn clock_cot(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(time::macros::offset!(-5));
    format!(
        "{:02}-{:02} {:02}:{:02} COT",
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// Red past the deadline or within the last 6 h, yellow within 24 h.
fn deadline_style(app: &App, left_ms: i64) -> Style {
    let t = &app.theme;
    if left_ms < 6 * 3_600_000 {
        t.error
    } else if left_ms < 24 * 3_600_000 {
        t.warn
    } else {
        t.ok
    }
}

/// DIAN's contingency state, when there is anything to say.
fn contingency_line(app: &App) -> Option<Line<'static>> {
    let t = &app.theme;
    let c = &app.snapshot.compliance;
    let k = &c.contingency;
    let next = k
        .next_probe_ms
        .map(|at| format!(" · next probe {}", countdown((at - c.now_ms).max(0))))
        .unwrap_or_default();
    match k.phase {
        "PROBING" => Some(Line::from(Span::styled(
            format!(
                "⚠ DIAN not answering: {} of {} failed probes{next} · sends held",
                k.failures, k.probes
            ),
            t.warn,
        ))),
        "OUTAGE" => Some(Line::from(Span::styled(
            format!(
                "⚑ DIAN OUTAGE since {}{next} · contingency, invoices held",
                k.since_ms.map(clock_cot).unwrap_or_default()
            ),
            t.error,
        ))),
        _ => {
            let deadline = c.counts.earliest_deadline_ms?;
            let left = deadline - c.now_ms;
            Some(Line::from(vec![
                Span::styled(
                    format!(
                        "⚑ contingency: {} to transmit, first deadline in ",
                        c.counts.get(InvoiceStatus::Fallback)
                    ),
                    t.warn,
                ),
                Span::styled(countdown(left), deadline_style(app, left)),
                Span::styled(
                    format!(
                        " ({}) · DIAN back since {}",
                        clock_cot(deadline),
                        k.restored_at_ms
                            .map(clock_cot)
                            .unwrap_or_else(|| "–".into())
                    ),
                    t.warn,
                ),
            ]))
        }
    }
}
