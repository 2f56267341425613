//! Helpers shared by the integration tests: a sandbox and an engine on loopback, and
//! waiting for a condition on real HTTP work (polled; never a fixed sleep standing in
//! for a result).

#![allow(dead_code)]

pub mod pg;

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use syncctl::app;
use syncctl::app::Served;
use syncctl::config::Config;
use syncctl::engine::{EngineHandle, EngineOptions, Mode};
use syncctl::sandbox::{SandboxOptions, SandboxServer};

pub async fn sandbox(products: usize, seed: u64) -> SandboxServer {
    syncctl::connectors::install_crypto();
    let opts = SandboxOptions {
        products,
        seed,
        ..Default::default()
    };
    let listener = app::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    app::start_sandbox(&opts, listener, 0).unwrap()
}

/// An engine config pointing at `sandbox`, on a free port.
pub fn config_for(sandbox: &SandboxServer) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.catalog.reconcile_interval_secs = 3600;
    app::fill_from_sandbox(&mut c, &sandbox.sandbox, sandbox.addr);
    c
}

/// `config` with one operator token, `token`, not rate limited.
pub fn with_operator(mut config: Config, token: &str) -> Config {
    config.server.tokens = vec![syncctl::config::TokenConfig {
        name: "ops".into(),
        token: syncctl::config::Secret::new(token),
        role: syncctl::config::Role::Operator,
        rate_limit_per_min: 0,
    }];
    config
}

/// One call to an engine's API as `token`: the status and the JSON answer (Null when
/// the body is not JSON).
pub async fn api(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An engine on `dir` and its HTTP server, as the binary wires them.
pub async fn engine(config: Config, dir: &std::path::Path) -> Served {
    let listener = app::bind(config.server.listen, false).await.unwrap();
    app::serve_engine(
        EngineOptions {
            config,
            data_dir: dir.to_owned(),
            mode: Mode::Sandbox,
            server_addr: None,
            fresh_store: false,
            company: syncctl::config::DEFAULT_COMPANY.into(),
        },
        listener,
    )
    .await
    .unwrap()
}

/// The engine's QuickBooks policy as its snapshot shows it (breaker, limiter, counters).
pub fn qb_view(engine: &EngineHandle) -> syncctl::resilience::DownstreamView {
    engine
        .snapshot
        .borrow()
        .downstreams
        .iter()
        .find(|d| d.name == "quickbooks")
        .cloned()
        .expect("a quickbooks policy")
}

/// Waits until the engine has listed everything and has nothing queued or in flight.
pub async fn until_idle(engine: &EngineHandle, expected_synced: u64) {
    let mut rx = engine.snapshot.clone();
    let result = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            {
                let s = rx.borrow_and_update();
                let c = &s.catalog.counts;
                if s.catalog.full_sync.done
                    && c.queued == 0
                    && c.in_flight == 0
                    && c.synced >= expected_synced
                {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                panic!("engine stopped");
            }
        }
    })
    .await;
    if result.is_err() {
        panic!(
            "engine not idle in time: {:?}",
            engine.snapshot.borrow().catalog
        );
    }
}

/// Polls `check` every 20 ms until it returns Some, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// POSTs `body` as JSON to `base` + `path`; the answer must be a success.
pub async fn post_json(base: &str, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Pays `n` new invoices in the sandbox's Stripe; their ids.
pub async fn make_invoices(base: &str, n: usize) -> Vec<String> {
    let v = post_json(
        base,
        "/_sandbox/stripe/invoices",
        serde_json::json!({ "count": n }),
    )
    .await;
    v["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// Sets a sandbox fault (`POST /_sandbox/faults`).
pub async fn faults(base: &str, body: Value) {
    post_json(base, "/_sandbox/faults", body).await;
}

/// Every product in the sandbox's Stripe, through the Stripe API itself.
pub async fn all_products(base: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![
            ("limit", "100".to_string()),
            ("expand[]", "data.default_price".into()),
        ];
        if let Some(a) = &after {
            q.push(("starting_after", a.clone()));
        }
        let page: Value = client
            .get(format!("{base}/v1/products"))
            .bearer_auth(syncctl::sandbox::STRIPE_API_KEY)
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let data = page["data"].as_array().unwrap().clone();
        after = data.last().map(|p| p["id"].as_str().unwrap().to_owned());
        out.extend(data);
        if !page["has_more"].as_bool().unwrap() {
            return out;
        }
    }
}

/// Asserts each product has exactly one Item (by Sku = product id), at the right price
/// and active flag, with a valid name, and that no two Items share a name.
pub async fn assert_one_item_per_product(base: &str) {
    let products = all_products(base).await;
    let items: Vec<Value> = get_json(&format!("{base}/_sandbox/quickbooks/items"))
        .await
        .as_array()
        .unwrap()
        .clone();
    let mut by_sku: std::collections::HashMap<&str, Vec<&Value>> = Default::default();
    for item in &items {
        by_sku
            .entry(item["Sku"].as_str().unwrap_or(""))
            .or_default()
            .push(item);
    }
    for p in &products {
        let id = p["id"].as_str().unwrap();
        let found = by_sku.get(id).map(Vec::len).unwrap_or(0);
        assert_eq!(found, 1, "product {id} ({:?}) has {found} Items", p["name"]);
        let item = by_sku[id][0];
        let expected = match &p["default_price"] {
            Value::Null => 0.0,
            price => {
                let amount = price["unit_amount"].as_i64().unwrap() as f64;
                match price["currency"].as_str().unwrap() {
                    "jpy" | "clp" => amount,
                    _ => amount / 100.0,
                }
            }
        };
        assert_eq!(
            item["UnitPrice"].as_f64().unwrap_or(0.0),
            expected,
            "price of {id}"
        );
        assert_eq!(item["Active"], p["active"], "active flag of {id}");
        let name = item["Name"].as_str().unwrap();
        assert!(
            name.chars().count() <= 100 && !name.contains(':') && !name.is_empty(),
            "invalid name {name:?}"
        );
    }
    assert_eq!(items.len(), products.len(), "no Item without a product");
    let stats = get_json(&format!("{base}/_sandbox/stats")).await;
    assert_eq!(stats["quickbooks"]["duplicate_names"], 0);
}

/// A port free on loopback now (for a child process told where to listen).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed if the test ends early (a failed assertion).
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The binary under test, run as a service would run it: `syncctl run --demo` on
/// `data`, on free ports, with `home` as its HOME; waits for its control file.
pub fn running_engine(home: &std::path::Path, data: &std::path::Path) -> Reaped {
    let config = home.join("run.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[sandbox]\nlisten = \"127.0.0.1:0\"\nproducts = 5\nlatency_ms = 1\n",
    )
    .unwrap();
    let mut child = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_syncctl"))
            .args(["run", "--demo", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(data)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("xdg"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !data.join("control.json").exists() {
        assert!(
            std::time::Instant::now() < deadline && child.0.try_wait().unwrap().is_none(),
            "no control file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Prometheus' own linter reads `text` (an OpenMetrics exposition). The only complaint
/// allowed: promtool reads the Prometheus text format, where a counter's samples carry
/// the family's name; in OpenMetrics the family is named without `_total` and its
/// samples with it, which promtool reports as "NAME_total no help text" for a family
/// typed counter. Without promtool installed: a failure when `required`, else a loud
/// skip (CI installs it).
pub fn promtool_accepts(text: &str, required: bool) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if !required => {
            eprintln!("##### promtool not installed ({e}): the exposition is not linted #####");
            return;
        }
        Err(e) => panic!("promtool: {e} (install prometheus' promtool; .ci/run does)"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let other: Vec<&str> = said
        .lines()
        .filter(|l| {
            !l.strip_suffix(" no help text")
                .and_then(|n| n.strip_suffix("_total"))
                .is_some_and(|family| counters.contains(&family))
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(other.is_empty(), "promtool: {said}\n{text}");
    // Its exit status is 3 for those lint complaints; a parse error says more and fails
    // above.
    assert!(
        out.status.success() || !said.trim().is_empty(),
        "promtool failed silently: {text}"
    );
}

/// The binary run with `args` in a home of its own (`home`: its config and data dirs
/// under it), without the secrets a developer's environment may hold; waits for it.
pub fn syncctl(args: &[&str], home: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_syncctl"))
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("SYNCCTL_STRIPE_API_KEY")
        .env_remove("SYNCCTL_TOKEN")
        .output()
        .unwrap()
}
