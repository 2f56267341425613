//! Hostile and careless callers of the engine's HTTP server, over real HTTP on
//! loopback: bodies of the wrong type that must not widen an action to every alert,
//! tokens in URLs, path enumeration, token guessing, DNS rebinding, error shapes, a
//! viewer's HEAD, and a signed deletion of a product the engine never saw.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::time::Instant;

use serde_json::{Value, json};
use syncctl::config::{Config, Role, Secret, TokenConfig};
use syncctl::sandbox::sign_webhook;

const OPS: &str = "ops-token-0123456789abcdef";
const VIEW: &str = "viewer-token-0123456789abcdef";

fn config(sb: &syncctl::sandbox::SandboxServer) -> Config {
    let mut cfg = common::config_for(sb);
    let t = |name: &str, token: &str, role| TokenConfig {
        name: name.into(),
        token: Secret::new(token),
        role,
        rate_limit_per_min: 0,
    };
    cfg.server.tokens = vec![
        t("ops", OPS, Role::Operator),
        t("dashboard", VIEW, Role::Viewer),
    ];
    cfg.alerts.for_secs = 0;
    cfg
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(engine: &syncctl::app::Served) -> Self {
        Self {
            base: format!("http://{}", engine.server_addr),
            http: reqwest::Client::new(),
        }
    }

    /// (status, body as JSON or as a string when it is not JSON).
    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        self.raw(
            method,
            path,
            Some(OPS),
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = self.raw("GET", path, Some(OPS), None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }
}

/// The `{"error": {"code", "message"}}` shape; its message.
fn error_message(v: &Value) -> &str {
    assert!(v["error"]["code"].is_string(), "not a JSON error: {v}");
    v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {v}"))
}

/// An engine whose QuickBooks is down, so alerts fire; waits for one to be active.
async fn engine_with_an_alert() -> (
    syncctl::sandbox::SandboxServer,
    tempfile::TempDir,
    syncctl::app::Served,
) {
    let sb = common::sandbox(20, 21).await;
    common::faults(
        &sb.base_url(),
        json!({"service": "quickbooks", "outage": true}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(config(&sb), dir.path()).await;
    let api = Api::new(&engine);
    common::eventually(60, "an active alert", || async {
        let a = api.get("/api/v1/alerts").await;
        (!a["active"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    (sb, dir, engine)
}

/// Nothing an operator could have done shows: no silence, no acknowledgement, no
/// operator entry in the audit trail.
async fn assert_nothing_applied(api: &Api) {
    let a = api.get("/api/v1/alerts").await;
    assert_eq!(a["silences"], json!([]), "no silence: {a}");
    for alert in a["active"].as_array().unwrap() {
        assert!(alert["acked_by"].is_null(), "acknowledged: {alert}");
    }
    let ev = api.get("/api/v1/events?type=operator").await;
    assert_eq!(ev["events"], json!([]), "no operator action: {ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matcher_of_the_wrong_type_is_refused_and_silences_or_acknowledges_nothing() {
    let (sb, _dir, mut engine) = engine_with_an_alert().await;
    let api = Api::new(&engine);
    let (s, v) = api
        .send(
            "POST",
            "/api/v1/alerts/silence",
            &json!({"matcher": 12345, "secs": 600}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(error_message(&v).starts_with("matcher:"), "{v}");
    let (s, v) = api
        .send("POST", "/api/v1/alerts/ack", &json!({"matcher": ["x"]}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(error_message(&v).starts_with("matcher:"), "{v}");
    let (s, v) = api.send("POST", "/api/v1/alerts/ack", &json!(["x"])).await;
    assert_eq!(s, 400, "{v}");
    // Leaving the matcher out is not "every alert" either.
    let (s, v) = api.send("POST", "/api/v1/alerts/ack", &json!({})).await;
    assert_eq!(s, 400, "{v}");
    assert!(error_message(&v).starts_with("matcher:"), "{v}");
    assert_nothing_applied(&api).await;
    // Every alert only when asked for by name.
    let (s, v) = api
        .send("POST", "/api/v1/alerts/ack", &json!({"matcher": "*"}))
        .await;
    assert_eq!(s, 200, "{v}");
    engine.shutdown().await;
    sb.shutdown().await;
}

/// (method, path, body, the field the error must name). Bodies are raw bytes so that
/// non-JSON and oversized ones can be sent too.
fn malformed_bodies() -> Vec<(&'static str, &'static str, Vec<u8>, &'static str)> {
    let j = |v: Value| serde_json::to_vec(&v).unwrap();
    let silence = "/api/v1/alerts/silence";
    let ack = "/api/v1/alerts/ack";
    let cache = "/api/v1/cache/invalidate";
    let thresholds = "/api/v1/thresholds";
    let breaker = "/api/v1/resilience/circuit-breakers/quickbooks";
    let long = "x".repeat(10_000);
    let fire = "🔥".repeat(300);
    vec![
        (
            "POST",
            silence,
            j(json!({"matcher": 12345, "secs": 600})),
            "matcher",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": ["x"], "secs": 600})),
            "matcher",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": null, "secs": 600})),
            "matcher",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": true, "secs": 600})),
            "matcher",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": {"id": "x"}, "secs": 600})),
            "matcher",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": "", "secs": 600})),
            "matcher",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": "   ", "secs": 600})),
            "matcher",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": long, "secs": 600})),
            "matcher",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": "a\u{0}b", "secs": 600})),
            "matcher",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": "queue", "secs": 0})),
            "secs",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": "queue", "secs": -5})),
            "secs",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": "queue", "secs": 1.5})),
            "secs",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": "queue", "secs": "600"})),
            "secs",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": "queue", "secs": 1e30})),
            "secs",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": "queue", "secs": 604_801})),
            "secs",
        ),
        (
            "POST",
            silence,
            j(json!({"matcher": "queue", "secs": u64::MAX})),
            "secs",
        ),
        ("POST", silence, j(json!({"matcher": "queue"})), "secs"),
        ("POST", silence, j(json!({"secs": 600})), "matcher"),
        (
            "POST",
            silence,
            j(json!({"matcher": "q", "secs": 600, "until": "never"})),
            "until",
        ),
        (
            "POST",
            silence,
            j(json!({"matchr": "q", "secs": 600})),
            "matchr",
        ),
        (
            "POST",
            silence,
            j(json!({"mätcher": "q", "secs": 600})),
            "mätcher",
        ),
        ("POST", ack, j(json!({"matcher": 12345})), "matcher"),
        ("POST", ack, j(json!({"matcher": ["x"]})), "matcher"),
        ("POST", ack, j(json!({})), "matcher"),
        ("POST", ack, j(json!({"matcher": ""})), "matcher"),
        ("POST", ack, j(json!({"matcher": fire})), "matcher"),
        ("POST", ack, j(json!({"matcher": "x", "extra": 1})), "extra"),
        ("POST", ack, b"[\"x\"]".to_vec(), "body"),
        ("POST", ack, b"\"x\"".to_vec(), "body"),
        ("POST", ack, b"{\"matcher\": ".to_vec(), "body"),
        ("POST", ack, vec![b'{', 0xff, 0xfe, b'}'], "body"),
        ("POST", cache, j(json!({"pattern": 5})), "pattern"),
        ("POST", cache, j(json!({"tag": ["a"]})), "tag"),
        ("POST", cache, j(json!({"key": null})), "key"),
        ("POST", cache, j(json!({"pattern": ""})), "pattern"),
        (
            "POST",
            cache,
            j(json!({"pattern": "item:*", "tag": "x"})),
            "tag",
        ),
        ("POST", cache, j(json!({"patern": "item:*"})), "patern"),
        (
            "POST",
            cache,
            j(json!({"pattern": "x".repeat(5000)})),
            "pattern",
        ),
        ("POST", cache, vec![b' '; 80 * 1024], "body"),
        (
            "PUT",
            thresholds,
            j(json!({"alerts.queue_depth": "5"})),
            "alerts.queue_depth",
        ),
        (
            "PUT",
            thresholds,
            j(json!({"alerts.queue_depth": -1})),
            "alerts.queue_depth",
        ),
        (
            "PUT",
            thresholds,
            j(json!({"alerts.queue_depth": 1e300})),
            "alerts.queue_depth",
        ),
        (
            "PUT",
            thresholds,
            j(json!({"alerts.error_rate_percent": 0})),
            "alerts.error_rate_percent",
        ),
        (
            "PUT",
            thresholds,
            j(json!({"alerts.queue_depth": null})),
            "alerts.queue_depth",
        ),
        (
            "PUT",
            thresholds,
            j(json!({"nope.threshold": 5})),
            "nope.threshold",
        ),
        (
            "PUT",
            thresholds,
            j(json!({"alerts.queue_depth": 5, "alerts.for_secs": "x"})),
            "alerts.for_secs",
        ),
        ("PUT", thresholds, j(json!({})), "threshold"),
        ("POST", breaker, j(json!({"state": 1})), "state"),
        ("POST", breaker, j(json!({"state": "open"})), "state"),
        (
            "POST",
            breaker,
            j(json!({"state": "CLOSED", "force": true})),
            "force",
        ),
        ("POST", breaker, j(json!({})), "state"),
        (
            "POST",
            breaker,
            j(json!({"state": "ＦＯＲＣＥＤ_OPEN"})),
            "state",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_body_is_refused_naming_its_field_and_nothing_is_applied() {
    let (sb, _dir, mut engine) = engine_with_an_alert().await;
    let api = Api::new(&engine);
    let thresholds_before = api.get("/api/v1/thresholds").await;
    let breakers_before = api
        .get("/api/v1/resilience/circuit-breakers/quickbooks")
        .await;
    let cases = malformed_bodies();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for (i, (method, path, body, field)) in cases.into_iter().enumerate() {
        let size = body.len();
        let (s, v) = api.raw(method, path, Some(OPS), Some(body)).await;
        let named = v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(field) && m.len() < 1000);
        if !(s == 400 || s == 413) || !named {
            wrong.push(format!("case {i} ({method} {path}, {size} bytes): {s} {v}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} bodies not refused with their field named:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_nothing_applied(&api).await;
    assert_eq!(api.get("/api/v1/thresholds").await, thresholds_before);
    let after = api
        .get("/api/v1/resilience/circuit-breakers/quickbooks")
        .await;
    assert_eq!(after["state"], breakers_before["state"]);
    engine.shutdown().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_urls_unknown_paths_and_a_viewers_head_are_judged_by_the_token() {
    let sb = common::sandbox(5, 22).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let api = Api::new(&engine);

    // A path that exists and one that does not answer alike without a token.
    let (s, v) = api.raw("GET", "/api/v1/nope", None, None).await;
    assert_eq!(s, 401, "no enumeration before authentication: {v}");
    let (s, v) = api.raw("GET", "/api/v1/alerts", None, None).await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = api.raw("GET", "/api/v1/nope", Some(OPS), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));

    // ?token= counts only on a WebSocket handshake, never on a plain request.
    for path in [
        format!("/api/v1/ws/alerts?token={OPS}"),
        format!("/api/v1/ws/notifications?token={OPS}"),
        format!("/api/v1/ws/connections?token={OPS}"),
        format!("/api/v1/ws/x/../../alerts?token={OPS}"),
    ] {
        let (s, v) = api.raw("GET", &path, None, None).await;
        assert_eq!(s, 401, "{path}: {v}");
        error_message(&v);
    }
    // The WebSocket itself still takes it.
    let url = format!("ws://{}/api/v1/ws/alerts?token={OPS}", engine.server_addr);
    assert!(tokio_tungstenite::connect_async(&url).await.is_ok());

    // A plain GET on a feed, with the token in the header: a JSON 400, not text.
    let (s, v) = api.raw("GET", "/api/v1/ws/alerts", Some(OPS), None).await;
    assert_eq!(s, 400, "{v}");
    error_message(&v);
    // A malformed query: JSON too.
    let (s, v) = api
        .raw("GET", "/api/v1/events?limit=lots", Some(OPS), None)
        .await;
    assert_eq!(s, 400, "{v}");
    error_message(&v);
    // Searched words the text index would refuse: a 400 saying why, not a 503.
    let many = vec!["ab"; 150].join("%20");
    for (query, why) in [
        ("text=a%00b".to_owned(), "control characters"),
        (format!("text={many}"), "longer than"),
    ] {
        let (s, v) = api
            .raw("GET", &format!("/api/v1/events?{query}"), Some(OPS), None)
            .await;
        assert_eq!(s, 400, "{query}: {v}");
        assert!(error_message(&v).contains(why), "{v}");
    }
    let (s, v) = api
        .raw(
            "GET",
            "/api/v1/events?text=NEAR(%22x%22%20kind:*",
            Some(OPS),
            None,
        )
        .await;
    assert_eq!(s, 200, "FTS5 syntax is searched for as words: {v}");
    // A body over the limit: a JSON 413 naming the body.
    let (s, v) = api
        .raw(
            "POST",
            "/api/v1/cache/invalidate",
            Some(OPS),
            Some(vec![b'x'; 80 * 1024]),
        )
        .await;
    assert_eq!(s, 413, "{v}");
    assert!(error_message(&v).contains("body"), "{v}");

    // A viewer may read, and HEAD is reading.
    let (s, v) = api.raw("HEAD", "/api/v1/alerts", Some(VIEW), None).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = api.raw("HEAD", "/api/v1/snapshot", Some(VIEW), None).await;
    assert_eq!(s, 200);
    engine.shutdown().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_slowed_then_locked_out_without_an_oracle() {
    let sb = common::sandbox(5, 23).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let base = format!("http://{}", engine.server_addr);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..30 {
        let (http, base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for i in 0..100 {
                let r = http
                    .get(format!("{base}/api/v1/alerts"))
                    .bearer_auth(format!("guess-{worker:02}-{i:04}-0123456789"))
                    .send()
                    .await
                    .unwrap();
                codes.push(r.status().as_u16());
            }
            codes
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let unauthorized = codes.iter().filter(|&&c| c == 401).count();
    let locked = codes.iter().filter(|&&c| c == 429).count();
    println!(
        "3000 wrong tokens in {:.2} s ({:.0}/s): {unauthorized} judged (401), {locked} refused unjudged (429)",
        elapsed.as_secs_f64(),
        3000.0 / elapsed.as_secs_f64()
    );
    assert_eq!(unauthorized + locked, 3000, "{codes:?}");
    assert!(
        unauthorized <= syncctl::server::auth::MAX_FAILURES as usize,
        "{unauthorized} wrong tokens judged in one minute"
    );
    // Locked out: even the right token is not judged (a guess that hits cannot be told
    // from one that misses), and the answer says when to come back.
    let r = http
        .get(format!("{base}/api/v1/alerts"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_failures");
    engine.shutdown().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_header_cannot_read_health_metrics_or_the_api() {
    let sb = common::sandbox(5, 24).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let port = engine.server_addr.port();
    let base = format!("http://{}", engine.server_addr);
    let http = reqwest::Client::new();
    let get = |path: &str, host: String, token: Option<&str>| {
        let mut r = http.get(format!("{base}{path}")).header("host", host);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    // A page of attacker.example whose name was rebound to 127.0.0.1.
    for path in ["/health", "/metrics"] {
        assert_eq!(
            get(path, format!("attacker.example:{port}"), None).await,
            421,
            "{path}"
        );
        assert_eq!(
            get(path, "attacker.example".into(), None).await,
            421,
            "{path}"
        );
    }
    assert_eq!(
        get(
            "/api/v1/alerts",
            format!("attacker.example:{port}"),
            Some(OPS)
        )
        .await,
        421
    );
    // Its own names still work.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        "[::1]".to_string(),
    ] {
        assert_eq!(get("/health", host.clone(), None).await, 200, "{host}");
        assert_eq!(get("/metrics", host.clone(), None).await, 200, "{host}");
    }
    engine.shutdown().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_deletion_of_a_product_never_seen_creates_no_item() {
    let sb = common::sandbox(5, 25).await;
    let base = sb.base_url();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    common::until_idle(&engine, 5).await;
    let creates = sb.sandbox.stats()["quickbooks"]["creates"]
        .as_u64()
        .unwrap();
    let mut product = common::all_products(&base).await[0].clone();
    let ghost = "prod_NeverSeenByTheEngine";
    product["id"] = json!(ghost);
    product["name"] = json!("Ghost product 👻");
    product["active"] = json!(false);
    product["default_price"] = product["default_price"]["id"].clone();
    let body = serde_json::to_vec(&json!({
        "id": "evt_ghost_deleted", "object": "event", "type": "product.deleted",
        "created": product["updated"], "data": { "object": product }, "livemode": false,
    }))
    .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let r = reqwest::Client::new()
        .post(format!("http://{}/webhooks/stripe", engine.server_addr))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            sign_webhook(&sb.sandbox.webhook_secret(), now, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let api = Api::new(&engine);
    let path = format!("/api/v1/events?entity={ghost}");
    let said = common::eventually(30, "the deletion to be handled", || async {
        let ev = api.get(&path).await;
        let first = ev["events"][0]["message"].as_str().map(str::to_owned);
        let c = &engine.snapshot.borrow().catalog.counts;
        (c.queued == 0 && c.in_flight == 0).then_some(())?;
        first
    })
    .await;
    assert!(said.contains("nothing to do"), "{said}");
    assert_eq!(
        sb.sandbox.stats()["quickbooks"]["creates"]
            .as_u64()
            .unwrap(),
        creates,
        "no Item created"
    );
    let items = common::get_json(&format!("{base}/_sandbox/quickbooks/items")).await;
    assert!(
        !items.to_string().contains(ghost),
        "no Item carries the ghost's id"
    );
    engine.shutdown().await;
    sb.shutdown().await;
}
