//! The header line: what is running, where, and which screen is shown.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::format::clock;
use crate::console::state::{App, Tab};
use crate::protocol::{LinkState, Mode};

/// The top line: name, SANDBOX/LIVE badge, the catalog pipeline's state, DIAN sending
/// when paused, FROZEN, the webhook address (wide terminals) and the tabs, the current
/// one named.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
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
    // The compliance pipeline is named only while paused (nothing goes to DIAN then).
    if s.compliance.paused && !s.draining && !app.quitting {
        left.push(Span::raw("  DIAN "));
        left.push(Span::styled("‖ paused", t.warn));
    }
    if app.frozen {
        left.push(Span::raw(" "));
        left.push(Span::styled(" FROZEN ", t.badge_sandbox));
    }
    let wide = area.width >= 100;
    match &app.link {
        LinkState::Hosted => {}
        LinkState::Attached(a) => {
            left.push(Span::raw(" "));
            left.push(Span::styled(" ATTACHED ", t.badge_live));
            if wide {
                left.push(Span::styled(format!(" {}", a.to), t.dim));
            }
        }
        LinkState::Reconnecting { since_ms, .. } => {
            // What the screens show is as of the last word from the engine: say so.
            left.push(Span::raw(" "));
            left.push(Span::styled(" RECONNECTING… ", t.badge_sandbox));
            left.push(Span::styled(
                format!(
                    " {}as of {}",
                    if wide { "stale: " } else { "" },
                    clock(*since_ms)
                ),
                t.warn,
            ));
        }
    }
    if app.link.read_only() {
        left.push(Span::styled(" READ-ONLY", t.warn));
    }
    // Where Stripe must send webhooks; wide terminals only, when hosting.
    if wide && app.link.hosted() && !s.server_addr.is_empty() {
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
