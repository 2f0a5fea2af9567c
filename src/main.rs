//! The `converger` command: parses the CLI, sets up logging and runs a subcommand.
//! Tenant commands call [`converger::operations`], as the admin panel and API do, so a
//! tenant name is checked the same way here.
//!
//! Every command that opens the database names it on stderr. `serve` and `migrate`
//! create a missing SQLite file; the others refuse to, so that running one in the wrong
//! directory says so instead of leaving an empty database there.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use converger::config::{self, CliError, Config};
use converger::domain::{Tenant, TenantStatus};
use converger::operations::tenants;
use converger::store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Converger: a multi-tenant message routing hub.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, socket endpoints and workers (applies migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage the encryption of stored channel secrets.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Delete activities older than N days whose deliveries all succeeded, in batches.
    Prune {
        /// Age in days; younger activities are kept.
        #[arg(long)]
        older_than_days: u64,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Re-encrypt every channel secret and secret config value with
    /// CONVERGER_SECRET_KEY, so that the keys of CONVERGER_SECRET_KEY_PREVIOUS are no
    /// longer needed.
    Reencrypt,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its API key (shown this once).
    Create {
        /// 1 to 200 characters, surrounding spaces trimmed; no other tenant may have
        /// it, compared without case.
        name: String,
    },
    /// List tenants, oldest first: id, status, API key prefix and name.
    List,
    /// Disable a tenant: its credentials stop working at once.
    Disable {
        /// Tenant id, name or API key prefix.
        tenant: String,
    },
    /// Enable a disabled tenant.
    Enable {
        /// Tenant id, name or API key prefix.
        tenant: String,
    },
    /// Replace a tenant's API key and print the new one; the old one stops working.
    RotateKey {
        /// Tenant id, name or API key prefix.
        tenant: String,
    },
}

fn main() -> ExitCode {
    let cli = match config::parse_all::<Cli>(std::env::args_os(), |cli| &cli.config) {
        Ok(cli) => cli,
        Err(CliError::Clap(e)) => e.exit(),
        Err(CliError::Invalid(problems)) => {
            eprintln!("converger: invalid configuration:");
            for problem in problems {
                eprintln!("  - {problem}");
            }
            return ExitCode::from(2);
        }
    };
    let _telemetry = converger::telemetry::init(cli.config.log_format);
    converger::app::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("converger: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("converger: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a command may create the SQLite database file it is pointed at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// `serve` and `migrate` create and migrate a new database.
    Create,
    /// The other commands refuse, so that a mistyped path or a command run in the
    /// wrong directory does not leave an empty database behind.
    Refuse,
}

/// Opens (and migrates) the configured database for a command and says on stderr which
/// one it is: `database: sqlite:///srv/converger.db (existing)`, `(created)`, or a
/// PostgreSQL URL without its password.
async fn open_database(config: &Config, missing: Missing) -> anyhow::Result<Store> {
    let shown = config.database_display();
    let file = config.sqlite_file();
    let existed = file.as_ref().map(|f| f.exists());
    if existed == Some(false) && missing == Missing::Refuse {
        anyhow::bail!(
            "no database at {shown}: set CONVERGER_DATABASE_URL (or --database-url) to the \
             installation's database, or create this one with `converger migrate`"
        );
    }
    let store = converger::app::open_store(config).await?;
    match existed {
        Some(true) => eprintln!("database: {shown} (existing)"),
        Some(false) => eprintln!("database: {shown} (created)"),
        None => eprintln!("database: {shown}"),
    }
    Ok(store)
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => {
            let store = open_database(&cli.config, Missing::Create).await?;
            store.close().await;
            println!("migrations applied");
            Ok(())
        }
        Command::Prune { older_than_days } => {
            let store = open_database(&cli.config, Missing::Refuse).await?;
            let cutoff = converger::domain::Timestamp::now().minus(std::time::Duration::from_secs(
                older_than_days.saturating_mul(86_400),
            ));
            let batch = converger::delivery::PRUNE_BATCH;
            let result = match store.prune_delivered(cutoff, batch).await {
                Ok(activities) => store
                    .prune_ops_events(cutoff, batch)
                    .await
                    .map(|events| (activities, events)),
                Err(e) => Err(e),
            };
            store.close().await;
            let (activities, events) = result?;
            println!("pruned {activities} activities and {events} operational events");
            Ok(())
        }
        Command::Secrets(SecretsCommand::Reencrypt) => {
            let store = open_database(&cli.config, Missing::Refuse).await?;
            if store.sealer().keys().current().is_none() {
                store.close().await;
                anyhow::bail!("CONVERGER_SECRET_KEY is not set: there is no key to encrypt with");
            }
            let result = store.seal_channels(converger::store::Reseal::Rotate).await;
            store.close().await;
            println!("re-encrypted {} channels", result?);
            Ok(())
        }
        Command::Tenant(cmd) => {
            let store = open_database(&cli.config, Missing::Refuse).await?;
            let result = tenant(&store, cmd).await;
            store.close().await;
            result
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let store = open_database(&config, Missing::Create).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    converger::app::run_with_store(config, store, listener, shutdown).await
}

/// Cancels `token` on Ctrl-C or SIGTERM, which starts the node's shutdown sequence
/// (`converger::app`, "Shutdown").
async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}

/// The columns of [`print_tenant`], for `tenant list`.
fn print_tenant_header() {
    println!("{:<36}  {:<8}  {:<14}  NAME", "ID", "STATUS", "KEY PREFIX");
}

fn print_tenant(t: &Tenant) {
    println!(
        "{}  {:<8}  {:<14}  {}",
        t.id,
        t.status.as_str(),
        t.api_key_prefix,
        t.name
    );
}

/// The tenant that `needle` (an id, a name or an API key prefix) names.
async fn find_tenant(store: &Store, needle: &str) -> anyhow::Result<Tenant> {
    match store.find_tenant(needle).await {
        Ok(tenant) => Ok(tenant),
        Err(StoreError::NotFound) => {
            anyhow::bail!("tenant not found: no tenant has the id, name or key prefix `{needle}`")
        }
        Err(e) => Err(e.into()),
    }
}

async fn tenant(store: &Store, cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create { name } => {
            let created = tenants::create(store, &name).await?;
            println!("tenant  {}", created.tenant.id);
            println!("name    {}", created.tenant.name);
            println!("api key {}", created.api_key);
            eprintln!("(the API key is shown only now: keep it)");
        }
        TenantCommand::List => {
            print_tenant_header();
            for t in store.list_tenants().await? {
                print_tenant(&t);
            }
        }
        TenantCommand::Disable { tenant } => {
            let t = find_tenant(store, &tenant).await?;
            print_tenant(&tenants::set_status(store, t.id, TenantStatus::Inactive).await?);
        }
        TenantCommand::Enable { tenant } => {
            let t = find_tenant(store, &tenant).await?;
            print_tenant(&tenants::set_status(store, t.id, TenantStatus::Active).await?);
        }
        TenantCommand::RotateKey { tenant } => {
            let t = find_tenant(store, &tenant).await?;
            let rotated = tenants::rotate_key(store, t.id).await?;
            println!("api key {}", rotated.api_key);
            eprintln!("(the API key is shown only now: keep it; the old one no longer works)");
        }
    }
    Ok(())
}
