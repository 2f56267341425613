//! The DIAN numbering range, confirmed against Alegra before any number is issued.
//!
//! Numbers come from a counter in the store. At every start no invoice is numbered until
//! Alegra has been asked:
//! - A store with no invoice records (new, emptied, or a whole data dir lost) reads every
//!   document at Alegra. Documents of this range that syncctl issued (`stripe:`
//!   annotations) mean a store was lost: refused, unless started over on purpose
//!   (`--fresh-store`), when each is adopted by its Stripe invoice instead of issued
//!   again. The counter continues after the highest number used.
//! - A store with records asks whether its next numbers are used (a few beyond it too,
//!   for gaps). If they are, the store is behind Alegra (a restored backup, another
//!   issuer): every document is read, those of invoices the store does not know are kept
//!   for adoption, and the counter moves past the highest.
//!
//! A number found taken at DIAN by another syncctl document later on (rule 90) is
//! resolved the same way, and if this store's own invoices turn out issued elsewhere
//! under other numbers, another engine issues this range: numbering stops (refused).

use std::time::Duration;

use super::Compliance;
use crate::connectors::alegra::{AlegraError, AlegraInvoice};
use crate::store::{FoundDocument, InvoiceRecord};

/// Where the numbering stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Numbering {
    /// Confirmed with Alegra this run.
    Ready,
    /// No number is issued until Alegra has answered; why.
    Checking(String),
    /// Alegra holds documents this store cannot account for: nothing is issued.
    Refused(String),
}

/// After the next number, this many more are looked at (numbers sent out of order, or
/// held in a queue when a store was lost, leave gaps).
const GAP: i64 = 8;

/// Every document of the range at Alegra.
struct Scan {
    found: Vec<FoundDocument>,
    /// The highest sequence (number − start) used.
    highest: Option<i64>,
}

impl Scan {
    fn issued_by_syncctl(&self) -> impl Iterator<Item = &FoundDocument> {
        self.found.iter().filter(|d| d.stripe_id.is_some())
    }
}

fn accepted(d: &FoundDocument) -> bool {
    d.legal_status
        .as_deref()
        .is_some_and(|s| s.starts_with("STAMPED_AND_ACCEPTED"))
}

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

    fn refuse(&self, why: String) {
        let _ = self.store.audit("compliance", "numbering", "engine", &why);
        tracing::error!("{why}");
        self.set_numbering(Numbering::Refused(why));
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

    async fn used(&self, seq: i64) -> Result<bool, AlegraError> {
        Ok(!self
            .alegra
            .find_by_number(&self.full(seq))
            .await?
            .is_empty())
    }

    /// Asks Alegra about the numbering (see the module doc). Ok: Ready or Refused, set.
    pub async fn confirm_numbering(&self) -> Result<(), AlegraError> {
        let store_err = |e: crate::store::SqlError| AlegraError::Decode(format!("store: {e}"));
        let records = self.store.invoice_rows().map_err(store_err)?;
        if records == 0 {
            let scan = self.scan().await?;
            let ours = scan.issued_by_syncctl().count();
            if ours > 0 && !self.settings.adopt_documents {
                let first = scan
                    .issued_by_syncctl()
                    .next()
                    .map_or_else(String::new, |d| {
                        format!(
                            " (e.g. {}, stripe:{})",
                            d.number,
                            d.stripe_id.as_deref().unwrap_or_default()
                        )
                    });
                self.refuse(format!(
                    "Alegra already holds {ours} documents of this numbering range issued by syncctl for Stripe invoices{first}, but this store has no invoice: its store was lost or emptied. Nothing is numbered or sent. Restore syncctl.db from a backup, or start once with --fresh-store to adopt Alegra's documents and continue the numbering"
                ));
                return Ok(());
            }
            self.keep(&scan, "store rebuilt").map_err(store_err)?;
        } else if self.skip_used_numbers().await? {
            // Behind Alegra: documents beyond this store's counter. Read them all.
            let scan = self.scan().await?;
            self.keep(
                &scan,
                "this store was behind Alegra (a restored backup, or another issuer)",
            )
            .map_err(store_err)?;
            if let Some(why) = self.issued_elsewhere(&scan) {
                self.refuse(why);
                return Ok(());
            }
        }
        self.numbering_confirmed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.set_numbering(Numbering::Ready);
        Ok(())
    }

    /// Whether Alegra uses numbers from the store's next one on (the next few, for gaps).
    pub(super) async fn skip_used_numbers(&self) -> Result<bool, AlegraError> {
        let next = self.store.next_number_seq().unwrap_or(0);
        for k in 0..=GAP {
            if self.used(next + k).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads every document at Alegra (30 a request); keeps those of this range.
    async fn scan(&self) -> Result<Scan, AlegraError> {
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
                found.push(found_document(d));
            }
            if page.len() < 30 {
                break;
            }
            at += page.len();
        }
        // Accepted documents last, so they win a number held twice.
        found.sort_by_key(accepted);
        Ok(Scan { found, highest })
    }

    /// Keeps the documents of invoices this store does not know, for adoption when their
    /// Stripe invoice is listed, and moves the counter past the highest number used.
    fn keep(&self, scan: &Scan, why: &str) -> crate::store::Result<()> {
        let unknown: Vec<FoundDocument> = scan
            .found
            .iter()
            .filter(|d| {
                d.stripe_id
                    .as_deref()
                    .is_some_and(|id| self.store.invoice(id).ok().flatten().is_none())
            })
            .cloned()
            .collect();
        self.store.save_found_documents(&unknown)?;
        if let Some(h) = scan.highest {
            self.store.reserve_numbers_through(h)?;
        }
        if !scan.found.is_empty() {
            self.store.audit(
                "compliance",
                "numbering",
                "engine",
                &format!(
                    "{why}: {} documents of this range at Alegra, {} of Stripe invoices this store does not know (each adopted by its invoice when listed, never issued again); the numbering continues after {}",
                    scan.found.len(),
                    unknown.len(),
                    scan.highest.map_or("none".to_owned(), |h| self.full(h))
                ),
            )?;
        }
        Ok(())
    }

    /// Another engine issues this range when an invoice this store numbered is accepted at
    /// DIAN under a number the store did not give it.
    fn issued_elsewhere(&self, scan: &Scan) -> Option<String> {
        let clash = scan.found.iter().filter(|d| accepted(d)).find(|d| {
            let Some(id) = d.stripe_id.as_deref() else {
                return false;
            };
            self.store
                .invoice(id)
                .ok()
                .flatten()
                .is_some_and(|rec| rec.number != d.number)
        })?;
        Some(format!(
            "Stripe invoice {} is accepted at DIAN as {}, a number this store did not give it: another engine (or a copy of this store) issues this numbering range. Nothing more is numbered until only one engine uses it; then restart",
            clash.stripe_id.as_deref().unwrap_or_default(),
            clash.number
        ))
    }

    /// `rec`'s number is taken at DIAN by another invoice's document. Its own document,
    /// if Alegra holds one under another number, is adopted; otherwise it gets the next
    /// free number. Either way the range is read again first (a store behind Alegra, or
    /// a second engine, shows here).
    pub(super) async fn number_taken(&self, rec: &InvoiceRecord, holder: &str) {
        let scan = match self.scan().await {
            Ok(s) => s,
            Err(e) => return self.postpone(rec, &e),
        };
        let own = scan.found.iter().rev().find(|d| {
            d.stripe_id.as_deref() == Some(rec.stripe_id.as_str()) && d.number != rec.number
        });
        if let Some(own) = own.filter(|d| accepted(d)) {
            let why = format!(
                "{} is another document's at DIAN ({holder}); this invoice's own document {} is at Alegra: adopted, read there",
                rec.number, own.number
            );
            match self
                .store
                .adopt_document(&rec.stripe_id, &own.number, &own.alegra_id, &why)
            {
                Ok(()) => self.changed(),
                Err(e) => tracing::error!("adopting {} for {}: {e}", own.number, rec.number),
            }
            return;
        }
        if let Err(e) = self.keep(&scan, "a number was found taken at DIAN") {
            tracing::error!("keeping Alegra's documents: {e}");
            return;
        }
        if let Some(why) = self.issued_elsewhere(&scan) {
            return self.refuse(why);
        }
        let why = format!(
            "{} is already used at DIAN by another document ({holder}); this invoice was never accepted under it",
            rec.number
        );
        match self.store.renumber_invoice(
            &rec.stripe_id,
            &self.settings.number_prefix,
            self.settings.number_start,
            &why,
        ) {
            Ok(number) => {
                let _ = self.store.audit(
                    "compliance",
                    &number,
                    "engine",
                    &format!("invoice {} renumbered {number}: {why}", rec.number),
                );
                self.changed();
            }
            Err(e) => tracing::error!("renumbering {}: {e}", rec.number),
        }
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
            if let Err(e) = self.confirm_numbering().await {
                tracing::warn!("confirming the numbering with Alegra: {e}");
                self.set_numbering(Numbering::Checking(format!(
                    "no invoice is numbered until Alegra confirms the numbering range (it did not answer: {e})"
                )));
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
}

fn found_document(d: &AlegraInvoice) -> FoundDocument {
    FoundDocument {
        number: d.number.clone(),
        alegra_id: d.id.clone(),
        stripe_id: d.stripe_id().map(str::to_owned),
        legal_status: d.stamp.as_ref().map(|s| s.legal_status.clone()),
        cufe: d.stamp.as_ref().and_then(|s| s.cufe.clone()),
    }
}
