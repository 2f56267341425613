//! The control API and its feeds over real HTTP and WebSockets: auth, roles, rate-limit
//! headers and 429, JSON error shapes, every endpoint, an alert pushed to a WebSocket
//! client by a fault injected in the sandbox, `/metrics` under promtool, and thresholds
//! that survive a restart with the config file's comments kept.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use syncctl::config::{Config, Role, Secret, TokenConfig};
use tokio_tungstenite::tungstenite::Message;

const OPS: &str = "ops-token-0123456789abcdef";
const VIEW: &str = "viewer-token-0123456789abcdef";
const TINY: &str = "tiny-token-0123456789abcdef";

fn tokens() -> Vec<TokenConfig> {
    let t = |name: &str, token: &str, role, limit| TokenConfig {
        name: name.into(),
        token: Secret::new(token),
        role,
        rate_limit_per_min: limit,
    };
    vec![
        t("ops", OPS, Role::Operator, 10_000),
        t("dashboard", VIEW, Role::Viewer, 10_000),
        t("tiny", TINY, Role::Operator, 3),
    ]
}

fn config(sb: &syncctl::sandbox::SandboxServer) -> Config {
    let mut cfg = common::config_for(sb);
    cfg.server.tokens = tokens();
    cfg.server.ws_heartbeat_secs = 1;
    cfg.alerts.for_secs = 0;
    cfg
}

/// A new engine on `data` with the thresholds saved in the config file at `path`.
async fn restart_from(
    sb: &syncctl::sandbox::SandboxServer,
    path: &std::path::Path,
    data: &std::path::Path,
) -> syncctl::app::Served {
    let loaded = Config::load(path).unwrap();
    let mut cfg = config(sb);
    cfg.alerts = loaded.alerts;
    cfg.anomaly = loaded.anomaly;
    cfg.source = loaded.source;
    common::engine(cfg, data).await
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

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, v)
    }

    async fn get(&self, path: &str) -> Value {
        let (s, _, v) = self.call("GET", path, Some(OPS), None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, v) = self.call("POST", path, Some(OPS), Some(body)).await;
        (s, v)
    }
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_roles_and_error_shapes() {
    let sb = common::sandbox(10, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let api = Api::new(&engine);

    let (s, h, v) = api.call("GET", "/api/v1/alerts", None, None).await;
    assert_eq!((s, error_code(&v)), (401, "unauthorized"));
    assert_eq!(h["www-authenticate"], "Bearer");
    let (s, _, v) = api
        .call("GET", "/api/v1/alerts", Some("not-a-token-at-all"), None)
        .await;
    assert_eq!((s, error_code(&v)), (401, "unauthorized"));
    assert!(
        !v.to_string().contains("not-a-token"),
        "the token is not echoed"
    );

    // A viewer reads, and is refused an action with 403.
    let (s, h, _) = api.call("GET", "/api/v1/alerts", Some(VIEW), None).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-ratelimit-limit"], "10000");
    let (s, _, v) = api
        .call("POST", "/api/v1/pipelines/catalog/pause", Some(VIEW), None)
        .await;
    assert_eq!((s, error_code(&v)), (403, "forbidden"));
    assert!(!engine.snapshot.borrow().catalog.paused);

    // An operator acts; the action is audited with the token's name and address.
    let (s, v) = api.post("/api/v1/pipelines/catalog/pause", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true);
    common::eventually(5, "paused", || async {
        engine.snapshot.borrow().catalog.paused.then_some(())
    })
    .await;
    let ev = api.get("/api/v1/events?type=operator&limit=5").await;
    let first = &ev["events"][0];
    assert_eq!(first["actor"], "api:ops@127.0.0.1", "{ev}");
    // Audited as the command's text and its outcome, whoever sent it.
    assert_eq!(first["message"], "pause catalog: paused catalog pipeline");

    // JSON errors everywhere: unknown path, bad body, bad value.
    let (s, _, v) = api.call("GET", "/api/v1/nope", Some(OPS), None).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    let (s, v) = api.post("/api/v1/cache/invalidate", json!("x")).await;
    assert_eq!((s, error_code(&v)), (400, "bad_request"));
    let (s, _, v) = api
        .call("POST", "/api/v1/pipelines/nope/pause", Some(OPS), None)
        .await;
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_has_a_rate_limit_with_headers_and_429() {
    let sb = common::sandbox(5, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let api = Api::new(&engine);
    for remaining in ["2", "1", "0"] {
        let (s, h, _) = api
            .call("GET", "/api/v1/thresholds", Some(TINY), None)
            .await;
        assert_eq!(s, 200);
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(h["x-ratelimit-remaining"], remaining);
        let reset: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let (s, h, v) = api
        .call("GET", "/api/v1/thresholds", Some(TINY), None)
        .await;
    assert_eq!((s, error_code(&v)), (429, "rate_limited"));
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert!(h.contains_key("retry-after"));
    // Another token is not affected.
    let (s, _, _) = api.call("GET", "/api/v1/thresholds", Some(OPS), None).await;
    assert_eq!(s, 200);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_its_contract() {
    let sb = common::sandbox(20, 7).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    common::until_idle(&engine, 20).await;
    let api = Api::new(&engine);

    // Circuit breakers.
    let all = api.get("/api/v1/resilience/circuit-breakers").await;
    let names: Vec<&str> = all["circuit_breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stripe", "quickbooks", "alegra"]);
    let qb = api
        .get("/api/v1/resilience/circuit-breakers/quickbooks")
        .await;
    assert_eq!(qb["breaker"]["state"], "CLOSED");
    let (s, v) = api
        .post(
            "/api/v1/resilience/circuit-breakers/quickbooks",
            json!({"state": "FORCED_OPEN"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let qb = api
        .get("/api/v1/resilience/circuit-breakers/quickbooks")
        .await;
    assert_eq!(qb["breaker"]["state"], "FORCED_OPEN");
    let (s, _) = api
        .post(
            "/api/v1/resilience/circuit-breakers/quickbooks",
            json!({"state": "CLOSED"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .post(
            "/api/v1/resilience/circuit-breakers/quickbooks",
            json!({"state": "HALF_OPEN"}),
        )
        .await;
    assert_eq!((s, error_code(&v)), (400, "bad_request"));
    let (s, _, v) = api
        .call(
            "GET",
            "/api/v1/resilience/circuit-breakers/nope",
            Some(OPS),
            None,
        )
        .await;
    assert_eq!((s, error_code(&v)), (404, "not_found"));

    // The DIAN queue.
    let q = api.get("/api/v1/compliance?status=FAILED").await;
    assert!(q["invoices"].as_array().unwrap().is_empty());
    assert!(q["counts"].is_object());
    let (s, _, v) = api
        .call("GET", "/api/v1/compliance?status=LOST", Some(OPS), None)
        .await;
    assert_eq!((s, error_code(&v)), (400, "bad_request"));
    assert!(v["error"]["message"].as_str().unwrap().contains("LOST"));
    // An unknown invoice is not found (404), not a conflict.
    let (s, v) = api.post("/api/v1/compliance/FE-404/retry", json!({})).await;
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");
    let (s, v) = api.post("/api/v1/compliance/retry-failed", json!({})).await;
    assert!(s == 200 || s == 409, "{s} {v}");

    // The cache: all, pattern, tag; the synced items were cached.
    let snap = api.get("/api/v1/snapshot").await;
    let entries = snap["cache"]["entries"].as_u64().unwrap();
    assert!(
        entries >= 20,
        "every created Item is cached by name and id: {snap}"
    );
    let (s, v) = api
        .post("/api/v1/cache/invalidate", json!({"pattern": "item:id:*"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(&format!("dropped {} entries", entries / 2)),
        "{v}"
    );
    let (_, v) = api
        .post("/api/v1/cache/invalidate", json!({"tag": "item"}))
        .await;
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(&format!("dropped {} entries", entries / 2)),
        "{v}"
    );
    let (s, v) = api.post("/api/v1/cache/invalidate", json!({})).await;
    assert_eq!(s, 200);
    assert!(
        v["message"].as_str().unwrap().contains("dropped 0 entries"),
        "{v}"
    );
    let (s, v) = api
        .post("/api/v1/cache/invalidate", json!({"tag": 3}))
        .await;
    assert_eq!((s, error_code(&v)), (400, "bad_request"));

    // Thresholds: the full set; a bad change names its key and applies nothing.
    let t = api.get("/api/v1/thresholds").await;
    assert_eq!(t["alerts.error_rate_percent"], 10.0);
    let (s, _, v) = api
        .call(
            "PUT",
            "/api/v1/thresholds",
            Some(OPS),
            Some(json!({"alerts.error_rate_percent": 12, "alerts.nope": 1})),
        )
        .await;
    assert_eq!((s, error_code(&v)), (400, "bad_request"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alerts.nope")
    );
    let (s, _, v) = api
        .call(
            "PUT",
            "/api/v1/thresholds",
            Some(OPS),
            Some(json!({"alerts.error_rate_percent": 12, "alerts.queue_depth": -5})),
        )
        .await;
    assert_eq!((s, error_code(&v)), (400, "bad_request"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alerts.queue_depth")
    );
    assert_eq!(
        api.get("/api/v1/thresholds").await["alerts.error_rate_percent"],
        10.0
    );
    let (s, _, v) = api
        .call(
            "PUT",
            "/api/v1/thresholds",
            Some(OPS),
            Some(json!({"alerts.error_rate_percent": 12})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["alerts.error_rate_percent"], 12.0);
    assert_eq!(v["alerts.queue_depth"], 100.0, "the full set");
    let (s, _, _) = api
        .call(
            "PUT",
            "/api/v1/thresholds",
            Some(VIEW),
            Some(json!({"alerts.queue_depth": 5})),
        )
        .await;
    assert_eq!(s, 403);

    // Alerts, anomalies, profile, events filters, connections.
    let a = api.get("/api/v1/alerts").await;
    assert!(a["active"].is_array() && a["history"].is_array() && a["silences"].is_array());
    let (s, v) = api
        .post(
            "/api/v1/alerts/silence",
            json!({"matcher": "queue_depth", "secs": 600}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let a = api.get("/api/v1/alerts").await;
    assert_eq!(a["silences"][0]["matcher"], "queue_depth");
    assert_eq!(a["silences"][0]["by"], "api:ops@127.0.0.1");
    let (s, v) = api
        .post("/api/v1/alerts/silence", json!({"matcher": "x"}))
        .await;
    assert_eq!((s, error_code(&v)), (400, "bad_request"));
    let (s, v) = api
        .post("/api/v1/alerts/ack", json!({"matcher": "nothing"}))
        .await;
    assert_eq!((s, error_code(&v)), (409, "refused"));
    let an = api.get("/api/v1/anomalies").await;
    assert!(an["open"].is_array() && an["recent"].is_array());
    let p = api.get("/api/v1/profile").await;
    let ops: Vec<&str> = p["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        ops.contains(&"http.quickbooks") && ops.contains(&"catalog.item_sync"),
        "{p}"
    );
    let p95: Vec<f64> = p["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["p95_ms"].as_f64().unwrap())
        .collect();
    assert!(
        p95.windows(2).all(|w| w[0] >= w[1]),
        "slowest first: {p95:?}"
    );
    let ev = api
        .get("/api/v1/events?type=operator,circuit&limit=50")
        .await;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"operator") && kinds.contains(&"circuit"),
        "{kinds:?}"
    );
    assert!(kinds.iter().all(|k| *k == "operator" || *k == "circuit"));
    // The operator's change, and the viewer's attempt refused by the engine (audited
    // like any command, newest first).
    let ev = api.get("/api/v1/events?entity=thresholds").await;
    assert_eq!(ev["events"].as_array().unwrap().len(), 2, "{ev}");
    let message = |n: usize| ev["events"][n]["message"].as_str().unwrap().to_owned();
    assert!(
        message(0).contains("refused") && message(0).contains("viewer"),
        "{ev}"
    );
    assert_eq!(ev["events"][0]["actor"], "api:dashboard@127.0.0.1");
    assert!(
        message(1).contains("alerts.error_rate_percent 10 → 12"),
        "{ev}"
    );
    let ev = api.get("/api/v1/events?since=2999-01-01T00:00:00Z").await;
    assert!(ev["events"].as_array().unwrap().is_empty());
    let (s, _, v) = api
        .call("GET", "/api/v1/events?since=yesterday", Some(OPS), None)
        .await;
    assert_eq!((s, error_code(&v)), (400, "bad_request"));
    // Work done inside a job carries its trace id into the trail.
    let ev = api.get("/api/v1/events?type=item&limit=200").await;
    assert!(
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["trace_id"].as_str().is_some_and(|t| t.len() == 32)),
        "{ev}"
    );
    let c = api.get("/api/v1/ws/connections").await;
    assert_eq!(c["count"], 0);

    // /health and /metrics need no token.
    let h = common::get_json(&format!("{}/health", api.base)).await;
    assert!(h["score"].as_u64().unwrap() <= 100);
    assert!(
        ["excellent", "good", "fair", "poor", "critical"].contains(&h["level"].as_str().unwrap())
    );
    assert!(
        h["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "quickbooks"),
        "{h}"
    );
    let m = reqwest::get(format!("{}/metrics", api.base)).await.unwrap();
    assert!(
        m.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let text = m.text().await.unwrap();
    assert!(
        text.contains("syncctl_downstream_calls_total{company=\"default\",service=\"quickbooks\"}")
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    // Latencies are histograms: cumulative buckets on fixed bounds, the +Inf one equal
    // to the count, so that engines' buckets add up.
    assert!(
        text.contains("# TYPE syncctl_operation_duration_seconds histogram"),
        "{text}"
    );
    let value = |line: &str| -> f64 { line.rsplit(' ').next().unwrap().parse().unwrap() };
    let op = "company=\"default\",operation=\"http.quickbooks\"";
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("syncctl_operation_duration_seconds_bucket{") && l.contains(op))
        .map(value)
        .collect();
    assert_eq!(buckets.len(), 16, "{text}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    let count = text
        .lines()
        .find(|l| l.starts_with(&format!("syncctl_operation_duration_seconds_count{{{op}}}")))
        .map(value)
        .unwrap_or_else(|| panic!("no count: {text}"));
    assert!(count > 0.0, "{text}");
    assert_eq!(buckets[15], count, "{text}");
    assert!(!text.contains("quantile"), "{text}");
    engine.shutdown().await;
}

/// The sandbox's QuickBooks goes down; the engine's failed calls in a row fire the
/// critical alert, which a WebSocket client on `/api/v1/ws/alerts` receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_receives_the_alert_a_sandbox_fault_causes() {
    let sb = common::sandbox(30, 8).await;
    let base = format!("http://{}", sb.addr);
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    sb.sandbox.set_webhook_url(Some(format!(
        "http://{}/webhooks/stripe",
        engine.server_addr
    )));
    common::until_idle(&engine, 30).await;
    let api = Api::new(&engine);
    let url = format!("ws://{}/api/v1/ws/alerts?token={OPS}", engine.server_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let hello: Value = {
        let m = ws.next().await.unwrap().unwrap();
        serde_json::from_str(m.to_text().unwrap()).unwrap()
    };
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["feed"], "alerts");
    let c = api.get("/api/v1/ws/connections").await;
    assert_eq!(c["count"], 1, "{c}");
    assert_eq!(c["connections"][0]["token"], "ops");
    assert_eq!(c["connections"][0]["feed"], "alerts");

    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    let mut saw = (false, false, None::<Value>);
    common::faults(&base, json!({"service": "quickbooks", "outage": true})).await;
    // Catalog changes reach the engine by webhook; syncing them fails.
    common::post_json(&base, "/_sandbox/catalog/changes", json!({"count": 20})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while saw.2.is_none() || !saw.0 || !saw.1 {
        assert!(tokio::time::Instant::now() < deadline, "no alert: {saw:?}");
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("frames keep coming (heartbeat)")
            .unwrap()
            .unwrap();
        // The engine's WebSocket pings (liveness) are the client library's business.
        if !m.is_text() {
            continue;
        }
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        match v["type"].as_str().unwrap() {
            "pong" => saw.0 = true,
            "heartbeat" => saw.1 = true,
            "alert" if v["alert"]["rule"] == "consecutive_failures" => saw.2 = Some(v),
            "alert" => {}
            other => panic!("the alerts feed sent {other}: {v}"),
        }
    }
    let alert = saw.2.unwrap();
    assert_eq!(alert["alert"]["phase"], "firing");
    assert_eq!(alert["alert"]["severity"], "critical");
    assert_eq!(alert["alert"]["label"], "quickbooks");
    // Also listed as active, and in the audit trail.
    let a = api.get("/api/v1/alerts").await;
    assert!(
        a["active"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == "consecutive_failures/quickbooks")
    );
    // Among the alert events (others may fire after it on a loaded machine: the
    // error rate, an anomaly), once written (the audit line is written apart from the
    // feed, and may land just after the alert reached the client).
    common::eventually(10, "the alert's audit line", || async {
        let ev = api.get("/api/v1/events?type=alert").await;
        ev["events"]
            .as_array()?
            .iter()
            .any(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("critical firing on quickbooks"))
            })
            .then_some(())
    })
    .await;
    ws.close(None).await.unwrap();
    common::eventually(5, "the connection to leave the list", || async {
        (api.get("/api/v1/ws/connections").await["count"] == 0).then_some(())
    })
    .await;
    // A WebSocket without a token is refused before the upgrade.
    let bare = format!("ws://{}/api/v1/ws/notifications", engine.server_addr);
    assert!(tokio_tungstenite::connect_async(&bare).await.is_err());
    engine.shutdown().await;
}

/// Thresholds changed over the API are saved into the config file, which keeps its
/// comments, and are in force after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_survive_a_restart_and_the_config_keeps_its_comments() {
    let sb = common::sandbox(5, 9).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncctl.toml");
    std::fs::write(
        &path,
        "# ops box config — do not lose this line\n[alerts]\n# paged above this\nerror_rate_percent = 10.0\n",
    )
    .unwrap();
    let mut cfg = config(&sb);
    cfg.source = Some(path.clone());
    let data = dir.path().join("data");
    let mut engine = common::engine(cfg.clone(), &data).await;
    let api = Api::new(&engine);
    let (s, _, v) = api
        .call(
            "PUT",
            "/api/v1/thresholds",
            Some(OPS),
            Some(json!({"alerts.error_rate_percent": 7.5, "anomaly.min_samples": 60})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    engine.shutdown().await;

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("# ops box config — do not lose this line"),
        "{text}"
    );
    assert!(
        text.contains("# paged above this\nerror_rate_percent = 7.5"),
        "{text}"
    );
    let loaded = Config::load(&path).unwrap();
    assert_eq!(loaded.alerts.error_rate_percent, 7.5);
    assert_eq!(loaded.anomaly.min_samples, 60);
    let mut engine = restart_from(&sb, &path, &data).await;
    let api = Api::new(&engine);
    let t = api.get("/api/v1/thresholds").await;
    assert_eq!(t["alerts.error_rate_percent"], 7.5);
    assert_eq!(t["anomaly.min_samples"], 60.0);
    engine.shutdown().await;
}

/// `/metrics` is clean under Prometheus' own linter. CI installs promtool; elsewhere
/// the test says it was skipped unless SYNCCTL_REQUIRE_PROMTOOL is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check() {
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    if promtool.is_err() {
        assert!(
            std::env::var_os("SYNCCTL_REQUIRE_PROMTOOL").is_none(),
            "promtool is required (SYNCCTL_REQUIRE_PROMTOOL) but not installed"
        );
        eprintln!("promtool not installed: metrics_pass_promtool_check skipped");
        return;
    }
    let sb = common::sandbox(20, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    common::until_idle(&engine, 20).await;
    let text = reqwest::get(format!("http://{}/metrics", engine.server_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    engine.shutdown().await;
    assert!(
        text.contains("syncctl_catalog_jobs_completed_total{company=\"default\"} 20"),
        "{text}"
    );
    common::promtool_accepts(&text, true);
}

/// With `server.statsd` set, a datagram of StatsD lines arrives every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_lines_reach_the_configured_address() {
    let sb = common::sandbox(10, 11).await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(&sb);
    cfg.server.statsd = Some(udp.local_addr().unwrap().to_string());
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(cfg, dir.path()).await;
    let mut buf = vec![0u8; 2048];
    let mut seen = String::new();
    // Datagrams until one carries the calls QuickBooks answered during the sync.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.lines().any(|l| {
        l.strip_prefix("syncctl.http.quickbooks.calls:")
            .and_then(|v| v.strip_suffix("|c"))
            .is_some_and(|n| n != "0")
    }) {
        assert!(tokio::time::Instant::now() < deadline, "{seen}");
        let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut buf))
            .await
            .expect("a datagram a second")
            .unwrap();
        seen = String::from_utf8_lossy(&buf[..n]).into_owned();
        for line in seen.lines() {
            let (name, rest) = line.split_once(':').unwrap_or_else(|| panic!("{line}"));
            assert!(name.starts_with("syncctl."), "{line}");
            assert!(rest.ends_with("|g") || rest.ends_with("|c"), "{line}");
        }
    }
    assert!(seen.contains("syncctl.health.score:"), "{seen}");
    assert!(seen.contains("syncctl.queue.catalog:"), "{seen}");
    engine.shutdown().await;
}

/// `syncctl status` against a running engine: text, `--json`, `--watch`, exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_a_running_engine() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_syncctl");
    let sb = common::sandbox(10, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    common::until_idle(&engine, 10).await;
    let url = format!("http://{}", engine.server_addr);
    let run = |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .arg("status")
                .arg(&url)
                .args(args)
                .env_remove("SYNCCTL_TOKEN")
                .output()
                .unwrap()
        })
    };
    let out = run(vec![]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("syncctl {url} (sandbox) — OK")),
        "{text}"
    );
    assert!(text.contains("synced 10 · queued 0"), "{text}");
    assert!(text.contains("compliance  running"), "{text}");
    assert!(!text.contains(OPS), "no token was given, none printed");

    // `--data-dir D` without a URL: the engine serving D, by its control file (the
    // config's default address is nobody's here), and its token with it.
    let by_dir = |dir: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .arg("--data-dir")
                .arg(&dir)
                .args(["status", "--json"])
                .env_remove("SYNCCTL_TOKEN")
                .output()
                .unwrap()
        })
    };
    let out = by_dir(dir.path().to_path_buf()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["catalog"]["synced"], 10, "{v}");
    assert!(
        v["alerts"]["active"].is_array(),
        "the control file's token: {v}"
    );
    let nobody = tempfile::tempdir().unwrap();
    let out = by_dir(nobody.path().to_path_buf()).await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no engine serves"),
        "{out:?}"
    );

    let out = run(vec!["--json".into(), "--token".into(), OPS.into()])
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["catalog"]["synced"], 10);
    assert!(
        v["alerts"]["active"].is_array(),
        "the token adds the alerts: {v}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(OPS));

    // A bad token is an error naming the endpoint, not a silent partial look.
    let out = run(vec!["--token".into(), "wrong-token-000000000000".into()])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // --watch --json: one object per line, again and again.
    let mut child = Command::new(BIN)
        .args(["status", &url, "--json", "--watch", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(2)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["status"], "ok");
    }
    assert_eq!(lines.len(), 2);

    // Degraded: a paused pipeline is a warning, FORCED_OPEN QuickBooks scores 0.
    let api = Api::new(&engine);
    api.post(
        "/api/v1/resilience/circuit-breakers/quickbooks",
        json!({"state": "FORCED_OPEN"}),
    )
    .await;
    let h = common::eventually(10, "health to see the open circuit", || async {
        let h = common::get_json(&format!("{url}/health")).await;
        (h["status"] == "down").then_some(h)
    })
    .await;
    // Recommendations are data (component, reason, command), worded here for HTTP.
    let qb = h["recommended"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["component"] == "quickbooks")
        .unwrap_or_else(|| panic!("{h}"));
    assert_eq!(qb["command"], "breaker quickbooks close", "{h}");
    assert_eq!(qb["action"]["verb"], "breaker", "{h}");
    assert!(
        h["recommendations"].as_array().unwrap().iter().any(|l| l
            .as_str()
            .unwrap()
            .contains("POST /api/v1/resilience/circuit-breakers/quickbooks")),
        "{h}"
    );
    let out = run(vec![]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("DOWN") && text.contains("quickbooks 0 (circuit FORCED_OPEN)"),
        "{text}"
    );
    assert!(text.contains("recommend"), "{text}");
    engine.shutdown().await;

    // Nobody there: exit 3 and a message naming the address.
    let out = run(vec![]).await.unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not reachable"));
}

/// The operator edits a threshold in the console's Settings tab; the command goes to a
/// real engine, which saves it into the config file; after a restart the console
/// shows it in force, and the file kept its comments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_changed_in_the_console_survives_a_restart() {
    use crossterm::event::{KeyCode, KeyEvent};
    use ratatui::{Terminal, backend::TestBackend};
    use syncctl::console::state::{App, Tab};
    let sb = common::sandbox(5, 13).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncctl.toml");
    let original = "# Ops box — keep this comment\n\n[alerts]\n# page someone above this\nqueue_depth = 100 # jobs\n";
    std::fs::write(&path, original).unwrap();
    let mut cfg = config(&sb);
    cfg.source = Some(path.clone());
    let data = dir.path().join("data");
    let mut engine = common::engine(cfg, &data).await;
    let snap = engine.snapshot.borrow().clone();
    let mut app = App::new(snap, syncctl::console::theme::Theme::monochrome());
    let key = |c| KeyEvent::from(c);
    app.on_key(key(KeyCode::Char('t')));
    assert_eq!(app.tab, Tab::Settings);
    while app.selected_setting().unwrap().0 != "alerts.queue_depth" {
        app.on_key(key(KeyCode::Down));
    }
    app.on_key(key(KeyCode::Enter));
    for _ in 0..3 {
        app.on_key(key(KeyCode::Backspace));
    }
    for c in "250".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    app.on_key(key(KeyCode::Enter));
    app.on_key(key(KeyCode::Char('A')));
    let cmd = app.on_key(key(KeyCode::Char('y'))).expect("a command");
    {
        // Sent the way the console sends it: through the in-process engine's link.
        use syncctl::protocol::Link;
        let link = syncctl::app::LocalEngine {
            engine: &mut engine,
            sandbox: None,
        };
        let reply = link
            .send(syncctl::protocol::Request::new(
                app.actor.clone(),
                cmd.clone(),
            ))
            .await
            .unwrap();
        // The engine's answer comes back to this sender, not through the snapshot.
        let outcome = reply.await.unwrap().expect("applied");
        app.on_reply(&cmd, Ok(outcome.clone()));
        assert_eq!(app.flash.as_deref(), Some(outcome.message.as_str()));
        assert!(
            outcome.message.contains("alerts.queue_depth 100 → 250"),
            "{outcome:?}"
        );
        assert!(
            outcome.message.contains(&path.display().to_string()),
            "{outcome:?}"
        );
    }
    engine.shutdown().await;

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# Ops box — keep this comment\n"),
        "{text}"
    );
    assert!(
        text.contains("# page someone above this\nqueue_depth = 250 # jobs\n"),
        "{text}"
    );
    let mut engine = restart_from(&sb, &path, &data).await;
    let mut app = App::new(
        engine.snapshot.borrow().clone(),
        syncctl::console::theme::Theme::monochrome(),
    );
    app.tab = Tab::Settings;
    let mut term = Terminal::new(TestBackend::new(100, 30)).unwrap();
    term.draw(|f| syncctl::console::screens::draw(f, &app))
        .unwrap();
    let buf = term.backend().buffer().clone();
    let screen: String = (0..30)
        .map(|y| {
            (0..100)
                .map(|x| buf[(x, y)].symbol().to_owned())
                .collect::<String>()
                + "\n"
        })
        .collect();
    let row = screen
        .lines()
        .find(|l| l.contains("alerts.queue_depth"))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(row.contains(" 250 "), "{row}");
    engine.shutdown().await;
}

/// The notifications feed, authenticated by header, carries breaker transitions and
/// the audit lines of operator actions, as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifications_feed_carries_breaker_and_audit_events() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let sb = common::sandbox(5, 14).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let api = Api::new(&engine);
    let mut req = format!("ws://{}/api/v1/ws/notifications", engine.server_addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {VIEW}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello: Value =
        serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(hello["feed"], "notifications");
    let c = api.get("/api/v1/ws/connections").await;
    assert_eq!(c["connections"][0]["token"], "dashboard", "{c}");
    let (s, _) = api
        .post(
            "/api/v1/resilience/circuit-breakers/alegra",
            json!({"state": "FORCED_OPEN"}),
        )
        .await;
    assert_eq!(s, 200);
    let (mut breaker, mut audit) = (None, None);
    while breaker.is_none() || audit.is_none() {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the events within 10 s")
            .unwrap()
            .unwrap();
        if !m.is_text() {
            continue;
        }
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        match v["type"].as_str().unwrap() {
            "breaker" if v["service"] == "alegra" => breaker = Some(v),
            "audit" if v["entry"]["kind"] == "operator" => audit = Some(v),
            _ => {}
        }
    }
    let b = breaker.unwrap();
    assert_eq!(
        (b["from"].as_str(), b["to"].as_str()),
        (Some("CLOSED"), Some("FORCED_OPEN"))
    );
    let a = audit.unwrap();
    assert_eq!(a["entry"]["actor"], "api:ops@127.0.0.1");
    assert_eq!(
        a["entry"]["message"],
        "breaker alegra force-open: circuit alegra set to FORCED_OPEN"
    );
    engine.shutdown().await;
}

/// A refused command answers its typed error's status with the JSON error shape:
/// an unknown invoice is 404, a bad threshold 400 naming it, a viewer acting 403, a
/// state that refuses it 409. Nothing refused is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_command_errors_answer_404_400_403_409_with_the_json_error() {
    let sb = common::sandbox(5, 21).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let api = Api::new(&engine);

    // Retrying an invoice nobody knows: 404, naming it.
    let (s, v) = api
        .post("/api/v1/compliance/SETP990999999/retry", json!({}))
        .await;
    assert_eq!((s, error_code(&v)), (404, "not_found"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SETP990999999"),
        "{v}"
    );
    // Audited as refused, with the command's text.
    let ev = api.get("/api/v1/events?type=operator&limit=5").await;
    assert_eq!(
        ev["events"][0]["message"],
        "retry SETP990999999: refused: invoice \"SETP990999999\" not found",
        "{ev}"
    );

    // A bad threshold: 400 naming the field; nothing applied.
    for body in [
        json!({"alerts.queue_depth": -5}),
        json!({"alerts.error_rate_percent": 12, "alerts.nope": 1}),
    ] {
        let (s, _, v) = api
            .call("PUT", "/api/v1/thresholds", Some(OPS), Some(body.clone()))
            .await;
        assert_eq!((s, error_code(&v)), (400, "bad_request"), "{body}: {v}");
        let field = body
            .as_object()
            .unwrap()
            .keys()
            .find(|k| *k != "alerts.error_rate_percent")
            .unwrap()
            .clone();
        assert_eq!(v["error"]["field"], json!(field), "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(&field),
            "{v}"
        );
    }
    let t = api.get("/api/v1/thresholds").await;
    assert_eq!(t["alerts.error_rate_percent"], 10.0);
    assert_eq!(t["alerts.queue_depth"], 100.0);

    // A viewer acting: 403 on every action, and nothing happens.
    for (method, path, body) in [
        ("POST", "/api/v1/compliance/SETP990999999/retry", json!({})),
        ("POST", "/api/v1/compliance/retry-failed", json!({})),
        (
            "PUT",
            "/api/v1/thresholds",
            json!({"alerts.queue_depth": 5}),
        ),
        ("POST", "/api/v1/pipelines/compliance/pause", json!({})),
        (
            "POST",
            "/api/v1/resilience/circuit-breakers/alegra",
            json!({"state": "FORCED_OPEN"}),
        ),
    ] {
        let (s, _, v) = api.call(method, path, Some(VIEW), Some(body)).await;
        assert_eq!((s, error_code(&v)), (403, "forbidden"), "{path}: {v}");
    }
    let snap = engine.snapshot.borrow().clone();
    assert!(!snap.compliance.paused);
    assert_eq!(
        snap.downstreams[2].breaker.state,
        syncctl::resilience::State::Closed
    );

    // The engine's state refuses it: 409.
    let (s, v) = api
        .post("/api/v1/alerts/ack", json!({"matcher": "nothing"}))
        .await;
    assert_eq!((s, error_code(&v)), (409, "refused"), "{v}");

    // A success answers the outcome.
    let (s, v) = api.post("/api/v1/compliance/retry-failed", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["ok"].as_bool(), v["count"].as_u64()),
        (Some(true), Some(0))
    );
    engine.shutdown().await;
}

/// Each sender gets its own reply: a command sent through the console's link and one
/// sent by another front-end at the same time are each answered to their sender, and
/// the detail query is answered to whoever asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_through_the_console_link_gets_its_own_reply() {
    use syncctl::protocol::{
        BreakerAction, Command, CommandError, Link, Pipeline, Query, Request, Service,
    };
    let sb = common::sandbox(5, 22).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(config(&sb), dir.path()).await;
    // Another front-end (the API holds one like it).
    let other = engine.commands.clone();
    let link = syncctl::app::LocalEngine {
        engine: &mut engine,
        sandbox: None,
    };
    for round in 0..20 {
        // Both in flight before either is read; read in the other order.
        let mine = link
            .send(Request::new(
                "console:ana",
                Command::RetryInvoice {
                    key: format!("FE-{round}"),
                },
            ))
            .await
            .unwrap();
        let (pipeline, verb_pause) = (Pipeline::Catalog, round % 2 == 0);
        let theirs = other
            .send(Request::new(
                "api:ops",
                if verb_pause {
                    Command::Pause { pipeline }
                } else {
                    Command::Resume { pipeline }
                },
            ))
            .await
            .unwrap();
        let theirs = theirs.await.unwrap().expect("the other sender's command");
        let expected = if verb_pause { "paused" } else { "resumed" };
        assert!(theirs.message.starts_with(expected), "{theirs:?}");
        match mine.await.unwrap() {
            Err(CommandError::NotFound { what }) => assert!(what.contains(&format!("FE-{round}"))),
            other => panic!("the console got someone else's reply: {other:?}"),
        }
    }
    // Two senders through the same link: each its own.
    let a = link
        .send(Request::new(
            "console:ana",
            Command::Breaker {
                service: Service::Alegra,
                action: BreakerAction::ForceOpen,
            },
        ))
        .await
        .unwrap();
    let b = link
        .send(Request::new(
            "console:ana",
            Command::Breaker {
                service: Service::Alegra,
                action: BreakerAction::ForceOpen,
            },
        ))
        .await
        .unwrap();
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert!(a.changed && !b.changed, "{a:?} {b:?}");
    assert!(b.message.contains("already"), "{b:?}");
    // A query is answered to whoever asked, with NotFound for an unknown invoice.
    let q = link
        .query(Query::InvoiceDetail {
            key: "FE-nope".into(),
        })
        .await
        .unwrap();
    assert!(
        matches!(q.await.unwrap(), Err(CommandError::NotFound { .. })),
        "an unknown invoice's detail"
    );
    // Invalid before applied, whoever sends it.
    let r = other
        .request(Request::new(
            "api:ops",
            Command::SilenceAlerts {
                matcher: syncctl::protocol::AlertMatcher::All,
                secs: 0,
            },
        ))
        .await;
    assert_eq!(r.unwrap_err().field(), Some("duration"));
    engine.shutdown().await;
}

/// The events API over a trail longer than any page: `before=` pages back through it
/// newest first with nothing skipped or repeated, and `text=` finds an entry older than
/// the newest 500 (what the console holds), alongside the type filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_page_back_with_before_and_find_old_entries_by_text() {
    let sb = common::sandbox(1, 0).await;
    let dir = tempfile::tempdir().unwrap();
    {
        // A trail written before this engine started: one old operator action under
        // 1,200 newer item lines.
        let store = syncctl::store::Store::open(dir.path()).unwrap();
        store
            .audit(
                "operator",
                "catalog",
                "ana@10.0.0.7",
                "paused the Needle pipeline",
            )
            .unwrap();
        for i in 0..1200 {
            store
                .audit("item", &format!("prod_{i}"), "engine", "created Item")
                .unwrap();
        }
    }
    let mut engine = common::engine(config(&sb), dir.path()).await;
    let api = Api::new(&engine);
    let mut ids = Vec::new();
    let mut before = String::new();
    loop {
        let v = api
            .get(&format!("/api/v1/events?type=item&limit=250{before}"))
            .await;
        let page = v["events"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 250);
        assert!(page.iter().all(|e| e["kind"] == "item"), "{v}");
        ids.extend(page.iter().map(|e| e["id"].as_i64().unwrap()));
        before = format!("&before={}", ids.last().unwrap());
    }
    assert!(ids.len() >= 1200, "{}", ids.len());
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeat"
    );
    // The old entry, by words anywhere in it (case-insensitive).
    let v = api.get("/api/v1/events?text=needle%20ANA&limit=10").await;
    let found = v["events"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{v}");
    assert_eq!(found[0]["message"], "paused the Needle pipeline");
    let v = api
        .get("/api/v1/events?text=needle&type=item&limit=10")
        .await;
    assert!(v["events"].as_array().unwrap().is_empty(), "{v}");
    engine.shutdown().await;
    sb.shutdown().await;
}
