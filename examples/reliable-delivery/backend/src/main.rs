//! `test-backend`: run the guide's backend test service.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let options = test_backend::Options::parse();
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    tracing::info!(
        "test service listening on {} (answering {})",
        options.listen,
        options.status
    );
    test_backend::serve(listener, &options, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
