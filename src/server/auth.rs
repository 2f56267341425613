//! Bearer tokens, roles and per-token rate limits for `/api` and the WebSocket feeds.
//!
//! - No token → 401; an unknown token → 401 (the same answer: no oracle).
//! - A `viewer` may read (GET); anything else needs an `operator` → 403.
//! - Each token has its own window of `rate_limit_per_min` requests per minute. Every
//!   answer to an authenticated request carries `X-RateLimit-Limit`,
//!   `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until the window
//!   resets); past the limit, 429 with `Retry-After`.
//! - Tokens are compared in constant time and never logged or echoed.
//! - Guessing is slow: each wrong token is answered after [`FAILURE_DELAY`], and an
//!   address that sent [`MAX_FAILURES`] wrong tokens in a minute gets 429 for every
//!   token, right or wrong, until its window ends (no oracle while locked out).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::{Role, TokenConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub limit: u32,
    /// The CLI on this machine, with the token of the data dir's control file: it names
    /// the person acting itself (see [`super::local`]).
    pub local: bool,
}

/// The local caller's name and limit.
pub const LOCAL: &str = "local";
const LOCAL_LIMIT_PER_MIN: u32 = 600;

/// Where a caller stands against its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401
    Unauthenticated(&'static str),
    /// 401, and counted against the caller's address: a token that is no one's.
    UnknownToken,
    /// 429: this address sent too many wrong tokens; seconds until it may try again.
    TooManyFailures(u64),
    /// 429
    RateLimited(Quota),
}

pub struct Auth {
    tokens: Vec<TokenConfig>,
    /// The control file's token, while the engine serves (see [`super::local`]).
    local: Option<crate::config::Secret>,
    /// Per token name: (window start, requests in it).
    windows: Mutex<HashMap<String, (i64, u32)>>,
    /// Per client address: (window start, wrong tokens in it).
    failures: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

const WINDOW_MS: i64 = 60_000;
/// Wrong tokens an address may send in a minute before it is locked out for the rest
/// of that minute.
pub const MAX_FAILURES: u32 = 10;
/// How long a wrong token waits for its 401.
pub const FAILURE_DELAY: std::time::Duration = std::time::Duration::from_millis(250);
/// Addresses tracked at most (a flood from many addresses cannot grow the map forever).
const MAX_TRACKED: usize = 10_000;

fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn new(tokens: Vec<TokenConfig>) -> Self {
        Self {
            tokens,
            local: None,
            windows: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Also accepts the control file's token, as the local operator.
    pub fn with_local(mut self, token: crate::config::Secret) -> Self {
        self.local = Some(token);
        self
    }

    /// `Err(TooManyFailures)` while `ip` is locked out for sending wrong tokens.
    pub fn check_lockout(&self, ip: IpAddr, now_ms: i64) -> Result<(), Denied> {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match f.get(&ip) {
            Some(&(start, n)) if n >= MAX_FAILURES && now_ms - start < WINDOW_MS => {
                Err(Denied::TooManyFailures(
                    ((start + WINDOW_MS - now_ms).max(0) as u64).div_ceil(1000),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Counts one wrong token from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now_ms: i64) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        Self::count_failure(&mut f, ip, now_ms);
    }

    /// Judges `token` from `ip` in one step under the failures lock: refused unjudged
    /// while `ip` is locked out, else identified, and a wrong token counted before the
    /// next request from anywhere is judged — so concurrent guesses cannot slip past
    /// the lockout between its check and their count. The local CLI's token is good
    /// from loopback only (`loopback`), and a wrong token anywhere else.
    pub fn judge(
        &self,
        ip: IpAddr,
        loopback: bool,
        token: Option<&str>,
        now_ms: i64,
    ) -> Result<Caller, Denied> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&(start, n)) = f.get(&ip)
            && n >= MAX_FAILURES
            && now_ms - start < WINDOW_MS
        {
            return Err(Denied::TooManyFailures(
                ((start + WINDOW_MS - now_ms).max(0) as u64).div_ceil(1000),
            ));
        }
        let judged = self.identify(token).and_then(|c| {
            if c.local && !loopback {
                Err(Denied::UnknownToken)
            } else {
                Ok(c)
            }
        });
        if matches!(judged, Err(Denied::UnknownToken)) {
            Self::count_failure(&mut f, ip, now_ms);
        }
        judged
    }

    fn count_failure(f: &mut HashMap<IpAddr, (i64, u32)>, ip: IpAddr, now_ms: i64) {
        if f.len() >= MAX_TRACKED && !f.contains_key(&ip) {
            f.retain(|_, (start, _)| now_ms - *start < WINDOW_MS);
            if f.len() >= MAX_TRACKED {
                // Still full of live windows: forget the oldest half rather than grow.
                let mut starts: Vec<i64> = f.values().map(|(s, _)| *s).collect();
                starts.sort_unstable();
                let cut = starts[starts.len() / 2];
                f.retain(|_, (start, _)| *start > cut);
            }
        }
        let entry = f.entry(ip).or_insert((now_ms, 0));
        if now_ms - entry.0 >= WINDOW_MS {
            *entry = (now_ms, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    pub fn configured(&self) -> bool {
        !self.tokens.is_empty() || self.local.is_some()
    }

    /// Who holds `token` (checked against every entry, in constant time each).
    pub fn identify(&self, token: Option<&str>) -> Result<Caller, Denied> {
        const OFF: &str = "the control API is off: no [[server.tokens]] in the config";
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Denied::Unauthenticated(if self.tokens.is_empty() {
                OFF
            } else {
                "missing bearer token (Authorization: Bearer …, or ?token= on WebSockets)"
            }));
        };
        if let Some(local) = &self.local
            && same(local.expose().as_bytes(), token.as_bytes())
        {
            return Ok(Caller {
                name: LOCAL.into(),
                role: Role::Operator,
                limit: LOCAL_LIMIT_PER_MIN,
                local: true,
            });
        }
        if self.tokens.is_empty() {
            // Only the local CLI's token is known: to anyone else the API is off.
            return Err(Denied::Unauthenticated(OFF));
        }
        let mut found = None;
        for t in &self.tokens {
            if same(t.token.expose().as_bytes(), token.as_bytes()) {
                found = Some(t);
            }
        }
        let t = found.ok_or(Denied::UnknownToken)?;
        Ok(Caller {
            name: t.name.clone(),
            role: t.role,
            limit: t.rate_limit_per_min,
            local: false,
        })
    }

    /// Counts one request of `caller` at `now_ms`; its quota after it, or 429.
    pub fn admit(&self, caller: &Caller, now_ms: i64) -> Result<Option<Quota>, Denied> {
        if caller.limit == 0 {
            return Ok(None);
        }
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let entry = w.entry(caller.name.clone()).or_insert((now_ms, 0));
        if now_ms - entry.0 >= WINDOW_MS {
            *entry = (now_ms, 0);
        }
        let reset_secs = ((entry.0 + WINDOW_MS - now_ms).max(0) as u64).div_ceil(1000);
        if entry.1 >= caller.limit {
            return Err(Denied::RateLimited(Quota {
                limit: caller.limit,
                remaining: 0,
                reset_secs,
            }));
        }
        entry.1 += 1;
        Ok(Some(Quota {
            limit: caller.limit,
            remaining: caller.limit - entry.1,
            reset_secs,
        }))
    }
}

/// The token of a request: `Authorization: Bearer …`, else (when allowed) `?token=`.
pub fn bearer(
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
    allow_query: bool,
) -> Option<String> {
    if let Some(h) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(rest.trim().to_owned());
        }
    }
    if !allow_query {
        return None;
    }
    // Only where a browser cannot send a header: the WebSocket handshake.
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| {
            urlencoding::decode(v)
                .map(|s| s.into_owned())
                .unwrap_or_default()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn auth() -> Auth {
        Auth::new(vec![
            TokenConfig {
                name: "ops".into(),
                token: Secret::new("operator-token-0123456789"),
                role: Role::Operator,
                rate_limit_per_min: 3,
            },
            TokenConfig {
                name: "dash".into(),
                token: Secret::new("viewer-token-0123456789"),
                role: Role::Viewer,
                rate_limit_per_min: 0,
            },
        ])
    }

    #[test]
    fn tokens_identify_their_holder() {
        let a = auth();
        assert_eq!(
            a.identify(Some("operator-token-0123456789")).unwrap().role,
            Role::Operator
        );
        assert_eq!(
            a.identify(Some("viewer-token-0123456789")).unwrap().name,
            "dash"
        );
        assert!(matches!(a.identify(None), Err(Denied::Unauthenticated(_))));
        assert!(matches!(
            a.identify(Some("operator-token-012345678")),
            Err(Denied::UnknownToken)
        ));
    }

    #[test]
    fn an_address_sending_wrong_tokens_is_locked_out_for_the_rest_of_its_minute() {
        let a = auth();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(a.check_lockout(ip, 1_000), Ok(()));
            a.record_failure(ip, 1_000);
        }
        assert_eq!(
            a.check_lockout(ip, 31_000),
            Err(Denied::TooManyFailures(30))
        );
        assert_eq!(a.check_lockout(other, 31_000), Ok(()), "per address");
        assert_eq!(a.check_lockout(ip, 61_000), Ok(()), "a new minute");
    }

    /// Guesses racing from one address are judged at most `MAX_FAILURES` times in a
    /// minute: the lockout's check and a wrong token's count are one step (CI once saw
    /// 11 of 3,000 concurrent guesses judged when they were two).
    #[test]
    fn concurrent_guesses_are_judged_at_most_max_failures_times() {
        let a = std::sync::Arc::new(auth());
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let start = std::sync::Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (a, start) = (a.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    (0..50)
                        .filter(|i| {
                            let guess = format!("guess-{t:02}-{i:04}-0123456789");
                            matches!(
                                a.judge(ip, false, Some(&guess), 1_000),
                                Err(Denied::UnknownToken)
                            )
                        })
                        .count()
                })
            })
            .collect();
        let judged: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(judged, MAX_FAILURES as usize);
        // Locked out: the right token is not judged either.
        assert!(matches!(
            a.judge(ip, false, Some("operator-token-0123456789"), 2_000),
            Err(Denied::TooManyFailures(_))
        ));
    }

    #[test]
    fn each_token_has_its_own_window() {
        let a = auth();
        let ops = a.identify(Some("operator-token-0123456789")).unwrap();
        let q: Vec<u32> = (0..3)
            .map(|_| a.admit(&ops, 1_000).unwrap().unwrap().remaining)
            .collect();
        assert_eq!(q, [2, 1, 0]);
        match a.admit(&ops, 31_000) {
            Err(Denied::RateLimited(q)) => assert_eq!((q.remaining, q.reset_secs), (0, 30)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            a.admit(&ops, 61_000).unwrap().unwrap().remaining,
            2,
            "a new window"
        );
        let dash = a.identify(Some("viewer-token-0123456789")).unwrap();
        assert_eq!(a.admit(&dash, 1_000).unwrap(), None, "0 = no limit");
    }

    #[test]
    fn bearer_from_header_or_query() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(
            bearer(&h, Some("a=1&token=abc%20d"), true).as_deref(),
            Some("abc d")
        );
        assert_eq!(bearer(&h, Some("token=abc"), false), None);
        h.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(bearer(&h, Some("token=abc"), true).as_deref(), Some("xyz"));
    }

    #[test]
    fn the_local_token_is_the_local_operator_even_with_no_configured_token() {
        let auth = Auth::new(vec![]).with_local(crate::config::Secret::new("local-secret-123"));
        let c = auth.identify(Some("local-secret-123")).unwrap();
        assert!(c.local && c.role == Role::Operator && c.name == LOCAL);
        assert!(matches!(
            auth.identify(Some("guess")),
            Err(Denied::Unauthenticated(m)) if m.contains("off")
        ));
        let off = Auth::new(vec![]);
        assert!(matches!(
            off.identify(Some("local-secret-123")),
            Err(Denied::Unauthenticated(m)) if m.contains("off")
        ));
    }
}
