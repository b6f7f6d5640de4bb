//! The `wharf` command line: `run` and `check`, and commands that talk to a
//! running instance's admin API: `apply`, `reload`, `deploy`, `plugins`,
//! `rollback`, `tenants`, `tokens`, and for the people on call `status`,
//! `dlq`, `processors` (`cli/operate.rs`); `--tenant` scopes them to one tenant.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wharf::admin::client::AdminClient;
use wharf::app::{self, Listeners};
use wharf::config::Config;
use wharf::plugins::registry::{Deployed, PluginView};
use wharf::plugins::{self, Lookup};

#[path = "cli/operate.rs"]
mod operate;

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "Reliable store-and-forward delivery of HTTP messages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the routes, stores and processors of CONFIG until SIGINT/SIGTERM.
    Run {
        /// The config file.
        #[arg(default_value = "wharf.toml")]
        config: PathBuf,
    },
    /// Validate CONFIG and the plugins it names without starting anything; non-zero exit on error.
    Check {
        /// The config file.
        config: PathBuf,
    },
    /// Upload FILE as the next version of plugin NAME and make it live.
    Deploy {
        /// The plugin's name, as processors' `response_handler` / `failure_policy` use it.
        name: String,
        /// The component (`.wasm`).
        file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List deployed plugins, or show the versions of one.
    Plugins {
        name: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Apply FILE (a pipeline document: the config without [server], TOML or
    /// JSON) to a running instance; prints the diff.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        how: ApplyArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the running instance re-read its config file and apply its pipeline (as SIGHUP does).
    Reload {
        #[command(flatten)]
        how: ApplyArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List tenants, or show one: prefix, hosts, live revision, counts.
    Tenants {
        name: Option<String>,
        /// Print the admin API's JSON instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make, list or revoke a tenant's API tokens (--tenant; default: `default`).
    Tokens {
        #[command(subcommand)]
        action: TokenAction,
        /// Print the admin API's JSON instead.
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The tenant's stores (depth) and processors (state, rate, last failure).
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A store's dead letters: list, show, replay, purge.
    Dlq {
        #[command(subcommand)]
        action: operate::DlqAction,
        /// Print the admin API's JSON instead.
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Activate or deactivate a processor.
    Processors {
        #[command(subcommand)]
        action: operate::ProcessorAction,
        /// Print the admin API's JSON instead.
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the version before the live one (or --version N) live again.
    Rollback {
        name: String,
        /// The version to make live.
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Make a token; its secret is printed once.
    Create {
        name: String,
        /// `admin` (everything of the tenant), `read` (only GET) or
        /// `ingress` (only sending to routes with `tenant_tokens`).
        #[arg(long, default_value = "admin")]
        role: String,
        /// e.g. `30d`; without it the token does not expire.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token: it is refused from now on.
    Revoke { name: String },
}

/// How an apply goes.
#[derive(clap::Args)]
struct ApplyArgs {
    /// Show what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove stores that still hold messages (they stay in the store's file or queue).
    #[arg(long)]
    force: bool,
}

impl ApplyArgs {
    /// The query string of the apply.
    fn query(&self) -> &'static str {
        match (self.dry_run, self.force) {
            (false, false) => "",
            (true, false) => "?dry_run=true",
            (false, true) => "?force=true",
            (true, true) => "?dry_run=true&force=true",
        }
    }
}

/// Where the running instance's admin API is.
#[derive(clap::Args)]
pub(crate) struct AdminArgs {
    /// The admin API's URL (`server.admin`).
    #[arg(
        long,
        env = "WHARF_ADMIN",
        default_value = "http://127.0.0.1:9190",
        global = true
    )]
    admin: String,
    /// The admin token (`server.admin_token`), if one is set.
    #[arg(long, env = "WHARF_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The tenant whose pipeline or plugins the command is about (default: `default`).
    #[arg(long, env = "WHARF_TENANT", global = true)]
    pub(crate) tenant: Option<String>,
}

impl AdminArgs {
    pub(crate) fn client(&self) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::new(&self.admin, self.token.clone())?)
    }

    /// The admin path of `path` in the chosen tenant.
    pub(crate) fn scoped(&self, path: &str) -> String {
        match self.tenant.as_deref() {
            None | Some("default") => path.to_owned(),
            Some(tenant) => format!("/tenants/{tenant}{path}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Deploy { name, file, admin } => deploy(&name, &file, &admin),
        Command::Plugins { name, admin } => list_plugins(name.as_deref(), &admin),
        Command::Rollback {
            name,
            version,
            admin,
        } => rollback(&name, version, &admin),
        Command::Apply { file, how, admin } => apply(&file, &how, &admin),
        Command::Reload { how, admin } => reload(&how, &admin),
        Command::Tenants { name, json, admin } => list_tenants(name.as_deref(), json, &admin),
        Command::Tokens {
            action,
            json,
            admin,
        } => tokens(&action, json, &admin),
        Command::Status { json, admin } => operate::status(json, &admin),
        Command::Dlq {
            action,
            json,
            admin,
        } => operate::dlq(&action, json, &admin),
        Command::Processors {
            action,
            json,
            admin,
        } => operate::processors(&action, json, &admin),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let invalid = || format!("{} is not valid", path.display());
    let config = Config::load(path).with_context(invalid)?;
    // Plugins are checked too: files compiled and linked against their world,
    // deployed names looked up under data_dir (without creating anything).
    let plugins_dir = config.server.data_dir.join("plugins");
    let registry = if plugins_dir.is_dir() {
        Some(app::open_registry(&config.server.data_dir).with_context(invalid)?)
    } else {
        None
    };
    let mut notes = Vec::new();
    for p in config.pipeline.processors.values() {
        let resolved =
            plugins::resolve(p, Lookup::Check(registry.as_ref())).with_context(invalid)?;
        for name in resolved.waiting_names() {
            notes.push(format!(
                "note: processors.{}: plugin {name:?} is not deployed under {}; the processor waits for it",
                p.name,
                plugins_dir.display()
            ));
        }
    }
    // TLS files are read and checked as `wharf run` would.
    for s in config.pipeline.stores.values() {
        s.backend.check_files(&s.name).with_context(invalid)?;
    }
    println!(
        "{}: ok ({} stores, {} routes, {} processors)",
        path.display(),
        config.pipeline.stores.len(),
        config.pipeline.routes.len(),
        config.pipeline.processors.len()
    );
    for note in notes {
        println!("{note}");
    }
    Ok(())
}

/// Prints an apply's answer: the revision and the diff, readable.
fn print_applied(answer: serde_json::Value, dry_run: bool) -> anyhow::Result<()> {
    let applied: wharf::pipeline::Applied =
        serde_json::from_value(answer).context("the admin API answered an unexpected apply")?;
    if dry_run {
        println!(
            "dry run: revision {} stays live; applying would change:",
            applied.revision
        );
    } else {
        println!("revision {} live:", applied.revision);
    }
    print!("{}", applied.diff.render());
    for note in applied.notes.iter().flatten() {
        println!("note: {note}");
    }
    Ok(())
}

fn apply(file: &std::path::Path, how: &ApplyArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let content_type = if file.extension().is_some_and(|e| e == "json") {
        "application/json"
    } else {
        "application/toml"
    };
    let client = admin.client()?;
    let path = admin.scoped(&format!("/pipeline{}", how.query()));
    let (_, answer) = block_on(async {
        Ok(client
            .send(http::Method::PUT, &path, Some((content_type, bytes)))
            .await?)
    })
    .with_context(|| format!("applying {}", file.display()))?;
    print_applied(answer, how.dry_run)
}

fn reload(how: &ApplyArgs, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.client()?;
    let path = format!("/pipeline/reload{}", how.query());
    let (_, answer) = block_on(async { Ok(client.call(http::Method::POST, &path, None).await?) })
        .context("reloading the config file")?;
    print_applied(answer, how.dry_run)
}

fn list_tenants(name: Option<&str>, json: bool, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.client()?;
    let path = name.map_or_else(|| "/tenants".to_owned(), |n| format!("/tenants/{n}"));
    let (_, answer) = block_on(async { Ok(client.call(http::Method::GET, &path, None).await?) })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let tenants: Vec<wharf::api::TenantView> = match answer {
        serde_json::Value::Array(_) => serde_json::from_value(answer)?,
        one => vec![serde_json::from_value(one)?],
    };
    for t in &tenants {
        let reached = if t.prefix.is_none() && t.hosts.is_empty() {
            "bare paths".to_owned()
        } else {
            let mut ways: Vec<String> = t.prefix.iter().map(|p| format!("{p}/...")).collect();
            ways.extend(t.hosts.iter().map(|h| format!("host {h}")));
            ways.join(", ")
        };
        println!(
            "{}: revision {}, {} store(s), {} processor(s); {reached}",
            t.name, t.revision, t.stores, t.processors,
        );
    }
    Ok(())
}

fn tokens(action: &TokenAction, json: bool, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.client()?;
    let (method, path, body) = match action {
        TokenAction::Create {
            name,
            role,
            expires_in,
        } => {
            let role = serde_json::from_value(serde_json::Value::String(role.clone()))
                .map_err(|_| anyhow::anyhow!("--role {role:?}: admin, read or ingress"))?;
            let body = wharf::api::NewToken {
                name: name.clone(),
                role,
                expires_in: expires_in.clone(),
            };
            (
                http::Method::POST,
                admin.scoped("/tokens"),
                Some(serde_json::to_vec(&body)?),
            )
        }
        TokenAction::List => (http::Method::GET, admin.scoped("/tokens"), None),
        TokenAction::Revoke { name } => (
            http::Method::DELETE,
            admin.scoped(&format!("/tokens/{name}")),
            None,
        ),
    };
    let (_, answer) = block_on(async {
        Ok(client
            .send(method, &path, body.map(|b| ("application/json", b)))
            .await?)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    match action {
        TokenAction::Create { .. } => {
            let t: wharf::api::TokenCreated = serde_json::from_value(answer)?;
            println!(
                "token {} ({}) of tenant {}; the secret is shown only now:\n{}",
                t.name,
                role_name(t.role),
                t.tenant,
                t.secret
            );
        }
        TokenAction::List => {
            let list: Vec<wharf::api::TokenView> = serde_json::from_value(answer)?;
            for t in &list {
                println!(
                    "{} ({}), created {}{}",
                    t.name,
                    role_name(t.role),
                    t.created_at,
                    t.expires_at
                        .as_deref()
                        .map(|e| format!(", expires {e}"))
                        .unwrap_or_default()
                );
            }
        }
        TokenAction::Revoke { name } => println!("token {name} revoked"),
    }
    Ok(())
}

/// A role as the API writes it (`admin`, `read`, `ingress`).
fn role_name(role: wharf::tenant::Role) -> String {
    serde_json::to_value(role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A current-thread runtime for one admin call.
pub(crate) fn block_on<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(work)
}

fn deploy(name: &str, file: &std::path::Path, admin: &AdminArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let size = bytes.len();
    let client = admin.client()?;
    let started = std::time::Instant::now();
    let (status, live) = block_on(async {
        Ok(client
            .send(
                http::Method::PUT,
                &admin.scoped(&format!("/plugins/{name}")),
                Some(("application/wasm", bytes)),
            )
            .await?)
    })
    .with_context(|| format!("deploying {} as {name}", file.display()))?;
    let live: Deployed = serde_json::from_value(live)?;
    let what = if status == http::StatusCode::CREATED {
        "deployed"
    } else {
        "unchanged (the live version has these bytes)"
    };
    println!(
        "{name}: version {} ({}) live, {what}; {size} bytes in {} ms",
        live.version,
        live.world,
        started.elapsed().as_millis()
    );
    Ok(())
}

fn list_plugins(name: Option<&str>, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.client()?;
    let path =
        admin.scoped(&name.map_or_else(|| "/plugins".to_owned(), |n| format!("/plugins/{n}")));
    let (_, answer) = block_on(async { Ok(client.call(http::Method::GET, &path, None).await?) })?;
    let plugins: Vec<PluginView> = match answer {
        serde_json::Value::Array(_) => serde_json::from_value(answer)?,
        one => vec![serde_json::from_value(one)?],
    };
    if plugins.is_empty() {
        println!("no plugins deployed");
    }
    for plugin in &plugins {
        println!(
            "{} ({}): live {}",
            plugin.name,
            plugin.world,
            plugin
                .live
                .map_or_else(|| "none".to_owned(), |v| format!("v{v}"))
        );
        for v in &plugin.versions {
            let marker = if Some(v.version) == plugin.live {
                "*"
            } else {
                " "
            };
            println!(
                "  {marker} v{:<4} {:>10} bytes  sha256 {}  {}",
                v.version,
                v.size,
                v.sha256.get(..16).unwrap_or("?"),
                v.deployed_at
            );
        }
        if let Some(users) = &plugin.used_by {
            println!(
                "  used by: {}",
                if users.is_empty() {
                    "-".to_owned()
                } else {
                    users.join(", ")
                }
            );
        }
    }
    Ok(())
}

fn rollback(name: &str, version: Option<u32>, admin: &AdminArgs) -> anyhow::Result<()> {
    let client = admin.client()?;
    let path = admin.scoped(&match version {
        Some(v) => format!("/plugins/{name}/rollback?version={v}"),
        None => format!("/plugins/{name}/rollback"),
    });
    let (_, live) = block_on(async { Ok(client.call(http::Method::POST, &path, None).await?) })
        .with_context(|| format!("rolling back {name}"))?;
    let live: Deployed = serde_json::from_value(live)?;
    println!("{name}: version {} live", live.version);
    Ok(())
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path).with_context(|| format!("{} is not valid", path.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(config.server.listen, config.server.admin)
            .await
            .context("cannot listen")?;
        tracing::info!("ingress listening on {}", listeners.ingress.local_addr()?);
        tracing::info!("admin listening on {}", listeners.admin.local_addr()?);
        app::run(config, listeners, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
