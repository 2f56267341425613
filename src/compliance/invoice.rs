//! A paid Stripe invoice read into what DIAN needs: buyer tax id, lines mapped to
//! QuickBooks Items, subtotal, IVA / INC / ICA and total (COP cents), and the Alegra
//! request body built from it.

use serde_json::{Value, json};

use super::cufe::cents;
pub use crate::protocol::{Line, LocalInvoice, Tax};

/// DIAN's generic buyer for a final consumer without a tax id.
pub const FINAL_CONSUMER_ID: &str = "222222222222";

fn tax_name(display: &str) -> Option<&'static str> {
    let d = display.to_uppercase();
    if d.contains("IVA") || d.contains("VAT") {
        Some("IVA")
    } else if d.contains("INC") || d.contains("CONSUMO") {
        Some("INC")
    } else if d.contains("ICA") {
        Some("ICA")
    } else {
        None
    }
}

/// The id of `v` when it is a paid Stripe invoice; otherwise why it is not one.
fn paid_invoice_id(v: &Value) -> Result<&str, String> {
    if !v.is_object() {
        return Err("the event's data.object is not an invoice object".into());
    }
    if let Some(kind) = v["object"].as_str().filter(|k| *k != "invoice") {
        return Err(format!(
            "the event's data.object is a {kind:?}, not an invoice"
        ));
    }
    let id = v["id"]
        .as_str()
        .filter(|id| !id.trim().is_empty())
        .ok_or("invoice without id")?;
    // Only a paid invoice is a sale to report; an object that says otherwise is not one.
    if let Some(status) = v["status"].as_str().filter(|s| *s != "paid") {
        return Err(format!("invoice {id} is {status:?}, not paid"));
    }
    if v["paid"].as_bool() == Some(false) {
        return Err(format!("invoice {id} says paid: false"));
    }
    for key in ["subtotal", "total"] {
        if v[key].as_i64().is_some_and(|n| n < 0) {
            return Err(format!("invoice {id} has a negative {key} ({})", v[key]));
        }
    }
    Ok(id)
}

/// Reads a Stripe invoice object (from `invoice.paid` or `/v1/invoices`). `item_of`
/// maps a product id to its QuickBooks Item id.
pub fn from_stripe(
    v: &Value,
    item_of: impl Fn(&str) -> Option<String>,
) -> Result<LocalInvoice, String> {
    let id = paid_invoice_id(v)?;
    match v["currency"].as_str().filter(|c| !c.is_empty()) {
        Some(c) if c.eq_ignore_ascii_case("cop") => {}
        Some(c) => {
            return Err(format!(
                "invoice {id} is in {c:?}; DIAN invoices are issued in COP"
            ));
        }
        None => {
            return Err(format!(
                "invoice {id} has no currency; DIAN invoices are issued in COP"
            ));
        }
    }
    let buyer_id = v["customer_tax_ids"]
        .as_array()
        .and_then(|ids| ids.iter().find_map(|t| t["value"].as_str()))
        .or_else(|| v["metadata"]["nit"].as_str())
        .map(|s| s.replace(['.', ' '], ""))
        .unwrap_or_else(|| FINAL_CONSUMER_ID.to_owned());
    let buyer_name = v["customer_name"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("Consumidor final")
        .to_owned();
    let (mut iva, mut inc, mut ica) = (0, 0, 0);
    let mut taxes = Vec::new();
    for t in v["total_tax_amounts"].as_array().into_iter().flatten() {
        let amount = t["amount"].as_i64().unwrap_or(0);
        let rate = &t["tax_rate"];
        let display = rate["display_name"].as_str().unwrap_or("");
        let Some(name) = tax_name(display) else {
            return Err(format!(
                "invoice {id}: tax {display:?} is not IVA, INC or ICA"
            ));
        };
        match name {
            "IVA" => iva += amount,
            "INC" => inc += amount,
            _ => ica += amount,
        }
        let percent = rate["percentage"].as_f64().unwrap_or(0.0).round() as u32;
        let tax = Tax {
            name: name.to_owned(),
            percent,
        };
        if !taxes.contains(&tax) {
            taxes.push(tax);
        }
    }
    let mut lines = Vec::new();
    for (n, l) in v["lines"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        // A negative line (a proration credit, a manual credit item) is a real part of
        // a paid invoice: it goes on, and Alegra's validation says what it makes of it
        // (a REJECTED the operator sees), never dropped here as "not an invoice".
        let amount = l["amount"].as_i64().ok_or_else(|| {
            format!(
                "invoice {id}: line {} has no integer amount ({})",
                n + 1,
                l["amount"]
            )
        })?;
        let quantity = l["quantity"].as_i64().filter(|q| *q > 0).unwrap_or(1);
        let product = l["price"]["product"].as_str().map(str::to_owned);
        let description = l["description"].as_str().unwrap_or("").trim().to_owned();
        // A unit price that does not divide evenly goes as one line of the whole amount.
        let (quantity, unit, description) = if amount % quantity == 0 {
            (quantity, amount / quantity, description)
        } else {
            (1, amount, format!("{quantity} × {description}"))
        };
        lines.push(Line {
            item_id: product.as_deref().and_then(&item_of),
            product,
            description,
            quantity,
            unit,
        });
    }
    if lines.is_empty() {
        return Err(format!("invoice {id} has no lines"));
    }
    let subtotal = v["subtotal"]
        .as_i64()
        .unwrap_or_else(|| lines.iter().map(|l| l.unit * l.quantity).sum());
    Ok(LocalInvoice {
        stripe_id: id.to_owned(),
        stripe_number: v["number"].as_str().map(str::to_owned),
        buyer_id,
        buyer_name,
        lines,
        taxes,
        subtotal,
        iva,
        inc,
        ica,
        total: v["total"].as_i64().unwrap_or(subtotal + iva + inc + ica),
        kind: "invoice".into(),
    })
}

/// The Alegra request body built from a [`LocalInvoice`] (the data lives in
/// `protocol`; building the body is this domain's).
pub trait AlegraBody {
    /// The `POST /invoices` body for Alegra, issued on `date` as `number`.
    fn alegra_body(&self, prefix: &str, consecutive: &str, date: &str) -> Value;
}

impl AlegraBody for LocalInvoice {
    fn alegra_body(&self, prefix: &str, consecutive: &str, date: &str) -> Value {
        let tax: Vec<Value> = self
            .taxes
            .iter()
            .map(|t| json!({"name": t.name, "percentage": t.percent}))
            .collect();
        let items: Vec<Value> = self
            .lines
            .iter()
            .map(|l| {
                let mut item = json!({
                    "name": l.description, "price": cents(l.unit),
                    "quantity": l.quantity, "tax": tax,
                });
                if let Some(id) = &l.item_id {
                    item["reference"] = json!({"qbItemId": id});
                }
                item
            })
            .collect();
        json!({
            "date": date, "dueDate": date,
            "numberTemplate": {"prefix": prefix, "number": consecutive},
            "client": {"identification": self.buyer_id, "name": self.buyer_name},
            "items": items,
            "anotation": format!("stripe:{}", self.stripe_id),
            "stamp": {"generateStamp": true},
        })
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn stripe_invoice() -> Value {
        json!({
            "id": "in_1", "number": "ABC-0001", "currency": "cop", "customer_name": "Café Montaña S.A.S.",
            "customer_tax_ids": [{"type": "co_nit", "value": "901.555.210"}],
            "subtotal": 300000, "total": 357000,
            "total_tax_amounts": [{"amount": 57000, "tax_rate": {"display_name": "IVA", "percentage": 19.0}}],
            "lines": {"data": [
                {"amount": 200000, "quantity": 2, "description": "Café", "price": {"product": "prod_a"}},
                {"amount": 100000, "quantity": 3, "description": "Taza", "price": {"product": "prod_b"}},
            ]},
        })
    }

    #[test]
    fn a_stripe_invoice_reads_into_buyer_lines_taxes_and_items() {
        let inv = from_stripe(&stripe_invoice(), |p| (p == "prod_a").then(|| "42".into())).unwrap();
        assert_eq!(inv.buyer_id, "901555210");
        assert_eq!(
            (inv.subtotal, inv.iva, inv.inc, inv.total),
            (300000, 57000, 0, 357000)
        );
        assert_eq!(inv.lines[0].item_id.as_deref(), Some("42"));
        assert_eq!((inv.lines[0].quantity, inv.lines[0].unit), (2, 100000));
        // 100000 does not divide by 3: one line of the whole amount.
        assert_eq!((inv.lines[1].quantity, inv.lines[1].unit), (1, 100000));
        assert_eq!(inv.lines[1].description, "3 × Taza");
        let body = inv.alegra_body("SETP", "990000001", "2026-11-22");
        assert_eq!(body["items"][0]["price"], "1000.00");
        assert_eq!(body["items"][0]["tax"][0]["percentage"], 19);
        assert_eq!(body["anotation"], "stripe:in_1");
    }

    #[test]
    fn no_tax_id_means_the_final_consumer_and_other_currencies_are_refused() {
        let mut v = stripe_invoice();
        v["customer_tax_ids"] = json!([]);
        assert_eq!(
            from_stripe(&v, |_| None).unwrap().buyer_id,
            FINAL_CONSUMER_ID
        );
        v["currency"] = json!("usd");
        assert!(from_stripe(&v, |_| None).unwrap_err().contains("COP"));
        v.as_object_mut().unwrap().remove("currency");
        let e = from_stripe(&v, |_| None).unwrap_err();
        assert_eq!(
            e,
            "invoice in_1 has no currency; DIAN invoices are issued in COP"
        );
    }
}
