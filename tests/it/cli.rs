//! The `converger` command itself: tenant management, help and config validation.

use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::common::{Backend, TestApp, eventually};

pub(crate) fn converger(db_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_converger"))
        .args(args)
        .env("CONVERGER_DATABASE_URL", db_url)
        .env("CONVERGER_JWT_SECRET", crate::common::JWT_SECRET)
        .env("CONVERGER_SECRET_KEY", crate::common::SECRET_KEY)
        .env("RUST_LOG", "error")
        .output()
        .expect("run converger")
}

pub(crate) fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_commands_manage_keys_that_the_server_accepts() {
    // The CLI and a running server share one SQLite file.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    let app = TestApp::start_with(Backend::Sqlite, |c| c.database_url = url.clone()).await;

    let created = stdout(&converger(&url, &["tenant", "create", "initech"]));
    let key = created
        .lines()
        .find_map(|l| l.strip_prefix("api key "))
        .expect("api key line")
        .trim()
        .to_owned();
    assert!(key.starts_with("cvg_"));
    let channels = |key: String| {
        let app = &app;
        async move {
            app.with_key(&key, Method::GET, "/api/v1/channels")
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(channels(key.clone()).await, StatusCode::OK);

    let list = stdout(&converger(&url, &["tenant", "list"]));
    assert!(
        list.lines()
            .any(|l| l.ends_with("initech") && l.contains("active")),
        "{list}"
    );
    assert!(!list.contains(&key), "list never shows keys");

    // The server sees what another process changes within about a second (the read
    // cache keeps a tenant looked up by key that long); well within this bound.
    let settles = |key: String, expected: StatusCode| {
        let channels = &channels;
        async move {
            eventually(Duration::from_secs(5), "the change to take effect", || {
                let key = key.clone();
                async move { (channels(key).await == expected).then_some(()) }
            })
            .await;
        }
    };
    stdout(&converger(&url, &["tenant", "disable", "initech"]));
    settles(key.clone(), StatusCode::FORBIDDEN).await;
    stdout(&converger(&url, &["tenant", "enable", "initech"]));
    settles(key.clone(), StatusCode::OK).await;

    let rotated = stdout(&converger(&url, &["tenant", "rotate-key", "initech"]));
    let new_key = rotated
        .lines()
        .find_map(|l| l.strip_prefix("api key "))
        .unwrap()
        .trim()
        .to_owned();
    settles(key, StatusCode::UNAUTHORIZED).await;
    assert_eq!(channels(new_key).await, StatusCode::OK);

    let missing = converger(&url, &["tenant", "disable", "nobody"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("tenant not found"));
}

#[test]
fn help_documents_every_setting() {
    let out = converger("sqlite://unused.db", &["--help"]);
    let help = stdout(&out);
    for var in [
        "CONVERGER_DATABASE_URL",
        "CONVERGER_DATABASE_MAX_CONNECTIONS",
        "CONVERGER_LISTEN",
        "CONVERGER_PUBLIC_URL",
        "CONVERGER_JWT_SECRET",
        "CONVERGER_MAX_BODY_BYTES",
        "CONVERGER_LOG_FORMAT",
    ] {
        assert!(help.contains(var), "--help lacks {var}");
    }
    for command in ["serve", "migrate", "tenant"] {
        assert!(help.contains(command), "--help lacks {command}");
    }
}

#[test]
fn invalid_config_is_reported_before_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_converger"))
        .args(["serve"])
        .env(
            "CONVERGER_DATABASE_URL",
            "postgres://u:hunter2@127.0.0.1:1/db",
        )
        .env("CONVERGER_PUBLIC_URL", "nope")
        .env_remove("CONVERGER_JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CONVERGER_JWT_SECRET") && err.contains("CONVERGER_PUBLIC_URL"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "passwords are redacted: {err}");
}
