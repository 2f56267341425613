//! The reconciliation of Stripe and QuickBooks as front-ends see it: how many products
//! and Items agree, which do not (a product with no Item, an Item with no product, an
//! Item whose name, price or active flag drifted from its product) and the amounts
//! involved. The engine keeps it live (QuickBooks change data capture, Stripe events);
//! the snapshot carries the counts and the worst rows, a
//! [`Query::Reconciliation`](super::Query::Reconciliation) answers more rows.

use serde::{Deserialize, Serialize};

/// Rows the snapshot carries (an attached console gets them only while it shows the
/// Reconciliation screen; the API and `ctl reconcile` ask for more).
pub const RECONCILIATION_ROWS_SHOWN: usize = 50;

/// The reconciliation: its state, counts, amounts and worst rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconciliationView {
    /// False until the first full read of both sides is done.
    pub ready: bool,
    /// What it is doing or why it cannot (one line).
    pub status: String,
    /// Stripe products known (deleted ones excluded).
    pub products: u64,
    /// QuickBooks Items known.
    pub items: u64,
    /// Products whose Item agrees with them.
    pub in_sync: u64,
    /// Products that cannot become Items as they are (no name, tiered price).
    pub unsyncable: u64,
    /// Products with no Item: count, and their prices summed.
    pub missing: Tally,
    /// Items with no product: count, and their prices summed.
    pub orphans: Tally,
    /// Items that drifted: count, and the price differences summed (absolute).
    pub drifted: Tally,
    /// Of the drifted, how many differ in each field.
    pub drift_name: u64,
    pub drift_price: u64,
    pub drift_active: u64,
    /// When the last incremental refresh ended (ms since the epoch).
    pub refreshed_ms: Option<i64>,
    /// Incremental refreshes done, and what they read: QuickBooks Items changed (CDC)
    /// and Stripe events, since the full read.
    pub refreshes: u64,
    pub items_changed: u64,
    pub events_read: u64,
    /// Stripe list pages the reconciliation read: products (its full reads) and events.
    pub stripe_pages: u64,
    /// The worst discrepancies first (drift, then missing, then orphans; larger
    /// amounts first), at most what was asked.
    pub rows: Vec<Discrepancy>,
}

impl ReconciliationView {
    /// Discrepancies of every kind.
    pub fn total(&self) -> u64 {
        self.missing.count + self.orphans.count + self.drifted.count
    }
}

/// How many, and how much money (in the Items' unit-price units).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub count: u64,
    pub amount: f64,
}

/// What kind of disagreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscrepancyKind {
    /// The Item differs from its product in name, price or active flag.
    Drift,
    /// A product with no Item.
    Missing,
    /// An Item with no product.
    Orphan,
}

impl DiscrepancyKind {
    /// One word for screens and the CLI.
    pub fn word(self) -> &'static str {
        match self {
            DiscrepancyKind::Drift => "drift",
            DiscrepancyKind::Missing => "missing",
            DiscrepancyKind::Orphan => "orphan",
        }
    }
}

/// One side's view of a product: the name, unit price and active flag it has (Stripe:
/// what its Item should have).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub name: String,
    pub price: Option<f64>,
    pub active: bool,
}

/// One disagreement between Stripe and QuickBooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Discrepancy {
    pub kind: DiscrepancyKind,
    /// The Stripe product (None for an orphan Item).
    pub product_id: Option<String>,
    /// The QuickBooks Item (None for a missing one).
    pub item_id: Option<String>,
    /// Fields that differ: `name`, `price`, `active` (drift only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// What Stripe says the Item should be (None for an orphan).
    pub stripe: Option<Side>,
    /// What the Item is (None for a missing one).
    pub quickbooks: Option<Side>,
    /// The money involved: the price difference, or the price of the side there is.
    pub amount: f64,
    /// When the reconciliation first saw this disagreement (ms since the epoch).
    pub since_ms: i64,
}

impl Discrepancy {
    /// The name to show: Stripe's, else the Item's.
    pub fn name(&self) -> &str {
        self.stripe
            .as_ref()
            .or(self.quickbooks.as_ref())
            .map_or("", |s| s.name.as_str())
    }

    /// Whether a resync can fix it (an orphan has no product to write from).
    pub fn resyncable(&self) -> bool {
        self.product_id.is_some()
    }
}
