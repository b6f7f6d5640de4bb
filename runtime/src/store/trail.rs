//! Why a message was dead-lettered: its failure trail, kept beside it.
//!
//! A processor that gives up on a message and moves it to its dead-letter
//! store writes a [`Trail`] into the copy: which processor, from which store,
//! to which endpoint, how many attempts and when each was made, the last
//! status or transport error, and the last response body. Every backend
//! keeps it with the message (the embedded store in a column, RabbitMQ in
//! the `x-wharf-trail` header, ActiveMQ in `wharf-trail`), so peek, the
//! dead-letter API and the console show it wherever the store lives.
//!
//! The trail is bounded so that it fits any broker's header limits: the
//! response body kept is at most [`MAX_RESPONSE_BODY`] bytes, the error text
//! at most [`MAX_ERROR`], at most [`MAX_ATTEMPTS_KEPT`] attempt records (the
//! latest; `attempts` still counts them all), and the whole trail encodes to
//! at most [`MAX_ENCODED`] bytes of JSON ([`Trail::fit`] shortens the body,
//! then drops the oldest records, until it does).

use serde::{Deserialize, Serialize};

/// Most bytes of the last response body a trail keeps.
pub const MAX_RESPONSE_BODY: usize = 2048;
/// Most bytes of an error text (transport error, handler reason) kept.
pub const MAX_ERROR: usize = 512;
/// Most attempt records kept (the latest ones).
pub const MAX_ATTEMPTS_KEPT: usize = 32;
/// Most bytes a trail takes as JSON.
pub const MAX_ENCODED: usize = 6 * 1024;

/// How an attempt failed, as a filter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The endpoint answered a failure status.
    Status,
    /// No response: refused, reset, timed out, a TLS problem.
    Transport,
    /// The response handler retried or failed the message.
    Handler,
}

/// One forwarding attempt of a dead-lettered message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrailAttempt {
    /// When it started, milliseconds since the Unix epoch.
    pub at: i64,
    /// The status the endpoint answered, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong, in words.
    pub error: String,
}

/// The failure trail of a dead-lettered message (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trail {
    /// The processor that gave up.
    pub processor: String,
    /// The store the message was dead-lettered from (a replay's default target).
    pub store: String,
    /// The endpoint it was forwarded to.
    pub endpoint: String,
    /// When it was dead-lettered, milliseconds since the Unix epoch.
    pub dead_lettered_at: i64,
    /// How many attempts were made in all.
    pub attempts: u32,
    /// How the last attempt failed.
    pub kind: FailureKind,
    /// The last status the endpoint answered, if the last attempt got one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last failure in words.
    pub last_error: String,
    /// The last response body (lossy UTF-8), at most [`MAX_RESPONSE_BODY`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_response_body: Option<String>,
    /// Whether `last_response_body` was cut short.
    #[serde(default)]
    pub last_response_truncated: bool,
    /// The latest attempts, oldest first (at most [`MAX_ATTEMPTS_KEPT`]).
    pub attempt_log: Vec<TrailAttempt>,
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn truncate(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

impl Trail {
    /// The response body as a trail keeps it: lossy UTF-8, cut to
    /// [`MAX_RESPONSE_BODY`] bytes; `None` when empty.
    pub fn response_body(body: &[u8]) -> (Option<String>, bool) {
        if body.is_empty() {
            return (None, false);
        }
        let cut = &body[..body.len().min(MAX_RESPONSE_BODY + 4)];
        let text = String::from_utf8_lossy(cut);
        let (kept, truncated) = truncate(&text, MAX_RESPONSE_BODY);
        (
            Some(kept.to_owned()),
            truncated || body.len() > MAX_RESPONSE_BODY + 4,
        )
    }

    /// Shortens the trail until it encodes to at most [`MAX_ENCODED`] bytes:
    /// first the response body, then the oldest attempt records.
    pub fn fit(&mut self) {
        let (error, _) = truncate(&self.last_error, MAX_ERROR);
        self.last_error = error.to_owned();
        for attempt in &mut self.attempt_log {
            let (error, _) = truncate(&attempt.error, MAX_ERROR);
            attempt.error = error.to_owned();
        }
        if self.attempt_log.len() > MAX_ATTEMPTS_KEPT {
            let extra = self.attempt_log.len() - MAX_ATTEMPTS_KEPT;
            self.attempt_log.drain(..extra);
        }
        while self.encode().len() > MAX_ENCODED {
            if let Some(body) = &mut self.last_response_body
                && !body.is_empty()
            {
                let (kept, _) = truncate(body, body.len() / 2);
                *body = kept.to_owned();
                self.last_response_truncated = true;
            } else if self.attempt_log.len() > 1 {
                self.attempt_log.remove(0);
            } else {
                let (error, _) = truncate(&self.last_error, self.last_error.len() / 2);
                self.last_error = error.to_owned();
                if self.last_error.is_empty() {
                    break;
                }
            }
        }
    }

    /// The trail as JSON, as the backends keep it.
    pub fn encode(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a trail a backend kept; `None` (with a warning) if it does not parse.
    pub fn decode(text: &str, message_id: &str) -> Option<Trail> {
        match serde_json::from_str(text) {
            Ok(trail) => Some(trail),
            Err(e) => {
                tracing::warn!(message_id, error = %e, "a dead letter's failure trail does not parse; shown without it");
                None
            }
        }
    }

    /// Whether the last failure matches a status filter: a status (`503`),
    /// a class (`5xx`, `4xx`), `transport` or `handler`.
    pub fn matches_status(&self, filter: &StatusFilter) -> bool {
        match filter {
            StatusFilter::Exact(status) => self.last_status == Some(*status),
            StatusFilter::Class(class) => self.last_status.is_some_and(|s| s / 100 == *class),
            StatusFilter::Kind(kind) => self.kind == *kind,
        }
    }
}

/// One `status` filter of the dead-letter API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// One status, e.g. `503`.
    Exact(u16),
    /// A class: `5` for `5xx`.
    Class(u16),
    /// `transport` or `handler` (or `status`: any failure status).
    Kind(FailureKind),
}

impl std::str::FromStr for StatusFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<StatusFilter, String> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let bad = || {
            format!(
                "status {s:?} is not a status (503), a class (5xx), \"transport\" or \"handler\""
            )
        };
        match lower.as_str() {
            "transport" => return Ok(StatusFilter::Kind(FailureKind::Transport)),
            "handler" => return Ok(StatusFilter::Kind(FailureKind::Handler)),
            "status" => return Ok(StatusFilter::Kind(FailureKind::Status)),
            _ => {}
        }
        if let Some(class) = lower.strip_suffix("xx") {
            return match class.parse::<u16>() {
                Ok(c @ 1..=5) if class.len() == 1 => Ok(StatusFilter::Class(c)),
                _ => Err(bad()),
            };
        }
        match lower.parse::<u16>() {
            Ok(status @ 100..=599) => Ok(StatusFilter::Exact(status)),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A trail as a processor writes one, for the backends' round trips.
    pub(crate) fn sample() -> Trail {
        let mut t = trail("{\"error\": \"busy: try later\"}\r\n\\", 6);
        t.attempt_log[2].status = None;
        t.attempt_log[2].error = "connection refused: tcp connect error".into();
        t
    }

    fn trail(body: &str, attempts: usize) -> Trail {
        Trail {
            processor: "p".into(),
            store: "s".into(),
            endpoint: "http://127.0.0.1:1/x".into(),
            dead_lettered_at: 1,
            attempts: attempts as u32,
            kind: FailureKind::Status,
            last_status: Some(503),
            last_error: "endpoint answered 503".into(),
            last_response_body: Some(body.into()),
            last_response_truncated: false,
            attempt_log: (0..attempts)
                .map(|n| TrailAttempt {
                    at: n as i64,
                    status: Some(503),
                    error: "endpoint answered 503".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_trail_survives_encoding() {
        let t = trail("{\"error\":\"busy\"}", 6);
        assert_eq!(Trail::decode(&t.encode(), "m"), Some(t));
        assert_eq!(Trail::decode("{not json", "m"), None);
    }

    #[test]
    fn a_trail_of_a_huge_body_and_many_attempts_fits_and_keeps_the_latest() {
        let body = "\u{1}\"é".repeat(4000);
        let (kept, truncated) = Trail::response_body(body.as_bytes());
        assert!(truncated);
        assert!(kept.as_ref().unwrap().len() <= MAX_RESPONSE_BODY);
        let mut t = trail(&kept.unwrap(), 1000);
        t.fit();
        assert!(t.encode().len() <= MAX_ENCODED, "{}", t.encode().len());
        assert!(t.attempt_log.len() <= MAX_ATTEMPTS_KEPT);
        assert_eq!(t.attempt_log.last().unwrap().at, 999);
        assert_eq!(t.attempts, 1000);
        assert!(t.last_response_truncated);
    }

    #[test]
    fn status_filters_read_as_documented() {
        let t = trail("", 1);
        for (filter, matches) in [
            ("503", true),
            ("500", false),
            ("5xx", true),
            ("4XX", false),
            ("status", true),
            ("transport", false),
        ] {
            let f: StatusFilter = filter.parse().unwrap();
            assert_eq!(t.matches_status(&f), matches, "{filter}");
        }
        for bad in ["", "9xx", "55xx", "42", "timeout"] {
            assert!(bad.parse::<StatusFilter>().is_err(), "{bad}");
        }
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), ("h", true));
        assert_eq!(truncate("hi", 5), ("hi", false));
    }
}
