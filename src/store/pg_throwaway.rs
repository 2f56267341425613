//! A throwaway PostgreSQL server: `initdb` into a temporary dir, `postgres` on loopback
//! on a free port (its unix socket in that dir too), ready once a connection succeeds,
//! stopped and removed when dropped. For the tests (tests/common/pg.rs shares one among
//! a test binary's tests) and `syncctl bench scale`. Not for keeping data: fsync is off.
//!
//! Root cannot run `initdb`/`postgres`: as root the server runs as the `postgres` user
//! (or `nobody`), owning the temporary dir.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running server. Dropping the last handle stops it and removes its files.
pub struct Postgres {
    child: Mutex<Child>,
    port: u16,
    dir: tempfile::TempDir,
    databases: AtomicU32,
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
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name).then(|| (f[2].parse().ok(), f[3].parse().ok()))
        })
    };
    match user("postgres").or_else(|| user("nobody")) {
        Some((Some(uid), Some(gid))) => Ok(Some((uid, gid))),
        _ => bail!(
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
fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

impl Postgres {
    /// Starts a server with the `initdb` and `postgres` of `bin` (see [`find_bin_dir`]).
    pub fn start(bin: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("syncctl-pg-")
            .tempdir()
            .context("a temporary dir for PostgreSQL")?;
        let user = run_as()?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("giving the temporary dir to the PostgreSQL user")?;
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
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A port free when looked at may be taken before the server binds it: try again.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port().context("a free loopback port")?;
            let log_path = dir.path().join(format!("postgres-{port}.log"));
            let log = std::fs::File::create(&log_path).context("the server's log file")?;
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
                .stdout(log.try_clone().context("the log file")?)
                .stderr(log)
                .spawn()
                .context("starting postgres")?;
            if wait_ready(&mut child, port) {
                return Ok(Self {
                    child: Mutex::new(child),
                    port,
                    dir,
                    databases: AtomicU32::new(0),
                });
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        bail!("postgres did not start; its log:\n{last_log}");
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

    /// Creates an empty database (of one test, one run); its connection URL.
    pub fn database(&self) -> anyhow::Result<String> {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        let admin = self.admin_url();
        let sql = format!("CREATE DATABASE {name}");
        on_own_runtime(async move {
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .context("connecting to the throwaway server")?;
            let conn = tokio::spawn(conn);
            client
                .batch_execute(&sql)
                .await
                .context("CREATE DATABASE")?;
            drop(client);
            let _ = conn.await;
            anyhow::Ok(())
        })??;
        Ok(format!("postgres://syncctl@127.0.0.1:{}/{name}", self.port))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        // SIGQUIT: immediate shutdown (the data is thrown away anyway).
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
        }
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
        if ok.unwrap_or(false) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs `f` to completion on a runtime of its own, in a thread of its own (callers may
/// be inside a runtime, where blocking on another one is refused).
fn on_own_runtime<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime")?
            .block_on(f))
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A loopback proxy in front of the server on `port` that counts what clients send:
/// each read from a client is one flight of messages, i.e. one round trip of a
/// request/answer protocol whose client waits for each answer. Its port, and the count.
pub async fn counting_proxy(port: u16) -> std::io::Result<(u16, std::sync::Arc<AtomicU64>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?.port();
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                continue; // the client sees its connection closed
            };
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
    Ok((local, sent))
}
