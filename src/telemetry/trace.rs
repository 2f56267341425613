//! W3C Trace Context: each unit of work (a catalog job, an invoice send) runs in a trace
//! scope; every outbound request in it carries `traceparent: 00-<trace>-<span>-01` with
//! a new span id, and audit entries written in it record the trace id, so an entry in
//! the trail leads to the provider's logs of the same requests.

use std::sync::atomic::{AtomicU64, Ordering};

tokio::task_local! {
    static TRACE: [u8; 16];
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// 64 random-looking bits: time, a counter and the process id, mixed (splitmix64).
fn random_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = t
        ^ SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        ^ ((std::process::id() as u64) << 32);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A new trace id (never all zeros, which W3C forbids).
pub fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64().to_be_bytes());
    id[8..].copy_from_slice(&(random_u64() | 1).to_be_bytes());
    id
}

/// Runs `fut` as one trace.
pub async fn scope<F: std::future::Future>(fut: F) -> F::Output {
    TRACE.scope(new_trace_id(), fut).await
}

/// Runs `f` (synchronous) inside the trace `id`.
pub fn sync_scope<R>(id: [u8; 16], f: impl FnOnce() -> R) -> R {
    TRACE.sync_scope(id, f)
}

/// The current trace id in hex, when inside a scope.
pub fn current_id() -> Option<String> {
    TRACE.try_with(|id| hex::encode(id)).ok()
}

pub fn current_raw() -> Option<[u8; 16]> {
    TRACE.try_with(|id| *id).ok()
}

/// The `traceparent` header value for one outbound request (a new span id), when
/// inside a scope.
pub fn traceparent() -> Option<String> {
    let trace = current_id()?;
    let span = random_u64() | 1;
    Some(format!("00-{trace}-{span:016x}-01"))
}

/// Parses a `traceparent` header: (trace id, parent span id).
pub fn parse(header: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = header.trim().split('-').collect();
    let [version, trace, span, flags] = parts[..] else {
        return None;
    };
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    (version == "00"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0'))
    .then(|| (trace.to_owned(), span.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scope_gives_every_request_the_same_trace_and_a_new_span() {
        assert_eq!(traceparent(), None, "outside a scope");
        let (a, b, id) = scope(async {
            (
                traceparent().unwrap(),
                traceparent().unwrap(),
                current_id().unwrap(),
            )
        })
        .await;
        let (ta, sa) = parse(&a).expect("valid header");
        let (tb, sb) = parse(&b).expect("valid header");
        assert_eq!(ta, id);
        assert_eq!(ta, tb);
        assert_ne!(sa, sb);
        let other = scope(async { current_id().unwrap() }).await;
        assert_ne!(other, id, "each scope is its own trace");
    }

    #[test]
    fn parse_refuses_malformed_headers() {
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
