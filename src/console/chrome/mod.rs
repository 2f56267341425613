//! What every screen shares: the header with the tabs, the footer (hints bar, flash line,
//! prompt), the help overlay, the confirm dialog, the "terminal too small" message, and
//! the small widgets and formats the screens draw with. Nothing here knows any one
//! screen, and nothing here imports `screens`, which draws the frame with these pieces.
//!
//! ```text
//! ┌ header: name · SANDBOX/LIVE badge · pipeline state · webhook address · 1–9 tabs ┐
//! │                                                                                 │
//! │ body: the current screen (see `screens/`)                                       │
//! │                    ┌ help (?) or confirm dialog, centred ┐                      │
//! │                    └─────────────────────────────────────┘                      │
//! │ the `:` line's error or completions, over the body's last row                   │
//! └ footer: `:` line │ prompt being typed │ flash line │ hints from the key table   ┘
//! ```

pub mod cells;
pub mod chain;
pub mod columns;
pub mod command_line;
pub mod confirm;
pub mod footer;
pub mod format;
pub mod header;
pub mod help;
pub mod picker;
pub mod who;
pub mod widgets;

use ratatui::Frame;
use ratatui::layout::{Alignment, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Wrap};

pub use format::{clock, countdown, group, secs};
pub use widgets::{block, centered, severity_span};

/// Below this size the console shows [`too_small`] instead of garbage.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 16;

/// Whether the terminal is below the minimum size the screens are laid out for.
pub fn is_too_small(area: Rect) -> bool {
    area.width < MIN_WIDTH || area.height < MIN_HEIGHT
}

pub fn too_small(frame: &mut Frame, area: Rect) {
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
