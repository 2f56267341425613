//! The incident bundle: one file an operator writes during an incident (the console's
//! `B`, `syncctl ctl bundle`) and a colleague opens later (`syncctl bundle show FILE`)
//! in the same screens, frozen. It holds the snapshot, the breaker transitions, the
//! alerts and anomalies with their series, the newest audit events and operator
//! actions, the config with every secret redacted, the version and the uptime.
//!
//! The engine builds it ([`Query::Bundle`](super::Query::Bundle)); whoever asked writes
//! it. On disk it is gzip-compressed JSON ([`Bundle::encode`]); [`Bundle::decode`] also
//! reads it uncompressed (a colleague may have unzipped it to read it with `jq`).
//! A bundle must never carry a secret: the engine redacts the config's secret keys and
//! then removes every secret value from every text of the bundle, wherever it appears.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::snapshot::{AuditEntry, Snapshot};

/// The bundle layout this version writes and reads.
pub const BUNDLE_FORMAT: u32 = 1;
/// Audit events (and, apart, operator actions and breaker transitions) a bundle holds
/// unless asked otherwise.
pub const BUNDLE_EVENTS: usize = 500;
/// The most audit events a bundle may be asked for.
pub const MAX_BUNDLE_EVENTS: usize = 5000;
/// What a redacted secret reads as in a bundle.
pub const REDACTED: &str = "[redacted]";
/// The largest bundle file `decode` reads once unzipped (a bundle is a few MB at most).
const MAX_DECODED: u64 = 256 << 20;

/// Everything an incident bundle holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    /// [`BUNDLE_FORMAT`] when written.
    pub format: u32,
    /// The engine's version (`syncctl 0.1.0`).
    pub version: String,
    /// When the bundle was taken, and when the engine started (ms since the epoch).
    pub written_ms: i64,
    pub started_ms: i64,
    pub uptime_secs: u64,
    /// Who asked for it (as the audit trail names them).
    pub taken_by: String,
    /// The engine's view as it was: its `audit` holds the newest events, the operator
    /// actions and the breaker transitions below (newest first, each once).
    pub snapshot: Snapshot,
    /// Circuit breaker transitions from the audit trail, newest first.
    pub transitions: Vec<AuditEntry>,
    /// Operators' actions from the audit trail, newest first.
    pub journal: Vec<AuditEntry>,
    /// The series behind each alert and anomaly, over the last hour.
    pub series: Vec<BundleSeries>,
    /// The config in force, as TOML, with every secret replaced by [`REDACTED`].
    pub config: String,
}

/// One metric's recent history in a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSeries {
    /// The series (`error_rate:quickbooks`, `queue:catalog`).
    pub name: String,
    /// Why it is here: the alerts and anomalies that watch it.
    pub watched_by: Vec<String>,
    /// Seconds per point; the last point ends at the bundle's `written_ms`.
    pub step_secs: u32,
    /// Oldest first; None where the metric had no value.
    pub points: Vec<Option<f64>>,
}

impl Bundle {
    /// The file name a bundle taken at `written_ms` gets by default:
    /// `syncctl-bundle-20261201T134900Z.json.gz`.
    pub fn file_name(written_ms: i64) -> String {
        // The journal's UTC time without its separators.
        let stamp = super::journal::utc_time(written_ms).replace(['-', ':'], "");
        format!("syncctl-bundle-{stamp}.json.gz")
    }

    /// The bundle as it is written to a file: gzip-compressed JSON.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let json =
            serde_json::to_vec(self).map_err(|e| format!("cannot encode the bundle: {e}"))?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&json)
            .and_then(|()| gz.finish())
            .map_err(|e| format!("cannot compress the bundle: {e}"))
    }

    /// A bundle from a file's bytes (gzip-compressed or plain JSON); the error says
    /// what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Bundle, String> {
        let json = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(bytes)
                .take(MAX_DECODED)
                .read_to_end(&mut out)
                .map_err(|e| format!("not a readable gzip file: {e}"))?;
            out
        } else {
            bytes.to_vec()
        };
        let value: serde_json::Value = serde_json::from_slice(&json)
            .map_err(|e| format!("not an incident bundle (not JSON: {e})"))?;
        let format = value.get("format").and_then(serde_json::Value::as_u64);
        match format {
            None => return Err("not an incident bundle (no \"format\" field)".into()),
            Some(f) if f != u64::from(BUNDLE_FORMAT) => {
                return Err(format!(
                    "an incident bundle of format {f}; this syncctl reads format {BUNDLE_FORMAT}"
                ));
            }
            Some(_) => {}
        }
        serde_json::from_value(value).map_err(|e| format!("not an incident bundle: {e}"))
    }

    /// One line about the bundle, for the console's header and flash line.
    pub fn describe(&self) -> String {
        format!(
            "{}, taken {} by {}, up {}",
            self.version,
            super::journal::utc_time(self.written_ms),
            self.taken_by,
            super::command::format_duration(self.uptime_secs)
        )
    }
}

/// Writes `bytes` to `path`, a file that must not exist yet (a bundle never replaces
/// another), readable by its owner only; the error names the file.
pub fn write_new(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!(
                "{} exists already; a bundle never replaces a file",
                path.display()
            )
        }
        _ => format!("cannot create {}: {e}", path.display()),
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bundle_file_is_named_by_its_utc_time() {
        // 2026-12-01T13:49:00Z
        assert_eq!(
            super::Bundle::file_name(1_796_132_940_000),
            "syncctl-bundle-20261201T134900Z.json.gz"
        );
    }
}
