//! The guide's backend test service: `POST /testservice/test` takes a JSON
//! message, prints its headers and payload ("HIT!!"), and answers a static
//! JSON. `--status` makes it answer something else (the guide's "backend
//! returns an error" scenario); stopping it is the "backend not available" one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use tokio::net::TcpListener;

/// How the service answers.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "test-backend", about = "The guide's backend test service")]
pub struct Options {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9095")]
    pub listen: SocketAddr,
    /// Status of every answer (the guide answers 202; try 500).
    #[arg(long, default_value_t = 202)]
    pub status: u16,
    /// Do not print each request (for load tests).
    #[arg(long)]
    pub quiet: bool,
}

struct Service {
    status: StatusCode,
    quiet: bool,
    hits: AtomicU64,
}

/// The service's routes.
pub fn router(options: &Options) -> anyhow::Result<Router> {
    let status = StatusCode::from_u16(options.status)
        .map_err(|_| anyhow::anyhow!("--status {} is not an HTTP status", options.status))?;
    let service = Arc::new(Service {
        status,
        quiet: options.quiet,
        hits: AtomicU64::new(0),
    });
    Ok(Router::new()
        .route("/testservice/test", post(make_appointment))
        .with_state(service))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    options: &Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(options)?)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn make_appointment(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let hit = service.hits.fetch_add(1, Ordering::Relaxed) + 1;
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(
                serde_json::json!({"Message": "Invalid payload - Not a valid JSON payload"}),
            ),
        );
    };
    if !service.quiet {
        let headers: Vec<String> = headers
            .iter()
            .map(|(n, v)| format!("[{}: {}]", n, String::from_utf8_lossy(v.as_bytes())))
            .collect();
        tracing::info!(
            hit,
            "HIT!! - payload = {payload} Headers = {}",
            headers.join(" , ")
        );
    }
    (
        service.status,
        axum::Json(serde_json::json!({"Message": "This is Test Service"})),
    )
}
