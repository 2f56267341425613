//! The telemetry screens: Throughput (2), Anomalies & alerts (5), Settings (8), and the
//! Overview's health / alerts / anomalies tiles.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Cell, Chart, Dataset, GraphType, Paragraph, Row, Sparkline, SparklineBar, Table, Wrap,
};

use super::state::{App, num};
use super::views::{block, clock};
use crate::protocol::{Chart as Series, Level, Phase, Severity, THRESHOLDS};

const WINDOWS: [&str; 3] = ["1 min", "5 min", "1 h"];

fn points<'a>(app: &App, c: &'a Series) -> &'a [Option<f64>] {
    match app.chart_window {
        0 => &c.m1,
        1 => &c.m5,
        _ => &c.h1,
    }
}

fn find<'a>(app: &'a App, name: &str) -> Option<&'a Series> {
    app.snapshot
        .telemetry
        .charts
        .iter()
        .find(|c| c.name == name)
}

fn last(p: &[Option<f64>]) -> Option<f64> {
    p.iter().rev().find_map(|v| *v)
}

fn peak(p: &[Option<f64>]) -> f64 {
    p.iter().flatten().copied().fold(0.0, f64::max)
}

fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A sparkline of a series (None: no bar), scaled ×`scale` to integers.
fn spark(frame: &mut Frame, area: Rect, app: &App, title: String, p: &[Option<f64>], scale: f64) {
    let width = area.width.saturating_sub(2) as usize;
    let data: Vec<SparklineBar> = p
        .iter()
        .rev()
        .take(width)
        .rev()
        .map(|v| SparklineBar::from(v.map(|x| (x * scale).round().max(0.0) as u64)))
        .collect();
    frame.render_widget(
        Sparkline::default()
            .block(block(&title, app))
            .data(data)
            .style(app.theme.chart),
        area,
    );
}

pub fn draw_throughput(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let win = WINDOWS[app.chart_window];
    let services: Vec<String> = app
        .snapshot
        .downstreams
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let rows = services.len().max(1) as u16;
    let per = (area.height.saturating_sub(6) / rows).max(4);
    let mut constraints = vec![Constraint::Length(6)];
    constraints.extend(services.iter().map(|_| Constraint::Length(per)));
    constraints.push(Constraint::Min(0));
    let areas = Layout::vertical(constraints).split(area);
    let [items, invoices] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(areas[0]);
    for (rect, name, what) in [
        (items, "items_per_sec", "Items/s"),
        (invoices, "invoices_per_sec", "Invoices/s"),
    ] {
        let empty = Vec::new();
        let p = find(app, name).map_or(&empty[..], |c| points(app, c));
        let title = format!(
            "{what} · {win}  now {} · peak {}",
            fmt_rate(last(p).unwrap_or(0.0)),
            fmt_rate(peak(p))
        );
        spark(frame, rect, app, title, p, 1.0);
    }
    for (i, svc) in services.iter().enumerate() {
        let rect = areas[i + 1];
        let [lat, err] =
            Layout::horizontal([Constraint::Percentage(65), Constraint::Percentage(35)])
                .areas(rect);
        let empty = Vec::new();
        let get = |q: &str| {
            find(app, &format!("latency_{q}:{svc}")).map_or(&empty[..], |c| points(app, c))
        };
        let (p50, p95, p99) = (get("p50"), get("p95"), get("p99"));
        let now = |p: &[Option<f64>]| last(p).map_or("–".into(), |v| format!("{v:.0}"));
        let title = format!(
            "{svc} ms  p50 {} · p95 {} · p99 {}",
            now(p50),
            now(p95),
            now(p99)
        );
        let to_xy = |p: &[Option<f64>]| -> Vec<(f64, f64)> {
            p.iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
                .collect()
        };
        let (d50, d95, d99) = (to_xy(p50), to_xy(p95), to_xy(p99));
        let top = peak(p99).max(peak(p95)).max(1.0);
        let n = p50.len().max(1) as f64;
        // Each line has its own marker, so they read apart without colour.
        let datasets = vec![
            Dataset::default()
                .name("p50")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(t.ok)
                .data(&d50),
            Dataset::default()
                .name("p95")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(t.warn)
                .data(&d95),
            Dataset::default()
                .name("p99")
                .marker(Marker::Dot)
                .graph_type(GraphType::Scatter)
                .style(t.error)
                .data(&d99),
        ];
        let widget = Chart::new(datasets)
            .block(block(&title, app))
            .x_axis(Axis::default().bounds([0.0, n]))
            .y_axis(
                Axis::default()
                    .bounds([0.0, top * 1.1])
                    .labels([Line::from("0"), Line::from(format!("{top:.0}"))])
                    .style(t.dim),
            )
            .legend_position(None);
        frame.render_widget(widget, lat);
        let e = find(app, &format!("error_rate:{svc}")).map_or(&empty[..], |c| points(app, c));
        let title = format!(
            "errors % · {}",
            last(e).map_or("no calls".into(), |v| format!("{v:.1}"))
        );
        spark(frame, err, app, title, e, 1.0);
    }
}

fn severity_span(app: &App, s: Severity) -> Span<'static> {
    let t = &app.theme;
    match s {
        Severity::Critical => Span::styled("✖ critical", t.error),
        Severity::Warning => Span::styled("▲ warning", t.warn),
        Severity::Info => Span::styled("● info", t.base),
    }
}

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

pub fn draw_alerts(frame: &mut Frame, area: Rect, app: &App) {
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
    let title = format!(
        "Alerts  {firing} firing · {} pending · {} silences",
        tel.alerts.len() - firing,
        tel.silences.len()
    );
    if tel.alerts.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("✓ no alert pending or firing", t.ok))
                .block(block(&title, app)),
            alerts,
        );
    } else {
        let sel = app.alert_row.min(tel.alerts.len() - 1);
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
                let style = if i == sel { t.tab_active } else { t.base };
                let mark = if i == sel { "▶ " } else { "  " };
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
        frame.render_widget(table, alerts);
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

pub fn draw_settings(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let current = &app.snapshot.telemetry.thresholds;
    let sel = app.setting_row.min(current.len().saturating_sub(1));
    let rows: Vec<Row> = current
        .iter()
        .enumerate()
        .map(|(i, (name, v))| {
            let staged = app.staged(name);
            let (new, style) = match staged {
                Some(s) => (format!("→ {}", num(s)), t.warn),
                None => (String::new(), t.base),
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
        format!(
            "Settings  {} change(s) staged — A applies, u undoes",
            app.staged.len()
        )
    };
    let [table_area, foot] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(area);
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

fn level_style(app: &App, l: Level) -> Style {
    let t = &app.theme;
    match l {
        Level::Excellent | Level::Good => t.ok,
        Level::Fair | Level::Poor => t.warn,
        Level::Critical => t.error,
    }
}

/// The Overview's health, alerts and anomalies tiles.
pub fn draw_health_tiles(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let tel = &app.snapshot.telemetry;
    let h = &tel.health;
    let [health, alerts, anomalies] = Layout::horizontal([
        Constraint::Percentage(34),
        Constraint::Percentage(33),
        Constraint::Percentage(33),
    ])
    .areas(area);
    let worst = h.checks.iter().min_by_key(|c| c.score);
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{:>3}", h.score), level_style(app, h.level)),
        Span::styled(format!(" / 100  {}", h.level), level_style(app, h.level)),
    ])];
    if let Some(w) = worst.filter(|w| w.score < 100) {
        lines.push(Line::from(Span::styled(
            format!(
                "{} {}: {}",
                w.name,
                w.score,
                w.notes.first().cloned().unwrap_or_default()
            ),
            t.dim,
        )));
    } else {
        lines.push(Line::from(Span::styled("every component at 100", t.dim)));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(block("Health", app)),
        health,
    );
    let firing: Vec<_> = tel
        .alerts
        .iter()
        .filter(|a| a.phase == Phase::Firing)
        .collect();
    let crit = firing
        .iter()
        .filter(|a| a.severity == Severity::Critical)
        .count();
    let mut lines = vec![Line::from(vec![
        Span::styled(
            format!("{} firing", firing.len()),
            if crit > 0 {
                t.error
            } else if firing.is_empty() {
                t.ok
            } else {
                t.warn
            },
        ),
        Span::styled(
            format!(" · {} pending", tel.alerts.len() - firing.len()),
            t.dim,
        ),
    ])];
    if let Some(a) = tel.alerts.first() {
        lines.push(Line::from(vec![
            severity_span(app, a.severity),
            Span::raw(format!(" {}", a.id)),
        ]));
    }
    frame.render_widget(
        Paragraph::new(lines).block(block("Alerts (5)", app)),
        alerts,
    );
    let mut lines = vec![Line::from(Span::styled(
        format!("{} open", tel.open_anomalies),
        if tel.open_anomalies > 0 { t.warn } else { t.ok },
    ))];
    if let Some(a) = tel.anomalies.first() {
        lines.push(Line::from(Span::styled(
            format!("{} z {:+.1}", a.metric, a.score),
            t.dim,
        )));
    }
    frame.render_widget(
        Paragraph::new(lines).block(block("Anomalies", app)),
        anomalies,
    );
}
