//! The `wharf` command line: `run` and `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wharf::app::{self, Listeners};
use wharf::config::Config;

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
    /// Validate CONFIG without starting anything; non-zero exit on error.
    Check {
        /// The config file.
        config: PathBuf,
    },
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
    let config = Config::load(path).with_context(|| format!("{} is not valid", path.display()))?;
    // Plugins are checked too: compiled and linked against their world.
    for p in config.processors.values() {
        app::response_handler(p).with_context(|| format!("{} is not valid", path.display()))?;
        app::failure_policy(p).with_context(|| format!("{} is not valid", path.display()))?;
    }
    println!(
        "{}: ok ({} stores, {} routes, {} processors)",
        path.display(),
        config.stores.len(),
        config.routes.len(),
        config.processors.len()
    );
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
