//! What a Stripe product should look like as a QuickBooks Item: a valid, deterministic
//! name, the unit price in major units, active flag, and a hash of it all so an
//! unchanged product is never written twice.

use serde_json::{Value, json};
use sha2::Digest;

use crate::connectors::stripe::{PriceRef, Product};

pub const MAX_NAME_CHARS: usize = 100;

/// A product's data turned into what QuickBooks must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredItem {
    pub name: String,
    pub unit_price: Option<f64>,
    pub active: bool,
    pub description: Option<String>,
    pub sku: String,
}

/// Why a product cannot become an Item as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidProduct {
    #[error("name is empty once made valid for QuickBooks (original: {0:?})")]
    EmptyName(String),
    #[error("default price {0} has no unit_amount (tiered or custom pricing is not supported)")]
    NoAmount(String),
    #[error("price amount {0} is negative")]
    NegativeAmount(i64),
}

/// Makes a name valid for QuickBooks, deterministically: control characters become
/// spaces, `:` (the sub-item separator) becomes `-`, runs of spaces collapse, ends are
/// trimmed, and the result is cut to 100 characters (on a character boundary).
pub fn quickbooks_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut last_space = true;
    for c in raw.chars() {
        let c = match c {
            ':' => '-',
            c if c.is_control() || c.is_whitespace() => ' ',
            c => c,
        };
        if c == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    let trimmed = out.trim_end();
    truncate_chars(trimmed, MAX_NAME_CHARS)
        .trim_end()
        .to_owned()
}

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The name used when the plain name is held by another product's Item: the product
/// id's tail appended, the base cut so the whole stays within 100 characters.
pub fn disambiguated_name(base: &str, product_id: &str) -> String {
    let tail: String = {
        let id = product_id.strip_prefix("prod_").unwrap_or(product_id);
        let n = id.chars().count();
        id.chars().skip(n.saturating_sub(8)).collect()
    };
    let suffix = format!(" [{tail}]");
    let room = MAX_NAME_CHARS - suffix.chars().count();
    format!("{}{suffix}", truncate_chars(base, room).trim_end())
}

/// Stripe's zero-decimal currencies (amounts are in whole units).
pub fn is_zero_decimal(currency: &str) -> bool {
    matches!(
        currency,
        "bif"
            | "clp"
            | "djf"
            | "gnf"
            | "jpy"
            | "kmf"
            | "krw"
            | "mga"
            | "pyg"
            | "rwf"
            | "ugx"
            | "vnd"
            | "vuv"
            | "xaf"
            | "xof"
            | "xpf"
    )
}

/// Minor units → major units, honouring zero-decimal currencies.
pub fn unit_price(amount: i64, currency: &str) -> f64 {
    if is_zero_decimal(&currency.to_lowercase()) {
        amount as f64
    } else {
        amount as f64 / 100.0
    }
}

impl DesiredItem {
    /// `price` is the product's default price when it was not expanded in `product`.
    pub fn from_product(
        product: &Product,
        price: Option<&crate::connectors::stripe::Price>,
    ) -> Result<Self, InvalidProduct> {
        let name = quickbooks_name(&product.name);
        if name.is_empty() {
            return Err(InvalidProduct::EmptyName(product.name.clone()));
        }
        let price = match &product.default_price {
            Some(PriceRef::Expanded(p)) => Some(p.as_ref()),
            _ => price,
        };
        let unit_price = match price {
            None => None,
            Some(p) => match p.unit_amount {
                None => return Err(InvalidProduct::NoAmount(p.id.clone())),
                Some(a) if a < 0 => return Err(InvalidProduct::NegativeAmount(a)),
                Some(a) => Some(unit_price(a, &p.currency)),
            },
        };
        let description = product
            .description
            .as_deref()
            .map(|d| truncate_chars(d, 4000).to_owned());
        Ok(Self {
            name,
            unit_price,
            active: product.active && !product.deleted,
            description,
            sku: product.id.clone(),
        })
    }

    pub fn with_name(&self, name: String) -> Self {
        Self {
            name,
            ..self.clone()
        }
    }

    /// Stable hash of what would be written (ignoring the name suffix choice).
    pub fn hash(&self) -> String {
        let mut h = sha2::Sha256::new();
        h.update(self.name.as_bytes());
        h.update([0]);
        h.update(format!("{:?}", self.unit_price).as_bytes());
        h.update([self.active as u8]);
        h.update(self.description.as_deref().unwrap_or("").as_bytes());
        hex::encode(&h.finalize()[..12])
    }

    /// Body of a create (`Service` Item booked to `income_account`).
    pub fn create_body(&self, income_account: &str) -> Value {
        let mut v = json!({
            "Name": self.name, "Type": "Service", "Sku": self.sku, "Active": self.active,
            "IncomeAccountRef": { "value": income_account },
        });
        if let Some(p) = self.unit_price {
            v["UnitPrice"] = json!(p);
        }
        if let Some(d) = &self.description {
            v["Description"] = json!(d);
        }
        v
    }

    /// Body of a sparse update of Item `id` at `sync_token` (sparse still repeats Name).
    pub fn update_body(&self, id: &str, sync_token: &str) -> Value {
        let mut v = json!({
            "Id": id, "SyncToken": sync_token, "sparse": true,
            "Name": self.name, "Sku": self.sku, "Active": self.active,
            "UnitPrice": self.unit_price.unwrap_or(0.0),
        });
        if let Some(d) = &self.description {
            v["Description"] = json!(d);
        }
        v
    }
}

/// QuickBooks `requestid` for creating the Item of `product_id` with `body` (written
/// out, as it is sent: compact JSON): the same request always gets the same id
/// (≤ 50 chars), so a resend is replayed, not repeated.
pub fn create_request_id_of(product_id: &str, body: &str) -> String {
    request_id("c-", product_id, body)
}

/// QuickBooks `requestid` for an update of `item_id` with `body` (written out).
pub fn update_request_id_of(item_id: &str, body: &str) -> String {
    request_id("u-", item_id, body)
}

fn request_id(prefix: &str, of: &str, body: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(of.as_bytes());
    h.update(body.as_bytes());
    format!("{prefix}{}", &hex::encode(h.finalize())[..40])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_valid_deterministically() {
        assert_eq!(
            quickbooks_name("  Plan:  Pro\t\n Mensual "),
            "Plan- Pro Mensual"
        );
        let long = "é".repeat(150);
        assert_eq!(quickbooks_name(&long).chars().count(), 100);
        assert_eq!(quickbooks_name("Café ☕"), "Café ☕");
        assert_eq!(quickbooks_name(" \t "), "");
    }

    #[test]
    fn disambiguated_name_stays_within_the_limit() {
        let long = "x".repeat(100);
        let n = disambiguated_name(&long, "prod_ABCDEFGHIJKLMN");
        assert_eq!(n.chars().count(), 100);
        assert!(n.ends_with(" [GHIJKLMN]"));
    }

    #[test]
    fn zero_decimal_currencies_are_whole_units() {
        assert_eq!(unit_price(1500, "jpy"), 1500.0);
        assert_eq!(unit_price(1500, "JPY"), 1500.0);
        assert_eq!(unit_price(4999, "usd"), 49.99);
        assert_eq!(unit_price(1_990_000, "cop"), 19_900.0);
    }

    #[test]
    fn request_id_depends_on_request_not_attempt() {
        let body = json!({"Name": "a"}).to_string();
        assert_eq!(
            create_request_id_of("p", &body),
            create_request_id_of("p", &body)
        );
        assert_ne!(
            create_request_id_of("p", &body),
            create_request_id_of("q", &body)
        );
        assert!(create_request_id_of("p", &body).len() <= 50);
    }
}
