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

#[cfg(test)]
mod tests {
    use super::*;

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
