//! Simulated QuickBooks Online v3 Items and Intuit OAuth 2.
//!
//! Faithful quirks: SyncToken optimistic locking (5010), case-insensitive unique names
//! reserved by inactive Items too (6240), `requestid` replay of the first answer, the
//! query subset `select * from Item where Field = '…'` with `\'` escapes and an absent
//! `Item` key on no match, Faults in the body, the lowercase 401 fault once an access
//! token expires, and rotating refresh tokens (`invalid_grant` for a superseded one).
//! Bulk: `Name IN (…)` queries, STARTPOSITION/MAXRESULTS pages of ≤ 1,000, batches of
//! ≤ 30 operations answered one by one (with their own throttle, see `faults`), and
//! change data capture over the last 30 days.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ACCESS_TOKEN_TTL_SECS, Company, Entry, Item, QB_CLIENT_ID, QB_CLIENT_SECRET, Sandbox, World,
};

pub fn routes() -> Router<Arc<Sandbox>> {
    Router::new()
        .route("/v3/company/{realm}/item", post(write_item))
        .route("/v3/company/{realm}/item/{id}", get(read_item))
        .route("/v3/company/{realm}/query", get(query))
        .route("/v3/company/{realm}/batch", post(batch))
        .route("/v3/company/{realm}/cdc", get(cdc))
        .route("/oauth2/v1/tokens/bearer", post(token))
}

fn timestamp(w: &World) -> String {
    time::OffsetDateTime::from_unix_timestamp(w.now())
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn item_json(i: &Item) -> Value {
    let mut v = json!({
        "Id": i.id.to_string(), "SyncToken": i.sync_token.to_string(), "Name": i.name,
        "FullyQualifiedName": i.name, "Active": i.active, "Type": i.item_type,
        "domain": "QBO", "sparse": false,
        "MetaData": { "CreateTime": i.created, "LastUpdatedTime": i.updated },
    });
    if let Some(p) = i.unit_price {
        v["UnitPrice"] = json!(p);
    }
    if let Some(s) = &i.sku {
        v["Sku"] = json!(s);
    }
    if let Some(d) = &i.description {
        v["Description"] = json!(d);
    }
    if let Some(a) = &i.income_account {
        v["IncomeAccountRef"] = json!({ "value": a, "name": "Sales of Product Income" });
    }
    v
}

fn fault(
    status: StatusCode,
    code: &str,
    message: &str,
    detail: &str,
    element: Option<&str>,
    time: &str,
) -> (StatusCode, Value) {
    let kind = if status == StatusCode::UNAUTHORIZED {
        "AUTHENTICATION"
    } else {
        "ValidationFault"
    };
    let mut error = json!({ "Message": message, "Detail": detail, "code": code });
    if let Some(e) = element {
        error["element"] = json!(e);
    }
    (
        status,
        json!({ "Fault": { "Error": [error], "type": kind }, "time": time }),
    )
}

/// The lowercase variant QuickBooks sends with a 401.
fn auth_fault() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({
            "warnings": null, "intuitObject": null,
            "fault": { "error": [{ "message": "message=AuthenticationFailed; errorCode=003200; statusCode=401",
                                   "detail": "Token expired", "code": "3200", "element": null }],
                       "type": "AUTHENTICATION" },
            "report": null, "queryResponse": [], "batchItemResponse": [], "attachableResponse": [],
            "syncErrorResponse": null, "requestId": null, "time": 0, "status": null, "cdcresponse": []
        })),
    )
        .into_response()
}

/// Counts the request, checks realm and bearer token: the company of the realm. A
/// token is good only for the realm it was issued for (another realm's is a 401, as at
/// Intuit); an unknown realm is counted at company 1 and refused.
fn authorize(s: &Sandbox, headers: &HeaderMap, realm: &str) -> Result<usize, Response> {
    let company = s.company_by_realm(realm);
    let mut tx = s.company(company.unwrap_or(0)).lock();
    tx.world.counters.qb_requests += 1;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let now = tx.world.now();
    let valid = token
        .and_then(|t| tx.world.access_tokens.get(t))
        .is_some_and(|&exp| now < exp);
    if !valid {
        tx.world.counters.qb_auth_failures += 1;
        return Err(auth_fault());
    }
    let Some(company) = company else {
        let t = timestamp(&tx.world);
        let (st, body) = fault(
            StatusCode::FORBIDDEN,
            "3100",
            "ApplicationAuthorizationFailed",
            "The realm is not connected to this app",
            None,
            &t,
        );
        return Err((st, axum::Json(body)).into_response());
    };
    Ok(company)
}

#[derive(Deserialize)]
struct WriteParams {
    requestid: Option<String>,
}

async fn write_item(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(realm): Path<String>,
    Query(params): Query<WriteParams>,
    body: axum::body::Bytes,
) -> Response {
    let c = match authorize(&s, &headers, &realm) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut tx = s.company(c).lock();
    if let Some(rid) = &params.requestid {
        if rid.len() > 50 {
            let t = timestamp(&tx.world);
            let (st, b) = fault(
                StatusCode::BAD_REQUEST,
                "2050",
                "String length exceeds limit",
                "requestid is longer than 50 characters",
                Some("requestid"),
                &t,
            );
            return (st, axum::Json(b)).into_response();
        }
        if let Some((status, body)) = tx.world.request_ids.get(rid) {
            tx.world.counters.qb_replays += 1;
            let meta = tx.world.meta();
            tx.record(meta);
            tx.commit();
            return (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                axum::Json(body),
            )
                .into_response();
        }
    }
    let (status, answer) = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => apply_write(&mut tx.world, &v),
        Err(e) => {
            let t = timestamp(&tx.world);
            fault(
                StatusCode::BAD_REQUEST,
                "2010",
                "Request has invalid or unsupported property",
                &format!("Unparseable JSON: {e}"),
                None,
                &t,
            )
        }
    };
    if status.is_success()
        && let Some(id) = answer["Item"]["Id"]
            .as_str()
            .and_then(|i| i.parse::<usize>().ok())
    {
        let item = tx.world.items[id - 1].clone();
        tx.record(Entry::Item(item));
    }
    if let Some(rid) = params.requestid {
        tx.world
            .request_ids
            .insert(rid.clone(), status.as_u16(), answer.clone());
        tx.record(Entry::Request(rid, status.as_u16(), answer.clone()));
    }
    let meta = tx.world.meta();
    tx.record(meta);
    tx.commit();
    (status, axum::Json(answer)).into_response()
}

fn invalid_name(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("Name is required and cannot be blank")
    } else if name.chars().count() > 100 {
        Some(
            "String length is either shorter or longer than supported by specification. Min:1 Max:100",
        )
    } else if name.contains(':') {
        Some("Name cannot contain a colon (:)")
    } else if name.chars().any(char::is_control) {
        Some("Name cannot contain tab, newline or other control characters")
    } else {
        None
    }
}

/// Creates or updates an Item; returns the HTTP status and body to send.
#[expect(
    clippy::too_many_lines,
    reason = "one simulated endpoint's rules in the order the real service applies them"
)]
fn apply_write(w: &mut World, v: &Value) -> (StatusCode, Value) {
    let t = timestamp(w);
    let existing = match v.get("Id").and_then(Value::as_str) {
        Some(id) => match id
            .parse::<usize>()
            .ok()
            .filter(|&i| i >= 1 && i <= w.items.len())
        {
            Some(i) => Some(i - 1),
            None => {
                return fault(
                    StatusCode::BAD_REQUEST,
                    "610",
                    "Object Not Found",
                    &format!(
                        "Something you're trying to use has been made inactive. Check the fields with accounts, customers, items, vendors or employees. Id={id}"
                    ),
                    None,
                    &t,
                );
            }
        },
        None => None,
    };
    let name = match v.get("Name").and_then(Value::as_str) {
        Some(n) => n.to_owned(),
        None => {
            return fault(
                StatusCode::BAD_REQUEST,
                "2020",
                "Required param missing, need to supply the required value for the API",
                "Required parameter Name is missing in the request",
                Some("Name"),
                &t,
            );
        }
    };
    if let Some(why) = invalid_name(&name) {
        return fault(
            StatusCode::BAD_REQUEST,
            "2170",
            "Invalid String Data",
            why,
            Some("Name"),
            &t,
        );
    }
    let unit_price = match v.get("UnitPrice") {
        None | Some(Value::Null) => None,
        Some(p) => match p.as_f64().filter(|x| *x >= 0.0 && x.is_finite()) {
            Some(x) => Some(x),
            None => {
                return fault(
                    StatusCode::BAD_REQUEST,
                    "2080",
                    "Invalid Number",
                    "UnitPrice must be a non-negative number",
                    Some("UnitPrice"),
                    &t,
                );
            }
        },
    };
    let lower = name.to_lowercase();
    if let Some(&holder) = w.name_index.get(&lower)
        && Some(holder) != existing
    {
        let other = &w.items[holder];
        return fault(
            StatusCode::BAD_REQUEST,
            "6240",
            "Duplicate Name Exists Error",
            &format!(
                "The name supplied already exists. : Another product or service is already using this name. Please use a different name. Id={}",
                other.id
            ),
            None,
            &t,
        );
    }
    let item_type = v
        .get("Type")
        .and_then(Value::as_str)
        .unwrap_or("Service")
        .to_owned();
    let income = v["IncomeAccountRef"]["value"].as_str().map(str::to_owned);
    let sparse = v.get("sparse").and_then(Value::as_bool).unwrap_or(false);
    match existing {
        Some(idx) => {
            let token = v.get("SyncToken").and_then(Value::as_str).unwrap_or("");
            if token != w.items[idx].sync_token.to_string() {
                return fault(
                    StatusCode::BAD_REQUEST,
                    "5010",
                    "Stale Object Error",
                    &format!(
                        "Stale Object Error : You and {} were working on this at the same time. {} finished before you did, so your work was not saved.",
                        "another user", "Another user"
                    ),
                    None,
                    &t,
                );
            }
            let old_lower = w.items[idx].name.to_lowercase();
            let item = &mut w.items[idx];
            item.name = name;
            item.sync_token += 1;
            item.updated = t.clone();
            // A full update replaces every field; a sparse one only those sent.
            if !sparse || v.get("UnitPrice").is_some() {
                item.unit_price = unit_price;
            }
            if !sparse || v.get("Sku").is_some() {
                item.sku = v["Sku"].as_str().map(str::to_owned);
            }
            if !sparse || v.get("Description").is_some() {
                item.description = v["Description"].as_str().map(str::to_owned);
            }
            if !sparse || v.get("Active").is_some() {
                item.active = v["Active"].as_bool().unwrap_or(true);
            }
            if income.is_some() {
                item.income_account = income;
            }
            w.name_index.remove(&old_lower);
            w.name_index.insert(lower, idx);
            w.counters.qb_updates += 1;
            (
                StatusCode::OK,
                json!({ "Item": item_json(&w.items[idx]), "time": t }),
            )
        }
        None => {
            if item_type == "Service" && income.is_none() {
                return fault(
                    StatusCode::BAD_REQUEST,
                    "2020",
                    "Required param missing, need to supply the required value for the API",
                    "Required parameter IncomeAccountRef is missing in the request",
                    Some("IncomeAccountRef"),
                    &t,
                );
            }
            let item = Item {
                id: w.items.len() as u64 + 1,
                sync_token: 0,
                name,
                sku: v["Sku"].as_str().map(str::to_owned),
                description: v["Description"].as_str().map(str::to_owned),
                unit_price,
                active: v["Active"].as_bool().unwrap_or(true),
                item_type,
                income_account: income,
                created: t.clone(),
                updated: t.clone(),
            };
            w.name_index.insert(lower, w.items.len());
            w.items.push(item);
            w.counters.qb_creates += 1;
            (
                StatusCode::OK,
                json!({ "Item": item_json(w.items.last().expect("just pushed")), "time": t }),
            )
        }
    }
}

async fn read_item(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path((realm, id)): Path<(String, String)>,
) -> Response {
    let c = match authorize(&s, &headers, &realm) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let tx = s.company(c).lock();
    let t = timestamp(&tx.world);
    match id
        .parse::<usize>()
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| tx.world.items.get(i))
    {
        Some(item) => axum::Json(json!({ "Item": item_json(item), "time": t })).into_response(),
        None => {
            let (st, b) = fault(
                StatusCode::BAD_REQUEST,
                "610",
                "Object Not Found",
                &format!(
                    "Object Not Found : Something you're trying to use has been made inactive. Id={id}"
                ),
                None,
                &t,
            );
            (st, axum::Json(b)).into_response()
        }
    }
}

#[derive(Deserialize)]
struct QueryParams {
    query: Option<String>,
}

/// A parsed query of the supported subset.
#[derive(Debug, PartialEq)]
pub struct ItemQuery {
    /// `Field = 'v'` (one value) or `Field IN ('a', 'b', …)`.
    pub field: Option<(String, Vec<String>)>,
    pub include_inactive: bool,
    pub start: usize,
    pub max: usize,
}

/// A single-quoted value at the start of `r` (`\'` and `\\` escapes) and what follows it.
fn quoted(r: &str) -> Result<(String, &str), String> {
    let Some(body) = r.trim_start().strip_prefix('\'') else {
        return Err("expected a quoted value".into());
    };
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, n)) => value.push(n),
                None => return Err("dangling escape".into()),
            },
            '\'' => return Ok((value, &body[i + 1..])),
            _ => value.push(c),
        }
    }
    Err("unterminated string".into())
}

/// Parses `select * from Item [where F = 'v' | F in ('a', 'b', …) [and Active in
/// (true, false)]] [startposition n] [maxresults m]` (keywords case-insensitive, `\'`
/// escapes; MAXRESULTS at most 1,000).
#[expect(
    clippy::too_many_lines,
    reason = "one simulated endpoint's rules in the order the real service applies them"
)]
pub fn parse_query(q: &str) -> Result<ItemQuery, String> {
    let mut rest = q.trim();
    let take_kw = |rest: &mut &str, kw: &str| -> bool {
        let r = rest.trim_start();
        if r.len() >= kw.len() && r[..kw.len()].eq_ignore_ascii_case(kw) {
            *rest = &r[kw.len()..];
            true
        } else {
            false
        }
    };
    if !(take_kw(&mut rest, "select")
        && take_kw(&mut rest, "*")
        && take_kw(&mut rest, "from")
        && take_kw(&mut rest, "item"))
    {
        return Err("only `select * from Item` is supported".into());
    }
    let mut out = ItemQuery {
        field: None,
        include_inactive: false,
        start: 1,
        max: 100,
    };
    let active_in = |rest: &mut &str| -> bool {
        let compact: String = rest
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        let known = ["activein(true,false)", "activein(false,true)"]
            .iter()
            .any(|p| compact.starts_with(p));
        if known {
            let close = rest.find(')').map(|i| i + 1).unwrap_or(rest.len());
            *rest = &rest[close..];
        }
        known
    };
    if take_kw(&mut rest, "where") && {
        // `where Active in (true, false)` alone: every Item.
        if active_in(&mut rest) {
            out.include_inactive = true;
            false
        } else {
            true
        }
    } {
        let r = rest.trim_start();
        let end = r
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(r.len());
        let field = r[..end].to_owned();
        rest = &r[end..];
        let values = if take_kw(&mut rest, "=") {
            let (value, after) = quoted(rest)?;
            rest = after;
            vec![value]
        } else if take_kw(&mut rest, "in") {
            let Some(mut r) = rest.trim_start().strip_prefix('(') else {
                return Err(format!("expected ( after {field} IN"));
            };
            let mut values = Vec::new();
            loop {
                let (value, after) = quoted(r)?;
                values.push(value);
                let after = after.trim_start();
                if let Some(a) = after.strip_prefix(',') {
                    r = a;
                } else if let Some(a) = after.strip_prefix(')') {
                    r = a;
                    break;
                } else {
                    return Err(format!("expected , or ) in the IN list of {field}"));
                }
            }
            rest = r;
            values
        } else {
            return Err(format!("expected = or IN after {field}"));
        };
        out.field = Some((field, values));
        if take_kw(&mut rest, "and") {
            let compact: String = rest
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_lowercase();
            let consumed = [
                "active in(true,false)",
                "activein(true,false)",
                "activein(false,true)",
            ]
            .iter()
            .find(|p| compact.starts_with(&p.replace(' ', "")));
            if consumed.is_none() {
                return Err("only `and Active in (true, false)` is supported after where".into());
            }
            out.include_inactive = true;
            let close = rest.find(')').map(|i| i + 1).unwrap_or(rest.len());
            rest = &rest[close..];
        }
    }
    if take_kw(&mut rest, "startposition") {
        let r = rest.trim_start();
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        out.start = r[..end].parse().map_err(|_| "bad STARTPOSITION")?;
        if out.start == 0 {
            return Err("STARTPOSITION counts from 1".into());
        }
        rest = &r[end..];
    }
    if take_kw(&mut rest, "maxresults") {
        let r = rest.trim_start();
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        out.max = r[..end].parse().map_err(|_| "bad MAXRESULTS")?;
        if out.max > 1000 {
            return Err(format!(
                "MAXRESULTS {} is too large: at most 1000 objects a response",
                out.max
            ));
        }
        rest = &r[end..];
    }
    if !rest.trim().is_empty() {
        return Err(format!("unexpected `{}`", rest.trim()));
    }
    Ok(out)
}

/// Runs a query of the supported subset: the `QueryResponse` object, or the parse error.
fn run_query(w: &World, query: &str) -> Result<Value, String> {
    let parsed = parse_query(query)?;
    let mut matches: Vec<&Item> = match &parsed.field {
        // Name lookups use the index (names compare case-insensitively).
        Some((f, values)) if f.eq_ignore_ascii_case("Name") => {
            let mut at: Vec<usize> = values
                .iter()
                .filter_map(|v| w.name_index.get(&v.to_lowercase()).copied())
                .collect();
            at.sort_unstable();
            at.dedup();
            at.into_iter().map(|i| &w.items[i]).collect()
        }
        Some((f, values)) => w
            .items
            .iter()
            .filter(|i| match f.to_ascii_lowercase().as_str() {
                "id" => values.iter().any(|v| i.id.to_string() == *v),
                "sku" => values.iter().any(|v| i.sku.as_deref() == Some(v.as_str())),
                _ => false,
            })
            .collect(),
        None => w.items.iter().collect(),
    };
    matches.retain(|i| parsed.include_inactive || i.active);
    let found: Vec<Value> = matches
        .into_iter()
        .skip(parsed.start.saturating_sub(1))
        .take(parsed.max)
        .map(item_json)
        .collect();
    if found.is_empty() {
        return Ok(json!({}));
    }
    Ok(json!({ "Item": found, "startPosition": parsed.start, "maxResults": found.len() }))
}

async fn query(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(realm): Path<String>,
    Query(params): Query<QueryParams>,
) -> Response {
    let c = match authorize(&s, &headers, &realm) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut tx = s.company(c).lock();
    tx.world.counters.qb_queries += 1;
    let t = timestamp(&tx.world);
    match run_query(&tx.world, params.query.as_deref().unwrap_or("")) {
        Ok(qr) => axum::Json(json!({ "QueryResponse": qr, "time": t })).into_response(),
        Err(e) => {
            let (st, b) = fault(
                StatusCode::BAD_REQUEST,
                "4000",
                "Error parsing query",
                &format!("QueryParserError: {e}"),
                None,
                &t,
            );
            (st, axum::Json(b)).into_response()
        }
    }
}

/// How the next batch requests are answered (run-time, not persisted, like faults).
/// Each is carried out in full either way: only its answer suffers.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchAnswerKnobs {
    /// The next N answers are lost (a 504 after the work is done; a replay by
    /// `requestid` is answered so too, and counts).
    pub lose: u32,
    /// The next N answers leave out their last operation's `BatchItemResponse`.
    pub drop_last: u32,
    /// The next N answers say their last operation met a `SystemFault` (it was
    /// carried out all the same).
    pub system_fault_last: u32,
}

impl Sandbox {
    pub fn qb_batch_answer_knobs(&self) -> BatchAnswerKnobs {
        self.qb_batch_answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The answer a batch gets, after the knobs above had their say.
    fn batch_answer(&self, status: StatusCode, mut body: Value) -> Response {
        let mut k = self
            .qb_batch_answers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if k.lose > 0 {
            k.lose -= 1;
            return (
                StatusCode::GATEWAY_TIMEOUT,
                [("content-type", "text/html")],
                "<html><body>Gateway Timeout</body></html>",
            )
                .into_response();
        }
        if k.drop_last > 0
            && let Some(answers) = body
                .get_mut("BatchItemResponse")
                .and_then(Value::as_array_mut)
        {
            k.drop_last -= 1;
            answers.pop();
        } else if k.system_fault_last > 0
            && let Some(last) = body
                .get_mut("BatchItemResponse")
                .and_then(Value::as_array_mut)
                .and_then(|a| a.last_mut())
        {
            k.system_fault_last -= 1;
            *last = json!({ "bId": last["bId"], "Fault": {
                "type": "SystemFault",
                "Error": [{ "Message": "An application error has occurred while processing your request",
                            "Detail": "System Failure Error: simulated", "code": "10000" }] } });
        }
        (status, axum::Json(body)).into_response()
    }
}

/// One operation of a batch, as sent.
enum BatchOp<'a> {
    Write { create: bool, item: &'a Value },
    Query(&'a str),
}

/// A 400 answer with one Fault (the whole request refused).
fn refuse(w: &World, code: &str, message: &str, detail: &str, element: Option<&str>) -> Response {
    let t = timestamp(w);
    let (st, b) = fault(StatusCode::BAD_REQUEST, code, message, detail, element, &t);
    (st, axum::Json(b)).into_response()
}

/// The per-operation Fault of a batch answer.
fn item_fault(code: &str, message: &str, detail: &str) -> Value {
    json!({ "type": "ValidationFault",
            "Error": [{ "Message": message, "Detail": detail, "code": code }] })
}

/// `POST /v3/company/{realm}/batch`: up to 30 operations (Item create/update, Query),
/// each answered on its own under its `bId`. With a `requestid` (≤ 36 characters, then
/// each `bId` ≤ 10) a repeat gets the first answer. Queries run before the writes (the
/// order inside a batch is not guaranteed, and what a batch creates is not visible to
/// its own operations); the writes run last to first.
#[expect(
    clippy::too_many_lines,
    reason = "one simulated endpoint's rules in the order the real service applies them"
)]
async fn batch(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(realm): Path<String>,
    Query(params): Query<WriteParams>,
    body: axum::body::Bytes,
) -> Response {
    let c = match authorize(&s, &headers, &realm) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut tx = s.company(c).lock();
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                &tx.world,
                "2010",
                "Request has invalid or unsupported property",
                &format!("Unparseable JSON: {e}"),
                None,
            );
        }
    };
    let Some(items) = request.get("BatchItemRequest").and_then(Value::as_array) else {
        return refuse(
            &tx.world,
            "2020",
            "Required param missing, need to supply the required value for the API",
            "Required parameter BatchItemRequest is missing in the request",
            Some("BatchItemRequest"),
        );
    };
    if items.is_empty() || items.len() > super::faults::QB_BATCH_MAX {
        return refuse(
            &tx.world,
            "2050",
            "Batch size out of range",
            &format!(
                "A batch carries 1 to {} BatchItemRequest items; this one has {}",
                super::faults::QB_BATCH_MAX,
                items.len()
            ),
            Some("BatchItemRequest"),
        );
    }
    if let Some(rid) = &params.requestid
        && rid.chars().count() > 36
    {
        return refuse(
            &tx.world,
            "2050",
            "String length exceeds limit",
            "requestid is longer than 36 characters (the limit on a batch request)",
            Some("requestid"),
        );
    }
    let mut ops = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::new();
    for it in items {
        let Some(bid) = it
            .get("bId")
            .and_then(Value::as_str)
            .filter(|b| !b.is_empty())
        else {
            return refuse(
                &tx.world,
                "2020",
                "Required param missing, need to supply the required value for the API",
                "Every BatchItemRequest needs a bId",
                Some("bId"),
            );
        };
        if params.requestid.is_some() && bid.chars().count() > 10 {
            return refuse(
                &tx.world,
                "2050",
                "String length exceeds limit",
                &format!("bId {bid:?} is longer than 10 characters (with a requestid)"),
                Some("bId"),
            );
        }
        if !seen.insert(bid) {
            return refuse(
                &tx.world,
                "2010",
                "Request has invalid or unsupported property",
                &format!("bId {bid:?} appears twice in the batch"),
                Some("bId"),
            );
        }
        let op = if let Some(q) = it.get("Query").and_then(Value::as_str) {
            Ok(BatchOp::Query(q))
        } else if let Some(item) = it.get("Item") {
            match it.get("operation").and_then(Value::as_str) {
                Some("create") => Ok(BatchOp::Write { create: true, item }),
                Some("update") => Ok(BatchOp::Write {
                    create: false,
                    item,
                }),
                Some(other) => Err(item_fault(
                    "2010",
                    "Request has invalid or unsupported property",
                    &format!(
                        "operation {other:?} is not supported on Item (Items are never deleted: set Active false)"
                    ),
                )),
                None => Err(item_fault(
                    "2020",
                    "Required param missing, need to supply the required value for the API",
                    "operation is required on an Item batch request",
                )),
            }
        } else {
            Err(item_fault(
                "2010",
                "Request has invalid or unsupported property",
                "only Item operations and Query are supported in this batch",
            ))
        };
        ops.push((bid.to_owned(), op));
    }
    if let Some(rid) = &params.requestid
        && let Some((status, body)) = tx.world.request_ids.get(rid)
    {
        tx.world.counters.qb_replays += 1;
        let meta = tx.world.meta();
        tx.record(meta);
        tx.commit();
        return s.batch_answer(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body);
    }
    if let Err(throttled) = s.faults.admit_batch(c, ops.len()) {
        return throttled;
    }
    tx.world.counters.qb_batch_requests += 1;
    tx.world.counters.qb_batch_operations += ops.len() as u64;
    let mut answers: Vec<Option<Value>> = vec![None; ops.len()];
    // Queries first: they see the company as it was when the batch arrived.
    for (i, (bid, op)) in ops.iter().enumerate() {
        match op {
            Ok(BatchOp::Query(q)) => {
                tx.world.counters.qb_queries += 1;
                answers[i] = Some(match run_query(&tx.world, q) {
                    Ok(qr) => json!({ "bId": bid, "QueryResponse": qr }),
                    Err(e) => json!({ "bId": bid, "Fault": item_fault(
                        "4000", "Error parsing query", &format!("QueryParserError: {e}")) }),
                });
            }
            Err(f) => answers[i] = Some(json!({ "bId": bid, "Fault": f })),
            Ok(BatchOp::Write { .. }) => {}
        }
    }
    let mut written = Vec::new();
    for (i, (bid, op)) in ops.iter().enumerate().rev() {
        let Ok(BatchOp::Write { create, item }) = op else {
            continue;
        };
        let has_id = item.get("Id").is_some_and(|v| !v.is_null());
        let (status, answer) = if *create && has_id {
            let t = timestamp(&tx.world);
            fault(
                StatusCode::BAD_REQUEST,
                "2010",
                "Request has invalid or unsupported property",
                "Id is read-only: a create cannot carry one",
                Some("Id"),
                &t,
            )
        } else if !*create && !has_id {
            let t = timestamp(&tx.world);
            fault(
                StatusCode::BAD_REQUEST,
                "2020",
                "Required param missing, need to supply the required value for the API",
                "Required parameter Id is missing in the request",
                Some("Id"),
                &t,
            )
        } else {
            apply_write(&mut tx.world, item)
        };
        answers[i] = Some(if status.is_success() {
            if let Some(id) = answer["Item"]["Id"]
                .as_str()
                .and_then(|i| i.parse::<usize>().ok())
            {
                written.push(id);
            }
            json!({ "bId": bid, "Item": answer["Item"] })
        } else {
            json!({ "bId": bid, "Fault": answer["Fault"] })
        });
    }
    let t = timestamp(&tx.world);
    let answer = json!({
        "BatchItemResponse": answers.into_iter().flatten().collect::<Vec<_>>(),
        "time": t,
    });
    for id in written {
        let item = tx.world.items[id - 1].clone();
        tx.record(Entry::Item(item));
    }
    if let Some(rid) = params.requestid {
        tx.world
            .request_ids
            .insert(rid.clone(), 200, answer.clone());
        tx.record(Entry::Request(rid, 200, answer.clone()));
    }
    let meta = tx.world.meta();
    tx.record(meta);
    tx.commit();
    s.batch_answer(StatusCode::OK, answer)
}

#[derive(Deserialize)]
struct CdcParams {
    entities: Option<String>,
    #[serde(rename = "changedSince")]
    changed_since: Option<String>,
}

/// How far back a change data capture may look.
const CDC_WINDOW_SECS: i64 = 30 * 86_400;

fn rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

/// `GET /v3/company/{realm}/cdc?entities=Item&changedSince=<RFC 3339>`: the Items
/// changed since then (inactive ones too), oldest change first, at most 1,000; at most
/// 30 days back.
async fn cdc(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(realm): Path<String>,
    Query(params): Query<CdcParams>,
) -> Response {
    let c = match authorize(&s, &headers, &realm) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut tx = s.company(c).lock();
    let entities: Vec<&str> = params
        .entities
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entities.is_empty() {
        return refuse(
            &tx.world,
            "2020",
            "Required param missing, need to supply the required value for the API",
            "Required parameter entities is missing in the request",
            Some("entities"),
        );
    }
    if let Some(other) = entities.iter().find(|e| !e.eq_ignore_ascii_case("Item")) {
        return refuse(
            &tx.world,
            "2010",
            "Request has invalid or unsupported property",
            &format!("entity {other:?} is not supported by this sandbox (Item only)"),
            Some("entities"),
        );
    }
    let Some(since) = params.changed_since.as_deref() else {
        return refuse(
            &tx.world,
            "2020",
            "Required param missing, need to supply the required value for the API",
            "Required parameter changedSince is missing in the request",
            Some("changedSince"),
        );
    };
    let Some(since) = rfc3339(since) else {
        return refuse(
            &tx.world,
            "2010",
            "Request has invalid or unsupported property",
            &format!("changedSince {since:?} is not an RFC 3339 date-time"),
            Some("changedSince"),
        );
    };
    let now = tx.world.now();
    if now - since > CDC_WINDOW_SECS {
        return refuse(
            &tx.world,
            "2010",
            "Request has invalid or unsupported property",
            "changedSince is more than 30 days ago: read the whole list with a query instead",
            Some("changedSince"),
        );
    }
    tx.world.counters.qb_cdc_requests += 1;
    let mut changed: Vec<(i64, &Item)> = tx
        .world
        .items
        .iter()
        .filter_map(|i| rfc3339(&i.updated).map(|u| (u, i)))
        .filter(|(u, _)| *u >= since)
        .collect();
    changed.sort_by_key(|(u, i)| (*u, i.id));
    let found: Vec<Value> = changed
        .into_iter()
        .take(1000)
        .map(|(_, i)| item_json(i))
        .collect();
    let mut qr = json!({});
    if !found.is_empty() {
        qr = json!({ "Item": found, "startPosition": 1, "maxResults": found.len() });
    }
    let t = timestamp(&tx.world);
    let answer = json!({ "CDCResponse": [{ "QueryResponse": [qr] }], "time": t });
    let meta = tx.world.meta();
    tx.record(meta);
    tx.commit();
    s.batch_answer(StatusCode::OK, answer)
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    refresh_token: Option<String>,
}

async fn token(
    State(s): State<Arc<Sandbox>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<TokenForm>,
) -> Response {
    let expected = base64::engine::general_purpose::STANDARD
        .encode(format!("{QB_CLIENT_ID}:{QB_CLIENT_SECRET}"));
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    if basic != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "error": "invalid_client" })),
        )
            .into_response();
    }
    if form.grant_type.as_deref() != Some("refresh_token") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": "unsupported_grant_type" })),
        )
            .into_response();
    }
    // The refresh token tells the company (one it does not know is company 1's to
    // refuse).
    let c = form
        .refresh_token
        .as_deref()
        .and_then(|rt| {
            s.companies()
                .iter()
                .position(|co| co.lock().world.refresh_token == rt)
        })
        .unwrap_or(0);
    let mut tx = s.company(c).lock();
    tx.world.counters.token_requests += 1;
    if form.refresh_token.as_deref() != Some(tx.world.refresh_token.as_str()) {
        tx.world.counters.token_rejected += 1;
        let meta = tx.world.meta();
        tx.record(meta);
        tx.commit();
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": "invalid_grant" })),
        )
            .into_response();
    }
    let access = format!("eyJ{}", tx.world.rng.hex(24));
    let refresh = format!("AB11{}", tx.world.rng.hex(20));
    let now = tx.world.now();
    tx.world.access_tokens.retain(|_, &mut exp| exp > now);
    tx.world
        .access_tokens
        .insert(access.clone(), now + ACCESS_TOKEN_TTL_SECS);
    tx.world.refresh_token = refresh.clone();
    tx.world.counters.token_refreshes += 1;
    let meta = tx.world.meta();
    tx.record(meta);
    tx.commit();
    axum::Json(json!({
        "access_token": access, "refresh_token": refresh, "token_type": "bearer",
        "expires_in": ACCESS_TOKEN_TTL_SECS, "x_refresh_token_expires_in": 8_726_400,
    }))
    .into_response()
}

/// `POST /_sandbox/quickbooks/items/{id}` with any of `{"name", "unit_price",
/// "active"}`: someone edits the Item in QuickBooks itself, behind the engine's back.
/// As QuickBooks does for any write, its SyncToken goes up and its LastUpdatedTime is
/// now (so change data capture returns it). Not found: `Err(404)`; a name another Item
/// holds, or a bad value: `Err(400)` with why.
pub fn edit_item(s: &Company, id: &str, body: &Value) -> Result<Value, (u16, String)> {
    let mut tx = s.lock();
    let Some(idx) = id
        .parse::<usize>()
        .ok()
        .filter(|i| *i >= 1 && *i <= tx.world.items.len())
        .map(|i| i - 1)
    else {
        return Err((404, format!("no Item {id:?}")));
    };
    let name = match body.get("name") {
        None => None,
        Some(v) => match v.as_str().map(str::trim) {
            Some(n) if !n.is_empty() => Some(n.to_owned()),
            _ => return Err((400, "name: expected a non-empty string".into())),
        },
    };
    let price = match body.get("unit_price") {
        None => None,
        Some(v) => match v.as_f64() {
            Some(p) if p >= 0.0 && p.is_finite() => Some(p),
            _ => return Err((400, "unit_price: expected a non-negative number".into())),
        },
    };
    let active = match body.get("active") {
        None => None,
        Some(v) => Some(
            v.as_bool()
                .ok_or((400, "active: expected true or false".to_owned()))?,
        ),
    };
    if let Some(n) = &name
        && let Some(&holder) = tx.world.name_index.get(&n.to_lowercase())
        && holder != idx
    {
        return Err((400, format!("name {n:?} is held by Item {}", holder + 1)));
    }
    let t = timestamp(&tx.world);
    let w = &mut tx.world;
    let old_lower = w.items[idx].name.to_lowercase();
    let item = &mut w.items[idx];
    if let Some(n) = name {
        item.name = n;
    }
    if let Some(p) = price {
        item.unit_price = Some(p);
    }
    if let Some(a) = active {
        item.active = a;
    }
    item.sync_token += 1;
    item.updated = t;
    let lower = item.name.to_lowercase();
    let item = item.clone();
    w.name_index.remove(&old_lower);
    w.name_index.insert(lower, idx);
    tx.record(Entry::Item(item.clone()));
    tx.commit();
    Ok(item_json(&item))
}

/// `POST /_sandbox/quickbooks/revoke`: what happens when the app is re-authorised
/// elsewhere (or its connection revoked): the refresh token the engine holds is
/// superseded and every access token dies. Answers the new refresh token, as Intuit's
/// developer portal would show it to whoever re-authorised.
pub fn revoke(s: &Company) -> Value {
    let mut tx = s.lock();
    let refresh = format!("AB11{}", tx.world.rng.hex(20));
    tx.world.refresh_token = refresh.clone();
    tx.world.access_tokens.clear();
    let meta = tx.world.meta();
    tx.record(meta);
    tx.commit();
    json!({ "refresh_token": refresh })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_with_escaped_quote_and_inactive_filter() {
        let q = parse_query(r"select * from Item where Name = 'O\'Brien\'s' and Active in (true, false) MAXRESULTS 5").unwrap();
        assert_eq!(q.field, Some(("Name".into(), vec!["O'Brien's".into()])));
        assert!(q.include_inactive);
        assert_eq!(q.max, 5);
    }

    #[test]
    fn in_lists_and_page_bounds() {
        let q = parse_query(r"select * from Item where Name in ('a', 'O\'B' ,'c') and Active in (true,false) STARTPOSITION 3 MAXRESULTS 1000").unwrap();
        assert_eq!(
            q.field,
            Some(("Name".into(), vec!["a".into(), "O'B".into(), "c".into()]))
        );
        assert_eq!((q.include_inactive, q.start, q.max), (true, 3, 1000));
        assert!(parse_query("select * from Item MAXRESULTS 1001").is_err());
        assert!(parse_query("select * from Item STARTPOSITION 0").is_err());
        assert!(parse_query("select * from Item where Name in ('a' 'b')").is_err());
        assert!(parse_query("select * from Item where Name in 'a'").is_err());
    }

    #[test]
    fn unsupported_query_is_an_error() {
        assert!(parse_query("select * from Item where Name = 'a' or Name = 'b'").is_err());
        let all = parse_query(
            "select * from Item where Active in (true, false) STARTPOSITION 1001 MAXRESULTS 1000",
        )
        .unwrap();
        assert_eq!(
            (all.field, all.include_inactive, all.start, all.max),
            (None, true, 1001, 1000)
        );
        assert!(parse_query("select * from Customer").is_err());
        assert!(parse_query("select * from Item where Name = 'open").is_err());
    }
}
