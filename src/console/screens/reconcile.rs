//! Reconcile (9): Stripe against QuickBooks, live — counts and amounts of the products
//! with no Item, the Items with no product and the Items that drifted (name, price,
//! active flag), the worst of them listed, and the selected one side by side. The
//! engine keeps it up to date from QuickBooks' change data capture and Stripe's events.
//! Actions (key table): resync the selected product, resync every drifted and missing
//! one (after a preview).
//!
//! At 100×30 (header and footer are the chrome's):
//!
//! ```text
//!  header (chrome): syncctl · SANDBOX · ▶ running · …          … 8  9 Reconcile                        row 0
//! ┌ Reconciliation  live · refreshed 14:02:11 · followed 12 Item changes, 3 events ──────────────────┐  6 rows
//! │products 2 500 · Items 2 498 · ✓ in sync 2 480 · 1 cannot be an Item                              │
//! │▲ drift    12  name 3 · price 8 · active 1          amount      1 234.50                          │
//! │▲ missing   5  products with no Item                amount         99.00                          │
//! │○ orphan    2  active Items with no product         amount         10.00                          │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Discrepancies (worst first; r resync, R resync all) ─────────────────────────────────────────────┐  the rest
//! │  kind     product             Item   name                  differs        Stripe   QuickBooks  amount │
//! │▶ drift    prod_0042           512    Café Premium          price          12.50    10.00       2.50   │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Selected ────────────────────────────────────────────────────────────────────────────────────────┐  4 rows
//! │Stripe     "Café Premium" · 12.50 · active                                                        │
//! │QuickBooks "Café Premium" · 10.00 · active · Item 512 · since 14:01:50                            │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//!  footer (chrome): key hints from the key table · or the flash line · or the prompt                    row 29
//! ```
//!
//! Below 100 columns the Stripe and QuickBooks price columns give way to the name.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

use crate::console::chrome::{block, clock, group};
use crate::console::state::{App, money};
use crate::protocol::{Discrepancy, DiscrepancyKind, Side};

fn price(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_owned(), money)
}

fn side_line(side: &Side) -> String {
    format!(
        "{:?} · {} · {}",
        side.name,
        price(side.price),
        if side.active { "active" } else { "inactive" }
    )
}

#[expect(
    clippy::too_many_lines,
    reason = "one screen's layout, read top to bottom as drawn"
)]
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let r = &app.snapshot.reconciliation;
    let [summary, list, detail] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Min(4),
        Constraint::Length(4),
    ])
    .areas(area);

    let mut title = format!("Reconciliation  {}", r.status);
    if let Some(at) = r.refreshed_ms {
        title.push_str(&format!(" · refreshed {}", clock(at)));
    }
    if r.refreshes > 0 && summary.width >= 100 {
        title.push_str(&format!(
            " · followed {} Item changes, {} events",
            group(r.items_changed),
            group(r.events_read)
        ));
    }
    let bad = |n: u64| if n == 0 { t.ok } else { t.warn };
    let tally = |mark: &str, word: &str, n: u64, what: String, amount: f64| {
        Line::from(vec![
            Span::styled(format!("{mark} {word:<8}"), bad(n)),
            Span::styled(format!("{:>6}  ", group(n)), bad(n)),
            Span::raw(format!("{what:<34}")),
            Span::styled("amount ", t.dim),
            Span::raw(format!("{:>12}", money(amount))),
        ])
    };
    let lines = if r.ready {
        vec![
            Line::from(vec![
                Span::styled("products ", t.dim),
                Span::raw(group(r.products)),
                Span::styled(" · Items ", t.dim),
                Span::raw(group(r.items)),
                Span::styled(" · ", t.dim),
                Span::styled(format!("✓ in sync {}", group(r.in_sync)), t.ok),
                Span::styled(
                    if r.unsyncable > 0 {
                        format!(" · {} cannot be an Item", group(r.unsyncable))
                    } else {
                        String::new()
                    },
                    t.dim,
                ),
            ]),
            tally(
                if r.drifted.count > 0 { "▲" } else { "✓" },
                "drift",
                r.drifted.count,
                format!(
                    "name {} · price {} · active {}",
                    r.drift_name, r.drift_price, r.drift_active
                ),
                r.drifted.amount,
            ),
            tally(
                if r.missing.count > 0 { "▲" } else { "✓" },
                "missing",
                r.missing.count,
                "products with no Item".into(),
                r.missing.amount,
            ),
            tally(
                if r.orphans.count > 0 { "○" } else { "✓" },
                "orphan",
                r.orphans.count,
                "active Items with no product".into(),
                r.orphans.amount,
            ),
        ]
    } else {
        vec![Line::from(Span::styled(
            "reading both sides once; then only what changes (QuickBooks CDC, Stripe events)",
            t.dim,
        ))]
    };
    frame.render_widget(Paragraph::new(lines).block(block(&title, app)), summary);

    let ids = app.recon_ids();
    let sel = app.recon_sel.row_in(&ids);
    let shown = r.rows.len() as u64;
    let mut title = format!("Discrepancies  {} of {} (worst first)", shown, r.total());
    if shown == 0 && r.total() > 0 {
        title = format!(
            "Discrepancies  {} (their rows come with this screen)",
            r.total()
        );
    }
    if let Some(gone) = app.recon_sel.gone(&ids) {
        let id = gone.split_once(':').map_or(gone, |(_, id)| id);
        title.push_str(&format!(" · {id} agrees now: ↑/↓ selects"));
    }
    if r.rows.is_empty() {
        let text = if r.ready && r.total() == 0 {
            Span::styled("✓ every product has its Item, and every Item agrees", t.ok)
        } else {
            Span::styled("nothing to show yet", t.dim)
        };
        frame.render_widget(Paragraph::new(text).block(block(&title, app)), list);
    } else {
        let wide = list.width >= 100;
        let rows: Vec<Row> = r
            .rows
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let style = if Some(i) == sel { t.tab_active } else { t.base };
                let mark = if Some(i) == sel { "▶ " } else { "  " };
                let kind_style = match d.kind {
                    DiscrepancyKind::Orphan => t.dim,
                    _ => t.warn,
                };
                let mut cells = vec![
                    Cell::from(Line::from(vec![
                        Span::raw(mark),
                        Span::styled(d.kind.word(), kind_style),
                    ])),
                    Cell::from(d.product_id.clone().unwrap_or_else(|| "–".into())),
                    Cell::from(d.item_id.clone().unwrap_or_else(|| "–".into())),
                    Cell::from(d.name().to_owned()),
                    Cell::from(differs(d, wide)),
                ];
                if wide {
                    cells.push(Cell::from(price(d.stripe.as_ref().and_then(|s| s.price))));
                    cells.push(Cell::from(price(
                        d.quickbooks.as_ref().and_then(|s| s.price),
                    )));
                }
                cells.push(Cell::from(Line::from(money(d.amount)).right_aligned()));
                Row::new(cells).style(style)
            })
            .collect();
        let mut widths = vec![
            Constraint::Length(9),
            Constraint::Length(20),
            Constraint::Length(6),
            Constraint::Min(12),
            Constraint::Length(if wide { 18 } else { 14 }),
        ];
        let mut header = vec!["  kind", "product", "Item", "name", "differs"];
        if wide {
            widths.extend([Constraint::Length(10), Constraint::Length(10)]);
            header.extend(["Stripe", "QuickBooks"]);
        }
        widths.push(Constraint::Length(10));
        header.push("    amount");
        let table = Table::new(rows, widths)
            .header(Row::new(header).style(t.dim))
            .block(block(&title, app));
        let mut state = TableState::default().with_selected(sel);
        frame.render_stateful_widget(table, list, &mut state);
    }

    let lines = match app.selected_discrepancy() {
        None => vec![Line::from(Span::styled("nothing selected", t.dim))],
        Some(d) => {
            let stripe = d.stripe.as_ref().map_or_else(
                || "no product (r cannot resync an orphan)".to_owned(),
                side_line,
            );
            let mut qb = d
                .quickbooks
                .as_ref()
                .map_or_else(|| "no Item (r creates it)".to_owned(), side_line);
            if let Some(id) = &d.item_id {
                qb.push_str(&format!(" · Item {id}"));
            }
            qb.push_str(&format!(" · since {}", clock(d.since_ms)));
            vec![
                Line::from(vec![Span::styled("Stripe     ", t.dim), Span::raw(stripe)]),
                Line::from(vec![Span::styled("QuickBooks ", t.dim), Span::raw(qb)]),
            ]
        }
    };
    frame.render_widget(Paragraph::new(lines).block(block("Selected", app)), detail);
}

/// What differs, in words: the drifted fields (`active` as `act` when narrow), or which
/// side is missing.
fn differs(d: &Discrepancy, wide: bool) -> String {
    match d.kind {
        DiscrepancyKind::Drift => d
            .fields
            .iter()
            .map(|f| {
                if !wide && f == "active" {
                    "act"
                } else {
                    f.as_str()
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        DiscrepancyKind::Missing => "no Item".into(),
        DiscrepancyKind::Orphan => "no product".into(),
    }
}
