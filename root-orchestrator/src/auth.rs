//! Authentication: argon2 password hashes, JWT access and refresh tokens, join tokens and the
//! secrets that must survive a restart.
//!
//! Tokens are HS256, signed with a 32-byte key kept in the store (collection `secrets`), so a
//! restart keeps every issued token valid (Oakestra's generator forgets its key on restart).
//! Claims follow Oakestra: `sub` and `user` are the user name, `roles` the roles in the chosen
//! organisation, `organization` its id; `type` tells access from refresh tokens. Random
//! tokens and secret files are `canopy_store::secrets`.

use crate::model::Role;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    Access,
    Refresh,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub user: String,
    pub roles: Vec<Role>,
    pub organization: String,
    #[serde(rename = "type")]
    pub token_type: TokenType,
    pub iat: u64,
    pub exp: u64,
}

impl Claims {
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }
}

/// Signs and checks tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl TokenKeys {
    pub fn new(secret: &[u8], access_ttl: Duration, refresh_ttl: Duration) -> Self {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            access_ttl,
            refresh_ttl,
        }
    }

    pub fn issue(
        &self,
        user: &str,
        roles: Vec<Role>,
        organization: &str,
        token_type: TokenType,
    ) -> Result<String, AuthError> {
        let now = crate::model::unix_now() as u64;
        let ttl = match token_type {
            TokenType::Access => self.access_ttl,
            TokenType::Refresh => self.refresh_ttl,
        };
        let claims = Claims {
            sub: user.to_owned(),
            user: user.to_owned(),
            roles,
            organization: organization.to_owned(),
            token_type,
            iat: now,
            exp: now + ttl.as_secs().max(1),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Checks signature and expiry (no leeway) and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub"]);
        Ok(jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)?.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("S3cret", &h));
        assert!(!verify_password("s3cret", "not a hash"));
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let keys = TokenKeys::new(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        let t = keys
            .issue("alice", vec![Role::Admin], "org1", TokenType::Access)
            .unwrap();
        let c = keys.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.token_type), ("alice", TokenType::Access));
        assert!(c.is_admin());
        let other = TokenKeys::new(
            b"another key, another key, anothe",
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        assert!(other.verify(&t).is_err());
        assert!(keys.verify("garbage").is_err());
    }
}
