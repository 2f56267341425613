//! Live reconciliation of Stripe and QuickBooks: which products have no Item, which
//! Items have no product, and which Items drifted from their product (name, price,
//! active flag) — with counts and the amounts involved.
//!
//! Both sides are read in full once (Stripe products 100 a page with their prices
//! expanded, QuickBooks Items 1,000 a page), then kept up to date incrementally, never
//! by reading everything again: QuickBooks' change data capture (`GET …/cdc?entities=
//! Item&changedSince=`, one request a refresh whatever the company's size, from the
//! server time of the previous answer) and Stripe's `/v1/events` after the newest one
//! seen (a product named in a `product.*` or `price.*` event is read again, alone).
//! Only when a side cannot be followed any more (a checkpoint older than either API's
//! 30-day window) is that side read in full again.
//!
//! It starts once the catalog's first full sync is done, and only reads; a resync (one product, or every drifted and missing one) marks the
//! product's mapping out of line and queues its catalog job, so the catalog workers
//! write the Item as for any change, with the same idempotency.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::catalog::JOB_KIND;
use super::item::{self, DesiredItem};
use crate::connectors::quickbooks::{Item, QbError, QuickBooksClient, TimedItems};
use crate::connectors::stripe::{Cursor, PriceRef, Product, StripeClient, StripeError};
use crate::protocol::{
    Discrepancy, DiscrepancyKind, RECONCILIATION_ROWS_SHOWN, ReconciliationView, Side,
};
use crate::store::{NewJob, Store};

/// How often both sides are followed (one CDC request and one events page each time:
/// 6 of QuickBooks' 500 requests a minute).
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// Products read again at most per refresh (the rest wait for the next).
const PRODUCTS_PER_REFRESH: usize = 200;
/// Event pages read at most per refresh.
const EVENT_PAGES_PER_REFRESH: usize = 10;
/// CDC reads at most per refresh (1,000 Items each).
const CDC_READS_PER_REFRESH: usize = 5;
/// Products at most looked up in the store's mapping when their Item has no Sku.
const MAPPING_LOOKUPS: usize = 5_000;
/// The currency an Item's `UnitPrice` counts in when there is no Stripe price to take
/// one from (an Item with no product): the company's home currency. QuickBooks Items
/// have no currency of their own; the company issues its invoices to DIAN in COP, so
/// its books are kept in COP.
pub const QUICKBOOKS_HOME_CURRENCY: &str = "COP";

/// What a Stripe product asks of its Item, or why it cannot have one.
#[derive(Debug, Clone)]
enum Wanted {
    Item(Side),
    Unsyncable,
}

#[derive(Debug, Clone)]
struct Held {
    side: Side,
    sku: Option<String>,
}

/// Both sides as last read, and where to follow each from.
#[derive(Default)]
struct Sides {
    products: HashMap<String, Wanted>,
    /// Products deleted in Stripe (their Items should be inactive).
    deleted: HashSet<String>,
    items: HashMap<String, Held>,
    /// The newest Stripe event taken ("" when there was none at the full read).
    events_after: Option<String>,
    /// The server time the next change data capture starts from.
    cdc_since: Option<String>,
    /// Products named by an event since, to read again.
    dirty: HashSet<String>,
    /// When each disagreement was first seen, by `product:ID` / `item:ID`.
    first_seen: HashMap<String, i64>,
    /// A side that must be read in full again.
    reread_products: bool,
    reread_items: bool,
}

pub struct Reconciler {
    store: Store,
    stripe: StripeClient,
    qb: QuickBooksClient,
    every: Duration,
    sides: tokio::sync::Mutex<Sides>,
    /// The view with every row, rebuilt after each refresh.
    view: Mutex<ReconciliationView>,
    wake: Notify,
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("Stripe: {0}")]
    Stripe(#[from] StripeError),
    #[error("QuickBooks: {0}")]
    QuickBooks(#[from] QbError),
}

impl Reconciler {
    pub fn new(store: Store, stripe: StripeClient, qb: QuickBooksClient, every: Duration) -> Self {
        Self {
            store,
            stripe,
            qb,
            every,
            sides: tokio::sync::Mutex::new(Sides::default()),
            view: Mutex::new(ReconciliationView {
                status: "starting: reading Stripe's products and QuickBooks' Items".into(),
                ..Default::default()
            }),
            wake: Notify::new(),
        }
    }

    /// The view with at most `limit` rows.
    pub fn view(&self, limit: usize) -> ReconciliationView {
        let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        // Every row stays here; only those asked for are copied.
        let rows = std::mem::take(&mut v.rows);
        let mut out = v.clone();
        out.rows = rows.iter().take(limit).cloned().collect();
        v.rows = rows;
        out
    }

    /// The disagreement the last refresh saw about `key` (a Stripe product or a
    /// QuickBooks Item), if any: what the entity chain shows as its live field diff.
    pub fn discrepancy_of(&self, key: &str) -> Option<Discrepancy> {
        let v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        v.rows
            .iter()
            .find(|d| d.product_id.as_deref() == Some(key) || d.item_id.as_deref() == Some(key))
            .cloned()
    }

    /// Whether the reconciliation has read both sides in full at least once (before,
    /// "no disagreement" means "not known yet").
    pub fn ready(&self) -> bool {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).ready
    }

    /// The view as the snapshot carries it.
    pub fn snapshot_view(&self) -> ReconciliationView {
        self.view(RECONCILIATION_ROWS_SHOWN)
    }

    /// One more Stripe list page read.
    fn count_page(&self) {
        self.view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stripe_pages += 1;
    }

    fn set_status(&self, status: String) {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).status = status;
    }

    /// What a box that does not lead its company does (see
    /// [`crate::store::pg_leader`]): says so, and reads nothing, until `cancel`.
    pub async fn follow(&self, cancel: CancellationToken) {
        self.set_status(
            "another engine on the shared store leads this company: it reads both sides (its view has the rows); this one takes over if it stops"
                .into(),
        );
        cancel.cancelled().await;
    }

    /// Once the catalog's first full sync is done (before, every product would show as
    /// missing, and both sides would be read twice over), reads both sides, then
    /// follows them until `cancel`.
    pub async fn run(&self, catalog: &super::catalog::Catalog, cancel: CancellationToken) {
        loop {
            let sync = catalog
                .metrics
                .full_sync
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if sync.done {
                break;
            }
            self.set_status(format!(
                "waiting for the catalog's full sync ({} products listed): then both sides are read once",
                sync.listed
            ));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        self.set_status("reading Stripe's products and QuickBooks' Items once".into());
        let mut failures = 0u32;
        loop {
            let read = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.full_read() => r,
            };
            match read {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_secs((2u64 << failures.min(5)).min(60));
                    self.set_status(format!(
                        "cannot read yet ({e}); trying again in {}s",
                        wait.as_secs()
                    ));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
                _ = self.wake.notified() => {}
            }
            let r = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.refresh() => r,
            };
            if let Err(e) = r {
                self.set_status(format!(
                    "behind: {e}; trying again in {}s",
                    self.every.as_secs()
                ));
            }
        }
    }

    /// The first read: the events checkpoint (before the products, so no change made
    /// while listing is missed), every product, every Item.
    async fn full_read(&self) -> Result<(), ReadError> {
        let mut sides = self.sides.lock().await;
        self.read_products(&mut sides).await?;
        self.read_items(&mut sides).await?;
        self.rebuild(&mut sides);
        Ok(())
    }

    async fn read_products(&self, sides: &mut Sides) -> Result<(), ReadError> {
        let newest = self.stripe.list_events(&Cursor::Start, 1).await?;
        self.count_page();
        let after = newest
            .data
            .first()
            .map(|e| e.id.clone())
            .unwrap_or_default();
        let mut products = HashMap::new();
        let mut cursor = Cursor::Start;
        loop {
            let page = self.stripe.list_products(&cursor, 100).await?;
            self.count_page();
            for p in &page.data {
                products.insert(p.id.clone(), wanted(p));
            }
            match page.data.last() {
                Some(last) if page.has_more => cursor = Cursor::After(last.id.clone()),
                _ => break,
            }
        }
        sides.products = products;
        sides.deleted.clear();
        sides.dirty.clear();
        sides.events_after = Some(after);
        sides.reread_products = false;
        Ok(())
    }

    async fn read_items(&self, sides: &mut Sides) -> Result<(), ReadError> {
        let mut items = HashMap::new();
        let mut since = None;
        let mut start = 1;
        loop {
            let page = self.qb.all_items_timed(start, 1000).await?;
            if since.is_none() {
                since = page.time.clone();
            }
            let n = page.items.len();
            for i in page.items {
                items.insert(i.id.clone(), held(&i));
            }
            if n < 1000 {
                break;
            }
            start += n;
        }
        sides.items = items;
        sides.cdc_since = since;
        sides.reread_items = false;
        Ok(())
    }

    /// One incremental pass: Stripe events, the products they name, QuickBooks' CDC.
    async fn refresh(&self) -> Result<(), ReadError> {
        let mut sides = self.sides.lock().await;
        if sides.reread_products {
            self.read_products(&mut sides).await?;
        }
        if sides.reread_items {
            self.read_items(&mut sides).await?;
        }
        let events = self.follow_events(&mut sides).await?;
        let mut dirty: Vec<String> = sides.dirty.iter().cloned().collect();
        dirty.sort();
        dirty.truncate(PRODUCTS_PER_REFRESH);
        for id in dirty {
            match self.stripe.product(&id).await {
                Ok(p) if p.deleted => {
                    sides.products.remove(&id);
                    sides.deleted.insert(id.clone());
                }
                Ok(p) => {
                    sides.deleted.remove(&id);
                    sides.products.insert(id.clone(), wanted(&p));
                }
                Err(StripeError::Api { status: 404, .. }) => {
                    sides.products.remove(&id);
                    sides.deleted.insert(id.clone());
                }
                Err(e) => return Err(e.into()),
            }
            sides.dirty.remove(&id);
        }
        let changed = self.follow_items(&mut sides).await?;
        self.rebuild(&mut sides);
        let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        v.refreshes += 1;
        v.events_read += events;
        v.items_changed += changed;
        Ok(())
    }

    /// Reads the events after the checkpoint, noting the products they name.
    async fn follow_events(&self, sides: &mut Sides) -> Result<u64, ReadError> {
        let Some(mut after) = sides.events_after.clone() else {
            return Ok(0);
        };
        let mut read = 0u64;
        for _ in 0..EVENT_PAGES_PER_REFRESH {
            let cursor = if after.is_empty() {
                Cursor::Start
            } else {
                Cursor::Before(after.clone())
            };
            self.count_page();
            let page = match self.stripe.list_events(&cursor, 100).await {
                Ok(p) => p,
                Err(StripeError::Api {
                    code: Some(code), ..
                }) if code == "resource_missing" => {
                    // Out of Stripe's 30-day window: read the products again.
                    sides.reread_products = true;
                    return Ok(read);
                }
                Err(e) => return Err(e.into()),
            };
            read += page.data.len() as u64;
            for e in &page.data {
                if let Some(id) = product_of_event(&e.kind, &e.data.object) {
                    sides.dirty.insert(id);
                }
            }
            // Pages come newest first: the first event is the newest of this page.
            if let Some(first) = page.data.first() {
                after = first.id.clone();
            }
            sides.events_after = Some(after.clone());
            if !page.has_more || page.data.is_empty() || after.is_empty() {
                break;
            }
        }
        Ok(read)
    }

    /// Reads the Items changed since the last answer (QuickBooks' change data capture).
    async fn follow_items(&self, sides: &mut Sides) -> Result<u64, ReadError> {
        let Some(mut since) = sides.cdc_since.clone() else {
            sides.reread_items = true;
            return Ok(0);
        };
        let mut changed = 0u64;
        for _ in 0..CDC_READS_PER_REFRESH {
            let TimedItems {
                items,
                updated,
                time,
            } = match self.qb.changed_items(&since).await {
                Ok(t) => t,
                Err(e) if matches!(e.code(), Some("2010")) => {
                    // Too far back (or not understood): read every Item again.
                    sides.reread_items = true;
                    return Ok(changed);
                }
                Err(e) => return Err(e.into()),
            };
            let full = items.len() >= 1000;
            changed += items.len() as u64;
            let last = updated.last().cloned().flatten();
            for i in items {
                sides.items.insert(i.id.clone(), held(&i));
            }
            if full {
                // More changed than one answer holds: go on from the last one's time.
                match last {
                    Some(t) if t != since => since = t,
                    _ => {
                        sides.reread_items = true;
                        break;
                    }
                }
            } else {
                if let Some(t) = time {
                    since = t;
                }
                break;
            }
        }
        sides.cdc_since = Some(since);
        Ok(changed)
    }

    /// Compares both sides and publishes the result.
    fn rebuild(&self, sides: &mut Sides) {
        let now = self.store.now_ms();
        let mut lookups = 0;
        let store = &self.store;
        let mut mapped = |pid: &str| {
            if lookups >= MAPPING_LOOKUPS {
                return None;
            }
            lookups += 1;
            store.mapping(pid).ok().flatten().and_then(|m| m.item_id)
        };
        let (mut view, mut rows) = compare(sides, &mut mapped, now);
        let keys: HashSet<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        sides.first_seen.retain(|k, _| keys.contains(k.as_str()));
        for (key, d) in &mut rows {
            d.since_ms = *sides.first_seen.entry(key.clone()).or_insert(now);
        }
        tally(&mut view, rows.into_iter().map(|(_, d)| d).collect());
        view.ready = true;
        view.refreshed_ms = Some(now);
        view.status = if view.total() == 0 {
            "live: Stripe and QuickBooks agree".into()
        } else {
            "live".into()
        };
        let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        view.refreshes = v.refreshes;
        view.items_changed = v.items_changed;
        view.events_read = v.events_read;
        view.stripe_pages = v.stripe_pages;
        *v = view;
    }

    /// Products a resync of `key` (one product) or of everything drifted or missing
    /// (`None`) would write.
    pub fn resync_targets(&self, key: Option<&str>) -> Result<Vec<String>, String> {
        let v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        if !v.ready {
            return Err(format!(
                "the reconciliation is not ready yet ({})",
                v.status
            ));
        }
        match key {
            Some(k) => {
                let known = v.rows.iter().any(|d| d.product_id.as_deref() == Some(k));
                drop(v);
                let listed = self
                    .sides
                    .try_lock()
                    .map(|s| s.products.contains_key(k))
                    .unwrap_or(true);
                if known || listed {
                    Ok(vec![k.to_owned()])
                } else {
                    Err(format!(
                        "product {k:?} is not a Stripe product the reconciliation knows"
                    ))
                }
            }
            None => {
                let mut out: Vec<String> = v
                    .rows
                    .iter()
                    .filter(|d| d.kind != DiscrepancyKind::Orphan)
                    .filter_map(|d| d.product_id.clone())
                    .collect();
                out.dedup();
                Ok(out)
            }
        }
    }

    /// Writes these products' Items again: each mapping is marked out of line (so the
    /// worker does not trust what it last recorded, nor a job under way that read it
    /// before: see [`crate::store::ItemMapping::resyncs`]), then its job queued. Wakes
    /// the reconciliation so the fix shows soon.
    /// (The mappings and jobs are `queue`'s: the store's own, or shared on Postgres.)
    pub fn resync(
        &self,
        queue: &crate::store::queue::JobQueue,
        products: &[String],
    ) -> Result<usize, String> {
        // (Only the hash: a mapping read and written back whole wiped a pending create
        // a worker recorded in between, and put back the SyncToken it read.)
        queue
            .block_on(queue.mark_out_of_line(products))
            .map_err(|e| format!("the store: {e}"))?;
        let jobs: Vec<NewJob<'_>> = products
            .iter()
            .map(|key| NewJob {
                kind: JOB_KIND,
                key,
                payload: None,
                version: 0,
            })
            .collect();
        queue
            .block_on(queue.ingest(&jobs, None, None))
            .map_err(|e| format!("the store: {e}"))?;
        self.wake.notify_one();
        Ok(products.len())
    }
}

/// Item ids by their Sku (two Items with one Sku: the lower id, the first, is the
/// product's).
fn items_by_sku(items: &HashMap<String, Held>) -> HashMap<&str, &str> {
    let mut by_sku: HashMap<&str, &str> = HashMap::new();
    for (id, h) in items {
        if let Some(sku) = h.sku.as_deref().filter(|s| !s.is_empty()) {
            by_sku
                .entry(sku)
                .and_modify(|cur| {
                    if id_order(id) < id_order(cur) {
                        *cur = id;
                    }
                })
                .or_insert(id);
        }
    }
    by_sku
}

/// Pairs each product with its Item (by Sku, else by the store's mapping: `mapped`)
/// and compares them: the view's counts of products, Items and those in sync, and every
/// discrepancy keyed `product:ID` / `item:ID` (first seen `now`).
#[expect(
    clippy::too_many_lines,
    reason = "one pass over both sides, each kind of disagreement where it is found"
)]
fn compare(
    sides: &Sides,
    mapped: &mut dyn FnMut(&str) -> Option<String>,
    now: i64,
) -> (ReconciliationView, Vec<(String, Discrepancy)>) {
    let by_sku = items_by_sku(&sides.items);
    let mut paired: HashSet<&str> = HashSet::new();
    let mut rows: Vec<(String, Discrepancy)> = Vec::new();
    let mut view = ReconciliationView::default();
    let row =
        |kind, pid: Option<&str>, item: Option<&str>, fields, stripe: Option<Side>, qb, amount| {
            Discrepancy {
                kind,
                product_id: pid.map(str::to_owned),
                item_id: item.map(str::to_owned),
                fields,
                currency: currency_of(stripe.as_ref()),
                stripe,
                quickbooks: qb,
                amount,
                since_ms: now,
            }
        };
    for (pid, w) in &sides.products {
        view.products += 1;
        let Wanted::Item(want) = w else {
            view.unsyncable += 1;
            continue;
        };
        let item = match by_sku.get(pid.as_str()) {
            Some(id) => Some((*id).to_owned()),
            None => mapped(pid).filter(|id| sides.items.contains_key(id)),
        };
        let Some((item_id, have)) = item.and_then(|id| sides.items.get_key_value(&id)) else {
            let price = want.price.unwrap_or(0.0);
            let d = row(
                DiscrepancyKind::Missing,
                Some(pid),
                None,
                Vec::new(),
                Some(want.clone()),
                None,
                price,
            );
            rows.push((format!("product:{pid}"), d));
            continue;
        };
        paired.insert(item_id);
        let have = &have.side;
        let fields = drift(pid, want, have);
        if fields.is_empty() {
            view.in_sync += 1;
            continue;
        }
        let amount = if fields.iter().any(|f| f == "price") {
            (want.price.unwrap_or(0.0) - have.price.unwrap_or(0.0)).abs()
        } else {
            want.price.unwrap_or(0.0)
        };
        let d = row(
            DiscrepancyKind::Drift,
            Some(pid),
            Some(item_id),
            fields,
            Some(want.clone()),
            Some(have.clone()),
            amount,
        );
        rows.push((format!("product:{pid}"), d));
    }
    for (id, h) in &sides.items {
        view.items += 1;
        let sku = h.sku.as_deref().unwrap_or("");
        if paired.contains(id.as_str()) || sides.products.contains_key(sku) {
            // Paired, or a second Item carrying a product's Sku.
            continue;
        }
        let price = h.side.price.unwrap_or(0.0);
        if sides.deleted.contains(sku) {
            // The Item of a product deleted in Stripe: it should be inactive.
            if h.side.active {
                let want = Side {
                    active: false,
                    ..h.side.clone()
                };
                let d = row(
                    DiscrepancyKind::Drift,
                    Some(sku),
                    Some(id),
                    vec!["active".into()],
                    Some(want),
                    Some(h.side.clone()),
                    price,
                );
                rows.push((format!("item:{id}"), d));
            }
        } else if h.side.active {
            // (An inactive Item with no product is retired, not a disagreement.)
            let d = row(
                DiscrepancyKind::Orphan,
                None,
                Some(id),
                Vec::new(),
                None,
                Some(h.side.clone()),
                price,
            );
            rows.push((format!("item:{id}"), d));
        }
    }
    (view, rows)
}

/// The currency a discrepancy's amount counts in: the catalog copies Stripe's number
/// into the Item, so the Stripe price's currency; else (no price, no product) the
/// company's home currency.
fn currency_of(stripe: Option<&Side>) -> String {
    stripe
        .and_then(|s| s.currency.clone())
        .unwrap_or_else(|| QUICKBOOKS_HOME_CURRENCY.to_owned())
}

/// Counts and sums the discrepancies into `view` (amounts per currency) and keeps
/// them, worst first: drift, then missing, then orphans; within a kind the larger
/// relative difference first (a share of the price, so a USD and a COP drift compare
/// fairly), then by currency, the larger amount first within one currency.
fn tally(view: &mut ReconciliationView, mut rows: Vec<Discrepancy>) {
    for d in &rows {
        let t = match d.kind {
            DiscrepancyKind::Drift => {
                for f in &d.fields {
                    match f.as_str() {
                        "name" => view.drift_name += 1,
                        "price" => view.drift_price += 1,
                        _ => view.drift_active += 1,
                    }
                }
                &mut view.drifted
            }
            DiscrepancyKind::Missing => &mut view.missing,
            DiscrepancyKind::Orphan => &mut view.orphans,
        };
        t.add(&d.currency, d.amount);
    }
    rows.sort_by(|a, b| {
        a.kind
            .cmp(&b.kind)
            .then(b.relative().total_cmp(&a.relative()))
            .then_with(|| a.currency.cmp(&b.currency))
            .then(b.amount.total_cmp(&a.amount))
            .then_with(|| a.name().cmp(b.name()))
            .then_with(|| a.product_id.cmp(&b.product_id))
            .then_with(|| a.item_id.cmp(&b.item_id))
    });
    view.rows = rows;
}

/// Item ids are numbers in QuickBooks: order them as numbers.
fn id_order(id: &str) -> (usize, &str) {
    (id.len(), id)
}

fn held(i: &Item) -> Held {
    Held {
        side: Side {
            name: i.name.clone(),
            price: i.unit_price,
            active: i.active,
            currency: None,
        },
        sku: i.sku.clone(),
    }
}

/// What a product asks of its Item (as the catalog would write it).
fn wanted(p: &Product) -> Wanted {
    let currency = match &p.default_price {
        Some(PriceRef::Expanded(price)) => Some(price.currency.to_uppercase()),
        _ => None,
    };
    match DesiredItem::from_product(p, None) {
        Ok(d) => Wanted::Item(Side {
            currency: currency.filter(|_| d.unit_price.is_some()),
            name: d.name,
            price: d.unit_price,
            active: d.active,
        }),
        Err(_) => Wanted::Unsyncable,
    }
}

/// Fields of `have` that differ from `want` (a name the catalog disambiguated with the
/// product id is the product's name).
fn drift(pid: &str, want: &Side, have: &Side) -> Vec<String> {
    let mut out = Vec::new();
    if have.name != want.name && have.name != item::disambiguated_name(&want.name, pid) {
        out.push("name".to_owned());
    }
    if (have.price.unwrap_or(0.0) - want.price.unwrap_or(0.0)).abs() >= 0.005 {
        out.push("price".to_owned());
    }
    if have.active != want.active {
        out.push("active".to_owned());
    }
    out
}

/// The product a catalog event is about.
fn product_of_event(kind: &str, object: &Value) -> Option<String> {
    match kind {
        "product.created" | "product.updated" | "product.deleted" => {
            object["id"].as_str().map(str::to_owned)
        }
        "price.created" | "price.updated" | "price.deleted" => {
            object["product"].as_str().map(str::to_owned)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Money;

    fn side(name: &str, price: f64, active: bool) -> Side {
        Side {
            name: name.into(),
            price: Some(price),
            active,
            currency: Some("USD".into()),
        }
    }

    #[test]
    fn drift_names_each_field_that_differs() {
        let want = side("Café", 12.5, true);
        assert!(drift("prod_1", &want, &want).is_empty());
        let renamed = side("Cafe", 12.5, true);
        assert_eq!(drift("prod_1", &want, &renamed), ["name"]);
        let alt = side(&item::disambiguated_name("Café", "prod_1"), 12.5, true);
        assert!(drift("prod_1", &want, &alt).is_empty());
        assert_eq!(
            drift("prod_1", &want, &side("Café", 10.0, false)),
            ["price", "active"]
        );
        // A cent's rounding is no drift.
        assert!(drift("prod_1", &want, &side("Café", 12.501, true)).is_empty());
    }

    fn held_item(name: &str, price: f64, active: bool, sku: Option<&str>) -> Held {
        Held {
            // An Item has no currency of its own.
            side: Side {
                currency: None,
                ..side(name, price, active)
            },
            sku: sku.map(str::to_owned),
        }
    }

    #[test]
    fn products_and_items_pair_by_sku_or_mapping_and_each_disagreement_is_kept() {
        let mut sides = Sides::default();
        let want = |n: &str, p: f64| Wanted::Item(side(n, p, true));
        sides.products.insert("prod_ok".into(), want("Uno", 10.0));
        sides
            .products
            .insert("prod_drift".into(), want("Dos", 20.0));
        sides
            .products
            .insert("prod_missing".into(), want("Tres", 30.0));
        sides
            .products
            .insert("prod_mapped".into(), want("Cuatro", 40.0));
        sides.products.insert("prod_bad".into(), Wanted::Unsyncable);
        sides.deleted.insert("prod_gone".into());
        let items = [
            ("1", held_item("Uno", 10.0, true, Some("prod_ok"))),
            ("2", held_item("Dos", 18.5, true, Some("prod_drift"))),
            ("3", held_item("Cuatro", 40.0, true, None)),
            ("4", held_item("Hecho a mano", 5.0, true, None)),
            ("5", held_item("Retirado", 6.0, false, None)),
            ("6", held_item("Borrado", 7.0, true, Some("prod_gone"))),
            // A second Item with a product's Sku: not that product's, not an orphan.
            ("7", held_item("Uno otra vez", 10.0, true, Some("prod_ok"))),
        ];
        for (id, h) in items {
            sides.items.insert(id.into(), h);
        }
        let mut mapped = |pid: &str| (pid == "prod_mapped").then(|| "3".to_owned());
        let (mut view, rows) = compare(&sides, &mut mapped, 1_000);
        tally(&mut view, rows.into_iter().map(|(_, d)| d).collect());
        assert_eq!((view.products, view.items), (5, 7));
        assert_eq!((view.in_sync, view.unsyncable), (2, 1));
        let kinds: Vec<(DiscrepancyKind, Option<&str>, Option<&str>, f64)> = view
            .rows
            .iter()
            .map(|d| {
                (
                    d.kind,
                    d.product_id.as_deref(),
                    d.item_id.as_deref(),
                    d.amount,
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (DiscrepancyKind::Drift, Some("prod_gone"), Some("6"), 7.0),
                (DiscrepancyKind::Drift, Some("prod_drift"), Some("2"), 1.5),
                (DiscrepancyKind::Missing, Some("prod_missing"), None, 30.0),
                (DiscrepancyKind::Orphan, None, Some("4"), 5.0),
            ]
        );
        assert_eq!(view.rows[0].fields, ["active"]);
        assert_eq!(view.drifted.count, 2);
        // The Item of a deleted product has no Stripe price: the home currency.
        assert_eq!(
            view.drifted.amounts,
            [
                Money {
                    currency: "COP".into(),
                    amount: 7.0
                },
                Money {
                    currency: "USD".into(),
                    amount: 1.5
                }
            ]
        );
        assert_eq!((view.missing.count, view.orphans.count), (1, 1));
        assert_eq!(
            (view.drift_price, view.drift_active, view.drift_name),
            (1, 1, 0)
        );
    }

    #[test]
    fn amounts_are_summed_per_currency_and_ranked_by_relative_difference() {
        let mut sides = Sides::default();
        let priced = |n: &str, p: f64, cur: &str| Side {
            currency: Some(cur.into()),
            ..side(n, p, true)
        };
        // A large COP difference that is a small share of its price, and a small USD
        // difference that is most of its price.
        sides.products.insert(
            "prod_cop".into(),
            Wanted::Item(priced("Café", 398_000.0, "COP")),
        );
        sides.products.insert(
            "prod_usd".into(),
            Wanted::Item(priced("Tea", 615.05, "USD")),
        );
        sides.products.insert(
            "prod_jpy".into(),
            Wanted::Item(priced("Sake", 3_000.0, "JPY")),
        );
        sides.items.insert(
            "1".into(),
            held_item("Café", 390_000.0, true, Some("prod_cop")),
        );
        sides
            .items
            .insert("2".into(), held_item("Tea", 13.5, true, Some("prod_usd")));
        let (mut view, rows) = compare(&sides, &mut |_| None, 0);
        tally(&mut view, rows.into_iter().map(|(_, d)| d).collect());
        let order: Vec<(&str, &str)> = view
            .rows
            .iter()
            .map(|d| (d.product_id.as_deref().unwrap_or(""), d.currency.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("prod_usd", "USD"),
                ("prod_cop", "COP"),
                ("prod_jpy", "JPY")
            ]
        );
        let money = |c: &str, a: f64| Money {
            currency: c.into(),
            amount: a,
        };
        assert_eq!(
            view.drifted.amounts,
            [money("COP", 8_000.0), money("USD", 601.55)]
        );
        assert_eq!(view.missing.amounts, [money("JPY", 3_000.0)]);
    }

    #[test]
    fn catalog_events_name_their_product() {
        let p = serde_json::json!({"id": "prod_1"});
        let price = serde_json::json!({"id": "price_1", "product": "prod_2"});
        assert_eq!(
            product_of_event("product.updated", &p).as_deref(),
            Some("prod_1")
        );
        assert_eq!(
            product_of_event("price.created", &price).as_deref(),
            Some("prod_2")
        );
        assert_eq!(product_of_event("invoice.paid", &p), None);
    }
}
