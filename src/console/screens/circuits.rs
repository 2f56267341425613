//! Circuits (3): one row per downstream's breaker — state as a symbol and a word, window
//! rates against thresholds, calls, rejections, time to half-open — and the selected
//! one in detail: counts, last transition and why, the policy. Actions (key table):
//! force open, close, disable, reset; in the sandbox, simulate an outage.
//!
//! At 100×30 (header and footer are the chrome's):
//!
//! ```text
//!  header (chrome): syncctl · SANDBOX · ▶ running · http://…   1  2  3 Circuits  4  5  6  7  8          row 0
//! ┌ Circuits — window rates vs thresholds (– = fewer calls than the minimum) ────────────────────────┐  downstreams + 3 rows, ≤ half
//! │  circuit      state          fail/thr  slow/thr  calls  rejected half-open                       │
//! │▶ stripe       ● CLOSED       –/50%     –/100%    6      0        –                               │
//! │  quickbooks ⚡ ✖ OPEN         60%/50%   0%/100%   903    12       in 12s                         │
//! │  alegra       ● CLOSED       –/50%     –/100%    1      0        –                               │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Selected ────────────────────────────────────────────────────────────────────────────────────────┐  the rest (22 rows)
//! │stripe 14 calls · 14 ok · 0 failed · 0 timed out · … · p50 35 ms · p99 54 ms (wrapped)            │
//! │last transition HH:MM:SS CLOSED → OPEN: why                                                       │
//! │policy opens at ≥50% failed or ≥100% slow over ≥10 calls · waits 15s in OPEN · 3 trial calls      │
//! │sandbox healthy — O simulates an outage of this service   (sandbox only)                          │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//!  footer (chrome): key hints from the key table · or the flash line · or the prompt                    row 29
//! ```

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};

use crate::console::chrome::columns::{self, Column};
use crate::console::chrome::{block, clock, group, secs};
use crate::console::state::App;
use crate::protocol::State as BreakerState;

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.0}%"))
}

pub(super) fn state_style(app: &App, state: BreakerState) -> Style {
    let t = &app.theme;
    match state {
        BreakerState::Closed => t.ok,
        BreakerState::HalfOpen | BreakerState::MetricsOnly | BreakerState::Disabled => t.warn,
        BreakerState::Open | BreakerState::ForcedOpen => t.error,
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one screen's layout, read top to bottom as drawn"
)]
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let s = &app.snapshot;
    let table_h = (s.downstreams.len() as u16 + 3).min(area.height / 2);
    let [table_area, detail] =
        Layout::vertical([Constraint::Length(table_h), Constraint::Min(4)]).areas(area);
    let rows: Vec<(Vec<Line>, Style)> = s
        .downstreams
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let b = &d.breaker;
            let marker = if i == app.circuit { "▶" } else { " " };
            let half = match b.until_half_open_ms {
                Some(ms) => format!("in {}", secs(ms)),
                None if b.state == BreakerState::HalfOpen => {
                    format!("{}/{} trials", b.half_open_in_use, b.half_open_permits)
                }
                None => "–".into(),
            };
            let mut name = d.name.clone();
            if app.sandbox_outage(&d.name) == Some(true) {
                name.push_str(" ⚡");
            }
            let cells = vec![
                Line::from(marker),
                Line::from(name),
                Line::from(Span::styled(
                    format!("{} {}", b.state.symbol(), b.state.name()),
                    state_style(app, b.state),
                )),
                Line::from(format!(
                    "{}/{:.0}%",
                    pct(b.failure_rate),
                    b.failure_threshold
                )),
                Line::from(format!(
                    "{}/{:.0}%",
                    pct(b.slow_call_rate),
                    b.slow_call_threshold
                )),
                Line::from(format!("{}", b.calls)),
                Line::from(group(b.rejections)),
                Line::from(half),
            ];
            let style = if i == app.circuit {
                t.tab_active
            } else {
                Style::default()
            };
            (cells, style)
        })
        .collect();
    // Figures are never cut: the half-open column gives way first, then the slow
    // calls' rate, then the rejections.
    let cols = vec![
        Column::text("", 1, 1, 9),
        Column::whole("circuit", 9),
        Column::whole("state", 9),
        Column::num("fail/thr", 9),
        Column::num("slow/thr", 2).droppable(),
        Column::num("calls", 9),
        Column::num("rejected", 3).droppable(),
        Column::whole("half-open", 1).droppable().flex(),
    ];
    let (table, note) = columns::table(cols, rows, table_area.width.saturating_sub(2), t.title);
    let title =
        format!("Circuits{note} — window rates vs thresholds (– = fewer calls than the minimum)");
    let table = table.block(block(&title, app));
    frame.render_widget(table, table_area);
    let Some(d) = s.downstreams.get(app.circuit) else {
        return;
    };
    let b = &d.breaker;
    let ms = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.0} ms"));
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{} ", d.name), t.title),
        Span::raw(format!(
            "{} calls · {} ok · {} failed · {} timed out · {} client errors · {} throttled · {} retries · p50 {} · p99 {}",
            group(d.calls),
            group(d.successes),
            group(d.failures),
            group(d.timeouts),
            group(d.ignored),
            group(d.throttled),
            group(d.retries),
            ms(d.p50_ms),
            ms(d.p99_ms)
        )),
    ])];
    lines.push(Line::from(match &b.last_transition {
        Some(tr) => vec![
            Span::styled("last transition ", t.dim),
            Span::raw(format!("{} {} → {}: ", clock(tr.at_ms), tr.from, tr.to)),
            Span::styled(tr.reason.clone(), t.warn),
        ],
        None => vec![Span::styled("no transition since start", t.dim)],
    }));
    lines.push(Line::from(vec![
        Span::styled("policy ", t.dim),
        Span::raw(format!(
            "opens at ≥{:.0}% failed or ≥{:.0}% slow over ≥{} calls · waits {} in OPEN · {} trial calls",
            b.failure_threshold,
            b.slow_call_threshold,
            b.minimum_calls,
            secs(b.open_wait_ms),
            b.half_open_permits
        )),
    ]));
    if app.sandbox.is_some() {
        let on = app.sandbox_outage(&d.name) == Some(true);
        lines.push(Line::from(vec![
            Span::styled("sandbox ", t.dim),
            Span::raw(if on {
                "outage ON ⚡ — "
            } else {
                "healthy — "
            }),
            Span::styled("O", t.key),
            Span::raw(if on {
                " ends the outage"
            } else {
                " simulates an outage of this service"
            }),
        ]));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(block("Selected", app)),
        detail,
    );
}
