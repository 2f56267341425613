//! The built-in simulator of Stripe and QuickBooks Online (Alegra/DIAN come later):
//! same paths, auth, pagination, error shapes and quirks as the real APIs (see
//! docs/apis.md), under one loopback base URL. The engine cannot tell it from the real
//! services except by that URL. It must never take shortcuts into the engine.
//!
//! Real paths do not collide (`/v1/…` Stripe, `/v3/company/…` QuickBooks,
//! `/oauth2/v1/tokens/bearer` Intuit OAuth), so every service is mounted at the root.
//! `/_sandbox/…` reads counters and turns knobs.
//!
//! Its world survives restarts when given a directory: a JSON snapshot plus an
//! append-only journal written before each response, so even a `kill -9` keeps every
//! write a client saw acknowledged, as a real service would.

// Handlers return `Result<_, Response>` to answer early with an API error, the usual
// axum shape; the error is the response itself, so boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub mod alegra;
pub mod data;
pub mod faults;
mod quickbooks;
mod stripe;

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use data::Rng;

pub const STRIPE_API_KEY: &str = "sk_test_syncctl_sandbox";
pub const QB_CLIENT_ID: &str = "ABsandboxClientId";
pub const QB_CLIENT_SECRET: &str = "sandbox-client-secret";
pub const QB_REALM_ID: &str = "9341453050289485";
pub const ACCESS_TOKEN_TTL_SECS: i64 = 3600;

/// How a sandbox world is made and behaves.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub products: usize,
    pub seed: u64,
    pub latency_ms: u64,
    pub change_interval_ms: u64,
    pub dir: Option<PathBuf>,
    /// Where webhooks go; `{company}` in it is replaced by the sending company's id.
    pub webhook_url: Option<String>,
    pub faults: std::collections::BTreeMap<String, faults::FaultSettings>,
    /// Simulated companies, each with its own Stripe account, QuickBooks realm and
    /// Alegra account (and its own quotas). 1: today's single company.
    pub companies: usize,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            products: 100,
            seed: 42,
            latency_ms: 0,
            change_interval_ms: 0,
            dir: None,
            webhook_url: None,
            faults: Default::default(),
            companies: 1,
        }
    }
}

/// Companies a sandbox simulates at most.
pub const MAX_COMPANIES: usize = 64;

/// Who company `k` (1-based) of `n` is: its id, name and credentials. Company 1 keeps
/// the single-company constants (so one-company configs keep working); companies 2..n
/// derive theirs from `k`. The Intuit app (client id and secret) is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompanyKeys {
    /// 1-based.
    pub k: usize,
    /// `default` when the sandbox has one company, else `co1`..`coN`.
    pub id: String,
    pub name: String,
    pub realm_id: String,
    pub stripe_api_key: String,
    pub alegra_email: String,
    pub alegra_token: String,
}

impl CompanyKeys {
    pub fn of(k: usize, n: usize) -> Self {
        let first = k <= 1;
        Self {
            k,
            id: if n <= 1 {
                "default".to_owned()
            } else {
                format!("co{k}")
            },
            name: format!("Sandbox company {k}"),
            realm_id: if first {
                QB_REALM_ID.to_owned()
            } else {
                (9_341_453_050_289_485u64 + (k as u64 - 1) * 1_000_003).to_string()
            },
            stripe_api_key: if first {
                STRIPE_API_KEY.to_owned()
            } else {
                format!("{STRIPE_API_KEY}_co{k}")
            },
            alegra_email: if first {
                alegra::ALEGRA_EMAIL.to_owned()
            } else {
                format!("sandbox+co{k}@syncctl.test")
            },
            alegra_token: if first {
                alegra::ALEGRA_TOKEN.to_owned()
            } else {
                format!("{}-co{k}", alegra::ALEGRA_TOKEN)
            },
        }
    }

    /// The seed of this company's world (company 1: the sandbox's own).
    pub fn seed(&self, seed: u64) -> u64 {
        seed.wrapping_add(
            (self.k as u64)
                .saturating_sub(1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
    }

    /// Where this company's world is kept under the sandbox's `dir`: company 1 in `dir`
    /// itself (so a world saved before companies loads as company 1), company k in
    /// `dir/companies/cok`.
    pub fn dir(&self, dir: &Path) -> PathBuf {
        if self.k <= 1 {
            dir.to_path_buf()
        } else {
            dir.join("companies").join(format!("co{}", self.k))
        }
    }

    /// The `Authorization: Basic …` value of its Alegra account.
    fn alegra_basic(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.alegra_email, self.alegra_token))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub active: bool,
    pub default_price: Option<String>,
    pub created: i64,
    pub updated: i64,
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Price {
    pub id: String,
    pub product: String,
    pub unit_amount: i64,
    pub currency: String,
    pub active: bool,
    pub created: i64,
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub created: i64,
    /// Kept as the JSON text it was sent as (a parsed `Value` of a product took ~4×
    /// the memory, and a long demo holds thousands).
    pub object: Box<serde_json::value::RawValue>,
    pub previous: Option<Box<serde_json::value::RawValue>>,
    pub seq: u64,
}

/// A paid Stripe invoice in COP (amounts in cents).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invoice {
    pub id: String,
    pub number: String,
    pub customer: String,
    pub customer_name: String,
    pub tax_id: Option<String>,
    pub lines: Vec<InvoiceLine>,
    /// `IVA` (19 %) or `INC` (8 %, restaurants).
    pub tax_name: String,
    pub tax_percent: u32,
    pub created: i64,
    pub paid_at: i64,
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub id: String,
    pub product: String,
    pub price: Option<String>,
    pub description: String,
    pub quantity: i64,
    pub amount: i64,
}

/// Tax on an amount in cents, half up (Stripe and the sandbox's Alegra both round so).
pub fn tax_cents(amount: i64, percent: u32) -> i64 {
    (amount * percent as i64 + 50) / 100
}

impl Invoice {
    pub fn subtotal(&self) -> i64 {
        self.lines.iter().map(|l| l.amount).sum()
    }
    pub fn tax(&self) -> i64 {
        self.lines
            .iter()
            .map(|l| tax_cents(l.amount, self.tax_percent))
            .sum()
    }
    /// The invoice as Stripe renders it (tax rates expanded).
    pub fn json(&self) -> Value {
        let (subtotal, tax) = (self.subtotal(), self.tax());
        let tax_rate = json!({
            "id": format!("txr_{}{}", self.tax_name.to_lowercase(), self.tax_percent),
            "object": "tax_rate", "display_name": self.tax_name, "country": "CO",
            "inclusive": false, "percentage": self.tax_percent as f64,
        });
        let lines: Vec<Value> = self
            .lines
            .iter()
            .map(|l| {
                json!({
                    "id": l.id, "object": "line_item", "amount": l.amount, "currency": "cop",
                    "description": l.description, "quantity": l.quantity,
                    "price": l.price.as_ref().map(|p| json!({"id": p, "object": "price", "product": l.product})),
                    "tax_amounts": [{"amount": tax_cents(l.amount, self.tax_percent), "inclusive": false, "tax_rate": tax_rate["id"]}],
                })
            })
            .collect();
        let tax_ids: Vec<Value> = self
            .tax_id
            .iter()
            .map(|v| json!({"type": "co_nit", "value": v}))
            .collect();
        json!({
            "id": self.id, "object": "invoice", "number": self.number, "customer": self.customer,
            "customer_name": self.customer_name, "customer_tax_ids": tax_ids,
            "currency": "cop", "status": "paid", "paid": true, "livemode": false,
            "subtotal": subtotal, "tax": tax, "total": subtotal + tax, "amount_paid": subtotal + tax,
            "total_tax_amounts": [{"amount": tax, "inclusive": false, "tax_rate": tax_rate}],
            "lines": {"object": "list", "data": lines, "has_more": false, "url": format!("/v1/invoices/{}/lines", self.id)},
            "created": self.created, "status_transitions": {"paid_at": self.paid_at, "finalized_at": self.created},
            "metadata": {},
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub id: u64,
    pub sync_token: u64,
    pub name: String,
    pub sku: Option<String>,
    pub description: Option<String>,
    pub unit_price: Option<f64>,
    pub active: bool,
    pub item_type: String,
    pub income_account: Option<String>,
    pub created: String,
    pub updated: String,
}

/// Counters `/_sandbox/stats` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub stripe_requests: u64,
    /// Catalog list pages (products, prices, events); invoice pages are counted apart.
    pub stripe_list_pages: u64,
    pub stripe_invoice_pages: u64,
    pub webhooks_sent: u64,
    pub webhooks_failed: u64,
    pub qb_requests: u64,
    pub qb_creates: u64,
    pub qb_updates: u64,
    pub qb_replays: u64,
    pub qb_queries: u64,
    pub qb_auth_failures: u64,
    /// `POST …/batch` requests executed (replays and refusals left out), and the
    /// operations they carried.
    pub qb_batch_requests: u64,
    pub qb_batch_operations: u64,
    /// `GET …/cdc` requests answered.
    pub qb_cdc_requests: u64,
    pub token_refreshes: u64,
    /// Requests to the token endpoint, and those refused with `invalid_grant`.
    pub token_requests: u64,
    pub token_rejected: u64,
    /// Documents Alegra transmitted to DIAN (each stamp that reached it).
    pub alegra_stamped: u64,
    pub alegra_requests: u64,
}

/// Bytes of answers kept for `requestid` replays; the oldest go first beyond it.
pub const REPLAY_BYTES: usize = 16 << 20;
/// How long an answer is kept for a `requestid` replay.
pub const REPLAY_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The answers kept for QuickBooks `requestid` replays: at most [`REPLAY_BYTES`] of
/// them (by their JSON size), none older than [`REPLAY_AGE`], so a long demo holds
/// steady memory. Serialized as the map of what is kept.
#[derive(Debug, Clone, Default)]
pub struct Replays {
    /// Each answer as its JSON text: what is counted is what is held (a `Value` tree
    /// takes several times its text in heap: the 16 MB bound held ~95 MB of heap).
    answers: HashMap<String, (u16, Box<str>)>,
    /// Oldest first: request id, when kept, its size.
    order: VecDeque<(String, std::time::Instant, usize)>,
    bytes: usize,
}

impl Replays {
    /// The first answer to `request_id`, if still kept.
    pub fn get(&self, request_id: &str) -> Option<(u16, Value)> {
        let (status, text) = self.answers.get(request_id)?;
        Some((*status, serde_json::from_str(text).unwrap_or(Value::Null)))
    }

    /// Keeps the first answer to `request_id`, forgetting the oldest beyond the bounds.
    pub fn insert(&mut self, request_id: String, status: u16, body: Value) {
        self.insert_at(request_id, status, body, std::time::Instant::now());
    }

    fn insert_at(&mut self, request_id: String, status: u16, body: Value, now: std::time::Instant) {
        let text: Box<str> = body.to_string().into();
        let size = request_id.len() + text.len();
        if let Some(old) = self.answers.insert(request_id.clone(), (status, text)) {
            // Replaced (a journal replayed twice): its old size goes.
            self.bytes = self.bytes.saturating_sub(request_id.len() + old.1.len());
            self.order.retain(|(id, _, _)| *id != request_id);
        }
        self.order.push_back((request_id, now, size));
        self.bytes += size;
        while let Some((id, at, size)) = self.order.front() {
            let stale = now.saturating_duration_since(*at) > REPLAY_AGE;
            if !stale && self.bytes <= REPLAY_BYTES {
                break;
            }
            self.answers.remove(id);
            self.bytes = self.bytes.saturating_sub(*size);
            self.order.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }

    /// The size (JSON bytes) of what is kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Serialize for Replays {
    /// As the map of request id → (status, body) it always was (saved worlds stay
    /// readable both ways).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.answers.len()))?;
        for id in self.answers.keys() {
            if let Some(answer) = self.get(id) {
                m.serialize_entry(id, &answer)?;
            }
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Replays {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let answers = HashMap::<String, (u16, Value)>::deserialize(d)?;
        let mut r = Replays::default();
        for (id, (status, body)) in answers {
            r.insert(id, status, body);
        }
        Ok(r)
    }
}

/// Events a company keeps at most, newest (Stripe keeps 30 days of them; the sandbox
/// keeps those too, up to this many, so a long demo's memory stays bounded).
pub const EVENTS_KEPT: usize = 10_000;

/// Everything the simulated services hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    pub rng: Rng,
    pub seed: u64,
    pub seq: u64,
    pub clock_offset_secs: i64,
    pub webhook_secret: String,
    pub products: Vec<Product>,
    pub prices: Vec<Price>,
    pub events: std::collections::VecDeque<Event>,
    pub items: Vec<Item>,
    #[serde(default)]
    pub invoices: Vec<Invoice>,
    #[serde(default)]
    pub alegra: Vec<alegra::Document>,
    /// QuickBooks `requestid` → (HTTP status, body) of the first answer, the newest
    /// kept within a size and an age (as the real service forgets them).
    pub request_ids: Replays,
    pub refresh_token: String,
    pub access_tokens: HashMap<String, i64>,
    pub counters: Counters,
    /// Lower-cased Item name → index in `items` (QuickBooks names are unique
    /// case-insensitively, inactive Items included). Rebuilt at load.
    #[serde(skip)]
    pub name_index: HashMap<String, usize>,
    /// Product id → index in `products` and price id → index in `prices` (both are only
    /// ever appended to), as the real service finds an object by id without a scan: a
    /// listing page expands each product's price, and a scan for each made listing a
    /// catalog quadratic. Rebuilt at load.
    #[serde(skip)]
    product_index: HashMap<String, usize>,
    #[serde(skip)]
    price_index: HashMap<String, usize>,
}

/// One journal line: an upsert of one object, replayed in order at load.
#[derive(Debug, Serialize, Deserialize)]
enum Entry {
    Product(Product),
    Price(Price),
    Event(Event),
    Item(Item),
    Invoice(Invoice),
    Alegra(Box<alegra::Document>),
    Request(String, u16, Value),
    Meta {
        rng: Rng,
        seq: u64,
        clock_offset_secs: i64,
        refresh_token: String,
        access_tokens: HashMap<String, i64>,
        counters: Counters,
    },
}

impl World {
    /// A new world of `products` products from `seed`.
    pub fn generate(products: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let webhook_secret = format!("whsec_{}", rng.hex(16));
        let refresh_token = format!("AB11{}", rng.hex(20));
        let mut world = World {
            rng,
            seed,
            seq: 0,
            clock_offset_secs: 0,
            webhook_secret,
            products: Vec::with_capacity(products),
            prices: Vec::with_capacity(products),
            events: std::collections::VecDeque::new(),
            items: Vec::new(),
            invoices: Vec::new(),
            alegra: Vec::new(),
            request_ids: Replays::default(),
            refresh_token,
            access_tokens: HashMap::new(),
            counters: Counters::default(),
            name_index: HashMap::new(),
            product_index: HashMap::with_capacity(products),
            price_index: HashMap::with_capacity(products),
        };
        let start = world.now() - products as i64 - 86_400;
        for i in 0..products {
            let g = data::product(&mut world.rng, i);
            let created = start + i as i64;
            let id = world.rng.stripe_id("prod");
            let default_price = g.price.map(|(amount, currency)| {
                let price_id = world.rng.stripe_id("price");
                world.seq += 1;
                world.push_price(Price {
                    id: price_id.clone(),
                    product: id.clone(),
                    unit_amount: amount,
                    currency: currency.into(),
                    active: true,
                    created,
                    seq: world.seq,
                });
                price_id
            });
            world.seq += 1;
            world.push_product(Product {
                id,
                name: g.name,
                description: g.description,
                active: g.active,
                default_price,
                created,
                updated: created,
                seq: world.seq,
            });
        }
        world
    }

    /// The sandbox's clock: wall time plus what `/_sandbox/clock` advanced it by.
    pub fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp() + self.clock_offset_secs
    }

    /// The Item names' index (Items are replaced in place on replay, renames among
    /// them: rebuilt once replayed).
    fn reindex(&mut self) {
        self.name_index = positions(&self.items, |item| item.name.to_lowercase());
    }

    /// The product and price ids' indexes (kept by replay from then on).
    fn index_ids(&mut self) {
        self.product_index = positions(&self.products, |p| p.id.clone());
        self.price_index = positions(&self.prices, |p| p.id.clone());
    }

    fn push_product(&mut self, p: Product) {
        self.product_index.insert(p.id.clone(), self.products.len());
        self.products.push(p);
    }

    fn push_price(&mut self, p: Price) {
        self.price_index.insert(p.id.clone(), self.prices.len());
        self.prices.push(p);
    }

    fn product_at(&self, id: &str) -> Option<usize> {
        self.product_index.get(id).copied()
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn product(&self, id: &str) -> Option<&Product> {
        self.product_at(id).map(|i| &self.products[i])
    }

    pub fn price(&self, id: &str) -> Option<&Price> {
        self.price_index.get(id).map(|&i| &self.prices[i])
    }

    fn meta(&self) -> Entry {
        Entry::Meta {
            rng: self.rng.clone(),
            seq: self.seq,
            clock_offset_secs: self.clock_offset_secs,
            refresh_token: self.refresh_token.clone(),
            access_tokens: self.access_tokens.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Keeps `event`, and forgets the oldest ones beyond Stripe's 30 days or
    /// [`EVENTS_KEPT`] (a reader whose cursor was forgotten is told `resource_missing`,
    /// as Stripe tells one past its 30 days).
    fn keep_event(&mut self, event: Event) {
        let horizon = event.created - 30 * 86_400;
        self.events.push_back(event);
        while self
            .events
            .front()
            .is_some_and(|e| e.created < horizon || self.events.len() > EVENTS_KEPT)
        {
            self.events.pop_front();
        }
    }

    fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Product(p) => match self.product_at(&p.id) {
                Some(i) => self.products[i] = p,
                None => self.push_product(p),
            },
            Entry::Price(p) => match self.price_index.get(&p.id) {
                Some(&i) => self.prices[i] = p,
                None => self.push_price(p),
            },
            Entry::Event(e) => self.keep_event(e),
            Entry::Item(item) => {
                let idx = item.id as usize - 1;
                if idx < self.items.len() {
                    self.items[idx] = item;
                } else {
                    self.items.push(item);
                }
            }
            Entry::Invoice(i) => self.invoices.push(i),
            Entry::Alegra(d) => {
                let d = *d;
                let idx = d.id as usize - 1;
                if idx < self.alegra.len() {
                    self.alegra[idx] = d;
                } else {
                    self.alegra.push(d);
                }
            }
            Entry::Request(id, status, body) => {
                self.request_ids.insert(id, status, body);
            }
            Entry::Meta {
                rng,
                seq,
                clock_offset_secs,
                refresh_token,
                access_tokens,
                counters,
            } => {
                self.rng = rng;
                self.seq = seq;
                self.clock_offset_secs = clock_offset_secs;
                self.refresh_token = refresh_token;
                self.access_tokens = access_tokens;
                self.counters = counters;
            }
        }
    }

    /// Product JSON as Stripe renders it (`expand` inlines the default price).
    pub fn product_json(&self, p: &Product, expand_price: bool) -> Value {
        let default_price = match (&p.default_price, expand_price) {
            (Some(id), true) => self
                .price(id)
                .map(price_json)
                .unwrap_or(Value::String(id.clone())),
            (Some(id), false) => Value::String(id.clone()),
            (None, _) => Value::Null,
        };
        json!({
            "id": p.id, "object": "product", "active": p.active, "created": p.created,
            "default_price": default_price, "description": p.description, "images": [],
            "livemode": false, "metadata": {}, "name": p.name, "type": "service",
            "updated": p.updated, "url": null,
        })
    }

    /// Names held by more than one Item, case-insensitively.
    pub fn duplicate_names(&self) -> usize {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for item in &self.items {
            *counts.entry(item.name.to_lowercase()).or_default() += 1;
        }
        counts.values().filter(|&&n| n > 1).count()
    }

    pub fn stats(&self) -> Value {
        let c = &self.counters;
        json!({
            "stripe": {
                "products_total": self.products.len(),
                "products_active": self.products.iter().filter(|p| p.active).count(),
                "prices_total": self.prices.len(),
                "events_total": self.events.len(),
                "requests": c.stripe_requests,
                "list_pages": c.stripe_list_pages,
                "webhooks_sent": c.webhooks_sent,
                "webhooks_failed": c.webhooks_failed,
                "invoices_total": self.invoices.len(),
                "invoice_list_pages": c.stripe_invoice_pages,
            },
            "quickbooks": {
                "items_total": self.items.len(),
                "items_active": self.items.iter().filter(|i| i.active).count(),
                "duplicate_names": self.duplicate_names(),
                "creates": c.qb_creates,
                "updates": c.qb_updates,
                "replays": c.qb_replays,
                "queries": c.qb_queries,
                "requests": c.qb_requests,
                "auth_failures": c.qb_auth_failures,
                "batch_requests": c.qb_batch_requests,
                "batch_operations": c.qb_batch_operations,
                "cdc_requests": c.qb_cdc_requests,
                // What the company's per-minute quota was charged: each request, a
                // batch counting as its operations.
                "quota_units": (c.qb_requests + c.qb_batch_operations).saturating_sub(c.qb_batch_requests),
                "token_refreshes": c.token_refreshes,
                "token_requests": c.token_requests,
                "token_rejected": c.token_rejected,
            },
            "alegra": self.alegra_stats(),
            "clock_offset_secs": self.clock_offset_secs,
        })
    }
}

pub fn price_json(p: &Price) -> Value {
    json!({
        "id": p.id, "object": "price", "active": p.active, "created": p.created,
        "currency": p.currency, "livemode": false, "metadata": {}, "product": p.product,
        "recurring": null, "type": "one_time", "unit_amount": p.unit_amount,
        "unit_amount_decimal": p.unit_amount.to_string(),
    })
}

/// One simulated company: its keys, its world (Stripe account, QuickBooks realm,
/// Alegra account) and that world's journal.
pub struct Company {
    /// 0-based position among the sandbox's companies (its quotas in `faults`).
    pub index: usize,
    pub keys: CompanyKeys,
    alegra_basic: String,
    world: Mutex<World>,
    journal: Mutex<Option<Journal>>,
}

impl Company {
    pub fn id(&self) -> &str {
        &self.keys.id
    }

    pub fn lock(&self) -> WorldTx<'_> {
        WorldTx {
            world: self.world.lock().unwrap_or_else(|p| p.into_inner()),
            company: self,
            pending: Vec::new(),
        }
    }
}

/// `v[name]`, made an object if it was not one.
fn service_entry<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    let entry = &mut v[name];
    if !entry.is_object() {
        *entry = json!({});
    }
    entry
}

/// `a + b` leaf by leaf: numbers add, objects add key by key, anything else keeps `a`'s.
fn add_json(a: Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, bv) in b {
                let av = a.remove(k).unwrap_or(Value::Null);
                a.insert(k.clone(), add_json(av, bv));
            }
            Value::Object(a)
        }
        (Value::Null, b) => b.clone(),
        (Value::Number(x), Value::Number(y)) => match (x.as_u64(), y.as_u64()) {
            (Some(x), Some(y)) => json!(x.saturating_add(y)),
            _ => match (x.as_i64(), y.as_i64()) {
                (Some(x), Some(y)) => json!(x.saturating_add(y)),
                _ => json!(x.as_f64().unwrap_or(0.0) + y.as_f64().unwrap_or(0.0)),
            },
        },
        (a, _) => a,
    }
}

/// Shared state behind every route.
pub struct Sandbox {
    /// Company 1 first; never empty.
    companies: Vec<Company>,
    pub latency_ms: std::sync::atomic::AtomicU64,
    webhook_url: Mutex<Option<String>>,
    /// Events to deliver, with the index of the company that sent them.
    outbox: tokio::sync::mpsc::UnboundedSender<(usize, Event)>,
    outbox_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(usize, Event)>>>,
    pub faults: faults::Faults,
    alegra_knobs: Mutex<alegra::Knobs>,
    /// How QuickBooks answers the next batch requests (a lost or partial answer).
    pub qb_batch_answers: Mutex<quickbooks::BatchAnswerKnobs>,
}

struct Journal {
    file: std::fs::File,
    dir: PathBuf,
    entries: usize,
}

/// A world lock that journals what it changed when dropped via [`WorldTx::commit`].
pub struct WorldTx<'a> {
    pub world: MutexGuard<'a, World>,
    company: &'a Company,
    pending: Vec<Entry>,
}

impl WorldTx<'_> {
    /// The company whose world this is.
    pub fn company(&self) -> &Company {
        self.company
    }

    fn record(&mut self, entry: Entry) {
        self.pending.push(entry);
    }
    /// Writes the changes to the journal (before the response leaves), then unlocks.
    pub fn commit(mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.push(self.world.meta());
        let mut journal = self
            .company
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(j) = journal.as_mut() {
            let mut buf = Vec::new();
            for e in &self.pending {
                if serde_json::to_writer(&mut buf, e).is_ok() {
                    buf.push(b'\n');
                }
            }
            if let Err(e) = j.file.write_all(&buf) {
                tracing::error!("sandbox journal write failed: {e}");
            }
            j.entries += self.pending.len();
            if j.entries > 200_000 {
                match compact(&j.dir, &self.world) {
                    Ok(file) => {
                        j.file = file;
                        j.entries = 0;
                    }
                    Err(e) => tracing::error!("sandbox journal compaction failed: {e}"),
                }
            }
        }
        self.pending.clear();
    }
}

impl Sandbox {
    /// Opens the worlds in `opts.dir` (or generates new ones) and returns the sandbox.
    pub fn open(opts: &SandboxOptions) -> anyhow::Result<Arc<Self>> {
        let n = opts.companies;
        if !(1..=MAX_COMPANIES).contains(&n) {
            anyhow::bail!("companies: expected 1 to {MAX_COMPANIES}, got {n}");
        }
        let mut companies = Vec::with_capacity(n);
        for k in 1..=n {
            let keys = CompanyKeys::of(k, n);
            let seed = keys.seed(opts.seed);
            let (world, journal) = match &opts.dir {
                Some(dir) => {
                    let dir = keys.dir(dir);
                    std::fs::create_dir_all(&dir)?;
                    let world = load(&dir)?.unwrap_or_else(|| World::generate(opts.products, seed));
                    let file = compact(&dir, &world)?;
                    (
                        world,
                        Some(Journal {
                            file,
                            dir,
                            entries: 0,
                        }),
                    )
                }
                None => (World::generate(opts.products, seed), None),
            };
            companies.push(Company {
                index: k - 1,
                alegra_basic: keys.alegra_basic(),
                keys,
                world: Mutex::new(world),
                journal: Mutex::new(journal),
            });
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Arc::new(Self {
            companies,
            latency_ms: opts.latency_ms.into(),
            webhook_url: Mutex::new(opts.webhook_url.clone()),
            outbox: tx,
            outbox_rx: Mutex::new(Some(rx)),
            faults: faults::Faults::with_companies(&opts.faults, n).map_err(anyhow::Error::msg)?,
            alegra_knobs: Mutex::new(alegra::Knobs::default()),
            qb_batch_answers: Mutex::new(quickbooks::BatchAnswerKnobs::default()),
        }))
    }

    /// Company 1's world (the only one of a single-company sandbox).
    pub fn lock(&self) -> WorldTx<'_> {
        self.companies[0].lock()
    }

    /// The companies, company 1 first.
    pub fn companies(&self) -> &[Company] {
        &self.companies
    }

    /// Company at `index` (0-based); company 1 when out of range.
    pub fn company(&self, index: usize) -> &Company {
        self.companies.get(index).unwrap_or(&self.companies[0])
    }

    /// The index of the company with id `id`.
    pub fn company_by_id(&self, id: &str) -> Option<usize> {
        self.companies.iter().position(|c| c.keys.id == id)
    }

    /// The company whose QuickBooks realm is `realm`.
    pub fn company_by_realm(&self, realm: &str) -> Option<usize> {
        self.companies.iter().position(|c| c.keys.realm_id == realm)
    }

    /// The company whose Stripe secret key is `key`.
    pub fn company_by_stripe_key(&self, key: &str) -> Option<usize> {
        self.companies
            .iter()
            .position(|c| c.keys.stripe_api_key == key)
    }

    /// The company whose Alegra `Basic` credentials (base64) are `basic`.
    pub fn company_by_alegra_basic(&self, basic: &str) -> Option<usize> {
        self.companies.iter().position(|c| c.alegra_basic == basic)
    }

    /// Which company a request to `service` is for, as the real service tells: the
    /// realm in a QuickBooks path, the Stripe key, the Alegra basic credentials.
    pub fn company_of_request(
        &self,
        service: &str,
        path: &str,
        headers: &axum::http::HeaderMap,
    ) -> Option<usize> {
        let auth = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match service {
            "quickbooks" => path
                .strip_prefix("/v3/company/")
                .and_then(|r| r.split('/').next())
                .and_then(|realm| self.company_by_realm(realm)),
            "stripe" => auth
                .and_then(|v| v.strip_prefix("Bearer "))
                .and_then(|k| self.company_by_stripe_key(k)),
            "alegra" => auth
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b| self.company_by_alegra_basic(b.trim())),
            _ => None,
        }
    }

    fn count_delivery(&self, company: usize, ok: bool) {
        let mut tx = self.company(company).lock();
        if ok {
            tx.world.counters.webhooks_sent += 1;
        } else {
            tx.world.counters.webhooks_failed += 1;
        }
        let meta = tx.world.meta();
        tx.record(meta);
        tx.commit();
    }

    pub fn set_webhook_url(&self, url: Option<String>) {
        *self.webhook_url.lock().unwrap_or_else(|p| p.into_inner()) = url;
    }

    /// Where company `company`'s webhooks go: the webhook URL with `{company}` replaced
    /// by its id (each Stripe account has its own endpoint).
    pub fn webhook_url_of(&self, company: usize) -> Option<String> {
        let url = self
            .webhook_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some(url.replace("{company}", self.company(company).id()))
    }

    pub fn webhook_secret(&self) -> String {
        self.lock().world.webhook_secret.clone()
    }

    /// `/_sandbox/stats`: the top-level keys as they always were (over every company:
    /// with one company, that company's), and `companies`: the same per company id, with
    /// per service its quota and the rate it was spent at (see [`faults::QuotaStats`]).
    pub fn stats(&self) -> Value {
        let mut per = serde_json::Map::new();
        let mut sum: Option<Value> = None;
        for c in &self.companies {
            let world = c.lock().world.stats();
            sum = Some(match sum {
                None => world.clone(),
                Some(total) => add_json(total, &world),
            });
            let mut v = world;
            for name in faults::SERVICES {
                let q = self.faults.quota_stats(c.index, name);
                let entry = service_entry(&mut v, name);
                if let Some(handled) = entry.get("requests").cloned() {
                    entry["handled"] = handled;
                }
                entry["requests"] = json!(q.requests);
                entry["throttled"] = json!(q.throttled);
                entry["errors_injected"] = json!(q.errors_injected);
                entry["rate_per_min"] = json!(q.rate_per_min);
                entry["peak_rate_per_min"] = json!(q.peak_rate_per_min);
                entry["quota_per_min"] = json!(q.quota_per_min);
                entry["max_concurrent"] = json!(q.max_concurrent);
            }
            per.insert(c.keys.id.clone(), v);
        }
        let mut v = sum.unwrap_or_else(|| json!({}));
        // One clock for every company: its offset is not summed.
        v["clock_offset_secs"] = json!(self.lock().world.clock_offset_secs);
        for name in faults::SERVICES {
            let (requests, throttled, injected) = self.faults.counters(name);
            let entry = service_entry(&mut v, name);
            if let Some(handled) = entry.get("requests").cloned() {
                entry["handled"] = handled;
            }
            entry["requests"] = json!(requests);
            entry["throttled"] = json!(throttled);
            entry["errors_injected"] = json!(injected);
        }
        v["companies"] = Value::Object(per);
        v
    }

    /// The engine config (TOML) that points at this sandbox listening on `addr`.
    /// Records an event (and queues its webhook).
    fn emit(&self, tx: &mut WorldTx<'_>, kind: &str, object: Value, previous: Option<Value>) {
        let id = tx.world.rng.stripe_id("evt");
        let seq = tx.world.next_seq();
        let created = tx.world.now();
        let raw = |v: &Value| {
            serde_json::value::to_raw_value(v)
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
        };
        let event = Event {
            id,
            kind: kind.into(),
            created,
            object: raw(&object),
            previous: previous.as_ref().map(raw),
            seq,
        };
        tx.world.keep_event(event.clone());
        tx.record(Entry::Event(event.clone()));
        let _ = self.outbox.send((tx.company.index, event));
    }

    /// Makes `n` paid invoices of products with a price, each with its `invoice.paid`
    /// event (and webhook).
    pub fn create_invoices(&self, n: usize) -> Vec<String> {
        self.create_invoices_for(0, n)
    }

    /// [`Sandbox::create_invoices`] in company `company` (0-based).
    pub fn create_invoices_for(&self, company: usize, n: usize) -> Vec<String> {
        let mut tx = self.company(company).lock();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let w: &mut World = &mut tx.world;
            let now = w.now();
            let (customer_name, tax_id) = data::buyer(&mut w.rng);
            let customer = w.rng.stripe_id("cus");
            let restaurant = w.rng.chance(0.1);
            let count = 1 + w.rng.below(3) as usize;
            let mut lines = Vec::with_capacity(count);
            for _ in 0..count {
                let (product, price, description) = if w.products.is_empty() {
                    ("prod_none".to_owned(), None, "Servicio".to_owned())
                } else {
                    let i = w.rng.below(w.products.len() as u64) as usize;
                    let p = &w.products[i];
                    (p.id.clone(), p.default_price.clone(), p.name.clone())
                };
                let quantity = 1 + w.rng.below(3) as i64;
                let amount = data::line_amount(&mut w.rng) * quantity;
                lines.push(InvoiceLine {
                    id: w.rng.stripe_id("il"),
                    product,
                    price,
                    description,
                    quantity,
                    amount,
                });
            }
            let number = format!("SBX-{:06}", w.invoices.len() + 1);
            let invoice = Invoice {
                id: w.rng.stripe_id("in"),
                number,
                customer,
                customer_name: customer_name.to_owned(),
                tax_id: tax_id.map(str::to_owned),
                lines,
                tax_name: if restaurant { "INC" } else { "IVA" }.to_owned(),
                tax_percent: if restaurant { 8 } else { 19 },
                created: now,
                paid_at: now,
                seq: w.next_seq(),
            };
            w.invoices.push(invoice.clone());
            tx.record(Entry::Invoice(invoice.clone()));
            ids.push(invoice.id.clone());
            self.emit(&mut tx, "invoice.paid", invoice.json(), None);
        }
        tx.commit();
        ids
    }

    /// Applies one random catalog change, as a merchant editing Stripe would.
    pub fn random_change(&self) {
        self.random_change_for(0);
    }

    /// [`Sandbox::random_change`] in company `company` (0-based).
    pub fn random_change_for(&self, company: usize) {
        let mut tx = self.company(company).lock();
        let roll = tx.world.rng.below(100);
        let n = tx.world.products.len();
        if n == 0 || roll < 25 {
            let i = n + 1_000_000;
            let g = data::product(&mut tx.world.rng, i);
            self.create_product(&mut tx, g.name, g.price.map(|(a, c)| (a, c.to_string())));
        } else {
            let idx = tx.world.rng.below(n as u64) as usize;
            let id = tx.world.products[idx].id.clone();
            let change = match roll {
                25..=54 => {
                    let g = data::product(&mut tx.world.rng, idx + 2_000_000);
                    ProductChange {
                        name: Some(g.name),
                        ..Default::default()
                    }
                }
                55..=84 => {
                    let (amount, currency) = data::price(&mut tx.world.rng);
                    ProductChange {
                        price: Some((amount, currency.to_string())),
                        ..Default::default()
                    }
                }
                _ => {
                    let active = !tx.world.products[idx].active;
                    ProductChange {
                        active: Some(active),
                        ..Default::default()
                    }
                }
            };
            self.update_product(&mut tx, &id, change);
        }
        tx.commit();
    }

    fn create_product(
        &self,
        tx: &mut WorldTx<'_>,
        name: String,
        price: Option<(i64, String)>,
    ) -> String {
        let now = tx.world.now();
        let id = tx.world.rng.stripe_id("prod");
        let default_price = price.map(|(amount, currency)| {
            let price = Price {
                id: tx.world.rng.stripe_id("price"),
                product: id.clone(),
                unit_amount: amount,
                currency,
                active: true,
                created: now,
                seq: tx.world.next_seq(),
            };
            tx.world.push_price(price.clone());
            tx.record(Entry::Price(price.clone()));
            self.emit(tx, "price.created", price_json(&price), None);
            price.id
        });
        let product = Product {
            id: id.clone(),
            name,
            description: None,
            active: true,
            default_price,
            created: now,
            updated: now,
            seq: tx.world.next_seq(),
        };
        tx.world.push_product(product.clone());
        tx.record(Entry::Product(product.clone()));
        let object = tx.world.product_json(&product, false);
        self.emit(tx, "product.created", object, None);
        id
    }

    /// Changes a product (a new price is a new Price object, as in Stripe).
    pub fn update_product(&self, tx: &mut WorldTx<'_>, id: &str, change: ProductChange) -> bool {
        let now = tx.world.now();
        let Some(idx) = tx.world.product_at(id) else {
            return false;
        };
        let mut previous = serde_json::Map::new();
        if let Some((amount, currency)) = change.price {
            let price = Price {
                id: tx.world.rng.stripe_id("price"),
                product: id.into(),
                unit_amount: amount,
                currency,
                active: true,
                created: now,
                seq: tx.world.next_seq(),
            };
            tx.world.push_price(price.clone());
            tx.record(Entry::Price(price.clone()));
            self.emit(tx, "price.created", price_json(&price), None);
            let p = &mut tx.world.products[idx];
            previous.insert("default_price".into(), json!(p.default_price));
            p.default_price = Some(price.id);
        }
        let p = &mut tx.world.products[idx];
        if let Some(name) = change.name {
            previous.insert("name".into(), json!(p.name));
            p.name = name;
        }
        if let Some(active) = change.active {
            previous.insert("active".into(), json!(p.active));
            p.active = active;
        }
        // Stripe's `updated` only moves forward; keep it strictly increasing per product
        // so a consumer ordering by it never sees two versions with the same stamp.
        p.updated = now.max(p.updated + 1);
        let product = p.clone();
        tx.record(Entry::Product(product.clone()));
        let object = tx.world.product_json(&product, false);
        self.emit(tx, "product.updated", object, Some(Value::Object(previous)));
        true
    }
}

/// The world `opts` describes, read without writing anything (for `--print-config`
/// while another process may be serving it).
pub fn peek_world(opts: &SandboxOptions) -> anyhow::Result<World> {
    match &opts.dir {
        Some(dir) => Ok(load(dir)?.unwrap_or_else(|| World::generate(opts.products, opts.seed))),
        None => Ok(World::generate(opts.products, opts.seed)),
    }
}

/// What an engine config needs of a company's world.
#[derive(Debug, Clone)]
pub struct CompanySecrets {
    pub webhook_secret: String,
    pub refresh_token: String,
}

impl World {
    pub fn secrets(&self) -> CompanySecrets {
        CompanySecrets {
            webhook_secret: self.webhook_secret.clone(),
            refresh_token: self.refresh_token.clone(),
        }
    }
}

/// The worlds of every company `opts` describes (company 1 first), read without
/// writing anything.
pub fn peek_worlds(opts: &SandboxOptions) -> anyhow::Result<Vec<World>> {
    let n = opts.companies.clamp(1, MAX_COMPANIES);
    (1..=n)
        .map(|k| {
            let keys = CompanyKeys::of(k, n);
            let seed = keys.seed(opts.seed);
            Ok(match &opts.dir {
                Some(dir) => {
                    load(&keys.dir(dir))?.unwrap_or_else(|| World::generate(opts.products, seed))
                }
                None => World::generate(opts.products, seed),
            })
        })
        .collect()
}

/// The engine config (TOML) for a sandbox holding `worlds` (one per company, company 1
/// first) reached at `addr` (`host:port`): with one company, [`engine_config_at`]'s;
/// with more, the shared tables hold the base URLs, the Intuit app's keys and the
/// limits, and each company is a `[[companies]]` entry with its own credentials.
pub fn engine_config_for(
    worlds: &[CompanySecrets],
    addr: &str,
    faults: &std::collections::BTreeMap<String, faults::FaultSettings>,
) -> String {
    if let [one] = worlds {
        return single_config(one, addr, faults);
    }
    let limits = |name: &str| {
        let f = faults.get(name).cloned().unwrap_or_default();
        format!(
            "rate_limit_per_min = {}\nmax_concurrent = {}\n",
            f.rate_limit_per_min, f.max_concurrent
        )
    };
    let mut out = format!(
        "# Engine config for the syncctl sandbox at http://{addr}: {n} companies\n\
         # (credentials the sandbox accepts; the refresh tokens rotate on use; each\n\
         # company's quotas are its own, the limits below apply to each)\n\
         [stripe]\n\
         base_url = \"http://{addr}\"\n\
         {}\n\
         [quickbooks]\n\
         base_url = \"http://{addr}\"\n\
         client_id = \"{QB_CLIENT_ID}\"\n\
         client_secret = \"{QB_CLIENT_SECRET}\"\n\
         token_url = \"http://{addr}/oauth2/v1/tokens/bearer\"\n\
         {}\n\
         [alegra]\n\
         base_url = \"http://{addr}/api/v1\"\n\
         issuer_nit = \"{}\"\n\
         technical_key = \"{}\"\n\
         environment = \"{}\"\n\
         {}",
        limits("stripe"),
        limits("quickbooks"),
        alegra::ISSUER_NIT,
        alegra::TECHNICAL_KEY,
        alegra::ENVIRONMENT,
        limits("alegra"),
        n = worlds.len(),
    );
    for (i, w) in worlds.iter().enumerate() {
        let keys = CompanyKeys::of(i + 1, worlds.len());
        out.push_str(&format!(
            "\n[[companies]]\n\
             id = \"{}\"\n\
             name = \"{}\"\n\
             [companies.stripe]\n\
             api_key = \"{}\"\n\
             webhook_secret = \"{}\"\n\
             [companies.quickbooks]\n\
             realm_id = \"{}\"\n\
             refresh_token = \"{}\"\n\
             [companies.alegra]\n\
             email = \"{}\"\n\
             token = \"{}\"\n",
            keys.id,
            keys.name,
            keys.stripe_api_key,
            w.webhook_secret,
            keys.realm_id,
            w.refresh_token,
            keys.alegra_email,
            keys.alegra_token,
        ));
    }
    out
}

/// The engine config (TOML) that points at a sandbox holding `world` on `addr`.
pub fn engine_config(
    world: &World,
    addr: SocketAddr,
    faults: &std::collections::BTreeMap<String, faults::FaultSettings>,
) -> String {
    engine_config_at(world, &addr.to_string(), faults)
}

/// [`engine_config`] for a sandbox reached at `addr` (`host:port`, as a `Host` header
/// names it).
pub fn engine_config_at(
    world: &World,
    addr: &str,
    faults: &std::collections::BTreeMap<String, faults::FaultSettings>,
) -> String {
    single_config(&world.secrets(), addr, faults)
}

/// The single-company config (no `[[companies]]`).
fn single_config(
    world: &CompanySecrets,
    addr: &str,
    faults: &std::collections::BTreeMap<String, faults::FaultSettings>,
) -> String {
    // The engine keeps to the quotas the sandbox enforces, as it would to Intuit's.
    let limits = |name: &str| {
        let f = faults.get(name).cloned().unwrap_or_default();
        format!(
            "rate_limit_per_min = {}\nmax_concurrent = {}\n",
            f.rate_limit_per_min, f.max_concurrent
        )
    };
    format!(
        "# Engine config for the syncctl sandbox at http://{addr}\n\
         # (credentials the sandbox accepts; the refresh token rotates on use)\n\
         [stripe]\n\
         api_key = \"{STRIPE_API_KEY}\"\n\
         base_url = \"http://{addr}\"\n\
         webhook_secret = \"{}\"\n\
         {}\n\
         [quickbooks]\n\
         base_url = \"http://{addr}\"\n\
         realm_id = \"{QB_REALM_ID}\"\n\
         client_id = \"{QB_CLIENT_ID}\"\n\
         client_secret = \"{QB_CLIENT_SECRET}\"\n\
         refresh_token = \"{}\"\n\
         token_url = \"http://{addr}/oauth2/v1/tokens/bearer\"\n\
         {}\n\
         [alegra]\n\
         base_url = \"http://{addr}/api/v1\"\n\
         email = \"{}\"\n\
         token = \"{}\"\n\
         issuer_nit = \"{}\"\n\
         technical_key = \"{}\"\n\
         environment = \"{}\"\n\
         {}",
        world.webhook_secret,
        limits("stripe"),
        world.refresh_token,
        limits("quickbooks"),
        alegra::ALEGRA_EMAIL,
        alegra::ALEGRA_TOKEN,
        alegra::ISSUER_NIT,
        alegra::TECHNICAL_KEY,
        alegra::ENVIRONMENT,
        limits("alegra"),
    )
}

/// Each of `items`' keys → its position.
fn positions<T>(items: &[T], key: impl Fn(&T) -> String) -> HashMap<String, usize> {
    items.iter().enumerate().map(|(i, x)| (key(x), i)).collect()
}

/// A change to a product, as the `/_sandbox/stripe/products/{id}` knob takes it.
#[derive(Debug, Default, Deserialize)]
pub struct ProductChange {
    pub name: Option<String>,
    pub active: Option<bool>,
    #[serde(skip)]
    pub price: Option<(i64, String)>,
}

fn load(dir: &Path) -> anyhow::Result<Option<World>> {
    let snap = dir.join("world.json");
    if !snap.exists() {
        return Ok(None);
    }
    let mut world: World =
        serde_json::from_reader(std::io::BufReader::new(std::fs::File::open(&snap)?))
            .map_err(|e| anyhow::anyhow!("{}: {e}", snap.display()))?;
    // (Before the journal is replayed: a replayed product or price is found by its id.)
    world.index_ids();
    let journal = dir.join("journal.jsonl");
    if let Ok(text) = std::fs::read_to_string(&journal) {
        for line in text.lines() {
            // A torn last line (killed mid-write) is the only line that can fail.
            match serde_json::from_str::<Entry>(line) {
                Ok(entry) => world.apply(entry),
                Err(_) => break,
            }
        }
    }
    world.reindex();
    Ok(Some(world))
}

/// Writes a fresh snapshot and returns an emptied journal opened for appending.
fn compact(dir: &Path, world: &World) -> anyhow::Result<std::fs::File> {
    let tmp = dir.join("world.json.tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        serde_json::to_writer(&mut f, world)?;
        f.flush()?;
        f.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("world.json"))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.join("journal.jsonl"))?;
    Ok(file)
}

/// A running sandbox server.
pub struct SandboxServer {
    pub addr: SocketAddr,
    pub sandbox: Arc<Sandbox>,
    cancel: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl SandboxServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits for background tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Serves `sandbox` on `listener`: APIs, knobs, catalog changes and webhook delivery.
pub fn serve(
    sandbox: Arc<Sandbox>,
    listener: tokio::net::TcpListener,
    change_interval_ms: u64,
) -> anyhow::Result<SandboxServer> {
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let app = router(sandbox.clone());
    let c = cancel.clone();
    tasks.spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { c.cancelled().await })
            .await;
    });
    if change_interval_ms > 0 {
        let (s, c) = (sandbox.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(change_interval_ms));
            tick.tick().await;
            // A paid invoice every fourth tick, as a shop selling its catalog would
            // (in every company).
            for n in 1u64.. {
                tokio::select! {
                    _ = c.cancelled() => break,
                    _ = tick.tick() => for company in 0..s.companies().len() {
                        if n % 4 == 0 {
                            s.create_invoices_for(company, 1);
                        } else {
                            s.random_change_for(company);
                        }
                    },
                }
            }
        });
    }
    let rx = sandbox
        .outbox_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(rx) = rx {
        tasks.spawn(deliver_webhooks(sandbox.clone(), rx, cancel.clone()));
    }
    Ok(SandboxServer {
        addr,
        sandbox,
        cancel,
        tasks,
    })
}

fn router(sandbox: Arc<Sandbox>) -> Router {
    let apis = stripe::routes()
        .merge(quickbooks::routes())
        .merge(alegra::routes())
        .layer(axum::middleware::from_fn_with_state(
            sandbox.clone(),
            faults::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            sandbox.clone(),
            latency,
        ));
    apis.merge(knobs()).with_state(sandbox)
}

/// Adds the configured latency to every API response (not to `/_sandbox` knobs): half
/// on the way in, half on the way out, as over a real network — a write is done a while
/// before its answer arrives (and a client that dies meanwhile never hears of it).
async fn latency(State(s): State<Arc<Sandbox>>, req: Request, next: Next) -> Response {
    let ms = s.latency_ms.load(std::sync::atomic::Ordering::Relaxed);
    let way_in = Duration::from_millis(ms / 2);
    if !way_in.is_zero() {
        tokio::time::sleep(way_in).await;
    }
    let answer = next.run(req).await;
    let way_out = Duration::from_millis(ms - ms / 2);
    if !way_out.is_zero() {
        tokio::time::sleep(way_out).await;
    }
    answer
}

/// A knob's answer refusing what it was asked.
type Refusal = (axum::http::StatusCode, axum::Json<Value>);

/// `?company=<id>` on a knob: which company it acts on (company 1 when left out).
#[derive(Debug, Default, Deserialize)]
struct CompanyParam {
    company: Option<String>,
}

impl CompanyParam {
    fn resolve(&self, s: &Sandbox) -> Result<usize, Refusal> {
        let Some(id) = self.company.as_deref() else {
            return Ok(0);
        };
        s.company_by_id(id).ok_or_else(|| {
            let known: Vec<&str> = s.companies().iter().map(Company::id).collect();
            (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(json!({
                    "error": format!("no company {id:?} (this sandbox has {})", known.join(", "))
                })),
            )
        })
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one simulated endpoint's rules in the order the real service applies them"
)]
fn knobs() -> Router<Arc<Sandbox>> {
    use axum::Json;
    use axum::extract::Path as UrlPath;
    use axum::extract::Query;
    use axum::routing::{get, post};
    Router::new()
        .route(
            "/_sandbox/stats",
            get(|State(s): State<Arc<Sandbox>>| async move { Json(s.stats()) }),
        )
        .route(
            // The engine config pointing at this sandbox as it is now — its seed, its
            // world, the refresh token as last rotated — at the address it was asked
            // on (`syncctl sandbox --print-config` asks here first).
            "/_sandbox/config",
            get(
                |State(s): State<Arc<Sandbox>>, headers: axum::http::HeaderMap| async move {
                    let Some(host) = headers
                        .get(axum::http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .filter(|h| !h.is_empty())
                    else {
                        return (
                            axum::http::StatusCode::BAD_REQUEST,
                            "send a Host header: the config names the address it was asked on\n"
                                .to_owned(),
                        );
                    };
                    let faults: std::collections::BTreeMap<String, faults::FaultSettings> =
                        faults::SERVICES
                            .iter()
                            .filter_map(|n| Some(((*n).to_owned(), s.faults.get(n)?)))
                            .collect();
                    let worlds: Vec<CompanySecrets> = s
                        .companies()
                        .iter()
                        .map(|c| c.lock().world.secrets())
                        .collect();
                    let text = engine_config_for(&worlds, host, &faults);
                    (axum::http::StatusCode::OK, text)
                },
            ),
        )
        .route(
            "/_sandbox/faults",
            get(|State(s): State<Arc<Sandbox>>| async move { Json(s.faults.all()) }).post(
                |State(s): State<Arc<Sandbox>>, body: axum::body::Bytes| async move {
                    let patch: Result<faults::FaultPatch, _> = serde_json::from_slice(&body);
                    let result = patch
                        .map_err(|e| e.to_string())
                        .and_then(|p| s.faults.patch(&p).map(|_| p.service));
                    match result {
                        Ok(service) => {
                            tracing::info!(
                                "sandbox faults for {service}: {:?}",
                                s.faults.get(&service)
                            );
                            (axum::http::StatusCode::OK, Json(s.faults.all()))
                        }
                        Err(e) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            Json(json!({"error": e})),
                        ),
                    }
                },
            ),
        )
        .route(
            "/_sandbox/alegra",
            get(|State(s): State<Arc<Sandbox>>| async move { Json(json!(s.alegra_knobs())) }).post(
                |State(s): State<Arc<Sandbox>>, Json(body): Json<Value>| async move {
                    match s.patch_alegra_knobs(&body) {
                        Ok(k) => (axum::http::StatusCode::OK, Json(json!(k))),
                        Err(e) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            Json(json!({"error": e})),
                        ),
                    }
                },
            ),
        )
        .route(
            "/_sandbox/alegra/invoices",
            get(
                |State(s): State<Arc<Sandbox>>, Query(q): Query<CompanyParam>| async move {
                    let c = q.resolve(&s)?;
                    let w = s.company(c).lock();
                    Ok::<_, Refusal>(Json(Value::Array(
                        w.world.alegra.iter().map(|d| d.json()).collect(),
                    )))
                },
            ),
        )
        .route(
            "/_sandbox/quickbooks/items",
            get(
                |State(s): State<Arc<Sandbox>>, Query(q): Query<CompanyParam>| async move {
                    let c = q.resolve(&s)?;
                    let w = s.company(c).lock();
                    Ok::<_, Refusal>(Json(Value::Array(
                        w.world.items.iter().map(quickbooks::item_json).collect(),
                    )))
                },
            ),
        )
        .route(
            "/_sandbox/quickbooks/batch_answers",
            get(|State(s): State<Arc<Sandbox>>| async move {
                Json(json!(s.qb_batch_answer_knobs()))
            })
            .post(
                |State(s): State<Arc<Sandbox>>, Json(body): Json<Value>| async move {
                    match serde_json::from_value::<quickbooks::BatchAnswerKnobs>(body) {
                        Ok(k) => {
                            *s.qb_batch_answers.lock().unwrap_or_else(|p| p.into_inner()) =
                                k.clone();
                            (axum::http::StatusCode::OK, Json(json!(k)))
                        }
                        Err(e) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            Json(json!({"error": e.to_string()})),
                        ),
                    }
                },
            ),
        )
        .route(
            "/_sandbox/quickbooks/items/{id}",
            post(
                |State(s): State<Arc<Sandbox>>,
                 UrlPath(id): UrlPath<String>,
                 Query(q): Query<CompanyParam>,
                 Json(body): Json<Value>| async move {
                    let c = match q.resolve(&s) {
                        Ok(c) => c,
                        Err((st, body)) => return (st, body),
                    };
                    match quickbooks::edit_item(s.company(c), &id, &body) {
                        Ok(item) => (axum::http::StatusCode::OK, Json(item)),
                        Err((status, why)) => (
                            axum::http::StatusCode::from_u16(status)
                                .unwrap_or(axum::http::StatusCode::BAD_REQUEST),
                            Json(json!({ "error": why })),
                        ),
                    }
                },
            ),
        )
        .route(
            "/_sandbox/quickbooks/revoke",
            post(
                |State(s): State<Arc<Sandbox>>, Query(q): Query<CompanyParam>| async move {
                    let c = q.resolve(&s)?;
                    Ok::<_, Refusal>(Json(quickbooks::revoke(s.company(c))))
                },
            ),
        )
        .route(
            "/_sandbox/clock",
            post(
                |State(s): State<Arc<Sandbox>>, Json(body): Json<Value>| async move {
                    // One clock: every company's moves.
                    let mut offset = 0;
                    for c in s.companies() {
                        let mut tx = c.lock();
                        tx.world.clock_offset_secs += body["advance_secs"].as_i64().unwrap_or(0);
                        let meta = tx.world.meta();
                        tx.record(meta);
                        if c.index == 0 {
                            offset = tx.world.clock_offset_secs;
                        }
                        tx.commit();
                    }
                    Json(json!({ "clock_offset_secs": offset }))
                },
            ),
        )
        .route(
            "/_sandbox/latency",
            post(
                |State(s): State<Arc<Sandbox>>, Json(body): Json<Value>| async move {
                    let ms = body["latency_ms"].as_u64().unwrap_or(0);
                    s.latency_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
                    Json(json!({ "latency_ms": ms }))
                },
            ),
        )
        .route(
            "/_sandbox/webhooks",
            post(
                |State(s): State<Arc<Sandbox>>, Json(body): Json<Value>| async move {
                    let url = body["url"].as_str().map(str::to_owned);
                    s.set_webhook_url(url.clone());
                    Json(json!({ "url": url }))
                },
            ),
        )
        .route(
            "/_sandbox/catalog/changes",
            post(
                |State(s): State<Arc<Sandbox>>,
                 Query(q): Query<CompanyParam>,
                 Json(body): Json<Value>| async move {
                    let c = q.resolve(&s)?;
                    let n = body["count"].as_u64().unwrap_or(1).min(10_000);
                    for _ in 0..n {
                        s.random_change_for(c);
                    }
                    Ok::<_, Refusal>(Json(json!({ "changes": n })))
                },
            ),
        )
        .route(
            "/_sandbox/stripe/invoices",
            post(
                |State(s): State<Arc<Sandbox>>,
                 Query(q): Query<CompanyParam>,
                 Json(body): Json<Value>| async move {
                    let c = q.resolve(&s)?;
                    let n = body["count"].as_u64().unwrap_or(1).min(10_000) as usize;
                    Ok::<_, Refusal>(Json(json!({ "created": s.create_invoices_for(c, n) })))
                },
            ),
        )
        .route(
            "/_sandbox/stripe/products/{id}",
            post(
                |State(s): State<Arc<Sandbox>>,
                 UrlPath(id): UrlPath<String>,
                 Query(q): Query<CompanyParam>,
                 Json(body): Json<Value>| async move {
                    let c = match q.resolve(&s) {
                        Ok(c) => c,
                        Err((st, body)) => return (st, body),
                    };
                    let mut change: ProductChange =
                        serde_json::from_value(body.clone()).unwrap_or_default();
                    if let (Some(amount), Some(currency)) =
                        (body["unit_amount"].as_i64(), body["currency"].as_str())
                    {
                        change.price = Some((amount, currency.to_lowercase()));
                    }
                    let mut tx = s.company(c).lock();
                    let found = s.update_product(&mut tx, &id, change);
                    let out = tx
                        .world
                        .product(&id)
                        .map(|p| tx.world.product_json(p, true));
                    tx.commit();
                    if found {
                        (axum::http::StatusCode::OK, Json(out.unwrap_or(Value::Null)))
                    } else {
                        (
                            axum::http::StatusCode::NOT_FOUND,
                            Json(json!({"error": "no such product"})),
                        )
                    }
                },
            ),
        )
}

/// Signs a webhook body the way Stripe does: `t=…,v1=hex(HMAC-SHA256(secret, "t.body"))`.
pub fn sign_webhook(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

pub fn event_json(e: &Event) -> Value {
    let mut data = json!({ "object": e.object });
    if let Some(prev) = &e.previous {
        data["previous_attributes"] = serde_json::to_value(prev).unwrap_or_default();
    }
    json!({
        "id": e.id, "object": "event", "api_version": "2024-06-20", "created": e.created,
        "data": data, "livemode": false, "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null }, "type": e.kind,
    })
}

/// Delivers events to the webhook URL, signed, with Stripe's habits: occasionally twice,
/// sometimes out of order (each delivery waits a random short delay), retried on failure.
async fn deliver_webhooks(
    sandbox: Arc<Sandbox>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(usize, Event)>,
    cancel: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("sandbox webhook client: {e}");
            return;
        }
    };
    let mut rng = Rng::new(sandbox.lock().world.seed ^ 0xABCD);
    let in_flight = tokio_util::task::TaskTracker::new();
    let mut backlog: VecDeque<(usize, Event)> = VecDeque::new();
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            e = rx.recv() => match e { Some(e) => e, None => break },
        };
        backlog.push_back(event);
        while let Some((company, event)) = backlog.pop_front() {
            let Some(url) = sandbox.webhook_url_of(company) else {
                continue;
            };
            let copies = if rng.chance(0.05) { 2 } else { 1 };
            for _ in 0..copies {
                let delay = Duration::from_millis(rng.below(400));
                let (client, url, s, c) =
                    (client.clone(), url.clone(), sandbox.clone(), cancel.clone());
                let body = serde_json::to_vec(&event_json(&event)).unwrap_or_default();
                in_flight.spawn(async move {
                    tokio::select! {
                        _ = c.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    for attempt in 0..5u32 {
                        let (secret, now) = {
                            let w = s.company(company).lock();
                            (w.world.webhook_secret.clone(), w.world.now())
                        };
                        // Like Stripe, a retry goes to the endpoint as it is configured now.
                        let url = s.webhook_url_of(company).unwrap_or_else(|| url.clone());
                        let sig = sign_webhook(&secret, now, &body);
                        let ok = client
                            .post(&url)
                            .header("Content-Type", "application/json")
                            .header("Stripe-Signature", sig)
                            .body(body.clone())
                            .send()
                            .await
                            .map(|r| r.status().is_success())
                            .unwrap_or(false);
                        s.count_delivery(company, ok);
                        if ok {
                            return;
                        }
                        tokio::select! {
                            _ = c.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(500 << attempt)) => {}
                        }
                    }
                });
            }
        }
    }
    in_flight.close();
    in_flight.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_kept_for_30_days_up_to_a_bound_and_sent_as_they_were() {
        let mut w = World::generate(0, 7);
        let event = |i: usize, created: i64| Event {
            id: format!("evt_{i}"),
            kind: "product.updated".into(),
            created,
            object: serde_json::value::to_raw_value(&serde_json::json!({"id": i, "name": "Té"}))
                .unwrap(),
            previous: Some(
                serde_json::value::to_raw_value(&serde_json::json!({"name": "Old"})).unwrap(),
            ),
            seq: i as u64,
        };
        let now = w.now();
        w.keep_event(event(0, now - 31 * 86_400));
        w.keep_event(event(1, now - 29 * 86_400));
        w.keep_event(event(2, now));
        let ids: Vec<&str> = w.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["evt_1", "evt_2"], "past 30 days: forgotten");
        for i in 3..EVENTS_KEPT + 10 {
            w.keep_event(event(i, now));
        }
        assert_eq!(w.events.len(), EVENTS_KEPT);
        assert_eq!(
            w.events.front().unwrap().id,
            "evt_10",
            "the oldest went first"
        );
        // What a webhook or `/v1/events` carries is unchanged by how it is kept.
        let json = event_json(w.events.back().unwrap());
        assert_eq!(json["data"]["object"]["name"], "Té");
        assert_eq!(json["data"]["previous_attributes"]["name"], "Old");
        // A saved world loads back its events whole.
        let back: World = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(back.events.len(), EVENTS_KEPT);
        assert_eq!(event_json(back.events.back().unwrap()), json);
    }

    #[test]
    fn products_and_prices_are_found_by_id_after_changes_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SandboxOptions {
            products: 50,
            dir: Some(dir.path().to_owned()),
            ..SandboxOptions::default()
        };
        let price_of = |w: &World, id: &str| {
            let p = w.product(id).unwrap();
            assert_eq!(p.id, id);
            let price = w.price(p.default_price.as_deref().unwrap()).unwrap();
            assert_eq!(price.product, id);
            (p.name.clone(), price.unit_amount, price.currency.clone())
        };
        let (created, changed) = {
            let s = Sandbox::open(&opts).unwrap();
            let mut tx = s.lock();
            let created = s.create_product(&mut tx, "Nuevo".into(), Some((1200, "cop".into())));
            let changed = tx.world.products[7].id.clone();
            assert!(s.update_product(
                &mut tx,
                &changed,
                ProductChange {
                    name: Some("Renombrado".into()),
                    price: Some((990, "usd".into())),
                    ..ProductChange::default()
                },
            ));
            assert!(!s.update_product(&mut tx, "prod_nope", ProductChange::default()));
            assert_eq!(
                price_of(&tx.world, &created),
                ("Nuevo".into(), 1200, "cop".into())
            );
            tx.commit();
            (created, changed)
        };
        // Reopened: the snapshot and the journal's products and prices are found by id,
        // a changed product once (replaced where it was, not appended), with its new price.
        let s = Sandbox::open(&opts).unwrap();
        let mut tx = s.lock();
        assert_eq!(tx.world.products.len(), 51);
        assert_eq!(tx.world.products[7].id, changed);
        assert_eq!(
            price_of(&tx.world, &created),
            ("Nuevo".into(), 1200, "cop".into())
        );
        assert_eq!(
            price_of(&tx.world, &changed),
            ("Renombrado".into(), 990, "usd".into())
        );
        for i in [0, 25, 49] {
            let id = tx.world.products[i].id.clone();
            assert_eq!(tx.world.product(&id).unwrap().seq, tx.world.products[i].seq);
        }
        // And what is added after the restart is found too.
        let later = s.create_product(&mut tx, "Después".into(), Some((5, "cop".into())));
        assert_eq!(price_of(&tx.world, &later).0, "Después");
        assert!(tx.world.product("prod_nope").is_none() && tx.world.price("price_nope").is_none());
    }

    #[test]
    fn replay_answers_are_kept_within_a_size_and_an_age() {
        let mut r = Replays::default();
        let body =
            |i: usize| serde_json::json!({"Item": {"Id": i.to_string(), "Name": "x".repeat(1000)}});
        for i in 0..20_000 {
            r.insert(format!("rid-{i}"), 200, body(i));
        }
        assert!(r.bytes() <= REPLAY_BYTES, "{}", r.bytes());
        assert!(r.get("rid-0").is_none(), "the oldest went first");
        assert_eq!(r.get("rid-19999"), Some((200, body(19999))));
        assert!(r.len() > 10_000 && r.len() < 20_000, "{}", r.len());
        // Age: a day later, what was kept then is forgotten.
        let now = std::time::Instant::now();
        let mut r = Replays::default();
        r.insert_at("old".into(), 200, body(1), now);
        r.insert_at(
            "new".into(),
            400,
            body(2),
            now + REPLAY_AGE + Duration::from_secs(1),
        );
        assert!(r.get("old").is_none());
        assert_eq!(r.get("new").map(|a| a.0), Some(400));
        // Kept across a save and a load.
        let json = serde_json::to_string(&r).unwrap();
        let back: Replays = serde_json::from_str(&json).unwrap();
        assert_eq!(back.get("new"), r.get("new"));
        assert_eq!(back.bytes(), r.bytes());
    }
}
