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
    /// Products with no Item: count, and their prices summed per currency.
    pub missing: Tally,
    /// Items with no product: count, and their prices summed per currency.
    pub orphans: Tally,
    /// Items that drifted: count, and the price differences summed (absolute) per
    /// currency.
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
    /// The worst discrepancies first, at most what was asked: drift, then missing,
    /// then orphans; within a kind the larger [`Discrepancy::relative`] difference
    /// first (a share, so comparable across currencies), then by currency and the
    /// larger amount within one currency. Amounts of different currencies are never
    /// compared with each other.
    pub rows: Vec<Discrepancy>,
}

impl ReconciliationView {
    /// Discrepancies of every kind.
    pub fn total(&self) -> u64 {
        self.missing.count + self.orphans.count + self.drifted.count
    }
}

/// How many, and how much money per currency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tally {
    pub count: u64,
    /// Every row's amount added up whatever its currency: meaningless as soon as
    /// `amounts` holds more than one currency. Kept only so older clients still
    /// parse; screens, `ctl` and new clients use `amounts`.
    pub amount: f64,
    /// The amounts summed per currency, by currency code.
    pub amounts: Vec<Money>,
}

impl Tally {
    /// Counts one more discrepancy of `amount` in `currency`.
    pub fn add(&mut self, currency: &str, amount: f64) {
        self.count += 1;
        self.amount += amount;
        match self
            .amounts
            .binary_search_by(|m| m.currency.as_str().cmp(currency))
        {
            Ok(i) => self.amounts[i].amount += amount,
            Err(i) => self.amounts.insert(
                i,
                Money {
                    currency: currency.to_owned(),
                    amount,
                },
            ),
        }
    }
}

/// An amount in one currency (ISO 4217 code, upper case: `COP`, `USD`, `JPY`; major
/// units, as QuickBooks' `UnitPrice`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Money {
    pub currency: String,
    pub amount: f64,
}

impl Money {
    /// `amounts` as one line: `COP 398 000.00 · USD 615.05` (`–` for none).
    pub fn list(amounts: &[Money]) -> String {
        if amounts.is_empty() {
            return "–".into();
        }
        amounts
            .iter()
            .map(Money::to_string)
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

impl std::fmt::Display for Money {
    /// `USD 1 234.50`: the code, then the amount with two decimals and thousands
    /// grouped by a space.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.currency, super::text::amount(self.amount))
    }
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
    /// The currency `price` is in (upper case). Stripe: its price's currency.
    /// QuickBooks: none — an Item has no currency of its own (its `UnitPrice` counts
    /// in the company's home currency), and the catalog writes Stripe's number into
    /// it unchanged, so both are compared in the discrepancy's `currency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
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
    /// The money involved: the price difference, or the price of the side there is,
    /// in `currency`.
    pub amount: f64,
    /// The currency of `amount`: the Stripe price's (the number the catalog copies
    /// into the Item), or for an Item with no Stripe price the company's home
    /// currency. Empty from an engine older than this field.
    #[serde(default)]
    pub currency: String,
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

    /// How wrong it is as a share of the price, 0–1, comparable across currencies:
    /// the whole price (1) for a product with no Item, an Item with no product or an
    /// active flag that differs (the Item is sold when it should not be, or not when
    /// it should); for a price drift the difference over the larger of both prices;
    /// for a drift of the name alone, 0.
    pub fn relative(&self) -> f64 {
        let has = |f: &str| self.fields.iter().any(|x| x == f);
        match self.kind {
            DiscrepancyKind::Missing | DiscrepancyKind::Orphan => 1.0,
            DiscrepancyKind::Drift if has("active") => 1.0,
            DiscrepancyKind::Drift if !has("price") => 0.0,
            DiscrepancyKind::Drift => {
                let p = |s: &Option<Side>| s.as_ref().and_then(|s| s.price).unwrap_or(0.0);
                let (want, have) = (p(&self.stripe), p(&self.quickbooks));
                let larger = want.abs().max(have.abs());
                if larger > 0.0 {
                    ((want - have).abs() / larger).min(1.0)
                } else {
                    0.0
                }
            }
        }
    }

    /// Which side is inactive, in words, when the active flags differ.
    pub fn inactive_side(&self) -> Option<&'static str> {
        let active = |s: &Option<Side>| s.as_ref().map(|s| s.active);
        match (active(&self.stripe), active(&self.quickbooks)) {
            (Some(false), Some(true)) => Some("Stripe"),
            (Some(true), Some(false)) => Some("QuickBooks"),
            _ => None,
        }
    }

    /// Whether a resync can fix it (an orphan has no product to write from).
    pub fn resyncable(&self) -> bool {
        self.product_id.is_some()
    }
}
