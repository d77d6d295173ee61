//! Optional JWT authentication of WebSocket clients.
//!
//! With neither `DATASTREAM_JWT_SECRET` nor `DATASTREAM_JWKS` configured, every client is
//! anonymous and may subscribe to any site (the original service's behaviour). With either, a
//! client must present a token; its `sites` claim lists the sites it may subscribe to (`"*"`: all)
//! and its `exp` claim ends the connection's rights (v2 clients can refresh without reconnecting).
//!
//! - HS256 with a shared secret, or RS256/ES256 with public keys from a JWKS file or URL. A URL is
//!   fetched at start and every `DATASTREAM_JWKS_REFRESH`, and again (at most every 30 s) when a
//!   token names a key id the cached set does not hold, so key rotation needs no restart.

use std::{
    collections::HashSet,
    sync::RwLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde::Deserialize;
use tracing::{info, warn};

use crate::Config;

/// Least time between two JWKS fetches triggered by unknown key ids.
const MIN_REFETCH: Duration = Duration::from_secs(30);

/// Why a token was refused. The message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Authentication is on and no token was given.
    #[error("a token is required")]
    Missing,
    /// The token failed verification (signature, algorithm, expiry, audience, issuer, format).
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// A JWKS that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load JWKS from {source_name}: {reason}")]
pub struct JwksError {
    source_name: String,
    reason: String,
}

/// What a connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `None`: every site.
    sites: Option<HashSet<String>>,
    /// When the rights end (the token's `exp`); `None`: never (anonymous).
    pub expires: Option<SystemTime>,
}

impl Grant {
    /// Anonymous access: every site, no expiry.
    pub fn anonymous() -> Self {
        Grant { sites: None, expires: None }
    }

    /// Whether the holder may subscribe to `site`.
    pub fn allows(&self, site: &str) -> bool {
        self.sites.as_ref().is_none_or(|s| s.contains(site))
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sites: Vec<String>,
    exp: Option<u64>,
}

#[derive(Debug)]
enum Keys {
    /// HS256 with a shared secret.
    Secret(DecodingKey),
    /// Public keys from a JWKS, refreshed.
    Jwks { source: String, set: RwLock<(JwkSet, Instant)> },
}

/// The token verifier; `None` inside when authentication is off.
#[derive(Debug)]
pub struct Auth {
    keys: Option<Keys>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl Auth {
    /// Builds the verifier from the configuration, loading the JWKS if one is configured.
    pub async fn from_config(config: &Config) -> Result<Self, JwksError> {
        let keys = if let Some(secret) = &config.jwt_secret {
            Some(Keys::Secret(DecodingKey::from_secret(secret.as_bytes())))
        } else if let Some(source) = &config.jwks {
            let set = load_jwks(source).await?;
            info!(source, keys = set.keys.len(), "loaded JWKS");
            Some(Keys::Jwks { source: source.clone(), set: RwLock::new((set, Instant::now())) })
        } else {
            None
        };
        Ok(Auth { keys, audience: config.jwt_audience.clone(), issuer: config.jwt_issuer.clone() })
    }

    /// Verifies `token` (or admits anonymously when authentication is off).
    pub async fn verify(&self, token: Option<&str>) -> Result<Grant, AuthError> {
        let Some(keys) = &self.keys else { return Ok(Grant::anonymous()) };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (key, alg) = match keys {
            Keys::Secret(key) => (key.clone(), Algorithm::HS256),
            Keys::Jwks { source, set } => {
                if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
                    return Err(AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg)));
                }
                let kid =
                    header.kid.as_deref().ok_or_else(|| AuthError::Invalid("token has no key id (kid)".into()))?;
                let mut key = find_key(set, kid);
                if key.is_none() && self.refetch_allowed(set) {
                    self.refresh_jwks(source, set).await;
                    key = find_key(set, kid);
                }
                let key = key.ok_or_else(|| AuthError::Invalid(format!("unknown key id {kid:?}")))?;
                (key.map_err(|e| AuthError::Invalid(e.to_string()))?, header.alg)
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let sites = if claims.sites.iter().any(|s| s == "*") { None } else { Some(claims.sites.into_iter().collect()) };
        Ok(Grant { sites, expires: claims.exp.map(|exp| UNIX_EPOCH + Duration::from_secs(exp)) })
    }

    fn refetch_allowed(&self, set: &RwLock<(JwkSet, Instant)>) -> bool {
        set.read().unwrap_or_else(|e| e.into_inner()).1.elapsed() >= MIN_REFETCH
    }

    async fn refresh_jwks(&self, source: &str, set: &RwLock<(JwkSet, Instant)>) {
        match load_jwks(source).await {
            Ok(fresh) => *set.write().unwrap_or_else(|e| e.into_inner()) = (fresh, Instant::now()),
            Err(e) => {
                warn!(error = %e, "JWKS refresh failed; keeping the cached keys");
                set.write().unwrap_or_else(|e| e.into_inner()).1 = Instant::now();
            }
        }
    }

    /// Refreshes a JWKS source; called periodically. No-op without one.
    pub async fn refresh(&self) {
        if let Some(Keys::Jwks { source, set }) = &self.keys {
            self.refresh_jwks(source, set).await;
        }
    }
}

fn find_key(set: &RwLock<(JwkSet, Instant)>, kid: &str) -> Option<jsonwebtoken::errors::Result<DecodingKey>> {
    set.read().unwrap_or_else(|e| e.into_inner()).0.find(kid).map(DecodingKey::from_jwk)
}

async fn load_jwks(source: &str) -> Result<JwkSet, JwksError> {
    let fail = |reason: String| JwksError { source_name: source.to_owned(), reason };
    let text = if source.starts_with("https://") || source.starts_with("http://") {
        let client =
            reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| fail(e.to_string()))?;
        let resp = client.get(source).send().await.map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status())));
        }
        resp.text().await.map_err(|e| fail(e.to_string()))?
    } else {
        tokio::fs::read_to_string(source).await.map_err(|e| fail(e.to_string()))?
    };
    serde_json::from_str(&text).map_err(|e| fail(format!("not a JWK set: {e}")))
}

/// The current time as seconds since the epoch, for tests and token minting.
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
