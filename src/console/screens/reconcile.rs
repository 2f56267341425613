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
//! │▲ drift    12  name 3 · price 8 · active 1          COP 1 234 000.00 · USD 12.50                  │
//! │▲ missing   5  products with no Item                USD 99.00                                     │
//! │○ orphan    2  active Items with no product         COP 10 000.00                                 │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Discrepancies (worst first; r resync, R resync all) ─────────────────────────────────────────────┐  the rest
//! │  kind     product             Item name                 differs          Stripe QuickBooks    amount │
//! │▶ drift    prod_0042           512  Café Premium          price             12.50      10.00 USD 2.50 │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Selected ────────────────────────────────────────────────────────────────────────────────────────┐  4 rows
//! │Stripe     "Café Premium" · USD 12.50 · active                                                    │
//! │QuickBooks "Café Premium" · USD 10.00 · active · Item 512 · since 14:01:50                        │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//!  footer (chrome): key hints from the key table · or the flash line · or the prompt                    row 29
//! ```
//!
//! Amounts are per currency (a row's is its Stripe price's; an Item alone counts in the
//! company's home currency) and never added across currencies. Numbers are never cut:
//! when the table is too narrow the name shrinks, then the Stripe and QuickBooks price
//! columns, the Item and the differing fields give way, and the title says so.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table, TableState};

use crate::console::chrome::columns::{self, Column, width};
use crate::console::chrome::{block, clock, group};
use crate::console::state::{App, money};
use crate::protocol::{Discrepancy, DiscrepancyKind, Money, Side};

fn price(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_owned(), money)
}

/// A side as the Selected pane writes it, its price in the discrepancy's currency.
fn side_line(side: &Side, currency: &str) -> String {
    let price = side.price.map_or_else(
        || "no price".to_owned(),
        |p| format!("{currency} {}", money(p)),
    );
    format!(
        "{:?} · {price} · {}",
        side.name,
        if side.active { "active" } else { "inactive" }
    )
}

/// Whole amounts that fit in `room` cells, then how many currencies did not
/// (an amount is never cut).
fn fitted_amounts(amounts: &[Money], room: u16) -> Option<String> {
    let all = Money::list(amounts);
    if width(&all) <= room {
        return Some(all);
    }
    for n in (1..amounts.len()).rev() {
        let text = format!(
            "{} · +{} more",
            Money::list(&amounts[..n]),
            amounts.len() - n
        );
        if width(&text) <= room {
            return Some(text);
        }
    }
    None
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
    let inner = summary.width.saturating_sub(2);
    let tally = |mark: &str, word: &str, n: u64, what: String, amounts: &[Money]| {
        let head = format!("{mark} {word:<8}{:>6}  ", group(n));
        let room = inner.saturating_sub(width(&head));
        // The amounts come first: the words give way to them, never the other way;
        // every currency shown before any is left out.
        let padded = format!("{what:<34} ");
        let tight = format!("{what}  ");
        let (what, amounts) = if amounts.is_empty() {
            (what, String::new())
        } else {
            let all = Money::list(amounts);
            let fits = |words: &str| width(words) + width(&all) <= room;
            if fits(&padded) {
                (padded, all)
            } else if fits(&tight) {
                (tight, all)
            } else if let Some(some) = fitted_amounts(amounts, room.saturating_sub(width(&tight))) {
                (tight, some)
            } else {
                (
                    String::new(),
                    fitted_amounts(amounts, room).unwrap_or_default(),
                )
            }
        };
        Line::from(vec![
            Span::styled(head, bad(n)),
            Span::raw(what),
            Span::raw(amounts),
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
                &r.drifted.amounts,
            ),
            tally(
                if r.missing.count > 0 { "▲" } else { "✓" },
                "missing",
                r.missing.count,
                "products with no Item".into(),
                &r.missing.amounts,
            ),
            tally(
                if r.orphans.count > 0 { "○" } else { "✓" },
                "orphan",
                r.orphans.count,
                "active Items with no product".into(),
                &r.orphans.amounts,
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
        // Each row's cells as text, then the columns sized from them.
        let text: Vec<[String; 7]> = r
            .rows
            .iter()
            .map(|d| {
                [
                    d.product_id.clone().unwrap_or_else(|| "–".into()),
                    d.item_id.clone().unwrap_or_else(|| "–".into()),
                    differs(d),
                    price(d.stripe.as_ref().and_then(|s| s.price)),
                    price(d.quickbooks.as_ref().and_then(|s| s.price)),
                    format!("{} {}", d.currency, money(d.amount)),
                    d.name().to_owned(),
                ]
            })
            .collect();
        let widest = |i: usize, header: &str| {
            text.iter()
                .map(|c| width(&c[i]))
                .chain([width(header)])
                .max()
                .unwrap_or(0)
        };
        let product_w = widest(0, "product");
        let item_w = widest(1, "Item");
        let differs_w = widest(2, "differs");
        let cols = [
            Column::text("  kind", 9, 9, 9),
            // The key, whole: product ids can differ anywhere, so no part is spared.
            Column::key("product", product_w, product_w),
            Column::text("Item", item_w, item_w, 2).droppable(),
            Column::text("name", widest(6, "name").min(28), 12, 1).flex(),
            Column::text("differs", differs_w, differs_w, 3).droppable(),
            Column::number("Stripe", text.iter().map(|c| c[3].as_str()), 0).droppable(),
            Column::number("QuickBooks", text.iter().map(|c| c[4].as_str()), 0).droppable(),
            Column::number("amount", text.iter().map(|c| c[5].as_str()), 9),
        ];
        let spacing = 1;
        let fitted = columns::fit(&cols, list.width.saturating_sub(2), spacing);
        title.push_str(&columns::hidden_note(&fitted));
        let rows: Vec<Row> = r
            .rows
            .iter()
            .zip(text)
            .enumerate()
            .map(
                |(i, (d, [product, item, differs, stripe, qb, amount, name]))| {
                    let style = if Some(i) == sel { t.tab_active } else { t.base };
                    let mark = if Some(i) == sel { "▶ " } else { "  " };
                    let kind_style = match d.kind {
                        DiscrepancyKind::Orphan => t.dim,
                        _ => t.warn,
                    };
                    let kind = Line::from(vec![
                        Span::raw(mark),
                        Span::styled(d.kind.word(), kind_style),
                    ]);
                    let cells = [
                        kind,
                        Line::from(product),
                        Line::from(item),
                        Line::from(name),
                        Line::from(differs),
                        Line::from(stripe),
                        Line::from(qb),
                        Line::from(amount),
                    ];
                    Row::new(columns::kept(
                        &fitted,
                        cols.iter().zip(cells).map(|(c, l)| c.cell(l)),
                    ))
                    .style(style)
                },
            )
            .collect();
        let header = columns::kept(&fitted, cols.iter().map(Column::header_cell));
        let table = Table::new(rows, columns::constraints(&fitted))
            .column_spacing(spacing)
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
                |s| side_line(s, &d.currency),
            );
            let mut qb = d.quickbooks.as_ref().map_or_else(
                || "no Item (r creates it)".to_owned(),
                |s| side_line(s, &d.currency),
            );
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

/// What differs, in words: the drifted fields (the active flag as which side is
/// inactive), or which side is missing.
fn differs(d: &Discrepancy) -> String {
    match d.kind {
        DiscrepancyKind::Drift => d
            .fields
            .iter()
            .map(|f| match (f.as_str(), d.inactive_side()) {
                ("active", Some("QuickBooks")) => "inactive in QB".to_owned(),
                ("active", Some(side)) => format!("inactive in {side}"),
                (f, _) => f.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        DiscrepancyKind::Missing => "no Item".into(),
        DiscrepancyKind::Orphan => "no product".into(),
    }
}
