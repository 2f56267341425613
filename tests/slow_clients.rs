//! Slow and stalled clients against the engine's real server on loopback: 1,100
//! connections that never finish their request do not take `/health` and Stripe's
//! webhooks down (the connection cap closes the stalled ones to make room), stalled
//! headers and bodies are closed on their timeouts, every slot busy sheds with 503,
//! and the binary raises its soft open-file limit at start.
//!
//! This process lowers its own soft open-file limit (as a default 1,024 would): the
//! attack's client sockets and the engine's accepted ones share it, so an engine that
//! kept one descriptor per stalled client would run out.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use syncctl::config::{Config, Role, Secret, TokenConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPS: &str = "ops-token-0123456789abcdef";
/// This process's soft open-file limit: room for the attack's 1,100 client sockets
/// and an engine that keeps to its cap, not for one that keeps 1,100 more.
const FILES: u64 = 1800;

fn lower_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    assert!(
        now.maximum.is_none_or(|m| m >= FILES),
        "this test needs a hard open-file limit of at least {FILES}: {now:?}"
    );
    if now.current != Some(FILES) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(FILES),
                maximum: now.maximum,
            },
        )
        .unwrap();
    }
}

fn config(sb: &syncctl::sandbox::SandboxServer, tune: impl FnOnce(&mut Config)) -> Config {
    let mut c = common::config_for(sb);
    c.server.tokens = vec![TokenConfig {
        name: "ops".into(),
        token: Secret::new(OPS),
        role: Role::Operator,
        rate_limit_per_min: 0,
    }];
    tune(&mut c);
    c
}

/// A signed Stripe event the engine acknowledges.
async fn signed_webhook(http: &reqwest::Client, url: &str, secret: &str, id: &str) -> u16 {
    let body = serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": "customer.created",
        "created": time::OffsetDateTime::now_utc().unix_timestamp(),
        "data": {"object": {"id": "cus_1", "object": "customer"}},
    }))
    .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let r = http
        .post(format!("{url}/webhooks/stripe"))
        .header(
            "Stripe-Signature",
            syncctl::sandbox::sign_webhook(secret, now, &body),
        )
        .header("Content-Type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("webhook {id}: {e}"));
    r.status().as_u16()
}

/// Opens a connection and sends a request it never finishes: half its headers, or
/// its headers and a sliver of a large body.
async fn stalled(addr: std::net::SocketAddr, n: usize) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let partial = if n.is_multiple_of(2) {
        "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl".to_owned()
    } else {
        "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n{\"id\":".to_owned()
    };
    s.write_all(partial.as_bytes()).await.ok()?;
    Some(s)
}

/// Point 2b: 1,100 stalled connections against a cap of 64; `/health` and a signed
/// webhook still answer at once, and the engine never holds more than its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_webhooks_answer_while_1100_clients_stall() {
    lower_open_files();
    let sb = common::sandbox(5, 23).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(
        config(&sb, |c| {
            c.server.max_connections = 64;
            // Longer than the test: the cap, not a timeout, makes the room.
            c.server.header_timeout_secs = 300;
            c.server.body_timeout_secs = 300;
            c.server.idle_timeout_secs = 300;
        }),
        dir.path(),
    )
    .await;
    let url = format!("http://{}", engine.server_addr);
    let secret = sb.sandbox.webhook_secret();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // (An engine keeping one descriptor per stalled client leaves this process too few
    // to open them all: counted, asserted after `/health`.)
    let mut attack = Vec::new();
    for n in 0..1100 {
        if let Some(s) = stalled(engine.server_addr, n).await {
            attack.push(s);
        }
    }
    let opened = attack.len();

    for round in 0..5 {
        let r = http
            .get(format!("{url}/health"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("/health during the attack: {e}"));
        assert_eq!(r.status(), 200, "round {round}");
        let h: Value = r.json().await.unwrap();
        let c = &h["connections"];
        assert_eq!(c["max"], 64, "{c}");
        // Connections closed to make room end a moment later (their task runs):
        // never near the attack's 1,100, and within the cap once they have.
        assert!(c["open"].as_u64().unwrap() < 300, "near the cap: {c}");
        assert!(
            c["evicted"].as_u64().unwrap() >= 1000,
            "stalled ones made room: {c}"
        );
        assert_eq!(opened, 1100, "the attack's connections all opened");
        assert_eq!(
            signed_webhook(&http, &url, &secret, &format!("evt_during_attack_{round}")).await,
            200,
            "a signed webhook during the attack"
        );
        common::eventually(10, "open connections within the cap", || async {
            let r = http.get(format!("{url}/health")).send().await.ok()?;
            let h: Value = r.json().await.ok()?;
            (h["connections"]["open"].as_u64()? <= 65).then_some(())
        })
        .await;
        // The attack goes on: more stalled clients between the rounds.
        for n in 0..50 {
            if let Some(s) = stalled(engine.server_addr, n).await {
                attack.push(s);
            }
        }
    }
    drop(attack);
    engine.shutdown().await;
}

/// Reads until the server closes the connection (EOF or reset); what it sent first.
async fn until_closed(s: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the stalled connection open");
    String::from_utf8_lossy(&got).into_owned()
}

/// Point 2b: stalled headers are closed on the header timeout, a stalled body gets 408
/// on the body timeout, an idle keep-alive connection is closed; WebSockets take only
/// their share of the slots (more are answered 503 with Retry-After) so `/health` is
/// served whatever a client opens, and one is admitted again once another closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_time_out_and_websockets_take_only_their_share() {
    lower_open_files();
    let sb = common::sandbox(5, 29).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(
        config(&sb, |c| {
            c.server.max_connections = 4;
            c.server.header_timeout_secs = 1;
            c.server.body_timeout_secs = 1;
            c.server.idle_timeout_secs = 1;
        }),
        dir.path(),
    )
    .await;
    let addr = engine.server_addr;
    let url = format!("http://{addr}");

    let mut head = stalled(addr, 0).await.unwrap();
    let mut body = stalled(addr, 1).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // Each is closed by the server within a few seconds of its 1 s timeout.
    let said = until_closed(&mut head, Duration::from_secs(10)).await;
    assert!(!said.contains("200 OK"), "{said}");
    let said = until_closed(&mut body, Duration::from_secs(10)).await;
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(said.contains("server.body_timeout_secs"), "{said}");
    let said = until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(
        said.starts_with("HTTP/1.1 200"),
        "answered, then closed idle: {said}"
    );
    let h = common::get_json(&format!("{url}/health")).await;
    assert!(h["connections"]["timed_out"].as_u64().unwrap() >= 3, "{h}");

    // WebSockets hold their slot while open: they may take only their share (half of
    // the four), so however many an attacker opens, /health keeps a slot.
    let open_ws = || async {
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws/notifications?token={OPS}"))
            .await
    };
    let mut sockets = Vec::new();
    for _ in 0..2 {
        sockets.push(open_ws().await.unwrap().0);
    }
    for _ in 0..3 {
        match open_ws().await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 503);
                assert_eq!(r.headers()["retry-after"], "5");
                let body: Value = serde_json::from_slice(r.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "too_many_websockets", "{body}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("server.max_websockets"),
                    "{body}"
                );
            }
            other => panic!("a WebSocket above its share: {:?}", other.map(|_| ())),
        }
    }
    let r = reqwest::get(format!("{url}/health")).await.unwrap();
    assert_eq!(r.status(), 200, "/health keeps its slot");
    // One closes: another may open.
    let mut ws = sockets.pop().unwrap();
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    let again = common::eventually(10, "a WebSocket admitted again", || async {
        open_ws().await.ok().map(|(ws, _)| ws)
    })
    .await;
    sockets.push(again);
    drop(sockets);
    engine.shutdown().await;
}

/// Point 2b: the binary raises its soft open-file limit to the hard one at start
/// (here it inherits this process's lowered one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_raises_its_open_file_limit() {
    lower_open_files();
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    let home = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_syncctl"))
        .args(["sandbox", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--products", "3"])
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_DATA_HOME", home.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let ready = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .any(|l| l.contains("syncctl sandbox on"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "the sandbox did not start");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    let want = hard.unwrap_or(1 << 20).min(1 << 20);
    assert_eq!(soft, want, "soft limit raised to the hard one: {line}");
    assert!(soft > FILES, "{line}");
}
