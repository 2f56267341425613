//! What reaches a terminal cell: graphemes whose width every terminal agrees on.
//!
//! Product names, buyers, error texts and typed text arrive with emoji that terminals
//! draw at widths of their own: a flag (🇨🇴, two regional indicators), a ZWJ sequence
//! (👩‍💻), a skin tone (👍🏽), a variation selector (❤️), a tag sequence (🏴󠁧󠁢󠁥󠁮󠁧󠁿). ratatui
//! counts each as one grapheme of two cells; tmux, xterm or an SSH client may draw one,
//! two or four, so the cursor drifts, the diff writes the next frame off by a column,
//! and stray halves of emoji survive a screen change.
//!
//! [`clean`] rewrites a text into what every terminal draws alike — flags as their
//! letters (`CO`), joiners, selectors, skin tones, tags and other invisible format
//! characters dropped — and [`clean_buffer`] applies it to every cell of a drawn frame
//! before the frame goes to the terminal, so no string, wherever it comes from,
//! reaches the terminal uncleaned. The cleaned text keeps to the cells ratatui laid
//! out for the original (unicode-width for the rest), so no layout moves.
//!
//! Never changes a cell whose grapheme needs no cleaning.

use std::borrow::Cow;

use ratatui::buffer::Buffer;
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// A regional indicator (half a flag) as its letter: 🇨 → `C`.
fn regional_letter(c: char) -> Option<char> {
    let offset = u32::from(c).checked_sub(0x1F1E6)?;
    (offset < 26)
        .then(|| char::from_u32(u32::from('A') + offset))
        .flatten()
}

/// Characters no cell shows: joiners, variation selectors, skin tones, tags, the
/// keycap mark, invisible format characters (zero-width spaces, bidi controls, BOM)
/// and control characters.
fn dropped(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}'         // zero-width space, ZWNJ, ZWJ, LRM, RLM
            | '\u{202A}'..='\u{202E}'   // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}'   // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}'   // bidi isolates
            | '\u{FE00}'..='\u{FE0F}'   // variation selectors
            | '\u{FEFF}'                // BOM
            | '\u{00AD}'                // soft hyphen
            | '\u{20E3}'                // combining enclosing keycap
            | '\u{1F3FB}'..='\u{1F3FF}' // skin tones
            | '\u{E0000}'..='\u{E007F}' // tags (subdivision flags)
            | '\u{E0100}'..='\u{E01EF}' // variation selectors supplement
    ) || c.is_control()
}

/// A cell that shows nothing: a blank, or only characters [`clean`] drops.
fn invisible(s: &str) -> bool {
    s.chars().all(|c| c == ' ' || dropped(c))
}

/// Whether `s` holds anything [`clean`] would change.
pub fn needs_cleaning(s: &str) -> bool {
    s.chars()
        .any(|c| dropped(c) || regional_letter(c).is_some())
}

/// `s` as every terminal draws it alike: flags as their letters, joiners, variation
/// selectors, skin tones, tags and invisible or control characters dropped.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !needs_cleaning(s) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .filter(|c| !dropped(*c))
            .map(|c| regional_letter(c).unwrap_or(c))
            .collect(),
    )
}

/// Cleans every cell of a drawn frame in place. A cell whose grapheme needs cleaning
/// gets the cleaned graphemes in the cells ratatui gave the original (its width), as
/// many as fit, the rest blank: `🇨🇴` (two cells) becomes `C` `O`, `❤️` becomes `❤`
/// and a blank, `👩‍💻` becomes `👩`. Cells covered by the original that another
/// widget has drawn on since are left alone, and a wide grapheme without its room
/// becomes a blank.
pub fn clean_buffer(buf: &mut Buffer) {
    let area = buf.area;
    for y in area.top()..area.bottom() {
        for x in area.left()..area.right() {
            let cell = &buf[(x, y)];
            let original = cell.symbol();
            let want = x.saturating_add(original.width().max(1) as u16);
            // The cells the original covers: itself and the blanks after it (a cell
            // holding only what no cell shows is one: ratatui's lines put a zero-width
            // space or a bidi control after a wide grapheme in its second cell).
            let mut end = x + 1;
            while end < want.min(area.right()) && invisible(buf[(end, y)].symbol()) {
                end += 1;
            }
            // A wide grapheme that another widget has drawn over (a table column
            // cut it) would spill onto that cell on a terminal: it goes too.
            if !needs_cleaning(original) && end == want {
                continue;
            }
            let original = original.to_owned();
            let style = cell.style();
            let cleaned = clean(&original);
            let mut at = x;
            for g in cleaned.graphemes(true) {
                let w = g.width() as u16;
                if w == 0 {
                    continue;
                }
                if at + w > end {
                    break;
                }
                buf[(at, y)].set_symbol(g).set_style(style);
                for hidden in at + 1..at + w {
                    buf[(hidden, y)].set_symbol(" ").set_style(style);
                }
                at += w;
            }
            for blank in at..end {
                buf[(blank, y)].set_symbol(" ").set_style(style);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_letters_and_modifiers_go() {
        assert_eq!(clean("Ajiaco 🇨🇴"), "Ajiaco CO");
        assert_eq!(clean("👍🏽 ok"), "👍 ok");
        assert_eq!(clean("👩\u{200D}💻"), "👩💻");
        assert_eq!(clean("❤\u{FE0F}"), "❤");
        assert_eq!(clean("1\u{FE0F}\u{20E3}"), "1");
        assert_eq!(
            clean("🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}"),
            "🏴"
        );
        assert_eq!(clean("a\u{200B}b\u{202E}c"), "abc");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in ["Café Montaña S.A.S.", "☕ ✨ 🚀", "e\u{301}", "Ñandú"] {
            assert!(matches!(clean(s), Cow::Borrowed(_)), "{s}");
        }
    }
}
