//! Numbers as every front-end prints them (the console, `syncctl status`), so a count
//! reads the same wherever an operator sees it.

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

/// `2 213 400,00` — an amount in cents as Colombian pesos (a credit's with a `-`).
pub fn pesos(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{},{:02}", group(abs / 100), abs % 100)
}

/// `12 345.60` — an amount in its currency's units, two decimals, thousands grouped
/// (the Reconcile screen's and the entity chain's prices).
pub fn amount(v: f64) -> String {
    let cents = (v * 100.0).round() as i64;
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", group(abs / 100), abs % 100)
}

/// Whether `c` would change how a terminal shows the rest of the line rather than
/// show itself: control characters (ESC starts a sequence, BEL rings, CR rewinds)
/// and the bidirectional overrides, embeddings and isolates (U+202E reverses what
/// follows: a product name could make a line read backwards).
pub fn steers_the_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` as it may be written to an operator's terminal: every character that
/// [`steers_the_terminal`] shown as `�`, so what came from outside (a product's name, a
/// payload) shows what it is and moves nothing.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(steers_the_terminal) {
        text.chars()
            .map(|c| {
                if steers_the_terminal(c) {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_would_steer_the_terminal_is_shown_not_obeyed() {
        assert_eq!(printable("Café ☕ 12"), "Café ☕ 12");
        assert_eq!(
            printable("Evil \u{1b}]0;X\u{7}"),
            "Evil \u{FFFD}]0;X\u{FFFD}"
        );
        assert_eq!(printable("abc\u{202E}fed"), "abc\u{FFFD}fed");
        assert_eq!(printable("\u{2066}x\u{2069}"), "\u{FFFD}x\u{FFFD}");
    }

    #[test]
    fn pesos_group_thousands_with_two_decimals_and_a_sign() {
        assert_eq!(pesos(221_340_000), "2 213 400,00");
        assert_eq!(pesos(5), "0,05");
        assert_eq!(pesos(-150_050), "-1 500,50");
    }

    #[test]
    fn amounts_group_thousands_with_a_point() {
        assert_eq!(amount(398_000.0), "398 000.00");
        assert_eq!(amount(13.5), "13.50");
        assert_eq!(amount(-1234.567), "-1 234.57");
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(1234), "1 234");
        assert_eq!(group(1234567), "1 234 567");
    }
}
