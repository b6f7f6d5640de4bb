//! The message: an HTTP request as it was accepted, and its stable id.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;

use super::trail::Trail;

/// The id a message keeps for life; forwarded as `Idempotency-Key`.
pub type MessageId = String;

/// An accepted HTTP request, kept byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// UUIDv7, assigned at ingress: unique and roughly time-ordered.
    pub id: MessageId,
    /// Milliseconds since the Unix epoch when the route accepted it.
    pub received_at: i64,
    /// The request method.
    pub method: http::Method,
    /// Path and query, as received.
    pub path: String,
    /// Every request header, in arrival order.
    pub headers: HeaderMap,
    /// The body, byte for byte.
    pub body: Bytes,
    /// Why it was dead-lettered, on a dead letter (see [`super::trail`]).
    pub trail: Option<Arc<Trail>>,
}

impl Message {
    /// A new message with a fresh id, received now.
    pub fn new(method: http::Method, path: String, headers: HeaderMap, body: Bytes) -> Message {
        Message {
            id: uuid::Uuid::now_v7().to_string(),
            received_at: chrono::Utc::now().timestamp_millis(),
            method,
            path,
            headers,
            body,
            trail: None,
        }
    }

    /// The time a dead-letter filter reads: when it was dead-lettered, for a
    /// dead letter; when it was received, for any other message.
    pub fn filter_time(&self) -> i64 {
        self.trail
            .as_ref()
            .map_or(self.received_at, |t| t.dead_lettered_at)
    }

    /// Headers in a compact binary form: per header, a u16 name length, the
    /// name, a u32 value length, the value (all big-endian lengths).
    pub fn encode_headers(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.headers.len() * 32);
        for (name, value) in &self.headers {
            let name = name.as_str().as_bytes();
            let value = value.as_bytes();
            // Header names and values are bounded far below these limits by hyper.
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// Reverses [`Message::encode_headers`]; `None` if the bytes are not such a record.
    pub fn decode_headers(mut bytes: &[u8]) -> Option<HeaderMap> {
        let mut headers = HeaderMap::new();
        while !bytes.is_empty() {
            let (len, rest) = bytes.split_first_chunk::<2>()?;
            let (name, rest) = rest.split_at_checked(u16::from_be_bytes(*len) as usize)?;
            let (len, rest) = rest.split_first_chunk::<4>()?;
            let (value, rest) = rest.split_at_checked(u32::from_be_bytes(*len) as usize)?;
            headers.append(
                http::HeaderName::from_bytes(name).ok()?,
                http::HeaderValue::from_bytes(value).ok()?,
            );
            bytes = rest;
        }
        Some(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_encoding_with_repeats_and_opaque_bytes() {
        let mut headers = HeaderMap::new();
        headers.append("company", "WSO2".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        headers.append(
            "x-bytes",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        let m = Message::new(
            http::Method::POST,
            "/p?q=1".into(),
            headers.clone(),
            Bytes::new(),
        );
        assert_eq!(Message::decode_headers(&m.encode_headers()), Some(headers));
        assert_eq!(Message::decode_headers(&[0, 9, b'x']), None);
    }
}
