//! The console binary in a pseudo-terminal: SIGTERM and SIGHUP drain the engine and
//! give the terminal back (cooked mode, main screen, cursor shown) with exit 0, and
//! Ctrl-C (a key in raw mode) asks like `q`, from anywhere, instead of being ignored.
//! Plain `syncctl` on the data dir of an engine that runs as a service attaches to it,
//! acts as its operator, and `q` detaches, leaving the engine running.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::Signal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_syncctl");
/// Leave the alternate screen; show the cursor.
const LEAVE_ALT: &[u8] = b"\x1b[?1049l";
const SHOW_CURSOR: &[u8] = b"\x1b[?25h";

struct Console {
    child: Child,
    master: std::fs::File,
    /// Our own handle on the terminal, to read its mode after the console is gone.
    slave: OwnedFd,
    output: Arc<Mutex<Vec<u8>>>,
    _dir: tempfile::TempDir,
}

fn openpty() -> (OwnedFd, OwnedFd) {
    let size = nix::pty::Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    (pty.master, pty.slave)
}

impl Console {
    /// `syncctl demo` on a fresh pseudo-terminal, on free ports.
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("demo.toml");
        std::fs::write(
            &config,
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[sandbox]\nlisten = \"127.0.0.1:0\"\nproducts = 20\nlatency_ms = 1\n",
        )
        .unwrap();
        let data = dir.path().join("data");
        let mut args = vec!["demo".into(), "--config".into(), config.into_os_string()];
        args.extend(["--data-dir".into(), data.into_os_string()]);
        let mut c = Self::spawn(&args, dir);
        c.wait_for_text("quit", 60);
        c
    }

    /// `syncctl ARGS…` on a fresh pseudo-terminal, with `dir` as its HOME.
    fn spawn(args: &[std::ffi::OsString], dir: tempfile::TempDir) -> Self {
        Self::spawn_with(args, dir, &[])
    }

    /// As [`Console::spawn`], with `env` set.
    fn spawn_with(
        args: &[std::ffi::OsString],
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Self {
        let (master, slave) = openpty();
        // A session of its own with this terminal as its controlling terminal, as a
        // login shell would give it: `setsid --ctty` (util-linux) execs the console in
        // place, so the child's pid is the console's.
        let mut cmd = Command::new("setsid");
        cmd.args(["--ctty", BIN])
            .args(args)
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_DATA_HOME", dir.path().join("xdg"))
            .env("TERM", "xterm-256color")
            .env_remove("SUDO_USER")
            .envs(env.iter().copied())
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let mut answer = master.try_clone().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends with EIO once every holder of the slave side is gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut out = sink.lock().unwrap();
                let start = out.len().saturating_sub(3);
                out.extend_from_slice(&buf[..n]);
                // Answer cursor-position queries as a terminal does.
                let asked = out[start..].windows(4).filter(|w| w == b"\x1b[6n").count();
                for _ in 0..asked {
                    let _ = answer.write_all(b"\x1b[1;1R");
                }
            }
        });
        Console {
            child,
            master,
            slave,
            output,
            _dir: dir,
        }
    }

    fn output_len(&self) -> usize {
        self.output.lock().unwrap().len()
    }

    /// Waits until what the console wrote since `from` contains `text` (a polled
    /// condition with a timeout).
    fn wait_for_text_after(&mut self, from: usize, text: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            {
                let out = self.output.lock().unwrap();
                let seen = String::from_utf8_lossy(&out[from.min(out.len())..]).into_owned();
                if seen.contains(text) {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    panic!("{text:?} never appeared; the console wrote:\n{seen}");
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                let out = String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned();
                panic!("the console exited ({status}) before showing {text:?}:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for_text(&mut self, text: &str, secs: u64) {
        self.wait_for_text_after(0, text, secs);
    }

    fn type_keys(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
        self.master.flush().unwrap();
    }

    fn signal(&self, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, sig).expect("kill");
    }

    /// The exit status, waiting at most `secs` (polled).
    fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the console did not exit within {secs} s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the terminal is back in cooked mode (line editing and echo on).
    fn terminal_is_cooked(&self) -> bool {
        use nix::sys::termios::LocalFlags;
        let t = nix::sys::termios::tcgetattr(&self.slave).expect("tcgetattr");
        t.local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO)
    }

    /// Everything written after the last time the console entered the alternate screen
    /// ends by leaving it and showing the cursor (nothing drawn after the restore).
    fn ends_restored(&self) -> bool {
        // The reader thread may still be draining the pty after the process exited:
        // what it wrote last arrives within moments.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let restored = {
                let out = self.output.lock().unwrap();
                find_last(&out, LEAVE_ALT).is_some_and(|at| {
                    let tail = &out[at..];
                    find_last(tail, SHOW_CURSOR).is_some() && !contains(tail, b"\x1b[?1049h")
                })
            };
            if restored || Instant::now() > deadline {
                return restored;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn a_signal_drains_and_restores_the_terminal(sig: Signal, name: &str) {
    let mut console = Console::start();
    assert!(
        !console.terminal_is_cooked(),
        "the console runs in raw mode"
    );
    let from = console.output_len();
    console.signal(sig);
    let status = console.wait_exit(60);
    assert_eq!(
        status.code(),
        Some(0),
        "{name}: drained and exited 0, not killed by the signal ({status})"
    );
    assert!(
        console.terminal_is_cooked(),
        "{name}: terminal left in raw mode"
    );
    assert!(
        console.ends_restored(),
        "{name}: no leave-alternate-screen / show-cursor at the end"
    );
    // The drain is logged (after a hangup there is no screen to say it on).
    let logged = files_under(&console._dir.path().join("data"))
        .iter()
        .any(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| t.contains(&format!("{name}: draining")))
        });
    assert!(logged, "{name}: the drain is in the log");
    if sig == Signal::SIGTERM {
        let tail = String::from_utf8_lossy(&console.output.lock().unwrap()[from..]).into_owned();
        assert!(
            tail.contains("draining"),
            "{name}: the console said it drains: {tail}"
        );
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn sigterm_drains_the_engine_and_gives_the_terminal_back() {
    a_signal_drains_and_restores_the_terminal(Signal::SIGTERM, "SIGTERM");
}

#[test]
fn sighup_drains_the_engine_and_gives_the_terminal_back() {
    a_signal_drains_and_restores_the_terminal(Signal::SIGHUP, "SIGHUP");
}

#[test]
fn ctrl_c_asks_like_q_even_from_a_prompt() {
    let mut console = Console::start();
    // On the main screen.
    let from = console.output_len();
    console.type_keys(b"\x03");
    console.wait_for_text_after(from, "Quit syncctl?", 10);
    // Cancel (Enter: focus is on Cancel), then from inside a prompt: Ctrl-C is not a
    // letter.
    console.type_keys(b"\r");
    console.type_keys(b"c");
    console.wait_for_text("invalidate cache", 10);
    let from = console.output_len();
    console.type_keys(b"\x03");
    console.wait_for_text_after(from, "Quit syncctl?", 10);
    // Confirm: drains and exits 0 with the terminal given back.
    console.type_keys(b"y");
    let status = console.wait_exit(60);
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(console.terminal_is_cooked());
    assert!(console.ends_restored());
}

#[test]
fn plain_syncctl_attaches_to_the_engine_of_its_data_dir_and_q_detaches() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("engine");
    let mut engine = common::running_engine(home.path(), &data);
    // The operator's shell: the same data dir, no config, SSH'd in.
    let console_home = tempfile::tempdir().unwrap();
    let args = ["--data-dir".into(), data.clone().into_os_string()];
    let mut console = Console::spawn_with(
        &args,
        console_home,
        &[
            ("USER", "ana"),
            ("SSH_CONNECTION", "10.1.2.3 50022 10.0.0.1 22"),
        ],
    );
    console.wait_for_text("ATTACHED", 30);
    console.wait_for_text("127.0.0.1:", 10);
    // An action from the attached console: the engine takes it, as ana from her address.
    let from = console.output_len();
    console.type_keys(b"p");
    console.wait_for_text_after(from, "paused", 10);
    let journal = Command::new(BIN)
        .args(["--data-dir"])
        .arg(&data)
        .args(["ctl", "journal", "--json"])
        .env("HOME", home.path())
        .output()
        .unwrap();
    let journal = String::from_utf8_lossy(&journal.stdout).into_owned();
    assert!(
        journal.contains("ana@10.1.2.3") && journal.contains("pause catalog"),
        "the pause is audited as ana from her SSH address: {journal}"
    );
    // `q` detaches at once (nothing to drain: the engine is not this console's) and
    // says so; the engine keeps running.
    console.type_keys(b"q");
    let status = console.wait_exit(30);
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(console.terminal_is_cooked());
    assert!(console.ends_restored());
    let out = String::from_utf8_lossy(&console.output.lock().unwrap()).into_owned();
    assert!(
        out.contains("detached from the engine") && out.contains("it keeps running"),
        "{out}"
    );
    assert!(
        engine.0.try_wait().unwrap().is_none(),
        "the engine still runs after the console detached"
    );
    assert!(data.join("control.json").exists());
    let _ = Command::new("kill").arg(engine.0.id().to_string()).status();
    let _ = engine.0.wait();
}

/// Begin and end of a synchronized update (DEC mode 2026).
const BEGIN_SYNC: &[u8] = b"\x1b[?2026h";
const END_SYNC: &[u8] = b"\x1b[?2026l";

/// `bytes` without its escape sequences (CSI `ESC [ … final`, and two-byte `ESC x`).
fn without_escapes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0x1b {
            if bytes.get(i + 1) == Some(&b'[') {
                i += 2;
                while i < bytes.len() && !(0x40..=0x7e).contains(&bytes[i]) {
                    i += 1;
                }
            } else {
                i += 1;
            }
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    out
}

/// Every frame the console draws is one synchronized update: what the binary writes
/// to its terminal, from the first frame to the restore, is begin … end pairs, never
/// nested, with nothing drawn between or around them (so SSH never shows a
/// half-drawn frame).
#[test]
fn every_frame_is_one_synchronized_update() {
    let mut console = Console::start();
    // Each screen in turn: a frame at once after each key.
    for key in [b"7", b"6", b"3", b"1"] {
        let from = console.output_len();
        console.type_keys(key);
        console.wait_for_text_after(from, "\x1b[?2026l", 10);
    }
    console.signal(Signal::SIGTERM);
    assert_eq!(console.wait_exit(60).code(), Some(0));
    let out = console.output.lock().unwrap().clone();
    let mut frames = 0;
    let mut at = 0;
    let mut outside = Vec::new();
    while let Some(begin) = find_from(&out, BEGIN_SYNC, at) {
        outside.extend_from_slice(&out[at..begin]);
        let end = find_from(&out, END_SYNC, begin).expect("every begin has its end");
        assert!(
            find_from(&out[..end], BEGIN_SYNC, begin + 1).is_none(),
            "a frame begins inside another at byte {begin}"
        );
        frames += 1;
        at = end + END_SYNC.len();
    }
    outside.extend_from_slice(&out[at..]);
    assert!(frames >= 5, "{frames} frames");
    let drawn = without_escapes(&outside);
    assert!(
        drawn.iter().all(u8::is_ascii_whitespace),
        "drawn outside a synchronized update: {:?}",
        String::from_utf8_lossy(&drawn)
    );
}

fn find_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}
