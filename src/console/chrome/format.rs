//! Numbers, times and durations as the screens print them.

pub use crate::protocol::text::group;

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

/// `HH:MM:SS` in UTC from unix milliseconds.
pub fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A duration in seconds: `2.5s`, `15s`.
pub fn secs(ms: u64) -> String {
    if ms >= 10_000 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn seconds_keep_a_decimal_below_ten() {
        assert_eq!(secs(2_500), "2.5s");
        assert_eq!(secs(15_000), "15s");
    }
}
