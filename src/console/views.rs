//! Drawing: free functions over `&App`, one per screen region. Nothing here mutates.
//!
//! ```text
//! ┌ header: SANDBOX/LIVE badge · pipeline state · engine address · tabs ┐
//! │ body: the current tab                                                │
//! │   Overview: Catalog counts │ Items/s sparkline                       │
//! │             Sources (full sync, webhooks, reconciliation)            │
//! │             Latest errors                                            │
//! │   Events:   the audit trail, newest first, scrollable                │
//! └ hints bar (from the key table) or the flash line                     ┘
//! ```

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Gauge, Paragraph, Row, Sparkline, Table, Wrap,
};

use super::keymap::{self, BINDINGS};
use super::state::{App, Tab};
use crate::protocol::{Mode, State as BreakerState, Status as InvoiceStatus, explain};

pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 16;

pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        too_small(frame, area);
        return;
    }
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, app);
    match app.tab {
        Tab::Overview => draw_overview(frame, body, app),
        Tab::Throughput => super::screens::draw_throughput(frame, body, app),
        Tab::Alerts => super::screens::draw_alerts(frame, body, app),
        Tab::Settings => super::screens::draw_settings(frame, body, app),
        Tab::Circuits => draw_circuits(frame, body, app),
        Tab::Workers => draw_workers(frame, body, app),
        Tab::Dian => draw_dian(frame, body, app),
        Tab::Events => draw_events(frame, body, app),
    }
    draw_footer(frame, footer, app);
    if app.help {
        draw_help(frame, area, app);
    }
    if app.confirm.is_some() {
        draw_confirm(frame, area, app);
    }
}

fn too_small(frame: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("terminal too small"),
        Line::from(format!(
            "{}×{} — need at least {MIN_WIDTH}×{MIN_HEIGHT}",
            area.width, area.height
        )),
    ];
    let y = area.height.saturating_sub(2) / 2;
    let rect = Rect {
        x: area.x,
        y: area.y + y,
        width: area.width,
        height: area.height.min(2),
    };
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        rect,
    );
}

/// `12 345` — thin grouping keeps big counts readable at a glance.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// `HH:MM:SS` in UTC from unix milliseconds.
/// Time left, compact: `47h05m`, `12m30s`, `45s`; `late 3m` once past.
pub fn countdown(ms: i64) -> String {
    let late = ms < 0;
    let s = ms.unsigned_abs().div_ceil(1000);
    let text = if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    };
    if late { format!("late {text}") } else { text }
}

pub fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let s = &app.snapshot;
    let (badge, badge_style) = match s.mode {
        Mode::Sandbox => (" SANDBOX ", t.badge_sandbox),
        Mode::Live => (" LIVE ", t.badge_live),
    };
    let (state, state_style) = if s.draining || app.quitting {
        ("■ draining", t.warn)
    } else if s.catalog.paused {
        ("‖ paused", t.warn)
    } else {
        ("▶ running", t.ok)
    };
    let mut left = vec![
        Span::styled(" syncctl ", t.title),
        Span::styled(badge, badge_style),
        Span::raw(if area.width >= 100 { " catalog " } else { " " }),
        Span::styled(state, state_style),
    ];
    if app.frozen {
        left.push(Span::raw(" "));
        left.push(Span::styled(" FROZEN ", t.badge_sandbox));
    }
    // Where Stripe must send webhooks; wide terminals only.
    if area.width >= 100 && !s.server_addr.is_empty() {
        left.push(Span::styled(format!("  http://{}", s.server_addr), t.dim));
    }
    let mut right = Vec::new();
    for tab in Tab::ALL.iter() {
        // Narrow terminals name only the current screen; the others show their key.
        let label = if area.width >= 160 || *tab == app.tab {
            format!(" {} {} ", tab.key(), tab.title())
        } else {
            format!(" {} ", tab.key())
        };
        right.push(Span::styled(
            label,
            if *tab == app.tab { t.tab_active } else { t.dim },
        ));
    }
    let right_width: u16 = right.iter().map(|s| s.width() as u16).sum();
    let [l, r] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(right_width)]).areas(area);
    frame.render_widget(Paragraph::new(Line::from(left)), l);
    frame.render_widget(Paragraph::new(Line::from(right)), r);
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    if let Some(text) = &app.prompt {
        let mut spans = vec![
            Span::styled(format!(" {}: ", app.prompt_kind.label()), t.title),
            Span::styled(format!("{text}▏"), t.key),
        ];
        // A problem with what was typed replaces the key hints: it must be read.
        match &app.flash {
            Some(flash) => spans.push(Span::styled(format!("  {flash}"), t.flash)),
            None => spans.push(Span::styled("  Enter apply · Esc cancel", t.dim)),
        }
        frame.render_widget(Paragraph::new(Line::from(spans)), area);
        return;
    }
    if let Some(flash) = &app.flash {
        frame.render_widget(
            Paragraph::new(Span::styled(format!(" {flash}"), t.flash)),
            area,
        );
        return;
    }
    let mut spans = vec![Span::raw(" ")];
    for (keys, hint) in keymap::hints(app.tab) {
        spans.push(Span::styled(keys, t.key));
        spans.push(Span::styled(format!(" {hint}  "), t.dim));
    }
    let keys: Vec<String> = Tab::ALL.iter().map(|t| t.key().to_string()).collect();
    spans.push(Span::styled(keys.join(" "), t.key));
    spans.push(Span::styled(" screens", t.dim));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

pub(super) fn block<'a>(title: &'a str, app: &App) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(app.theme.dim)
        .title(Span::styled(format!(" {title} "), app.theme.title))
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

fn draw_overview(frame: &mut Frame, area: Rect, app: &App) {
    let area = if app.snapshot.telemetry.health.problems.is_empty() {
        area
    } else {
        let h = banner_height(app, area.width, area.height / 2);
        let [banner, rest] =
            Layout::vertical([Constraint::Length(h), Constraint::Min(0)]).areas(area);
        draw_banner(frame, banner, app);
        rest
    };
    let [top, health, sources, errors] = Layout::vertical([
        Constraint::Length(9),
        Constraint::Length(4),
        Constraint::Length(5),
        Constraint::Min(3),
    ])
    .areas(area);
    super::screens::draw_health_tiles(frame, health, app);
    let [counts, chart] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    draw_counts(frame, counts, app);
    draw_rate(frame, chart, app);
    draw_sources(frame, sources, app);
    draw_errors(frame, errors, app);
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
            format!("{} workers", c.workers),
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
    frame.render_widget(Paragraph::new(lines).block(block("Sources", app)), area);
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

fn draw_events(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let audit = app.events_rows();
    let visible = area.height.saturating_sub(3) as usize;
    let offset = app.events_offset.min(audit.len().saturating_sub(1));
    let follow = if offset == 0 {
        "live"
    } else {
        "scrolled — g for live"
    };
    let filtering = app.search_open || !app.events_filter.is_empty();
    let title = if filtering {
        format!(
            "Events  filter: {}{} · {} of {} · {follow}",
            app.events_filter,
            if app.search_open { "▏" } else { "" },
            audit.len(),
            app.snapshot.audit.len()
        )
    } else {
        format!(
            "Events  {} shown · newest first · {follow} · times UTC",
            audit.len()
        )
    };
    // Narrow terminals drop the "who" column and name a person in the message instead.
    let wide = area.width >= 100;
    let rows = audit.iter().skip(offset).take(visible).map(|e| {
        let kind_style = match e.kind.as_str() {
            "error" => t.error,
            "rejected" => t.warn,
            "operator" => t.key,
            _ => t.base,
        };
        let mut cells = vec![
            Cell::from(Span::styled(clock(e.at_ms), t.dim)),
            Cell::from(Span::styled(e.kind.clone(), kind_style)),
            Cell::from(e.entity.clone()),
        ];
        if wide {
            cells.push(Cell::from(Span::styled(e.actor.clone(), t.dim)));
            cells.push(Cell::from(e.message.clone()));
        } else if e.actor != "engine" {
            cells.push(Cell::from(Line::from(vec![
                Span::styled(format!("{} ", e.actor), t.key),
                Span::raw(e.message.clone()),
            ])));
        } else {
            cells.push(Cell::from(e.message.clone()));
        }
        Row::new(cells)
    });
    let (header, widths) = if wide {
        (
            Row::new(vec!["time", "kind", "entity", "who", "what"]),
            vec![
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(19),
                Constraint::Length(16),
                Constraint::Min(10),
            ],
        )
    } else {
        (
            Row::new(vec!["time", "kind", "entity", "what"]),
            vec![
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(19),
                Constraint::Min(10),
            ],
        )
    };
    let table = Table::new(rows, widths)
        .header(header.style(t.title))
        .block(block(&title, app));
    frame.render_widget(table, area);
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.0}%"))
}

fn secs(ms: u64) -> String {
    if ms >= 10_000 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

fn state_style(app: &App, state: BreakerState) -> Style {
    let t = &app.theme;
    match state {
        BreakerState::Closed => t.ok,
        BreakerState::HalfOpen | BreakerState::MetricsOnly | BreakerState::Disabled => t.warn,
        BreakerState::Open | BreakerState::ForcedOpen => t.error,
    }
}

fn draw_circuits(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let s = &app.snapshot;
    let table_h = (s.downstreams.len() as u16 + 3).min(area.height / 2);
    let [table_area, detail] =
        Layout::vertical([Constraint::Length(table_h), Constraint::Min(4)]).areas(area);
    let header = Row::new([
        "",
        "circuit",
        "state",
        "fail/thr",
        "slow/thr",
        "calls",
        "rejected",
        "half-open",
    ])
    .style(t.title);
    let rows = s.downstreams.iter().enumerate().map(|(i, d)| {
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
        let row = Row::new(vec![
            Cell::from(marker),
            Cell::from(name),
            Cell::from(Span::styled(
                format!("{} {}", b.state.symbol(), b.state.name()),
                state_style(app, b.state),
            )),
            Cell::from(format!(
                "{}/{:.0}%",
                pct(b.failure_rate),
                b.failure_threshold
            )),
            Cell::from(format!(
                "{}/{:.0}%",
                pct(b.slow_call_rate),
                b.slow_call_threshold
            )),
            Cell::from(format!("{}", b.calls)),
            Cell::from(group(b.rejections)),
            Cell::from(half),
        ]);
        if i == app.circuit {
            row.style(t.tab_active)
        } else {
            row
        }
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(1),
            Constraint::Length(12),
            Constraint::Length(14),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Min(9),
        ],
    )
    .header(header)
    .block(block(
        "Circuits — window rates vs thresholds (– = fewer calls than the minimum)",
        app,
    ));
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

fn draw_workers(frame: &mut Frame, area: Rect, app: &App) {
    let t = &app.theme;
    let s = &app.snapshot;
    let c = &s.catalog;
    let [pipe, limits, decisions] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Length(s.downstreams.len() as u16 + 3),
        Constraint::Min(3),
    ])
    .areas(area);
    let lines = vec![
        Line::from(vec![
            Span::styled("queue ", t.dim),
            Span::raw(format!(
                "{} queued · oldest since {} · {} in flight · {} held back",
                group(c.counts.queued),
                c.counts
                    .oldest_queued_ms
                    .map_or_else(|| "–".to_owned(), clock),
                c.in_flight,
                group(c.deferred)
            )),
        ]),
        Line::from(vec![
            Span::styled("workers ", t.dim),
            Span::styled(
                format!("{} busy / {} target", c.in_flight, c.workers_target),
                t.title,
            ),
            Span::raw(format!(
                " · bounds {}–{}{}",
                c.workers_min,
                c.workers_max,
                if c.autoscale { "" } else { " (fixed)" }
            )),
        ]),
        Line::from(vec![
            Span::styled("why ", t.dim),
            Span::raw(c.autoscale_status.clone()),
        ]),
        Line::from(vec![
            Span::styled("batches ", t.dim),
            Span::raw(format!(
                "claim {} jobs · list page {} products",
                c.claim_batch, c.page_size
            )),
        ]),
    ];
    frame.render_widget(
        Paragraph::new(lines).block(block(
            if c.paused {
                "Catalog pipeline — paused"
            } else {
                "Catalog pipeline"
            },
            app,
        )),
        pipe,
    );
    let header = Row::new([
        "downstream",
        "rate/min",
        "in flight",
        "pushback",
        "429s",
        "budget",
    ])
    .style(t.title);
    let rows = s.downstreams.iter().map(|d| {
        let l = &d.limiter;
        let rate = if l.rate_per_min == 0 {
            "no limit".to_owned()
        } else if l.effective_per_min < l.rate_per_min {
            format!(
                "{} of {}",
                group(l.effective_per_min as u64),
                group(l.rate_per_min as u64)
            )
        } else {
            group(l.rate_per_min as u64)
        };
        let conc = match (l.max_concurrent, l.effective_concurrent) {
            (0, 0) => format!("{} / –", l.in_flight),
            (_, e) => format!("{} / {}", l.in_flight, e),
        };
        let pushback = if l.paused_for_ms > 0 {
            Span::styled(format!("paused {}", secs(l.paused_for_ms)), t.warn)
        } else {
            Span::raw("–")
        };
        Row::new(vec![
            Cell::from(d.name.clone()),
            Cell::from(rate),
            Cell::from(conc),
            Cell::from(pushback),
            Cell::from(group(d.throttled)),
            Cell::from(format!("{} left", d.budget_available)),
        ])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(12),
                Constraint::Length(14),
                Constraint::Length(10),
                Constraint::Length(14),
                Constraint::Length(6),
                Constraint::Min(8),
            ],
        )
        .header(header)
        .block(block(
            "Rate limits (proactive GCRA + in-flight cap; halved on 429)",
            app,
        )),
        limits,
    );
    let items: Vec<Line> = if c.decisions.is_empty() {
        vec![Line::from(Span::styled("no scaling decision yet", t.dim))]
    } else {
        c.decisions
            .iter()
            .map(|d| {
                let arrow = if d.to > d.from { "▲" } else { "▼" };
                Line::from(vec![
                    Span::styled(format!("{} ", clock(d.at_ms)), t.dim),
                    Span::styled(format!("{arrow} {:>2} → {:<2} ", d.from, d.to), t.title),
                    Span::raw(d.reason.clone()),
                ])
            })
            .collect()
    };
    frame.render_widget(
        Paragraph::new(items).block(block("Auto-scaler decisions (newest first)", app)),
        decisions,
    );
}

/// `1 785 000,00` — pesos from cents, grouped, Colombian decimal comma.
fn pesos(cents: i64) -> String {
    format!(
        "{},{:02}",
        group((cents / 100).max(0) as u64),
        cents.rem_euclid(100)
    )
}

fn invoice_style(app: &App, s: InvoiceStatus) -> Style {
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

fn draw_dian(frame: &mut Frame, area: Rect, app: &App) {
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
    if c.window.limit > 0 {
        second.push(Span::styled(
            format!(
                " · Alegra quota {}/{} left, resets in {} s",
                c.window.remaining, c.window.limit, c.window.reset_secs
            ),
            t.dim,
        ));
    }
    if c.paused {
        second.push(Span::styled(" · PAUSED", t.warn));
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
    let selected = app.dian_row.min(rows.len().saturating_sub(1));
    let wide = area.width >= 120;
    let mut header = vec![
        "",
        "number",
        "buyer",
        "total COP",
        "state",
        "att",
        "next",
        "last",
    ];
    if wide {
        header.push("CUFE");
    }
    let visible = table_area.height.saturating_sub(3) as usize;
    let first = selected.saturating_sub(visible.saturating_sub(1));
    let body = rows
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
                Cell::from(if i == selected { "▶" } else { " " }),
                Cell::from(r.number.clone()),
                Cell::from(r.buyer_name.clone()),
                Cell::from(Line::from(pesos(r.total)).alignment(Alignment::Right)),
                Cell::from(Span::styled(
                    format!("{} {}", r.status.symbol(), r.status.name()),
                    invoice_style(app, r.status),
                )),
                Cell::from(r.attempts.to_string()),
                Cell::from(Line::from(next)),
                Cell::from(last),
            ];
            if wide {
                cells.push(Cell::from(r.cufe.as_deref().map_or_else(
                    || "–".to_owned(),
                    |c| format!("{}…", &c[..c.len().min(16)]),
                )));
            }
            let row = Row::new(cells);
            if i == selected {
                row.style(t.tab_active)
            } else {
                row
            }
        });
    let mut widths = vec![
        Constraint::Length(1),
        Constraint::Length(13),
        Constraint::Min(10),
        Constraint::Length(13),
        Constraint::Length(11),
        Constraint::Length(3),
        // Room for "late 1m00s" when there is room at all; the number comes first.
        Constraint::Length(if area.width >= 100 { 10 } else { 8 }),
        Constraint::Min(12),
    ];
    if wide {
        widths.push(Constraint::Length(17));
    }
    let filter = app
        .dian_filter
        .map_or("all".to_owned(), |f| f.name().to_owned());
    let title = format!(
        "DIAN queue — {} of {} ({filter})",
        rows.len(),
        group(c.counts.total)
    );
    frame.render_widget(
        Table::new(body, widths)
            .header(Row::new(header).style(t.title))
            .block(block(&title, app)),
        table_area,
    );

    // Detail: the selected invoice's history (or payload), once the engine sent it.
    let focus = app.detail.as_ref().filter(|d| {
        rows.get(selected)
            .is_some_and(|r| r.stripe_id == d.record.stripe_id)
    });
    let lines: Vec<Line> = match (focus, rows.get(selected)) {
        (_, None) => vec![Line::from(Span::styled("no invoice matches", t.dim))],
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
    let title = if app.show_payload {
        "Payload for Alegra (v: history)"
    } else {
        "History (v: payload)"
    };
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(title, app)),
        detail,
    );
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// Help for the current screen, from the key table: the screen's own keys, the list
/// keys (on one line), then the global ones; the screen numbers on one line.
fn draw_help(frame: &mut Frame, area: Rect, app: &App) {
    use super::keymap::{Action, Scope};
    let t = &app.theme;
    let applies: Vec<_> = BINDINGS
        .iter()
        .filter(|b| b.scope.applies(app.tab))
        .collect();
    let line = |label: &str, help: &str| {
        Line::from(vec![
            Span::styled(format!("{label:>6}  "), t.key),
            Span::raw(help.to_owned()),
        ])
    };
    let screens: Vec<String> = Tab::ALL
        .iter()
        .map(|tab| format!("{} {}", tab.key(), tab.title()))
        .collect();
    let mut lines = vec![
        line("1–4", &screens[..4].join(" · ")),
        line("5–8", &screens[4..].join(" · ")),
    ];
    for b in applies
        .iter()
        .filter(|b| !matches!(b.scope, Scope::Global | Scope::Lists))
    {
        lines.push(line(b.label, b.help));
    }
    let lists: Vec<&&super::keymap::Binding> =
        applies.iter().filter(|b| b.scope == Scope::Lists).collect();
    if !lists.is_empty() {
        let labels: Vec<&str> = lists.iter().map(|b| b.label).collect();
        lines.push(line(
            &labels.join(" "),
            "move: up, down, a page, newest, oldest",
        ));
    }
    for b in applies
        .iter()
        .filter(|b| b.scope == Scope::Global && !matches!(b.action, Action::GoTab(_)))
    {
        lines.push(line(b.label, b.help));
    }
    let title = format!("Keys — {} (any key closes)", app.tab.title());
    let width = area.width.saturating_sub(2).min(96);
    let rect = centered(area, width, (lines.len() as u16 + 2).min(area.height));
    frame.render_widget(Clear, rect);
    frame.render_widget(Paragraph::new(lines).block(block(&title, app)), rect);
}

fn draw_confirm(frame: &mut Frame, area: Rect, app: &App) {
    let Some(confirm) = &app.confirm else { return };
    let t = &app.theme;
    let rect = centered(area, 60, 8);
    frame.render_widget(Clear, rect);
    let title = confirm.title();
    let b = block(&title, app);
    let inner = b.inner(rect);
    frame.render_widget(b, rect);
    let [text, buttons] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    frame.render_widget(
        Paragraph::new(confirm.effect()).wrap(Wrap { trim: true }),
        text,
    );
    let (cancel_style, ok_style) = if app.confirm_focus_ok {
        (t.base, t.button_focus)
    } else {
        (t.button_focus, t.base)
    };
    let line = Line::from(vec![
        Span::styled(" [ Cancel ] ", cancel_style),
        Span::raw("   "),
        Span::styled(format!(" [ {} ] ", confirm.action_word()), ok_style),
        Span::styled("   ←/→ choose · Enter · y/n", t.dim),
    ]);
    frame.render_widget(Paragraph::new(line).alignment(Alignment::Center), buttons);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(1234), "1 234");
        assert_eq!(group(1234567), "1 234 567");
    }

    #[test]
    fn countdowns_read_short_and_say_late() {
        assert_eq!(countdown(48 * 3_600_000), "48h00m");
        assert_eq!(countdown(3_600_000 + 5 * 60_000 + 1), "1h05m");
        assert_eq!(countdown(750_000), "12m30s");
        assert_eq!(countdown(45_000), "45s");
        assert_eq!(countdown(-180_000), "late 3m00s");
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock((3600 * 13 + 61) * 1000), "13:01:01");
    }
}
