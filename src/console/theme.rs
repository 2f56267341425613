//! All console styles in one place. The default uses the 16 ANSI colours; with
//! `NO_COLOR` set every style drops colour and state stays readable through symbols,
//! words, bold and reverse video.

use ratatui::style::{Color, Modifier, Style};

#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub base: Style,
    pub title: Style,
    pub dim: Style,
    pub key: Style,
    pub tab_active: Style,
    pub badge_sandbox: Style,
    pub badge_live: Style,
    pub ok: Style,
    pub warn: Style,
    pub error: Style,
    pub chart: Style,
    pub flash: Style,
    pub button_focus: Style,
}

impl Theme {
    /// The theme for this environment: `NO_COLOR` set (to anything) means no colour.
    pub fn from_env() -> Self {
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            Self::monochrome()
        } else {
            Self::ansi()
        }
    }

    pub fn ansi() -> Self {
        Self {
            base: Style::default(),
            title: Style::default().add_modifier(Modifier::BOLD),
            dim: Style::default().fg(Color::DarkGray),
            key: Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
            tab_active: Style::default()
                .fg(Color::Black)
                .bg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
            badge_sandbox: Style::default()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
            badge_live: Style::default()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
            ok: Style::default().fg(Color::Green),
            warn: Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
            error: Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
            chart: Style::default().fg(Color::Cyan),
            flash: Style::default().fg(Color::Yellow),
            button_focus: Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD),
        }
    }

    pub fn monochrome() -> Self {
        let plain = Style::default();
        let bold = plain.add_modifier(Modifier::BOLD);
        let rev = plain.add_modifier(Modifier::REVERSED | Modifier::BOLD);
        Self {
            base: plain,
            title: bold,
            dim: plain,
            key: bold,
            tab_active: rev,
            badge_sandbox: rev,
            badge_live: rev,
            ok: plain,
            warn: bold,
            error: bold,
            chart: plain,
            flash: bold,
            button_focus: rev,
        }
    }
}
