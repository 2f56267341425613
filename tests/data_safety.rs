//! What the engine writes to disk is its user's alone, and says what is true: a config
//! saved from the API keeps its mode, the data dir is private (fixed at start), an
//! invoice backup goes once DIAN validates the invoice, an invalid paid invoice is
//! answered as ignored (with why), and the demo's outage toggle is audited.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Value, json};
use syncctl::config::{Role, Secret, TokenConfig};

const OPS: &str = "ops-token-0123456789abcdef";

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(path: &Path, m: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Every file and folder under `dir` whose mode lets group or others in.
fn readable_by_others(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        if mode(&d) != 0o700 {
            out.push(format!("{} {:o}", d.display(), mode(&d)));
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if mode(&p) & 0o077 != 0 {
                out.push(format!("{} {:o}", p.display(), mode(&p)));
            }
        }
    }
    out
}

fn backups(dir: &Path) -> Vec<(String, Value)> {
    let Ok(entries) = std::fs::read_dir(dir.join("backups/invoices")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_string_lossy().into_owned();
            if !name.ends_with(".json.gz") {
                return None;
            }
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut flate2::read::GzDecoder::new(std::fs::File::open(&p).ok()?),
                &mut text,
            )
            .ok()?;
            Some((name, serde_json::from_str(&text).ok()?))
        })
        .collect()
}

/// An engine on `sb` whose config was read from `config` saves one tuned threshold
/// (`alerts.error_rate_percent`) through the API, then stops.
async fn save_threshold(
    sb: &syncctl::sandbox::SandboxServer,
    config: &std::path::Path,
    data: &std::path::Path,
    value: f64,
) {
    let mut cfg = common::config_for(sb);
    cfg.server.tokens = vec![TokenConfig {
        name: "ops".into(),
        token: Secret::new(OPS),
        role: Role::Operator,
        rate_limit_per_min: 0,
    }];
    cfg.source = Some(config.to_owned());
    let mut engine = common::engine(cfg, data).await;
    let r = reqwest::Client::new()
        .put(format!("http://{}/api/v1/thresholds", engine.server_addr))
        .bearer_auth(OPS)
        .json(&json!({ "alerts.error_rate_percent": value }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    engine.shutdown().await;
}

/// Point 1: `PUT /api/v1/thresholds` rewrites the config through a temporary file; the
/// file keeps the mode it had (0600 stays 0600, 0640 stays 0640), never the umask's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saving_thresholds_keeps_the_config_files_mode() {
    let sb = common::sandbox(3, 11).await;
    for original in [0o600, 0o640] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syncctl.toml");
        std::fs::write(
            &path,
            "# holds secrets\n[alerts]\nerror_rate_percent = 10.0\n",
        )
        .unwrap();
        set_mode(&path, original);
        save_threshold(&sb, &path, &dir.path().join("data"), 7.5).await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("error_rate_percent = 7.5"), "{text}");
        assert_eq!(
            mode(&path),
            original,
            "the config was {original:o} before it was saved"
        );
        assert!(
            !dir.path().join("syncctl.toml.tmp").exists(),
            "no temporary file left"
        );
    }

    // A config reached through a symlink (dotfiles, /etc managed by a tool): the file
    // it points at is saved, and the link stays a link. Replacing the link with a copy
    // would leave the real config unchanged and the two diverging from then on.
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.toml");
    let link = dir.path().join("syncctl.toml");
    std::fs::write(&real, "[alerts]\nerror_rate_percent = 10.0\n").unwrap();
    set_mode(&real, 0o600);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    save_threshold(&sb, &link, &dir.path().join("data"), 6.5).await;
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the config's symlink was replaced by a file"
    );
    let text = std::fs::read_to_string(&real).unwrap();
    assert!(text.contains("error_rate_percent = 6.5"), "{text}");
    assert_eq!(mode(&real), 0o600);
}

/// Points 2 and 3: a data dir an older version left readable (0755, a 0644 log) is
/// made private at start; everything the engine writes — the database and its WAL and
/// SHM, invoice backups, reports — is 0600 in 0700 folders. And an invoice backed up
/// while DIAN was down loses its backup the moment DIAN validates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_private_and_a_validated_invoice_keeps_no_backup() {
    let sb = common::sandbox(5, 21).await;
    let base = sb.base_url();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // What an older version left: world-readable folders and files.
    std::fs::create_dir_all(data.join("logs")).unwrap();
    std::fs::write(data.join("logs/syncctl.log.2026-01-01"), "old log\n").unwrap();
    set_mode(&data, 0o755);
    set_mode(&data.join("logs"), 0o755);
    set_mode(&data.join("logs/syncctl.log.2026-01-01"), 0o644);

    let mut cfg = common::config_for(&sb);
    cfg.compliance.retry_schedule_secs = vec![1, 1, 1, 1, 1, 1, 1, 1];
    cfg.compliance.poll_secs = 1;
    cfg.compliance.contingency_probe_interval_secs = 1;
    cfg.alegra.timeout_secs = 2;
    cfg.alegra.breaker.minimum_calls = 1000;
    cfg.alegra.breaker.consecutive_failures = 0;
    common::faults(&base, json!({"service": "dian", "outage": true})).await;
    let mut engine = common::engine(cfg, &data).await;
    sb.sandbox.set_webhook_url(Some(format!(
        "http://{}/webhooks/stripe",
        engine.server_addr
    )));
    let ids = common::make_invoices(&base, 3).await;

    // DIAN is down: every invoice is backed up as not validated.
    let waiting = common::eventually(30, "a backup of each invoice", || async {
        let b = backups(&data);
        (b.len() == ids.len()).then_some(b)
    })
    .await;
    for (name, doc) in &waiting {
        assert_ne!(doc["status"], "VALIDATED", "{name}: {doc}");
    }
    let today = syncctl::engine::compliance::colombia_date(syncctl::store::now_ms());
    common::eventually(30, "today's report", || async {
        data.join(format!("reports/compliance-{today}.json"))
            .exists()
            .then_some(())
    })
    .await;
    for f in ["syncctl.db", "syncctl.db-wal", "syncctl.db-shm"] {
        assert!(data.join(f).exists(), "{f}");
    }
    assert_eq!(
        readable_by_others(&data),
        Vec::<String>::new(),
        "folders 0700, files 0600"
    );

    // DIAN is back: as each invoice is validated, its backup goes (within a second,
    // not at some later pass).
    common::faults(&base, json!({"service": "dian", "outage": false})).await;
    common::eventually(60, "every invoice VALIDATED", || async {
        let s = engine.snapshot.borrow().clone();
        (s.compliance
            .counts
            .get(syncctl::compliance::machine::Status::Validated)
            == ids.len() as u64)
            .then_some(())
    })
    .await;
    let left = common::eventually(2, "no backup left", || async {
        let b = backups(&data);
        b.is_empty().then_some(b)
    })
    .await;
    assert!(left.is_empty());
    engine.shutdown().await;
}

/// Point 2c: a signed `invoice.paid` whose invoice cannot be an e-invoice is answered
/// as ignored with the reason, counted as ignored (not as a duplicate), and audited;
/// its second delivery is the duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_paid_invoice_is_answered_ignored_with_its_reason() {
    let sb = common::sandbox(3, 13).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = common::engine(common::config_for(&sb), dir.path()).await;
    let url = format!("http://{}", engine.server_addr);
    let secret = sb.sandbox.webhook_secret();
    let send = |object: Value, id: &str| {
        let body = serde_json::to_vec(&json!({
            "id": id, "object": "event", "type": "invoice.paid",
            "created": time::OffsetDateTime::now_utc().unix_timestamp(),
            "data": {"object": object},
        }))
        .unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let sig = syncctl::sandbox::sign_webhook(&secret, now, &body);
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/webhooks/stripe"))
                .header("Stripe-Signature", sig)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    // Wait for compliance to take events (its numbering confirmed).
    common::eventually(20, "the compliance pipeline", || async {
        engine.snapshot.borrow().compliance.enabled.then_some(())
    })
    .await;
    // A real paid invoice, recorded.
    sb.sandbox
        .set_webhook_url(Some(format!("{url}/webhooks/stripe")));
    let real = common::make_invoices(&sb.base_url(), 1).await.remove(0);
    let recorded: Value = common::eventually(20, "the real invoice recorded", || async {
        let s = engine.snapshot.borrow().clone();
        s.compliance
            .invoices
            .iter()
            .any(|r| r.stripe_id == real)
            .then(|| json!(real))
    })
    .await;
    let hooks = common::get_json(&format!("{url}/health")).await["catalog"]["webhooks"].clone();
    let (ignored0, duplicate0) = (
        hooks["ignored"].as_u64().unwrap(),
        hooks["duplicate"].as_u64().unwrap(),
    );
    let line = json!({"amount": 1000, "quantity": 1, "description": "x"});
    let cases = [
        // The recorded invoice's id on an object that is not a paid invoice: not "the
        // invoice we have" (a duplicate), but not an invoice to take at all.
        (
            "evt_bad_reused",
            json!({"id": recorded, "object": "invoice", "currency": "cop", "status": "draft", "paid": false, "lines": {"data": [line]}}),
        ),
        (
            "evt_bad_open",
            json!({"id": "in_bad_open", "object": "invoice", "currency": "cop", "status": "open", "lines": {"data": [line]}}),
        ),
        (
            "evt_bad_negative",
            json!({"id": "in_bad_negative", "object": "invoice", "currency": "cop", "status": "paid", "total": -5000, "lines": {"data": [{"amount": -5000, "quantity": 1}]}}),
        ),
        (
            "evt_bad_usd",
            json!({"id": "in_bad_usd", "object": "invoice", "currency": "usd", "lines": {"data": [{"amount": 1000}]}}),
        ),
        (
            "evt_bad_noid",
            json!({"object": "invoice", "currency": "cop"}),
        ),
        (
            "evt_bad_nolines",
            json!({"id": "in_bad_nolines", "object": "invoice", "currency": "cop", "lines": {"data": []}}),
        ),
        ("evt_bad_null", Value::Null),
    ];
    for (n, (id, object)) in cases.iter().enumerate() {
        let first = send(object.clone(), id).await;
        assert_eq!(first["ignored"], true, "{id}: {first}");
        assert!(first.get("duplicate").is_none(), "{id}: {first}");
        let reason = first["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "{id}: says why: {first}");
        let health = common::get_json(&format!("{url}/health")).await;
        let hooks = &health["catalog"]["webhooks"];
        assert_eq!(hooks["ignored"], ignored0 + n as u64 + 1, "{hooks}");
        assert_eq!(
            hooks["duplicate"],
            duplicate0 + n as u64,
            "only the redeliveries: {hooks}"
        );
        let again = send(object.clone(), id).await;
        assert_eq!(again["duplicate"], true, "{id}: {again}");
        // Audited with the reason.
        common::eventually(5, "the audit line", || async {
            let s = engine.snapshot.borrow().clone();
            s.audit
                .iter()
                .any(|e| e.message.contains(reason))
                .then_some(())
        })
        .await;
    }
    // A paid invoice with a credit line (a proration) is a sale to report: taken into
    // the DIAN queue, never "ignored" where only the audit trail would say so.
    let credited = json!({"id": "in_credited", "object": "invoice", "currency": "cop",
        "status": "paid", "paid": true, "total": 8000,
        "lines": {"data": [{"amount": 10000, "quantity": 1, "description": "plan"},
                           {"amount": -2000, "quantity": 1, "description": "unused time"}]}});
    let taken = send(credited, "evt_credited").await;
    assert!(taken.get("ignored").is_none(), "{taken}");
    common::eventually(10, "the credited invoice in the DIAN queue", || async {
        let s = engine.snapshot.borrow().clone();
        s.compliance
            .invoices
            .iter()
            .any(|r| r.stripe_id == "in_credited")
            .then_some(())
    })
    .await;
    engine.shutdown().await;
}

/// Point 8: the demo's outage toggle (`O` on Circuits), as the console's run loop
/// applies it through its link, leaves an operator line in the engine's audit trail —
/// who, which service, down or restored — read back in the operator journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_outage_toggle_is_audited() {
    use syncctl::protocol::{FaultPatch, JournalEntry, JournalResult, Link};
    syncctl::connectors::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = syncctl::config::Config::default();
    cfg.sandbox.products = 5;
    cfg.sandbox.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    let mut demo = syncctl::app::start_demo(cfg, dir.path().to_owned(), None, false, 1)
        .await
        .unwrap();
    let sandbox_url = demo.sandbox.base_url();
    let sandbox = demo.sandbox.sandbox.clone();
    {
        let link = syncctl::app::LocalEngine {
            engine: &mut demo.engine,
            sandbox: Some(sandbox),
        };
        let faults = link.sandbox().expect("the demo's sandbox");
        for on in [true, false] {
            faults
                .patch_faults_as(
                    "ana@tty1",
                    &FaultPatch {
                        service: "quickbooks".into(),
                        outage: Some(on),
                        ..Default::default()
                    },
                )
                .unwrap();
            let f = common::get_json(&format!("{sandbox_url}/_sandbox/faults")).await;
            assert_eq!(f["quickbooks"]["outage"], on, "{f}");
        }
        // A patch the sandbox refuses is audited as refused.
        assert!(
            faults
                .patch_faults_as(
                    "ana@tty1",
                    &FaultPatch {
                        service: "nosuch".into(),
                        outage: Some(true),
                        ..Default::default()
                    },
                )
                .is_err()
        );
    }
    let journal: Vec<JournalEntry> = common::eventually(5, "three audit lines", || async {
        let s = demo.engine.snapshot.borrow().clone();
        let j: Vec<JournalEntry> = s
            .audit
            .iter()
            .rev()
            .filter_map(JournalEntry::from_audit)
            .filter(|e| e.command.starts_with("sandbox outage"))
            .collect();
        (j.len() == 3).then_some(j)
    })
    .await;
    let shown: Vec<(&str, &str, &str, JournalResult)> = journal
        .iter()
        .map(|e| {
            (
                e.actor.as_str(),
                e.entity.as_str(),
                e.command.as_str(),
                e.result,
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (
                "ana@tty1",
                "quickbooks",
                "sandbox outage quickbooks on",
                JournalResult::Done
            ),
            (
                "ana@tty1",
                "quickbooks",
                "sandbox outage quickbooks off",
                JournalResult::Done
            ),
            (
                "ana@tty1",
                "nosuch",
                "sandbox outage nosuch on",
                JournalResult::Refused
            ),
        ],
        "{journal:#?}"
    );
    assert!(journal[0].message.contains("down"), "{journal:#?}");
    demo.engine.shutdown().await;
    demo.sandbox.shutdown().await;
}
