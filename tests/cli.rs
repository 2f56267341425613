//! The binary's command line: exit codes, messages, config handling, data-dir locking.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn config_check_names_file_key_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:9870\"\n\n[stripe]\nwebhook_tolerance_secs = \"soon\"\n",
    )
    .unwrap();
    let out = syncctl(
        &["config", "check", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:5: key `stripe.webhook_tolerance_secs`",
            path.display()
        )),
        "{err}"
    );

    std::fs::write(&path, "[catalog]\nworkers = 8\nreconcile_every = 3\n").unwrap();
    let out = syncctl(
        &["config", "check", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(":3: key `catalog.reconcile_every`") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn no_config_says_where_it_looked_and_what_to_try() {
    let dir = tempfile::tempdir().unwrap();
    let out = syncctl(&[], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("no config file at") && err.contains(dir.path().to_str().unwrap()),
        "{err}"
    );
    assert!(
        err.contains("syncctl demo") && err.contains("syncctl config init"),
        "{err}"
    );
}

#[test]
fn config_init_writes_a_private_example_that_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/syncctl.toml");
    let p = path.to_str().unwrap();
    let out = syncctl(&["config", "init", "--config", p], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let out = syncctl(&["config", "check", "--config", p], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = syncctl(&["config", "init", "--config", p], dir.path());
    assert_eq!(
        out.status.code(),
        Some(2),
        "an existing file is not overwritten without --force"
    );
}

#[cfg(unix)]
#[test]
fn a_world_readable_config_with_a_secret_is_warned_about_without_printing_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[stripe]\napi_key = \"sk_live_supersecret123\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = syncctl(
        &["config", "check", "--config", path.to_str().unwrap()],
        dir.path(),
    );
    assert!(out.status.success());
    let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(
        all.contains("readable by others") && all.contains("chmod 600"),
        "{all}"
    );
    assert!(!all.contains("supersecret"), "a secret was printed: {all}");
}

#[test]
fn sandbox_print_config_is_a_valid_engine_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = syncctl(
        &[
            "sandbox",
            "--listen",
            "127.0.0.1:19999",
            "--print-config",
            "--seed",
            "3",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let config = syncctl::config::Config::parse(&text, std::path::Path::new("printed")).unwrap();
    assert_eq!(
        config.stripe.base_url.as_deref(),
        Some("http://127.0.0.1:19999")
    );
    assert!(
        config.missing_live_keys().is_empty(),
        "{:?}",
        config.missing_live_keys()
    );
}

#[test]
fn a_second_engine_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[sandbox]\nlisten = \"127.0.0.1:0\"\nproducts = 20\nchange_interval_ms = 0\n",
    )
    .unwrap();
    let args = [
        "run",
        "--demo",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut first = Command::new(BIN)
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first one says it is serving.
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("engine on http://"));
    assert!(ready);
    let second = syncctl(&args, dir.path());
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(second.status.code(), Some(2));
    let err = stderr(&second);
    assert!(err.contains("already using data dir"), "{err}");
}
