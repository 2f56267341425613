//! Injected faults, per simulated service: outage, error rate, latency distributions,
//! timeouts, connection resets, and quotas enforced the way the real APIs enforce them
//! (QuickBooks: 429 with the XML 3001 body above the in-flight cap or over the rate;
//! Stripe: 429 `rate_limit`; Alegra: 429 with `X-Rate-Limit-*` headers).
//!
//! QuickBooks has two shapes of quota: a second's worth back to back (10/s beside
//! 500/min) per request, and the minute's quota itself. A `POST …/batch` passes this
//! layer as one request, then [`Faults::admit_batch`] applies the batch throttle (40
//! batch requests a minute per company at Intuit's 500 requests a minute, scaled with
//! the configured rate) and counts each operation beyond the first toward the minute's
//! quota (not toward the per-second shape, or no batch of 30 could ever pass).

pub use crate::protocol::{Distribution, FaultPatch, FaultSettings};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Sandbox;
use crate::resilience::Rng;

pub use crate::protocol::FAULT_SERVICES as SERVICES;

/// A service's settings (one for every company) and its counters over all companies.
#[derive(Default)]
struct ServiceState {
    settings: Mutex<FaultSettings>,
    requests: AtomicU64,
    throttled: AtomicU64,
    errors_injected: AtomicU64,
}

/// One company's quota at one service (each company has its own, as each QuickBooks
/// realm, Stripe account and Alegra account does) and its counters.
#[derive(Default)]
struct Quota {
    gcra: Mutex<Option<Gcra>>,
    /// QuickBooks only: the minute's quota (a minute's worth back to back), charged by
    /// every request and by each operation of a batch.
    minute_gcra: Mutex<Option<Gcra>>,
    /// QuickBooks only: the batch-request throttle.
    batch_gcra: Mutex<Option<Gcra>>,
    /// Alegra-style fixed window: (window start, count).
    window: Mutex<Option<(Instant, u32)>>,
    in_flight: AtomicU32,
    requests: AtomicU64,
    throttled: AtomicU64,
    errors_injected: AtomicU64,
    /// Quota units admitted (a request; a batch's further operations), per second.
    meter: Mutex<RateMeter>,
}

/// Counts over the last 60 seconds (one slot a second) and the most seen in any such
/// window.
#[derive(Debug)]
struct RateMeter {
    slots: [u64; 60],
    /// The second (since the Unix epoch) of the newest slot.
    newest: u64,
    sum: u64,
    peak: u64,
}

impl Default for RateMeter {
    fn default() -> Self {
        Self {
            slots: [0; 60],
            newest: 0,
            sum: 0,
            peak: 0,
        }
    }
}

impl RateMeter {
    fn advance(&mut self, now: u64) {
        if now <= self.newest {
            return;
        }
        let gap = (now - self.newest).min(60);
        for s in 1..=gap {
            let slot = ((self.newest + s) % 60) as usize;
            self.sum -= self.slots[slot];
            self.slots[slot] = 0;
        }
        self.newest = now;
    }

    fn add(&mut self, now: u64, n: u64) {
        self.advance(now);
        self.slots[(self.newest % 60) as usize] += n;
        self.sum += n;
        self.peak = self.peak.max(self.sum);
    }

    fn rate(&mut self, now: u64) -> u64 {
        self.advance(now);
        self.sum
    }
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One company's figures at one service, for `/_sandbox/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaStats {
    /// Requests received (throttled ones too).
    pub requests: u64,
    pub throttled: u64,
    pub errors_injected: u64,
    /// Quota units admitted over the last 60 seconds: each request let through, and
    /// at QuickBooks each further operation of a batch (what the minute's quota is
    /// charged).
    pub rate_per_min: u64,
    /// The most `rate_per_min` has been.
    pub peak_rate_per_min: u64,
    /// The quota (0: none) and the in-flight cap, the same for every company.
    pub quota_per_min: u32,
    pub max_concurrent: u32,
}
/// A generic cell rate algorithm over `per_min` cells a minute with `burst` of them
/// back to back; a request may take several cells at once (a batch's operations).
struct Gcra {
    per_min: u32,
    period: Duration,
    burst: u32,
    /// Theoretical arrival time of the next cell.
    tat: Instant,
}

impl Gcra {
    fn new(per_min: u32, burst: u32) -> Self {
        Self {
            per_min,
            period: Duration::from_secs_f64(60.0 / f64::from(per_min.max(1))),
            burst: burst.max(1),
            tat: Instant::now(),
        }
    }

    /// Whether `cells` more fit now.
    fn fits(&self, now: Instant, cells: u32) -> bool {
        self.tat.max(now) + self.period * cells <= now + self.period * self.burst
    }

    fn take(&mut self, now: Instant, cells: u32) {
        self.tat = self.tat.max(now) + self.period * cells;
    }
}

/// The slot of `g` for `per_min` (rebuilt when the rate changed, empty at `now`: a
/// request measured at `now` must find a new one full) with `burst`.
fn gcra_for(g: &mut Option<Gcra>, per_min: u32, burst: u32, now: Instant) -> &mut Gcra {
    if g.as_ref().is_none_or(|g| g.per_min != per_min) {
        let mut fresh = Gcra::new(per_min, burst);
        fresh.tat = now;
        *g = Some(fresh);
    }
    g.as_mut().expect("just set")
}

/// QuickBooks' batch throttle for an ordinary quota of `per_min` requests a minute:
/// 40 batch requests a minute at Intuit's 500, scaled the same way (0: none).
pub fn batch_limit_per_min(per_min: u32) -> u32 {
    if per_min == 0 {
        0
    } else {
        (u64::from(per_min) * 40 / 500).max(1) as u32
    }
}

/// Operations at most in one QuickBooks batch request.
pub const QB_BATCH_MAX: usize = 30;

pub struct Faults {
    services: BTreeMap<&'static str, ServiceState>,
    /// Per company (0-based), per service.
    quotas: Vec<BTreeMap<&'static str, Quota>>,
    rng: Mutex<Rng>,
}

impl Default for Faults {
    fn default() -> Self {
        Self::for_companies(1)
    }
}

/// How long a "timeout" hangs: past QuickBooks' own 120 s limit, so clients give up first.
const HANG: Duration = Duration::from_secs(130);

impl Faults {
    pub fn new(initial: &BTreeMap<String, FaultSettings>) -> Result<Self, String> {
        Self::with_companies(initial, 1)
    }

    /// Faults for `companies` companies: the settings are shared, each company has
    /// its own quotas.
    pub fn with_companies(
        initial: &BTreeMap<String, FaultSettings>,
        companies: usize,
    ) -> Result<Self, String> {
        let f = Self::for_companies(companies);
        for (name, s) in initial {
            f.set(name, s.clone())?;
        }
        Ok(f)
    }

    fn for_companies(companies: usize) -> Self {
        Self {
            services: SERVICES
                .iter()
                .map(|s| (*s, ServiceState::default()))
                .collect(),
            quotas: (0..companies.max(1))
                .map(|_| SERVICES.iter().map(|s| (*s, Quota::default())).collect())
                .collect(),
            rng: Mutex::new(Rng::from_time()),
        }
    }

    fn service(&self, name: &str) -> Result<&ServiceState, String> {
        self.services
            .get(name)
            .ok_or_else(|| format!("unknown service {name:?} (one of {})", SERVICES.join(", ")))
    }

    /// Company `company`'s quota at `name` (company 1's for an unknown company).
    fn quota(&self, company: usize, name: &str) -> Result<&Quota, String> {
        let quotas = self.quotas.get(company).unwrap_or(&self.quotas[0]);
        quotas
            .get(name)
            .ok_or_else(|| format!("unknown service {name:?} (one of {})", SERVICES.join(", ")))
    }

    /// Company `company`'s figures at `name`.
    pub fn quota_stats(&self, company: usize, name: &str) -> QuotaStats {
        let Ok(q) = self.quota(company, name) else {
            return QuotaStats::default();
        };
        let settings = self.get(name).unwrap_or_default();
        let mut meter = q.meter.lock().unwrap_or_else(|p| p.into_inner());
        QuotaStats {
            requests: q.requests.load(Ordering::Relaxed),
            throttled: q.throttled.load(Ordering::Relaxed),
            errors_injected: q.errors_injected.load(Ordering::Relaxed),
            rate_per_min: meter.rate(epoch_secs()),
            peak_rate_per_min: meter.peak,
            quota_per_min: settings.rate_limit_per_min,
            max_concurrent: settings.max_concurrent,
        }
    }

    /// Counts quota units company `company` spent at `name`.
    fn spend(&self, q: &Quota, units: u64) {
        q.meter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(epoch_secs(), units);
    }

    pub fn get(&self, name: &str) -> Option<FaultSettings> {
        self.services
            .get(name)
            .map(|s| s.settings.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    pub fn set(&self, name: &str, settings: FaultSettings) -> Result<(), String> {
        settings.validate()?;
        let s = self.service(name)?;
        *s.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings;
        Ok(())
    }

    pub fn patch(&self, patch: &FaultPatch) -> Result<FaultSettings, String> {
        let s = self.service(&patch.service)?;
        let mut next = s.settings.lock().unwrap_or_else(|p| p.into_inner()).clone();
        patch.apply(&mut next);
        next.validate()?;
        self.set(&patch.service, next.clone())?;
        Ok(next)
    }

    pub fn all(&self) -> Value {
        Value::Object(
            self.services
                .iter()
                .map(|(k, s)| {
                    let v = serde_json::to_value(
                        &*s.settings.lock().unwrap_or_else(|p| p.into_inner()),
                    )
                    .unwrap_or(Value::Null);
                    ((*k).to_owned(), v)
                })
                .collect(),
        )
    }

    /// Per service: requests received, 429s sent, errors injected.
    /// Counts a request to a service not reached by path (DIAN, behind Alegra).
    pub fn count_request(&self, company: usize, name: &str) {
        if let (Ok(st), Ok(q)) = (self.service(name), self.quota(company, name)) {
            st.requests.fetch_add(1, Ordering::Relaxed);
            q.requests.fetch_add(1, Ordering::Relaxed);
            self.spend(q, 1);
        }
    }

    /// Counts a request answered with an injected error.
    pub fn count_injected(&self, company: usize, name: &str) {
        if let (Ok(st), Ok(q)) = (self.service(name), self.quota(company, name)) {
            st.requests.fetch_add(1, Ordering::Relaxed);
            st.errors_injected.fetch_add(1, Ordering::Relaxed);
            q.requests.fetch_add(1, Ordering::Relaxed);
            q.errors_injected.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counters(&self, name: &str) -> (u64, u64, u64) {
        self.services.get(name).map_or((0, 0, 0), |s| {
            (
                s.requests.load(Ordering::Relaxed),
                s.throttled.load(Ordering::Relaxed),
                s.errors_injected.load(Ordering::Relaxed),
            )
        })
    }

    fn unit(&self) -> f64 {
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).unit()
    }

    fn delay(&self, s: &FaultSettings) -> Duration {
        let base = s.latency_ms as f64;
        let j = s.latency_jitter_ms as f64;
        let ms = match s.latency_distribution {
            Distribution::Fixed => base,
            Distribution::Normal => {
                // Box–Muller.
                let (u1, u2) = (self.unit().max(1e-12), self.unit());
                base + j * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            }
            Distribution::LongTail => {
                let u = self.unit().max(1e-9);
                base + (j * (u.powf(-1.0 / 1.5) - 1.0)).min(j * 200.0)
            }
        };
        Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    }

    /// Whether a request over the rate arrives now.
    fn over_rate(&self, st: &Quota, name: &str, per_min: u32) -> bool {
        if per_min == 0 {
            return false;
        }
        if name == "alegra" {
            // Alegra counts requests in a fixed one-minute window.
            let mut w = st.window.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let (start, n) = match *w {
                Some((start, n)) if now.duration_since(start) < Duration::from_secs(60) => {
                    (start, n)
                }
                _ => (now, 0),
            };
            if n >= per_min {
                *w = Some((start, n));
                return true;
            }
            *w = Some((start, n + 1));
            return false;
        }
        let now = Instant::now();
        let mut g = st.gcra.lock().unwrap_or_else(|p| p.into_inner());
        // Up to a second's worth back to back (QuickBooks: 10/s beside 500/min).
        let second = gcra_for(&mut g, per_min, (per_min / 60).max(1), now);
        if name != "quickbooks" {
            let fits = second.fits(now, 1);
            if fits {
                second.take(now, 1);
            }
            return !fits;
        }
        // QuickBooks: and the minute's quota, which batches' operations spend too.
        let mut m = st.minute_gcra.lock().unwrap_or_else(|p| p.into_inner());
        let minute = gcra_for(&mut m, per_min, per_min, now);
        if !(second.fits(now, 1) && minute.fits(now, 1)) {
            return true;
        }
        second.take(now, 1);
        minute.take(now, 1);
        false
    }

    /// A QuickBooks batch of `ops` operations, already admitted as one request: refused
    /// with the XML 429 over the batch throttle or when its other operations do not fit
    /// in the minute's quota; otherwise they are counted toward it.
    pub fn admit_batch(&self, company: usize, ops: usize) -> Result<(), Response> {
        let (Ok(service), Ok(st)) = (
            self.service("quickbooks"),
            self.quota(company, "quickbooks"),
        ) else {
            return Ok(());
        };
        let per_min = service
            .settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rate_limit_per_min;
        let batches = batch_limit_per_min(per_min);
        let extra = u32::try_from(ops.saturating_sub(1)).unwrap_or(u32::MAX);
        if batches == 0 {
            self.spend(st, u64::from(extra));
            return Ok(());
        }
        let now = Instant::now();
        let mut b = st.batch_gcra.lock().unwrap_or_else(|p| p.into_inner());
        let batch = gcra_for(&mut b, batches, (batches / 60).max(2), now);
        let mut m = st.minute_gcra.lock().unwrap_or_else(|p| p.into_inner());
        let minute = gcra_for(&mut m, per_min, per_min, now);
        if !(batch.fits(now, 1) && minute.fits(now, extra)) {
            service.throttled.fetch_add(1, Ordering::Relaxed);
            st.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(throttle_response("quickbooks"));
        }
        batch.take(now, 1);
        minute.take(now, extra);
        drop((b, m));
        self.spend(st, u64::from(extra));
        Ok(())
    }

    fn alegra_window(&self, st: &Quota, per_min: u32) -> (u32, u64) {
        let w = st.window.lock().unwrap_or_else(|p| p.into_inner());
        match *w {
            Some((start, n)) => (
                per_min.saturating_sub(n),
                60u64.saturating_sub(start.elapsed().as_secs()),
            ),
            None => (per_min, 60),
        }
    }
}

/// Which simulated service a path belongs to.
pub fn service_of(path: &str) -> Option<&'static str> {
    if path.starts_with("/v1/") {
        Some("stripe")
    } else if path.starts_with("/v3/company") {
        Some("quickbooks")
    } else if path.starts_with("/api/v1/") {
        Some("alegra")
    } else {
        None
    }
}

fn throttle_response(service: &str) -> Response {
    match service {
        "quickbooks" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("content-type", "application/xml")],
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
                r#"<IntuitResponse xmlns="http://schema.intuit.com/finance/v3" time="2026-01-01T00:00:00.000-08:00">"#,
                r#"<Fault type="SERVICE"><Error code="3001"><Message>message=ThrottleExceeded; errorCode=003001; statusCode=429</Message>"#,
                r#"<Detail>The request limit was reached.</Detail></Error></Fault></IntuitResponse>"#
            ),
        )
            .into_response(),
        "stripe" => (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"error": {
                "type": "invalid_request_error", "code": "rate_limit",
                "message": "Too many requests hit the API too quickly."}})),
        )
            .into_response(),
        _ => (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"code": 429, "message": "Too Many Requests"})),
        )
            .into_response(),
    }
}

fn error_response(service: &str, status: StatusCode, what: &str) -> Response {
    match service {
        "stripe" => (
            status,
            axum::Json(json!({"error": {"type": "api_error", "message": what}})),
        )
            .into_response(),
        "quickbooks" if status == StatusCode::INTERNAL_SERVER_ERROR => (
            status,
            axum::Json(
                json!({"Fault": {"Error": [{"Message": "An application error has occurred",
                "Detail": what, "code": "10000"}], "type": "SystemFault"}, "time": "t"}),
            ),
        )
            .into_response(),
        "quickbooks" => (
            status,
            [("content-type", "text/html")],
            "<html><body>Service Unavailable</body></html>",
        )
            .into_response(),
        _ => (
            status,
            axum::Json(json!({"code": status.as_u16(), "message": what})),
        )
            .into_response(),
    }
}

struct InFlight<'a>(&'a AtomicU32);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The fault layer in front of every simulated API. The company a request is for (by
/// its realm, key or credentials; company 1 when none matches) spends its own quota.
pub async fn layer(State(sb): State<Arc<Sandbox>>, req: Request, next: Next) -> Response {
    let Some(name) = service_of(req.uri().path()) else {
        return next.run(req).await;
    };
    let faults = &sb.faults;
    let company = sb
        .company_of_request(name, req.uri().path(), req.headers())
        .unwrap_or(0);
    let (Ok(st), Ok(q)) = (faults.service(name), faults.quota(company, name)) else {
        return next.run(req).await;
    };
    st.requests.fetch_add(1, Ordering::Relaxed);
    q.requests.fetch_add(1, Ordering::Relaxed);
    let s = st
        .settings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let in_flight = q.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(&q.in_flight);
    let over_conc = s.max_concurrent > 0 && in_flight > s.max_concurrent;
    if over_conc || faults.over_rate(q, name, s.rate_limit_per_min) {
        st.throttled.fetch_add(1, Ordering::Relaxed);
        q.throttled.fetch_add(1, Ordering::Relaxed);
        let mut r = throttle_response(name);
        if name == "alegra" {
            alegra_headers(&mut r, faults, q, s.rate_limit_per_min);
        }
        return r;
    }
    faults.spend(q, 1);
    let injected = || {
        st.errors_injected.fetch_add(1, Ordering::Relaxed);
        q.errors_injected.fetch_add(1, Ordering::Relaxed);
    };
    if s.outage {
        injected();
        return error_response(name, StatusCode::SERVICE_UNAVAILABLE, "simulated outage");
    }
    let delay = faults.delay(&s);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if s.timeout_rate > 0.0 && faults.unit() < s.timeout_rate {
        injected();
        tokio::time::sleep(HANG).await;
        return error_response(name, StatusCode::GATEWAY_TIMEOUT, "simulated timeout");
    }
    if s.error_rate > 0.0 && faults.unit() < s.error_rate {
        injected();
        return error_response(name, StatusCode::INTERNAL_SERVER_ERROR, "simulated error");
    }
    if s.reset_rate > 0.0 && faults.unit() < s.reset_rate {
        injected();
        // Headers go out, then the body stream fails: the connection is cut mid-response.
        let stream = futures_util::stream::iter([
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"partial\":")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated connection reset",
            )),
        ]);
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let mut r = next.run(req).await;
    if name == "alegra" {
        alegra_headers(&mut r, faults, q, s.rate_limit_per_min);
    }
    r
}

fn alegra_headers(r: &mut Response, faults: &Faults, st: &Quota, per_min: u32) {
    let limit = if per_min == 0 { 150 } else { per_min };
    let (remaining, reset) = faults.alegra_window(st, limit);
    let h = r.headers_mut();
    for (k, v) in [
        ("x-rate-limit-limit", limit as u64),
        ("x-rate-limit-remaining", remaining as u64),
        ("x-rate-limit-reset", reset),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
            h.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_meter_counts_the_last_minute_and_keeps_the_peak() {
        let mut m = RateMeter::default();
        let t = 1_000_000;
        m.add(t, 30);
        m.add(t + 30, 20);
        assert_eq!(m.rate(t + 30), 50);
        // At t + 60 the first second's 30 has left the window.
        assert_eq!(m.rate(t + 59), 50);
        assert_eq!(m.rate(t + 60), 20);
        m.add(t + 61, 5);
        assert_eq!((m.rate(t + 61), m.peak), (25, 50));
        // Long idle: nothing left, the peak stays.
        assert_eq!(m.rate(t + 10_000), 0);
        m.add(t + 10_000, 1);
        assert_eq!((m.rate(t + 10_000), m.peak), (1, 50));
    }

    #[test]
    fn each_company_has_its_own_quota() {
        let f = Faults::with_companies(&BTreeMap::new(), 2).unwrap();
        let (a, b) = (
            f.quota(0, "quickbooks").unwrap(),
            f.quota(1, "quickbooks").unwrap(),
        );
        assert_eq!(
            (0..20)
                .filter(|_| !f.over_rate(a, "quickbooks", 600))
                .count(),
            10
        );
        assert_eq!(
            (0..20)
                .filter(|_| !f.over_rate(b, "quickbooks", 600))
                .count(),
            10
        );
    }

    #[test]
    fn a_patch_keeps_fields_left_out() {
        let f = Faults::default();
        f.patch(&FaultPatch {
            service: "quickbooks".into(),
            latency_ms: Some(50),
            max_concurrent: Some(10),
            ..FaultPatch::default()
        })
        .unwrap();
        let s = f
            .patch(&FaultPatch {
                service: "quickbooks".into(),
                outage: Some(true),
                ..FaultPatch::default()
            })
            .unwrap();
        assert_eq!((s.latency_ms, s.max_concurrent, s.outage), (50, 10, true));
    }

    #[test]
    fn bad_rates_and_unknown_services_are_refused() {
        let f = Faults::default();
        let e = f
            .patch(&FaultPatch {
                service: "quickbooks".into(),
                error_rate: Some(1.5),
                ..FaultPatch::default()
            })
            .unwrap_err();
        assert!(e.contains("error_rate"), "{e}");
        assert_eq!(f.get("quickbooks").unwrap().error_rate, 0.0);
        assert!(
            f.patch(&FaultPatch {
                service: "paypal".into(),
                ..FaultPatch::default()
            })
            .unwrap_err()
            .contains("unknown service")
        );
    }

    #[test]
    fn latency_distributions_centre_on_their_settings() {
        let f = Faults::default();
        let mut s = FaultSettings {
            latency_ms: 50,
            latency_jitter_ms: 10,
            latency_distribution: Distribution::Normal,
            ..FaultSettings::default()
        };
        let mean = |f: &Faults, s: &FaultSettings| {
            (0..4000).map(|_| f.delay(s).as_secs_f64()).sum::<f64>() / 4000.0 * 1000.0
        };
        let m = mean(&f, &s);
        assert!((48.0..52.0).contains(&m), "normal mean {m}");
        s.latency_distribution = Distribution::LongTail;
        let mut d: Vec<_> = (0..4000).map(|_| f.delay(&s)).collect();
        d.sort();
        assert!(d[0] >= Duration::from_millis(50));
        assert!(
            d[3960] > d[2000] * 2,
            "a long tail: p99 {:?} vs p50 {:?}",
            d[3960],
            d[2000]
        );
        s.latency_distribution = Distribution::Fixed;
        assert_eq!(f.delay(&s), Duration::from_millis(50));
    }

    #[test]
    fn quickbooks_rate_allows_a_seconds_burst_then_throttles() {
        let f = Faults::default();
        let st = f.quota(0, "quickbooks").unwrap();
        let granted = (0..50)
            .filter(|_| !f.over_rate(st, "quickbooks", 600))
            .count();
        assert_eq!(granted, 10, "600/min: a burst of 10");
    }

    #[test]
    fn a_quickbooks_batch_has_its_own_throttle() {
        let f = Faults::default();
        f.patch(&FaultPatch {
            service: "quickbooks".into(),
            rate_limit_per_min: Some(600),
            ..FaultPatch::default()
        })
        .unwrap();
        let st = f.quota(0, "quickbooks").unwrap();
        assert!(!f.over_rate(st, "quickbooks", 600));
        // 600/min → 48 batches a minute, two back to back at most.
        assert_eq!(batch_limit_per_min(500), 40);
        assert_eq!(batch_limit_per_min(6000), 480);
        assert_eq!(batch_limit_per_min(0), 0);
        assert!(f.admit_batch(0, 30).is_ok());
        assert!(f.admit_batch(0, 1).is_ok());
        assert!(f.admit_batch(0, 1).is_err(), "the batch throttle");
        // The batch's operations do not count toward the per-second shape.
        assert!(!f.over_rate(st, "quickbooks", 600));
    }

    #[test]
    fn the_minute_quota_takes_a_minutes_worth_of_operations_then_paces_them() {
        // 600 a minute: 20 batches of 30 fit at once, the 21st not, and it fits again
        // once 30 cells (3 s) have passed.
        let mut minute = Gcra::new(600, 600);
        let t0 = minute.tat;
        for _ in 0..20 {
            assert!(minute.fits(t0, 30));
            minute.take(t0, 30);
        }
        assert!(!minute.fits(t0, 30));
        assert!(!minute.fits(t0, 1));
        assert!(!minute.fits(t0 + Duration::from_millis(2900), 30));
        assert!(minute.fits(t0 + Duration::from_secs(3), 30));
        // The per-second shape: a second's worth back to back.
        let mut second = Gcra::new(600, 10);
        second.tat = t0;
        let granted = (0..50)
            .filter(|_| {
                let ok = second.fits(t0, 1);
                if ok {
                    second.take(t0, 1);
                }
                ok
            })
            .count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn alegra_counts_a_fixed_minute_window() {
        let f = Faults::default();
        let st = f.quota(0, "alegra").unwrap();
        let granted = (0..200).filter(|_| !f.over_rate(st, "alegra", 150)).count();
        assert_eq!(granted, 150);
        assert_eq!(f.alegra_window(st, 150).0, 0);
    }
}
