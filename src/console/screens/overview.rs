//! Overview (1): what needs a person first, then the catalog sync at a glance, health,
//! alerts and anomalies, where products come from, and the latest errors.
//!
//! At 100×30 (header and footer are the chrome's):
//!
//! ```text
//!  header (chrome): syncctl · SANDBOX · ▶ running · http://…   1 Overview  2  3  4  5  6  7  8          row 0
//! ┌ ACTION NEEDED ───────────────────────────────────────────────────────────────────────────────────┐  only with health problems: its text, ≤ half the body
//! │quickbooks: why it is wrong                                                                       │
//! │fix: what to do                                                                                   │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Catalog  Stripe → QuickBooks ──────────────────┐┌ Items/s  now 49 · peak 64 · 48 s ──────────────┐  9 rows
//! │Products     2 500  in Stripe                   ││                                                │
//! │Synced       1 234                              ││                                                │
//! │Queued         180                              ││                                                │
//! │In flight        8  32 workers                  ││          sparkline, one bar a second           │
//! │Failed           2  ✗ needs attention           ││                                                │
//! │Rejected         1  invalid data                ││                                                │
//! │████████████49.4% synced                        ││▁▂▃▅▇█▇▅▃                                       │
//! └────────────────────────────────────────────────┘└────────────────────────────────────────────────┘
//! ┌ Health ────────────────────────┐┌ Alerts ───────────────────────┐┌ Anomalies ────────────────────┐  4 rows
//! │100 / 100  excellent            ││0 firing · 1 pending           ││0 open                         │
//! │worst check: its note           ││▲ warning first alert          ││latest: metric z +3.2          │
//! └────────────────────────────────┘└───────────────────────────────┘└───────────────────────────────┘
//! ┌ Sources ─────────────────────────────────────────────────────────────────────────────────────────┐  5 rows
//! │Full sync   ◐ page 9 · 900 listed  (✓ done · N products in P pages)                               │
//! │Webhooks    9 accepted · 1 duplicate · 0 rejected                                                 │
//! │Reconcile   /v1/events last HH:MM:SS UTC                                                          │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//! ┌ Latest errors (N total) ─────────────────────────────────────────────────────────────────────────┐  the rest (10 rows)
//! │HH:MM:SS entity message, wrapped (✓ none)                                                         │
//! │                                                                                                  │
//! └──────────────────────────────────────────────────────────────────────────────────────────────────┘
//!  footer (chrome): key hints from the key table · or the flash line · or the prompt                    row 29
//! ```

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Gauge, Paragraph, Sparkline, Wrap};

use crate::console::chrome::{block, clock, group, severity_span};
use crate::console::state::App;
use crate::protocol::{Level, Phase, Severity};

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let area = if app.snapshot.telemetry.health.problems.is_empty() {
        area
    } else {
        let h = banner_height(app, area.width, area.height / 2);
        let [banner, rest] =
            Layout::vertical([Constraint::Length(h), Constraint::Min(0)]).areas(area);
        draw_banner(frame, banner, app);
        rest
    };
    // A tall terminal also shows each circuit and the DIAN queue by state (console.md's
    // Overview tiles), above the errors, which keep at least a few rows.
    let band = circuits_band_height(app);
    let band = if area.height >= 9 + 4 + 5 + band + 6 {
        band
    } else {
        0
    };
    let [top, health, circuits, sources, errors] = Layout::vertical([
        Constraint::Length(9),
        Constraint::Length(4),
        Constraint::Length(band),
        Constraint::Length(5),
        Constraint::Min(3),
    ])
    .areas(area);
    draw_health_tiles(frame, health, app);
    if band > 0 {
        draw_circuits_and_dian(frame, circuits, app);
    }
    let [counts, chart] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    draw_counts(frame, counts, app);
    draw_rate(frame, chart, app);
    draw_sources(frame, sources, app);
    draw_errors(frame, errors, app);
}

/// Problems that need a person, above everything else on the Overview: what is wrong
/// and the fix, in words (the health score alone does not say what to do).
fn draw_banner(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let mut lines = Vec::new();
    for p in &app.snapshot.telemetry.health.problems {
        lines.push(Line::from(vec![
            Span::styled(format!("{}: ", p.component), t.error),
            Span::raw(p.reason.clone()),
        ]));
        lines.push(Line::from(vec![
            Span::styled("fix: ", t.key),
            Span::raw(p.fix.clone()),
        ]));
    }
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: true }).block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(t.error)
                .title(Span::styled(" ACTION NEEDED ", t.error)),
        ),
        area,
    );
}

/// Rows the banner needs at `width` (its text wrapped, plus the border), at most `max`.
fn banner_height(app: &App, width: u16, max: u16) -> u16 {
    let inner = width.saturating_sub(2).max(1) as usize;
    let rows: usize = app
        .snapshot
        .telemetry
        .health
        .problems
        .iter()
        .map(|p| {
            let reason = p.component.chars().count() + 2 + p.reason.chars().count();
            let fix = 5 + p.fix.chars().count();
            // Word wrapping leaves ends of lines short: allow a little slack.
            (reason * 11 / 10).div_ceil(inner) + (fix * 11 / 10).div_ceil(inner)
        })
        .sum();
    (rows as u16 + 2).min(max)
}

fn draw_counts(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let c = &app.snapshot.catalog;
    let n = &c.counts;
    let total = n.products_seen.max(n.synced);
    let inner = block("Catalog  Stripe → QuickBooks", app);
    let inner_area = inner.inner(area);
    frame.render_widget(inner, area);
    let row = |label: &str, value: u64, style: Style, note: String| {
        Line::from(vec![
            Span::styled(format!("{label:<10}"), t.dim),
            Span::styled(format!("{:>9}", group(value)), style),
            Span::styled(format!("  {note}"), t.dim),
        ])
    };
    let failed_style = if n.failed > 0 { t.error } else { t.base };
    let rejected_style = if n.rejected > 0 { t.warn } else { t.base };
    let lines = vec![
        row(
            "Products",
            total,
            t.title,
            if c.full_sync.done {
                "in Stripe".into()
            } else {
                "listed so far".into()
            },
        ),
        row("Synced", n.synced, t.ok, String::new()),
        row("Queued", n.queued, t.base, String::new()),
        row(
            "In flight",
            c.in_flight as u64,
            t.base,
            // The auto-scaler's target, not the tasks spawned for its upper bound.
            format!("{} workers", c.workers_target),
        ),
        row(
            "Failed",
            n.failed,
            failed_style,
            if n.failed > 0 {
                "✗ needs attention".into()
            } else {
                String::new()
            },
        ),
        row(
            "Rejected",
            n.rejected,
            rejected_style,
            if n.rejected > 0 {
                "invalid data".into()
            } else {
                String::new()
            },
        ),
    ];
    let [text, gauge] =
        Layout::vertical([Constraint::Length(6), Constraint::Length(1)]).areas(inner_area);
    frame.render_widget(Paragraph::new(lines), text);
    let ratio = if total == 0 {
        0.0
    } else {
        (n.synced as f64 / total as f64).min(1.0)
    };
    frame.render_widget(
        Gauge::default()
            .ratio(ratio)
            .label(format!("{:.1}% synced", ratio * 100.0))
            .gauge_style(t.chart)
            .use_unicode(true),
        gauge,
    );
}

fn draw_rate(frame: &mut Frame, area: Rect, app: &App) {
    let c = &app.snapshot.catalog;
    let width = area.width.saturating_sub(2) as usize;
    let series: Vec<u64> = c
        .per_second
        .iter()
        .rev()
        .take(width)
        .rev()
        .copied()
        .collect();
    let peak = series.iter().copied().max().unwrap_or(0);
    let title = format!(
        "Items/s  now {} · peak {} · {} s",
        c.rate(),
        peak,
        series.len()
    );
    let b = block(&title, app);
    frame.render_widget(
        Sparkline::default()
            .block(b)
            .data(&series)
            .style(app.theme.chart),
        area,
    );
}

fn draw_sources(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let c = &app.snapshot.catalog;
    let f = &c.full_sync;
    let full = if f.done {
        Span::styled(
            format!("✓ done · {} products in {} pages", group(f.listed), f.pages),
            t.ok,
        )
    } else if f.pages == 0 {
        Span::styled("… starting".to_string(), t.dim)
    } else {
        Span::styled(
            format!("◐ page {} · {} listed", f.pages, group(f.listed)),
            t.base,
        )
    };
    let reconcile = match c.last_reconcile_ms {
        Some(ms) => format!("last {} UTC", clock(ms)),
        None => "not yet".into(),
    };
    let hooks_style = if c.webhooks_rejected > 0 {
        t.warn
    } else {
        t.base
    };
    let lines = vec![
        Line::from(vec![Span::styled("Full sync   ", t.dim), full]),
        Line::from(vec![
            Span::styled("Webhooks    ", t.dim),
            Span::styled(
                if c.webhooks_ignored > 0 {
                    format!(
                        "{} accepted · {} duplicate · {} ignored · {} rejected",
                        c.webhooks_accepted,
                        c.webhooks_duplicate,
                        c.webhooks_ignored,
                        c.webhooks_rejected
                    )
                } else {
                    format!(
                        "{} accepted · {} duplicate · {} rejected",
                        c.webhooks_accepted, c.webhooks_duplicate, c.webhooks_rejected
                    )
                },
                hooks_style,
            ),
        ]),
        Line::from(vec![
            Span::styled("Reconcile   ", t.dim),
            Span::raw(format!("/v1/events {reconcile}")),
        ]),
    ];
    // Where Stripe must send webhooks, when hosting (the header has room for it only
    // on wide terminals).
    let title = if app.link.hosted() && !app.snapshot.server_addr.is_empty() {
        format!("Sources  webhooks to http://{}", app.snapshot.server_addr)
    } else {
        "Sources".to_owned()
    };
    frame.render_widget(Paragraph::new(lines).block(block(&title, app)), area);
}

fn draw_errors(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let errors = &app.snapshot.recent_errors;
    let title = format!("Latest errors ({} total)", app.snapshot.catalog.errors);
    if errors.is_empty() {
        let p = Paragraph::new(Span::styled("✓ none", t.ok)).block(block(&title, app));
        frame.render_widget(p, area);
        return;
    }
    // Wrapped, not cut: the end of an error message is usually the part that says why.
    let lines: Vec<Line> = errors
        .iter()
        .map(|e| {
            Line::from(vec![
                Span::styled(format!("{} ", clock(e.at_ms)), t.dim),
                Span::raw(format!("{} ", e.entity)),
                Span::styled(e.message.clone(), t.error),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(&title, app)),
        area,
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
fn draw_health_tiles(frame: &mut Frame, area: Rect, app: &App) {
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
    frame.render_widget(Paragraph::new(lines).block(block("Alerts", app)), alerts);
    let mut lines = vec![Line::from(Span::styled(
        format!("{} open", tel.open_anomalies),
        if tel.open_anomalies > 0 { t.warn } else { t.ok },
    ))];
    if let Some(a) = tel.anomalies.first() {
        // The newest: open, or when it ended (the list keeps the last hour's).
        let state = match a.ended_ms {
            None => "now".to_owned(),
            Some(ms) => format!("ended {}", clock(ms)),
        };
        lines.push(Line::from(Span::styled(
            format!("{} z {:+.1} · {state}", a.metric, a.score),
            if a.ended_ms.is_none() { t.warn } else { t.dim },
        )));
    }
    frame.render_widget(
        Paragraph::new(lines).block(block("Anomalies", app)),
        anomalies,
    );
}

/// Rows of the circuits and DIAN band: a line per downstream (or per DIAN line), framed.
fn circuits_band_height(app: &App) -> u16 {
    let rows = app.snapshot.downstreams.len().max(3);
    u16::try_from(rows).unwrap_or(u16::MAX).saturating_add(2)
}

/// Each circuit's state (symbol and word) with its failure rate, and the DIAN queue's
/// counts by state with the earliest contingency deadline.
fn draw_circuits_and_dian(frame: &mut Frame, area: Rect, app: &App) {
    use crate::console::chrome::countdown;
    let t = &app.theme;
    let s = &app.snapshot;
    let [circuits, dian] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let lines: Vec<Line> = s
        .downstreams
        .iter()
        .map(|d| {
            let b = &d.breaker;
            let calls = match b.calls {
                1 => "1 call".to_owned(),
                n => format!("{} calls", group(u64::from(n))),
            };
            let rate = match b.failure_rate {
                Some(r) => format!(" {r:.0}% of {calls} failed"),
                None => format!(" {calls}, too few to rate"),
            };
            Line::from(vec![
                Span::raw(format!("{:<11}", d.name)),
                Span::styled(
                    format!("{} {:<12}", b.state.symbol(), b.state.name()),
                    super::circuits::state_style(app, b.state),
                ),
                Span::styled(rate, t.dim),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(block("Circuits", app)),
        circuits,
    );
    let c = &s.compliance;
    let lines = if !c.enabled {
        vec![Line::styled("off ([alegra] not configured)", t.dim)]
    } else if c.counts.total == 0 {
        vec![Line::styled("no paid invoices yet", t.dim)]
    } else {
        let mut spans = Vec::new();
        for (status, n) in &c.counts.by_status {
            if *n == 0 {
                continue;
            }
            if !spans.is_empty() {
                spans.push(Span::raw("  "));
            }
            spans.push(Span::styled(
                format!("{} {} {}", status.symbol(), status.name(), group(*n)),
                super::dian::invoice_style(app, *status),
            ));
        }
        let mut lines = vec![Line::from(spans)];
        lines.push(Line::styled(
            format!(
                "{} waiting · {} in flight",
                group(c.counts.waiting()),
                c.in_flight
            ),
            t.dim,
        ));
        if let Some(deadline) = c.counts.earliest_deadline_ms {
            let left = deadline - c.now_ms;
            lines.push(Line::styled(
                format!("earliest contingency deadline in {}", countdown(left)),
                if left < 3_600_000 { t.error } else { t.warn },
            ));
        }
        lines
    };
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(block("DIAN queue", app)),
        dian,
    );
}
