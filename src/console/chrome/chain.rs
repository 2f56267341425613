//! The entity chain panel (`L` on the DIAN or Events list, `:chain KEY`): from what was
//! asked, every linked object across the systems — Stripe product → QuickBooks Item →
//! invoices → Alegra document → DIAN — each with what the engine knows of it, where
//! the systems disagree, and its latest events.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};

use super::format::clock;
use super::help::overlay;
use crate::console::state::{App, ChainPanel};
use crate::protocol::EntityChain;

/// Events shown under each link.
const EVENTS_SHOWN: usize = 3;

pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let Some(panel) = &app.chain else {
        return;
    };
    // The overlay's inner width (as `overlay` lays it out).
    let width = usize::from(area.width.saturating_sub(2).min(96)).saturating_sub(2);
    let lines = lines(panel, app, width);
    // Scrolled no further than leaves the last screenful in view.
    let room = usize::from(area.height.saturating_sub(2));
    let top = panel.scroll.min(lines.len().saturating_sub(room));
    let shown: Vec<Line<'_>> = lines.into_iter().skip(top).collect();
    let title = format!("Chain of {} (↑↓ scroll, any other key closes)", panel.key);
    overlay(frame, area, app, &title, shown);
}

fn lines<'a>(panel: &'a ChainPanel, app: &App, width: usize) -> Vec<Line<'a>> {
    let t = &app.theme;
    match &panel.answer {
        None => vec![Line::styled(" asking the engine…", t.dim)],
        Some(Err(why)) => vec![Line::styled(format!(" {why}"), t.warn)],
        Some(Ok(chain)) => chain_lines(chain, app, width)
            .into_iter()
            .map(|mut line| {
                // Names, ids and messages come from outside: shown, never obeyed.
                for span in &mut line.spans {
                    if let std::borrow::Cow::Owned(safe) =
                        crate::protocol::text::printable(&span.content)
                    {
                        span.content = safe.into();
                    }
                }
                line
            })
            .collect(),
    }
}

fn chain_lines<'a>(chain: &'a EntityChain, app: &App, width: usize) -> Vec<Line<'a>> {
    let t = &app.theme;
    let mut out: Vec<Line<'a>> = chain
        .also
        .iter()
        .map(|a| Line::styled(format!(" {a}"), t.warn))
        .collect();
    for link in &chain.links {
        let pad = "  ".repeat(usize::from(link.depth));
        let arrow = if link.depth == 0 { " " } else { " └ " };
        out.push(Line::from(vec![
            Span::raw(format!("{pad}{arrow}")),
            Span::styled(link.system.clone(), t.key),
            Span::raw(" "),
            Span::styled(link.id.clone(), t.title),
        ]));
        let inner = format!("{pad}     ");
        let facts: Vec<String> = link.facts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let joined = facts.join(" · ");
        if inner.chars().count() + joined.chars().count() <= width {
            if !joined.is_empty() {
                out.push(Line::raw(format!("{inner}{joined}")));
            }
        } else {
            // One fact a line where they do not fit on one.
            out.extend(facts.into_iter().map(|f| Line::raw(format!("{inner}{f}"))));
        }
        for d in &link.disagreements {
            let said = d.describe(&link.system);
            // Both sides on one line where they fit, else each on its own.
            if inner.chars().count() + said.chars().count() <= width {
                out.push(Line::styled(format!("{inner}{said}"), t.warn));
            } else {
                for (i, part) in said.splitn(2, " · ").enumerate() {
                    let lead = if i == 0 { "" } else { "  · " };
                    out.push(Line::styled(format!("{inner}{lead}{part}"), t.warn));
                }
            }
        }
        for e in link.events.iter().take(EVENTS_SHOWN) {
            out.push(Line::styled(
                format!("{inner}{} {}", clock(e.at_ms), e.message),
                t.dim,
            ));
        }
        if link.events.len() > EVENTS_SHOWN {
            out.push(Line::styled(
                format!(
                    "{inner}… {} more events (Events, filter {})",
                    link.events.len() - EVENTS_SHOWN,
                    link.id
                ),
                t.dim,
            ));
        }
    }
    if chain.more_invoices > 0 {
        out.push(Line::styled(
            format!(" … and {} older invoices using it", chain.more_invoices),
            t.dim,
        ));
    }
    out
}
