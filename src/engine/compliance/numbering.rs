//! The DIAN numbering range, confirmed against Alegra before any number is issued.
//!
//! Numbers come from a counter in the store. At every start no invoice is numbered until
//! Alegra has been asked:
//! - A store with no invoice records (new, emptied, or a whole data dir lost) reads every
//!   document at Alegra. Documents of this range that syncctl issued (`stripe:`
//!   annotations) mean a store was lost: refused, unless started over on purpose
//!   (`--fresh-store`), when each is adopted by its Stripe invoice instead of issued
//!   again. The counter continues after the highest number used.
//! - A store with records reads Alegra's newest documents and asks whether its next
//!   numbers are used (a few beyond it too, for gaps). If a number at or after the
//!   counter is used, the store is behind Alegra (a restored backup, another issuer):
//!   every document is read; those of invoices the store does not know are kept for
//!   adoption, an invoice it knows whose document is under another number (renumbered
//!   after the backup) adopts that document, and the counter moves past the highest.
//!
//! A number found taken at DIAN by another syncctl document later on (rule 90) is
//! resolved the same way. Evidence that a second engine issues the range (an invoice this
//! store accepted under one number with a document under another, or two invoices on one
//! number) stops the numbering (refused), since each engine would issue what the other
//! did.

use std::time::Duration;

use super::Compliance;
use crate::compliance::machine::Status;
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
    Refused { why: String, fix: String },
}

const FIX_LOST: &str = "restore syncctl.db from a backup, or restart once with --fresh-store to adopt Alegra's documents";
const FIX_TWO_ENGINES: &str = "stop the other engine (or the copy of this store) that issues this numbering range, then restart this one";

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

/// Rejected by DIAN: it issued nothing (rule 90 answers included).
fn rejected(d: &FoundDocument) -> bool {
    d.legal_status.as_deref() == Some("STAMPED_AND_REJECTED")
}

/// At most this many pages of newest documents (30 each) are read at start to find the
/// newest of this range (other numberings of the account may come first).
const NEWEST_PAGES: usize = 100;

impl Compliance {
    pub fn numbering(&self) -> Numbering {
        self.numbering.borrow().clone()
    }

    /// Follows the numbering's state.
    pub fn watch_numbering(&self) -> tokio::sync::watch::Receiver<Numbering> {
        self.numbering.subscribe()
    }

    fn set_numbering(&self, n: Numbering) {
        self.numbering.send_replace(n);
        self.changed();
    }

    fn refuse(&self, why: String, fix: &str) {
        let _ = self.store.audit("compliance", "numbering", "engine", &why);
        tracing::error!("{why}");
        self.set_numbering(Numbering::Refused {
            why,
            fix: fix.to_owned(),
        });
    }

    /// Why invoices cannot be taken now, if they cannot.
    pub fn numbering_hold(&self) -> Option<String> {
        match self.numbering() {
            Numbering::Ready => None,
            Numbering::Checking(why) | Numbering::Refused { why, .. } => Some(why),
        }
    }

    /// Sequence (number − start) of a number of this range.
    fn seq_of(&self, number: &str) -> Option<i64> {
        let start = self.settings.number_start as i64;
        number
            .strip_prefix(self.settings.number_prefix.as_str())?
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= start)
            .map(|n| n - start)
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
        let store_err = |e: crate::store::InvoiceError| AlegraError::Decode(format!("store: {e}"));
        let records = self.invoices.invoice_rows().map_err(store_err)?;
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
                ), FIX_LOST);
                return Ok(());
            }
            self.keep(&scan, "store rebuilt").map_err(store_err)?;
        } else if self.behind_alegra().await? {
            // Behind Alegra: documents beyond this store's counter. Read them all.
            let scan = self.scan().await?;
            self.keep(
                &scan,
                "this store was behind Alegra (a restored backup, or another issuer)",
            )
            .map_err(store_err)?;
            if let Err(why) = self.settle_known(&scan) {
                self.refuse(why, FIX_TWO_ENGINES);
                return Ok(());
            }
        }
        self.set_numbering(Numbering::Ready);
        Ok(())
    }

    /// Whether Alegra holds a number at or after the store's counter: among its newest
    /// documents (a gap of numbers that never reached Alegra does not hide them), or
    /// among the next few numbers asked one by one (the order of a listing is not
    /// relied on alone).
    pub(super) async fn behind_alegra(&self) -> Result<bool, AlegraError> {
        let next = self.invoices.next_number_seq().unwrap_or(0);
        // Newest first, until a page holds documents of this range.
        for page in 0..NEWEST_PAGES {
            let docs = self.alegra.newest_invoices(page * 30, 30).await?;
            let mut ours = docs
                .iter()
                .filter_map(|d| self.seq_of(&d.number))
                .peekable();
            if ours.peek().is_some() {
                if ours.any(|seq| seq >= next) {
                    return Ok(true);
                }
                break;
            }
            if docs.len() < 30 {
                break;
            }
        }
        for k in 0..=GAP {
            if self.used(next + k).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads every document at Alegra (30 a request); keeps those of this range.
    async fn scan(&self) -> Result<Scan, AlegraError> {
        let mut found = Vec::new();
        let mut highest: Option<i64> = None;
        let mut at = 0;
        loop {
            let page = self.alegra.list_invoices(at, 30).await?;
            for d in &page {
                let Some(seq) = self.seq_of(&d.number) else {
                    continue;
                };
                highest = highest.max(Some(seq));
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
    fn keep(&self, scan: &Scan, why: &str) -> Result<(), crate::store::InvoiceError> {
        let unknown: Vec<FoundDocument> = scan
            .found
            .iter()
            .filter(|d| {
                d.stripe_id
                    .as_deref()
                    .is_some_and(|id| self.invoices.invoice(id).ok().flatten().is_none())
            })
            .cloned()
            .collect();
        self.invoices.save_found_documents(&unknown)?;
        if let Some(h) = scan.highest {
            self.invoices.reserve_numbers_through(h)?;
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

    /// Invoices this store knows whose document Alegra holds under another number than
    /// the store's. One not accepted here adopts that document (renumbered after a
    /// restored backup was taken). Only documents sent to DIAN and not rejected count: an
    /// unstamped one issued nothing (this engine leaves one behind when it renumbers an
    /// invoice whose create met a DIAN outage). Err (why the numbering stops) where only
    /// a second issuer explains it: an invoice accepted here with a document under
    /// another number too, two documents in flight for one invoice, or a document on a
    /// number this store gave another invoice.
    fn settle_known(&self, scan: &Scan) -> Result<(), String> {
        use std::collections::HashMap;
        let mut by_invoice: HashMap<&str, Vec<&FoundDocument>> = HashMap::new();
        let sent = |d: &&FoundDocument| d.legal_status.is_some() && !rejected(d);
        for d in scan.found.iter().filter(sent) {
            if let Some(id) = d.stripe_id.as_deref() {
                by_invoice.entry(id).or_default().push(d);
            }
        }
        let mut ids: Vec<&str> = by_invoice.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let docs = &by_invoice[id];
            let Ok(Some(rec)) = self.invoices.invoice(id) else {
                continue;
            };
            let (here, elsewhere): (Vec<&FoundDocument>, Vec<&FoundDocument>) =
                docs.iter().partition(|d| d.number == rec.number);
            // Accepted first.
            let Some(best) = elsewhere
                .iter()
                .find(|d| accepted(d))
                .or_else(|| elsewhere.first())
            else {
                continue;
            };
            if rec.status == Status::Validated || here.iter().any(|d| accepted(d)) {
                return Err(second_issuer(&format!(
                    "Stripe invoice {id} is accepted at DIAN as {} and has another document, {} ({}), that this store did not issue",
                    rec.number,
                    best.number,
                    best.legal_status.as_deref().unwrap_or("not yet stamped")
                )));
            }
            if !here.is_empty() {
                return Err(second_issuer(&format!(
                    "Stripe invoice {id} has two documents in flight at Alegra, {} and {}",
                    rec.number, best.number
                )));
            }
            match self.invoices.invoice(&best.number) {
                Ok(Some(other)) if other.stripe_id != id => {
                    return Err(number_given_to_another(&best.number, id, &other.stripe_id));
                }
                Err(e) => {
                    tracing::error!("reading the holder of {}: {e}", best.number);
                    continue;
                }
                _ => {}
            }
            let why = format!(
                "{}'s own document is at Alegra as {} ({}), numbered by a newer copy of this store: adopted, read there (never issued again under {})",
                rec.number,
                best.number,
                best.legal_status.as_deref().unwrap_or("not yet stamped"),
                rec.number
            );
            match self.invoices.adopt_document(id, best, &why) {
                Ok(()) => {
                    let _ = self.store.audit("compliance", &best.number, "engine", &why);
                    self.changed();
                }
                Err(e) => tracing::error!("adopting {} for {}: {e}", best.number, rec.number),
            }
        }
        Ok(())
    }

    /// `rec`'s number is taken at DIAN by another invoice's document. The range is read
    /// again (a store behind Alegra, or a second engine, shows here); this invoice's own
    /// document under another number is adopted (see [`Self::settle_known`]); otherwise
    /// it gets the next free number.
    pub(super) async fn number_taken(&self, rec: &InvoiceRecord, holder: &str) {
        if self.numbering() != Numbering::Ready {
            // Nothing is numbered until the range is confirmed; read again later.
            let _ = self.invoices.postpone_leased(
                &rec.stripe_id,
                self.settings.policy.poll_ms.max(60_000),
                &format!("{} is another document's at DIAN ({holder}); renumbered once the numbering is confirmed", rec.number),
            );
            return;
        }
        let scan = match self.scan().await {
            Ok(s) => s,
            Err(e) => return self.postpone(rec, &e),
        };
        if let Err(e) = self.keep(&scan, "a number was found taken at DIAN") {
            tracing::error!("keeping Alegra's documents: {e}");
            return;
        }
        if let Err(why) = self.settle_known(&scan) {
            return self.refuse(why, FIX_TWO_ENGINES);
        }
        match self.invoices.invoice(&rec.stripe_id) {
            Ok(Some(now)) if now.number != rec.number => return, // adopted its own
            Ok(_) => {}
            Err(e) => return tracing::error!("reading {}: {e}", rec.number),
        }
        let why = format!(
            "{} is already used at DIAN by another document ({holder}); this invoice was never accepted under it",
            rec.number
        );
        match self.invoices.renumber_leased(
            &rec.stripe_id,
            &self.settings.number_prefix,
            self.settings.number_start,
            &why,
        ) {
            Ok(None) => self.lost(rec, "its new number"),
            Ok(Some(number)) => {
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

    /// A document kept for an invoice about to be recorded sits on a number this store
    /// gave another invoice: a second issuer. Refuses and says so.
    pub(super) fn refuse_on_clash(&self, stripe_id: &str) -> Option<String> {
        let (number, other) = self
            .invoices
            .found_document_clash(stripe_id)
            .ok()
            .flatten()?;
        let why = number_given_to_another(&number, stripe_id, &other);
        self.refuse(why.clone(), FIX_TWO_ENGINES);
        Some(why)
    }

    /// Confirms the numbering until Alegra answers, then stops. Asked again every
    /// [`NUMBERING_RETRY`], with no backoff of its own: every paid invoice waits on
    /// this answer, and the Alegra circuit already keeps a dead Alegra from being
    /// called more than its probes (a backoff on top of it held invoices up to a minute
    /// after Alegra came back).
    pub async fn numbering_loop(&self, cancel: tokio_util::sync::CancellationToken) {
        loop {
            if !matches!(self.numbering(), Numbering::Checking(_)) {
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
                _ = tokio::time::sleep(NUMBERING_RETRY) => {}
            }
        }
    }
}

/// How often the numbering is asked again while Alegra has not confirmed it.
pub const NUMBERING_RETRY: Duration = Duration::from_secs(2);

/// Why the numbering stops: `evidence` that only a second issuer of the range explains.
fn second_issuer(evidence: &str) -> String {
    format!(
        "{evidence}: another engine (or a copy of this store) issues this numbering range. Nothing more is numbered"
    )
}

fn number_given_to_another(number: &str, stripe_id: &str, other: &str) -> String {
    second_issuer(&format!(
        "Alegra holds {number} for Stripe invoice {stripe_id}, but this store gave that number to {other}"
    ))
}

fn found_document(d: &AlegraInvoice) -> FoundDocument {
    FoundDocument {
        number: d.number.clone(),
        alegra_id: d.id.clone(),
        stripe_id: d.stripe_id().map(str::to_owned),
        legal_status: d.stamp.as_ref().map(|s| s.legal_status.clone()),
        cufe: d.stamp.as_ref().and_then(|s| s.cufe.clone()),
        date: d.date.clone(),
    }
}
