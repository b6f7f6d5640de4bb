//! The response-handler seam: what the processor calls with each response.
//!
//! The guide passes a lambda; Wharf calls a [`ResponseHandler`]. The built-in
//! [`LogResponse`] logs like the guide's lambda; WebAssembly plugins
//! (`crate::plugins`) implement the same trait.

use async_trait::async_trait;

use super::forwarder::ForwardResponse;
use crate::store::Message;

/// What a handler decided about a response that was not a failure status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// Delivered: the message leaves its store.
    Ack,
    /// Treat this attempt as failed and retry (if retries are left).
    Retry(String),
    /// Failed for good: apply `on_failure` now, without further attempts.
    Fail(String),
}

impl HandlerOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            HandlerOutcome::Ack => "ack",
            HandlerOutcome::Retry(_) => "retry",
            HandlerOutcome::Fail(_) => "fail",
        }
    }
}

/// A handler's outcome, and the plugin version that decided it (`None`:
/// built in or named by path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub outcome: HandlerOutcome,
    pub version: Option<u32>,
}

impl From<HandlerOutcome> for Handled {
    fn from(outcome: HandlerOutcome) -> Handled {
        Handled {
            outcome,
            version: None,
        }
    }
}

/// Called with every response the processor does not already count as a failure.
#[async_trait]
pub trait ResponseHandler: Send + Sync {
    /// The name used in config and metrics.
    fn name(&self) -> &str;

    /// Called while a request is in flight, before [`Self::handle`] may be
    /// called with its response: time to get ready (a plugin instantiates
    /// the fresh instance that call will use). Nothing by default.
    async fn prepare(&self) {}

    /// The response will not be handled after all (the attempt failed), or
    /// the processor is about to wait: whatever [`Self::prepare`] made, or
    /// the last call left, can go.
    fn discard(&self) {}

    /// `attempt` is 1 for the first forwarding attempt.
    async fn handle(&self, message: &Message, attempt: u32, response: &ForwardResponse) -> Handled;
}

/// The guide's handler: logs the response status and body, then acks.
#[derive(Debug, Default)]
pub struct LogResponse;

/// Longest body text that goes into one log line.
const LOGGED_BODY: usize = 1024;

#[async_trait]
impl ResponseHandler for LogResponse {
    fn name(&self) -> &str {
        "log-response"
    }

    async fn handle(
        &self,
        message: &Message,
        _attempt: u32,
        response: &ForwardResponse,
    ) -> Handled {
        let body = &response.body[..response.body.len().min(LOGGED_BODY)];
        match std::str::from_utf8(body) {
            Ok(text) => tracing::info!(
                message_id = %message.id,
                "Response received: status code {}: {}{}",
                response.status.as_u16(),
                text,
                if response.body.len() > LOGGED_BODY { " ..." } else { "" }
            ),
            Err(_) => tracing::info!(
                message_id = %message.id,
                "Response received: status code {}: {} bytes of binary body",
                response.status.as_u16(),
                response.body.len()
            ),
        }
        HandlerOutcome::Ack.into()
    }
}

/// The built-in handler called `name`, if there is one.
pub fn builtin(name: &str) -> Option<std::sync::Arc<dyn ResponseHandler>> {
    match name {
        "log-response" => Some(std::sync::Arc::new(LogResponse)),
        _ => None,
    }
}
