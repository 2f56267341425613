//! A real `kill -9` of the engine process mid-sync, then a restart: the sync resumes
//! from its cursor (it does not list again from the start), and ends with exactly one
//! Item per product. The sandbox runs as its own process, as the real services would.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Reaped, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_syncctl");

fn spawn(args: &[&str]) -> Reaped {
    Reaped(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn stats(base: &str) -> Option<serde_json::Value> {
    reqwest::get(format!("{base}/_sandbox/stats"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn health(engine: &str) -> Option<serde_json::Value> {
    reqwest::get(format!("{engine}/health"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_mid_sync_resumes_from_its_cursor_without_duplicates() {
    syncctl::connectors::install_crypto();
    let products = 2000u64;
    let root = tempfile::tempdir().unwrap();
    let (sandbox_dir, engine_dir) = (root.path().join("sandbox"), root.path().join("engine"));
    let (sp, ep) = (free_port(), free_port());
    let sandbox_addr = format!("127.0.0.1:{sp}");
    let base = format!("http://{sandbox_addr}");
    let engine_url = format!("http://127.0.0.1:{ep}");

    // A little latency so the kill lands mid-sync; no background catalog changes.
    let sandbox_cfg = root.path().join("sandbox.toml");
    std::fs::write(
        &sandbox_cfg,
        "[sandbox]\nlatency_ms = 3\nchange_interval_ms = 0\n",
    )
    .unwrap();
    let common_args = [
        "--config",
        sandbox_cfg.to_str().unwrap(),
        "--data-dir",
        sandbox_dir.to_str().unwrap(),
        "--products",
        "2000",
        "--seed",
        "21",
    ];
    let printed = Command::new(BIN)
        .arg("sandbox")
        .arg("--listen")
        .arg(&sandbox_addr)
        .arg("--print-config")
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
        write!(f, "\n[server]\nlisten = \"127.0.0.1:{ep}\"\n\n[catalog]\nworkers = 4\nreconcile_interval_secs = 3600\n").unwrap();
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
    let mut first = spawn(&run);
    let at_kill = common::eventually(60, "400 Items created", || async {
        let s = stats(&base).await?;
        (s["quickbooks"]["items_total"].as_u64()? >= 400).then_some(s)
    })
    .await;
    first.0.kill().unwrap(); // SIGKILL: no drain, no goodbye
    first.0.wait().unwrap();
    let pages_at_kill = at_kill["stripe"]["list_pages"].as_u64().unwrap();
    assert!(
        pages_at_kill < products / 100,
        "the full sync must still be running at the kill (listed {pages_at_kill} pages)"
    );

    let mut second = spawn(&run);
    let h = common::eventually(120, "the restarted engine to finish", || async {
        let h = health(&engine_url).await?;
        let c = &h["catalog"];
        let done = c["full_sync"]["done"] == true
            && c["queued"] == 0
            && c["in_flight"] == 0
            && c["synced"].as_u64()? >= products;
        done.then_some(h)
    })
    .await;
    assert_eq!(h["catalog"]["failed"], 0);
    let s = stats(&base).await.unwrap();
    assert_eq!(s["quickbooks"]["items_total"], products);
    assert_eq!(s["quickbooks"]["duplicate_names"], 0);
    // Resumed from the cursor: 20 pages in all (plus the page in flight at the kill),
    // not 20 more. Less the pages the reconciliation reads once the sync is done (read
    // after the sandbox's count, so a page it lists in between is not taken off).
    let control: serde_json::Value =
        serde_json::from_slice(&std::fs::read(engine_dir.join("control.json")).unwrap()).unwrap();
    let reconciliation: serde_json::Value = reqwest::Client::new()
        .get(format!("{engine_url}/api/v1/reconciliation?limit=1"))
        .bearer_auth(control["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pages = s["stripe"]["list_pages"].as_u64().unwrap()
        - reconciliation["stripe_pages"].as_u64().unwrap();
    assert!(
        pages <= products / 100 + 2,
        "listed {pages} pages: the restart started over"
    );
    common::assert_one_item_per_product(&base).await;

    // SIGTERM drains and exits 0.
    let pid = second.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = second.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM must drain and exit 0");
}

/// Creates recorded as pending in the engine's store (sent, or about to be, in a batch
/// whose answer the engine has not recorded): their product ids.
fn pending_creates(db: &std::path::Path) -> Vec<String> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare(
        "SELECT product_id FROM item_map WHERE pending_request_id IS NOT NULL AND item_id IS NULL",
    ) else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get(0))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// A real `kill -9` right after QuickBooks executed a batch of creates and before the
/// engine recorded its answer (the Items exist, the engine's store says "pending"),
/// then a restart: every product ends with exactly one Item, and no name twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_mid_batch_gives_no_product_a_second_item() {
    syncctl::connectors::install_crypto();
    let products = 3000u64;
    let root = tempfile::tempdir().unwrap();
    let (sandbox_dir, engine_dir) = (root.path().join("sandbox"), root.path().join("engine"));
    let (sp, ep) = (free_port(), free_port());
    let sandbox_addr = format!("127.0.0.1:{sp}");
    let base = format!("http://{sandbox_addr}");
    let engine_url = format!("http://127.0.0.1:{ep}");
    let sandbox_cfg = root.path().join("sandbox.toml");
    std::fs::write(
        &sandbox_cfg,
        "[sandbox]\nlatency_ms = 200\nchange_interval_ms = 0\n",
    )
    .unwrap();
    let common_args = [
        "--config",
        sandbox_cfg.to_str().unwrap(),
        "--data-dir",
        sandbox_dir.to_str().unwrap(),
        "--products",
        "3000",
        "--seed",
        "23",
    ];
    let printed = Command::new(BIN)
        .args(["sandbox", "--listen", &sandbox_addr, "--print-config"])
        .args(common_args)
        .output()
        .unwrap();
    assert!(printed.status.success());
    let engine_cfg = root.path().join("engine.toml");
    {
        let mut f = std::fs::File::create(&engine_cfg).unwrap();
        f.write_all(&printed.stdout).unwrap();
        write!(f, "\n[server]\nlisten = \"127.0.0.1:{ep}\"\n\n[catalog]\nworkers = 4\nreconcile_interval_secs = 3600\n").unwrap();
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
    let db = engine_dir.join("syncctl.db");

    // Up to five kills, each the moment a new batch has been executed while creates
    // are pending in the store, until one lands between QuickBooks' execution and the
    // engine's record of it (a 100 ms window: the answer's half of the latency).
    let mut orphans = Vec::new();
    for attempt in 1..=5 {
        let mut engine = spawn(&run);
        // Polled back to back: a batch counted since the previous look was executed
        // moments ago, its answer still on the way (the sandbox's latency is split).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut prev = u64::MAX;
        let pending = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no batch executed with creates pending"
            );
            let Some(s) = stats(&base).await else {
                continue;
            };
            let q = &s["quickbooks"];
            let batches = q["batch_requests"].as_u64().unwrap_or(0);
            if batches > prev && q["items_total"].as_u64().unwrap_or(0) >= 300 {
                let pending = pending_creates(&db);
                if !pending.is_empty() {
                    break pending;
                }
            }
            prev = batches;
        };
        engine.0.kill().unwrap(); // SIGKILL: no drain, no goodbye
        engine.0.wait().unwrap();
        let items: Vec<serde_json::Value> =
            reqwest::get(format!("{base}/_sandbox/quickbooks/items"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let made: std::collections::HashSet<&str> =
            items.iter().filter_map(|i| i["Sku"].as_str()).collect();
        // Pending in the store, yet created at QuickBooks: the batch's answer was lost.
        orphans = pending_creates(&db)
            .into_iter()
            .filter(|p| made.contains(p.as_str()))
            .collect();
        let s = stats(&base).await.unwrap();
        eprintln!(
            "kill {attempt}: {} creates pending, {} of them already created at QuickBooks; {} Items, {} batches, {} throttled",
            pending.len(),
            orphans.len(),
            s["quickbooks"]["items_total"],
            s["quickbooks"]["batch_requests"],
            s["quickbooks"]["throttled"]
        );
        assert!(
            s["quickbooks"]["items_total"].as_u64().unwrap() < products,
            "the kill must land mid-sync"
        );
        if !orphans.is_empty() {
            break;
        }
    }
    assert!(
        !orphans.is_empty(),
        "no kill landed between a batch's execution and its record"
    );

    let restarted = std::time::Instant::now();
    let mut engine = spawn(&run);
    let h = common::eventually(120, "the restarted engine to finish", || async {
        let h = health(&engine_url).await?;
        let c = &h["catalog"];
        let done = c["full_sync"]["done"] == true
            && c["queued"] == 0
            && c["in_flight"] == 0
            && c["synced"].as_u64()? >= products;
        done.then_some(h)
    })
    .await;
    assert_eq!(h["catalog"]["failed"], 0);
    let s = stats(&base).await.unwrap();
    eprintln!(
        "finished {:.1} s after the restart: {}",
        restarted.elapsed().as_secs_f64(),
        s["quickbooks"]
    );
    assert_eq!(s["quickbooks"]["items_total"], products);
    assert_eq!(s["quickbooks"]["duplicate_names"], 0);
    assert!(s["quickbooks"]["batch_requests"].as_u64().unwrap() > 0);
    common::assert_one_item_per_product(&base).await;
    assert!(
        pending_creates(&db).is_empty(),
        "every pending create resolved"
    );
    engine.0.kill().unwrap();
    engine.0.wait().unwrap();
}

use common::post_json as post;

/// A real `kill -9` while the backlog of a DIAN outage drains, then a restart: every
/// invoice ends VALIDATED once (no document twice, no transmission twice), inside
/// its deadline. The sends cut short are read at Alegra before anything is resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_during_the_contingency_drain_loses_and_duplicates_nothing() {
    use syncctl::compliance::machine::Status;
    const N: u64 = 80;
    let sb = common::sandbox(5, 21).await;
    let base = sb.base_url();
    // Slow answers (so sends are in flight at the kill) at 10 requests/s.
    common::faults(
        &base,
        serde_json::json!({"service": "alegra", "rate_limit_per_min": 600, "latency_ms": 300}),
    )
    .await;
    common::faults(
        &base,
        serde_json::json!({"service": "dian", "outage": true}),
    )
    .await;
    // Paid before the engine starts: its listing finds them.
    post(
        &base,
        "/_sandbox/stripe/invoices",
        serde_json::json!({"count": N}),
    )
    .await;

    let root = tempfile::tempdir().unwrap();
    let engine_dir = root.path().join("engine");
    let ep = free_port();
    let faults: std::collections::BTreeMap<_, _> = ["stripe", "quickbooks", "alegra"]
        .iter()
        .filter_map(|n| Some((n.to_string(), sb.sandbox.faults.get(n)?)))
        .collect();
    let printed = {
        let tx = sb.sandbox.lock();
        syncctl::sandbox::engine_config(&tx.world, sb.addr, &faults)
    };
    let engine_cfg = root.path().join("engine.toml");
    std::fs::write(
        &engine_cfg,
        format!(
            "{printed}timeout_secs = 10\n\n[server]\nlisten = \"127.0.0.1:{ep}\"\n\n\
             [catalog]\nreconcile_interval_secs = 3600\n\n\
             [compliance]\nretry_schedule_secs = [1, 1, 1]\npoll_secs = 1\nlist_interval_secs = 1\n\
             workers = 4\ncontingency_probes = 2\ncontingency_probe_interval_secs = 1\n"
        ),
    )
    .unwrap();
    let run = [
        "run",
        "--config",
        engine_cfg.to_str().unwrap(),
        "--data-dir",
        engine_dir.to_str().unwrap(),
    ];
    let engine_url = format!("http://127.0.0.1:{ep}");
    let mut first = spawn(&run);
    common::eventually(30, "the engine to answer", || health(&engine_url)).await;
    let store = syncctl::store::Store::open(&engine_dir).unwrap();
    let counts = || store.compliance_counts().unwrap();

    common::eventually(
        60,
        "the outage confirmed, every invoice in FALLBACK",
        || async {
            let c = counts();
            (c.get(Status::Fallback) + c.get(Status::Unknown) == N
                && c.get(Status::Fallback) >= N - 1)
                .then_some(())
        },
    )
    .await;
    common::faults(
        &base,
        serde_json::json!({"service": "dian", "outage": false}),
    )
    .await;
    common::eventually(60, "a quarter of the backlog drained", || async {
        (counts().get(Status::Validated) >= N / 4).then_some(())
    })
    .await;
    first.0.kill().unwrap(); // SIGKILL: no drain, no goodbye
    first.0.wait().unwrap();
    let at_kill = store.invoices(None, "", 1000).unwrap();
    let cut_short = at_kill.iter().filter(|r| r.sending).count();
    let validated_at_kill = at_kill
        .iter()
        .filter(|r| r.status == Status::Validated)
        .count() as u64;
    assert!(
        cut_short >= 1,
        "the kill must land while sends are in flight"
    );
    assert!(validated_at_kill < N, "the kill must land mid-drain");

    let _second = spawn(&run);
    common::eventually(120, "every invoice VALIDATED after the restart", || async {
        (counts().get(Status::Validated) == N).then_some(())
    })
    .await;
    let s = stats(&base).await.unwrap();
    let a = &s["alegra"];
    assert_eq!(a["invoices_total"], N, "{a}");
    assert_eq!(a["stamped"], N, "each transmitted to DIAN once: {a}");
    assert_eq!(a["accepted"], N, "{a}");
    assert_eq!(a["duplicate_documents"], 0, "{a}");
    for r in store.invoices(None, "", 1000).unwrap() {
        assert!(r.contingency, "{}", r.number);
        let deadline = r.deadline_at_ms.expect("a deadline");
        assert!(r.validated_at_ms.unwrap() <= deadline, "{}", r.number);
    }
    let recovered = store
        .recent_audit(1000, 0)
        .unwrap()
        .into_iter()
        .any(|e| e.message.contains("cut short by the previous run"));
    assert!(
        recovered,
        "the restart says it read the cut-short sends first"
    );
    eprintln!(
        "killed with {cut_short} sends in flight and {validated_at_kill} of {N} validated; all {N} validated once after the restart"
    );
}
