//! How a [`Message`] travels as a STOMP message on ActiveMQ, and back.
//!
//! | Wharf | STOMP (SEND / MESSAGE headers) |
//! |---|---|
//! | body | the frame body, raw, with `content-length` (ActiveMQ keeps it as a BytesMessage) |
//! | id | `wharf-id` |
//! | `received_at` (ms) | `wharf-received-at` |
//! | `Content-Type` header | `content-type` |
//! | method | `wharf-method` |
//! | path and query | `wharf-path` |
//! | failure trail (a dead letter's) | `wharf-trail`: base64 of its JSON (base64, not escaped JSON, so that it stays under ActiveMQ's 10 KiB per header) |
//! | request headers | `wharf-headers`: `name: value` lines ending in CRLF, in arrival order (STOMP escapes the line ends); or, if a value is not UTF-8, `wharf-headers-bin`: base64 of Wharf's binary header record |
//!
//! Every Wharf header starts with `wharf-`, so none clashes with ActiveMQ's
//! own (`message-id`, `timestamp`, `priority`, `expires`, `type`,
//! `correlation-id`, `reply-to`, `persistent`, `JMSX...`). SENDs carry
//! `persistent:true`. A message of another producer is forwarded too: no
//! `wharf-id` → ActiveMQ's `message-id` (stable across redeliveries); no
//! method → `POST`; no path → `/`; no headers → only `Content-Type` from
//! `content-type`; no time → ActiveMQ's `timestamp`. A Wharf header that
//! does not parse (another producer's mistake) falls back the same way,
//! with a warning: a malformed message is forwarded, never left to stall
//! the queue.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use super::frame::Frame;
use crate::store::Message;
use crate::store::trail::Trail;
use std::sync::Arc;

const ID: &str = "wharf-id";
const RECEIVED_AT: &str = "wharf-received-at";
const METHOD: &str = "wharf-method";
const PATH: &str = "wharf-path";
const HEADERS: &str = "wharf-headers";
const HEADERS_BIN: &str = "wharf-headers-bin";
const TRAIL: &str = "wharf-trail";

/// The SEND frame that stores `message` on `destination` (`/queue/NAME`).
pub fn send_frame(destination: &str, message: &Message) -> Frame {
    let mut frame = Frame::new("SEND")
        .header("destination", destination)
        .header("persistent", "true")
        .header(ID, message.id.clone())
        .header(RECEIVED_AT, message.received_at.to_string())
        .header(METHOD, message.method.as_str())
        .header(PATH, message.path.clone());
    if let Some(content_type) = message
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        frame = frame.header("content-type", content_type);
    }
    let text = message
        .headers
        .values()
        .all(|v| std::str::from_utf8(v.as_bytes()).is_ok());
    if text {
        let mut block = String::with_capacity(message.headers.len() * 32);
        for (name, value) in &message.headers {
            block.push_str(name.as_str());
            block.push_str(": ");
            block.push_str(std::str::from_utf8(value.as_bytes()).unwrap_or_default());
            block.push_str("\r\n");
        }
        frame = frame.header(HEADERS, block);
    } else {
        frame = frame.header(HEADERS_BIN, STANDARD.encode(message.encode_headers()));
    }
    if let Some(trail) = &message.trail {
        frame = frame.header(TRAIL, STANDARD.encode(trail.encode()));
    }
    frame.body(message.body.clone())
}

fn text_headers(block: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in block.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

/// The message a MESSAGE frame carries (see the module doc for defaults).
pub fn message(frame: Frame) -> Message {
    let broker_id = frame.get("message-id").map(str::to_owned);
    let mut problems = Vec::new();
    let headers = if let Some(block) = frame.get(HEADERS) {
        text_headers(block)
    } else if let Some(bin) = frame.get(HEADERS_BIN) {
        match STANDARD
            .decode(bin)
            .ok()
            .and_then(|b| Message::decode_headers(&b))
        {
            Some(headers) => headers,
            None => {
                problems.push(HEADERS_BIN);
                HeaderMap::new()
            }
        }
    } else {
        let mut headers = HeaderMap::new();
        if let Some(v) = frame
            .get("content-type")
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(header::CONTENT_TYPE, v);
        }
        headers
    };
    let method = match frame.get(METHOD) {
        None => Method::POST,
        Some(m) => Method::from_bytes(m.as_bytes()).unwrap_or_else(|_| {
            problems.push(METHOD);
            Method::POST
        }),
    };
    let path = match frame.get(PATH) {
        None => "/".to_owned(),
        Some(p) if p.starts_with('/') => p.to_owned(),
        Some(_) => {
            problems.push(PATH);
            "/".to_owned()
        }
    };
    let broker_time = frame.get("timestamp").and_then(|t| t.parse::<i64>().ok());
    let received_at = match frame.get(RECEIVED_AT).map(str::parse::<i64>) {
        Some(Ok(ms)) => Some(ms),
        Some(Err(_)) => {
            problems.push(RECEIVED_AT);
            broker_time
        }
        None => broker_time,
    };
    let id = frame.get(ID).filter(|id| !id.is_empty()).map(str::to_owned);
    let mut message = Message::new(method, path, headers, Bytes::new());
    if let Some(ms) = received_at {
        message.received_at = ms;
    }
    if let Some(id) = id.or(broker_id) {
        message.id = id;
    }
    if let Some(encoded) = frame.get(TRAIL) {
        let json = STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        message.trail = match json {
            Some(json) => Trail::decode(&json, &message.id).map(Arc::new),
            None => {
                problems.push(TRAIL);
                None
            }
        };
    }
    if !problems.is_empty() {
        tracing::warn!(
            message = %message.id,
            headers = ?problems,
            "a message on an ActiveMQ queue has malformed Wharf headers; forwarding it with defaults"
        );
    }
    message.body = frame.body;
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the broker hands back: the SEND's headers plus its own.
    fn delivered(send: Frame) -> Frame {
        let mut frame = Frame::new("MESSAGE")
            .header("message-id", "ID:broker-1:1:1:1:7")
            .header("timestamp", "1700000000000");
        frame.headers.extend(send.headers);
        frame.body(send.body)
    }

    #[test]
    fn message_survives_the_round_trip() {
        let mut headers = HeaderMap::new();
        headers.append("content-type", "application/json".parse().unwrap());
        headers.append("company", "WSO2: yes".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        let m = Message::new(
            Method::PUT,
            "/p?q=1".into(),
            headers,
            Bytes::from_static(b"{\"a\":1}\0tail"),
        );
        let back = message(delivered(send_frame("/queue/q", &m)));
        assert_eq!(back, m);
    }

    #[test]
    fn a_dead_letters_trail_survives_the_round_trip() {
        let mut m = Message::new(Method::POST, "/".into(), HeaderMap::new(), Bytes::new());
        m.trail = Some(Arc::new(crate::store::trail::tests::sample()));
        assert_eq!(message(delivered(send_frame("/queue/q", &m))), m);
    }

    #[test]
    fn opaque_header_bytes_survive_too() {
        let mut headers = HeaderMap::new();
        headers.append("x-bytes", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let m = Message::new(Method::POST, "/".into(), headers, Bytes::new());
        let send = send_frame("/queue/q", &m);
        assert!(send.get(HEADERS_BIN).is_some());
        assert_eq!(message(delivered(send)), m);
    }

    #[test]
    fn foreign_and_malformed_messages_get_defaults() {
        let foreign = Frame::new("MESSAGE")
            .header("message-id", "ID:other:1")
            .header("timestamp", "1700000000123")
            .header("content-type", "text/plain")
            .body(Bytes::from_static(b"hi"));
        let m = message(foreign);
        assert_eq!((m.method.as_str(), m.path.as_str()), ("POST", "/"));
        assert_eq!(m.headers["content-type"], "text/plain");
        assert_eq!(
            (m.id.as_str(), m.received_at),
            ("ID:other:1", 1700000000123)
        );

        let bad = Frame::new("MESSAGE")
            .header("message-id", "ID:other:2")
            .header(METHOD, "NOT A METHOD")
            .header(PATH, "no-slash")
            .header(RECEIVED_AT, "yesterday")
            .header(HEADERS_BIN, "!!!")
            .header(ID, "");
        let m = message(bad);
        assert_eq!((m.method.as_str(), m.path.as_str()), ("POST", "/"));
        assert_eq!(m.id, "ID:other:2");
        assert!(m.headers.is_empty());
    }
}
