//! The `converger` command itself: tenant management, help and config validation.

use std::process::Command;
use std::time::Duration;

use converger::store::Store;
use reqwest::{Method, StatusCode};

use crate::common::{Backend, TestApp, TestDb, both_backends, eventually};

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

both_backends!(
    duplicate_tenant_names_are_renamed_by_the_migration,
    commands_name_the_database_they_open,
);

/// Runs `sql` on the database behind `store`, past every rule of the store.
async fn execute_direct(store: &Store, sql: &'static str) {
    match store {
        Store::Sqlite { writer, .. } => sqlx::query(sql).execute(writer).await.map(|_| ()),
        Store::Postgres(pool, _) => sqlx::query(sql).execute(pool).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The names `tenant list` prints, in its order (oldest first), header skipped.
pub(crate) fn listed_names(url: &str) -> Vec<String> {
    let list = stdout(&converger(url, &["tenant", "list"]));
    let mut lines = list.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("STATUS") && header.ends_with("NAME"),
        "tenant list starts with a header row: {list}"
    );
    lines
        .map(|l| l.rsplit("  ").next().unwrap_or_default().to_owned())
        .collect()
}

async fn duplicate_tenant_names_are_renamed_by_the_migration(backend: Backend) {
    // A database from before names were unique: the index is not there yet, and
    // tenants share names in any case.
    let (_db, url, store, _key) = TestDb::with_tenant(backend).await;
    execute_direct(&store, "DROP INDEX tenants_name_key").await;
    execute_direct(
        &store,
        "DELETE FROM _sqlx_migrations WHERE version = 20261203000006",
    )
    .await;
    let mut ids = Vec::new();
    for name in ["ACME", "Acme", "acme-2", "Globex", "globex"] {
        let key = converger::auth::generate_api_key();
        let tenant = store
            .insert_tenant(name, &key.hash, &key.prefix)
            .await
            .unwrap();
        ids.push(tenant.id);
    }
    store.close().await;

    let migrated = converger(&url, &["migrate"]);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    // The oldest keeps its name; the others get -2, -3 in creation order, and the
    // tenant id besides where that name is taken (`acme-2` is).
    let acme_upper_id = ids[0].to_string().replace('-', "");
    assert_eq!(
        listed_names(&url),
        [
            "acme".to_owned(),
            format!("ACME-2-{acme_upper_id}"),
            "Acme-3".to_owned(),
            "acme-2".to_owned(),
            "Globex".to_owned(),
            "globex-2".to_owned(),
        ]
    );
    // Every renamed tenant is now found by its name.
    let out = stdout(&converger(&url, &["tenant", "disable", "acme-3"]));
    assert!(out.trim_end().ends_with("  Acme-3"), "{out}");
    let out = converger(&url, &["tenant", "create", "GLOBEX-2"]);
    assert!(
        !out.status.success(),
        "the index refuses names taken without case"
    );
}

async fn commands_name_the_database_they_open(backend: Backend) {
    let (_db, url) = TestDb::create(backend).await;
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let shown = match backend {
        Backend::Sqlite => url.clone(),
        Backend::Postgres => {
            let mut shown = url::Url::parse(&url).unwrap();
            shown.set_password(None).unwrap();
            shown.to_string()
        }
    };
    let migrated = converger(&url, &["migrate"]);
    let said = stderr(&migrated);
    assert!(migrated.status.success(), "{said}");
    let expected = match backend {
        Backend::Sqlite => format!("database: {shown} (created)\n"),
        Backend::Postgres => format!("database: {shown}\n"),
    };
    assert!(said.contains(&expected), "{said}");

    let listed = converger(&url, &["tenant", "list"]);
    let said = stderr(&listed);
    let expected = match backend {
        Backend::Sqlite => format!("database: {shown} (existing)\n"),
        Backend::Postgres => format!("database: {shown}\n"),
    };
    assert!(said.contains(&expected), "{said}");
    assert!(!said.contains(&crate::common::JWT_SECRET[..16]));
}

#[test]
fn tenant_commands_refuse_to_create_a_database() {
    // Run where no database is, with the default URL: nothing is created.
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_converger"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("CONVERGER_DATABASE_URL")
            .env_remove("CONVERGER_JWT_SECRET")
            .env_remove("CONVERGER_SECRET_KEY")
            .env("RUST_LOG", "error")
            .output()
            .expect("run converger")
    };
    let file = dir.path().canonicalize().unwrap().join("converger.db");
    for args in [
        &["tenant", "list"][..],
        &["tenant", "create", "acme"],
        &["tenant", "disable", "acme"],
        &["prune", "--older-than-days", "30"],
        &["secrets", "reencrypt"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("no database at sqlite://{}", file.display()))
                && stderr.contains("converger migrate"),
            "{args:?}: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }

    // `migrate` creates it, and says so; the tenant commands then use it.
    let out = run(&["migrate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("database: sqlite://{} (created)", file.display())),
        "{stderr}"
    );
    let out = run(&["tenant", "create", "acme"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("database: sqlite://{} (existing)", file.display())),
        "{stderr}"
    );
}

#[test]
fn every_bad_setting_is_reported_in_one_run() {
    let out = Command::new(env!("CARGO_BIN_EXE_converger"))
        .args(["tenant", "list"])
        .env("CONVERGER_DATABASE_URL", "sqlite://never-opened.db")
        .env("CONVERGER_DELIVERY_CONCURRENCY", "many")
        .env(
            "CONVERGER_TRUSTED_PROXIES",
            "10.0.0.0/8,proxy.internal,10.1.0.0/99",
        )
        .env("CONVERGER_PUBLIC_URL", "nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "CONVERGER_DELIVERY_CONCURRENCY `many`: invalid digit",
        "CONVERGER_TRUSTED_PROXIES `10.0.0.0/8,proxy.internal,10.1.0.0/99`: `proxy.internal`, `10.1.0.0/99` are not IP networks",
        "CONVERGER_PUBLIC_URL `nope` is not an http(s) URL",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from: {err}");
    }
    assert!(!std::path::Path::new("never-opened.db").exists());
}
