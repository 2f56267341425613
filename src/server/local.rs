//! Local access for the CLI on the same machine: while an engine serves, a control file
//! in its data dir (`control.json`, mode 0600, removed on exit) names its address and a
//! token made for this run. `syncctl` commands run on that data dir (e.g. `dian retry`)
//! act through the engine's command path with it, instead of writing the store under a
//! running engine; whoever can read the file can already read the store.
//!
//! The local token acts as an operator, and the caller names the person acting
//! (`X-Syncctl-Actor`, e.g. `ana@10.0.0.7`) so the audit trail reads the same whether the
//! engine or the store took the command.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// The control file's name, in the data dir.
pub const CONTROL_FILE: &str = "control.json";
/// The header a local caller names its person with.
pub const ACTOR_HEADER: &str = "x-syncctl-actor";

/// What the control file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Control {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub token: String,
    pub pid: u32,
}

/// The control file of a serving engine; removed when dropped.
pub struct LocalAccess {
    path: PathBuf,
    token: Secret,
}

impl LocalAccess {
    /// Writes the control file for an engine serving on `addr` (a wildcard address is
    /// reached on loopback).
    pub fn create(data_dir: &Path, addr: SocketAddr) -> std::io::Result<Self> {
        let token = Secret::new(random_hex(24)?);
        let host = match addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let control = Control {
            url: format!("http://{host}:{}", addr.port()),
            token: token.expose().to_owned(),
            pid: std::process::id(),
        };
        let path = data_dir.join(CONTROL_FILE);
        let tmp = data_dir.join(format!("{CONTROL_FILE}.tmp"));
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp)?;
            f.write_all(
                serde_json::to_string_pretty(&control)
                    .map_err(std::io::Error::other)?
                    .as_bytes(),
            )?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        Ok(Self { path, token })
    }

    pub fn token(&self) -> &Secret {
        &self.token
    }
}

impl Drop for LocalAccess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The control file of the engine serving `data_dir`, if one is there and readable.
pub fn read(data_dir: &Path) -> Option<Control> {
    let text = std::fs::read_to_string(data_dir.join(CONTROL_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// A person's name as a local caller may give it: printable, at most 100 characters.
pub fn actor_from_header(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty() && v.len() <= 100 && v.chars().all(|c| !c.is_control())).then(|| v.to_owned())
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_file_is_private_and_goes_with_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "0.0.0.0:9870".parse().unwrap();
        let access = LocalAccess::create(dir.path(), addr).unwrap();
        let c = read(dir.path()).unwrap();
        assert_eq!(c.url, "http://127.0.0.1:9870");
        assert_eq!(c.token, access.token().expose());
        assert_eq!(c.token.len(), 48);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CONTROL_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(access);
        assert!(read(dir.path()).is_none());
    }

    #[test]
    fn a_local_caller_names_a_printable_person() {
        assert_eq!(
            actor_from_header(" ana@10.0.0.7 ").as_deref(),
            Some("ana@10.0.0.7")
        );
        assert!(actor_from_header("").is_none());
        assert!(actor_from_header("a\nb").is_none());
        assert!(actor_from_header(&"x".repeat(101)).is_none());
    }
}
