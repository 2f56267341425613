//! The per-company quota shared by every box on the Postgres store: each downstream's
//! limiter (and QuickBooks' batch pace) takes its tokens, in-flight slots and
//! pushbacks from the company's rows (`store::pg_quota`) through [`PgShare`].

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::resilience::limiter::{LEASE_TTL, QuotaShare, ShareAsk, ShareTaken};
use crate::resilience::{Limiter, LimiterConfig};
use crate::store::pg_quota::{PgQuota, QuotaAsk, QuotaShape, shared_rate_per_min};

/// A limiter's side of a `PgQuota` row.
pub struct PgShare(pub PgQuota);

impl QuotaShare for PgShare {
    fn take(&self, ask: ShareAsk) -> BoxFuture<'_, Result<ShareTaken, String>> {
        async move {
            let t = self
                .0
                .take(QuotaAsk {
                    want: ask.want,
                    need: ask.need,
                    in_flight: ask.in_flight,
                    want_slots: ask.want_slots,
                    block_ms: ask
                        .block
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(ShareTaken {
                granted: t.granted,
                slots: t.slots,
                blocked_for: std::time::Duration::from_millis(t.blocked_for_ms),
                next_in: std::time::Duration::from_millis(t.next_in_ms),
                boxes: t.boxes,
            })
        }
        .boxed()
    }

    fn burst(&self) -> u32 {
        self.0.shape().burst
    }
}

/// The shape of the shared bucket for a limiter configured as `cfg` (the company's
/// quota) whose requests weigh up to `max_weight` units: a rate that never lets the
/// boxes together exceed the quota in any minute (see `shared_rate_per_min`), the
/// limiter's burst, and its in-flight cap over every box.
pub fn shape(cfg: &LimiterConfig, max_weight: u32) -> QuotaShape {
    if cfg.rate_per_min == 0 {
        // No rate to share: only the in-flight cap.
        return QuotaShape {
            per_min: 1e9,
            burst: 1000,
            max_in_flight: cfg.max_concurrent,
        };
    }
    let burst = cfg.burst.max(1);
    QuotaShape {
        per_min: shared_rate_per_min(
            cfg.rate_per_min,
            burst,
            max_weight,
            LEASE_TTL.as_millis() as u64,
        ),
        burst,
        max_in_flight: cfg.max_concurrent,
    }
}

/// Where a box's shared quotas are: the company's rows on the pool, taken as `owner`
/// (this process's lease owner) on `clock`.
pub struct SharedAt<'a> {
    pub pool: &'a deadpool_postgres::Pool,
    pub company: &'a str,
    pub owner: &'a str,
    pub clock: crate::store::WallClock,
}

/// Shares `limiter` (configured as `cfg`, requests of up to `max_weight` units) as the
/// company's `downstream` quota.
pub fn share(
    limiter: &Arc<Limiter>,
    cfg: &LimiterConfig,
    max_weight: u32,
    downstream: &str,
    at: &SharedAt<'_>,
) {
    if cfg.rate_per_min == 0 && cfg.max_concurrent == 0 {
        return;
    }
    let q = PgQuota::new(
        at.pool.clone(),
        at.company,
        downstream,
        at.owner,
        shape(cfg, max_weight),
        at.clock.clone(),
    );
    limiter.share(Arc::new(PgShare(q)));
}
