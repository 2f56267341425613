//! Several companies in one process (`[[companies]]`): each company its own engine,
//! data dir, webhook path and secret, chosen by `?company=` in the API and `--company`
//! in the CLI. Two sandboxes on loopback stand for two companies' services (company
//! `a` on one, `b` on the other, through per-company base URL overrides), so every
//! request proves which company it reached.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use syncctl::app;
use syncctl::config::Config;
use syncctl::engine::Mode;
use syncctl::sandbox::SandboxServer;

const BIN: &str = env!("CARGO_BIN_EXE_syncctl");
const TOKEN: &str = "companies-test-operator-token";

/// The `[[companies]]` entry of company `id` on `sb` (its own keys and base URLs).
fn company_entry(id: &str, sb: &SandboxServer) -> String {
    let base = sb.base_url();
    let refresh = sb.sandbox.lock().world.refresh_token.clone();
    format!(
        r#"
[[companies]]
id = "{id}"
name = "Company {id}"
[companies.stripe]
base_url = "{base}"
api_key = "{stripe_key}"
webhook_secret = "{whsec}"
[companies.quickbooks]
base_url = "{base}"
token_url = "{base}/oauth2/v1/tokens/bearer"
realm_id = "{realm}"
refresh_token = "{refresh}"
"#,
        stripe_key = syncctl::sandbox::STRIPE_API_KEY,
        whsec = sb.sandbox.webhook_secret(),
        realm = syncctl::sandbox::QB_REALM_ID,
    )
}

/// A config serving company `a` on `sa` and `b` on `sb`; the top level holds what they
/// share (the Intuit app's keys, limits, the server).
fn two_companies(listen: &str, sa: &SandboxServer, sb: &SandboxServer) -> String {
    format!(
        r#"[server]
listen = "{listen}"

[[server.tokens]]
name = "ops"
token = "{TOKEN}"
role = "operator"

[catalog]
reconcile_interval_secs = 3600

[quickbooks]
client_id = "{client_id}"
client_secret = "{client_secret}"
rate_limit_per_min = 6000
{a}{b}"#,
        client_id = syncctl::sandbox::QB_CLIENT_ID,
        client_secret = syncctl::sandbox::QB_CLIENT_SECRET,
        a = company_entry("a", sa),
        b = company_entry("b", sb),
    )
}

async fn host(text: &str, dir: &Path) -> app::Served {
    let config = Config::parse(text, Path::new("companies.toml")).unwrap();
    let listener = app::bind(config.server.listen, false).await.unwrap();
    app::serve_companies(config, dir.to_owned(), Mode::Sandbox, false, listener)
        .await
        .unwrap()
}

/// (status, JSON body) of a request to the engine's API with the operator token.
async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    }
    .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn post_webhook(url: &str, secret: &str, event_id: &str) -> u16 {
    let body = serde_json::to_vec(&json!({
        "id": event_id, "object": "event", "type": "product.updated", "created": now(),
        "data": { "object": { "id": "prod_nope", "object": "product", "name": "x",
                  "active": true, "updated": now() } },
        "livemode": false,
    }))
    .unwrap();
    reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .header(
            "Stripe-Signature",
            syncctl::sandbox::sign_webhook(secret, now(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_companies_sync_their_own_catalogs_and_are_reached_by_id() {
    let sa = common::sandbox(40, 11).await;
    let sb = common::sandbox(25, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let mut served = host(&two_companies("127.0.0.1:0", &sa, &sb), dir.path()).await;
    assert!(served.failed.is_empty());
    common::until_idle(served.company("a").unwrap(), 40).await;
    common::until_idle(served.company("b").unwrap(), 25).await;
    // Each company's products became Items in its own realm, once each.
    common::assert_one_item_per_product(&sa.base_url()).await;
    common::assert_one_item_per_product(&sb.base_url()).await;
    assert_eq!(sa.sandbox.stats()["quickbooks"]["items_total"], 40);
    assert_eq!(sb.sandbox.stats()["quickbooks"]["items_total"], 25);
    // Each its own data dir.
    for id in ["a", "b"] {
        let d = dir.path().join("companies").join(id);
        assert!(
            std::fs::read_dir(&d).unwrap().next().is_some(),
            "{} is empty",
            d.display()
        );
    }
    let base = format!("http://{}", served.server_addr);

    // Every company at a glance.
    let (code, list) = call("GET", &format!("{base}/api/v1/companies"), None).await;
    assert_eq!(code, 200, "{list}");
    let companies = list["companies"].as_array().unwrap();
    assert_eq!(companies.len(), 2, "{list}");
    assert_eq!(companies[0]["id"], "a");
    assert_eq!(companies[0]["name"], "Company a");
    assert_eq!(companies[0]["queues"]["catalog"]["synced"], 40, "{list}");
    assert_eq!(companies[1]["queues"]["catalog"]["synced"], 25, "{list}");
    assert!(companies[1]["health"]["status"].is_string(), "{list}");
    assert_eq!(
        companies[1]["circuit_breakers"][1]["state"], "CLOSED",
        "{list}"
    );

    // A write names its company: pausing a's catalog leaves b's running.
    let (code, body) = call(
        "POST",
        &format!("{base}/api/v1/commands"),
        Some(json!({ "command": "pause catalog", "company": "a" })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (_, snap_a) = call("GET", &format!("{base}/api/v1/snapshot?company=a"), None).await;
    let (_, snap_b) = call("GET", &format!("{base}/api/v1/snapshot?company=b"), None).await;
    assert_eq!(snap_a["catalog"]["paused"], true, "{snap_a}");
    assert_eq!(snap_b["catalog"]["paused"], false, "{snap_b}");
    assert_eq!(snap_b["catalog"]["synced"], 25, "{snap_b}");
    let (code, body) = call(
        "POST",
        &format!("{base}/api/v1/pipelines/catalog/resume?company=a"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // With several companies a write that names none is refused, naming the choices;
    // an unknown company is a 404 naming it.
    for (method, path, body) in [
        ("POST", "/api/v1/pipelines/catalog/pause", None),
        (
            "POST",
            "/api/v1/commands",
            Some(json!({ "command": "pause catalog" })),
        ),
        ("GET", "/api/v1/snapshot", None),
    ] {
        let (code, answer) = call(method, &format!("{base}{path}"), body).await;
        assert_eq!(code, 400, "{path}: {answer}");
        let m = answer["error"]["message"].as_str().unwrap();
        assert!(m.contains("a, b"), "{path}: {m}");
    }
    let (code, answer) = call("GET", &format!("{base}/api/v1/snapshot?company=zz"), None).await;
    assert_eq!(code, 404, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"zz\""),
        "{answer}"
    );
    let (code, answer) = call(
        "POST",
        &format!("{base}/api/v1/commands"),
        Some(json!({ "command": "pause catalog", "company": "zz" })),
    )
    .await;
    assert_eq!(code, 404, "{answer}");
    // Nothing of it changed a company.
    let (_, snap_a) = call("GET", &format!("{base}/api/v1/snapshot?company=a"), None).await;
    assert_eq!(snap_a["catalog"]["paused"], false, "{snap_a}");
    // Without a token, no company ids are told.
    let r = reqwest::get(format!("{base}/api/v1/snapshot"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(!r.text().await.unwrap().contains("a, b"));

    // Webhooks: each company its own path and secret.
    let (secret_a, secret_b) = (sa.sandbox.webhook_secret(), sb.sandbox.webhook_secret());
    assert_ne!(secret_a, secret_b);
    let webhooks = |id: &str| {
        let engine = served.company(id).unwrap();
        let s = engine.snapshot.borrow();
        (s.catalog.webhooks_accepted, s.catalog.webhooks_rejected)
    };
    let (accepted_a, rejected_a) = webhooks("a");
    let status = post_webhook(
        &format!("{base}/webhooks/stripe/a"),
        &secret_b,
        "evt_b_on_a",
    )
    .await;
    assert_eq!(status, 400, "b's signature on a's path");
    let status = post_webhook(
        &format!("{base}/webhooks/stripe/b"),
        &secret_b,
        "evt_b_on_b",
    )
    .await;
    assert_eq!(status, 200, "b's signature on b's path");
    let status = post_webhook(&format!("{base}/webhooks/stripe"), &secret_a, "evt_plain").await;
    assert_eq!(status, 404, "no company in the path");
    let status = post_webhook(&format!("{base}/webhooks/stripe/zz"), &secret_a, "evt_zz").await;
    assert_eq!(status, 404);
    common::eventually(10, "a's rejection counted", || async {
        (webhooks("a").1 > rejected_a).then_some(())
    })
    .await;
    assert_eq!(webhooks("a").0, accepted_a, "nothing accepted on a");
    common::eventually(10, "b's webhook counted", || async {
        (webhooks("b").0 > 0).then_some(())
    })
    .await;

    // /metrics: every series of every company, labelled with it.
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("syncctl_catalog_jobs_completed_total{company=\"a\"} 40"),
        "{text}"
    );
    // (b's count may hold one more: the webhook it accepted.)
    let completed_b: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("syncctl_catalog_jobs_completed_total{company=\"b\"} "))
        .unwrap_or_else(|| panic!("no b: {text}"))
        .parse()
        .unwrap();
    assert!((25..=26).contains(&completed_b), "{text}");
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(samples.len() > 50, "{text}");
    for l in &samples {
        assert!(
            l.contains("company=\"a\"") || l.contains("company=\"b\""),
            "unlabelled: {l}"
        );
    }
    assert_eq!(
        text.matches("# TYPE syncctl_operation_duration_seconds histogram")
            .count(),
        1,
        "one family, both companies' samples"
    );
    common::promtool_accepts(&text, false);
    let only_b = reqwest::get(format!("{base}/metrics?company=b"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!only_b.contains("company=\"a\""), "{only_b}");
    assert!(only_b.contains("company=\"b\""), "{only_b}");

    // /health for all: each company's own.
    let health: Value = reqwest::get(format!("{base}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["companies"]["a"]["catalog"]["synced"], 40,
        "{health}"
    );
    let b = &health["companies"]["b"]["catalog"];
    assert_eq!(b["webhooks"]["accepted"], 1, "{health}");
    assert_eq!(
        health["companies"]["a"]["catalog"]["webhooks"]["rejected"], 1,
        "{health}"
    );
    assert_eq!(health["companies"]["b"]["name"], "Company b", "{health}");

    served.shutdown().await;
    sa.shutdown().await;
    sb.shutdown().await;
}

/// A company whose engine cannot start (its data dir is unusable) is reported by id,
/// and the other company runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_company_that_cannot_start_is_reported_and_the_others_run() {
    let sa = common::sandbox(20, 21).await;
    let sb = common::sandbox(20, 22).await;
    let dir = tempfile::tempdir().unwrap();
    // b's data dir is a file.
    std::fs::create_dir_all(dir.path().join("companies")).unwrap();
    std::fs::write(dir.path().join("companies").join("b"), "not a dir").unwrap();
    let mut served = host(&two_companies("127.0.0.1:0", &sa, &sb), dir.path()).await;
    assert_eq!(served.failed.len(), 1);
    assert_eq!(served.failed[0].id, "b");
    assert!(served.company("b").is_none());
    common::until_idle(served.company("a").unwrap(), 20).await;
    common::assert_one_item_per_product(&sa.base_url()).await;
    let base = format!("http://{}", served.server_addr);
    let (code, list) = call("GET", &format!("{base}/api/v1/companies"), None).await;
    assert_eq!(code, 200);
    assert_eq!(list["companies"][0]["running"], true, "{list}");
    assert_eq!(list["companies"][1]["running"], false, "{list}");
    assert!(
        list["companies"][1]["error"]
            .as_str()
            .unwrap()
            .contains("companies/b"),
        "{list}"
    );
    let (code, answer) = call("GET", &format!("{base}/api/v1/snapshot?company=b"), None).await;
    assert_eq!(code, 503, "{answer}");
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["companies"]["b"]["status"], "down", "{health}");
    assert_eq!(
        health["companies"]["a"]["catalog"]["synced"], 20,
        "{health}"
    );
    served.shutdown().await;
    sa.shutdown().await;
    sb.shutdown().await;
}

use common::syncctl;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The binary: `syncctl run` serves both companies; `ctl --company` acts on one,
/// `ctl` without it is refused naming the choices, `status` lists them and
/// `status --company` reports one; `config check` lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_one_company_by_id() {
    let sa = common::sandbox(15, 31).await;
    let sb = common::sandbox(10, 32).await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let data = home.join("d");
    let cfg = home.join("c.toml");
    let port = common::free_port();
    std::fs::write(&cfg, two_companies(&format!("127.0.0.1:{port}"), &sa, &sb)).unwrap();
    let c = cfg.to_str().unwrap();
    let d = data.to_str().unwrap();
    let check = syncctl(&["config", "check", "--config", c], home);
    assert!(check.status.success(), "{}", text(&check));
    let said = text(&check);
    assert!(said.contains("companies (2)"), "{said}");
    assert!(
        said.contains("Company a") && said.contains("Company b"),
        "{said}"
    );
    assert!(
        !said.contains(&sa.sandbox.webhook_secret()),
        "a secret printed: {said}"
    );

    let child = Command::new(BIN)
        .args(["run", "--config", c, "--data-dir", d])
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _reaped = common::Reaped(child);
    let base = format!("http://127.0.0.1:{port}");
    common::eventually(60, "both companies synced", || async {
        let h: Value = reqwest::get(format!("{base}/health"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (h["companies"]["a"]["catalog"]["synced"] == 15
            && h["companies"]["b"]["catalog"]["synced"] == 10)
            .then_some(())
    })
    .await;
    assert!(data.join("control.json").exists());
    assert!(data.join("companies").join("a").is_dir());

    let refused = syncctl(&["ctl", "--data-dir", d, "pause", "catalog"], home);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("a, b"), "{}", text(&refused));
    let done = syncctl(
        &["ctl", "--data-dir", d, "--company", "b", "pause", "catalog"],
        home,
    );
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let (_, snap_b) = call("GET", &format!("{base}/api/v1/snapshot?company=b"), None).await;
    let (_, snap_a) = call("GET", &format!("{base}/api/v1/snapshot?company=a"), None).await;
    assert_eq!(snap_b["catalog"]["paused"], true, "{snap_b}");
    assert_eq!(snap_a["catalog"]["paused"], false, "{snap_a}");
    let unknown = syncctl(
        &[
            "ctl",
            "--data-dir",
            d,
            "--company",
            "zz",
            "pause",
            "catalog",
        ],
        home,
    );
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(text(&unknown).contains("\"zz\""), "{}", text(&unknown));

    let all = syncctl(&["status", &base], home);
    let said = text(&all);
    assert!(said.contains("2 companies"), "{said}");
    assert!(
        said.contains("Company a") && said.contains("Company b"),
        "{said}"
    );
    let one = syncctl(&["status", &base, "--company", "b"], home);
    let said = text(&one);
    assert!(said.contains("PAUSED"), "{said}");
    assert!(said.contains("synced 10"), "{said}");
    let none = syncctl(&["status", &base, "--company", "zz"], home);
    assert_eq!(none.status.code(), Some(3), "{}", text(&none));
    assert!(text(&none).contains("\"zz\""), "{}", text(&none));

    // `dian` reads one company's store: several and none named is an error listing
    // them; `--company` opens `<data dir>/companies/<id>/`.
    for args in [
        &["dian", "history", "inv_nope", "--data-dir", d][..],
        &["dian", "retry", "--failed", "--yes", "--data-dir", d][..],
    ] {
        let refused = syncctl(args, home);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&refused)
        );
        let said = text(&refused);
        assert!(
            said.contains("--company") && said.contains("companies: a, b"),
            "{args:?}: {said}"
        );
    }
    let history = syncctl(
        &[
            "dian",
            "history",
            "inv_nope",
            "--company",
            "b",
            "--data-dir",
            d,
        ],
        home,
    );
    let said = text(&history);
    assert!(
        said.contains("no invoice \"inv_nope\""),
        "b's store was read: {said}"
    );
    let retry = syncctl(
        &[
            "dian",
            "retry",
            "--failed",
            "--yes",
            "--company",
            "a",
            "--data-dir",
            d,
        ],
        home,
    );
    assert_eq!(retry.status.code(), Some(0), "{}", text(&retry));
    assert!(
        text(&retry).contains("0 FAILED invoices"),
        "{}",
        text(&retry)
    );
    let unknown = syncctl(
        &[
            "dian",
            "history",
            "inv_nope",
            "--company",
            "zz",
            "--data-dir",
            d,
        ],
        home,
    );
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("no company \"zz\"") && text(&unknown).contains("a, b"),
        "{}",
        text(&unknown)
    );

    // A threshold tuned in b is saved in b's entry: a and the shared tables keep theirs.
    let r = reqwest::Client::new()
        .put(format!("{base}/api/v1/thresholds?company=b"))
        .bearer_auth(TOKEN)
        .json(&json!({ "alerts.error_rate_percent": 12.5, "anomaly.z_threshold": 4.5 }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    let (_, th_a) = call("GET", &format!("{base}/api/v1/thresholds?company=a"), None).await;
    assert_ne!(th_a["alerts.error_rate_percent"], 12.5, "{th_a}");
    let saved = Config::load(&cfg).unwrap();
    let defaults = syncctl::config::AlertsConfig::default();
    assert_eq!(
        saved.alerts.error_rate_percent, defaults.error_rate_percent,
        "the shared table is untouched"
    );
    let by_id = |id: &str| {
        saved
            .companies()
            .unwrap()
            .into_iter()
            .find(|c| c.id == id)
            .unwrap()
            .config
    };
    assert_eq!(by_id("b").alerts.error_rate_percent, 12.5);
    assert_eq!(by_id("b").anomaly.z_threshold, 4.5);
    assert_eq!(
        by_id("a").alerts.error_rate_percent,
        defaults.error_rate_percent
    );
    assert_eq!(
        by_id("a").anomaly.z_threshold,
        syncctl::config::AnomalyConfig::default().z_threshold
    );
    let file = std::fs::read_to_string(&cfg).unwrap();
    assert!(file.contains("[companies.alerts]"), "{file}");
    sa.shutdown().await;
    sb.shutdown().await;
}

/// Malformed `[[companies]]` are refused by `config check` with exit 2 and
/// `file:line: key`, and a secret in one is never echoed.
#[test]
fn malformed_companies_are_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let entry = |id: &str, realm: &str| {
        format!(
            "[[companies]]\nid = \"{id}\"\nname = \"Co {id}\"\n[companies.stripe]\napi_key = \"sk_test_{id}_secretvalue\"\nwebhook_secret = \"whsec_{id}\"\n[companies.quickbooks]\nrealm_id = \"{realm}\"\nrefresh_token = \"rt_{id}\"\n"
        )
    };
    let good = format!("{}{}", entry("a", "1"), entry("b", "2"));
    let path = dir.path().join("good.toml");
    std::fs::write(&path, &good).unwrap();
    let out = syncctl(
        &["config", "check", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    for (name, bad, line, key, says) in [
        (
            "unknown_key",
            good.replace("realm_id = \"2\"", "realm_id = \"2\"\nrelm = \"x\""),
            18,
            "companies.quickbooks.relm",
            "unknown field",
        ),
        (
            "bad_id",
            good.replace("id = \"b\"", "id = \"B 2\""),
            11,
            "companies.id",
            "a-z",
        ),
        (
            "same_id",
            good.replace("id = \"b\"", "id = \"a\""),
            11,
            "companies.id",
            "already another company's id",
        ),
        (
            "same_realm",
            good.replace("realm_id = \"2\"", "realm_id = \"1\""),
            17,
            "companies.quickbooks.realm_id",
            "same QuickBooks realm as company \"a\"",
        ),
        (
            "no_api_key",
            good.replace("api_key = \"sk_test_b_secretvalue\"\n", ""),
            13,
            "companies.stripe.api_key",
            "own [companies.stripe]",
        ),
        (
            "bad_value",
            format!("{good}[companies.stripe.retry]\nmax_attempts = 0\n"),
            20,
            "companies.stripe.retry.max_attempts",
            "company \"b\"",
        ),
        (
            "unknown_table",
            good.replace(
                "[companies.quickbooks]\nrealm_id = \"2\"",
                "[companies.catalog]\nworkers = 2\n[companies.quickbooks]\nrealm_id = \"2\"",
            ),
            16,
            "catalog",
            "unknown field",
        ),
        (
            "mistyped_secret",
            good.replace(
                "api_key = \"sk_test_b_secretvalue\"",
                "api_key = [\"sk_test_b_secretvalue\"]",
            ),
            14,
            "companies.stripe.api_key",
            "",
        ),
    ] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, &bad).unwrap();
        let out = syncctl(
            &["config", "check", "--config", path.to_str().unwrap()],
            dir.path(),
        );
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {said}");
        let head = format!("{}:{line}: key `", path.display());
        assert!(said.contains(&head), "{name}: expected {head}: {said}");
        assert!(said.contains(key), "{name}: {said}");
        assert!(said.contains(says), "{name}: {said}");
        assert!(
            !said.contains("secretvalue"),
            "{name}: a secret echoed: {said}"
        );
    }
}

/// `syncctl run --demo --companies 3`: one sandbox simulating three companies (own
/// realm, Stripe account and Alegra account each) and one engine per company in the
/// process; each company's products end as its own Items, one each, and a pause of
/// one company leaves the others running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_with_three_companies_syncs_each_into_its_own_realm() {
    syncctl::connectors::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let (port, sandbox_port) = (common::free_port(), common::free_port());
    let cfg = home.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[[server.tokens]]\nname = \"ops\"\ntoken = \"{TOKEN}\"\nrole = \"operator\"\n[sandbox]\nlisten = \"127.0.0.1:{sandbox_port}\"\n"
        ),
    )
    .unwrap();
    let data = home.join("d");
    let child = Command::new(BIN)
        .args([
            "run",
            "--demo",
            "--companies",
            "3",
            "--products",
            "40",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _reaped = common::Reaped(child);
    let base = format!("http://127.0.0.1:{port}");
    let sandbox = format!("http://127.0.0.1:{sandbox_port}");
    let ids = ["co1", "co2", "co3"];
    common::eventually(90, "every company synced", || async {
        let h: Value = reqwest::get(format!("{base}/health"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        ids.iter()
            .all(|id| h["companies"][id]["catalog"]["synced"].as_u64() >= Some(40))
            .then_some(())
    })
    .await;
    let stats = common::get_json(&format!("{sandbox}/_sandbox/stats")).await;
    for id in ids {
        let qb = &stats["companies"][id]["quickbooks"];
        assert_eq!(qb["duplicate_names"], 0, "{id}: {stats}");
        assert!(qb["requests"].as_u64().unwrap() > 0, "{id}: {stats}");
        let items =
            common::get_json(&format!("{sandbox}/_sandbox/quickbooks/items?company={id}")).await;
        let n = items.as_array().map_or(0, Vec::len);
        assert!(n >= 40, "{id}: {n} Items");
        assert!(data.join("companies").join(id).is_dir());
    }
    // One company paused; the others are not.
    let d = data.to_str().unwrap();
    let done = syncctl(
        &[
            "ctl",
            "--data-dir",
            d,
            "--company",
            "co2",
            "pause",
            "catalog",
        ],
        home,
    );
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    for (id, paused) in [("co1", false), ("co2", true), ("co3", false)] {
        let (_, snap) = call("GET", &format!("{base}/api/v1/snapshot?company={id}"), None).await;
        assert_eq!(snap["catalog"]["paused"], paused, "{id}: {snap}");
    }
}

/// The console's link watches one company at a time, in this process and attached:
/// its snapshots are that company's, every command goes to it (a command naming
/// another is refused, never delivered elsewhere), and each company's row comes along
/// for the "all companies" overview.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_consoles_link_watches_one_company_and_sends_only_to_it() {
    use syncctl::attach::{Endpoint, RemoteEngine, console_url};
    use syncctl::protocol::{Command, Link, Pipeline, Request};
    let sa = common::sandbox(6, 41).await;
    let sb = common::sandbox(4, 42).await;
    let dir = tempfile::tempdir().unwrap();
    let mut served = host(&two_companies("127.0.0.1:0", &sa, &sb), dir.path()).await;
    common::until_idle(served.company("a").unwrap(), 6).await;
    common::until_idle(served.company("b").unwrap(), 4).await;
    let addr = served.server_addr;
    let pause = || Command::Pause {
        pipeline: Pipeline::Catalog,
    };
    // Whether company `id` shows its catalog paused as `want` (its next publish).
    async fn shows(s: &syncctl::app::Served, id: &str, want: bool) -> bool {
        let mut rx = s.company(id).unwrap().snapshot.clone();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            rx.wait_for(|v| v.catalog.paused == want),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }
    let paused = |s: &syncctl::app::Served, id: &str| {
        s.company(id).unwrap().snapshot.borrow().catalog.paused
    };

    // In this process.
    {
        let mut link = app::LocalEngine {
            engine: &mut served,
            sandbox: None,
        };
        assert_eq!(link.company().unwrap().id, "a");
        let rows = link.companies();
        let ids: Vec<String> = rows.borrow().iter().map(|r| r.company.id.clone()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(rows.borrow()[1].company.name, "Company b");
        // A command for b goes to b, whoever is watched.
        let rx = link
            .send(Request::new("ana", pause()).for_company(Some("b")))
            .await
            .unwrap();
        rx.await.unwrap().unwrap();
        assert!(shows(link.engine, "b", true).await && !paused(link.engine, "a"));
        // Watching b: its snapshots, and a command naming no company goes to b.
        link.watch_company("b").await.unwrap();
        assert_eq!(link.company().unwrap().id, "b");
        assert!(link.snapshots().borrow().catalog.paused, "b's view");
        assert!(
            !link
                .engine
                .company("a")
                .unwrap()
                .snapshot
                .borrow()
                .catalog
                .paused
        );
        let resume = Command::Resume {
            pipeline: Pipeline::Catalog,
        };
        let rx = link.send(Request::new("ana", resume)).await.unwrap();
        rx.await.unwrap().unwrap();
        assert!(shows(link.engine, "b", false).await);
        let err = link.watch_company("zz").await.unwrap_err();
        assert!(err.contains("\"zz\""), "{err}");
        assert_eq!(
            link.company().unwrap().id,
            "b",
            "a failed switch changes nothing"
        );
        let rx = link
            .send(Request::new("ana", pause()).for_company(Some("zz")))
            .await
            .unwrap();
        let refused = rx.await.unwrap().unwrap_err().to_string();
        assert!(refused.contains("not sent"), "{refused}");
    }

    // Attached over the WebSocket: without --company, the first company; the welcome
    // says which, and every company's row follows.
    let url = console_url(&format!("http://{addr}")).unwrap();
    let resolve: syncctl::attach::Resolve = std::sync::Arc::new(move || {
        Ok(Endpoint {
            url: url.clone(),
            token: Some(TOKEN.into()),
        })
    });
    let mut remote = RemoteEngine::connect(resolve, syncctl::attach::hello(false, 4))
        .await
        .unwrap();
    assert_eq!(remote.company().unwrap().id, "a");
    let mut rows = remote.companies();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        rows.wait_for(|r| r.len() == 2),
    )
    .await
    .expect("each company's row")
    .unwrap();
    // A command for b on a's connection is refused, not delivered to a.
    let rx = remote
        .send(Request::new("ana", pause()).for_company(Some("b")))
        .await
        .unwrap();
    let refused = rx.await.unwrap().unwrap_err().to_string();
    assert!(
        refused.contains("not sent") && refused.contains("\"b\""),
        "{refused}"
    );
    assert!(!paused(&served, "a") && !paused(&served, "b"));
    // Watching b: a connection of its own.
    remote.watch_company("b").await.unwrap();
    assert_eq!(remote.company().unwrap().id, "b");
    let rx = remote
        .send(Request::new("ana", pause()).for_company(Some("b")))
        .await
        .unwrap();
    rx.await.unwrap().unwrap();
    assert!(shows(&served, "b", true).await && !paused(&served, "a"));
    let mut snaps = remote.snapshots();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        snaps.wait_for(|s| s.catalog.paused),
    )
    .await
    .expect("b's view")
    .unwrap();
    let err = remote.watch_company("zz").await.unwrap_err();
    assert!(err.contains("zz"), "{err}");
    assert_eq!(remote.company().unwrap().id, "b");
    remote.detach().await;
    served.shutdown().await;
    sa.shutdown().await;
    sb.shutdown().await;
}
