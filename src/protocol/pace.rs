//! How often a console's frames go out: at most `max_fps` a second on average, with a
//! burst of one more, so that a change arriving between two regular ones (an
//! operator's pause just after a tick) is drawn — or sent to an attached console — at
//! once instead of a whole frame later. The engine's side (what it sends an attached
//! console) and the console's side (what it draws) pace alike, so an event waits for
//! neither.
//!
//! A generic cell rate algorithm: `due` is when the next frame would go if frames went
//! exactly once per gap; a frame may go up to `burst` gaps before it.

use std::time::Duration;

use tokio::time::Instant;

/// Frames beyond the steady rate a pacer lets through at once.
const BURST: u32 = 1;

#[derive(Debug, Clone)]
pub struct Pacer {
    gap: Duration,
    /// How far ahead of the steady schedule a frame may go.
    tolerance: Duration,
    /// The steady schedule's next slot.
    due: Instant,
}

impl Pacer {
    /// A pacer of `max_fps` frames a second (at least one, at most 1,000), whose first
    /// frame may go at once.
    pub fn new(max_fps: u32, now: Instant) -> Self {
        let gap = Duration::from_secs(1) / max_fps.clamp(1, 1000);
        Self {
            gap,
            tolerance: gap * BURST,
            due: now,
        }
    }

    /// The least time between frames at the steady rate.
    pub fn gap(&self) -> Duration {
        self.gap
    }

    /// When the next frame may go (now or earlier: at once).
    pub fn next_at(&self) -> Instant {
        self.due.checked_sub(self.tolerance).unwrap_or(self.due)
    }

    /// Whether a frame may go at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        now >= self.next_at()
    }

    /// A frame went at `now` (one that had to go at once, as a keypress's, counts
    /// too: it delays the next — by one gap at most, however many went at once: typing
    /// `:chain KEY` draws a frame a key, and the answer that follows must not wait
    /// a gap for each of them).
    pub fn sent(&mut self, now: Instant) {
        self.due = (self.due.max(now) + self.gap).min(now + self.gap + self.tolerance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_steady_rate_with_one_frame_of_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(4, t0);
        assert_eq!(p.gap(), ms(250));
        // Regular frames every 250 ms all go at once.
        for k in 0..8 {
            let now = t0 + ms(250) * k;
            assert!(p.ready(now), "frame {k}");
            p.sent(now);
        }
        // One between two regular ones goes at once too...
        let t = t0 + ms(250) * 7 + ms(100);
        assert!(p.ready(t));
        p.sent(t);
        // ...and a second right after waits.
        assert!(!p.ready(t + ms(10)));
        // The next regular one still goes on time, and the schedule recovers.
        let next = t0 + ms(250) * 8;
        assert!(p.ready(next));
        p.sent(next);
    }

    #[test]
    fn frames_forced_out_by_typing_delay_the_next_by_one_gap_at_most() {
        let t0 = Instant::now();
        let mut p = Pacer::new(4, t0);
        p.sent(t0);
        // Twelve keys in 120 ms, each drawn at once whether ready or not.
        for k in 1..=12 {
            p.sent(t0 + ms(10) * k);
        }
        // The answer to what was typed arrives 10 ms later: it goes within one gap.
        let answer = t0 + ms(130);
        assert!(
            p.next_at() <= answer + ms(250),
            "{:?}",
            p.next_at() - answer
        );
        // And regular frames are still held to the rate afterwards.
        let at = p.next_at();
        p.sent(at);
        assert!(!p.ready(at + ms(10)));
    }

    #[test]
    fn a_flood_is_held_to_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10, t0);
        let mut sent = 0;
        // A change every millisecond for 10 s.
        for i in 0..10_000u64 {
            let now = t0 + ms(i);
            if p.ready(now) {
                p.sent(now);
                sent += 1;
            }
        }
        // 10 a second, plus the burst.
        assert!(
            (100..=102).contains(&sent),
            "{sent} frames in 10 s at 10 fps"
        );
    }

    #[test]
    fn after_a_quiet_spell_only_the_burst_goes_at_once() {
        let t0 = Instant::now();
        let mut p = Pacer::new(4, t0);
        p.sent(t0);
        let later = t0 + Duration::from_secs(60);
        let mut at_once = 0;
        while p.ready(later) {
            p.sent(later);
            at_once += 1;
        }
        assert_eq!(at_once, 2, "the frame due and one of burst");
        assert_eq!(p.next_at(), later + ms(250));
    }
}
