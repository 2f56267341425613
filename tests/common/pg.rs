//! The throwaway PostgreSQL server of the tests (`syncctl::store::pg_throwaway`): tests
//! of one binary share one server while they overlap, each on its own fresh database;
//! it is stopped and removed when the last test holding it lets go (on a panic too: the
//! guard drops while unwinding).
//!
//! With no PostgreSQL installed a test is skipped with a loud line, unless
//! `SYNCCTL_REQUIRE_POSTGRES=1` (CI), where it fails.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use syncctl::store::pg_throwaway;

/// A running server. Dropping the last handle stops it and removes its files.
pub struct Postgres(pg_throwaway::Postgres);

/// The server the running tests share (none while no test holds it).
static SHARED: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());

/// The shared server, started if no test holds one; `None` (after a loud line) when
/// PostgreSQL is not installed and not required.
pub fn server() -> Option<Arc<Postgres>> {
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pg) = shared.upgrade() {
        return Some(pg);
    }
    let pg = Arc::new(own()?);
    *shared = Arc::downgrade(&pg);
    Some(pg)
}

/// A server of the caller's own (not shared); `None` as for [`server`].
pub fn own() -> Option<Postgres> {
    let Some(bin) = pg_throwaway::find_bin_dir() else {
        let required = std::env::var("SYNCCTL_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "SYNCCTL_REQUIRE_POSTGRES=1 but PostgreSQL's initdb was found neither on PATH \
             nor in /usr/lib/postgresql/*/bin: install the `postgresql` package"
        );
        eprintln!(
            "\n##### SKIPPED: PostgreSQL is not installed (no initdb on PATH or in \
             /usr/lib/postgresql/*/bin); the Postgres half of this test did not run. \
             Set SYNCCTL_REQUIRE_POSTGRES=1 to make this a failure. #####\n"
        );
        return None;
    };
    Some(Postgres(pg_throwaway::Postgres::start(&bin).unwrap()))
}

impl Postgres {
    /// A connection URL to the server's `postgres` database.
    pub fn admin_url(&self) -> String {
        self.0.admin_url()
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// The temporary dir holding the cluster, its socket and its log.
    pub fn dir(&self) -> &Path {
        self.0.dir()
    }

    /// Creates an empty database of its own for one test; its connection URL.
    pub fn database(&self) -> String {
        self.0.database().unwrap()
    }
}

/// A loopback proxy in front of the server that counts the round trips clients make
/// (see [`pg_throwaway::counting_proxy`]).
pub async fn counting_proxy(port: u16) -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    pg_throwaway::counting_proxy(port).await.unwrap()
}
