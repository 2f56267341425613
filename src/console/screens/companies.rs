//! "All companies" (the selector's first row, `@`): the Overview shows one row per
//! company the engine's process serves; every other screen shows one company's engine,
//! so there it says to pick one, above the same rows. Nothing acts from here: a key
//! that would act says to pick a company first (`update`).
//!
//! At 80 columns (a name column joins from 110):
//!
//! ```text
//! ┌ All companies (3) ───────────────────────────────────────────────────────────┐
//! │ COMPANY    STATE      ITEMS/S  QUEUED FAILED  OPEN  DIAN  QB/MIN             │
//! │ co1        EXCELLENT       49     180      2     0     3  312/500 62%        │
//! │ co2        PAUSED           0      40      0     1     0  —/500              │
//! │ co3        DOWN       did not start: why                                     │
//! │ all 3                      49     220      2     1     3                     │
//! │                                                                              │
//! │ @ picks one company: its screens, and every action goes to it alone.         │
//! └──────────────────────────────────────────────────────────────────────────────┘
//! ```

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};

use crate::console::chrome::{block, group};
use crate::console::state::App;
use crate::protocol::{CompanyRow, Level};

/// From this width the rows name each company too.
const NAMES_FROM: u16 = 110;

/// The Overview with every company: one row each, and the totals.
pub fn draw_overview(frame: &mut Frame, area: Rect, app: &App) {
    let title = format!("All companies ({})", app.companies.len());
    let mut lines = table(app, area.width);
    lines.push(Line::raw(""));
    lines.push(Line::from(vec![
        Span::styled(" @", app.theme.key),
        Span::raw(" picks one company: its screens, and every action goes to it alone."),
    ]));
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(&title, app)),
        area,
    );
}

/// Any other screen with every company: it shows one company's engine, so it says to
/// pick one, above the rows.
pub fn draw_pick(frame: &mut Frame, area: Rect, app: &App) {
    let title = format!("{} · all companies", app.tab.title());
    let ids: Vec<&str> = app
        .companies
        .iter()
        .map(|r| r.company.id.as_str())
        .collect();
    let mut lines = vec![
        Line::from(vec![
            Span::raw(" This screen shows one company's engine: press "),
            Span::styled("@", app.theme.key),
            Span::raw(format!(" and pick one ({}).", ids.join(", "))),
        ]),
        Line::raw(""),
    ];
    lines.extend(table(app, area.width));
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(&title, app)),
        area,
    );
}

/// The header row, one row per company, and the totals.
fn table(app: &App, width: u16) -> Vec<Line<'static>> {
    let t = &app.theme;
    let names = width >= NAMES_FROM;
    let name_w = 24;
    let mut head = format!(" {:<10} ", "COMPANY");
    if names {
        head.push_str(&format!("{:<name_w$} ", "NAME"));
    }
    head.push_str(&format!(
        "{:<10}{:>8}{:>8}{:>7}{:>6}{:>6}  {}",
        "STATE", "ITEMS/S", "QUEUED", "FAILED", "OPEN", "DIAN", "QB/MIN"
    ));
    let mut lines = vec![Line::styled(head, t.dim)];
    for r in &app.companies {
        let mut spans = vec![Span::styled(
            format!(" {:<10} ", clip(&r.company.id, 10)),
            t.key,
        )];
        if names {
            spans.push(Span::raw(format!(
                "{:<name_w$} ",
                clip(&r.company.name, name_w)
            )));
        }
        spans.push(Span::styled(
            format!("{:<10}", r.state()),
            state_style(app, r),
        ));
        if let Some(why) = &r.down {
            // On its row: the whole reason is in `syncctl status` and the API.
            let used = 12 + if names { name_w + 1 } else { 0 } + 10;
            let room = usize::from(width).saturating_sub(2 + used);
            let why = clip(&format!("did not start: {why}"), room);
            spans.push(Span::styled(why, t.error));
            lines.push(Line::from(spans));
            continue;
        }
        let failed_style = if r.failed > 0 {
            t.warn
        } else {
            Style::default()
        };
        let open_style = if r.circuits_open > 0 {
            t.error
        } else {
            Style::default()
        };
        spans.push(Span::raw(format!("{:>8}", group(r.items_per_s))));
        spans.push(Span::raw(format!("{:>8}", group(r.queued))));
        spans.push(Span::styled(
            format!("{:>7}", group(r.failed)),
            failed_style,
        ));
        spans.push(Span::styled(format!("{:>6}", r.circuits_open), open_style));
        spans.push(Span::raw(format!("{:>6}", group(r.dian_pending))));
        spans.push(Span::raw(format!("  {}", r.quota())));
        lines.push(Line::from(spans));
    }
    let up: Vec<&CompanyRow> = app.companies.iter().filter(|r| r.down.is_none()).collect();
    let sum = |f: fn(&CompanyRow) -> u64| up.iter().map(|r| f(r)).sum::<u64>();
    let mut total = format!(" {:<10} ", format!("all {}", app.companies.len()));
    if names {
        total.push_str(&" ".repeat(name_w + 1));
    }
    total.push_str(&format!(
        "{:<10}{:>8}{:>8}{:>7}{:>6}{:>6}",
        "",
        group(sum(|r| r.items_per_s)),
        group(sum(|r| r.queued)),
        group(sum(|r| r.failed)),
        sum(|r| u64::from(r.circuits_open)),
        group(sum(|r| r.dian_pending)),
    ));
    lines.push(Line::styled(total, t.title));
    lines
}

fn state_style(app: &App, r: &CompanyRow) -> Style {
    let t = &app.theme;
    if r.down.is_some() {
        return t.error;
    }
    if r.paused {
        return t.warn;
    }
    match r.level {
        Some(Level::Excellent | Level::Good) => t.ok,
        Some(Level::Fair | Level::Poor) => t.warn,
        Some(Level::Critical) => t.error,
        None => t.dim,
    }
}

/// `s` cut to `n` characters (an ellipsis for the last when cut).
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}
