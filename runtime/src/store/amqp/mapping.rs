//! How a [`Message`] travels as an AMQP message, and back.
//!
//! | Wharf | AMQP |
//! |---|---|
//! | body | the message body, raw |
//! | id | property `message_id` |
//! | `received_at` (ms) | property `timestamp` (s) and header `x-wharf-received-at` (ms) |
//! | `Content-Type` header | property `content_type` |
//! | method | header `x-wharf-method` |
//! | path and query | header `x-wharf-path` |
//! | failure trail (a dead letter's) | header `x-wharf-trail`: its JSON, a long string |
//! | request headers | header `x-wharf-headers`: one long string in HTTP/1 form, `name: value` lines ending in CRLF, in arrival order |
//!
//! Messages are published persistent (`delivery_mode = 2`). A message from
//! another producer is forwarded too: no `message_id` → an id made from
//! its content ([`content_id`]: the same on every delivery, so the
//! dead-letter API can find and remove it); no method → `POST`; no path → `/`; no headers → only
//! `Content-Type` from the `content_type` property.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::store::Message;
use crate::store::trail::Trail;
use std::sync::Arc;

const METHOD: &str = "x-wharf-method";
const PATH: &str = "x-wharf-path";
const HEADERS: &str = "x-wharf-headers";
const RECEIVED_AT: &str = "x-wharf-received-at";
const TRAIL: &str = "x-wharf-trail";

/// The properties a message is published with.
pub fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        METHOD.into(),
        AMQPValue::LongString(message.method.as_str().into()),
    );
    headers.insert(
        PATH.into(),
        AMQPValue::LongString(message.path.as_str().into()),
    );
    headers.insert(
        RECEIVED_AT.into(),
        AMQPValue::LongLongInt(message.received_at),
    );
    // A flat string, not a nested table: the broker decodes the headers table
    // of every message, and a nested one costs it measurably more.
    let mut block = Vec::with_capacity(message.headers.len() * 32);
    for (name, value) in &message.headers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    headers.insert(
        HEADERS.into(),
        AMQPValue::LongString(LongString::from(block)),
    );
    if let Some(trail) = &message.trail {
        headers.insert(
            TRAIL.into(),
            AMQPValue::LongString(LongString::from(trail.encode())),
        );
    }
    let mut properties = BasicProperties::default()
        .with_message_id(message.id.as_str().into())
        .with_delivery_mode(2)
        .with_timestamp(u64::try_from(message.received_at / 1000).unwrap_or_default())
        .with_headers(headers);
    if let Some(content_type) = message
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        properties = properties.with_content_type(content_type.into());
    }
    properties
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The message a delivery carries (see the module doc for defaults).
pub fn message(properties: &BasicProperties, body: Vec<u8>) -> Message {
    let empty = FieldTable::default();
    let amqp_headers = properties.headers().as_ref().unwrap_or(&empty).inner();
    let mut headers = HeaderMap::new();
    if let Some(AMQPValue::LongString(block)) = amqp_headers.get(HEADERS) {
        for line in block.as_bytes().split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, rest) = line.split_at(colon);
            let value = rest[1..].strip_prefix(b" ").unwrap_or(&rest[1..]);
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
    } else if let Some(content_type) = properties.content_type()
        && let Ok(v) = HeaderValue::from_str(content_type.as_str())
    {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let method = amqp_headers
        .get(METHOD)
        .and_then(text)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(Method::POST);
    let path = amqp_headers
        .get(PATH)
        .and_then(text)
        .unwrap_or_else(|| "/".to_owned());
    let received_at = match amqp_headers.get(RECEIVED_AT) {
        Some(AMQPValue::LongLongInt(ms)) => *ms,
        _ => properties.timestamp().map_or_else(
            || chrono::Utc::now().timestamp_millis(),
            |s| (s as i64).saturating_mul(1000),
        ),
    };
    let mut message = Message::new(method, path, headers, Bytes::from(body));
    message.received_at = received_at;
    message.id = match properties.message_id() {
        Some(id) => id.as_str().to_owned(),
        None => content_id(properties, &message.body),
    };
    message.trail = amqp_headers
        .get(TRAIL)
        .and_then(text)
        .and_then(|t| Trail::decode(&t, &message.id))
        .map(Arc::new);
    message
}

/// The id of a message published without a `message_id`: `amqp-` and the
/// first 16 bytes, in hex, of a SHA-256 of its properties and body. What the
/// broker changes from one delivery to the next (`x-delivery-count`) is left
/// out, so every read of the message gives it the same id; two messages
/// alike in every property and byte share it.
pub fn content_id(properties: &BasicProperties, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut headers = properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    headers.remove("x-delivery-count");
    // (No headers and an empty table hash alike: a quorum queue adds the
    // count from the second delivery on.)
    let rest = properties.clone().with_headers(FieldTable::default());
    let mut hash = Sha256::new();
    // Their serde form (field tables are ordered maps): the same each time,
    // and unlike a Debug form, not something a new lapin may reword.
    hash.update(serde_json::to_vec(&rest).unwrap_or_default());
    hash.update(serde_json::to_vec(&headers).unwrap_or_default());
    hash.update(body);
    let digest = hash.finalize();
    let mut id = String::from("amqp-");
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_survives_the_round_trip() {
        let mut headers = HeaderMap::new();
        headers.append("content-type", "application/json".parse().unwrap());
        headers.append("company", "WSO2".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        let m = Message::new(
            Method::PUT,
            "/p?q=1".into(),
            headers,
            Bytes::from_static(b"{\"a\":1}"),
        );
        let back = message(&properties(&m), m.body.to_vec());
        assert_eq!(back, m);
    }

    #[test]
    fn a_dead_letters_trail_survives_the_round_trip() {
        let mut m = Message::new(Method::POST, "/".into(), HeaderMap::new(), Bytes::new());
        m.trail = Some(Arc::new(crate::store::trail::tests::sample()));
        assert_eq!(message(&properties(&m), Vec::new()), m);
    }

    #[test]
    fn foreign_message_gets_defaults() {
        let props = BasicProperties::default().with_content_type("text/plain".into());
        let m = message(&props, b"hi".to_vec());
        assert_eq!(m.method, Method::POST);
        assert_eq!(m.path, "/");
        assert_eq!(m.headers["content-type"], "text/plain");
        assert!(m.id.starts_with("amqp-"), "{}", m.id);
    }

    #[test]
    fn a_message_without_an_id_gets_the_same_id_on_every_delivery() {
        let mut first = FieldTable::default();
        first.insert("origin".into(), AMQPValue::LongString("erp".into()));
        let mut later = first.clone();
        later.insert("x-delivery-count".into(), AMQPValue::LongLongInt(7));
        let props = |h: FieldTable| {
            BasicProperties::default()
                .with_timestamp(1_700_000_000)
                .with_headers(h)
        };
        let a = message(&props(first.clone()), b"order 1".to_vec());
        // Pinned: a dependency upgrade that changed it would give such
        // messages other ids than the version before gave them.
        assert_eq!(a.id, "amqp-1561ac28ff5333a75169b6809b747040");
        assert_eq!(a.id, message(&props(later), b"order 1".to_vec()).id);
        assert_ne!(a.id, message(&props(first), b"order 2".to_vec()).id);
        // A quorum queue adds the count only from the second delivery on.
        let bare = BasicProperties::default();
        let mut counted = FieldTable::default();
        counted.insert("x-delivery-count".into(), AMQPValue::LongLongInt(1));
        assert_eq!(
            message(&bare, b"x".to_vec()).id,
            message(&bare.clone().with_headers(counted), b"x".to_vec()).id
        );
    }
}
