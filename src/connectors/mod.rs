//! Plain clients of one API each: request/response types and error mapping. Resilience
//! (breakers, limits, retries) wraps them from outside, per downstream.

pub mod alegra;
pub mod quickbooks;
pub mod stripe;

use std::time::Duration;

/// The HTTP client every connector (and the benchmark's load generator) uses.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    install_crypto();
    Ok(reqwest::Client::builder()
        .user_agent(concat!("syncctl/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()?)
}

/// rustls needs a process-wide crypto provider before any client is built.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
