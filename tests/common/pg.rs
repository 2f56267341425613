//! A throwaway PostgreSQL server for tests: `initdb` into a temporary dir, `postgres` on
//! loopback on a free port (its unix socket in that dir too), ready once a connection
//! succeeds, stopped and removed when the last test holding it lets go (on a panic too:
//! the guard drops while unwinding). Tests of one binary share one server while they
//! overlap, each on its own fresh database.
//!
//! Root cannot run `initdb`/`postgres`: as root the server runs as the `postgres` user
//! (or `nobody`), owning the temporary dir. With no PostgreSQL installed a test is
//! skipped with a loud line, unless `SYNCCTL_REQUIRE_POSTGRES=1` (CI), where it fails.
//!
//! Only std, the crate's dependencies and its dev-dependencies: a unit test inside the
//! crate can take this same file with `#[path = "../../tests/common/pg.rs"]`.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A running server. Dropping the last handle stops it and removes its files.
pub struct Postgres {
    child: Mutex<Child>,
    port: u16,
    dir: tempfile::TempDir,
    databases: AtomicU32,
}

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
    let Some(bin) = find_bin_dir() else {
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
    Some(Postgres::start(&bin))
}

/// Where `initdb` and `postgres` are: beside `initdb` on PATH, else the newest
/// `/usr/lib/postgresql/N/bin` (Debian keeps them off PATH).
pub fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The user to run the server as: none when not root, else `postgres`, else `nobody`.
fn run_as() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name).then(|| (f[2].parse().ok(), f[3].parse().ok()))
        })
    };
    match user("postgres").or_else(|| user("nobody")) {
        Some((Some(uid), Some(gid))) => Some((uid, gid)),
        _ => panic!(
            "running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as"
        ),
    }
}

fn command(program: &Path, dir: &Path, user: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    c.current_dir(dir).env_remove("PGDATA").stdin(Stdio::null());
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
    c
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Postgres {
    fn start(bin: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("syncctl-pg-")
            .tempdir()
            .expect("a temporary dir for PostgreSQL");
        let user = run_as();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("giving the temporary dir to the PostgreSQL user");
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"), dir.path(), user)
            .args([
                "-A",
                "trust",
                "-U",
                "syncctl",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A port free when looked at may be taken before the server binds it: try again.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log_path = dir.path().join(format!("postgres-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("the server's log file");
            if let Some((uid, gid)) = user {
                let _ = std::os::unix::fs::chown(&log_path, Some(uid), Some(gid));
            }
            let mut child = command(&bin.join("postgres"), dir.path(), user)
                .arg("-D")
                .arg(&data)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args([
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ])
                .args(["-c", "max_connections=200", "-c", "shared_buffers=16MB"])
                .stdout(log.try_clone().expect("the log file"))
                .stderr(log)
                .spawn()
                .expect("starting postgres");
            if wait_ready(&mut child, port) {
                return Self {
                    child: Mutex::new(child),
                    port,
                    dir,
                    databases: AtomicU32::new(0),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("postgres did not start; its log:\n{last_log}");
    }

    /// A connection URL to the server's `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://syncctl@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary dir holding the cluster, its socket and its log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates an empty database of its own for one test; its connection URL.
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        let admin = self.admin_url();
        let sql = format!("CREATE DATABASE {name}");
        on_own_runtime(async move {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .expect("connecting to the test server");
            let conn = tokio::spawn(conn);
            client.batch_execute(&sql).await.expect("CREATE DATABASE");
            drop(client);
            let _ = conn.await;
        });
        format!("postgres://syncctl@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        // SIGQUIT: immediate shutdown (the data is thrown away anyway).
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return; // the TempDir's drop removes the files
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls a real connection until the server answers one (or exits, or 60 s pass).
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let url = format!("postgres://syncctl@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let url = url.clone();
        let ok = on_own_runtime(async move {
            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    let conn = tokio::spawn(conn);
                    let ok = client.simple_query("SELECT 1").await.is_ok();
                    drop(client);
                    let _ = conn.await;
                    ok
                }
                Err(_) => false,
            }
        });
        if ok {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs `f` to completion on a runtime of its own, in a thread of its own (callers may
/// be inside a test's runtime, where blocking on another one is refused).
fn on_own_runtime<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A loopback proxy in front of the server that counts what clients send: each read
/// from a client is one flight of messages, i.e. one round trip of a request/answer
/// protocol whose client waits for each answer.
pub async fn counting_proxy(port: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap().port();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    (local, sent)
}
