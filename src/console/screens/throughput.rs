//! Throughput (2): items/s and invoices/s, then latency p50/p95/p99 and error rate per
//! downstream, over the window `w` picks (1 min, 5 min, 1 h).
//!
//! At 100×30 (header and footer are the chrome's):
//!
//! ```text
//!  header (chrome): syncctl · SANDBOX · ▶ running · http://…   1  2 Throughput  3  4  5  6  7  8        row 0
//! ┌ Items/s · 1 min  now 48.0 · peak 64.0 ─────────┐┌ Invoices/s · 1 min  now 0.0 · peak 1.0 ────────┐  6 rows; w: 1 min / 5 min / 1 h
//! │                                                ││                                                │
//! │               sparkline                        ││               sparkline                        │
//! │                                                ││                                                │
//! │                                                ││                                                │
//! └────────────────────────────────────────────────┘└────────────────────────────────────────────────┘
//! ┌ stripe ms  p50 35 · p95 35 · p99 35 ──────────────────────────┐┌ errors % · 0.0 ─────────────────┐  one row per downstream,
//! │54│  p50 ⡀⠤ braille, p95 ⠒ braille, p99 • dots                 ││                                 │
//! │0 │                                                            ││sparkline                        │
//! └───────────────────────────────────────────────────────────────┘└─────────────────────────────────┘
//! ┌ quickbooks ms  p50 18 · p95 27 · p99 40 ──────────────────────┐┌ errors % · 0.0 ─────────────────┐  (28 − 6) / n rows each (7 at 100×30)
//! │                                                               ││                                 │
//! │                                                               ││                                 │
//! └───────────────────────────────────────────────────────────────┘└─────────────────────────────────┘
//! ┌ alegra ms  … ─────────────────────────────────────────────────┐┌ errors % · no calls ────────────┐
//! │                                                               ││                                 │
//! │                                                               ││                                 │
//! └───────────────────────────────────────────────────────────────┘└─────────────────────────────────┘
//! (left over: blank)                                                                                    the rest
//!  footer (chrome): key hints from the key table · or the flash line · or the prompt                    row 29
//! ```

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Sparkline, SparklineBar};

use crate::console::chrome::block;
use crate::console::state::App;
use crate::protocol::Chart as Series;

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

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
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
