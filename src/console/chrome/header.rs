//! The header: what is running, where, and the nine screens by key and name.
//!
//! One row when it all fits, the status left and the tabs right; otherwise the status
//! on a row of its own above the tabs (a narrow terminal while attached, frozen or
//! with DIAN sending paused):
//!
//! ```text
//!  syncctl  SANDBOX  catalog ▶ running      1 Overview 2 Throughput 3 Circuits … 8 Settings   120 columns
//!  SANDBOX  ▶ running  1 Over  2Thru 3Circ 4Work 5Alert 6DIAN 7Event 8Set 9Recon            80 columns
//!  SANDBOX  ▶ running  ATTACHED  READ-ONLY                                                    80 columns,
//! 1 Over 2 Thru 3 Circ 4 Work 5 Alert 6 DIAN 7 Event 8 Set                                    attached
//! ```
//!
//! All nine tabs are always named: in full from 100 columns when they fit, else in
//! short (each name against its key when that keeps the header to one row). With
//! several companies the status always shows the one watched (`@co2`, its name when
//! it fits), or `@ ALL N companies`. The status always shows SANDBOX/LIVE, the catalog's state, DIAN paused,
//! FROZEN, ATTACHED (and where) or RECONNECTING (as of when) and READ-ONLY; what goes first when the
//! row is short: the webhook address, the word "catalog",
//! "stale:", the name.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::format::clock;
use crate::console::state::{App, Tab};
use crate::protocol::{LinkState, Mode};

/// One part of the status: shown unless the row is short and its `drop` rank is above
/// what fits (0: always shown; the highest goes first).
struct Piece {
    span: Span<'static>,
    drop: u8,
}

/// The highest drop rank of a [`Piece`].
const MOST_DROPPABLE: u8 = 6;

/// How the tabs name the screens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Names {
    Full,
    Short,
    /// Short, each name against its key (`1Over 2Thru`): what keeps the status and
    /// all nine tabs on one row at 80 columns.
    Tight,
}

/// How the header is laid out at a width: its rows, the tab names, and the highest
/// drop rank of the status pieces shown.
struct Plan {
    rows: u16,
    names: Names,
    keep: u8,
}

/// The header's rows at `width` columns (1, or 2 when status and tabs do not fit on one).
pub fn height(app: &App, width: u16) -> u16 {
    plan(app, width).rows
}

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let plan = plan(app, area.width);
    let status = Line::from(
        pieces(app)
            .into_iter()
            .filter(|p| p.drop <= plan.keep)
            .map(|p| p.span)
            .collect::<Vec<_>>(),
    );
    let tabs = tabs(app, plan.names);
    if plan.rows == 1 {
        let [l, r] =
            Layout::horizontal([Constraint::Min(0), Constraint::Length(tabs.width() as u16)])
                .areas(area);
        frame.render_widget(Paragraph::new(status), l);
        frame.render_widget(Paragraph::new(tabs), r);
    } else {
        let [top, bottom] =
            Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
        frame.render_widget(Paragraph::new(status), top);
        frame.render_widget(Paragraph::new(tabs), bottom);
    }
}

fn plan(app: &App, width: u16) -> Plan {
    let width = usize::from(width);
    let pieces = pieces(app);
    let status_width = |keep: u8| -> usize {
        pieces
            .iter()
            .filter(|p| p.drop <= keep)
            .map(|p| p.span.width())
            .sum()
    };
    let names: &[Names] = if width >= 100 {
        &[Names::Full, Names::Short, Names::Tight]
    } else {
        &[Names::Short, Names::Tight]
    };
    for &n in names {
        let tabs = tabs(app, n).width();
        // The tabs' full names only beside every piece of rank 1 (the company's name).
        let least = u8::from(n == Names::Full);
        // The status keeps what fits beside the tabs, with a column between them.
        if let Some(keep) = (least..=MOST_DROPPABLE)
            .rev()
            .find(|k| status_width(*k) + 1 + tabs <= width)
        {
            return Plan {
                rows: 1,
                names: n,
                keep,
            };
        }
    }
    let names = names
        .iter()
        .copied()
        .find(|n| tabs(app, *n).width() <= width)
        .unwrap_or(Names::Short);
    let keep = (0..=MOST_DROPPABLE)
        .rev()
        .find(|k| status_width(*k) <= width)
        .unwrap_or(0);
    Plan {
        rows: 2,
        names,
        keep,
    }
}

/// The status, left to right: name, SANDBOX/LIVE badge, the catalog pipeline's state,
/// DIAN sending when paused, FROZEN, where this console stands with its engine,
/// READ-ONLY, and (hosting) the webhook address.
fn pieces(app: &App) -> Vec<Piece> {
    let t = &app.theme;
    let s = &app.snapshot;
    let always = |span| Piece { span, drop: 0 };
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
    let mut out = vec![
        Piece {
            span: Span::styled(" syncctl ", t.title),
            drop: 2,
        },
        always(Span::styled(badge, badge_style)),
    ];
    // Several companies: which one is shown, always (`@` picks another); with all of
    // them, no one company's state.
    if app.watching_all() {
        out.push(always(Span::styled(
            format!(" @ ALL {} companies", app.companies.len()),
            t.key,
        )));
    } else if app.several() {
        let id = app.watched().unwrap_or("?");
        out.push(always(Span::styled(format!(" @{id}"), t.key)));
        if let Some(c) = app.company.as_ref().filter(|c| c.name != c.id) {
            out.push(Piece {
                span: Span::styled(
                    format!(" {}", c.name.chars().take(24).collect::<String>()),
                    t.dim,
                ),
                // Before the tabs' full names and the other words: which company
                // this is matters more.
                drop: 1,
            });
        }
    }
    if !app.watching_all() || s.draining || app.quitting {
        out.push(Piece {
            span: Span::raw(" catalog"),
            drop: 4,
        });
        out.push(always(Span::raw(" ")));
        out.push(always(Span::styled(state, state_style)));
    }
    // The compliance pipeline is named only while paused (nothing goes to DIAN then).
    if s.compliance.paused && !s.draining && !app.quitting && !app.watching_all() {
        out.push(always(Span::raw("  DIAN ")));
        out.push(always(Span::styled("‖ paused", t.warn)));
    }
    if app.frozen {
        out.push(always(Span::raw(" ")));
        out.push(always(Span::styled(" FROZEN ", t.badge_sandbox)));
    }
    match &app.link {
        LinkState::Hosted => {}
        LinkState::Attached(a) => {
            out.push(always(Span::raw(" ")));
            out.push(always(Span::styled(" ATTACHED ", t.badge_live)));
            // Where: always (an operator watching two engines must know which this is).
            out.push(always(Span::styled(format!(" {}", a.to), t.dim)));
        }
        LinkState::Bundle {
            file, written_ms, ..
        } => {
            // No engine: a file, frozen as it was taken. Say which and when.
            out.push(always(Span::raw(" ")));
            out.push(always(Span::styled(" BUNDLE ", t.badge_sandbox)));
            out.push(Piece {
                span: Span::styled(format!(" {file}"), t.dim),
                drop: 3,
            });
            out.push(always(Span::styled(
                format!(" as of {}", crate::protocol::utc_time(*written_ms)),
                t.warn,
            )));
        }
        LinkState::Reconnecting { since_ms, .. } => {
            // What the screens show is as of the last word from the engine: say so.
            out.push(always(Span::raw(" ")));
            out.push(always(Span::styled(" RECONNECTING… ", t.badge_sandbox)));
            out.push(Piece {
                span: Span::styled(" stale:", t.warn),
                drop: 3,
            });
            out.push(always(Span::styled(
                format!(" as of {}", clock(*since_ms)),
                t.warn,
            )));
        }
    }
    if app.read_only || app.link.read_only() {
        out.push(always(Span::styled(" READ-ONLY", t.warn)));
    }
    // Where Stripe must send webhooks, when hosting (also on the Overview).
    if app.link.hosted() && !s.server_addr.is_empty() {
        out.push(Piece {
            span: Span::styled(format!("  http://{}", s.server_addr), t.dim),
            drop: MOST_DROPPABLE,
        });
    }
    out
}

/// The nine tabs by key and name, the current one highlighted.
fn tabs(app: &App, names: Names) -> Line<'static> {
    let t = &app.theme;
    let mut spans = Vec::new();
    for (i, tab) in Tab::ALL.iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw(" "));
        }
        let name = match names {
            Names::Full => tab.title(),
            Names::Short | Names::Tight => tab.short(),
        };
        if *tab == app.tab {
            spans.push(Span::styled(
                format!(" {} {name} ", tab.key()),
                t.tab_active,
            ));
        } else {
            spans.push(Span::styled(tab.key().to_string(), t.key));
            let gap = if names == Names::Tight { "" } else { " " };
            spans.push(Span::styled(format!("{gap}{name}"), t.dim));
        }
    }
    Line::from(spans)
}
