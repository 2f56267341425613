//! Anomalies & alerts (5): alerts pending or firing (severity, state, value against its
//! limit, since when, ack/silence), anomalies (metric, value, baseline, z, when), and
//! the notifications sent. Actions (key table): acknowledge, silence.
//!
//! At 100×30 (header and footer are the chrome's):
//!
//! ```text
//!  header (chrome): syncctl · SANDBOX · ▶ running · http://…   1  2  3  4  5 Alerts  6  7  8            row 0
//! ┌ Alerts  0 firing · 2 pending · 0 silences ───────────────────────────────────────────────────────┐  40% (11 rows); a ack, z silence
//! │  severity   state   alert                                       value/limit since   ack/silenced │
//! │▶ ▲ warning  pending queue_depth/catalog                         426 / 100   13s ago              │
//! │  ● info     pending cache_miss_rate                             51.06 / 50  0s ago               │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Anomalies  N open ───────────────────────────────────────────────────────────────────────────────┐  35% (10 rows)
//! │         metric                                         value    baseline z      when             │
//! │◉ open   latency:quickbooks                               412       88     +4.1   2m ago          │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Notifications (UTC) ─────────────────────────────────────────────────────────────────────────────┐  the rest (7 rows)
//! │HH:MM:SS firing   message  (not sent: quiet reason)                                               │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//!  footer (chrome): key hints from the key table · or the flash line · or the prompt                    row 29
//! ```

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, TableState};

use crate::console::chrome::columns::{self, Column};
use crate::console::chrome::{block, clock, severity_span};
use crate::console::state::App;
use crate::protocol::Phase;

fn ago(now_ms: i64, at_ms: i64) -> String {
    let s = ((now_ms - at_ms).max(0) / 1000) as u64;
    if s < 60 {
        format!("{s}s ago")
    } else if s < 3600 {
        format!("{}m ago", s / 60)
    } else {
        format!("{}h{:02}m ago", s / 3600, s / 60 % 60)
    }
}

fn value(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one screen's layout, read top to bottom as drawn"
)]
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let tel = &app.snapshot.telemetry;
    let now = app.snapshot.compliance.now_ms.max(
        tel.notifications
            .first()
            .map_or(0, |n| n.at_ms)
            .max(tel.anomalies.first().map_or(0, |a| a.at_ms)),
    );
    let [alerts, anomalies, history] = Layout::vertical([
        Constraint::Percentage(40),
        Constraint::Percentage(35),
        Constraint::Min(3),
    ])
    .areas(area);
    let firing = tel
        .alerts
        .iter()
        .filter(|a| a.phase == Phase::Firing)
        .count();
    let mut title = format!(
        "Alerts  {firing} firing · {} pending · {} silences",
        tel.alerts.len() - firing,
        tel.silences.len()
    );
    // The selected alert by identity: none while it has left the list, and the title
    // says so (a and z act on nothing then).
    let sel = app.alert_sel.row_in(&app.alert_ids());
    if let Some(left) = app.alert_left() {
        title.push_str(&format!(" · {left}: a/z act on nothing, ↑/↓ selects"));
    }
    if tel.alerts.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("✓ no alert pending or firing", t.ok))
                .block(block(&title, app)),
            alerts,
        );
    } else {
        let rows: Vec<(Vec<Line>, Style)> = tel
            .alerts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut flags = Vec::new();
                if let Some(by) = &a.acked_by {
                    flags.push(format!("ack {by}"));
                }
                if a.silenced_until_ms.is_some() {
                    flags.push("silenced".into());
                }
                let style = if Some(i) == sel { t.tab_active } else { t.base };
                let mark = if Some(i) == sel { "▶ " } else { "  " };
                let cells = vec![
                    Line::from(vec![Span::raw(mark), severity_span(app, a.severity)]),
                    Line::from(a.phase.to_string()),
                    Line::from(a.id.clone()),
                    Line::from(format!("{} / {}", value(a.value), value(a.threshold))),
                    Line::from(ago(now, a.since_ms)),
                    Line::from(flags.join(" · ")),
                ];
                (cells, style)
            })
            .collect();
        // Figures are never cut: the flags give way, the severity shrinks to its
        // symbol, and the alert's name keeps the most room.
        let cols = vec![
            Column::text("  severity", 12, 4, 1),
            Column::text("state", 7, 7, 9),
            Column::key("alert", 34, 16).flex(),
            Column::num("value/limit", 9),
            Column::whole("since", 9),
            Column::whole("", 0).droppable(),
        ];
        let (table, note) = columns::table(cols, rows, alerts.width.saturating_sub(2), t.dim);
        title.push_str(&note);
        let table = table.block(block(&title, app));
        // Scrolled so the selected alert stays in view.
        let mut state = TableState::default().with_selected(sel);
        frame.render_stateful_widget(table, alerts, &mut state);
    }

    let title = format!("Anomalies  {} open", tel.open_anomalies);
    if tel.anomalies.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled(
                "✓ none: every watched metric is inside its usual band",
                t.ok,
            ))
            .block(block(&title, app)),
            anomalies,
        );
    } else {
        let rows: Vec<(Vec<Line>, Style)> = tel
            .anomalies
            .iter()
            .map(|a| {
                let state = match a.ended_ms {
                    None => Span::styled("◉ open", t.warn),
                    Some(_) => Span::styled("○ ended", t.dim),
                };
                let cells = vec![
                    Line::from(state),
                    Line::from(a.metric.clone()),
                    Line::from(value(a.value)),
                    Line::from(value(a.baseline)),
                    Line::from(format!("{:+.1}", a.score)),
                    Line::from(ago(now, a.at_ms)),
                ];
                (cells, Style::default())
            })
            .collect();
        let cols = vec![
            Column::text("", 8, 1, 1),
            Column::key("metric", 30, 16).flex(),
            Column::num("value", 9),
            Column::num("baseline", 2).droppable(),
            Column::num("z", 9),
            Column::whole("when", 9),
        ];
        let (table, note) = columns::table(cols, rows, anomalies.width.saturating_sub(2), t.dim);
        let title = format!("{title}{note}");
        let table = table.block(block(&title, app));
        frame.render_widget(table, anomalies);
    }

    let lines: Vec<Line> = tel
        .notifications
        .iter()
        .map(|n| {
            let mut spans = vec![
                Span::styled(format!("{} ", clock(n.at_ms)), t.dim),
                Span::styled(
                    format!("{:<8} ", n.phase.to_string()),
                    if n.phase == Phase::Firing {
                        t.warn
                    } else {
                        t.ok
                    },
                ),
                Span::raw(n.message.clone()),
            ];
            if let Some(q) = &n.quiet {
                spans.push(Span::styled(format!("  (not sent: {q})"), t.dim));
            }
            Line::from(spans)
        })
        .collect();
    let p = if lines.is_empty() {
        Paragraph::new(Span::styled("nothing yet", t.dim))
    } else {
        Paragraph::new(lines)
    };
    frame.render_widget(p.block(block("Notifications (UTC)", app)), history);
}
