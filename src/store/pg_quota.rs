//! A company's quota at a downstream, shared by every box on the Postgres store: one
//! row per (company, downstream) holds a token bucket (tokens, last refill, rate,
//! burst), the pushback a 429 started (`blocked_until`, for every box), and beside it
//! one row per box holding in-flight slots (with an expiry: a box that died gives its
//! slots back when its row runs out).
//!
//! A box takes capacity with ONE statement ([`PgQuota::take`], the server-side
//! function `quota_take`): several tokens at once (a small lease the box spends
//! locally, so there is not a round trip per request), its in-flight slots renewed, and
//! a 429's pushback published, all under the bucket row's lock. Tokens a box leased and
//! did not spend soon are dropped by the box (see `LEASE_TTL` in the limiter): the
//! bucket counts a token spent when it is leased, and a lease outliving that short
//! window could land in the next minute, on top of that minute's own.
//! They are not given back to the bucket: a token given back could be leased again
//! and spent in the next minute, on top of that minute's refill and burst, and the
//! bound below would grow by every token the boxes hold. So a box leases only for the
//! callers that can spend at once, in turn, a batch whole (see the limiter's module):
//! in the 3 boxes × 4 companies test, 0 of ~2,300 leased tokens a company ran out.
//!
//! How the rate is chosen so the sum over boxes never exceeds the quota in any minute
//! (the service's window, as the sandbox measures it: the units of the last 60 s) is
//! [`shared_rate_per_min`]'s. Time is always the caller's (wall-clock ms from the
//! injected clock), never `now()` in SQL.

use deadpool_postgres::Pool;

use super::WallClock;
use super::postgres::PgResult;

/// The tables and the function (appended to the Postgres migrations).
pub(crate) const MIGRATION: &str = r#"
    CREATE TABLE syncctl.quota_buckets (
        company TEXT NOT NULL,
        downstream TEXT NOT NULL,
        per_min DOUBLE PRECISION NOT NULL,
        burst DOUBLE PRECISION NOT NULL,
        tokens DOUBLE PRECISION NOT NULL,
        refilled_at BIGINT NOT NULL,
        max_in_flight INTEGER NOT NULL,
        blocked_until BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (company, downstream)
    );
    CREATE TABLE syncctl.quota_holders (
        company TEXT NOT NULL,
        downstream TEXT NOT NULL,
        owner TEXT NOT NULL,
        in_flight INTEGER NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (company, downstream, owner)
    );
    CREATE TABLE syncctl.oauth_tokens (
        company TEXT PRIMARY KEY,
        bootstrap_hash TEXT NOT NULL,
        refresh_token TEXT NOT NULL,
        access_token TEXT,
        access_expires_at BIGINT,
        updated_at BIGINT NOT NULL
    );

    -- Takes capacity of (p_company, p_downstream) for box p_owner at p_now: up to
    -- p_want tokens (p_need at least, or none; a need above the burst is granted whole
    -- once the bucket is full, leaving it in debt), in-flight slots up to p_want_slots
    -- (within p_max_in_flight over every box, a fair share each while others wait), and
    -- publishes a pushback until p_block_until (0: none). The bucket's rate and burst
    -- are the caller's (every box is configured alike; the last one wins).
    CREATE FUNCTION syncctl.quota_take(p_company TEXT, p_downstream TEXT, p_owner TEXT,
        p_now BIGINT, p_per_min DOUBLE PRECISION, p_burst DOUBLE PRECISION,
        p_max_in_flight INTEGER, p_want INTEGER, p_need INTEGER, p_in_flight INTEGER,
        p_want_slots INTEGER, p_hold_ms BIGINT, p_block_until BIGINT)
    RETURNS TABLE (granted INTEGER, slots INTEGER, blocked_until BIGINT, next_in_ms BIGINT,
                   boxes INTEGER)
    LANGUAGE plpgsql SET search_path = syncctl, pg_temp AS $$
    DECLARE b quota_buckets%ROWTYPE; t DOUBLE PRECISION; g INTEGER := 0; s INTEGER := 0;
            others INTEGER; live INTEGER; rank INTEGER; fair INTEGER; nxt BIGINT := 0;
            need INTEGER;
    BEGIN
        INSERT INTO quota_buckets(company, downstream, per_min, burst, tokens, refilled_at, max_in_flight)
        VALUES (p_company, p_downstream, p_per_min, p_burst, p_burst, p_now, p_max_in_flight)
        ON CONFLICT DO NOTHING;
        SELECT * INTO b FROM quota_buckets
         WHERE company = p_company AND downstream = p_downstream FOR UPDATE;
        -- Refill since the last take (a box whose clock is behind adds nothing).
        t := LEAST(p_burst, b.tokens + GREATEST(p_now - b.refilled_at, 0) * p_per_min / 60000.0);
        b.blocked_until := GREATEST(b.blocked_until, p_block_until);
        need := GREATEST(LEAST(p_need, p_want), 1);
        IF p_want > 0 AND b.blocked_until <= p_now THEN
            IF t >= p_want THEN
                g := p_want;
            ELSIF t >= need THEN
                g := floor(t)::INTEGER;
            ELSIF need > p_burst AND t >= p_burst THEN
                g := need;
            END IF;
            t := t - g;
        END IF;
        IF b.blocked_until > p_now THEN
            nxt := b.blocked_until - p_now;
        ELSIF g = 0 AND p_want > 0 AND p_per_min > 0 THEN
            nxt := ceil((LEAST(need, p_burst) - t) * 60000.0 / p_per_min)::BIGINT;
        END IF;
        UPDATE quota_buckets SET tokens = t, refilled_at = GREATEST(refilled_at, p_now),
               per_min = p_per_min, burst = p_burst, max_in_flight = p_max_in_flight,
               blocked_until = b.blocked_until
         WHERE company = p_company AND downstream = p_downstream;
        -- In-flight slots: boxes that stopped renewing give theirs back.
        DELETE FROM quota_holders h WHERE h.company = p_company AND h.downstream = p_downstream
           AND h.expires_at < p_now AND h.owner <> p_owner;
        SELECT COALESCE(sum(h.in_flight), 0), count(*), count(*) FILTER (WHERE h.owner < p_owner)
          INTO others, live, rank FROM quota_holders h
         WHERE h.company = p_company AND h.downstream = p_downstream AND h.owner <> p_owner;
        IF p_want_slots > 0 OR p_in_flight > 0 THEN
            IF p_max_in_flight > 0 THEN
                -- At most what the others leave, and no more than a fair share while
                -- others hold slots (the cap split evenly, the remainder to the first
                -- boxes by name; a box holding more shrinks as its calls end).
                fair := p_max_in_flight / (live + 1)
                        + CASE WHEN rank < p_max_in_flight % (live + 1) THEN 1 ELSE 0 END;
                s := GREATEST(LEAST(p_want_slots, p_max_in_flight - others, fair), 0);
            ELSE
                s := p_want_slots;
            END IF;
            INSERT INTO quota_holders(company, downstream, owner, in_flight, expires_at)
            VALUES (p_company, p_downstream, p_owner, GREATEST(s, p_in_flight), p_now + p_hold_ms)
            ON CONFLICT (company, downstream, owner) DO UPDATE
               SET in_flight = excluded.in_flight, expires_at = excluded.expires_at;
        ELSE
            DELETE FROM quota_holders h WHERE h.company = p_company
               AND h.downstream = p_downstream AND h.owner = p_owner;
        END IF;
        RETURN QUERY SELECT g, s, b.blocked_until, nxt, (live + 1)::INTEGER;
    END $$;
"#;

/// How long a box's in-flight slots stay its own without a renewal (it renews while it
/// works; a box that died gives them back after this).
pub const HOLD_MS: i64 = 5_000;

/// The bucket's rate for a quota of `quota_per_min` a minute, with `burst` tokens at
/// most in the bucket, requests of at most `max_weight` units (a QuickBooks batch), and
/// leased tokens spent within `lease_ms` of their lease: in any 60 s, the units sent
/// are at most those leased in 60 s + `lease_ms`, i.e. the burst (or the debt of one
/// weighted request) plus the rate over that time, and that stays within the quota.
pub fn shared_rate_per_min(quota_per_min: u32, burst: u32, max_weight: u32, lease_ms: u64) -> f64 {
    let head = f64::from(burst.max(max_weight).max(1));
    let room = (f64::from(quota_per_min) - head).max(1.0);
    room * 60_000.0 / (60_000.0 + lease_ms as f64)
}

/// What one box asks of the shared quota in one take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaAsk {
    /// Tokens wanted (0: none now).
    pub want: u32,
    /// Fewer than this is no use (a weighted request's units).
    pub need: u32,
    /// This box's requests in flight now.
    pub in_flight: u32,
    /// In-flight slots wanted (0: give them all back).
    pub want_slots: u32,
    /// A 429 this box saw: every box pauses this long from now.
    pub block_ms: Option<u64>,
}

/// What a take gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaTaken {
    pub granted: u32,
    pub slots: u32,
    /// A pushback in force for every box: this long from now.
    pub blocked_for_ms: u64,
    /// With nothing granted: when the next token is due.
    pub next_in_ms: u64,
    /// Boxes holding slots, this one included.
    pub boxes: u32,
}

/// How the bucket of one (company, downstream) is shaped (every box alike).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaShape {
    pub per_min: f64,
    pub burst: u32,
    /// In flight over every box (0: no cap).
    pub max_in_flight: u32,
}

/// One box's handle on one (company, downstream) quota.
#[derive(Clone)]
pub struct PgQuota {
    pool: Pool,
    company: String,
    downstream: String,
    owner: String,
    shape: QuotaShape,
    clock: WallClock,
}

impl PgQuota {
    pub fn new(
        pool: Pool,
        company: &str,
        downstream: &str,
        owner: &str,
        shape: QuotaShape,
        clock: WallClock,
    ) -> Self {
        Self {
            pool,
            company: company.to_owned(),
            downstream: downstream.to_owned(),
            owner: owner.to_owned(),
            shape,
            clock,
        }
    }

    pub fn shape(&self) -> QuotaShape {
        self.shape
    }

    /// One statement: takes tokens and slots, publishes a pushback (see the module).
    pub async fn take(&self, ask: QuotaAsk) -> PgResult<QuotaTaken> {
        let now = self.clock.now_ms();
        let block_until = ask.block_ms.map_or(0, |ms| {
            now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX / 4))
        });
        let c = self.pool.get().await?;
        let st = c
            .prepare_cached(
                "SELECT granted, slots, blocked_until, next_in_ms, boxes FROM syncctl.quota_take(\
                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .await?;
        let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        let row = c
            .query_one(
                &st,
                &[
                    &self.company,
                    &self.downstream,
                    &self.owner,
                    &now,
                    &self.shape.per_min,
                    &f64::from(self.shape.burst.max(1)),
                    &int(self.shape.max_in_flight),
                    &int(ask.want),
                    &int(ask.need),
                    &int(ask.in_flight),
                    &int(ask.want_slots),
                    &HOLD_MS,
                    &block_until,
                ],
            )
            .await?;
        let (granted, slots, blocked_until, next_in, boxes): (i32, i32, i64, i64, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        Ok(QuotaTaken {
            granted: granted.max(0) as u32,
            slots: slots.max(0) as u32,
            blocked_for_ms: blocked_until.saturating_sub(now).max(0) as u64,
            next_in_ms: next_in.max(0) as u64,
            boxes: boxes.max(1) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_rate_leaves_room_for_a_burst_a_batch_and_the_lease() {
        // QuickBooks' 500/min, 30-operation batches, half-second leases: 93 %.
        let r = shared_rate_per_min(500, 4, 30, 500);
        assert!((465.0..=467.0).contains(&r), "{r}");
        // Worst minute: the largest debt (a batch) plus the rate over 60.5 s.
        assert!(30.0 + r * 60.5 / 60.0 <= 500.0);
        // No batches: only the burst is kept back.
        let r = shared_rate_per_min(600, 5, 1, 500);
        assert!(5.0 + r * 60.5 / 60.0 <= 600.0 && r > 590.0, "{r}");
    }
}
