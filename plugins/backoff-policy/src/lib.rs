//! A forwarding-failure policy: retries after 100 ms, 200 ms, 400 ms, then
//! dead-letters, whatever the processor's retry settings say.

wit_bindgen::generate!({ world: "failure-policy", path: "../../wit" });

use wharf::plugin::log::{Level, log};

/// Attempts before the message goes to the dead-letter store.
const ATTEMPTS: u32 = 4;
const FIRST_WAIT_MS: u64 = 100;

struct BackoffPolicy;

impl Guest for BackoffPolicy {
    fn on_failure(message: Message, failure: Failure, attempt: u32) -> Decision {
        if attempt >= ATTEMPTS {
            log(Level::Warn, &format!("{}: giving up after {attempt} attempts", message.id));
            return Decision::DeadLetter(format!("{attempt} attempts, last: {}", failure.reason));
        }
        Decision::RetryAfter(FIRST_WAIT_MS << (attempt - 1))
    }
}

export!(BackoffPolicy);
