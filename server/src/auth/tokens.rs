//! JWTs: HS256 only, with issuer, audience and a token type, so a refresh token is never
//! accepted where an access token is expected (and the other way round).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use protocol::auth::Role;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AuthUser;
use crate::config::Config;
use crate::error::ApiError;

/// `iss` and `aud` of every token this service issues and accepts.
pub const ISSUER: &str = "support-chat";
pub const AUDIENCE: &str = "support-chat";

const TYP_ACCESS: &str = "access";
const TYP_REFRESH: &str = "refresh";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    exp: i64,
    iat: i64,
    jti: Uuid,
    iss: String,
    aud: String,
    /// `access` or `refresh`.
    typ: String,
    /// Access tokens only: the username and role at issue time, so the extractor needs no
    /// database round trip. The admin routes re-check the role in the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
}

/// A refresh token just issued: the token for the client and what the database keeps.
pub struct IssuedRefresh {
    pub token: String,
    pub jti: Uuid,
    /// SHA-256 of `token`; only this is stored.
    pub hash: Vec<u8>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// The verified contents of a refresh token.
#[derive(Debug)]
pub struct RefreshClaims {
    pub user_id: Uuid,
    pub jti: Uuid,
}

/// Issues and verifies JWTs (HS256).
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// For logout: a refresh token past its `exp` may still name the family to revoke.
    validation_ignoring_exp: Validation,
    access_ttl_secs: i64,
    refresh_ttl_secs: i64,
}

impl TokenService {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let secret: Vec<u8> = match &config.jwt_secret {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "JWT_SECRET is not set: using a random secret for this process; tokens stop \
                     working when it exits and are not accepted by other instances"
                );
                let mut bytes = vec![0u8; 64];
                rand::rng().fill_bytes(&mut bytes);
                bytes
            }
        };
        Self::from_secret(
            &secret,
            config.access_token_ttl_secs,
            config.refresh_token_ttl_secs,
        )
    }

    fn from_secret(secret: &[u8], access_ttl: u64, refresh_ttl: u64) -> anyhow::Result<Self> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // The issuing and verifying clocks are the same or NTP-synchronised servers; a token
        // is dead at its `exp`, which keeps short lifetimes meaningful.
        validation.leeway = 0;
        let mut validation_ignoring_exp = validation.clone();
        validation_ignoring_exp.validate_exp = false;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
            validation,
            validation_ignoring_exp,
            access_ttl_secs: i64::try_from(access_ttl)?,
            refresh_ttl_secs: i64::try_from(refresh_ttl)?,
        })
    }

    pub fn access_ttl_secs(&self) -> u64 {
        self.access_ttl_secs.unsigned_abs()
    }

    /// A signed access token for `user`.
    pub fn issue_access(&self, id: Uuid, username: &str, role: Role) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: id,
            exp: now + self.access_ttl_secs,
            iat: now,
            jti: Uuid::new_v4(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            typ: TYP_ACCESS.to_owned(),
            name: Some(username.to_owned()),
            role: Some(role),
        };
        self.sign(&claims)
    }

    /// A signed refresh token for `user_id`, to be stored (hashed) by the caller.
    pub fn issue_refresh(&self, user_id: Uuid) -> Result<IssuedRefresh, ApiError> {
        let now = chrono::Utc::now();
        let jti = Uuid::new_v4();
        let exp = now.timestamp() + self.refresh_ttl_secs;
        let claims = Claims {
            sub: user_id,
            exp,
            iat: now.timestamp(),
            jti,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            typ: TYP_REFRESH.to_owned(),
            name: None,
            role: None,
        };
        let token = self.sign(&claims)?;
        let hash = hash_token(&token);
        let expires_at = chrono::DateTime::from_timestamp(exp, 0)
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("refresh expiry out of range")))?;
        Ok(IssuedRefresh {
            token,
            jti,
            hash,
            expires_at,
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("signing a token: {e}")))
    }

    fn decode(&self, token: &str, validation: &Validation) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                // The signature is checked before the expiry, so this is a genuine token.
                ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                _ => ApiError::Unauthorized("invalid token"),
            })
    }

    /// Verifies an access token: signature, algorithm, issuer, audience, expiry, token type.
    /// `ApiError::TokenExpired` for an expired one, `ApiError::Unauthorized` otherwise.
    pub fn verify_access(&self, token: &str) -> Result<AuthUser, ApiError> {
        let claims = self.decode(token, &self.validation)?;
        match claims {
            Claims {
                typ,
                name: Some(username),
                role: Some(role),
                sub,
                exp,
                ..
            } if typ == TYP_ACCESS => Ok(AuthUser {
                id: sub,
                username,
                role,
                expires_at: exp,
            }),
            _ => Err(ApiError::Unauthorized("invalid token")),
        }
    }

    /// Verifies a refresh token (signature, algorithm, issuer, audience, expiry, type).
    pub fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, ApiError> {
        let claims = self.decode(token, &self.validation).map_err(|e| match e {
            ApiError::TokenExpired => ApiError::Unauthorized("refresh token expired"),
            other => other,
        })?;
        refresh_claims(claims)
    }

    /// As [`Self::verify_refresh`] but accepting an expired token (logout of a stale session).
    pub fn verify_refresh_ignoring_expiry(&self, token: &str) -> Result<RefreshClaims, ApiError> {
        refresh_claims(self.decode(token, &self.validation_ignoring_exp)?)
    }
}

fn refresh_claims(claims: Claims) -> Result<RefreshClaims, ApiError> {
    if claims.typ != TYP_REFRESH {
        return Err(ApiError::Unauthorized("not a refresh token"));
    }
    Ok(RefreshClaims {
        user_id: claims.sub,
        jti: claims.jti,
    })
}

/// What the database stores in place of a refresh token: enough to find it, useless to steal.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> TokenService {
        TokenService::from_secret(b"unit-test-secret-of-at-least-32-bytes", 60, 120).unwrap()
    }

    #[test]
    fn access_round_trip() {
        let tokens = service();
        let id = Uuid::new_v4();
        let token = tokens.issue_access(id, "alice", Role::Admin).unwrap();
        let user = tokens.verify_access(&token).unwrap();
        assert_eq!(user.id, id);
        assert_eq!(user.username, "alice");
        assert_eq!(user.role, Role::Admin);
        assert!(user.expires_at > chrono::Utc::now().timestamp());
    }

    #[test]
    fn refresh_is_not_access_and_access_is_not_refresh() {
        let tokens = service();
        let id = Uuid::new_v4();
        let refresh = tokens.issue_refresh(id).unwrap();
        assert!(matches!(
            tokens.verify_access(&refresh.token),
            Err(ApiError::Unauthorized(_))
        ));
        assert_eq!(
            tokens.verify_refresh(&refresh.token).unwrap().jti,
            refresh.jti
        );
        let access = tokens.issue_access(id, "alice", Role::User).unwrap();
        assert!(matches!(
            tokens.verify_refresh(&access),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn another_secret_is_refused() {
        let other =
            TokenService::from_secret(b"another-secret-of-at-least-32-bytes!", 60, 60).unwrap();
        let token = other.issue_access(Uuid::new_v4(), "x", Role::User).unwrap();
        assert!(matches!(
            service().verify_access(&token),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn stored_hash_is_sha256_of_the_token() {
        let issued = service().issue_refresh(Uuid::new_v4()).unwrap();
        assert_eq!(issued.hash.len(), 32);
        assert_eq!(issued.hash, hash_token(&issued.token));
        assert!(!issued.token.contains(&hex::encode(&issued.hash)));
    }
}
