//! The failure-policy seam: asked after each failed attempt what to do next.
//!
//! Without a policy the processor's config decides (`retry_*`,
//! `max_redeliveries`, `on_failure`). A policy (a WebAssembly plugin of the
//! `failure-policy` world) may retry after a wait of its choosing, or end the
//! message's attempts with an action, or defer to the config.

use std::time::Duration;

use async_trait::async_trait;

use super::retry::Failure;
use crate::store::Message;

/// What a policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    RetryAfter(Duration),
    DeadLetter(String),
    Drop(String),
    Deactivate(String),
    /// Do what the processor's config says.
    Default,
}

impl PolicyDecision {
    pub fn label(&self) -> &'static str {
        match self {
            PolicyDecision::RetryAfter(_) => "retry-after",
            PolicyDecision::DeadLetter(_) => "dead-letter",
            PolicyDecision::Drop(_) => "drop",
            PolicyDecision::Deactivate(_) => "deactivate",
            PolicyDecision::Default => "default",
        }
    }
}

/// A policy's decision, and the plugin version that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub decision: PolicyDecision,
    pub version: Option<u32>,
}

/// Called after each failed forwarding attempt.
#[async_trait]
pub trait FailurePolicy: Send + Sync {
    /// The name used in metrics.
    fn name(&self) -> &str;

    /// `attempt` is the number of the attempt that failed (1 for the first).
    async fn decide(&self, message: &Message, failure: &Failure, attempt: u32) -> Decided;
}
