//! The DIAN numbering range, confirmed against Alegra before numbers are issued.
//!
//! Numbers come from a counter in the store. Before the first number a store issues, and
//! at every start, Alegra is asked whether the next number is already used there (by an
//! earlier store, a restored backup, another system): if it is, the counter jumps past
//! the highest used. A store with no numbers yet that finds this engine's documents at
//! Alegra (`stripe:` annotations) is a lost store: refused, unless started over on
//! purpose (`--fresh-store`), in which case every document of the range is read and
//! adopted by its Stripe invoice instead of issued again.

use std::time::Duration;

use super::Compliance;
use crate::connectors::alegra::{AlegraError, AlegraInvoice};
use crate::store::FoundDocument;

/// Where the numbering stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Numbering {
    /// Confirmed (or the store has issued numbers before and Alegra is being asked).
    Ready,
    /// No number is issued until Alegra has answered; why.
    Checking(String),
    /// Alegra holds this engine's documents but the store has none: nothing is issued.
    Refused(String),
}

/// After the first unused number, this many more are looked at (numbers sent out of
/// order, or held in a queue when the old store was lost, leave gaps).
const GAP: i64 = 8;

impl Compliance {
    pub fn numbering(&self) -> Numbering {
        self.numbering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_numbering(&self, n: Numbering) {
        *self.numbering.lock().unwrap_or_else(|p| p.into_inner()) = n;
        self.changed();
    }

    /// Why invoices cannot be taken now, if they cannot.
    pub fn numbering_hold(&self) -> Option<String> {
        match self.numbering() {
            Numbering::Ready => None,
            Numbering::Checking(why) | Numbering::Refused(why) => Some(why),
        }
    }

    fn full(&self, seq: i64) -> String {
        format!(
            "{}{}",
            self.settings.number_prefix,
            self.settings.number_start as i64 + seq
        )
    }

    async fn used(&self, seq: i64) -> Result<Vec<AlegraInvoice>, AlegraError> {
        self.alegra.find_by_number(&self.full(seq)).await
    }

    /// Asks Alegra about the numbering (see the module doc). Ok: Ready or Refused, set.
    pub async fn confirm_numbering(&self) -> Result<(), AlegraError> {
        let started = self.store.numbering_started().unwrap_or(true);
        if !started {
            if self.settings.adopt_documents {
                self.adopt_documents().await?;
            } else {
                let first = self.used(0).await?;
                if let Some(doc) = first.iter().find(|d| d.stripe_id().is_some()) {
                    let why = format!(
                        "Alegra already holds {} ({}), issued by syncctl for a Stripe invoice, but this store has issued no number: its store was lost. Nothing is numbered or sent. Restore syncctl.db from a backup, or start once with --fresh-store to adopt Alegra's documents and continue the numbering",
                        doc.number,
                        doc.anotation.as_deref().unwrap_or_default()
                    );
                    let _ = self.store.audit("compliance", "numbering", "engine", &why);
                    self.set_numbering(Numbering::Refused(why));
                    return Ok(());
                }
            }
        }
        self.skip_used_numbers().await?;
        self.numbering_confirmed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.set_numbering(Numbering::Ready);
        Ok(())
    }

    /// Moves the counter past numbers Alegra already holds from the next one on.
    pub(super) async fn skip_used_numbers(&self) -> Result<(), AlegraError> {
        let next = self.store.next_number_seq().unwrap_or(0);
        let mut last_used: Option<i64> = None;
        let mut probe = next;
        'outer: loop {
            if self.used(probe).await?.is_empty() {
                // Gaps: a few more beyond the first free one.
                if last_used.is_none() && probe == next {
                    break;
                }
                for k in 1..=GAP {
                    if !self.used(probe + k).await?.is_empty() {
                        probe += k;
                        continue 'outer;
                    }
                }
                break;
            }
            // `probe` is used: gallop, then bisect to the last used one.
            let mut lo = probe;
            let mut step = 1;
            let hi = loop {
                let at = lo + step;
                if self.used(at).await?.is_empty() {
                    break at;
                }
                lo = at;
                step *= 2;
            };
            let (mut lo, mut hi) = (lo, hi);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if self.used(mid).await?.is_empty() {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            last_used = Some(lo);
            probe = hi;
        }
        if let Some(last) = last_used {
            if let Err(e) = self.store.reserve_numbers_through(last) {
                tracing::error!("moving the numbering on: {e}");
                return Ok(());
            }
            let _ = self.store.audit(
                "compliance",
                "numbering",
                "engine",
                &format!(
                    "Alegra already holds numbers of this range up to {}: the next invoice is numbered {}",
                    self.full(last),
                    self.full(last + 1)
                ),
            );
        }
        Ok(())
    }

    /// Reads every document at Alegra; those of this range are kept to be adopted by their
    /// Stripe invoices, and the counter continues after the highest.
    async fn adopt_documents(&self) -> Result<(), AlegraError> {
        let prefix = &self.settings.number_prefix;
        let start = self.settings.number_start as i64;
        let mut found = Vec::new();
        let mut highest: Option<i64> = None;
        let mut at = 0;
        loop {
            let page = self.alegra.list_invoices(at, 30).await?;
            for d in &page {
                let Some(n) = d
                    .number
                    .strip_prefix(prefix.as_str())
                    .and_then(|n| n.parse::<i64>().ok())
                    .filter(|n| *n >= start)
                else {
                    continue;
                };
                highest = highest.max(Some(n - start));
                found.push(FoundDocument {
                    number: d.number.clone(),
                    alegra_id: d.id.clone(),
                    stripe_id: d.stripe_id().map(str::to_owned),
                    legal_status: d.stamp.as_ref().map(|s| s.legal_status.clone()),
                    cufe: d.stamp.as_ref().and_then(|s| s.cufe.clone()),
                });
            }
            if page.len() < 30 {
                break;
            }
            at += page.len();
        }
        // Accepted documents last, so they win a number held twice.
        found.sort_by_key(|d| {
            d.legal_status
                .as_deref()
                .is_some_and(|s| s.starts_with("STAMPED_AND_ACCEPTED"))
        });
        let save = self
            .store
            .save_found_documents(&found)
            .and_then(|_| match highest {
                Some(h) => self.store.reserve_numbers_through(h),
                None => Ok(()),
            });
        if let Err(e) = save {
            return Err(AlegraError::Decode(format!(
                "keeping the documents found: {e}"
            )));
        }
        let _ = self.store.audit(
            "compliance",
            "numbering",
            "engine",
            &format!(
                "store rebuilt: {} documents of this range found at Alegra, each adopted by its Stripe invoice when that is listed; the numbering continues after {}",
                found.len(),
                highest.map_or("none".to_owned(), |h| self.full(h))
            ),
        );
        Ok(())
    }

    /// Confirms the numbering until Alegra answers (backing off), then stops.
    pub async fn numbering_loop(&self, cancel: tokio_util::sync::CancellationToken) {
        let mut wait = Duration::from_secs(2);
        loop {
            if matches!(self.numbering(), Numbering::Refused(_))
                || self
                    .numbering_confirmed
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            match self.confirm_numbering().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!("confirming the numbering with Alegra: {e}");
                    if self.numbering() != Numbering::Ready {
                        self.set_numbering(Numbering::Checking(format!(
                            "no invoice is numbered until Alegra confirms the numbering range (it did not answer: {e})"
                        )));
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
}
