//! Careless and hostile config files through the binary (`syncctl config check`, and
//! `syncctl run`): every value that parses but would break the engine is refused with
//! exit 2 and `file:line: key`, and nothing starts.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a test that fails says where; a scenario reads top to bottom"
)]

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_syncctl");

fn syncctl(args: &[&str], home: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("SYNCCTL_STRIPE_API_KEY")
        .output()
        .unwrap()
}

/// Writes `text` and runs `config check` on it: (exit code, stderr, path).
fn check(dir: &std::path::Path, name: &str, text: &str) -> (Option<i32>, String, String) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let out = syncctl(
        &["config", "check", "--config", path.to_str().unwrap()],
        dir,
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

const TOKENS_SAME_NAME: &str = r#"[server]
listen = "127.0.0.1:9870"

[[server.tokens]]
name = "ops"
token = "aaaaaaaaaaaaaaaaaaaa"
role = "operator"

[[server.tokens]]
name = "ops"
token = "bbbbbbbbbbbbbbbbbbbb"
role = "viewer"
"#;

const TOKEN_SHORT_SECOND: &str = r#"[[server.tokens]]
name = "ops"
token = "aaaaaaaaaaaaaaaaaaaa"
role = "operator"

[[server.tokens]]
name = "dash"
role = "viewer"
token = "short"
"#;

/// (case, file text, key named, line named).
const CASES: &[(&str, &str, &str, usize)] = &[
    (
        "alegra_ftp",
        "[alegra]\nbase_url = \"ftp://alegra.example/api\"\n",
        "alegra.base_url",
        2,
    ),
    (
        "alegra_no_host",
        "[alegra]\n\nbase_url = \"http://\"\n",
        "alegra.base_url",
        3,
    ),
    (
        "alegra_empty_url",
        "[alegra]\nbase_url = \"\"\n",
        "alegra.base_url",
        2,
    ),
    (
        "alegra_url_number",
        "[alegra]\nbase_url = 42\n",
        "alegra.base_url",
        2,
    ),
    (
        "stripe_url_space",
        "[stripe]\nbase_url = \"http://exa mple.com\"\n",
        "stripe.base_url",
        2,
    ),
    (
        "qb_url_trailing_space",
        "[quickbooks]\nbase_url = \"https://qb.example.com/v3 \"\n",
        "quickbooks.base_url",
        2,
    ),
    (
        "qb_url_credentials",
        "[quickbooks]\ntoken_url = \"https://user:pw@oauth.example.com/token\"\n",
        "quickbooks.token_url",
        2,
    ),
    (
        "qb_url_control_char",
        "[quickbooks]\nbase_url = \"https://qb.example.com/\\u0007\"\n",
        "quickbooks.base_url",
        2,
    ),
    (
        "stripe_url_unicode_scheme",
        "[stripe]\nbase_url = \"ħttps://api.stripe.com\"\n",
        "stripe.base_url",
        2,
    ),
    (
        "stripe_timeout_0",
        "[stripe]\ntimeout_secs = 0\n",
        "stripe.timeout_secs",
        2,
    ),
    (
        "qb_timeout_0",
        "[quickbooks]\ntimeout_secs = 0\n",
        "quickbooks.timeout_secs",
        2,
    ),
    (
        "alegra_timeout_0",
        "[alegra]\ntimeout_secs = 0\n",
        "alegra.timeout_secs",
        2,
    ),
    (
        "stripe_timeout_huge",
        "[stripe]\ntimeout_secs = 100000\n",
        "stripe.timeout_secs",
        2,
    ),
    (
        "stripe_timeout_string",
        "[stripe]\ntimeout_secs = \"30\"\n",
        "stripe.timeout_secs",
        2,
    ),
    (
        "lease_0",
        "[catalog]\nlease_secs = 0\n",
        "catalog.lease_secs",
        2,
    ),
    (
        "lease_5",
        "[catalog]\nworkers = 4\nlease_secs = 5\n",
        "catalog.lease_secs",
        3,
    ),
    (
        "lease_below_qb_timeout",
        "[quickbooks]\ntimeout_secs = 60\n[catalog]\nlease_secs = 30\n",
        "catalog.lease_secs",
        4,
    ),
    (
        "lease_negative",
        "[catalog]\nlease_secs = -5\n",
        "catalog.lease_secs",
        2,
    ),
    (
        "lease_float",
        "[catalog]\nlease_secs = 1e3\n",
        "catalog.lease_secs",
        2,
    ),
    (
        "workers_overflow",
        "[catalog]\nworkers = 99999999999999999999\n",
        "catalog.workers",
        2,
    ),
    (
        "catalog_attempts_0",
        "[catalog]\nmax_attempts = 0\n",
        "catalog.max_attempts",
        2,
    ),
    (
        "reconcile_huge",
        "[catalog]\nreconcile_interval_secs = 99999999\n",
        "catalog.reconcile_interval_secs",
        2,
    ),
    (
        "tokens_same_name",
        TOKENS_SAME_NAME,
        "server.tokens.name",
        10,
    ),
    (
        "token_short_in_second_entry",
        TOKEN_SHORT_SECOND,
        "server.tokens.token",
        9,
    ),
    (
        "token_with_space",
        "[[server.tokens]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"abc def ghi jkl mno\"\n",
        "server.tokens.token",
        4,
    ),
    (
        "token_name_empty",
        "[[server.tokens]]\nname = \"  \"\ntoken = \"aaaaaaaaaaaaaaaaaaaa\"\nrole = \"operator\"\n",
        "server.tokens.name",
        2,
    ),
    (
        "token_rate_huge",
        "[[server.tokens]]\nname = \"ops\"\ntoken = \"aaaaaaaaaaaaaaaaaaaa\"\nrole = \"operator\"\nrate_limit_per_min = 5000000\n",
        "server.tokens.rate_limit_per_min",
        5,
    ),
    (
        "heartbeat_0",
        "[server]\nws_heartbeat_secs = 0\n",
        "server.ws_heartbeat_secs",
        2,
    ),
    (
        "allowed_host_space",
        "[server]\nallowed_hosts = [\"evil host\"]\n",
        "server.allowed_hosts",
        2,
    ),
    (
        "listen_bad_port",
        "[server]\nlisten = \"0.0.0.0:99999\"\n",
        "server.listen",
        2,
    ),
    (
        "sandbox_products_huge",
        "[sandbox]\nproducts = 100000000\n",
        "sandbox.products",
        2,
    ),
    (
        "breaker_window_0",
        "[stripe.breaker]\nwindow_size = 0\n",
        "stripe.breaker.window_size",
        2,
    ),
    (
        "breaker_open_wait_0",
        "[quickbooks.breaker]\nopen_wait_secs = 0\n",
        "quickbooks.breaker.open_wait_secs",
        2,
    ),
    (
        "breaker_max_below_wait",
        "[alegra.breaker]\nopen_wait_secs = 600\nopen_wait_max_secs = 60\n",
        "alegra.breaker.open_wait_max_secs",
        3,
    ),
    (
        "retry_base_0",
        "[stripe.retry]\nbase_ms = 0\ncap_ms = 0\n",
        "stripe.retry.base_ms",
        2,
    ),
    (
        "retry_attempts_huge",
        "[quickbooks.retry]\nmax_attempts = 1000\n",
        "quickbooks.retry.max_attempts",
        2,
    ),
    (
        "retry_budget_ttl_0",
        "[alegra.retry]\nbudget_ttl_secs = 0\n",
        "alegra.retry.budget_ttl_secs",
        2,
    ),
    (
        "throttle_pause_0",
        "[stripe]\nthrottle_pause_secs = 0\n",
        "stripe.throttle_pause_secs",
        2,
    ),
    (
        "schedule_wait_0",
        "[compliance]\nretry_schedule_secs = [60, 0]\n",
        "compliance.retry_schedule_secs",
        2,
    ),
    (
        "probes_0",
        "[compliance]\ncontingency_probes = 0\n",
        "compliance.contingency_probes",
        2,
    ),
    (
        "compliance_retention_huge",
        "[compliance]\nretention_days = 100000\n",
        "compliance.retention_days",
        2,
    ),
    (
        "cache_ttl_0",
        "[cache]\nttl_secs = 0\n",
        "cache.ttl_secs",
        2,
    ),
    (
        "audit_retention_0",
        "[audit]\nretention_days = 0\n",
        "audit.retention_days",
        2,
    ),
    (
        "alegra_email_unicode",
        "[alegra]\nemail = \"ñoño sin arroba\"\n",
        "alegra.email",
        2,
    ),
    (
        "qb_income_ref_empty",
        "[quickbooks]\nincome_account_ref = \"\"\n",
        "quickbooks.income_account_ref",
        2,
    ),
    (
        "stripe_api_key_empty",
        "[stripe]\napi_key = \"\"\n",
        "stripe.api_key",
        2,
    ),
    ("log_level_empty", "[log]\nlevel = \"\"\n", "log.level", 2),
    (
        "number_start_0",
        "[alegra]\nnumber_start = 0\n",
        "alegra.number_start",
        2,
    ),
    (
        "minor_version_0",
        "[quickbooks]\nminor_version = 0\n",
        "quickbooks.minor_version",
        2,
    ),
    (
        "tolerance_huge",
        "[stripe]\nwebhook_tolerance_secs = 9999999\n",
        "stripe.webhook_tolerance_secs",
        2,
    ),
];

#[test]
fn every_malformed_config_is_refused_naming_file_key_and_line() {
    assert!(CASES.len() >= 40, "{} cases", CASES.len());
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = Vec::new();
    for (name, text, key, line) in CASES {
        let (code, err, path) = check(dir.path(), name, text);
        let want = format!("{path}:{line}: key `{key}`");
        if code != Some(2) || !err.contains(&want) {
            wrong.push(format!("{name}: exit {code:?}, wanted {want:?}; got {err}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cases not refused as they should be:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn an_ftp_alegra_url_is_refused_at_start_too_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[alegra]\nbase_url = \"ftp://alegra.example/api\"\n",
    )
    .unwrap();
    let data = dir.path().join("data-dir");
    let out = syncctl(
        &[
            "run",
            "--config",
            path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:5: key `alegra.base_url`", path.display())),
        "{err}"
    );
    assert!(!data.join("syncctl.db").exists(), "no store was created");
}

#[test]
fn the_first_token_error_points_at_its_own_line_not_line_0() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err, path) = check(dir.path(), "tokens", TOKEN_SHORT_SECOND);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!("{path}:9: key `server.tokens.token`")),
        "{err}"
    );
    assert!(!err.contains(":0:"), "{err}");
    assert!(!err.contains("short"), "the token is not echoed: {err}");
}

#[test]
fn listening_on_every_interface_is_accepted_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err, _) = check(dir.path(), "open", "[server]\nlisten = \"0.0.0.0:9870\"\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: server.listen = \"0.0.0.0:9870\" is reachable from other machines"),
        "{err}"
    );
    let (code, err, _) = check(
        dir.path(),
        "local",
        "[server]\nlisten = \"127.0.0.1:9870\"\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("warning: server.listen"), "{err}");
}

#[test]
fn the_example_config_still_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap();
    let (code, err, _) = check(dir.path(), "example", &example);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_malformed_store_url_is_refused_naming_the_key_and_never_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    for (name, url) in [
        ("mysql", "mysql://ops:hunter2secret@db:3306/syncctl"),
        ("sqlite_path", "/var/lib/syncctl/hunter2secret.db"),
        (
            "bad_port",
            "postgres://ops:hunter2secret@db:notaport/syncctl",
        ),
        ("spaces", "postgres://ops:hunter2secret@db host/syncctl"),
    ] {
        let text = format!("[log]\nlevel = \"info\"\n\n[store]\nurl = \"{url}\"\n");
        let (code, err, path) = check(dir.path(), name, &text);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(
            err.contains(&format!("{path}:5: key `store.url`")),
            "{name}: {err}"
        );
        assert!(
            !err.contains("hunter2secret"),
            "{name} echoed the password: {err}"
        );
    }
    // A well-formed one checks clean (nothing connects at `config check`).
    let (code, err, _) = check(
        dir.path(),
        "good",
        "[store]\nurl = \"postgres://ops:hunter2secret@127.0.0.1:5432/syncctl\"\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("hunter2secret"), "{err}");
}
