//! Signed forwards: the headers a processor's `signing` adds to each request.
//!
//! - `standard-webhooks` (<https://www.standardwebhooks.com>, symmetric
//!   `v1`): `webhook-id` is the message id, `webhook-timestamp` the second it
//!   was received (so id, timestamp and signature are the same for every
//!   attempt, after a restart too), `webhook-signature` is `v1,<base64
//!   HMAC-SHA256 of "{id}.{timestamp}.{body}">` for each secret, separated by
//!   spaces. A secret is `whsec_` and the base64 of the key (the prefix may
//!   be left out); several secrets at once let receivers rotate.
//! - `hmac-sha256`: one header (`header`, default `x-signature`) holding
//!   `prefix` and the lowercase hex HMAC-SHA256 of the body, keyed with the
//!   variable's value as written (less surrounding white space).

use base64::Engine;
use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue};
use sha2::Sha256;

use crate::config::{Signing, SigningScheme};
use crate::store::Message;

static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Signs requests with keys read once, at start.
pub struct Signer {
    scheme: SigningScheme,
    keys: Vec<Vec<u8>>,
    header: HeaderName,
    prefix: String,
}

impl Signer {
    /// A signer for `signing`, its secrets read from its environment variable.
    pub fn from_env(signing: &Signing) -> Result<Signer, String> {
        let var = &signing.secret_env;
        let secrets = std::env::var(var)
            .map_err(|_| format!("secret_env: environment variable {var} is not set"))?;
        Signer::new(signing, &secrets).map_err(|why| format!("secret_env {var}: {why}"))
    }

    /// A signer for `signing` with `secrets` (space-separated for standard-webhooks).
    pub fn new(signing: &Signing, secrets: &str) -> Result<Signer, String> {
        let keys = match signing.scheme {
            SigningScheme::StandardWebhooks => secrets
                .split_whitespace()
                .enumerate()
                .map(|(i, secret)| {
                    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
                    match base64::engine::general_purpose::STANDARD.decode(encoded) {
                        Ok(key) if !key.is_empty() => Ok(key),
                        _ => Err(format!(
                            "secret {} is not whsec_ followed by the base64 of a key",
                            i + 1
                        )),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
            // The whole value is the secret (less surrounding white space).
            SigningScheme::HmacSha256 => vec![secrets.trim().as_bytes().to_vec()],
        };
        if keys.iter().all(Vec::is_empty) {
            return Err("holds no secret".into());
        }
        Ok(Signer {
            scheme: signing.scheme,
            keys,
            header: signing.header.clone(),
            prefix: signing.prefix.clone(),
        })
    }

    /// The headers that sign `message`.
    pub fn headers(&self, message: &Message) -> Vec<(HeaderName, HeaderValue)> {
        match self.scheme {
            SigningScheme::StandardWebhooks => {
                let timestamp = message.received_at.div_euclid(1000);
                let signature = self.standard_webhooks(&message.id, timestamp, &message.body);
                let mut out = vec![(WEBHOOK_TIMESTAMP.clone(), HeaderValue::from(timestamp))];
                if let Ok(id) = HeaderValue::from_str(&message.id) {
                    out.push((WEBHOOK_ID.clone(), id));
                }
                if let Ok(signature) = HeaderValue::from_str(&signature) {
                    out.push((WEBHOOK_SIGNATURE.clone(), signature));
                }
                out
            }
            SigningScheme::HmacSha256 => {
                let digest = hmac(&self.keys[0], &[&message.body]);
                let mut value = self.prefix.clone();
                for byte in digest {
                    value.push_str(&format!("{byte:02x}"));
                }
                HeaderValue::from_str(&value)
                    .map(|v| vec![(self.header.clone(), v)])
                    .unwrap_or_default()
            }
        }
    }

    /// `v1,<signature>` for each key, space-separated.
    pub fn standard_webhooks(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        self.keys
            .iter()
            .map(|key| {
                let mac = hmac(
                    key,
                    &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
                );
                format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(mac)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signing(scheme: SigningScheme) -> Signing {
        Signing {
            scheme,
            secret_env: "UNUSED".into(),
            header: HeaderName::from_static("x-signature"),
            prefix: String::new(),
        }
    }

    /// The test vector the Standard Webhooks libraries publish (their `sign` tests).
    #[test]
    fn standard_webhooks_signature_matches_the_specifications_test_vector() {
        let signer = Signer::new(
            &signing(SigningScheme::StandardWebhooks),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .unwrap();
        assert_eq!(
            signer.standard_webhooks(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn two_secrets_give_two_space_separated_signatures_and_the_prefix_is_optional() {
        let one = Signer::new(
            &signing(SigningScheme::StandardWebhooks),
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .unwrap();
        let two = Signer::new(
            &signing(SigningScheme::StandardWebhooks),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw  whsec_c2Vjb25kIHNlY3JldCBvZiAyNCBieXRlcw==",
        )
        .unwrap();
        let first = one.standard_webhooks("m", 1, b"x");
        let both = two.standard_webhooks("m", 1, b"x");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], first);
        assert!(parts[1].starts_with("v1,") && parts[1] != first);
    }

    #[test]
    fn bad_secrets_are_refused_with_their_place() {
        let e = Signer::new(
            &signing(SigningScheme::StandardWebhooks),
            "whsec_b2s= whsec_*",
        )
        .err()
        .unwrap();
        assert!(e.contains("secret 2"), "{e}");
        let e = Signer::new(&signing(SigningScheme::StandardWebhooks), "  ")
            .err()
            .unwrap();
        assert!(e.contains("no secret"), "{e}");
    }

    /// RFC 4231 test case 2 (key "Jefe").
    #[test]
    fn hmac_sha256_header_is_the_prefixed_hex_digest_of_the_body() {
        let mut s = signing(SigningScheme::HmacSha256);
        s.prefix = "sha256=".into();
        let signer = Signer::new(&s, "Jefe").unwrap();
        let m = Message::new(
            http::Method::POST,
            "/".into(),
            http::HeaderMap::new(),
            bytes::Bytes::from_static(b"what do ya want for nothing?"),
        );
        let headers = signer.headers(&m);
        assert_eq!(headers[0].0, "x-signature");
        assert_eq!(
            headers[0].1,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
