//! Issue 20, cases 3 and 4: problems that need an operator are said — in `/health`, the
//! snapshot, an alert and the console — and never turned into a storm of requests.
//! Through real interfaces: the engine against the sandbox over loopback, `/health` over
//! HTTP, the binary's CLI, and the console drawn on ratatui's TestBackend.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use syncctl::connectors::quickbooks::{QbError, QuickBooksClient, TokenKeeper};
use syncctl::resilience::clock::SharedClock;

fn token_requests(sandbox: &syncctl::sandbox::SandboxServer) -> u64 {
    sandbox.sandbox.stats()["quickbooks"]["token_requests"]
        .as_u64()
        .unwrap()
}

/// Supersedes the refresh token the engine holds (as a re-authorisation elsewhere
/// would); returns the new one.
async fn revoke(base: &str) -> String {
    let v = common::post_json(base, "/_sandbox/quickbooks/revoke", json!({})).await;
    v["refresh_token"].as_str().unwrap().to_owned()
}

/// Ten simulated minutes of calls, one every 100 ms, with a superseded refresh token:
/// the token endpoint is asked at 0, 15, 45, 105, 225 and 465 s — not 6 000 times — and
/// every other call fails at once with the typed error, without any network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_is_retried_with_a_backoff_not_a_storm() {
    let sandbox = common::sandbox(1, 1).await;
    let base = sandbox.base_url();
    let dir = tempfile::tempdir().unwrap();
    let store = syncctl::store::Store::open(dir.path()).unwrap();
    let config = common::config_for(&sandbox);
    let q = &config.quickbooks;
    let http = syncctl::connectors::http_client().unwrap();
    let (clock, manual) = SharedClock::manual();
    let keeper = |refresh: &syncctl::config::Secret| {
        Arc::new(
            TokenKeeper::new(
                http.clone(),
                q.token_url.as_deref().unwrap(),
                q.client_id.as_deref().unwrap(),
                q.client_secret.clone().unwrap(),
                refresh,
                store.clone(),
            )
            .unwrap()
            .with_clock(clock.clone()),
        )
    };
    let client = |tokens: Arc<TokenKeeper>| {
        QuickBooksClient::new(
            http.clone(),
            &base,
            q.realm_id.as_deref().unwrap(),
            75,
            Duration::from_secs(10),
            tokens,
        )
    };
    let new_token = revoke(&base).await;
    let tokens = keeper(q.refresh_token.as_ref().unwrap());
    let qb = client(tokens.clone());

    let mut per_minute = vec![0u64; 10];
    let mut blocked = 0;
    for tick in 0..6000u64 {
        let before = token_requests(&sandbox);
        match qb.find_items("Name", "anything").await {
            Err(QbError::AuthBlocked { reason, retry_in_ms }) => {
                assert!(reason.contains("invalid_grant"), "{reason}");
                assert!(retry_in_ms <= 300_000);
                blocked += 1;
            }
            other => panic!("expected a typed auth error, got {other:?}"),
        }
        per_minute[(tick / 600) as usize] += token_requests(&sandbox) - before;
        manual.advance(Duration::from_millis(100));
    }
    assert_eq!(blocked, 6000);
    // Before: one request per call (6 000 here; ~1 750 in 35 s against the engine).
    assert_eq!(per_minute, [3, 1, 0, 1, 0, 0, 0, 1, 0, 0], "token requests per minute");
    assert_eq!(tokens.refresh_attempts(), 6);
    let problem = tokens.problem().expect("the problem is reported");
    assert_eq!(problem.refusals, 6);
    assert!(problem.fix.contains("quickbooks.refresh_token"), "{problem:?}");

    // The operator re-authorises and sets the new token: a new keeper (a restart) on
    // the same store takes it (the stored state is keyed by the configured token).
    let tokens = keeper(&syncctl::config::Secret::new(new_token));
    client(tokens.clone())
        .find_items("Name", "anything")
        .await
        .unwrap();
    assert!(tokens.problem().is_none());
    assert_eq!(tokens.refreshes(), 1);
    sandbox.shutdown().await;
}
