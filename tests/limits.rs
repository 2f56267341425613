//! Quota and failure limits over real HTTP (issue 14 points 3–6, issue 18 points 1–2):
//! a restart costs no 429, a total outage opens the breaker within a second, the
//! auto-scaler holds when the quota is the bottleneck, a limit set above the quota
//! learns the ceiling, hanging requests cost a fraction of a second, and work resumes
//! within the half-open probe interval after an outage.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use syncctl::resilience::State;

const BIN: &str = env!("CARGO_BIN_EXE_syncctl");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, whatever happens.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Proc {
    let log = std::env::var("LIMITS_LOG").ok();
    let err = match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    Proc(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    )
}

async fn stats(base: &str) -> Option<Value> {
    reqwest::get(format!("{base}/_sandbox/stats"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn qb(s: &Value, key: &str) -> u64 {
    s["quickbooks"][key].as_u64().unwrap()
}

fn qb_view(engine: &syncctl::engine::EngineHandle) -> syncctl::resilience::DownstreamView {
    engine
        .snapshot
        .borrow()
        .downstreams
        .iter()
        .find(|d| d.name == "quickbooks")
        .cloned()
        .expect("a quickbooks policy")
}

/// Issue 14 point 3 / issue 18 point 2: an engine `kill -9`ed in the middle of a run at
/// the full QuickBooks quota, restarted at once on the same data dir, sends nothing the
/// quota cannot take (no 429) and creates Items again within two seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_right_after_a_full_rate_run_gets_no_429_and_works_within_two_seconds() {
    syncctl::connectors::install_crypto();
    let root = tempfile::tempdir().unwrap();
    let (sandbox_dir, engine_dir) = (root.path().join("sandbox"), root.path().join("engine"));
    let (sp, ep) = (free_port(), free_port());
    let sandbox_addr = format!("127.0.0.1:{sp}");
    let base = format!("http://{sandbox_addr}");
    // QuickBooks' quota (500/min, 10 in flight) and a 60 s pushback, as they are.
    let sandbox_cfg = root.path().join("sandbox.toml");
    std::fs::write(
        &sandbox_cfg,
        "[sandbox]\nlatency_ms = 20\nchange_interval_ms = 0\n\n\
         [sandbox.faults.quickbooks]\nrate_limit_per_min = 500\nmax_concurrent = 10\n",
    )
    .unwrap();
    let common_args = [
        "--config",
        sandbox_cfg.to_str().unwrap(),
        "--data-dir",
        sandbox_dir.to_str().unwrap(),
        "--products",
        "400",
        "--seed",
        "31",
    ];
    let printed = Command::new(BIN)
        .args(["sandbox", "--listen", &sandbox_addr, "--print-config"])
        .args(common_args)
        .output()
        .unwrap();
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let engine_cfg = root.path().join("engine.toml");
    {
        let mut f = std::fs::File::create(&engine_cfg).unwrap();
        f.write_all(&printed.stdout).unwrap();
        write!(
            f,
            "\n[server]\nlisten = \"127.0.0.1:{ep}\"\n\n[catalog]\nreconcile_interval_secs = 3600\n"
        )
        .unwrap();
    }
    let mut sandbox_args = vec!["sandbox", "--listen", &sandbox_addr];
    sandbox_args.extend(common_args);
    let _sandbox = spawn(&sandbox_args);
    common::eventually(30, "the sandbox to answer", || stats(&base)).await;
    let run = [
        "run",
        "--config",
        engine_cfg.to_str().unwrap(),
        "--data-dir",
        engine_dir.to_str().unwrap(),
    ];
    let mut stalls = vec![];
    let mut throttled_after = 0;
    let mut engine = spawn(&run);
    for cycle in 0..2u64 {
        // Let it run at the quota for a while (past its burst)…
        let target = 40 * (cycle + 1);
        common::eventually(90, "Items at the quota", || async {
            let s = stats(&base).await?;
            (qb(&s, "items_total") >= target).then_some(())
        })
        .await;
        let before = stats(&base).await.unwrap();
        engine.0.kill().unwrap(); // SIGKILL: no drain, nothing saved on the way out
        engine.0.wait().unwrap();
        let restarted = Instant::now();
        engine = spawn(&run);
        let (items0, throttled0) = (qb(&before, "items_total"), qb(&before, "throttled"));
        let first = common::eventually(60, "Items after the restart", || async {
            let s = stats(&base).await?;
            (qb(&s, "items_total") > items0 + 2).then(|| restarted.elapsed())
        })
        .await;
        // Ten more seconds at the quota: nothing throttled.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let after = stats(&base).await.unwrap();
        throttled_after += qb(&after, "throttled") - throttled0;
        stalls.push(first);
        println!(
            "restart {}: Items again {:.2} s after the restart; {} throttled since",
            cycle + 1,
            first.as_secs_f64(),
            qb(&after, "throttled") - throttled0
        );
    }
    assert_eq!(throttled_after, 0, "429s after a restart");
    for s in &stalls {
        assert!(*s <= Duration::from_secs(2), "stalled {s:?} after a restart");
    }
}

/// A service's answer as the resilience layer sees it.
#[derive(Debug)]
enum Answer {
    Unavailable,
    Refused,
}

impl syncctl::resilience::Classify for Answer {
    fn class(&self) -> syncctl::resilience::Class {
        match self {
            Answer::Unavailable => syncctl::resilience::Class::Failure,
            Answer::Refused => syncctl::resilience::Class::Ignored,
        }
    }
    fn retryable(&self) -> bool {
        matches!(self, Answer::Unavailable)
    }
    fn rejected(_: syncctl::resilience::Rejected) -> Self {
        Answer::Refused
    }
}

/// Issue 14 point 4, on the test clock: QuickBooks' policy as the engine builds it by
/// default (500/min, 10 in flight, its breaker), ten workers keeping it at the full
/// rate for 30 s (the breaker's window full of successes), then a total outage: the
/// circuit opens within a second, after a handful of requests.
#[tokio::test(start_paused = true)]
async fn a_total_outage_opens_the_breaker_within_a_second_at_full_rate() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use syncctl::resilience::{Downstream, SharedClock};

    let cfg = syncctl::config::Config::default()
        .downstream("quickbooks")
        .unwrap();
    let d = Downstream::new("quickbooks", cfg, SharedClock::tokio());
    let down = Arc::new(AtomicBool::new(false));
    let reached_dead = Arc::new(AtomicU64::new(0));
    let mut workers = vec![];
    for _ in 0..10 {
        let (d, down, reached) = (d.clone(), down.clone(), reached_dead.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let r: Result<(), Answer> = d
                    .call(true, || async {
                        if down.load(Ordering::SeqCst) {
                            reached.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            Err(Answer::Unavailable)
                        } else {
                            tokio::time::sleep(Duration::from_millis(120)).await;
                            Ok(())
                        }
                    })
                    .await;
                if matches!(r, Err(Answer::Refused)) {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let v = d.view();
    assert!(v.successes >= 240, "at the full rate: {} calls in 30 s", v.successes);
    down.store(true, Ordering::SeqCst);
    let outage = tokio::time::Instant::now();
    while d.breaker.state() != State::Open {
        assert!(
            outage.elapsed() < Duration::from_secs(30),
            "not open after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = outage.elapsed();
    let reached = reached_dead.load(Ordering::SeqCst);
    println!(
        "outage at full rate: OPEN after {} ms, {reached} requests reached the dead service; {}",
        took.as_millis(),
        d.breaker.transitions().last().unwrap().reason
    );
    for w in workers {
        w.abort();
    }
    assert!(took <= Duration::from_secs(1), "opened after {took:?}");
    assert!(reached <= 10, "{reached} requests reached the dead service");
}
