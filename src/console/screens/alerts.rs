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
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

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
        let rows: Vec<Row> = tel
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
                Row::new(vec![
                    Cell::from(Line::from(vec![
                        Span::raw(mark),
                        severity_span(app, a.severity),
                    ])),
                    Cell::from(a.phase.to_string()),
                    Cell::from(a.id.clone()),
                    Cell::from(format!("{} / {}", value(a.value), value(a.threshold))),
                    Cell::from(ago(now, a.since_ms)),
                    Cell::from(flags.join(" · ")),
                ])
                .style(style)
            })
            .collect();
        let table = Table::new(
            rows,
            [
                Constraint::Length(12),
                Constraint::Length(7),
                Constraint::Min(20),
                Constraint::Length(11),
                Constraint::Length(8),
                Constraint::Length(12),
            ],
        )
        .header(Row::new(["  severity", "state", "alert", "value/limit", "since", ""]).style(t.dim))
        .block(block(&title, app));
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
        let rows: Vec<Row> = tel
            .anomalies
            .iter()
            .map(|a| {
                let state = match a.ended_ms {
                    None => Span::styled("◉ open", t.warn),
                    Some(_) => Span::styled("○ ended", t.dim),
                };
                Row::new(vec![
                    Cell::from(Line::from(state)),
                    Cell::from(a.metric.clone()),
                    Cell::from(value(a.value)),
                    Cell::from(value(a.baseline)),
                    Cell::from(format!("{:+.1}", a.score)),
                    Cell::from(ago(now, a.at_ms)),
                ])
            })
            .collect();
        let table = Table::new(
            rows,
            [
                Constraint::Length(8),
                Constraint::Min(20),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Length(9),
            ],
        )
        .header(Row::new(["", "metric", "value", "baseline", "z", "when"]).style(t.dim))
        .block(block(&title, app));
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
