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
//!    │◀─ Event {event} / Consoles {consoles} ─────│  pushed
//!    │◀▶ Ping / Pong ─────────────────────────────│  heartbeat, either way
//! ```
//!
//! Frames are JSON text; a frame larger than [`COMPRESS_OVER`] bytes goes as a binary
//! frame holding the same JSON, deflated (the first snapshot, a burst of changes).
//! Versioned: both sides send [`PROTOCOL_VERSION`] and refuse a different one with a
//! message that says which side to upgrade.
//!
//! Deltas are computed on the snapshot's JSON form ([`diff`], [`apply`]): objects are
//! compared field by field, a list that moved as a window (a series that gained its
//! newest second and lost its oldest, an audit trail with new entries on top) is sent
//! as the new items only, anything else whole. Applying every delta in order to the
//! first snapshot gives exactly the engine's snapshot (`seq` checks the order).

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

/// Frames larger than this many bytes of JSON are sent deflated, as binary frames.
pub const COMPRESS_OVER: usize = 4096;

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
}

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

/// Whether a console of protocol `theirs` may talk to this side; the message says who
/// should upgrade.
pub fn check_version(theirs: u32, them: &str) -> Result<(), String> {
    match theirs.cmp(&PROTOCOL_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(format!(
            "the {them} speaks console protocol {theirs}, this side {PROTOCOL_VERSION}: \
             upgrade the {them}'s syncctl"
        )),
        std::cmp::Ordering::Greater => Err(format!(
            "the {them} speaks console protocol {theirs}, this side {PROTOCOL_VERSION}: \
             upgrade this syncctl"
        )),
    }
}

/// One change of a delta. `path` names object fields from the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// The value at `path` is now `value` (set or replaced whole).
    Set { path: Vec<String>, value: Value },
    /// A field is gone.
    Remove { path: Vec<String> },
    /// The list at `path` lost `drop` items at its front and gained `items` at its end.
    Push {
        path: Vec<String>,
        drop: usize,
        items: Vec<Value>,
    },
    /// The list at `path` gained `items` at its front and was cut to `len` items.
    Unshift {
        path: Vec<String>,
        len: usize,
        items: Vec<Value>,
    },
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
        (Value::Array(a), Value::Array(b)) => out.push(list_change(path, a, b)),
        _ => out.push(Change::Set {
            path: path.clone(),
            value: new.clone(),
        }),
    }
}

/// The smallest of: the list as a window that moved forward (Push), as a stack with
/// new items on top (Unshift), or whole (Set).
fn list_change(path: &[String], a: &[Value], b: &[Value]) -> Change {
    // Push: b = a[drop..] + items, for the smallest drop that fits (only where a's item
    // equals b's first is a start worth checking).
    if let Some(first) = b.first() {
        for drop in (0..a.len()).filter(|&d| a[d] == *first) {
            let kept = &a[drop..];
            if kept.len() <= b.len() && b.starts_with(kept) {
                return Change::Push {
                    path: path.to_vec(),
                    drop,
                    items: b[kept.len()..].to_vec(),
                };
            }
        }
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
                Some((last, parent)) => {
                    object_at(doc, parent)?.insert(last.clone(), value.clone());
                }
            },
            Change::Remove { path } => {
                let (last, parent) = path
                    .split_last()
                    .ok_or_else(|| OutOfStep("remove of the root".into()))?;
                object_at(doc, parent)?.remove(last);
            }
            Change::Push { path, drop, items } => {
                let list = list_at(doc, path)?;
                if *drop > list.len() {
                    return Err(OutOfStep(format!("{}: drop past the end", path.join("."))));
                }
                list.drain(..*drop);
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

fn walk<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, OutOfStep> {
    let mut at = doc;
    for (n, k) in path.iter().enumerate() {
        at = at
            .get_mut(k.as_str())
            .ok_or_else(|| OutOfStep(format!("no {}", path[..=n].join("."))))?;
    }
    Ok(at)
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

/// A frame as bytes on the wire: JSON text, or deflated JSON when larger than
/// [`COMPRESS_OVER`] (`true`: binary).
pub fn encode<T: Serialize>(frame: &T) -> (Vec<u8>, bool) {
    let json = serde_json::to_vec(frame).unwrap_or_default();
    if json.len() <= COMPRESS_OVER {
        return (json, false);
    }
    use std::io::Write;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    match z.write_all(&json).and_then(|()| z.finish()) {
        Ok(packed) => (packed, true),
        Err(_) => (json, false),
    }
}

/// Reads a frame sent by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], binary: bool) -> Result<T, String> {
    if binary {
        use std::io::Read;
        let mut json = Vec::new();
        flate2::read::DeflateDecoder::new(bytes)
            // A frame is a snapshot at most: 64 MiB is far beyond any.
            .take(64 << 20)
            .read_to_end(&mut json)
            .map_err(|e| format!("bad compressed frame: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| format!("bad frame: {e}"))
    } else {
        serde_json::from_slice(bytes).map_err(|e| format!("bad frame: {e}"))
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
                items: vec![json!(6)]
            }]
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
            match next(5) {
                0 => new["l"].as_array_mut().unwrap().push(json!(next(4))),
                1 => {
                    let l = new["l"].as_array_mut().unwrap();
                    if !l.is_empty() {
                        l.remove(0);
                    }
                }
                2 => new["l"].as_array_mut().unwrap().insert(0, json!(next(4))),
                3 => new["o"]["k"] = json!(next(3)),
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
    fn large_frames_are_deflated_and_read_back() {
        let frame = ServerFrame::Snapshot {
            seq: 1,
            snapshot: Box::default(),
        };
        let (bytes, binary) = encode(&frame);
        assert!(!binary, "a small frame stays text");
        assert_eq!(decode::<ServerFrame>(&bytes, false).unwrap(), frame);
        let big = ServerFrame::Refused {
            message: "x".repeat(COMPRESS_OVER * 4),
        };
        let (bytes, binary) = encode(&big);
        assert!(binary && bytes.len() < COMPRESS_OVER);
        assert_eq!(decode::<ServerFrame>(&bytes, true).unwrap(), big);
    }

    #[test]
    fn versions_refuse_each_other_saying_who_upgrades() {
        assert!(check_version(PROTOCOL_VERSION, "console").is_ok());
        let old = check_version(PROTOCOL_VERSION - 1, "console").unwrap_err();
        assert!(old.contains("upgrade the console's syncctl"), "{old}");
        let new = check_version(PROTOCOL_VERSION + 1, "engine").unwrap_err();
        assert!(new.contains("upgrade this syncctl"), "{new}");
    }
}
