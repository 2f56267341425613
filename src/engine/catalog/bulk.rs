//! The bulk way of the catalog sync: many products at once, in the fewest QuickBooks
//! requests and quota units. The company's Items are read in pages of 1,000 into an
//! [`ItemIndex`], so a product's Item is found without a query of its own; creates and
//! updates then leave in batches of up to 30, under a `requestid` derived from the
//! batch's own writes (a resend of the same batch is answered from the first).
//!
//! It must never give a product two Items, whatever crashes when: each create is
//! recorded as pending before its batch is sent (as a single create is), a name is
//! reserved in the index before a create of it leaves (two batches in flight never race
//! for one name), and an Item a lost batch did create is found again — by its Sku in a
//! fresh index after a restart, or by its name when the create comes back 6240 (then
//! the single calls' lookup adopts it as this product's own).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sha2::Digest;

use super::{Catalog, JobError, JobResult, Outcome, Plan, in_line};
use crate::connectors::quickbooks::{BatchAnswer, BatchOp, Item, ItemJson, QbError};
use crate::engine::item::{self, DesiredItem};
use crate::store::{Held, PendingCreate};

pub use crate::connectors::quickbooks::BATCH_MAX;

/// Fewer writes than this go as single calls: a batch of one saves nothing.
pub const BATCH_MIN: usize = 2;
/// Jobs queued from which a create claimed alone reads the index first, when none is
/// read (a whole read costs a request per 1,000 Items; each create claimed alone
/// would otherwise look its name up).
const INDEX_WORTH_QUEUED: u64 = 100;
/// Items read whole at most (20 requests); a larger company is asked by name instead,
/// one `Name IN (…)` query per batch.
const INDEX_MAX_ITEMS: usize = 20_000;
/// How long a read of the company's Items is trusted before what changed since is
/// asked for. Others write too: an Item they created in between shows up as a 6240
/// and is looked up then.
const INDEX_TTL: Duration = Duration::from_secs(600);

/// [`INDEX_TTL`], or `SYNCCTL_INDEX_TTL_SECS` (seconds, read once): a hidden knob
/// for tests and memory measurements, to see in seconds what a long run does in hours.
fn index_ttl() -> Duration {
    static TTL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TTL.get_or_init(|| {
        std::env::var("SYNCCTL_INDEX_TTL_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(INDEX_TTL, Duration::from_secs)
    })
}

/// The company's Items as read in bulk and kept up to date with this engine's writes:
/// by Sku, and by name lower-cased (QuickBooks compares names case-insensitively).
pub struct ItemIndex {
    read_at: tokio::time::Instant,
    /// Every Item was read (else names not seen are asked for).
    complete: bool,
    by_name: HashMap<String, Named>,
    by_sku: HashMap<String, Item>,
    /// Item id → its name's key in `by_name` (a rename frees the old name).
    name_of: HashMap<String, String>,
    /// Names asked for with `Name IN (…)` and free then (an incomplete index only).
    absent: HashSet<String>,
    /// The server time of the last read: a refresh asks QuickBooks' change data
    /// capture for what changed since, instead of reading every Item again.
    changed_since: Option<String>,
}

#[derive(Debug, Clone)]
enum Named {
    Item(Item),
    /// A create of this name by this product is on its way, for this lease of its job
    /// (none: a call of no job's). Released by that call only: a worker whose lease
    /// ran out, its create refused, left the newer holder's create without its name.
    Reserved(String, Option<Held>),
}

impl ItemIndex {
    fn empty() -> Self {
        Self {
            read_at: tokio::time::Instant::now(),
            complete: false,
            by_name: HashMap::new(),
            by_sku: HashMap::new(),
            name_of: HashMap::new(),
            absent: HashSet::new(),
            changed_since: None,
        }
    }

    /// An index just read of a QuickBooks company with no Items (no request made).
    #[cfg(test)]
    pub(super) fn whole_and_empty() -> Self {
        Self {
            complete: true,
            ..Self::empty()
        }
    }

    /// Read recently enough to be trusted ([`INDEX_TTL`]) and whole.
    pub(super) fn fresh(&self) -> bool {
        self.complete && self.read_at.elapsed() < index_ttl()
    }

    /// What QuickBooks says an Item is now (read, or answered to a write of ours).
    pub(super) fn learn(&mut self, item: Item) {
        let key = item.name.to_lowercase();
        self.absent.remove(&key);
        // Known as it is (the change data capture answers every Item this engine
        // wrote since): kept, not replaced. Replacing 20,000 Items with equal copies
        // allocated them anew on whichever thread followed, and malloc kept both.
        let known = matches!(self.by_name.get(&key), Some(Named::Item(i)) if *i == item)
            && item
                .sku
                .as_ref()
                .filter(|s| !s.is_empty())
                .is_none_or(|s| self.by_sku.get(s) == Some(&item));
        if known {
            return;
        }
        if let Some(old) = self.name_of.insert(item.id.clone(), key.clone())
            && old != key
            && matches!(self.by_name.get(&old), Some(Named::Item(i)) if i.id == item.id)
        {
            self.by_name.remove(&old);
        }
        if let Some(sku) = item.sku.clone().filter(|s| !s.is_empty()) {
            self.by_sku.insert(sku, item.clone());
        }
        self.by_name.insert(key, Named::Item(item));
    }

    /// Frees a name this product reserved under `held` (its create failed for good or
    /// was refused as a duplicate: the name's holder is looked up by the single calls).
    /// A reservation the job's newer lease took over is left to it.
    fn release(&mut self, name: &str, pid: &str, held: Option<Held>) {
        let key = name.to_lowercase();
        if matches!(self.by_name.get(&key), Some(Named::Reserved(p, h)) if p == pid && *h == held) {
            self.by_name.remove(&key);
        }
    }

    /// Frees a name this product reserved under `held` or an earlier lease (an earlier
    /// attempt's), never a newer lease's (a worker whose lease ran out meets its job's
    /// newer holder's reservation).
    fn release_earlier(&mut self, name: &str, pid: &str, held: Option<Held>) {
        let key = name.to_lowercase();
        if matches!(self.by_name.get(&key), Some(Named::Reserved(p, h)) if p == pid && age(*h) <= age(held))
        {
            self.by_name.remove(&key);
        }
    }

    /// Reserves `name` for `pid`'s create under `held`: free, or reserved by the same
    /// product under an earlier lease (an earlier attempt's or job's: taken over). One
    /// reserved under a newer lease is left to it: this worker's lease ran out, and its
    /// create is refused before it is sent.
    fn reserve(&mut self, key: String, pid: &str, held: Option<Held>) {
        match self.by_name.get(&key) {
            Some(Named::Reserved(p, h)) if p == pid && age(*h) > age(held) => {}
            _ => {
                self.by_name
                    .insert(key, Named::Reserved(pid.to_owned(), held));
            }
        }
    }

    /// Whether `name` belongs to an Item or a create other than `pid`'s Item `item_id`.
    pub(super) fn held_by_other(&self, name: &str, pid: &str, item_id: &str) -> bool {
        match self.by_name.get(&name.to_lowercase()) {
            Some(Named::Reserved(p, _)) => p != pid,
            Some(Named::Item(i)) => i.id != item_id,
            None => false,
        }
    }
}

/// How recent a lease is: a later job of the product, or a later lease of the same
/// job, is newer (none: a call of no job's, the oldest).
fn age(held: Option<Held>) -> Option<(i64, i64)> {
    held.map(|h| (h.job_id, h.lease))
}

/// Where a product without an Item stands, by the index.
enum Found {
    Adopt(Item),
    /// Create it with this name (now reserved for it).
    Create(String),
    /// Both names belong to other products' Items.
    NoName([String; 2]),
    /// The index cannot tell: the single calls look it up.
    Unknown,
}

/// A name as the index knows it, for a create claimed alone.
pub(super) enum NameIs {
    /// Free (reserved for this product now): create it, no lookup.
    Free,
    /// An Item holds it: adopt it if it is this product's or no product's.
    Item(Item),
    /// Another product's create of it is on its way.
    Reserved,
}

/// One write of a batch and what it was for.
enum Write {
    Create { name: String },
    Update,
}

/// The `requestid` of a batch: derived from its jobs' products and the writes it
/// carries (never from the attempt), 36 characters.
fn batch_request_id(items: &[(&str, &BatchOp)]) -> String {
    let mut h = sha2::Sha256::new();
    for (pid, op) in items {
        h.update(pid.as_bytes());
        h.update([0]);
        let (kind, body) = match op {
            BatchOp::Create(b) => ("c", b.as_str()),
            BatchOp::Update(b) => ("u", b.as_str()),
            BatchOp::Query(q) => ("q", q.as_str()),
        };
        h.update(kind.as_bytes());
        h.update(body.as_bytes());
        h.update([0]);
    }
    format!("b-{}", &hex::encode(h.finalize())[..34])
}

/// The name a create recorded as pending (sent, its outcome unknown) carries.
fn pending_name(m: &crate::store::ItemMapping) -> Option<String> {
    m.pending_request_id.as_ref()?;
    let body: serde_json::Value = serde_json::from_str(m.pending_body.as_deref()?).ok()?;
    body["Name"].as_str().map(str::to_owned)
}

fn no_free_name(pid: &str, names: &[String; 2]) -> JobError {
    JobError::Permanent(format!(
        "no free QuickBooks name for {pid}: both {:?} and {:?} belong to other products",
        names[0], names[1]
    ))
}

impl Catalog {
    /// The index, read first when there is none; one older than [`INDEX_TTL`] follows
    /// what changed since (read whole again only when it cannot). The lock is held
    /// while reading, so concurrent workers read it once.
    async fn item_index(&self) -> Result<tokio::sync::MutexGuard<'_, Option<ItemIndex>>, QbError> {
        let mut guard = self.index.lock().await;
        let fresh = guard
            .as_ref()
            .is_some_and(|i| i.read_at.elapsed() < index_ttl());
        let followed = match guard.as_mut() {
            // An incomplete index (over INDEX_MAX_ITEMS) follows too: what it learns
            // stays true, and what it never saw is still asked for by name.
            Some(idx) if !fresh => self.follow_changes(idx).await?,
            _ => fresh,
        };
        if !followed {
            let first = guard.is_none();
            if let Some(old) = guard.as_mut() {
                // The old index goes before the new one is read (two 20,000-Item
                // indexes at once left malloc holding the peak), all but the creates
                // still on their way, which keep their names. Should the read fail,
                // what is left is an incomplete index: names are asked for meanwhile.
                old.by_name
                    .retain(|_, named| matches!(named, Named::Reserved(..)));
                old.by_sku = HashMap::new();
                old.name_of = HashMap::new();
                old.absent = HashSet::new();
                old.complete = false;
            }
            let mut idx = self.read_index().await?;
            if let Some(old) = guard.take() {
                for (key, named) in old.by_name {
                    idx.by_name.entry(key).or_insert(named);
                }
            }
            if first && self.adopt_by_sku {
                let n = idx.by_sku.keys().filter(|s| s.starts_with("prod_")).count();
                if n > 0 {
                    let _ = self.store.audit(
                        "sync",
                        "catalog",
                        "engine",
                        &format!(
                            "the store had no mapping: {n} QuickBooks Items carry a Stripe product id as Sku and are adopted by their products (never created twice)"
                        ),
                    );
                }
            }
            *guard = Some(idx);
        }
        Ok(guard)
    }

    /// Every Item (inactive ones too, they hold their names), 1,000 a request, up to
    /// [`INDEX_MAX_ITEMS`].
    async fn read_index(&self) -> Result<ItemIndex, QbError> {
        let mut idx = ItemIndex::empty();
        let mut start = 1;
        loop {
            let page = self.qb.all_items_timed(start, 1000).await?;
            if idx.changed_since.is_none() {
                idx.changed_since = page.time;
            }
            let n = page.items.len();
            for item in page.items {
                idx.learn(item);
            }
            if n < 1000 {
                idx.complete = true;
                break;
            }
            start += n;
            if start > INDEX_MAX_ITEMS {
                tracing::info!(
                    "quickbooks holds more than {INDEX_MAX_ITEMS} Items: names are asked for a batch at a time"
                );
                break;
            }
        }
        idx.read_at = tokio::time::Instant::now();
        Ok(idx)
    }

    /// Brings a whole index up to date in place from QuickBooks' change data capture
    /// (one request, whatever the company's size; more only when over 1,000 Items
    /// changed, a page of them at a time, in place). `false` when it cannot be
    /// followed (a checkpoint past the 30-day window, or more changes than a whole
    /// read would take requests): then it is read again.
    /// Never a second index beside the first: reading every Item again each
    /// [`INDEX_TTL`] held two 20,000-Item indexes and 20 pages at once, and the process
    /// kept the peak (RSS up a step every 10 minutes in a long run).
    async fn follow_changes(&self, idx: &mut ItemIndex) -> Result<bool, QbError> {
        let Some(mut since) = idx.changed_since.clone() else {
            return Ok(false);
        };
        // At most twice the requests reading every Item again would take: an Item
        // changed many times is in the answer once, so no company has more changes
        // than Items, but each page starts again at the second the last one ended in
        // (answers overlap by the Items of that second: 20,104 Items created at ~150
        // a second took 24 pages, and one whole read's 21 sent the demo's first
        // refresh back to a whole read). Bounding by the index's own size sent an
        // index read while the company was empty back to a whole read too.
        let pages = 2 * (INDEX_MAX_ITEMS / 1000 + 1);
        for _ in 0..pages {
            let page = match self.qb.changed_items(&since).await {
                Ok(page) => page,
                Err(e) if e.code() == Some("2010") => return Ok(false),
                Err(e) => return Err(e),
            };
            let full = page.items.len() >= 1000;
            let last = page.updated.last().cloned().flatten();
            for item in page.items {
                idx.learn(item);
            }
            if !full {
                idx.changed_since = page.time.or(Some(since));
                idx.read_at = tokio::time::Instant::now();
                return Ok(true);
            }
            // More changed than one answer holds: on from the last one's time.
            match last {
                Some(t) if t != since => since = t,
                _ => return Ok(false),
            }
        }
        Ok(false)
    }

    /// The Item whose Sku is `pid`, by the index (read first if need be).
    pub(super) async fn item_by_sku(&self, pid: &str) -> Result<Option<Item>, QbError> {
        let guard = self.item_index().await?;
        Ok(guard.as_ref().and_then(|i| i.by_sku.get(pid).cloned()))
    }

    /// What the index says of `name` for a create of product `pid` claimed alone, so
    /// that a single call needs no lookup of its own: `None` when the index cannot tell
    /// (none read and too little queued to be worth reading one, or not whole), then the
    /// name is looked up. A free name is reserved for `pid` before the answer, as a
    /// batch's is (two single creates of one name never race).
    pub(super) async fn name_by_index(
        &self,
        name: &str,
        pid: &str,
        held: Option<Held>,
    ) -> Result<Option<NameIs>, QbError> {
        let read = self.index.lock().await.is_some();
        if !read && self.queued_now() < INDEX_WORTH_QUEUED {
            return Ok(None);
        }
        let mut guard = self.item_index().await?;
        let Some(idx) = guard.as_mut().filter(|i| i.fresh()) else {
            return Ok(None);
        };
        let key = name.to_lowercase();
        Ok(Some(match idx.by_name.get(&key) {
            Some(Named::Item(item)) => NameIs::Item(item.clone()),
            Some(Named::Reserved(holder, _)) if holder != pid => NameIs::Reserved,
            Some(Named::Reserved(..)) | None => {
                idx.reserve(key, pid, held);
                NameIs::Free
            }
        }))
    }

    /// A single create's answer: the Item it made into the index, or (refused) its
    /// reserved name freed.
    pub(super) async fn created_by_single(
        &self,
        name: &str,
        pid: &str,
        held: Option<Held>,
        item: Option<&Item>,
    ) {
        if let Some(idx) = self.index.lock().await.as_mut() {
            match item {
                Some(item) => idx.learn(item.clone()),
                None => idx.release(name, pid, held),
            }
        }
    }

    /// For an incomplete index: asks for the names `plans` may take that it has not
    /// seen (one `Name IN (…)` per 100 names).
    async fn ask_names(
        &self,
        idx: &mut ItemIndex,
        plans: &[(usize, Box<Plan>)],
    ) -> Result<(), QbError> {
        let mut wanted: Vec<String> = Vec::new();
        for (_, p) in plans.iter().filter(|(_, p)| p.m.item_id.is_none()) {
            for name in [
                p.desired.name.clone(),
                item::disambiguated_name(&p.desired.name, &p.desired.sku),
            ] {
                let key = name.to_lowercase();
                if !idx.by_name.contains_key(&key) && !idx.absent.contains(&key) {
                    wanted.push(name);
                }
            }
        }
        for chunk in wanted.chunks(100) {
            let found = self.qb.find_items_named(chunk).await?;
            for name in chunk {
                idx.absent.insert(name.to_lowercase());
            }
            for item in found {
                idx.learn(item);
            }
        }
        Ok(())
    }

    /// Where a product without an Item stands: its own Item (by Sku, or a free one by
    /// name) to adopt, or a free name to create (reserved for it now).
    async fn resolve(
        &self,
        idx: &mut ItemIndex,
        desired: &DesiredItem,
        held: Option<Held>,
    ) -> Result<Found, JobError> {
        let pid = desired.sku.as_str();
        if let Some(item) = idx.by_sku.get(pid) {
            return Ok(Found::Adopt(item.clone()));
        }
        let names = [
            desired.name.clone(),
            item::disambiguated_name(&desired.name, pid),
        ];
        for name in &names {
            let key = name.to_lowercase();
            match idx.by_name.get(&key).cloned() {
                Some(Named::Reserved(holder, _)) => {
                    if holder == pid {
                        idx.reserve(key, pid, held);
                        return Ok(Found::Create(name.clone()));
                    }
                }
                Some(Named::Item(item)) => {
                    let ours = item.sku.as_deref() == Some(pid);
                    let free = item.sku.as_deref().is_none_or(str::is_empty)
                        && self.queue.product_of_item(&item.id).await?.is_none();
                    if ours || free {
                        // Held by this product from now on (its update sets the Sku).
                        let mut held = item.clone();
                        held.sku = Some(pid.to_owned());
                        idx.by_sku.insert(pid.to_owned(), held.clone());
                        idx.by_name.insert(key, Named::Item(held));
                        return Ok(Found::Adopt(item));
                    }
                }
                None if idx.complete || idx.absent.contains(&key) => {
                    idx.reserve(key, pid, held);
                    return Ok(Found::Create(name.clone()));
                }
                None => return Ok(Found::Unknown),
            }
        }
        Ok(Found::NoName(names))
    }

    /// The updates whose jobs are still held, read right before the batch is sent (a
    /// stale SyncToken's second pass too); the others end as lost leases, never sent: a
    /// worker whose lease ran out would send its older version over the newer holder's.
    async fn still_held_of(
        &self,
        updates: Vec<(usize, Box<Plan>, String)>,
        out: &mut Vec<(usize, JobResult)>,
    ) -> Vec<(usize, Box<Plan>, String)> {
        let held: Vec<_> = updates.iter().filter_map(|(_, p, _)| p.held).collect();
        if held.is_empty() {
            return updates;
        }
        let holding = match self.queue.holding(&held).await {
            Ok(holding) => holding,
            Err(e) => {
                for (i, _, _) in updates {
                    out.push((i, Err(JobError::Transient(format!("store: {e}"), None))));
                }
                return Vec::new();
            }
        };
        let mut answers = holding.into_iter();
        let mut kept = Vec::with_capacity(updates.len());
        for (i, p, name) in updates {
            // (A plan of no job's is not asked about.)
            if p.held.is_none() || answers.next() == Some(true) {
                kept.push((i, p, name));
            } else {
                out.push((i, Err(JobError::LeaseLost)));
            }
        }
        kept
    }

    /// Writes `plans` (at most [`BATCH_MAX`]) in one batch request: finds each
    /// product's Item in the index, creates the missing ones and updates the rest.
    /// Each operation's Fault is handled as a single call's would be: 6240 on a create
    /// → the single calls look the name up and adopt or disambiguate, 5010 → the stale
    /// ones read again in one `Id IN (…)` query and sent in one more batch, a validation
    /// Fault → rejected with its reason.
    pub(super) async fn write_batch(
        &self,
        plans: Vec<(usize, Box<Plan>)>,
    ) -> Vec<(usize, JobResult)> {
        let (mut out, mut stale) = self.batch_pass(plans).await;
        if stale.is_empty() {
            return out;
        }
        // Stale SyncTokens (another writer since we read): read them all again in one
        // query, then one more batch; what is still stale goes the single way.
        let ids: Vec<String> = stale
            .iter()
            .filter_map(|(_, p)| p.m.item_id.clone())
            .collect();
        if let Ok(items) = self.qb.items_by_id(&ids).await {
            let tokens: HashMap<String, String> =
                items.into_iter().map(|i| (i.id, i.sync_token)).collect();
            for (_, p) in &mut stale {
                if let Some(t) = p.m.item_id.as_ref().and_then(|id| tokens.get(id)) {
                    p.m.sync_token = Some(t.clone());
                }
            }
            let (more, still) = self.batch_pass(stale).await;
            out.extend(more);
            stale = still;
        }
        for (i, p) in stale {
            out.push((i, self.complete(p).await));
        }
        out
    }

    /// One batch request for `plans`; the updates refused for a stale SyncToken are
    /// handed back.
    #[expect(
        clippy::too_many_lines,
        reason = "one batch from lookup to outcomes, in order"
    )]
    async fn batch_pass(
        &self,
        plans: Vec<(usize, Box<Plan>)>,
    ) -> (Vec<(usize, JobResult)>, Vec<(usize, Box<Plan>)>) {
        let mut stale: Vec<(usize, Box<Plan>)> = Vec::new();
        let mut out: Vec<(usize, JobResult)> = Vec::new();
        // Left to the single calls, after the batch.
        let mut single: Vec<(usize, Box<Plan>)> = Vec::new();
        let mut creates: Vec<(usize, Box<Plan>, String)> = Vec::new();
        let mut updates: Vec<(usize, Box<Plan>)> = Vec::new();
        let mut named_updates: Vec<(usize, Box<Plan>, String)> = Vec::new();
        {
            let needs_index = plans.iter().any(|(_, p)| p.m.item_id.is_none());
            let mut guard = if needs_index {
                match self.item_index().await {
                    Ok(g) => Some(g),
                    Err(e) => {
                        let out = plans
                            .into_iter()
                            .map(|(i, _)| (i, Err(JobError::from(e.clone()))))
                            .collect();
                        return (out, stale);
                    }
                }
            } else {
                self.index.try_lock().ok()
            };
            let mut idx = guard.as_mut().and_then(|g| g.as_mut());
            if let Some(idx) = idx.as_deref_mut()
                && needs_index
                && !idx.complete
                && let Err(e) = self.ask_names(idx, &plans).await
            {
                let out = plans
                    .into_iter()
                    .map(|(i, _)| (i, Err(JobError::from(e.clone()))))
                    .collect();
                return (out, stale);
            }
            for (i, mut p) in plans {
                if p.m.item_id.is_some() {
                    updates.push((i, p));
                    continue;
                }
                let Some(idx) = idx.as_deref_mut() else {
                    single.push((i, p));
                    continue;
                };
                let pid = p.desired.sku.clone();
                // On a shared queue the pending create may be another engine's (which
                // died before recording its answer): this index may never have seen the
                // Item, and may hold its name reserved for another product. Only the
                // replay tells.
                if let Some(pending) = pending_name(&p.m)
                    && !idx.by_sku.contains_key(&pid)
                    && (self.queue.is_shared()
                        || ![
                            p.desired.name.clone(),
                            item::disambiguated_name(&p.desired.name, &pid),
                        ]
                        .iter()
                        .any(|n| n.to_lowercase() == pending.to_lowercase()))
                {
                    // A create of another name may have landed unheard (its batch's
                    // answer lost, then the product renamed): only its replay, one
                    // call, tells — never a second create under the new name.
                    idx.release_earlier(&pending, &pid, p.held);
                    single.push((i, p));
                    continue;
                }
                match self.resolve(idx, &p.desired, p.held).await {
                    Err(e) => out.push((i, Err(e))),
                    Ok(Found::Adopt(item)) => {
                        self.remember(&item, &pid);
                        p.m.item_id = Some(item.id.clone());
                        p.m.sync_token = Some(item.sync_token.clone());
                        p.m.item_name = Some(item.name.clone());
                        p.outcome = Some(Outcome::Adopted {
                            item_id: item.id.clone(),
                            name: item.name.clone(),
                        });
                        if in_line(&item, &p.desired) {
                            p.m.synced_hash = Some(p.hash.clone());
                            out.push((i, Ok(p.done())));
                        } else {
                            updates.push((i, p));
                        }
                    }
                    Ok(Found::Create(name)) => creates.push((i, p, name)),
                    Ok(Found::NoName(names)) => out.push((i, Err(no_free_name(&pid, &names)))),
                    Ok(Found::Unknown) => single.push((i, p)),
                }
            }
            // Updates take the disambiguated name where the plain one is another's.
            for (i, p) in updates.drain(..) {
                let alt = item::disambiguated_name(&p.desired.name, &p.desired.sku);
                let id = p.m.item_id.clone().unwrap_or_default();
                let taken = idx
                    .as_deref()
                    .is_some_and(|x| x.held_by_other(&p.desired.name, &p.desired.sku, &id));
                let name = if taken || p.m.item_name.as_deref() == Some(alt.as_str()) {
                    alt
                } else {
                    p.desired.name.clone()
                };
                named_updates.push((i, p, name));
            }
        }
        // Recorded before anything is sent: a pending create is found again after a
        // crash, and an adopted Item is this product's before its update leaves.
        let mut ops: Vec<BatchOp> = Vec::new();
        let mut sent: Vec<(usize, Box<Plan>, Write)> = Vec::new();
        let mut pending = Vec::new();
        let mut made = Vec::new();
        for (i, mut p, name) in creates {
            // Written out once: hashed for the request ids, kept as pending, sent.
            let body = ItemJson::of(
                &p.desired
                    .with_name(name.clone())
                    .create_body(&self.settings.income_account),
            );
            let rid = item::create_request_id_of(&p.desired.sku, body.as_str());
            pending.push(PendingCreate {
                product_id: p.desired.sku.clone(),
                request_id: rid.clone(),
                body: body.as_str().to_owned(),
                held: p.held,
            });
            p.m.pending_request_id = Some(rid);
            p.m.pending_body = Some(body.as_str().to_owned());
            made.push((i, p, name, body));
        }
        // A create not recorded is not sent (its name is free again): its job's lease
        // ran out (the newer holder makes its own), or the store refused the marks
        // (then the group's other plans get that error too: each needs a result).
        let marked = self.queue.mark_creates_pending(&pending).await;
        let why = || match &marked {
            Ok(_) => JobError::LeaseLost,
            Err(e) => JobError::Transient(format!("store: {e}"), None),
        };
        let mut lost = Vec::new();
        for (k, (i, p, name, body)) in made.into_iter().enumerate() {
            match &marked {
                Ok(m) if m.get(k).copied() == Some(true) => {
                    ops.push(BatchOp::Create(body));
                    sent.push((i, p, Write::Create { name }));
                }
                _ => lost.push((i, p, name)),
            }
        }
        if !lost.is_empty() {
            let mut idx = self.index.lock().await;
            for (i, p, name) in lost {
                if let Some(idx) = idx.as_mut() {
                    idx.release(&name, &p.desired.sku, p.held);
                }
                out.push((i, Err(why())));
            }
        }
        if marked.is_err() {
            let others = named_updates.into_iter().map(|(i, _, _)| i);
            for i in others.chain(single.into_iter().map(|(i, _)| i)) {
                out.push((i, Err(why())));
            }
            return (out, stale);
        }
        let named_updates = self.still_held_of(named_updates, &mut out).await;
        for (i, mut p, name) in named_updates {
            if p.outcome.is_some() {
                p.m.status = "pending".into();
                if let Err(e) = self.record_ahead(&p).await {
                    out.push((i, Err(e)));
                    continue;
                }
            }
            let id = p.m.item_id.clone().unwrap_or_default();
            let token = p.m.sync_token.clone().unwrap_or_else(|| "0".into());
            ops.push(BatchOp::Update(ItemJson::of(
                &p.desired.with_name(name).update_body(&id, &token),
            )));
            sent.push((i, p, Write::Update));
        }
        if !ops.is_empty() {
            let keyed: Vec<(&str, &BatchOp)> = sent
                .iter()
                .map(|(_, p, _)| p.desired.sku.as_str())
                .zip(ops.iter())
                .collect();
            let rid = batch_request_id(&keyed);
            match self.qb.batch(&ops, &rid).await {
                Err(e) => {
                    // Creates stay pending (and their names reserved): the retry finds
                    // what this batch did, if it did anything.
                    for (i, _, _) in sent {
                        out.push((i, Err(JobError::from(e.clone()))));
                    }
                }
                Ok(answers) => {
                    let mut idx = self.index.lock().await;
                    for ((i, mut p, write), answer) in sent.into_iter().zip(answers) {
                        let pid = p.desired.sku.clone();
                        match (write, answer) {
                            (Write::Create { .. }, BatchAnswer::Item(item)) => {
                                if let Some(idx) = idx.as_mut() {
                                    idx.learn(item.clone());
                                }
                                self.remember(&item, &pid);
                                p.m.pending_request_id = None;
                                p.m.pending_body = None;
                                p.m.item_id = Some(item.id.clone());
                                p.m.sync_token = Some(item.sync_token.clone());
                                p.m.item_name = Some(item.name.clone());
                                if in_line(&item, &p.desired) {
                                    p.m.synced_hash = Some(p.hash.clone());
                                }
                                p.outcome = Some(Outcome::Created {
                                    item_id: item.id,
                                    name: item.name,
                                });
                                if p.is_synced() {
                                    out.push((i, Ok(p.done())));
                                } else {
                                    single.push((i, p));
                                }
                            }
                            (Write::Create { name }, BatchAnswer::Fault(e)) => {
                                if let Some(idx) = idx.as_mut() {
                                    idx.release(&name, &pid, p.held);
                                }
                                if e.code() == Some("6240") {
                                    // Taken since the index was read (by another, or by
                                    // a batch of ours that was lost): look it up.
                                    p.m.pending_request_id = None;
                                    p.m.pending_body = None;
                                    single.push((i, p));
                                } else {
                                    out.push((i, Err(e.into())));
                                }
                            }
                            (Write::Update, BatchAnswer::Item(item)) => {
                                if let Some(idx) = idx.as_mut() {
                                    idx.learn(item.clone());
                                }
                                self.remember(&item, &pid);
                                p.m.sync_token = Some(item.sync_token.clone());
                                p.m.item_name = Some(item.name.clone());
                                p.m.synced_hash = Some(p.hash.clone());
                                if p.outcome.is_none() {
                                    p.outcome = Some(Outcome::Updated {
                                        item_id: item.id,
                                        name: item.name,
                                    });
                                }
                                out.push((i, Ok(p.done())));
                            }
                            (Write::Update, BatchAnswer::Fault(e)) if e.code() == Some("5010") => {
                                stale.push((i, p));
                            }
                            (Write::Update, BatchAnswer::Fault(e)) if e.code() == Some("6240") => {
                                // The name taken since: the single update takes the
                                // other one.
                                single.push((i, p));
                            }
                            (Write::Update, BatchAnswer::Fault(e)) => {
                                out.push((i, Err(e.into())));
                            }
                            (_, BatchAnswer::Items(_)) => out.push((
                                i,
                                Err(JobError::from(QbError::Decode(
                                    "a query's answer to a write".into(),
                                ))),
                            )),
                        }
                    }
                }
            }
        }
        for (i, p) in single {
            out.push((i, self.complete(p).await));
        }
        (out, stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, name: &str, sku: Option<&str>) -> Item {
        Item {
            id: id.into(),
            sync_token: "0".into(),
            name: name.into(),
            sku: sku.map(str::to_owned),
            unit_price: None,
            description: None,
            active: true,
        }
    }

    #[test]
    fn an_item_learnt_again_unchanged_keeps_its_stored_copy_and_a_change_replaces_it() {
        let mut idx = ItemIndex::empty();
        idx.learn(item("1", "Mocha", Some("prod_1")));
        let stored = |idx: &ItemIndex| match &idx.by_name["mocha"] {
            Named::Item(i) => (i.name.as_ptr(), idx.by_sku["prod_1"].name.as_ptr()),
            Named::Reserved(..) => panic!("reserved"),
        };
        let before = stored(&idx);
        // What the change data capture answers for an Item this engine wrote.
        idx.learn(item("1", "Mocha", Some("prod_1")));
        assert_eq!(
            stored(&idx),
            before,
            "the equal copy was not allocated again"
        );
        let mut changed = item("1", "Mocha", Some("prod_1"));
        changed.sync_token = "1".into();
        changed.unit_price = Some(4.5);
        idx.learn(changed);
        assert_ne!(stored(&idx), before);
        assert_eq!(idx.by_sku["prod_1"].unit_price, Some(4.5));
        assert_eq!(idx.by_sku["prod_1"].sync_token, "1");
    }

    #[test]
    fn names_are_case_insensitive_and_a_rename_frees_the_old_one() {
        let mut idx = ItemIndex::empty();
        idx.learn(item("1", "Café Latte", Some("prod_1")));
        assert!(idx.held_by_other("CAFÉ LATTE", "prod_2", "9"));
        assert!(!idx.held_by_other("café latte", "prod_1", "1"));
        assert_eq!(idx.by_sku["prod_1"].id, "1");
        idx.learn(item("1", "Mocha", Some("prod_1")));
        assert!(!idx.held_by_other("Café Latte", "prod_2", "9"), "freed");
        assert!(idx.held_by_other("mocha", "prod_2", "9"));
        // A reservation holds a name for its product only, until released by the
        // lease that holds it: a worker whose lease ran out leaves its job's newer
        // holder's reservation alone.
        let lease = |lease| Some(Held { job_id: 4, lease });
        idx.reserve("té".into(), "prod_3", lease(1));
        idx.reserve("té".into(), "prod_3", lease(2));
        // The stale worker's look at the name takes nothing from the newer lease.
        idx.reserve("té".into(), "prod_3", lease(1));
        assert!(idx.held_by_other("Té", "prod_2", "9"));
        assert!(!idx.held_by_other("Té", "prod_3", ""));
        idx.release("TÉ", "prod_2", lease(2));
        assert!(
            idx.held_by_other("Té", "prod_2", "9"),
            "not prod_2's to release"
        );
        idx.release("TÉ", "prod_3", lease(1));
        assert!(
            idx.held_by_other("Té", "prod_2", "9"),
            "not the stale lease's to release"
        );
        idx.release("TÉ", "prod_3", lease(2));
        assert!(!idx.held_by_other("Té", "prod_2", "9"));
        // An earlier attempt's, by a later lease; never a later lease's, by an earlier.
        idx.reserve("té".into(), "prod_3", lease(2));
        idx.release_earlier("TÉ", "prod_3", lease(1));
        assert!(idx.held_by_other("Té", "prod_2", "9"));
        idx.release_earlier("TÉ", "prod_3", lease(3));
        assert!(!idx.held_by_other("Té", "prod_2", "9"));
    }

    #[test]
    fn a_batch_request_id_follows_its_writes_and_fits_quickbooks_limit() {
        let a = BatchOp::Create(ItemJson::of(&serde_json::json!({"Name": "a"})));
        let b = BatchOp::Update(ItemJson::of(
            &serde_json::json!({"Id": "1", "SyncToken": "0"}),
        ));
        let one = batch_request_id(&[("prod_1", &a), ("prod_2", &b)]);
        assert_eq!(one.chars().count(), 36);
        assert_eq!(one, batch_request_id(&[("prod_1", &a), ("prod_2", &b)]));
        assert_ne!(one, batch_request_id(&[("prod_2", &b), ("prod_1", &a)]));
        assert_ne!(one, batch_request_id(&[("prod_1", &a)]));
    }
}
