//! A tenant's tokens: `admin` (everything of the tenant), `read` (only
//! `GET`) or `ingress` (no admin API; only sending to the tenant's routes
//! that say `auth = { tenant_tokens = true }`), each maybe expiring.
//!
//! A secret is `wharf_{tenant}_{43 base64url characters}` (32 random bytes
//! from the OS), shown once when made. Only its SHA-256 is kept, in
//! `tokens.json` of the tenant's directory (written durably); a presented
//! secret is hashed and compared with every stored hash in constant time.
//! The tenant in the secret says which tenant's list to look in; it grants
//! nothing by itself.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read and change everything of its tenant.
    Admin,
    /// Only read (`GET`) its tenant's objects.
    Read,
    /// Only send messages to its tenant's routes with `tenant_tokens`.
    Ingress,
}

/// A token as kept (and, without the hash, as listed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub created_at: String,
    /// SHA-256 of the secret, hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sha256: String,
}

impl TokenRecord {
    /// The record as listed: no hash.
    pub fn public(&self) -> TokenRecord {
        TokenRecord {
            sha256: String::new(),
            ..self.clone()
        }
    }

    fn expired(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.expires_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t <= now)
    }
}

/// Why a token change was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("a token named {0:?} exists already; revoke it first")]
    Exists(String),
    #[error("no token named {0:?}")]
    Unknown(String),
    #[error("tokens of {path}: {reason}")]
    Io { path: String, reason: String },
}

/// The tokens of one tenant.
pub struct Tokens {
    tenant: String,
    path: PathBuf,
    records: Mutex<Vec<TokenRecord>>,
}

fn hash(secret: &str) -> String {
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tenant a secret says it belongs to (not yet checked).
pub fn tenant_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix("wharf_")?;
    let (tenant, key) = rest.split_once('_')?;
    (!tenant.is_empty() && !key.is_empty()).then_some(tenant)
}

impl Tokens {
    /// The tokens kept in `path` (none when it does not exist).
    pub fn open(tenant: &str, path: PathBuf) -> Result<Tokens, TokenError> {
        let records = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TokenError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(TokenError::Io {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                });
            }
        };
        Ok(Tokens {
            tenant: tenant.to_owned(),
            path,
            records: Mutex::new(records),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TokenRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, records: &[TokenRecord]) -> Result<(), TokenError> {
        let bytes = serde_json::to_vec_pretty(records).unwrap_or_default();
        crate::durable::write(&self.path, &bytes).map_err(|e| TokenError::Io {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Makes a token; returns it (listed form) and its secret, shown only now.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        expires_in: Option<Duration>,
    ) -> Result<(TokenRecord, String), TokenError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !valid {
            return Err(TokenError::Invalid(format!(
                "token name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| TokenError::Io {
            path: "(random source)".into(),
            reason: e.to_string(),
        })?;
        let secret = format!(
            "wharf_{}_{}",
            self.tenant,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
        );
        let now = chrono::Utc::now();
        let expires_at = match expires_in {
            Some(d) => Some(
                chrono::Duration::from_std(d)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .ok_or_else(|| TokenError::Invalid("expires_in is too far away".into()))?
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
            None => None,
        };
        let record = TokenRecord {
            name: name.to_owned(),
            role,
            expires_at,
            created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            sha256: hash(&secret),
        };
        let mut records = self.lock();
        if records.iter().any(|r| r.name == name) {
            return Err(TokenError::Exists(name.to_owned()));
        }
        let mut next = records.clone();
        next.push(record.clone());
        self.save(&next)?;
        *records = next;
        Ok((record.public(), secret))
    }

    /// The tokens, without their hashes.
    pub fn list(&self) -> Vec<TokenRecord> {
        self.lock().iter().map(TokenRecord::public).collect()
    }

    pub fn revoke(&self, name: &str) -> Result<(), TokenError> {
        let mut records = self.lock();
        if !records.iter().any(|r| r.name == name) {
            return Err(TokenError::Unknown(name.to_owned()));
        }
        let next: Vec<TokenRecord> = records.iter().filter(|r| r.name != name).cloned().collect();
        self.save(&next)?;
        *records = next;
        Ok(())
    }

    /// The role of `secret`, if it is one of these tokens and not expired.
    pub fn check(&self, secret: &str) -> Option<Role> {
        let presented = hash(secret);
        let now = chrono::Utc::now();
        let mut found = None;
        // Every hash is compared, whichever matches.
        for r in self.lock().iter() {
            if bool::from(r.sha256.as_bytes().ct_eq(presented.as_bytes())) && !r.expired(now) {
                found = Some(r.role);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_shown_once_kept_as_a_hash_and_checked_until_revoked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("tokens.json");
        let tokens = Tokens::open("acme", path.clone()).unwrap_or_else(|e| panic!("{e}"));
        let (record, secret) = tokens
            .create("ci", Role::Read, None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(record.role, Role::Read);
        assert_eq!(tenant_of(&secret), Some("acme"));
        assert_eq!(tokens.check(&secret), Some(Role::Read));
        assert_eq!(tokens.check(&format!("{secret}x")), None);
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(!kept.contains(&secret[11..]) && kept.contains(&hash(&secret)));
        assert!(matches!(
            tokens.create("ci", Role::Admin, None),
            Err(TokenError::Exists(_))
        ));
        // Kept across a reopen, gone once revoked.
        let again = Tokens::open("acme", path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.check(&secret), Some(Role::Read));
        again.revoke("ci").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.check(&secret), None);
        assert!(again.list().is_empty());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let tokens =
            Tokens::open("acme", dir.path().join("tokens.json")).unwrap_or_else(|e| panic!("{e}"));
        let (_, secret) = tokens
            .create("short", Role::Admin, Some(Duration::ZERO))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tokens.check(&secret), None);
    }
}
