//! The console protocol: what an attached console and an engine say to each other over
//! `WS /api/v1/ws/console` (`syncctl attach`, plain `syncctl` on a data dir whose engine
//! runs).
//!
//! ```text
//! console                                   engine
//!    │── Hello {protocol, user, ssh, read_only} ─▶│  (first frame, within 10 s)
//!    │◀─ Welcome {protocol, connection, role…} ───│  or Refused {message}, then close
//!    │◀─ Snapshot {seq, snapshot} ────────────────│  the whole view, once
//!    │◀─ Delta {seq, changes} ────────────────────│  each later publish: what changed
//!    │── Command {id, command} ──────────────────▶│
//!    │◀─ Reply {id, reply} ───────────────────────│  to this console only
//!    │── Query {id, query} ──────────────────────▶│
//!    │◀─ Answer {id, reply} ──────────────────────│
//!    │── Show {audit, charts, downstreams} ──────▶│  those parts only while shown
//!    │◀─ Event {event} / Consoles {consoles} ─────│  pushed
//!    │◀─ Companies {companies} ───────────────────│  one row per company, when several
//!    │◀▶ Ping / Pong ─────────────────────────────│  heartbeat, either way
//! ```
//!
//! A console sends JSON text frames. The engine sends binary frames: JSON deflated in
//! one stream per connection ([`Packer`], [`Unpacker`]), so what repeats across frames
//! costs little. The engine sends changes no faster than the console draws
//! ([`Hello::max_fps`], paced by [`crate::protocol::Pacer`]: a change between two
//! regular ones, as an operator's action, goes at once). The engine's clock
//! (`compliance.now_ms`) comes in the snapshot only; the console keeps time from it, so
//! an idle engine sends nothing but the heartbeat.
//! Versioned: both sides send [`PROTOCOL_VERSION`] and refuse a different one with a
//! message that says which side to upgrade.
//!
//! Deltas are computed on the snapshot's JSON form ([`diff`], [`apply`]): objects are
//! compared field by field, a list that moved as a window (a series that gained its
//! newest second and lost its oldest, an audit trail with new entries on top) is sent
//! as the new items only, records that kept their places (the downstreams, the charts)
//! field by field when that is smaller, anything else whole. Applying every delta in order to the
//! first snapshot gives exactly the engine's snapshot as this console is sent it (`seq`
//! checks the order): without the parts it does not show, and with the clock it keeps.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::{Command, CommandError, Query, Reply};
use super::events::EngineEvent;
use super::operator::Role;
use super::query::QueryReply;
use super::snapshot::Snapshot;

/// The version of this protocol; a console and an engine of different versions
/// refuse each other.
pub const PROTOCOL_VERSION: u32 = 1;

/// Where an engine serves attached consoles.
pub const CONSOLE_PATH: &str = "/api/v1/ws/console";

/// What a console sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// The first frame: who is attaching.
    Hello(Hello),
    /// One command; answered with a [`ServerFrame::Reply`] of the same id.
    Command {
        id: u64,
        command: Command,
    },
    /// One query; answered with a [`ServerFrame::Answer`] of the same id.
    Query {
        id: u64,
        query: Query,
    },
    /// What the console shows now of the parts sent only on demand.
    Show(Shown),
    Ping,
    Pong,
}

/// Who is attaching, as the console says it (the token says the rest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the console.
    pub protocol: u32,
    /// The console's program version (`CARGO_PKG_VERSION`).
    pub client: String,
    /// The OS user running the console.
    pub user: String,
    /// The SSH client address the console runs under, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    /// Attached with `--read-only`: the engine treats it as a viewer whatever its token.
    #[serde(default)]
    pub read_only: bool,
    /// How many frames a second the console draws: the engine sends changes no faster
    /// (None: [`DEFAULT_FPS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fps: Option<u32>,
}

/// The parts of the snapshot an engine sends a console only while it shows them: they
/// change all the time (during a sync the audit trail grows by every item; every chart
/// moves every second) and only one screen draws each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shown {
    /// The audit trail (`audit`): the Events screen.
    #[serde(default)]
    pub audit: bool,
    /// The charts (`telemetry.charts`): the Throughput screen.
    #[serde(default)]
    pub charts: bool,
    /// Each downstream's breaker, limiter, counters and latency (`downstreams`): the
    /// Circuits, Throughput and Workers screens.
    #[serde(default)]
    pub downstreams: bool,
    /// The reconciliation's rows (`reconciliation.rows`; its counts always go): the
    /// Reconciliation screen.
    #[serde(default)]
    pub reconciliation: bool,
}

impl Shown {
    /// `snapshot` (as JSON) without the parts not shown, nor those no console shows
    /// (`profile`, the slowest operations, is for the API and `status`).
    pub fn strip(self, snapshot: &mut Value) {
        if let Some(v) = snapshot.get_mut("profile") {
            *v = Value::Array(Vec::new());
        }
        if !self.audit
            && let Some(v) = snapshot.get_mut("audit")
        {
            *v = Value::Array(Vec::new());
        }
        if !self.charts
            && let Some(v) = snapshot
                .get_mut("telemetry")
                .and_then(|t| t.get_mut("charts"))
        {
            *v = Value::Array(Vec::new());
        }
        if !self.downstreams
            && let Some(v) = snapshot.get_mut("downstreams")
        {
            *v = Value::Array(Vec::new());
        }
        if !self.reconciliation
            && let Some(v) = snapshot
                .get_mut("reconciliation")
                .and_then(|r| r.get_mut("rows"))
        {
            *v = Value::Array(Vec::new());
        }
    }
}

/// Where the engine's clock is in a snapshot (as JSON): `compliance.now_ms`, whole
/// seconds. It is sent in the whole snapshot only, never in a delta: the console keeps
/// the engine's clock from there on its own, so an idle engine sends nothing each
/// second. [`clock_ms`] reads it, [`set_clock_ms`] sets it.
pub const CLOCK: [&str; 2] = ["compliance", "now_ms"];

/// The engine clock in `snapshot`.
pub fn clock_ms(snapshot: &Value) -> Option<i64> {
    snapshot.get(CLOCK[0])?.get(CLOCK[1])?.as_i64()
}

/// Sets the engine clock in `snapshot` (when it has one).
pub fn set_clock_ms(snapshot: &mut Value, ms: i64) {
    if let Some(v) = snapshot.get_mut(CLOCK[0]).and_then(|c| c.get_mut(CLOCK[1])) {
        *v = Value::from(ms);
    }
}

/// The draw rate assumed of a console that does not say.
pub const DEFAULT_FPS: u32 = 4;

/// What an engine sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to a [`Hello`] the engine accepts.
    Welcome(Welcome),
    /// The engine will not serve this console (another protocol version, a bad first
    /// frame); the connection closes after it.
    Refused {
        message: String,
    },
    /// The whole view; `seq` numbers the snapshots this connection was sent.
    Snapshot {
        seq: u64,
        snapshot: Box<Snapshot>,
    },
    /// What changed since snapshot `seq - 1`.
    Delta {
        seq: u64,
        changes: Vec<Change>,
    },
    /// The reply to this console's command `id`.
    Reply {
        id: u64,
        reply: Reply,
    },
    /// The answer to this console's query `id`.
    Answer {
        id: u64,
        reply: QueryReply,
    },
    /// Something that happened (an alert, a breaker transition, an audit entry).
    Event {
        event: EngineEvent,
    },
    /// The consoles attached now (sent on attach and whenever one comes or goes).
    Consoles {
        consoles: Vec<AttachedConsole>,
    },
    /// One row per company the engine's process serves (sent when it serves several:
    /// on attach, then at most once a second while a row changes), for the console's
    /// "all companies" overview.
    Companies {
        companies: Vec<super::companies::CompanyRow>,
    },
    Ping,
    Pong,
}

/// The engine's greeting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// [`PROTOCOL_VERSION`] of the engine.
    pub protocol: u32,
    /// The engine's program version.
    pub engine: String,
    /// This connection's number (as the connections list shows it).
    pub connection: u64,
    /// The engine pings this often; a console that hears nothing for three times as
    /// long takes the connection for dead.
    pub heartbeat_secs: f64,
    /// What this console may do.
    pub role: Role,
    /// How the audit trail names this console's actions.
    pub actor: String,
    /// The company this connection shows and acts on (`?company=ID` on the console's
    /// URL; the first one when the engine serves several and none was named). None from
    /// an engine that did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<super::companies::CompanyTag>,
    /// Every company the engine's process serves, in its config's order (one: the
    /// selector stays hidden).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub companies: Vec<super::companies::CompanyTag>,
}

/// One attached console, as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedConsole {
    pub connection: u64,
    /// The token's name (`local` for the control file's).
    pub token: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    /// The address the connection comes from.
    pub remote: String,
    pub role: Role,
    pub since_ms: i64,
}

impl AttachedConsole {
    /// `ana@10.0.0.7 (ops, viewer)`.
    pub fn label(&self) -> String {
        let at = self.ssh.as_deref().unwrap_or(&self.remote);
        let role = match self.role {
            Role::Operator => "",
            Role::Viewer => ", viewer",
        };
        format!("{}@{at} ({}{role})", self.user, self.token)
    }
}

/// Whether `them` (the console or the engine), of protocol `theirs`, may talk to `us`
/// (the other); the message names the side that should upgrade, never "this" one: the
/// engine's refusal is read by the console's operator.
pub fn check_version(theirs: u32, them: &str, us: &str) -> Result<(), String> {
    let upgrade = match theirs.cmp(&PROTOCOL_VERSION) {
        std::cmp::Ordering::Equal => return Ok(()),
        std::cmp::Ordering::Less => them,
        std::cmp::Ordering::Greater => us,
    };
    Err(format!(
        "the {them} speaks console protocol {theirs}, the {us} {PROTOCOL_VERSION}: \
         upgrade the {upgrade}'s syncctl"
    ))
}

/// One change of a delta. `path` names object fields from the root (and, in lists of
/// records that kept their places, items by index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// The value at `path` is now `value` (set or replaced whole).
    Set { path: Vec<String>, value: Value },
    /// A field is gone.
    Remove { path: Vec<String> },
    /// The list at `path` lost `drop` items at its front and `cut` at its end, then
    /// gained `items` at its end (a window that moved on and whose newest bucket grew).
    Push {
        path: Vec<String>,
        drop: usize,
        #[serde(default, skip_serializing_if = "is_zero")]
        cut: usize,
        items: Vec<Value>,
    },
    /// The list at `path` gained `items` at its front and was cut to `len` items.
    Unshift {
        path: Vec<String>,
        len: usize,
        items: Vec<Value>,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What turns `old` into `new`.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    diff_at(&mut Vec::new(), old, new, &mut out);
    out
}

fn diff_at(path: &mut Vec<String>, old: &Value, new: &Value, out: &mut Vec<Change>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                path.push(k.clone());
                match a.get(k) {
                    Some(o) => diff_at(path, o, v, out),
                    None => out.push(Change::Set {
                        path: path.clone(),
                        value: v.clone(),
                    }),
                }
                path.pop();
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                let mut p = path.clone();
                p.push(k.clone());
                out.push(Change::Remove { path: p });
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            let whole = list_change(path, a, b);
            // Records that may have kept their places (the charts, the downstreams):
            // item by item, when that is the smaller.
            if a.len() == b.len() && a.iter().chain(b).all(Value::is_object) {
                let mut each = Vec::new();
                for (n, (x, y)) in a.iter().zip(b).enumerate() {
                    path.push(n.to_string());
                    diff_at(path, x, y, &mut each);
                    path.pop();
                }
                if encoded_len(&each) <= encoded_len(std::slice::from_ref(&whole)) {
                    out.extend(each);
                    return;
                }
            }
            out.push(whole);
        }
        _ => out.push(Change::Set {
            path: path.clone(),
            value: new.clone(),
        }),
    }
}

/// How long `changes` are on the wire (before compression).
fn encoded_len(changes: &[Change]) -> usize {
    serde_json::to_vec(changes).map_or(usize::MAX, |v| v.len())
}

/// The smallest of: the list as a window that moved forward (Push), as a stack with
/// new items on top (Unshift), or whole (Set).
fn list_change(path: &[String], a: &[Value], b: &[Value]) -> Change {
    // Push: b = a[drop..len - cut] + items, with the fewest items (only where a's item
    // equals b's first is a start worth checking; the first few such starts).
    let mut best: Option<(usize, usize, usize)> = None;
    if let Some(first) = b.first() {
        for drop in (0..a.len()).filter(|&d| a[d] == *first).take(8) {
            let kept = &a[drop..];
            let same = kept.iter().zip(b).take_while(|(x, y)| x == y).count();
            let fresh = b.len() - same;
            if best.is_none_or(|(_, _, f)| fresh < f) {
                best = Some((drop, kept.len() - same, fresh));
            }
        }
    }
    if let Some((drop, cut, fresh)) = best
        && fresh < b.len()
    {
        return Change::Push {
            path: path.to_vec(),
            drop,
            cut,
            items: b[b.len() - fresh..].to_vec(),
        };
    }
    // Unshift: b = items + a[..], cut to b's length, for the fewest new items.
    if let Some(top) = a.first() {
        for new in (1..b.len()).filter(|&n| b[n] == *top) {
            let kept = &b[new..];
            if kept.len() <= a.len() && a.starts_with(kept) {
                return Change::Unshift {
                    path: path.to_vec(),
                    len: b.len(),
                    items: b[..new].to_vec(),
                };
            }
        }
    }
    Change::Set {
        path: path.to_vec(),
        value: Value::Array(b.to_vec()),
    }
}

/// Why a delta does not apply (a console out of step: it asks for the whole view again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfStep(pub String);

impl std::fmt::Display for OutOfStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "delta does not apply: {}", self.0)
    }
}

/// Applies `changes` to `doc`, in order.
pub fn apply(doc: &mut Value, changes: &[Change]) -> Result<(), OutOfStep> {
    for c in changes {
        match c {
            Change::Set { path, value } => match path.split_last() {
                None => *doc = value.clone(),
                Some((last, parent)) => set_at(doc, parent, last, value.clone())?,
            },
            Change::Remove { path } => {
                let (last, parent) = path
                    .split_last()
                    .ok_or_else(|| OutOfStep("remove of the root".into()))?;
                object_at(doc, parent)?.remove(last);
            }
            Change::Push {
                path,
                drop,
                cut,
                items,
            } => {
                let list = list_at(doc, path)?;
                if drop + cut > list.len() {
                    return Err(OutOfStep(format!("{}: cut past the end", path.join("."))));
                }
                list.drain(..*drop);
                list.truncate(list.len() - cut);
                list.extend(items.iter().cloned());
            }
            Change::Unshift { path, len, items } => {
                let list = list_at(doc, path)?;
                list.splice(0..0, items.iter().cloned());
                list.truncate(*len);
            }
        }
    }
    Ok(())
}

/// The value at `path`: object fields by name, list items by their index.
fn walk<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, OutOfStep> {
    let mut at = doc;
    for (n, k) in path.iter().enumerate() {
        let next = match at {
            Value::Array(list) => k.parse::<usize>().ok().and_then(|i| list.get_mut(i)),
            other => other.get_mut(k.as_str()),
        };
        at = next.ok_or_else(|| OutOfStep(format!("no {}", path[..=n].join("."))))?;
    }
    Ok(at)
}

/// Sets the field or list item `last` of the value at `parent`.
fn set_at(doc: &mut Value, parent: &[String], last: &str, value: Value) -> Result<(), OutOfStep> {
    match walk(doc, parent)? {
        Value::Object(map) => {
            map.insert(last.to_owned(), value);
            Ok(())
        }
        Value::Array(list) => {
            let slot = last.parse::<usize>().ok().and_then(|i| list.get_mut(i));
            *slot.ok_or_else(|| OutOfStep(format!("no item {last} in {}", parent.join("."))))? =
                value;
            Ok(())
        }
        _ => Err(OutOfStep(format!("{} holds no fields", parent.join(".")))),
    }
}

fn object_at<'a>(
    doc: &'a mut Value,
    path: &[String],
) -> Result<&'a mut serde_json::Map<String, Value>, OutOfStep> {
    walk(doc, path)?
        .as_object_mut()
        .ok_or_else(|| OutOfStep(format!("{} is not an object", path.join("."))))
}

fn list_at<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Vec<Value>, OutOfStep> {
    walk(doc, path)?
        .as_array_mut()
        .ok_or_else(|| OutOfStep(format!("{} is not a list", path.join("."))))
}

/// A console's frame as bytes on the wire: JSON text (consoles send little).
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    serde_json::to_vec(frame).unwrap_or_default()
}

/// Reads a JSON frame sent as text.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("bad frame: {e}"))
}

/// Largest frame read (a snapshot is far smaller).
const MAX_FRAME: usize = 64 << 20;

/// The engine's side of one connection's compression: every frame is JSON deflated in
/// one stream kept for the connection's life (each frame flushed, so it reads alone on
/// arrival), so what repeats from frame to frame — field names, an audit entry's
/// shape — costs a few bytes after its first time.
pub struct Packer {
    z: flate2::Compress,
}

impl Default for Packer {
    fn default() -> Self {
        Packer {
            z: flate2::Compress::new(flate2::Compression::best(), false),
        }
    }
}

impl Packer {
    /// `frame` as the bytes of one binary WebSocket frame.
    pub fn pack<T: Serialize>(&mut self, frame: &T) -> Result<Vec<u8>, String> {
        let json = serde_json::to_vec(frame).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(json.len() / 4 + 64);
        let before = self.z.total_in();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let taken = (self.z.total_in() - before) as usize;
            self.z
                .compress_vec(&json[taken..], &mut out, flate2::FlushCompress::Sync)
                .map_err(|e| e.to_string())?;
            // Flushed once all is taken and the output had room to spare.
            if (self.z.total_in() - before) as usize == json.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The console's side of [`Packer`]: one stream for the connection's life.
pub struct Unpacker {
    z: flate2::Decompress,
}

impl Default for Unpacker {
    fn default() -> Self {
        Unpacker {
            z: flate2::Decompress::new(false),
        }
    }
}

impl Unpacker {
    /// Reads one binary frame [`Packer::pack`] wrote.
    pub fn unpack<T: serde::de::DeserializeOwned>(&mut self, bytes: &[u8]) -> Result<T, String> {
        let mut json = Vec::with_capacity(bytes.len() * 4 + 64);
        let before = self.z.total_in();
        loop {
            if json.capacity() - json.len() < 64 {
                json.reserve(json.capacity().max(256));
            }
            let taken = (self.z.total_in() - before) as usize;
            self.z
                .decompress_vec(&bytes[taken..], &mut json, flate2::FlushDecompress::Sync)
                .map_err(|e| format!("bad compressed frame: {e}"))?;
            if (self.z.total_in() - before) as usize == bytes.len() && json.len() < json.capacity()
            {
                break;
            }
            if json.len() > MAX_FRAME {
                return Err("compressed frame larger than 64 MiB".into());
            }
        }
        decode(&json)
    }
}

/// The error a console's command gets when the connection drops before its reply:
/// the engine may or may not have carried it out.
pub fn lost_reply() -> CommandError {
    CommandError::unavailable(
        "the connection to the engine dropped before its reply: the command may or may \
         not have been carried out (see the Events screen)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(old: &Value, new: &Value) -> Vec<Change> {
        let changes = diff(old, new);
        let mut doc = old.clone();
        apply(&mut doc, &changes).unwrap();
        assert_eq!(&doc, new, "changes {changes:?}");
        changes
    }

    #[test]
    fn a_series_that_moved_one_second_sends_one_value() {
        let old = json!({"s": [1, 2, 3, 4, 5], "n": 1});
        let new = json!({"s": [2, 3, 4, 5, 6], "n": 1});
        let c = round_trip(&old, &new);
        assert_eq!(
            c,
            [Change::Push {
                path: vec!["s".into()],
                drop: 1,
                cut: 0,
                items: vec![json!(6)]
            }]
        );
    }

    #[test]
    fn a_window_whose_newest_bucket_grew_sends_the_bucket_and_the_new_one() {
        let old = json!({"h1": [0, 0, 0, 0, 7]});
        let new = json!({"h1": [0, 0, 0, 9, 1]});
        let c = round_trip(&old, &new);
        assert!(
            matches!(&c[..], [Change::Push { items, .. }] if *items == [json!(9), json!(1)]),
            "{c:?}"
        );
    }

    #[test]
    fn new_entries_on_top_of_a_trail_send_only_them() {
        let old = json!({"audit": [{"id": 3}, {"id": 2}, {"id": 1}]});
        let new = json!({"audit": [{"id": 5}, {"id": 4}, {"id": 3}]});
        let c = round_trip(&old, &new);
        assert_eq!(
            c,
            [Change::Unshift {
                path: vec!["audit".into()],
                len: 3,
                items: vec![json!({"id": 5}), json!({"id": 4})]
            }]
        );
    }

    #[test]
    fn records_in_a_list_that_kept_its_places_are_diffed_item_by_item() {
        let old =
            json!({"charts": [{"name": "a", "m1": [1, 2, 3]}, {"name": "b", "m1": [0, 0, 0]}]});
        let new =
            json!({"charts": [{"name": "a", "m1": [2, 3, 4]}, {"name": "b", "m1": [0, 0, 0]}]});
        let c = round_trip(&old, &new);
        assert_eq!(
            c,
            [Change::Push {
                path: vec!["charts".into(), "0".into(), "m1".into()],
                drop: 1,
                cut: 0,
                items: vec![json!(4)]
            }]
        );
        let renamed =
            json!({"charts": [{"name": "z", "m1": [2, 3, 4]}, {"name": "b", "m1": [0, 0, 0]}]});
        round_trip(&new, &renamed);
    }

    #[test]
    fn counters_of_records_whose_first_is_unchanged_are_sent_alone() {
        // The downstreams: the first unchanged made the list look like a window that
        // kept its front, and the others were sent whole.
        let rec = |name: &str, calls: u64| {
            json!({"name": name, "breaker": {"state": "closed", "calls": calls},
                   "limiter": {"granted": calls, "in_flight": 0}, "p50_ms": 12.5})
        };
        let old =
            json!({"downstreams": [rec("stripe", 5), rec("quickbooks", 100), rec("alegra", 7)]});
        let new =
            json!({"downstreams": [rec("stripe", 5), rec("quickbooks", 104), rec("alegra", 7)]});
        let c = round_trip(&old, &new);
        let paths: Vec<String> = c
            .iter()
            .map(|c| match c {
                Change::Set { path, .. } => path.join("."),
                other => panic!("only counters set: {other:?}"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                "downstreams.1.breaker.calls",
                "downstreams.1.limiter.granted"
            ]
        );
    }

    #[test]
    fn what_is_not_shown_is_not_sent() {
        let snapshot = json!({
            "audit": [{"id": 1}], "profile": [{"op": "x"}], "downstreams": [{"name": "a"}],
            "telemetry": {"charts": [{"name": "c"}], "cache": {"entries": 3}},
            "catalog": {"paused": false}
        });
        let mut v = snapshot.clone();
        Shown::default().strip(&mut v);
        assert_eq!(
            v,
            json!({"audit": [], "profile": [], "downstreams": [],
                   "telemetry": {"charts": [], "cache": {"entries": 3}},
                   "catalog": {"paused": false}})
        );
        let mut v = snapshot.clone();
        Shown {
            audit: true,
            charts: true,
            downstreams: true,
            reconciliation: true,
        }
        .strip(&mut v);
        // No console shows the profile (it is for the API and `status`).
        assert_eq!(v["profile"], json!([]));
        assert_eq!(v["downstreams"], snapshot["downstreams"]);
        assert_eq!(v["audit"], snapshot["audit"]);
        assert_eq!(v["telemetry"], snapshot["telemetry"]);
    }

    #[test]
    fn fields_set_removed_and_nulled_round_trip() {
        let old = json!({"a": {"b": 1, "c": null, "gone": true}, "l": [1, 2], "x": "s"});
        let new = json!({"a": {"b": 2, "c": 5, "new": [1]}, "l": [9], "x": null});
        round_trip(&old, &new);
        assert!(diff(&old, &old).is_empty(), "nothing changed, nothing sent");
    }

    /// Random documents and random edits (a tiny LCG: the same cases every run).
    #[test]
    fn any_edit_round_trips() {
        let mut seed = 0x5eed_u64;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        for _ in 0..500 {
            let len = next(6) as usize;
            let list: Vec<Value> = (0..len).map(|_| json!(next(4))).collect();
            let old = json!({"l": list, "o": {"k": next(3)}, "v": next(2)});
            let mut new = old.clone();
            match next(6) {
                0 => new["l"].as_array_mut().unwrap().push(json!(next(4))),
                1 => {
                    let l = new["l"].as_array_mut().unwrap();
                    if !l.is_empty() {
                        l.remove(0);
                    }
                }
                2 => new["l"].as_array_mut().unwrap().insert(0, json!(next(4))),
                3 => new["o"]["k"] = json!(next(3)),
                4 => {
                    let l = new["l"].as_array_mut().unwrap();
                    if let Some(last) = l.last_mut() {
                        *last = json!(next(4));
                    }
                }
                _ => new["v"] = Value::Null,
            }
            round_trip(&old, &new);
        }
    }

    #[test]
    fn a_delta_for_another_document_is_out_of_step() {
        let mut doc = json!({"a": 1});
        let c = [Change::Push {
            path: vec!["a".into()],
            drop: 0,
            cut: 0,
            items: vec![],
        }];
        assert!(apply(&mut doc, &c).is_err());
        let c = [Change::Set {
            path: vec!["no".into(), "x".into()],
            value: json!(1),
        }];
        assert!(apply(&mut doc, &c).is_err());
    }

    #[test]
    fn a_compressed_stream_reads_frame_by_frame_and_repeats_cost_little() {
        let (mut packer, mut unpacker) = (Packer::default(), Unpacker::default());
        let entry = |n: u64| ServerFrame::Delta {
            seq: n,
            changes: vec![Change::Unshift {
                path: vec!["audit".into()],
                len: 500,
                items: vec![json!({"id": n, "kind": "item", "actor": "engine",
                    "message": format!("updated Item {n} \"Plan Básico #{n}\"")})],
            }],
        };
        let first = packer.pack(&entry(1)).unwrap();
        assert_eq!(unpacker.unpack::<ServerFrame>(&first).unwrap(), entry(1));
        let mut later = 0;
        for n in 2..50 {
            let bytes = packer.pack(&entry(n)).unwrap();
            later = bytes.len();
            assert_eq!(unpacker.unpack::<ServerFrame>(&bytes).unwrap(), entry(n));
        }
        let plain = encode(&entry(49)).len();
        assert!(
            later * 3 < plain,
            "{later} bytes compressed vs {plain} plain"
        );
        let big = ServerFrame::Refused {
            message: "x".repeat(200_000),
        };
        let bytes = packer.pack(&big).unwrap();
        assert!(bytes.len() < 2_000);
        assert_eq!(unpacker.unpack::<ServerFrame>(&bytes).unwrap(), big);
        assert!(
            Unpacker::default().unpack::<ServerFrame>(&bytes).is_err(),
            "mid-stream alone"
        );
    }

    #[test]
    fn versions_refuse_each_other_saying_who_upgrades() {
        assert!(check_version(PROTOCOL_VERSION, "console", "engine").is_ok());
        let old = check_version(PROTOCOL_VERSION - 1, "console", "engine").unwrap_err();
        assert!(old.contains("upgrade the console's syncctl"), "{old}");
        // A newer console, refused by the engine: the engine is the one to upgrade.
        let new = check_version(PROTOCOL_VERSION + 1, "console", "engine").unwrap_err();
        assert!(new.contains("upgrade the engine's syncctl"), "{new}");
        // A newer engine, refused by the console.
        let new = check_version(PROTOCOL_VERSION + 1, "engine", "console").unwrap_err();
        assert!(new.contains("upgrade the console's syncctl"), "{new}");
    }
}
