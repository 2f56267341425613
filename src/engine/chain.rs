//! The entity chain: from any product, Item, invoice, Alegra document or CUFE, every
//! object linked to it across the systems — Stripe product → QuickBooks Item → the
//! invoices that use it → their Alegra documents → DIAN's verdict and CUFE — with the
//! audit trail's events of each and the fields where the systems disagree, as far as
//! the engine has recorded them. Read from the store only: asking costs no API call.

use crate::protocol::{
    Answer, AuditEntry, AuditFilter, ChainLink, CommandError, Discrepancy, DiscrepancyKind,
    EntityChain, FieldDiff, InvoiceRecord, QueryReply, Side, Status,
};
use crate::store::Store;

/// The prefixes that say which kind a key is.
const KINDS: [&str; 4] = ["invoice", "alegra", "product", "item"];

/// Events listed per link.
const EVENTS_PER_LINK: usize = 20;
/// Invoices listed per product (the newest; the rest are counted).
const INVOICES_PER_PRODUCT: usize = 10;

fn unreadable(e: crate::store::SqlError) -> CommandError {
    CommandError::unavailable(format!("the store: {e}"))
}

/// What the live reconciliation says of a product or Item: the disagreement its last
/// refresh saw (None when the two systems agree, or when it has not read them yet).
pub trait Live {
    fn discrepancy_of(&self, key: &str) -> Option<Discrepancy>;
}

/// No live reconciliation (a chain from the store alone).
impl Live for () {
    fn discrepancy_of(&self, _: &str) -> Option<Discrepancy> {
        None
    }
}

impl Live for super::reconcile::Reconciler {
    fn discrepancy_of(&self, key: &str) -> Option<Discrepancy> {
        super::reconcile::Reconciler::discrepancy_of(self, key)
    }
}

/// The chain of `key`: a Stripe product or invoice id, a QuickBooks Item id, a DIAN
/// number, a CUFE, or an Alegra document id. `live` adds, to the product and Item
/// links, the field-level differences between Stripe and QuickBooks as the live
/// reconciliation last read them, and finds what only it knows of (a product never
/// synced, an Item with no product).
pub fn chain(store: &Store, live: &dyn Live, key: &str) -> QueryReply {
    let key = key.trim();
    // `invoice:`, `alegra:`, `product:` or `item:` says which kind a key is, where one
    // id names several (Alegra document 3 and QuickBooks Item 3).
    let (kind, key) = match key.split_once(':') {
        Some((k, rest)) if KINDS.contains(&k) => (Some(k), rest.trim()),
        _ => (None, key),
    };
    if key.is_empty() {
        return Err(CommandError::invalid(
            "key",
            "give a product, Item, invoice, DIAN number, CUFE or Alegra document id (invoice:, alegra:, product: or item: before it says which)",
        ));
    }
    let wants = |k: &str| kind.is_none_or(|kind| kind == k);
    let mut out = EntityChain {
        asked: key.to_owned(),
        ..EntityChain::default()
    };
    // An invoice (Stripe id, DIAN number or CUFE), or an Alegra document: its chain
    // starts there and goes back to the products of its lines.
    let by_invoice = if wants("invoice") {
        store.invoice(key).map_err(unreadable)?
    } else {
        None
    };
    let by_document = if wants("alegra") && by_invoice.is_none() {
        store.invoice_of_alegra_document(key).map_err(unreadable)?
    } else {
        None
    };
    // A product, or the Item one is mapped to.
    let by_product = if wants("product") && store.mapping(key).map_err(unreadable)?.is_some() {
        Some(key.to_owned())
    } else {
        None
    };
    let by_item = if wants("item") && by_product.is_none() {
        store.product_of_item(key).map_err(unreadable)?
    } else {
        None
    };
    // Where one id names an invoice's document and a product's Item, the invoice's
    // chain is shown and the other named.
    let invoice = by_invoice.or(by_document.clone());
    if by_document.is_some() && by_item.is_some() {
        out.also.push(format!(
            "{key} is also a QuickBooks Item: :chain item:{key} (this is alegra:{key})"
        ));
    }
    if let Some(rec) = invoice {
        invoice_links(store, &rec, 0, &mut out)?;
        let mut seen = Vec::new();
        for line in &rec.invoice.lines {
            let Some(product) = line.product.as_deref() else {
                continue;
            };
            if seen.contains(&product) {
                continue;
            }
            seen.push(product);
            product_links(store, live, product, line.item_id.as_deref(), 1, &mut out)?;
        }
        return Ok(Answer::Chain(Box::new(out)));
    }
    let Some(product) = by_product.or(by_item) else {
        // Not in the store: a product never synced, or an Item with no product, as the
        // live reconciliation sees them.
        if let Some(d) = live.discrepancy_of(key).filter(|d| {
            (wants("product") && d.product_id.as_deref() == Some(key))
                || (wants("item") && d.item_id.as_deref() == Some(key))
        }) {
            unsynced_links(&d, &mut out);
            return Ok(Answer::Chain(Box::new(out)));
        }
        // Said as "… not found"; a long key is cut, not echoed whole.
        let shown: String = if key.chars().count() > 80 {
            format!("{}…", key.chars().take(80).collect::<String>())
        } else {
            key.to_owned()
        };
        return Err(CommandError::not_found(match kind {
            None => format!(
                "{shown:?} (as a product, Item, invoice, DIAN number, CUFE or Alegra document the engine has seen)"
            ),
            Some(k) => format!("{k} {shown:?} (without `{k}:` every kind of id is looked for)"),
        }));
    };
    product_links(store, live, &product, None, 0, &mut out)?;
    let (invoices, total) = store
        .invoices_using(&product, INVOICES_PER_PRODUCT)
        .map_err(unreadable)?;
    out.more_invoices = total.saturating_sub(invoices.len() as u64);
    for rec in &invoices {
        invoice_links(store, rec, 2, &mut out)?;
    }
    Ok(Answer::Chain(Box::new(out)))
}

fn events(store: &Store, entities: &[&str]) -> Result<Vec<AuditEntry>, CommandError> {
    let mut all = Vec::new();
    for entity in entities {
        let filter = AuditFilter {
            entity: Some((*entity).to_owned()),
            limit: EVENTS_PER_LINK,
            ..AuditFilter::default()
        };
        all.extend(store.audit_query(&filter).map_err(unreadable)?);
    }
    all.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(b.id.cmp(&a.id)));
    all.dedup_by_key(|e| e.id);
    all.truncate(EVENTS_PER_LINK);
    Ok(all)
}

fn opt(v: Option<&str>) -> String {
    v.map_or_else(|| "–".to_owned(), str::to_owned)
}

fn when(ms: Option<i64>) -> String {
    ms.map_or_else(|| "–".to_owned(), crate::protocol::journal::utc_time)
}

/// The product and its Item. `used_item` is the Item an invoice line recorded, when
/// the chain comes from an invoice (a remapped product disagrees with it).
fn product_links(
    store: &Store,
    live: &dyn Live,
    product: &str,
    used_item: Option<&str>,
    depth: u8,
    out: &mut EntityChain,
) -> Result<(), CommandError> {
    let mapping = store.mapping(product).map_err(unreadable)?;
    let synced_at = store.mapping_synced_at(product).map_err(unreadable)?;
    let mut link = ChainLink {
        system: "stripe product".into(),
        id: product.to_owned(),
        depth,
        facts: vec![(
            "mapping".into(),
            mapping
                .as_ref()
                .map_or_else(|| "none: never synced".to_owned(), |m| m.status.clone()),
        )],
        events: events(store, &[product])?,
        ..ChainLink::default()
    };
    if let Some(reason) = mapping.as_ref().and_then(|m| m.reason.clone()) {
        link.facts.push(("reason".into(), reason));
    }
    let drift = live.discrepancy_of(product);
    if let Some(d) = drift
        .as_ref()
        .filter(|d| d.kind == DiscrepancyKind::Missing)
    {
        link.disagreements.push(no_item(d));
    }
    out.links.push(link);
    let Some(m) = mapping else {
        return Ok(());
    };
    let Some(item) = m.item_id.clone() else {
        return Ok(());
    };
    let mut link = ChainLink {
        system: "quickbooks item".into(),
        id: item.clone(),
        depth: depth + 1,
        facts: vec![
            ("name as synced".into(), opt(m.item_name.as_deref())),
            ("SyncToken as synced".into(), opt(m.sync_token.as_deref())),
            ("last sync".into(), when(synced_at)),
        ],
        events: events(store, &[&item])?,
        ..ChainLink::default()
    };
    if let Some(pending) = &m.pending_request_id {
        link.facts
            .push(("write in flight (requestid)".into(), pending.clone()));
    }
    if let Some(d) = drift.filter(|d| d.item_id.as_deref() == Some(item.as_str())) {
        link.disagreements.extend(field_diffs(&d));
    }
    if let Some(used) = used_item.filter(|u| *u != item) {
        link.disagreements.push(FieldDiff {
            field: "Item".into(),
            here: item.clone(),
            there: used.to_owned(),
            against: "the invoice line".into(),
        });
    }
    out.links.push(link);
    Ok(())
}

/// An invoice's compliance history (as audit entries) and the audit trail's entries
/// about it, newest first.
fn invoice_events(store: &Store, rec: &InvoiceRecord) -> Result<Vec<AuditEntry>, CommandError> {
    let history = store.invoice_history(&rec.stripe_id).map_err(unreadable)?;
    let mut evs: Vec<AuditEntry> = history
        .iter()
        .rev()
        .take(EVENTS_PER_LINK)
        .map(|h| AuditEntry {
            id: 0,
            at_ms: h.at_ms,
            kind: "invoice".into(),
            entity: rec.number.clone(),
            actor: h.actor.clone(),
            message: format!(
                "{} → {}{}: {}",
                h.from.as_deref().unwrap_or("new"),
                h.to,
                h.code
                    .as_deref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default(),
                h.message
            ),
            trace_id: None,
        })
        .collect();
    evs.extend(events(store, &[&rec.stripe_id, &rec.number])?);
    evs.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
    evs.truncate(EVENTS_PER_LINK);
    Ok(evs)
}

/// The invoice, its Alegra document and DIAN's verdict.
fn invoice_links(
    store: &Store,
    rec: &InvoiceRecord,
    depth: u8,
    out: &mut EntityChain,
) -> Result<(), CommandError> {
    let evs = invoice_events(store, rec)?;
    let items: Vec<String> = rec
        .invoice
        .lines
        .iter()
        .map(|l| {
            format!(
                "{} ×{} → Item {}",
                l.product.as_deref().unwrap_or("–"),
                l.quantity,
                l.item_id.as_deref().unwrap_or("none")
            )
        })
        .collect();
    out.links.push(ChainLink {
        system: "stripe invoice".into(),
        id: rec.stripe_id.clone(),
        depth,
        facts: vec![
            ("number".into(), rec.number.clone()),
            (
                "total".into(),
                format!("{} COP", crate::protocol::text::pesos(rec.total)),
            ),
            (
                "buyer".into(),
                format!("{} {}", rec.buyer_id, rec.buyer_name),
            ),
            ("lines".into(), items.join("; ")),
            ("created".into(), when(Some(rec.created_at_ms))),
        ],
        events: evs,
        ..ChainLink::default()
    });
    let Some(doc) = rec.alegra_id.clone() else {
        out.links.push(ChainLink {
            system: "dian".into(),
            id: rec.number.clone(),
            depth: depth + 1,
            facts: vec![
                ("state".into(), rec.status.name().to_owned()),
                ("alegra document".into(), "none yet".into()),
            ],
            ..ChainLink::default()
        });
        return Ok(());
    };
    out.links.push(ChainLink {
        system: "alegra document".into(),
        id: doc.clone(),
        depth: depth + 1,
        facts: vec![("attempts".into(), rec.attempts.to_string())],
        events: events(store, &[&doc])?,
        ..ChainLink::default()
    });
    let mut dian = ChainLink {
        system: "dian".into(),
        id: rec.number.clone(),
        depth: depth + 2,
        facts: vec![
            ("state".into(), rec.status.name().to_owned()),
            ("CUFE".into(), opt(rec.cufe.as_deref())),
            ("validated".into(), when(rec.validated_at_ms)),
        ],
        ..ChainLink::default()
    };
    if let Some(code) = &rec.last_code {
        dian.facts.push((
            "last answer".into(),
            format!("{code}: {}", opt(rec.last_message.as_deref())),
        ));
    }
    if rec.status == Status::Validated && rec.cufe.is_none() {
        dian.disagreements.push(FieldDiff {
            field: "CUFE".into(),
            here: "none recorded".into(),
            there: "VALIDATED".into(),
            against: "DIAN's state".into(),
        });
    }
    out.links.push(dian);
    Ok(())
}

/// A side's value of `field`, as shown.
fn side_value(side: Option<&Side>, field: &str) -> String {
    let Some(s) = side else {
        return "–".into();
    };
    match field {
        "name" => format!("{:?}", s.name),
        "price" => s
            .price
            .map_or_else(|| "none".to_owned(), crate::protocol::text::amount),
        "active" => if s.active { "active" } else { "inactive" }.to_owned(),
        other => format!("({other})"),
    }
}

/// The fields an Item differs from its product in: QuickBooks' value here, Stripe's
/// there.
fn field_diffs(d: &Discrepancy) -> Vec<FieldDiff> {
    d.fields
        .iter()
        .map(|f| FieldDiff {
            field: f.clone(),
            here: side_value(d.quickbooks.as_ref(), f),
            there: side_value(d.stripe.as_ref(), f),
            against: "Stripe (live)".into(),
        })
        .collect()
}

/// A product QuickBooks holds no Item for (on the product's link: Stripe here).
fn no_item(d: &Discrepancy) -> FieldDiff {
    FieldDiff {
        field: "Item".into(),
        here: d.stripe.as_ref().map_or_else(
            || "wanted".to_owned(),
            |s| format!("wanted as {:?}", s.name),
        ),
        there: "none".into(),
        against: "QuickBooks (live)".into(),
    }
}

/// The links of something only the live reconciliation knows: a product the engine
/// never synced, or an Item no product maps to.
fn unsynced_links(d: &Discrepancy, out: &mut EntityChain) {
    let facts = |s: &Side| {
        vec![
            ("name".into(), s.name.clone()),
            ("price".into(), side_value(Some(s), "price")),
            ("active".into(), side_value(Some(s), "active")),
        ]
    };
    if let (Some(product), Some(s)) = (&d.product_id, &d.stripe) {
        let mut link = ChainLink {
            system: "stripe product".into(),
            id: product.clone(),
            facts: facts(s),
            ..ChainLink::default()
        };
        link.facts
            .push(("mapping".into(), "none: never synced".into()));
        if d.item_id.is_none() {
            link.disagreements.push(no_item(d));
        }
        out.links.push(link);
    }
    if let (Some(item), Some(s)) = (&d.item_id, &d.quickbooks) {
        let mut link = ChainLink {
            system: "quickbooks item".into(),
            id: item.clone(),
            depth: u8::from(d.product_id.is_some()),
            facts: facts(s),
            ..ChainLink::default()
        };
        if d.kind == DiscrepancyKind::Orphan {
            link.disagreements.push(FieldDiff {
                field: "product".into(),
                here: format!("Item {}", side_value(Some(s), "active")),
                there: "no product".into(),
                against: "Stripe (live)".into(),
            });
        } else {
            link.disagreements.extend(field_diffs(d));
        }
        out.links.push(link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The live reconciliation as a list of the disagreements its last refresh saw.
    struct Seen(Vec<Discrepancy>);

    impl Live for Seen {
        fn discrepancy_of(&self, key: &str) -> Option<Discrepancy> {
            self.0
                .iter()
                .find(|d| d.product_id.as_deref() == Some(key) || d.item_id.as_deref() == Some(key))
                .cloned()
        }
    }

    fn side(name: &str, price: f64) -> Option<Side> {
        Some(Side {
            name: name.into(),
            price: Some(price),
            active: true,
            currency: None,
        })
    }

    fn links(reply: QueryReply) -> Vec<ChainLink> {
        match reply {
            Ok(Answer::Chain(c)) => c.links,
            other => panic!("not a chain: {other:?}"),
        }
    }

    #[test]
    fn what_only_the_live_reconciliation_knows_has_a_chain_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let live = Seen(vec![
            Discrepancy {
                kind: DiscrepancyKind::Orphan,
                product_id: None,
                item_id: Some("77".into()),
                fields: vec![],
                stripe: None,
                quickbooks: side("Left behind", 5.0),
                amount: 5.0,
                currency: "COP".into(),
                since_ms: 0,
            },
            Discrepancy {
                kind: DiscrepancyKind::Missing,
                product_id: Some("prod_new".into()),
                item_id: None,
                fields: vec![],
                stripe: side("Brand new", 12.5),
                quickbooks: None,
                amount: 12.5,
                currency: "USD".into(),
                since_ms: 0,
            },
        ]);
        // An Item no product maps to.
        let orphan = links(chain(&store, &live, "77"));
        assert_eq!(orphan.len(), 1, "{orphan:?}");
        assert_eq!(
            (orphan[0].system.as_str(), orphan[0].id.as_str()),
            ("quickbooks item", "77")
        );
        assert_eq!(orphan[0].disagreements[0].there, "no product");
        assert!(orphan[0].facts.contains(&("price".into(), "5.00".into())));
        // A product never synced: its Item is wanted and missing.
        let missing = links(chain(&store, &live, "prod_new"));
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].disagreements[0].field, "Item");
        assert_eq!(missing[0].disagreements[0].here, "wanted as \"Brand new\"");
        // Neither the store nor the reconciliation knows it: not found, named.
        let unknown = chain(&store, &live, "prod_nobody");
        assert!(
            matches!(&unknown, Err(e) if e.to_string().contains("prod_nobody")),
            "{unknown:?}"
        );
        // Without the live side, the store alone knows neither.
        assert!(chain(&store, &(), "77").is_err());
    }
}
