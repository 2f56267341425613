//! QuickBooks batch and bulk reads, over real HTTP on loopback: the sandbox's batch
//! endpoint, `IN` queries, pages of 1,000 and change data capture as QuickBooks has
//! them; then the engine's full sync through them — one quota unit per Item written,
//! exactly one Item per product, into an empty company and into one that already holds
//! half of them.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use serde_json::{Value, json};
use syncctl::sandbox::SandboxServer;

/// A raw QuickBooks client of the sandbox (its own access token, from the sandbox's
/// current refresh token: start an engine only after it is done).
struct Qb {
    http: reqwest::Client,
    company: String,
    token: String,
}

impl Qb {
    async fn new(sb: &SandboxServer) -> Self {
        let http = reqwest::Client::new();
        let refresh = sb.sandbox.lock().world.refresh_token.clone();
        let r: Value = http
            .post(format!("{}/oauth2/v1/tokens/bearer", sb.base_url()))
            .basic_auth(
                syncctl::sandbox::QB_CLIENT_ID,
                Some(syncctl::sandbox::QB_CLIENT_SECRET),
            )
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Self {
            http,
            company: format!(
                "{}/v3/company/{}",
                sb.base_url(),
                syncctl::sandbox::QB_REALM_ID
            ),
            token: r["access_token"].as_str().unwrap().to_owned(),
        }
    }

    async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn batch(&self, requestid: Option<&str>, items: Value) -> (u16, Value) {
        let mut q = vec![("minorversion", "75")];
        if let Some(r) = requestid {
            q.push(("requestid", r));
        }
        Self::answer(
            self.http
                .post(format!("{}/batch", self.company))
                .bearer_auth(&self.token)
                .query(&q)
                .json(&json!({ "BatchItemRequest": items })),
        )
        .await
    }

    async fn query(&self, query: &str) -> (u16, Value) {
        Self::answer(
            self.http
                .get(format!("{}/query", self.company))
                .bearer_auth(&self.token)
                .query(&[("query", query), ("minorversion", "75")]),
        )
        .await
    }

    async fn cdc(&self, entities: &str, since: &str) -> (u16, Value) {
        Self::answer(
            self.http
                .get(format!("{}/cdc", self.company))
                .bearer_auth(&self.token)
                .query(&[
                    ("entities", entities),
                    ("changedSince", since),
                    ("minorversion", "75"),
                ]),
        )
        .await
    }

    /// Creates `names` as Service Items in batches of 30 (`sku` gives each its Sku).
    async fn create_all(&self, items: &[(String, Option<String>, f64)]) -> Vec<Value> {
        let mut out = Vec::new();
        for chunk in items.chunks(30) {
            let ops: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, (name, sku, price))| {
                    let mut item = json!({"Name": name, "Type": "Service", "UnitPrice": price,
                                          "IncomeAccountRef": {"value": "1"}});
                    if let Some(s) = sku {
                        item["Sku"] = json!(s);
                    }
                    json!({"bId": (i + 1).to_string(), "operation": "create", "Item": item})
                })
                .collect();
            let (status, v) = self.batch(None, json!(ops)).await;
            assert_eq!(status, 200, "{v}");
            out.extend(v["BatchItemResponse"].as_array().unwrap().iter().cloned());
        }
        out
    }
}

fn item(name: &str) -> Value {
    json!({"Name": name, "Type": "Service", "UnitPrice": 5.0, "IncomeAccountRef": {"value": "1"}})
}

fn by_bid(v: &Value, bid: &str) -> Value {
    v["BatchItemResponse"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["bId"] == bid)
        .cloned()
        .unwrap_or_else(|| panic!("no answer for bId {bid}: {v}"))
}

fn fault_code(a: &Value) -> &str {
    a["Fault"]["Error"][0]["code"].as_str().unwrap_or("")
}

async fn qb_stats(sb: &SandboxServer) -> Value {
    sb.sandbox.stats()["quickbooks"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_operation_on_its_own() {
    let sb = common::sandbox(1, 1).await;
    let qb = Qb::new(&sb).await;
    let made = qb
        .create_all(&[("Café Latte".into(), None, 3.0), ("Té".into(), None, 2.0)])
        .await;
    let latte_id = made[0]["Item"]["Id"].as_str().unwrap().to_owned();
    let before = qb_stats(&sb).await;
    let (status, v) = qb
        .batch(
            None,
            json!([
                {"bId": "new", "operation": "create", "Item": item("Mate")},
                {"bId": "dup", "operation": "create", "Item": item("CAFÉ LATTE")},
                {"bId": "stale", "operation": "update",
                 "Item": {"Id": latte_id, "SyncToken": "7", "Name": "Café Latte", "sparse": true}},
                {"bId": "bad", "operation": "create", "Item": item("a:b")},
                {"bId": "q", "Query": "select * from Item where Name in ('café latte', 'TÉ', 'Mate') and Active in (true, false)"},
                {"bId": "del", "operation": "delete", "Item": {"Id": latte_id, "SyncToken": "0"}},
            ]),
        )
        .await;
    // One HTTP 200; each operation succeeds or fails on its own.
    assert_eq!(status, 200, "{v}");
    assert_eq!(by_bid(&v, "new")["Item"]["Name"], "Mate");
    assert_eq!(fault_code(&by_bid(&v, "dup")), "6240");
    assert_eq!(fault_code(&by_bid(&v, "stale")), "5010");
    assert_eq!(fault_code(&by_bid(&v, "bad")), "2170");
    assert!(
        !fault_code(&by_bid(&v, "del")).is_empty(),
        "Items are never deleted"
    );
    // The query ran against the company as the batch found it: not the Item it created.
    let q = by_bid(&v, "q");
    let mut found: Vec<&str> = q["QueryResponse"]["Item"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Name"].as_str().unwrap())
        .collect();
    found.sort_unstable();
    assert_eq!(found, ["Café Latte", "Té"]);
    let after = qb_stats(&sb).await;
    let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!((d("batch_requests"), d("batch_operations")), (1, 6));
    assert_eq!((d("creates"), d("requests"), d("quota_units")), (1, 1, 6));
    assert_eq!(after["items_total"], 3);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_requestid_replays_the_first_answer_within_quickbooks_limits() {
    let sb = common::sandbox(1, 2).await;
    let qb = Qb::new(&sb).await;
    let rid = "b-0123456789abcdef0123456789abcdef01"; // 36 characters
    assert_eq!(rid.len(), 36);
    let ops = json!([{"bId": "1", "operation": "create", "Item": item("Uno")},
                     {"bId": "2", "operation": "create", "Item": item("Dos")}]);
    let (s1, first) = qb.batch(Some(rid), ops.clone()).await;
    let (s2, again) = qb.batch(Some(rid), ops.clone()).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first, again, "a repeat gets the first answer");
    let st = qb_stats(&sb).await;
    assert_eq!(
        (st["items_total"].as_u64(), st["replays"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(st["batch_requests"], 1, "a replay executes nothing");

    // 37 characters: refused as a whole, nothing written.
    let long = format!("{rid}x");
    let (s, v) = qb.batch(Some(&long), ops.clone()).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["Fault"]["Error"][0]["Detail"]
            .as_str()
            .unwrap()
            .contains("36")
    );
    // With a requestid, a bId is at most 10 characters.
    let (s, v) = qb
        .batch(
            Some("b-short"),
            json!([{"bId": "12345678901", "operation": "create", "Item": item("Tres")}]),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // At most 30 operations; bIds unique.
    let many: Vec<Value> = (0..31)
        .map(|i| json!({"bId": i.to_string(), "operation": "create", "Item": item(&format!("n{i}"))}))
        .collect();
    let (s, v) = qb.batch(None, json!(many)).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = qb
        .batch(
            None,
            json!([{"bId": "1", "Query": "select * from Item"},
                   {"bId": "1", "Query": "select * from Item"}]),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(qb_stats(&sb).await["items_total"], 2);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_have_their_own_throttle_and_each_operation_counts_toward_the_quota() {
    // 600 requests a minute (10 a second back to back) → 48 batch requests a minute.
    let sb = common::sandbox(1, 3).await;
    let qb = Qb::new(&sb).await;
    common::faults(
        &sb.base_url(),
        json!({"service": "quickbooks", "rate_limit_per_min": 600}),
    )
    .await;
    // A batch of 30 operations is one request toward the per-second shape (the next
    // request passes at once) but 30 units of the minute's quota (their exhaustion is
    // unit-tested: the batch throttle stops batches long before, at any rate).
    let before = qb_stats(&sb).await;
    let ops: Vec<Value> = (0..30)
        .map(|i| json!({"bId": (i + 1).to_string(), "Query": "select * from Item"}))
        .collect();
    let (s, v) = qb.batch(None, json!(ops)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = qb.query("select * from Item").await;
    assert_eq!(s, 200, "{v}");
    let after = qb_stats(&sb).await;
    let units = after["quota_units"].as_u64().unwrap() - before["quota_units"].as_u64().unwrap();
    assert_eq!(units, 31);

    // The batch throttle: at 6,000/min (480 batches/min, 8 back to back),
    // one-operation batches in a row are refused once the batch burst is spent, while
    // ordinary requests still pass.
    let sb = common::sandbox(1, 4).await;
    let qb = Qb::new(&sb).await;
    common::faults(
        &sb.base_url(),
        json!({"service": "quickbooks", "rate_limit_per_min": 6000}),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let (s, _) = qb
            .batch(None, json!([{"bId": "1", "Query": "select * from Item"}]))
            .await;
        statuses.push(s);
    }
    assert_eq!(statuses[..8], [200; 8], "{statuses:?}");
    assert!(statuses[8..].contains(&429), "{statuses:?}");
    let v = common::get_json(&format!("{}/_sandbox/stats", sb.base_url())).await;
    assert!(v["quickbooks"]["throttled"].as_u64().unwrap() >= 1);
    let (s, _) = qb.query("select * from Item").await;
    assert_eq!(s, 200, "the ordinary quota is not the batch throttle");
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_read_pages_of_up_to_1000_and_in_lists() {
    let sb = common::sandbox(1, 5).await;
    let qb = Qb::new(&sb).await;
    let items: Vec<(String, Option<String>, f64)> = (0..2500)
        .map(|i| (format!("Item {i}"), None, 1.0))
        .collect();
    qb.create_all(&items).await;
    let page = |start: usize| {
        format!(
            "select * from Item where Active in (true, false) STARTPOSITION {start} MAXRESULTS 1000"
        )
    };
    let mut seen = 0;
    for (start, expected) in [(1, 1000), (1001, 1000), (2001, 500)] {
        let (s, v) = qb.query(&page(start)).await;
        assert_eq!(s, 200, "{v}");
        let got = v["QueryResponse"]["Item"].as_array().unwrap().len();
        assert_eq!(
            (got, v["QueryResponse"]["startPosition"].as_u64()),
            (expected, Some(start as u64))
        );
        seen += got;
    }
    assert_eq!(seen, 2500);
    let (s, v) = qb.query(&page(2501)).await;
    assert_eq!(
        (s, v["QueryResponse"].get("Item")),
        (200, None),
        "past the end: no Item key"
    );
    let (s, v) = qb.query("select * from Item MAXRESULTS 1001").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["Fault"]["Error"][0]["code"], "4000");
    let (s, v) = qb
        .query(r"select * from Item where Name in ('ITEM 7', 'item 2499', 'nope', 'Item 7')")
        .await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> = v["QueryResponse"]["Item"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["Item 7", "Item 2499"],
        "case-insensitive, each Item once"
    );
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_data_capture_returns_items_changed_since_within_thirty_days() {
    let sb = common::sandbox(1, 6).await;
    let qb = Qb::new(&sb).await;
    let made = qb
        .create_all(&[("Uno".into(), None, 1.0), ("Dos".into(), None, 2.0)])
        .await;
    let created = made[0]["Item"]["MetaData"]["CreateTime"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = qb.cdc("Item", &created).await;
    assert_eq!(s, 200, "{v}");
    let items = &v["CDCResponse"][0]["QueryResponse"][0]["Item"];
    assert_eq!(items.as_array().unwrap().len(), 2, "{v}");

    // Half an hour later one of them changes: only it is returned since then.
    common::post_json(
        &sb.base_url(),
        "/_sandbox/clock",
        json!({"advance_secs": 1800}),
    )
    .await;
    let dos = &made[1]["Item"];
    let (s, v) = qb
        .batch(
            None,
            json!([{"bId": "1", "operation": "update",
                    "Item": {"Id": dos["Id"], "SyncToken": dos["SyncToken"], "Name": "Dos",
                             "sparse": true, "Active": false}}]),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let later = v["BatchItemResponse"][0]["Item"]["MetaData"]["LastUpdatedTime"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, v) = qb.cdc("Item", &later).await;
    let items = v["CDCResponse"][0]["QueryResponse"][0]["Item"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(
        (items[0]["Name"].as_str(), items[0]["Active"].as_bool()),
        (Some("Dos"), Some(false))
    );

    // More than 30 days back, a bad date or another entity: refused.
    let old = time::OffsetDateTime::now_utc() - time::Duration::days(31);
    let old = old
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(qb.cdc("Item", &old).await.0, 400);
    assert_eq!(qb.cdc("Item", "yesterday").await.0, 400);
    assert_eq!(qb.cdc("Customer", &later).await.0, 400);
    assert_eq!(qb_stats(&sb).await["cdc_requests"], 2);
    sb.shutdown().await;
}

/// Quota units the engine spent (a batch counting as its operations) and the HTTP
/// requests it sent, since `before`.
fn spent(before: &Value, after: &Value) -> (u64, u64) {
    let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap_or(0);
    (d("quota_units"), d("requests"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_hard_products_into_an_empty_company_cost_one_quota_unit_each() {
    const N: u64 = 5000;
    let sb = common::sandbox(N as usize, 41).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(common::config_for(&sb), dir.path()).await;
    common::until_idle(&engine, N).await;
    common::assert_one_item_per_product(&sb.base_url()).await;
    let st = qb_stats(&sb).await;
    let (units, requests) = spent(&json!({}), &st);
    eprintln!(
        "{N} products into an empty company: {units} quota units, {requests} requests ({st})"
    );
    assert_eq!(st["creates"], N, "one create each, none twice");
    // Hard names (duplicates, case-only variants) cost a few lookups; the rest is one
    // operation per Item, in batches.
    assert!(units <= N * 102 / 100, "{units} quota units for {N} Items");
    assert!(requests <= N / 10, "{requests} requests for {N} Items");
    engine.shutdown().await;

    // A fresh engine (no mapping) on the company that now holds every Item, unchanged:
    // it reads the Items a page at a time and writes nothing.
    let before = qb_stats(&sb).await;
    let fresh = tempfile::tempdir().unwrap();
    let mut engine = common::engine(common::config_for(&sb), fresh.path()).await;
    common::until_idle(&engine, N).await;
    let after = qb_stats(&sb).await;
    let (units, requests) = spent(&before, &after);
    eprintln!("a fresh engine on the full company: {units} quota units, {requests} requests");
    assert_eq!(after["creates"], before["creates"]);
    assert_eq!(after["updates"], before["updates"]);
    assert!(
        units <= N / 100,
        "{units} quota units to find {N} Items in line"
    );
    common::assert_one_item_per_product(&sb.base_url()).await;
    engine.shutdown().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_company_holding_half_the_items_some_named_by_another_case_ends_with_one_each() {
    const N: usize = 5000;
    let sb = common::sandbox(N, 43).await;
    let base = sb.base_url();
    let products = common::all_products(&base).await;
    // Half the products already have an Item: some carry the product id as Sku, some
    // only the name (a third of those in another case), some at a stale price.
    let seeds: Vec<(String, Option<String>, f64)> = products
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(i, p)| {
            let name = syncctl::engine::item::quickbooks_name(p["name"].as_str().unwrap());
            let name = match i % 6 {
                0 => name.to_uppercase(),
                2 => name.to_lowercase(),
                _ => name,
            };
            let sku = (i % 4 == 0).then(|| p["id"].as_str().unwrap().to_owned());
            (name, sku, if i % 8 == 0 { 1.0 } else { 0.0 })
        })
        .collect();
    let qb = Qb::new(&sb).await;
    let made = qb.create_all(&seeds).await;
    let seeded = made.iter().filter(|a| a.get("Item").is_some()).count();
    let refused = made.len() - seeded;
    eprintln!("seeded {seeded} Items ({refused} names taken twice among the products)");
    assert!(seeded > N / 3, "{seeded}");
    let before = qb_stats(&sb).await;
    // Started after the seeding (which rotated the refresh token).
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(common::config_for(&sb), dir.path()).await;
    common::until_idle(&engine, N as u64).await;
    common::assert_one_item_per_product(&base).await;
    let after = qb_stats(&sb).await;
    let (units, requests) = spent(&before, &after);
    let creates = after["creates"].as_u64().unwrap() - before["creates"].as_u64().unwrap();
    let updates = after["updates"].as_u64().unwrap() - before["updates"].as_u64().unwrap();
    eprintln!(
        "{N} products, {seeded} Items there: {creates} creates, {updates} updates, {units} quota units, {requests} requests"
    );
    assert_eq!(
        creates,
        (N - seeded) as u64,
        "every seeded Item adopted, none created twice"
    );
    assert!(
        units <= (creates + updates) * 102 / 100 + 10,
        "{units} quota units for {} writes",
        creates + updates
    );
    engine.shutdown().await;
    sb.shutdown().await;
}

/// Claimed one at a time (`claim_batch_max = 1`, every write a single call), products
/// find their names in the bulk index instead of a lookup each: a company holding a
/// third of the Items by name (some in another case) still ends with one Item per
/// product, every seeded Item adopted, and the name queries are a handful, not one per
/// product.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_claimed_alone_find_their_names_in_the_index_without_a_lookup_each() {
    const N: usize = 600;
    let sb = common::sandbox(N, 53).await;
    let base = sb.base_url();
    let products = common::all_products(&base).await;
    let seeds: Vec<(String, Option<String>, f64)> = products
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(i, p)| {
            let name = syncctl::engine::item::quickbooks_name(p["name"].as_str().unwrap());
            let name = if i % 2 == 0 {
                name.to_uppercase()
            } else {
                name
            };
            (name, None, 0.0)
        })
        .collect();
    let qb = Qb::new(&sb).await;
    let made = qb.create_all(&seeds).await;
    let seeded = made.iter().filter(|a| a.get("Item").is_some()).count();
    let before = qb_stats(&sb).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config_for(&sb);
    config.catalog.claim_batch_max = 1;
    let mut engine = common::engine(config, dir.path()).await;
    common::until_idle(&engine, N as u64).await;
    common::assert_one_item_per_product(&base).await;
    let after = qb_stats(&sb).await;
    let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap_or(0);
    eprintln!(
        "{N} products claimed alone, {seeded} Items there: {} creates, {} updates, {} queries, {} batches, {} requests",
        d("creates"),
        d("updates"),
        d("queries"),
        d("batch_requests"),
        d("requests")
    );
    assert_eq!(d("batch_requests"), 0, "claimed alone: single calls only");
    assert_eq!(
        d("creates"),
        (N - seeded) as u64,
        "every seeded Item adopted, none created twice"
    );
    assert!(
        d("queries") <= 10,
        "{} name queries for {} creates: the index should answer them",
        d("queries"),
        N - seeded
    );
    engine.shutdown().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_sync_tokens_in_a_batch_are_read_again_and_the_updates_land() {
    const N: usize = 200;
    let sb = common::sandbox(N, 47).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(common::config_for(&sb), dir.path()).await;
    common::until_idle(&engine, N as u64).await;
    engine.shutdown().await;

    // Someone else writes every Item (each SyncToken moves on) while 60 products
    // change price in Stripe.
    let qb = Qb::new(&sb).await;
    let items = common::get_json(&format!("{base}/_sandbox/quickbooks/items")).await;
    for chunk in items.as_array().unwrap().chunks(30) {
        let ops: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, it)| {
                json!({"bId": (i + 1).to_string(), "operation": "update",
                       "Item": {"Id": it["Id"], "SyncToken": it["SyncToken"], "Name": it["Name"], "sparse": true}})
            })
            .collect();
        let (s, v) = qb.batch(None, json!(ops)).await;
        assert_eq!(s, 200, "{v}");
        assert!(
            v["BatchItemResponse"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a.get("Item").is_some()),
            "{v}"
        );
    }
    let products = common::all_products(&base).await;
    for p in products.iter().take(60) {
        let id = p["id"].as_str().unwrap();
        common::post_json(
            &base,
            &format!("/_sandbox/stripe/products/{id}"),
            json!({"unit_amount": 12345, "currency": "usd"}),
        )
        .await;
    }
    let before = qb_stats(&sb).await;
    // The events reconciliation finds the changes (no webhook is configured here).
    let mut cfg = common::config_for(&sb);
    cfg.catalog.reconcile_interval_secs = 1;
    let mut engine = common::engine(cfg, dir.path()).await;
    common::eventually(60, "60 new prices in QuickBooks", || async {
        let items = common::get_json(&format!("{base}/_sandbox/quickbooks/items")).await;
        let n = items
            .as_array()?
            .iter()
            .filter(|i| i["UnitPrice"].as_f64() == Some(123.45))
            .count();
        (n == 60).then_some(())
    })
    .await;
    common::until_idle(&engine, N as u64).await;
    let after = qb_stats(&sb).await;
    let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    eprintln!(
        "{} batches of {} operations, {} updates, {} queries, {} requests",
        d("batch_requests"),
        d("batch_operations"),
        d("updates"),
        d("queries"),
        d("requests")
    );
    assert!(d("batch_requests") >= 1, "the changes went in batches");
    assert_eq!(
        d("updates"),
        60,
        "each change written once, after reading again"
    );
    // The stale ones are read again together (one `Id IN` query a batch) and sent in
    // one more batch: not a failed update, a read and an update each (180 requests).
    assert!(d("requests") < 100, "{} requests", d("requests"));
    assert_eq!(d("creates"), 0);
    assert_eq!(engine.snapshot.borrow().catalog.counts.failed, 0);
    common::assert_one_item_per_product(&base).await;
    engine.shutdown().await;
    sb.shutdown().await;
}

/// Waits until every one of `n` products is settled one way or another (synced,
/// rejected or failed) with nothing queued or in flight: the counts then.
async fn settled(
    engine: &syncctl::engine::EngineHandle,
    n: u64,
) -> syncctl::protocol::CatalogCounts {
    common::eventually(120, "every product settled", || async {
        let s = engine.snapshot.borrow().clone();
        let c = s.catalog.counts.clone();
        (s.catalog.full_sync.done
            && c.queued == 0
            && c.in_flight == 0
            && c.synced + c.rejected + c.failed >= n)
            .then_some(c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_answer_lost_then_the_products_renamed_still_ends_with_one_item_each() {
    const N: usize = 8;
    let sb = common::sandbox(N, 53).await;
    let base = sb.base_url();
    // Every batch is carried out but its answer is lost (a replay's too): the creates
    // land, the engine never hears of them.
    common::post_json(
        &base,
        "/_sandbox/quickbooks/batch_answers",
        json!({"lose": 100_000}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config_for(&sb);
    cfg.catalog.reconcile_interval_secs = 1;
    let mut engine = common::engine(cfg, dir.path()).await;
    let items_url = format!("{base}/_sandbox/quickbooks/items");
    common::eventually(60, "an Item for every product", || async {
        let items = common::get_json(&items_url).await;
        (items.as_array()?.len() >= N).then_some(())
    })
    .await;
    assert!(qb_stats(&sb).await["batch_requests"].as_u64().unwrap() >= 1);
    // Every product renamed before the engine tries again.
    let products = common::all_products(&base).await;
    let renamed: Vec<String> = (0..products.len())
        .map(|i| format!("Renamed after a lost batch {i}"))
        .collect();
    for (p, name) in products.iter().zip(&renamed) {
        let id = p["id"].as_str().unwrap();
        common::post_json(
            &base,
            &format!("/_sandbox/stripe/products/{id}"),
            json!({ "name": name }),
        )
        .await;
    }
    // The renames reach QuickBooks (as new Items, or as the Items renamed)…
    common::eventually(60, "the new names in QuickBooks", || async {
        let items = common::get_json(&items_url).await;
        let names: Vec<&str> = items
            .as_array()?
            .iter()
            .filter_map(|i| i["Name"].as_str())
            .collect();
        renamed
            .iter()
            .all(|n| names.contains(&n.as_str()))
            .then_some(())
    })
    .await;
    // …then the answers come through again.
    common::post_json(&base, "/_sandbox/quickbooks/batch_answers", json!({})).await;
    let counts = settled(&engine, N as u64).await;
    assert_eq!(counts.rejected + counts.failed, 0, "{counts:?}");
    common::assert_one_item_per_product(&base).await;
    engine.shutdown().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_answer_missing_an_operation_is_tried_again_not_rejected() {
    missing_or_failed_operations_are_tried_again("drop_last", 59).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_system_fault_on_one_operation_of_a_batch_is_tried_again_not_rejected() {
    missing_or_failed_operations_are_tried_again("system_fault_last", 61).await;
}

/// The first batches are carried out in full, but their answers leave out their last
/// operation (`drop_last`) or say it met QuickBooks' own failure
/// (`system_fault_last`): what became of it is unknown, not refused.
async fn missing_or_failed_operations_are_tried_again(knob: &str, seed: u64) {
    const N: usize = 12;
    let sb = common::sandbox(N, seed).await;
    let base = sb.base_url();
    common::post_json(
        &base,
        "/_sandbox/quickbooks/batch_answers",
        json!({ knob: 2 }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(common::config_for(&sb), dir.path()).await;
    let counts = settled(&engine, N as u64).await;
    let knobs = common::get_json(&format!("{base}/_sandbox/quickbooks/batch_answers")).await;
    assert!(
        knobs[knob].as_u64().unwrap() < 2,
        "no batch answered so: {knobs}"
    );
    assert_eq!(counts.rejected + counts.failed, 0, "{counts:?}");
    common::assert_one_item_per_product(&base).await;
    engine.shutdown().await;
    sb.shutdown().await;
}
