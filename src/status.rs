//! `syncctl status`: a running engine's health, queues and alerts without the console,
//! for scripts and quick looks. Reads `GET /health` (no token needed) and, with a
//! token, `GET /api/v1/alerts`. With `--company ID` that company's; an engine serving
//! several companies without one answers for all, and the report lists them.
//!
//! Exit codes: 0 healthy (ok), 1 degraded or down, 2 usage, 3 engine unreachable.

use std::time::Duration;

use serde_json::{Value, json};

pub const EXIT_UNHEALTHY: u8 = 1;
pub const EXIT_UNREACHABLE: u8 = 3;

/// What one look found.
pub struct Reading {
    pub health: Value,
    /// `/api/v1/alerts`, when a token was given.
    pub alerts: Option<Value>,
}

impl Reading {
    pub fn healthy(&self) -> bool {
        self.health["status"] == "ok"
    }

    pub fn json(&self) -> Value {
        let mut v = self.health.clone();
        if let Some(a) = &self.alerts {
            v["alerts"] = a.clone();
        }
        v
    }
}

pub async fn read(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    company: Option<&str>,
) -> Result<Reading, String> {
    let get = |path: &str| {
        let mut r = http
            .get(format!("{base}{path}"))
            .query(
                &company
                    .map(|c| ("company", c))
                    .into_iter()
                    .collect::<Vec<_>>(),
            )
            .timeout(Duration::from_secs(5));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let health = get("/health")
        .await
        .map_err(|e| format!("{base}: not reachable ({})", short(&e)))?;
    // /health answers 503 with a body when the store is unreadable: still a reading.
    let health: Value = health
        .json()
        .await
        .map_err(|e| format!("{base}/health: not a syncctl engine ({})", short(&e)))?;
    if let Some(c) = company
        && health["error"]["code"] == "unknown_company"
    {
        return Err(format!(
            "{base}: {}",
            health["error"]["message"].as_str().unwrap_or(c)
        ));
    }
    // Several companies: each one's alerts are read with --company.
    let several = health.get("companies").is_some();
    let alerts = match token {
        None => None,
        Some(_) if several => None,
        Some(_) => {
            let r = get("/api/v1/alerts")
                .await
                .map_err(|e| format!("{base}/api/v1/alerts: {}", short(&e)))?;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                return Err(format!(
                    "{base}/api/v1/alerts: {status}: {}",
                    body["error"]["message"].as_str().unwrap_or("")
                ));
            }
            Some(body)
        }
    };
    Ok(Reading { health, alerts })
}

fn short(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s = inner.to_string();
        src = inner.source();
    }
    s
}

fn n(v: &Value) -> String {
    match v.as_u64() {
        Some(x) => crate::protocol::text::group(x),
        None => v.to_string(),
    }
}

/// The text a person reads.
#[expect(
    clippy::too_many_lines,
    reason = "the status report, printed section by section"
)]
pub fn render(base: &str, r: &Reading) -> String {
    let h = &r.health;
    if let Some(companies) = h["companies"].as_object() {
        return render_companies(base, h, companies);
    }
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        if label.is_empty() {
            out.push_str(&text);
        } else {
            out.push_str(&format!("  {label:<11} {text}"));
        }
        out.push('\n');
    };
    line(
        "",
        format!(
            "syncctl {} ({}) — {} · health {}/100 {}",
            base,
            h["mode"].as_str().unwrap_or("?"),
            h["status"].as_str().unwrap_or("?").to_uppercase(),
            h["score"],
            h["level"].as_str().unwrap_or("?"),
        ),
    );
    let c = &h["catalog"];
    line(
        "catalog",
        format!(
            "{} · synced {} · queued {} · in flight {} · failed {} · rejected {}",
            if c["paused"] == true {
                "PAUSED"
            } else {
                "running"
            },
            n(&c["synced"]),
            n(&c["queued"]),
            n(&c["in_flight"]),
            n(&c["failed"]),
            n(&c["rejected"]),
        ),
    );
    let k = &h["compliance"];
    if k["enabled"] == true {
        let counts: Vec<String> = k["counts"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                    .map(|(s, v)| format!("{s} {}", n(v)))
                    .collect()
            })
            .unwrap_or_default();
        line(
            "compliance",
            format!(
                "{} · {} · DIAN {}",
                if k["paused"] == true {
                    "PAUSED"
                } else {
                    "running"
                },
                if counts.is_empty() {
                    "no invoices".into()
                } else {
                    counts.join(" · ")
                },
                k["contingency"].as_str().unwrap_or("?"),
            ),
        );
    }
    let checks: Vec<String> = h["checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let note = c["notes"][0]
                        .as_str()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default();
                    format!("{} {}{note}", c["name"].as_str().unwrap_or("?"), c["score"])
                })
                .collect()
        })
        .unwrap_or_default();
    if !checks.is_empty() {
        line("checks", checks.join(" · "));
    }
    line(
        "alerts",
        format!(
            "{} firing · {} anomalies open",
            h["alerts_firing"], h["anomalies_open"]
        ),
    );
    if let Some(a) = &r.alerts {
        for x in a["active"].as_array().into_iter().flatten() {
            line(
                "",
                format!(
                    "    {:<8} {:<8} {}  {}",
                    x["severity"].as_str().unwrap_or(""),
                    x["phase"].as_str().unwrap_or(""),
                    x["id"].as_str().unwrap_or(""),
                    x["summary"].as_str().unwrap_or("")
                ),
            );
        }
    }
    for (label, key) in [
        ("errors", "errors"),
        ("warnings", "warnings"),
        ("recommend", "recommendations"),
    ] {
        for (i, w) in h[key].as_array().into_iter().flatten().enumerate() {
            line(
                if i == 0 { label } else { " " },
                w.as_str().unwrap_or("").to_owned(),
            );
        }
    }
    out
}

/// Several companies: the worst status, then one line per company (its own report:
/// `syncctl status --company ID`).
fn render_companies(base: &str, h: &Value, companies: &serde_json::Map<String, Value>) -> String {
    let mut out = format!(
        "syncctl {base} — {} · health {}/100 · {} companies\n",
        h["status"].as_str().unwrap_or("?").to_uppercase(),
        h["score"],
        companies.len()
    );
    let width = companies
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(0);
    for (id, c) in companies {
        let cat = &c["catalog"];
        let detail = match c["errors"].as_array().and_then(|e| e.first()) {
            Some(e) if cat.is_null() => e.as_str().unwrap_or("").to_owned(),
            _ => format!(
                "catalog {} · synced {} · queued {} · failed {}",
                if cat["paused"] == true {
                    "PAUSED"
                } else {
                    "running"
                },
                n(&cat["synced"]),
                n(&cat["queued"]),
                n(&cat["failed"]),
            ),
        };
        out.push_str(&format!(
            "  {id:<width$}  {:<8} {:>3}/100  {}  — {}\n",
            c["status"].as_str().unwrap_or("?").to_uppercase(),
            c["score"],
            c["name"].as_str().unwrap_or(""),
            detail,
        ));
    }
    out.push_str("  (one company's report: syncctl status --company ID)\n");
    out
}

/// One NDJSON line for `--json --watch`, or the pretty document for `--json`.
pub fn json_text(r: &Reading, watch: bool) -> String {
    let v = r.json();
    if watch {
        v.to_string()
    } else {
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| json!({}).to_string())
    }
}
