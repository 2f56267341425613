//! The sandbox simulates several companies (issue 16): each its own Stripe account,
//! QuickBooks realm and Alegra account, with its own world, credentials, quotas and
//! stats. Everything here goes through HTTP on loopback, as an engine would.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

use std::time::Duration;

use serde_json::{Value, json};
use syncctl::app;
use syncctl::sandbox::{CompanyKeys, SandboxOptions, SandboxServer};

async fn sandbox_with(companies: usize, dir: Option<&std::path::Path>) -> SandboxServer {
    sandbox_opts(SandboxOptions {
        products: 5,
        seed: 7,
        companies,
        dir: dir.map(std::path::Path::to_path_buf),
        ..Default::default()
    })
    .await
}

async fn sandbox_opts(opts: SandboxOptions) -> SandboxServer {
    syncctl::connectors::install_crypto();
    let listener = app::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    app::start_sandbox(&opts, listener, 0).unwrap()
}

fn keys(sb: &SandboxServer, k: usize) -> CompanyKeys {
    sb.sandbox.companies()[k - 1].keys.clone()
}

/// A QuickBooks access token for company `k`, from its refresh token.
async fn qb_token(sb: &SandboxServer, k: usize) -> String {
    let refresh = sb.sandbox.companies()[k - 1]
        .lock()
        .world
        .refresh_token
        .clone();
    let r = reqwest::Client::new()
        .post(format!("{}/oauth2/v1/tokens/bearer", sb.base_url()))
        .basic_auth(
            syncctl::sandbox::QB_CLIENT_ID,
            Some(syncctl::sandbox::QB_CLIENT_SECRET),
        )
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
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

fn realm_url(sb: &SandboxServer, realm: &str, tail: &str) -> String {
    format!("{}/v3/company/{realm}/{tail}", sb.base_url())
}

async fn create_item(sb: &SandboxServer, realm: &str, token: &str, name: &str) -> (u16, Value) {
    answer(
        reqwest::Client::new()
            .post(realm_url(sb, realm, "item"))
            .bearer_auth(token)
            .json(&json!({"Name": name, "Type": "Service", "IncomeAccountRef": {"value": "1"}})),
    )
    .await
}

async fn get(sb: &SandboxServer, path: &str) -> Value {
    reqwest::get(format!("{}{path}", sb.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post(sb: &SandboxServer, path: &str, body: Value) -> (u16, Value) {
    answer(
        reqwest::Client::new()
            .post(format!("{}{path}", sb.base_url()))
            .json(&body),
    )
    .await
}

async fn stripe_product_ids(sb: &SandboxServer, key: &str) -> Vec<String> {
    let (status, body) = answer(
        reqwest::Client::new()
            .get(format!("{}/v1/products?limit=100", sb.base_url()))
            .bearer_auth(key),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

fn alegra_invoice() -> Value {
    json!({
        "date": "2026-01-15",
        "client": {"identification": "900123456", "name": "Comercializadora Andina S.A.S."},
        "numberTemplate": {"prefix": "SETP", "number": "990000001"},
        "anotation": "stripe:in_test",
        "items": [{"price": "1000.00", "quantity": 1, "tax": [{"name": "IVA", "percentage": 19}]}],
    })
}

#[tokio::test]
async fn each_company_sees_only_its_own_products_items_and_documents() {
    let sb = sandbox_with(2, None).await;
    let (one, two) = (keys(&sb, 1), keys(&sb, 2));
    assert_eq!((one.id.as_str(), two.id.as_str()), ("co1", "co2"));
    // Company 1 keeps the single-company credentials.
    assert_eq!(one.realm_id, syncctl::sandbox::QB_REALM_ID);
    assert_eq!(one.stripe_api_key, syncctl::sandbox::STRIPE_API_KEY);
    assert_ne!(one.realm_id, two.realm_id);

    // Stripe: each key lists its own account's catalog.
    let p1 = stripe_product_ids(&sb, &one.stripe_api_key).await;
    let p2 = stripe_product_ids(&sb, &two.stripe_api_key).await;
    assert_eq!((p1.len(), p2.len()), (5, 5));
    assert!(p1.iter().all(|id| !p2.contains(id)), "{p1:?} / {p2:?}");
    let (status, _) = answer(
        reqwest::Client::new()
            .get(format!("{}/v1/products/{}", sb.base_url(), p2[0]))
            .bearer_auth(&one.stripe_api_key),
    )
    .await;
    assert_eq!(status, 404, "company 2's product is not company 1's");

    // QuickBooks: names are unique per realm, not across realms.
    let (t1, t2) = (qb_token(&sb, 1).await, qb_token(&sb, 2).await);
    let (s1, a1) = create_item(&sb, &one.realm_id, &t1, "Café Premium").await;
    let (s2, a2) = create_item(&sb, &two.realm_id, &t2, "Café Premium").await;
    assert_eq!((s1, s2), (200, 200), "{a1} / {a2}");
    let (s, again) = create_item(&sb, &two.realm_id, &t2, "café premium").await;
    assert_eq!(s, 400, "a duplicate within realm 2: {again}");
    let (s, q) = answer(
        reqwest::Client::new()
            .get(realm_url(&sb, &two.realm_id, "query"))
            .query(&[("query", "select * from Item")])
            .bearer_auth(&t2),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(q["QueryResponse"]["Item"].as_array().unwrap().len(), 1);
    let items2 = get(&sb, "/_sandbox/quickbooks/items?company=co2").await;
    assert_eq!(items2.as_array().unwrap().len(), 1);

    // Alegra: a document lands in the account whose credentials sent it.
    let (s, doc) = answer(
        reqwest::Client::new()
            .post(format!("{}/api/v1/invoices", sb.base_url()))
            .basic_auth(&two.alegra_email, Some(&two.alegra_token))
            .json(&alegra_invoice()),
    )
    .await;
    assert_eq!(s, 201, "{doc}");
    let docs1 = get(&sb, "/_sandbox/alegra/invoices?company=co1").await;
    let docs2 = get(&sb, "/_sandbox/alegra/invoices?company=co2").await;
    assert_eq!(
        (
            docs1.as_array().unwrap().len(),
            docs2.as_array().unwrap().len()
        ),
        (0, 1)
    );
    let (s, _) = answer(
        reqwest::Client::new()
            .get(format!("{}/api/v1/invoices/1", sb.base_url()))
            .basic_auth(&one.alegra_email, Some(&one.alegra_token)),
    )
    .await;
    assert_eq!(s, 404, "company 2's document is not in company 1's account");
    let (s, _) = answer(
        reqwest::Client::new()
            .get(format!("{}/api/v1/invoices/1", sb.base_url()))
            .basic_auth(&one.alegra_email, Some(&two.alegra_token)),
    )
    .await;
    assert_eq!(s, 401, "one account's email with another's token");

    // Stats: per company, and the sums at the top level.
    let stats = get(&sb, "/_sandbox/stats").await;
    let c = &stats["companies"];
    assert_eq!(c["co1"]["quickbooks"]["items_total"], 1);
    assert_eq!(c["co2"]["quickbooks"]["items_total"], 1);
    assert_eq!(c["co2"]["quickbooks"]["creates"], 1);
    assert_eq!(c["co1"]["quickbooks"]["duplicate_names"], 0);
    assert_eq!(c["co2"]["quickbooks"]["duplicate_names"], 0);
    assert_eq!(c["co2"]["alegra"]["invoices_total"], 1);
    assert_eq!(c["co1"]["alegra"]["invoices_total"], 0);
    assert_eq!(c["co1"]["stripe"]["products_total"], 5);
    assert_eq!(stats["quickbooks"]["items_total"], 2);
    assert_eq!(stats["stripe"]["products_total"], 10);
    assert_eq!(stats["alegra"]["invoices_total"], 1);
    // No name is held twice in a realm, though both realms hold "Café Premium".
    assert_eq!(stats["quickbooks"]["duplicate_names"], 0);
    let unknown = reqwest::get(format!(
        "{}/_sandbox/quickbooks/items?company=co9",
        sb.base_url()
    ))
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().await.unwrap().contains("co9"));
    sb.shutdown().await;
}

#[tokio::test]
async fn a_token_of_one_realm_is_refused_on_another_realms_path() {
    let sb = sandbox_with(2, None).await;
    let (one, two) = (keys(&sb, 1), keys(&sb, 2));
    let t1 = qb_token(&sb, 1).await;
    let (s, body) = create_item(&sb, &two.realm_id, &t1, "Arepa Pro").await;
    assert_eq!(s, 401, "{body}");
    assert_eq!(body["fault"]["type"], "AUTHENTICATION");
    let (s, _) = create_item(&sb, &one.realm_id, &t1, "Arepa Pro").await;
    assert_eq!(s, 200, "on its own realm the token works");
    let stats = get(&sb, "/_sandbox/stats").await;
    assert_eq!(stats["companies"]["co2"]["quickbooks"]["auth_failures"], 1);
    assert_eq!(stats["companies"]["co2"]["quickbooks"]["items_total"], 0);
    assert_eq!(stats["companies"]["co1"]["quickbooks"]["auth_failures"], 0);
    // A Stripe key of one account reads only that account; an unknown key is a 401.
    let (s, _) = answer(
        reqwest::Client::new()
            .get(format!("{}/v1/products", sb.base_url()))
            .bearer_auth("sk_test_nobody"),
    )
    .await;
    assert_eq!(s, 401);
    sb.shutdown().await;
}

#[tokio::test]
async fn one_company_at_its_quota_leaves_the_others_answering() {
    let sb = sandbox_with(2, None).await;
    let (one, two) = (keys(&sb, 1), keys(&sb, 2));
    // 60 a minute: one request a second back to back, per company.
    for (service, rate) in [("quickbooks", 60), ("alegra", 3)] {
        let (s, b) = post(
            &sb,
            "/_sandbox/faults",
            json!({"service": service, "rate_limit_per_min": rate}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    let (t1, t2) = (qb_token(&sb, 1).await, qb_token(&sb, 2).await);
    let read = |realm: &str, token: &str| {
        reqwest::Client::new()
            .get(realm_url(&sb, realm, "query"))
            .query(&[("query", "select * from Item")])
            .bearer_auth(token.to_owned())
    };
    let mut answered = 0;
    let mut throttled = false;
    for _ in 0..20 {
        let (s, _) = answer(read(&one.realm_id, &t1)).await;
        match s {
            200 => answered += 1,
            429 => {
                throttled = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(throttled, "realm 1 reached its quota");
    let (s, body) = answer(read(&two.realm_id, &t2)).await;
    assert_eq!(
        s,
        200,
        "realm 2 has its own quota: {body}\n{}",
        get(&sb, "/_sandbox/stats").await["companies"]
    );

    // Alegra counts a fixed minute per account: 3 for company 1, then 429; company 2's
    // first still passes.
    let list = |k: &CompanyKeys| {
        reqwest::Client::new()
            .get(format!("{}/api/v1/invoices", sb.base_url()))
            .basic_auth(&k.alegra_email, Some(&k.alegra_token))
    };
    let statuses = [
        answer(list(&one)).await.0,
        answer(list(&one)).await.0,
        answer(list(&one)).await.0,
        answer(list(&one)).await.0,
    ];
    assert_eq!(statuses, [200, 200, 200, 429]);
    let r = list(&two).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-rate-limit-remaining"], "2");

    let stats = get(&sb, "/_sandbox/stats").await;
    let q1 = &stats["companies"]["co1"]["quickbooks"];
    let q2 = &stats["companies"]["co2"]["quickbooks"];
    assert_eq!(q1["throttled"], 1, "{q1}");
    assert_eq!(q2["throttled"], 0, "{q2}");
    assert_eq!(q1["quota_per_min"], 60);
    assert_eq!(q2["quota_per_min"], 60);
    // What each realm was charged over the last minute: its admitted requests.
    assert_eq!(q1["rate_per_min"], answered, "{q1}");
    assert_eq!(q2["rate_per_min"], 1, "{q2}");
    assert_eq!(q1["peak_rate_per_min"], answered);
    assert_eq!(q1["requests"], answered + 1);
    assert_eq!(stats["companies"]["co1"]["alegra"]["throttled"], 1);
    assert_eq!(stats["companies"]["co2"]["alegra"]["throttled"], 0);
    assert_eq!(stats["companies"]["co1"]["alegra"]["rate_per_min"], 3);
    // The top level sums the companies.
    assert_eq!(stats["quickbooks"]["throttled"], 1);
    assert_eq!(stats["quickbooks"]["requests"], answered + 2);
    sb.shutdown().await;
}

/// Receives webhooks on loopback: (path, Stripe-Signature, body) of each.
async fn webhook_receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, String, Vec<u8>)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let sig = headers
                    .get("stripe-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let _ = tx.send((uri.path().to_owned(), sig, body.to_vec()));
                "ok"
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), rx)
}

#[tokio::test]
async fn a_companys_webhooks_go_to_its_url_signed_with_its_secret() {
    let (url, mut rx) = webhook_receiver().await;
    let sb = sandbox_opts(SandboxOptions {
        products: 5,
        seed: 7,
        companies: 2,
        webhook_url: Some(format!("{url}/webhooks/stripe/{{company}}")),
        ..Default::default()
    })
    .await;
    let secret = |k: usize| {
        sb.sandbox.companies()[k - 1]
            .lock()
            .world
            .webhook_secret
            .clone()
    };
    let (s1, s2) = (secret(1), secret(2));
    assert_ne!(s1, s2);
    let (s, created) = post(
        &sb,
        "/_sandbox/stripe/invoices?company=co2",
        json!({"count": 1}),
    )
    .await;
    assert_eq!(s, 200);
    let invoice = created["created"][0].as_str().unwrap().to_owned();
    let (path, sig, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a webhook within 10 s")
        .unwrap();
    assert_eq!(path, "/webhooks/stripe/co2");
    syncctl::server::webhook::verify(&sig, &body, &s2, 0, 0).expect("signed with co2's secret");
    assert!(
        syncctl::server::webhook::verify(&sig, &body, &s1, 0, 0).is_err(),
        "not with co1's"
    );
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "invoice.paid");
    assert_eq!(event["data"]["object"]["id"], invoice.as_str());
    // Company 2's Stripe account has the invoice; company 1's has none.
    let (_, list) = answer(
        reqwest::Client::new()
            .get(format!("{}/v1/invoices", sb.base_url()))
            .bearer_auth(&keys(&sb, 1).stripe_api_key),
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let stats = get(&sb, "/_sandbox/stats").await;
    assert_eq!(stats["companies"]["co2"]["stripe"]["invoices_total"], 1);
    assert_eq!(stats["companies"]["co1"]["stripe"]["invoices_total"], 0);
    sb.shutdown().await;
}

/// The printed config for N companies: TOML with N `[[companies]]` whose credentials
/// the sandbox accepts.
fn check_companies_config(text: &str, n: usize) -> toml::Table {
    let t: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    let companies = t["companies"].as_array().expect("[[companies]]");
    assert_eq!(companies.len(), n, "{text}");
    let mut realms = std::collections::HashSet::new();
    for (i, c) in companies.iter().enumerate() {
        assert_eq!(c["id"].as_str(), Some(format!("co{}", i + 1).as_str()));
        assert_eq!(
            c["name"].as_str(),
            Some(format!("Sandbox company {}", i + 1).as_str())
        );
        for (table, key) in [
            ("stripe", "api_key"),
            ("stripe", "webhook_secret"),
            ("quickbooks", "realm_id"),
            ("quickbooks", "refresh_token"),
            ("alegra", "email"),
            ("alegra", "token"),
        ] {
            assert!(c[table][key].is_str(), "company {i} {table}.{key}\n{text}");
        }
        assert!(realms.insert(c["quickbooks"]["realm_id"].as_str().unwrap().to_owned()));
    }
    // The shared tables: base URLs and the Intuit app's keys, no company credentials.
    assert!(t["quickbooks"]["client_id"].is_str());
    assert!(t["quickbooks"]["base_url"].is_str());
    assert!(t["quickbooks"].get("realm_id").is_none());
    assert!(t["stripe"].get("api_key").is_none());
    t
}

#[tokio::test]
async fn the_config_for_three_companies_has_three_companies_that_work() {
    let sb = sandbox_with(3, None).await;
    let text = reqwest::get(format!("{}/_sandbox/config", sb.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let t = check_companies_config(&text, 3);
    // Company 3's printed credentials open company 3's realm and Stripe account.
    let co3 = &t["companies"].as_array().unwrap()[2];
    let r: Value = reqwest::Client::new()
        .post(t["quickbooks"]["token_url"].as_str().unwrap())
        .basic_auth(
            t["quickbooks"]["client_id"].as_str().unwrap(),
            t["quickbooks"]["client_secret"].as_str(),
        )
        .form(&[
            ("grant_type", "refresh_token"),
            (
                "refresh_token",
                co3["quickbooks"]["refresh_token"].as_str().unwrap(),
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["access_token"].as_str().expect("a token for co3");
    let realm = co3["quickbooks"]["realm_id"].as_str().unwrap();
    let (s, _) = create_item(&sb, realm, token, "Tamal Lite").await;
    assert_eq!(s, 200);
    assert_eq!(
        get(&sb, "/_sandbox/stats").await["companies"]["co3"]["quickbooks"]["items_total"],
        1
    );
    let ids = stripe_product_ids(&sb, co3["stripe"]["api_key"].as_str().unwrap()).await;
    assert_eq!(ids.len(), 5);
    sb.shutdown().await;

    // One company: today's config, without [[companies]].
    let sb = sandbox_with(1, None).await;
    let text = reqwest::get(format!("{}/_sandbox/config", sb.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let t: toml::Table = text.parse().unwrap();
    assert!(t.get("companies").is_none());
    assert_eq!(
        t["quickbooks"]["realm_id"].as_str(),
        Some(syncctl::sandbox::QB_REALM_ID)
    );
    let stats = get(&sb, "/_sandbox/stats").await;
    assert!(stats["companies"]["default"].is_object(), "{stats}");
    sb.shutdown().await;
}

#[test]
fn print_config_with_three_companies_is_toml_with_three_companies() {
    let home = tempfile::tempdir().unwrap();
    // A port nothing listens on: the config is computed from the flags.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncctl"))
        .args([
            "sandbox",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--print-config",
            "--companies",
            "3",
        ])
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let t = check_companies_config(&text, 3);
    assert_eq!(
        t["stripe"]["base_url"].as_str(),
        Some(format!("http://127.0.0.1:{port}").as_str())
    );
    // Out of range: refused, naming the flag.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncctl"))
        .args(["sandbox", "--print-config", "--companies", "0"])
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--companies"));
}

#[tokio::test]
async fn a_world_saved_with_one_company_loads_as_company_one() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox_with(1, Some(dir.path())).await;
    let t1 = qb_token(&sb, 1).await;
    let (s, _) = create_item(&sb, syncctl::sandbox::QB_REALM_ID, &t1, "Ajiaco Plus").await;
    assert_eq!(s, 200);
    let products1 = stripe_product_ids(&sb, syncctl::sandbox::STRIPE_API_KEY).await;
    sb.shutdown().await;

    // Reopened with three companies: company 1 is the saved world, the others new.
    let sb = sandbox_with(3, Some(dir.path())).await;
    let stats = get(&sb, "/_sandbox/stats").await;
    assert_eq!(stats["companies"]["co1"]["quickbooks"]["items_total"], 1);
    assert_eq!(stats["companies"]["co2"]["quickbooks"]["items_total"], 0);
    assert_eq!(
        stripe_product_ids(&sb, syncctl::sandbox::STRIPE_API_KEY).await,
        products1
    );
    // The token issued before the restart still works on realm 1.
    let (s, _) = create_item(&sb, syncctl::sandbox::QB_REALM_ID, &t1, "Ajiaco Lite").await;
    assert_eq!(s, 200);
    let co2 = keys(&sb, 2);
    let t2 = qb_token(&sb, 2).await;
    let (s, _) = create_item(&sb, &co2.realm_id, &t2, "Ajiaco Plus").await;
    assert_eq!(s, 200);
    sb.shutdown().await;

    // And each company's world survives the next restart too.
    let sb = sandbox_with(3, Some(dir.path())).await;
    let stats = get(&sb, "/_sandbox/stats").await;
    assert_eq!(stats["companies"]["co1"]["quickbooks"]["items_total"], 2);
    assert_eq!(stats["companies"]["co2"]["quickbooks"]["items_total"], 1);
    assert_eq!(stats["companies"]["co3"]["quickbooks"]["items_total"], 0);
    assert!(dir.path().join("companies/co2/world.json").exists());
    sb.shutdown().await;
}

/// DIAN's `error_rate` answers a stamped create with EPR500 (it used to lock the world
/// it already held, and the request hung for good). The sandbox runs on a runtime of
/// its own thread, so a hang there fails this test by the client's timeout instead of
/// stalling it.
#[tokio::test]
async fn dian_error_rate_answers_epr500_instead_of_hanging() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let sb = sandbox_with(2, None).await;
            let _ = tx.send(sb);
            std::future::pending::<()>().await;
        });
    });
    let sb = rx.await.unwrap();
    let (s, _) = post(
        &sb,
        "/_sandbox/faults",
        json!({"service": "dian", "error_rate": 1.0}),
    )
    .await;
    assert_eq!(s, 200);
    let mut invoice = alegra_invoice();
    invoice["stamp"] = json!({"generateStamp": true});
    for k in [1, 2] {
        let who = keys(&sb, k);
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/invoices", sb.base_url()))
            .basic_auth(&who.alegra_email, Some(&who.alegra_token))
            .timeout(Duration::from_secs(10))
            .json(&invoice)
            .send()
            .await
            .expect("an answer, not a hang");
        assert_eq!(r.status(), 502);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "EPR500");
    }
    let stats = get(&sb, "/_sandbox/stats").await;
    assert_eq!(stats["dian"]["errors_injected"], 2);
    assert_eq!(stats["companies"]["co2"]["dian"]["errors_injected"], 1);
}

/// A Stripe invoice DIAN accepted under two documents (what no engine may ever cause)
/// counts as `stamped_twice`, in its own company only; one document stamped once, or a
/// second one DIAN rejected, does not.
#[tokio::test]
async fn an_invoice_accepted_under_two_documents_counts_as_stamped_twice_in_its_company() {
    let sb = sandbox_with(2, None).await;
    let two = keys(&sb, 2);
    let stamped = |number: &str, anotation: &str| {
        let mut body = alegra_invoice();
        body["numberTemplate"]["number"] = json!(number);
        body["anotation"] = json!(anotation);
        body["stamp"] = json!({"generateStamp": true});
        reqwest::Client::new()
            .post(format!("{}/api/v1/invoices", sb.base_url()))
            .basic_auth(&two.alegra_email, Some(&two.alegra_token))
            .json(&body)
    };
    let twice = |stats: &Value, co: &str| stats["companies"][co]["alegra"]["stamped_twice"].clone();
    let (s, doc) = answer(stamped("990000001", "stripe:in_a")).await;
    assert_eq!(s, 201, "{doc}");
    // Another invoice, and a resend of the same number (DIAN's rule 90: rejected).
    answer(stamped("990000002", "stripe:in_b")).await;
    answer(stamped("990000001", "stripe:in_a")).await;
    let stats = get(&sb, "/_sandbox/stats").await;
    assert_eq!(
        twice(&stats, "co2"),
        0,
        "{}",
        stats["companies"]["co2"]["alegra"]
    );
    // The same invoice issued again under a new number: accepted twice.
    answer(stamped("990000003", "stripe:in_a")).await;
    let stats = get(&sb, "/_sandbox/stats").await;
    assert_eq!(
        twice(&stats, "co2"),
        1,
        "{}",
        stats["companies"]["co2"]["alegra"]
    );
    assert_eq!(twice(&stats, "co1"), 0);
    assert_eq!(stats["alegra"]["stamped_twice"], 1);
}
