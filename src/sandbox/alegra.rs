//! Simulated Alegra with DIAN behind it: Basic auth, `POST /api/v1/invoices` (with
//! `stamp.generateStamp`), `GET /api/v1/invoices/{id}`, `GET /api/v1/invoices?number=`,
//! `POST /api/v1/invoices/stamp` (≤ 10 ids). Documents get real CUFEs; `legalStatus`
//! moves from WAITING_RESPONSE to ACCEPTED / ACCEPTED_WITH_OBSERVATIONS / REJECTED (DIAN
//! rule codes); a re-sent accepted number is answered with DIAN's rule 90. Provider
//! errors EPR503 (DIAN timeout or outage: the `dian` service of `/_sandbox/faults`),
//! EPR500 (DIAN `error_rate`), AEP2011 (already being processed) and AEP6009 (numbering
//! rejected). Knobs at `/_sandbox/alegra` inject rejections, observations, slow DIAN
//! answers and "timed out but actually accepted" sends.
//!
//! Alegra has no idempotency key: a second POST for the same Stripe invoice is a second
//! document, counted in `/_sandbox/stats` as `alegra.duplicate_documents`; a Stripe
//! invoice DIAN accepted under more than one document, as `alegra.stamped_twice` (per
//! company under `companies.<id>.alegra` too).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Entry, Sandbox, WorldTx, tax_cents};
use crate::compliance::cufe::{CufeFields, cents};

pub const ALEGRA_EMAIL: &str = "sandbox@syncctl.test";
pub const ALEGRA_TOKEN: &str = "alegra-sandbox-token-7f3a";
/// The issuer the sandbox signs for, and its numbering range's technical key.
pub const ISSUER_NIT: &str = "900373115";
pub const TECHNICAL_KEY: &str = "fc8eac422eba16e22ffd8c6f94b3f40a6e38162c";
/// DIAN's test environment.
pub const ENVIRONMENT: &str = "2";

pub const ACCEPTED: &str = "STAMPED_AND_ACCEPTED";
pub const ACCEPTED_WITH_OBSERVATIONS: &str = "STAMPED_AND_ACCEPTED_WITH_OBSERVATIONS";
pub const REJECTED: &str = "STAMPED_AND_REJECTED";
pub const WAITING: &str = "STAMPED_AND_WAITING_RESPONSE";

/// An invoice document held by Alegra (amounts in cents).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Document {
    pub id: u64,
    pub prefix: String,
    pub number: String,
    /// Free text the issuer attaches; syncctl writes `stripe:<invoice id>` here.
    pub anotation: Option<String>,
    pub date: String,
    pub time: String,
    pub client_id: String,
    pub client_name: String,
    pub subtotal: i64,
    pub iva: i64,
    pub inc: i64,
    pub ica: i64,
    pub items: Value,
    pub stamp: Option<Stamp>,
    pub created: i64,
}

impl Document {
    pub fn full_number(&self) -> String {
        format!("{}{}", self.prefix, self.number)
    }
    pub fn total(&self) -> i64 {
        self.subtotal + self.iva + self.inc + self.ica
    }
    fn accepted(&self) -> bool {
        self.stamp.as_ref().is_some_and(|s| {
            s.legal_status == ACCEPTED || s.legal_status == ACCEPTED_WITH_OBSERVATIONS
        })
    }
    pub fn json(&self) -> Value {
        let stamp = self.stamp.as_ref().map(|s| {
            json!({
                "legalStatus": s.legal_status, "cufe": s.cufe, "date": s.date,
                "barCodeContent": format!("NumFac={}FecFac={}ValTot={}CUFE={}", self.full_number(), self.date, cents(self.total()), s.cufe),
                "warnings": s.warnings, "errors": s.errors,
            })
        });
        json!({
            "id": self.id.to_string(), "date": self.date, "dueDate": self.date,
            "datetime": format!("{} {}", self.date, &self.time[..8]),
            "numberTemplate": {"prefix": self.prefix, "number": self.number, "fullNumber": self.full_number()},
            "client": {"identification": self.client_id, "name": self.client_name},
            "items": self.items, "anotation": self.anotation, "status": "open",
            "subtotal": cents(self.subtotal), "total": cents(self.total()),
            "taxes": {"iva": cents(self.iva), "inc": cents(self.inc), "ica": cents(self.ica)},
            "stamp": stamp,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stamp {
    pub legal_status: String,
    pub cufe: String,
    pub date: String,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    /// While WAITING_RESPONSE: when DIAN answers (ms), and with what.
    pub resolve_at_ms: i64,
    pub outcome: String,
    pub outcome_warnings: Vec<String>,
    pub outcome_errors: Vec<String>,
}

/// Run-time behaviour of the simulated DIAN (not persisted, like faults).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Knobs {
    /// Share of documents DIAN rejects with a rule error (0.0–1.0).
    pub reject_rate: f64,
    /// Share accepted with observations (0.0–1.0).
    pub observations_rate: f64,
    /// How long DIAN takes to answer; until then `STAMPED_AND_WAITING_RESPONSE`.
    pub waiting_ms: u64,
    /// The next N sends are accepted by DIAN but their answer is lost: after
    /// `lost_response_ms` the client gets a 504 with EPR503 (if it is still waiting).
    pub lost_responses: u32,
    pub lost_response_ms: u64,
    /// The next N creates are refused with AEP6009 (numbering not authorised).
    pub numbering_rejections: u32,
}

impl Knobs {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("reject_rate", self.reject_rate),
            ("observations_rate", self.observations_rate),
        ] {
            if !(0.0..=1.0).contains(&v) || v.is_nan() {
                return Err(format!("{name} must be between 0.0 and 1.0, got {v}"));
            }
        }
        Ok(())
    }
}

const REJECTIONS: &[&str] = &[
    "Regla: FAJ43b, Rechazo: Nombre o razón social del adquiriente no coincide con el registrado en el RUT",
    "Regla: FAU14, Rechazo: Valor total de la factura no coincide con la suma de los valores de las líneas",
    "Regla: FAD09e, Rechazo: Fecha de emisión posterior a la fecha de validación",
];
const OBSERVATIONS: &[&str] = &[
    "Regla: FAK24, Notificación: No está informado el correo electrónico del adquiriente",
    "Regla: FAJ44b, Notificación: El NIT del adquiriente no está registrado en el RUT",
];
pub const RULE_90: &str = "Regla: 90, Rechazo: Documento procesado anteriormente.";

pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/api/v1/invoices", post(create).get(list))
        .route("/api/v1/invoices/stamp", post(stamp_batch))
        .route("/api/v1/invoices/{id}", get(read).put(update))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "code": code, "message": message })),
    )
        .into_response()
}

/// Checks the Basic credentials and counts the request: the company whose Alegra
/// account they open (unknown ones are counted at company 1, and refused).
fn authorize(s: &Sandbox, headers: &HeaderMap) -> Result<usize, Response> {
    let company = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| s.company_by_alegra_basic(v.trim()));
    {
        let mut tx = s.company(company.unwrap_or(0)).lock();
        tx.world.counters.alegra_requests += 1;
    }
    company.ok_or_else(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Las credenciales de autenticación no son válidas",
        )
    })
}

/// The sandbox's local time in Colombia (UTC−5): (date, time with offset).
fn colombia_now(now_secs: i64) -> (String, String) {
    let t = time::OffsetDateTime::from_unix_timestamp(now_secs)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(time::macros::offset!(-5));
    (
        format!("{:04}-{:02}-{:02}", t.year(), t.month() as u8, t.day()),
        format!("{:02}:{:02}:{:02}-05:00", t.hour(), t.minute(), t.second()),
    )
}

/// Cents from an Alegra amount (a JSON number or decimal string), truncated.
fn amount_cents(v: &Value) -> Option<i64> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    let fixed = crate::compliance::cufe::amount("price", &text).ok()?;
    fixed.replace('.', "").parse().ok()
}

struct NewDocument {
    prefix: String,
    number: String,
    anotation: Option<String>,
    date: String,
    client_id: String,
    client_name: String,
    subtotal: i64,
    iva: i64,
    inc: i64,
    ica: i64,
    items: Value,
    generate_stamp: bool,
}

fn parse_create(body: &[u8]) -> Result<NewDocument, Response> {
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "400", m);
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(&format!("JSON inválido: {e}")))?;
    let client_id = v["client"]["identification"]
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| bad("El cliente es obligatorio (client.identification)"))?;
    let date = v["date"]
        .as_str()
        .filter(|d| {
            time::Date::parse(d, time::macros::format_description!("[year]-[month]-[day]")).is_ok()
        })
        .ok_or_else(|| bad("La fecha es obligatoria (date, YYYY-MM-DD)"))?;
    let prefix = v["numberTemplate"]["prefix"].as_str().unwrap_or("");
    let number = v["numberTemplate"]["number"]
        .as_str()
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| bad("La numeración es obligatoria (numberTemplate.number)"))?;
    let items = v["items"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("La factura debe tener al menos un ítem"))?;
    let (mut subtotal, mut iva, mut inc, mut ica) = (0, 0, 0, 0);
    for (i, item) in items.iter().enumerate() {
        let price = amount_cents(&item["price"])
            .ok_or_else(|| bad(&format!("items[{i}].price no es un valor válido")))?;
        let quantity = item["quantity"]
            .as_i64()
            .filter(|q| *q > 0)
            .ok_or_else(|| bad(&format!("items[{i}].quantity debe ser un entero positivo")))?;
        let line = price * quantity;
        subtotal += line;
        for tax in item["tax"].as_array().into_iter().flatten() {
            let pct = tax["percentage"].as_f64().unwrap_or(0.0) as u32;
            let t = tax_cents(line, pct);
            match tax["name"].as_str().unwrap_or("") {
                "IVA" => iva += t,
                "INC" => inc += t,
                "ICA" => ica += t,
                other => {
                    return Err(bad(&format!(
                        "items[{i}].tax: impuesto desconocido {other:?}"
                    )));
                }
            }
        }
    }
    Ok(NewDocument {
        prefix: prefix.to_owned(),
        number: number.to_owned(),
        anotation: v["anotation"].as_str().map(str::to_owned),
        date: date.to_owned(),
        client_id: client_id.trim().to_owned(),
        client_name: v["client"]["name"].as_str().unwrap_or("").to_owned(),
        subtotal,
        iva,
        inc,
        ica,
        items: Value::Array(items.clone()),
        generate_stamp: v["stamp"]["generateStamp"].as_bool().unwrap_or(false),
    })
}

/// What happened when a document went to DIAN.
enum Transmit {
    Done,
    /// DIAN did not answer or failed: (status, code, message). The document stays
    /// unstamped.
    Failed(StatusCode, &'static str, &'static str),
}

impl Sandbox {
    fn knobs(&self) -> std::sync::MutexGuard<'_, Knobs> {
        self.alegra_knobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn alegra_knobs(&self) -> Knobs {
        self.knobs().clone()
    }

    /// Applies a partial update of the knobs (fields left out keep their value).
    pub fn patch_alegra_knobs(&self, patch: &Value) -> Result<Knobs, String> {
        let mut merged = serde_json::to_value(self.alegra_knobs()).map_err(|e| e.to_string())?;
        let Some(fields) = patch.as_object() else {
            return Err("expected a JSON object".into());
        };
        for (k, v) in fields {
            merged[k] = v.clone();
        }
        let knobs: Knobs = serde_json::from_value(merged).map_err(|e| e.to_string())?;
        knobs.validate()?;
        *self.knobs() = knobs.clone();
        Ok(knobs)
    }

    /// DIAN's availability, from the `dian` faults (`tx`: the sending company's world).
    fn dian_down(&self, tx: &mut WorldTx<'_>) -> Option<Transmit> {
        let company = tx.company().index;
        let f = self.faults.get("dian").unwrap_or_default();
        if f.outage {
            self.faults.count_injected(company, "dian");
            return Some(Transmit::Failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "EPR503",
                "EPR503: La DIAN no respondió en el tiempo esperado. Intenta nuevamente.",
            ));
        }
        if f.error_rate > 0.0 && tx.world.rng.chance(f.error_rate) {
            self.faults.count_injected(company, "dian");
            return Some(Transmit::Failed(
                StatusCode::BAD_GATEWAY,
                "EPR500",
                "EPR500: Error de comunicación con la DIAN.",
            ));
        }
        None
    }

    /// Sends document `idx` to DIAN (unless DIAN is down) and records the stamp.
    fn transmit(&self, tx: &mut WorldTx<'_>, idx: usize) -> Transmit {
        if let Some(failed) = self.dian_down(tx) {
            return failed;
        }
        self.faults.count_request(tx.company().index, "dian");
        let knobs = self.alegra_knobs();
        let w = &mut tx.world;
        w.counters.alegra_stamped += 1;
        let now = w.now();
        let doc = &w.alegra[idx];
        let full = doc.full_number();
        let already = w
            .alegra
            .iter()
            .any(|d| d.id != doc.id && d.full_number() == full && d.accepted());
        let (outcome, warnings, errors) = if already {
            (REJECTED, vec![], vec![RULE_90.to_owned()])
        } else if w.rng.chance(knobs.reject_rate) && knobs.reject_rate > 0.0 {
            (REJECTED, vec![], vec![(*w.rng.pick(REJECTIONS)).to_owned()])
        } else if knobs.observations_rate > 0.0 && w.rng.chance(knobs.observations_rate) {
            (
                ACCEPTED_WITH_OBSERVATIONS,
                vec![(*w.rng.pick(OBSERVATIONS)).to_owned()],
                vec![],
            )
        } else {
            (ACCEPTED, vec![], vec![])
        };
        let doc = &w.alegra[idx];
        let fields = CufeFields {
            number: doc.full_number(),
            date: doc.date.clone(),
            time: doc.time.clone(),
            subtotal: cents(doc.subtotal),
            iva: cents(doc.iva),
            inc: cents(doc.inc),
            ica: cents(doc.ica),
            total: cents(doc.total()),
            issuer_nit: ISSUER_NIT.into(),
            buyer_id: doc.client_id.clone(),
            technical_key: TECHNICAL_KEY.into(),
            environment: ENVIRONMENT.into(),
        };
        let cufe = fields.cufe().unwrap_or_default();
        let (date, time) = colombia_now(now);
        let waiting = knobs.waiting_ms > 0;
        let stamp = Stamp {
            legal_status: if waiting { WAITING } else { outcome }.to_owned(),
            cufe,
            date: format!("{date} {}", &time[..8]),
            warnings: if waiting { vec![] } else { warnings.clone() },
            errors: if waiting { vec![] } else { errors.clone() },
            resolve_at_ms: now * 1000 + knobs.waiting_ms as i64,
            outcome: outcome.to_owned(),
            outcome_warnings: warnings,
            outcome_errors: errors,
        };
        w.alegra[idx].stamp = Some(stamp);
        let doc = w.alegra[idx].clone();
        tx.record(Entry::Alegra(Box::new(doc)));
        Transmit::Done
    }

    /// DIAN's answer arrives for documents whose wait is over.
    fn resolve_waiting(&self, tx: &mut WorldTx<'_>, idx: usize) {
        let now_ms = tx.world.now() * 1000 + (time::OffsetDateTime::now_utc().millisecond() as i64);
        let doc = &mut tx.world.alegra[idx];
        let Some(s) = doc.stamp.as_mut() else { return };
        if s.legal_status == WAITING && now_ms >= s.resolve_at_ms {
            s.legal_status = s.outcome.clone();
            s.warnings = s.outcome_warnings.clone();
            s.errors = s.outcome_errors.clone();
            let doc = doc.clone();
            tx.record(Entry::Alegra(Box::new(doc)));
        }
    }

    /// Takes one lost response, if any are armed: returns its delay.
    fn take_lost_response(&self) -> Option<u64> {
        let mut k = self.knobs();
        if k.lost_responses > 0 {
            k.lost_responses -= 1;
            Some(k.lost_response_ms)
        } else {
            None
        }
    }
}

impl super::World {
    pub fn alegra_stats(&self) -> Value {
        let mut seen = std::collections::HashSet::new();
        let duplicates = self
            .alegra
            .iter()
            .filter_map(|d| d.anotation.as_deref())
            .filter(|a| !seen.insert(*a))
            .count();
        let count = |status: &str| {
            self.alegra
                .iter()
                .filter(|d| d.stamp.as_ref().is_some_and(|s| s.legal_status == status))
                .count()
        };
        // Stripe invoices (by their documents' annotation) DIAN accepted more than once:
        // an invoice issued twice, whatever the engines did.
        let mut accepted_of: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::new();
        for d in self.alegra.iter().filter(|d| d.accepted()) {
            if let Some(a) = d.anotation.as_deref() {
                *accepted_of.entry(a).or_default() += 1;
            }
        }
        let stamped_twice = accepted_of.values().filter(|&&n| n > 1).count();
        json!({
            "invoices_total": self.alegra.len(),
            "stamped": self.counters.alegra_stamped,
            "duplicate_documents": duplicates,
            "stamped_twice": stamped_twice,
            "accepted": count(ACCEPTED) + count(ACCEPTED_WITH_OBSERVATIONS),
            "rejected": count(REJECTED),
            "waiting": count(WAITING),
            "unstamped": self.alegra.iter().filter(|d| d.stamp.is_none()).count(),
            "handled": self.counters.alegra_requests,
        })
    }
}

/// Where document `id` (Alegra's ids are 1, 2, …) sits in the world.
fn doc_index(w: &super::World, id: &str) -> Option<usize> {
    id.parse::<usize>()
        .ok()
        .filter(|i| (1..=w.alegra.len()).contains(i))
        .map(|i| i - 1)
}

async fn lost(delay_ms: u64) -> Response {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    error(
        StatusCode::GATEWAY_TIMEOUT,
        "EPR503",
        "EPR503: La DIAN no respondió en el tiempo esperado. Intenta nuevamente.",
    )
}

async fn create(State(s): State<Arc<Sandbox>>, headers: HeaderMap, body: Bytes) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let new = match parse_create(&body) {
        Ok(n) => n,
        Err(r) => return r,
    };
    {
        let mut k = s.knobs();
        if k.numbering_rejections > 0 {
            k.numbering_rejections -= 1;
            return error(
                StatusCode::BAD_REQUEST,
                "AEP6009",
                "AEP6009: La numeración no está autorizada por la DIAN para este prefijo.",
            );
        }
    }
    let (result, doc) = {
        let mut tx = s.company(c).lock();
        let now = tx.world.now();
        let (_, time) = colombia_now(now);
        let id = tx.world.alegra.len() as u64 + 1;
        let doc = Document {
            id,
            prefix: new.prefix,
            number: new.number,
            anotation: new.anotation,
            date: new.date,
            time,
            client_id: new.client_id,
            client_name: new.client_name,
            subtotal: new.subtotal,
            iva: new.iva,
            inc: new.inc,
            ica: new.ica,
            items: new.items,
            stamp: None,
            created: now,
        };
        tx.world.alegra.push(doc.clone());
        tx.record(Entry::Alegra(Box::new(doc)));
        let idx = id as usize - 1;
        let result = if new.generate_stamp {
            s.transmit(&mut tx, idx)
        } else {
            Transmit::Done
        };
        let doc = tx.world.alegra[idx].json();
        tx.commit();
        (result, doc)
    };
    match result {
        Transmit::Failed(status, code, message) => error(status, code, message),
        Transmit::Done => match s.take_lost_response() {
            Some(delay) => lost(delay).await,
            None => (StatusCode::CREATED, axum::Json(doc)).into_response(),
        },
    }
}

async fn read(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut tx = s.company(c).lock();
    let Some(idx) = doc_index(&tx.world, &id) else {
        drop(tx);
        return error(StatusCode::NOT_FOUND, "404", "La factura no existe");
    };
    s.resolve_waiting(&mut tx, idx);
    let doc = tx.world.alegra[idx].json();
    tx.commit();
    axum::Json(doc).into_response()
}

/// `PUT /invoices/{id}`: edits a document DIAN has not stamped (here: its date).
async fn update(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let date = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v["date"].as_str() {
            Some(d)
                if time::Date::parse(
                    d,
                    time::macros::format_description!("[year]-[month]-[day]"),
                )
                .is_ok() =>
            {
                d.to_owned()
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "400",
                    "date debe tener el formato AAAA-MM-DD",
                );
            }
        },
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "400",
                &format!("JSON inválido: {e}"),
            );
        }
    };
    let mut tx = s.company(c).lock();
    let Some(idx) = doc_index(&tx.world, &id) else {
        drop(tx);
        return error(StatusCode::NOT_FOUND, "404", "La factura no existe");
    };
    if tx.world.alegra[idx].stamp.is_some() {
        drop(tx);
        return error(
            StatusCode::BAD_REQUEST,
            "400",
            "La factura ya fue emitida electrónicamente y no se puede editar",
        );
    }
    tx.world.alegra[idx].date = date;
    let doc = tx.world.alegra[idx].clone();
    let json = doc.json();
    tx.record(Entry::Alegra(Box::new(doc)));
    tx.commit();
    axum::Json(json).into_response()
}

async fn list(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (mut start, mut limit, mut number, mut anotation) = (0usize, 30usize, None, None);
    let mut newest_first = false;
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = urlencoding::decode(v)
            .map(|c| c.into_owned())
            .unwrap_or_default();
        match k {
            "start" => start = v.parse().unwrap_or(0),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=30).contains(&n) => limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "400",
                        "limit debe estar entre 1 y 30",
                    );
                }
            },
            "number" => number = Some(v),
            "anotation" => anotation = Some(v),
            // Documents are kept in creation (id) order; `order_field` other than id is
            // not simulated.
            "order_direction" => newest_first = v.eq_ignore_ascii_case("DESC"),
            _ => {}
        }
    }
    let mut tx = s.company(c).lock();
    let all: Box<dyn Iterator<Item = usize>> = if newest_first {
        Box::new((0..tx.world.alegra.len()).rev())
    } else {
        Box::new(0..tx.world.alegra.len())
    };
    let idx: Vec<usize> = all
        .filter(|&i| {
            let d = &tx.world.alegra[i];
            number.as_ref().is_none_or(|n| &d.full_number() == n)
                && anotation
                    .as_ref()
                    .is_none_or(|a| d.anotation.as_ref() == Some(a))
        })
        .skip(start)
        .take(limit)
        .collect();
    let mut out = Vec::with_capacity(idx.len());
    for i in idx {
        s.resolve_waiting(&mut tx, i);
        out.push(tx.world.alegra[i].json());
    }
    tx.commit();
    axum::Json(Value::Array(out)).into_response()
}

async fn stamp_batch(State(s): State<Arc<Sandbox>>, headers: HeaderMap, body: Bytes) -> Response {
    let c = match authorize(&s, &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ids: Vec<String> = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v["ids"].as_array() {
            Some(a) if !a.is_empty() && a.len() <= 10 => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect(),
            Some(a) if a.len() > 10 => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "400",
                    "Máximo 10 facturas por lote",
                );
            }
            _ => return error(StatusCode::BAD_REQUEST, "400", "ids es obligatorio"),
        },
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "400",
                &format!("JSON inválido: {e}"),
            );
        }
    };
    let mut out = Vec::with_capacity(ids.len());
    let mut failed = None;
    {
        let mut tx = s.company(c).lock();
        for id in &ids {
            let Some(idx) = doc_index(&tx.world, id) else {
                out.push(
                    json!({"id": id, "error": {"code": "404", "message": "La factura no existe"}}),
                );
                continue;
            };
            s.resolve_waiting(&mut tx, idx);
            let status = tx.world.alegra[idx]
                .stamp
                .as_ref()
                .map(|st| st.legal_status.clone());
            match status.as_deref() {
                Some(WAITING) => {
                    out.push(json!({"id": id, "error": {"code": "AEP2011",
                        "message": "AEP2011: El documento ya está siendo procesado por la DIAN."}}));
                    continue;
                }
                Some(ACCEPTED | ACCEPTED_WITH_OBSERVATIONS) => {}
                _ => {
                    if let Transmit::Failed(status, code, message) = s.transmit(&mut tx, idx) {
                        failed = Some((status, code, message));
                        break;
                    }
                }
            }
            out.push(tx.world.alegra[idx].json());
        }
        tx.commit();
    }
    if let Some((status, code, message)) = failed {
        return error(status, code, message);
    }
    match s.take_lost_response() {
        Some(delay) => lost(delay).await,
        None => axum::Json(Value::Array(out)).into_response(),
    }
}
