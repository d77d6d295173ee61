//! Optional JWT authentication of WebSocket clients.
//!
//! With neither `DATASTREAM_JWT_SECRET` nor `DATASTREAM_JWKS` configured, every client is
//! anonymous and may subscribe to any site (the original service's behaviour). With either, a
//! client presents a token; its `sites` claim lists the sites it may subscribe to (`"*"`: all)
//! and its `exp` claim ends the connection's rights (v2 clients can refresh without reconnecting).
//! A client without a token may read the sites of `DATASTREAM_ANONYMOUS_SITES` (none by default):
//! public pages next to logged-in users on one relay. A token grants those sites too (logging in
//! never takes a public site away); a token that is present but invalid is refused, never read as
//! anonymity.
//!
//! - HS256 with a shared secret, or RS256/ES256 with public keys from a JWKS file or URL. A URL is
//!   fetched at start and every `DATASTREAM_JWKS_REFRESH`, and again (at most every 30 s) when a
//!   token names a key id the cached set does not hold, so key rotation needs no restart. One fetch
//!   runs at a time: tokens with unknown key ids arriving together wait for it rather than each
//!   starting their own.
//! - `exp` is required and `nbf` honoured; `nbf` with a few seconds' leeway for clock skew (a token
//!   minted by an issuer whose clock runs slightly ahead is usable at once). `exp` has none: a
//!   token whose `exp` has passed is refused at once ([`AuthError::Expired`]) rather than accepted
//!   for the leeway's few seconds and then cut off — the client would get its acknowledgements
//!   and latest values only to lose them, where a refusal makes it fetch a fresh token at once.
//!   An `exp` more than [`MAX_TOKEN_HORIZON`] ahead is refused rather than turned into a deadline.
//! - A configured audience or issuer is required: a token without an `aud` (or `iss`) claim is
//!   refused like one with a wrong value.
//! - A refused token gets a short, fixed reason ([`AuthError`]): the client is not authenticated
//!   yet, so the library's own message (which may quote the token's contents) is only logged, at
//!   debug level.

use std::{
    collections::HashSet,
    sync::RwLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::{Error as JwtError, ErrorKind},
    jwk::JwkSet,
};
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::config::Config;

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case, RFC 7235).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Least time between two JWKS fetches triggered by unknown key ids.
const MIN_REFETCH: Duration = Duration::from_secs(30);

/// Clock skew tolerated on `nbf`, in seconds (`exp` has none: see the module docs).
const LEEWAY_SECS: u64 = 5;

/// Latest `exp` accepted, from now. A token valid for longer is a minting mistake or an attack,
/// and a time that far out cannot be turned into a deadline safely.
pub const MAX_TOKEN_HORIZON: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Why a token was refused. The message (`Display`) is what the client is told: short, stable,
/// and without details of the token or the verifying library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Authentication is on and no token was given (and the site is not anonymous).
    #[error("a token is required")]
    Missing,
    /// Not a well-formed JWT, or a claim of the wrong type.
    #[error("invalid token")]
    Malformed,
    /// The header names an algorithm the relay does not accept with its keys.
    #[error("algorithm not accepted")]
    Algorithm,
    /// A JWKS is configured and the token's header names no key (`kid`).
    #[error("token has no key id")]
    NoKeyId,
    /// The token's key id is not in the JWKS, even after fetching it again.
    #[error("unknown key id")]
    UnknownKeyId,
    /// The JWKS entry for the token's key id cannot verify tokens (an operator's problem).
    #[error("key id not usable")]
    UnusableKey,
    /// The signature does not match.
    #[error("invalid signature")]
    Signature,
    /// A required claim (`exp`, or `aud`/`iss` when configured) is absent.
    #[error("token lacks a required claim")]
    MissingClaim,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("token not yet valid")]
    NotYetValid,
    /// `exp` is further ahead than [`MAX_TOKEN_HORIZON`].
    #[error("token expiry too far in the future")]
    ExpiryTooFar,
    /// `aud` is not the configured audience.
    #[error("wrong audience")]
    Audience,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
}

impl AuthError {
    /// The public reason for a verification failure; the detail goes to the debug log.
    fn from_jwt(error: &JwtError) -> Self {
        debug!(%error, "token refused");
        match error.kind() {
            ErrorKind::InvalidSignature => AuthError::Signature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::InvalidIssuer => AuthError::Issuer,
            ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm,
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => AuthError::UnusableKey,
            _ => AuthError::Malformed,
        }
    }
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
    /// When the rights end (the token's `exp`, which every token has); `None`: never (anonymous).
    pub expires: Option<SystemTime>,
}

impl Grant {
    /// Anonymous access with authentication off: every site, no expiry.
    pub fn anonymous() -> Self {
        Grant { sites: None, expires: None }
    }

    /// Whether it came from a token (every token has an expiry): a site refused to a holder
    /// without one is answered "a token is required" (401), to a holder of one "not allowed" (403).
    pub fn has_token(&self) -> bool {
        self.expires.is_some()
    }

    /// Whether the holder may subscribe to `site`.
    pub fn allows(&self, site: &str) -> bool {
        self.sites.as_ref().is_none_or(|s| s.contains(site))
    }
}

/// The sites a client without a token may read (`DATASTREAM_ANONYMOUS_SITES`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Anonymous {
    /// None: a token is required.
    None,
    /// These sites.
    Sites(HashSet<String>),
    /// Every site (`*`): tokens only add an expiry and in-band refresh.
    All,
}

impl Anonymous {
    fn from_config(sites: &[String]) -> Self {
        let sites: HashSet<String> =
            sites.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if sites.contains("*") {
            Anonymous::All
        } else if sites.is_empty() {
            Anonymous::None
        } else {
            Anonymous::Sites(sites)
        }
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
    Jwks(Jwks),
}

/// A JWKS source and its cached keys.
#[derive(Debug)]
struct Jwks {
    /// A file path or http(s) URL.
    source: String,
    /// The cached keys, and when a fetch last ended (successfully or not): kid-triggered fetches
    /// wait [`MIN_REFETCH`] after it.
    set: RwLock<(JwkSet, Instant)>,
    /// Held while a fetch runs, so verifications that need one wait for its result instead of
    /// each fetching: a burst of tokens with made-up key ids costs one request to the key server.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    fn new(source: String, set: JwkSet, fetched: Instant) -> Self {
        Jwks { source, set: RwLock::new((set, fetched)), fetching: tokio::sync::Mutex::new(()) }
    }

    fn find(&self, kid: &str) -> Option<Result<DecodingKey, AuthError>> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        set.0.find(kid).map(|jwk| {
            DecodingKey::from_jwk(jwk).map_err(|error| {
                warn!(kid, %error, "JWKS entry cannot verify tokens");
                AuthError::UnusableKey
            })
        })
    }

    /// The key for `kid`, fetching the set again if it is unknown and the last fetch is old enough.
    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.find(kid) {
            return key;
        }
        let _fetching = self.fetching.lock().await;
        // The fetch this one waited for may have brought the key.
        if let Some(key) = self.find(kid) {
            return key;
        }
        let last = self.set.read().unwrap_or_else(|e| e.into_inner()).1;
        if last.elapsed() >= MIN_REFETCH {
            self.fetch().await;
        }
        self.find(kid).unwrap_or(Err(AuthError::UnknownKeyId))
    }

    /// Fetches the set; on failure keeps the cached keys. Callers hold `fetching`.
    async fn fetch(&self) {
        match load_jwks(&self.source).await {
            Ok(fresh) => *self.set.write().unwrap_or_else(|e| e.into_inner()) = (fresh, Instant::now()),
            Err(e) => {
                warn!(error = %e, "JWKS refresh failed; keeping the cached keys");
                self.set.write().unwrap_or_else(|e| e.into_inner()).1 = Instant::now();
            }
        }
    }
}

/// The token verifier; `None` inside when authentication is off.
#[derive(Debug)]
pub struct Auth {
    keys: Option<Keys>,
    audience: Option<String>,
    issuer: Option<String>,
    anonymous: Anonymous,
}

impl Auth {
    /// Builds the verifier from the configuration, loading the JWKS if one is configured.
    pub async fn from_config(config: &Config) -> Result<Self, JwksError> {
        let keys = if let Some(secret) = &config.jwt_secret {
            Some(Keys::Secret(DecodingKey::from_secret(secret.as_bytes())))
        } else if let Some(source) = &config.jwks {
            let set = load_jwks(source).await?;
            info!(source, keys = set.keys.len(), "loaded JWKS");
            Some(Keys::Jwks(Jwks::new(source.clone(), set, Instant::now())))
        } else {
            None
        };
        Ok(Auth {
            keys,
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            anonymous: Anonymous::from_config(&config.anonymous_sites),
        })
    }

    /// Verifies `token` (or admits anonymously when authentication is off, or to the anonymous
    /// sites when no token is given).
    pub async fn verify(&self, token: Option<&str>) -> Result<Grant, AuthError> {
        let Some(keys) = &self.keys else { return Ok(Grant::anonymous()) };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return match &self.anonymous {
                Anonymous::None => Err(AuthError::Missing),
                Anonymous::Sites(sites) => Ok(Grant { sites: Some(sites.clone()), expires: None }),
                Anonymous::All => Ok(Grant::anonymous()),
            };
        };
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::from_jwt(&e))?;
        let (key, alg) = match keys {
            Keys::Secret(key) => (key.clone(), Algorithm::HS256),
            Keys::Jwks(jwks) => {
                if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
                    debug!(alg = ?header.alg, "token refused: algorithm not accepted with a JWKS");
                    return Err(AuthError::Algorithm);
                }
                let kid = header.kid.as_deref().ok_or(AuthError::NoKeyId)?;
                (jwks.key(kid).await?, header.alg)
            }
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // A configured audience or issuer is required, not only checked when present.
        let mut required = vec!["exp"];
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| AuthError::from_jwt(&e))?;
        let claims = data.claims;
        let now = now_unix();
        let expires = match claims.exp {
            // The library allowed the leeway; `exp` gets none (see the module docs).
            Some(exp) if exp <= now => {
                debug!(exp, now, "token refused: expired");
                return Err(AuthError::Expired);
            }
            Some(exp) => expiry(exp, now)?,
            // `exp` is a required claim: the library refused its absence already.
            None => return Err(AuthError::MissingClaim),
        };
        let sites = if claims.sites.iter().any(|s| s == "*") || self.anonymous == Anonymous::All {
            None
        } else {
            let mut sites: HashSet<String> = claims.sites.into_iter().collect();
            if let Anonymous::Sites(public) = &self.anonymous {
                sites.extend(public.iter().cloned());
            }
            Some(sites)
        };
        Ok(Grant { sites, expires: Some(expires) })
    }

    /// Refreshes a JWKS source; called periodically. No-op without one.
    pub async fn refresh(&self) {
        if let Some(Keys::Jwks(jwks)) = &self.keys {
            let _fetching = jwks.fetching.lock().await;
            jwks.fetch().await;
        }
    }
}

/// The moment `exp` (seconds since the epoch) names, if it is within [`MAX_TOKEN_HORIZON`] of
/// `now`. Checked rather than added: `SystemTime` panics on overflow, and `exp` comes from the
/// client.
fn expiry(exp: u64, now: u64) -> Result<SystemTime, AuthError> {
    if exp > now.saturating_add(MAX_TOKEN_HORIZON.as_secs()) {
        debug!(exp, "token refused: expiry too far in the future");
        return Err(AuthError::ExpiryTooFar);
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(exp)).ok_or(AuthError::ExpiryTooFar)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_config;
    use jsonwebtoken::{EncodingKey, Header, jwk::Jwk};
    use serde_json::{Value, json};
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    #[test]
    fn bearer_reads_the_token_whatever_the_schemes_case() {
        let with = |value: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            bearer(&h).map(str::to_owned)
        };
        assert_eq!(with("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("BEARER  abc ").as_deref(), Some("abc"));
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearerabc"), None);
        assert_eq!(bearer(&axum::http::HeaderMap::new()), None);
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef-unit";
    const ES256_PEM: &[u8] = include_bytes!("../../tests/keys/es256-test-private.pem");

    fn hs256(claims: Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap()
    }

    fn es256(kid: &str, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(ES256_PEM).unwrap()).unwrap()
    }

    async fn secret_auth(extra: &[&str]) -> Auth {
        let mut args = vec!["--jwt-secret", SECRET];
        args.extend_from_slice(extra);
        Auth::from_config(&test_config(&args)).await.unwrap()
    }

    fn in_secs(secs: i64) -> u64 {
        now_unix().checked_add_signed(secs).unwrap()
    }

    #[tokio::test]
    async fn nbf_is_honoured_with_a_small_leeway() {
        let auth = secret_auth(&[]).await;
        let early = hs256(json!({"sites": ["*"], "exp": in_secs(600), "nbf": in_secs(120)}));
        assert_eq!(auth.verify(Some(&early)).await, Err(AuthError::NotYetValid));
        let skewed = hs256(json!({"sites": ["*"], "exp": in_secs(600), "nbf": in_secs(2)}));
        assert!(auth.verify(Some(&skewed)).await.is_ok(), "within the leeway");
        let absurd = hs256(json!({"sites": ["*"], "exp": in_secs(600), "nbf": u64::MAX}));
        assert_eq!(auth.verify(Some(&absurd)).await, Err(AuthError::NotYetValid));
        let past = hs256(json!({"sites": ["*"], "exp": in_secs(600), "nbf": in_secs(-60)}));
        assert!(auth.verify(Some(&past)).await.is_ok());
    }

    #[tokio::test]
    async fn an_absurd_exp_is_refused_not_a_panic() {
        let auth = secret_auth(&[]).await;
        for exp in [u64::MAX, i64::MAX as u64, u64::MAX / 1_000_000_000, in_secs(100 * 366 * 24 * 3600)] {
            let token = hs256(json!({"sites": ["*"], "exp": exp}));
            assert_eq!(auth.verify(Some(&token)).await, Err(AuthError::ExpiryTooFar), "exp {exp}");
        }
        let year = hs256(json!({"sites": ["*"], "exp": in_secs(366 * 24 * 3600)}));
        let grant = auth.verify(Some(&year)).await.unwrap();
        assert!(grant.expires.unwrap() > SystemTime::now() + Duration::from_secs(365 * 24 * 3600));
        assert_eq!(expiry(u64::MAX, u64::MAX), Err(AuthError::ExpiryTooFar), "even if the clock were absurd");
    }

    #[tokio::test]
    async fn refusals_carry_short_fixed_reasons() {
        let auth = secret_auth(&["--jwt-audience", "ptr", "--jwt-issuer", "https://issuer.example"]).await;
        let good = json!({"sites": ["*"], "exp": in_secs(600), "aud": "ptr", "iss": "https://issuer.example"});
        assert!(auth.verify(Some(&hs256(good.clone()))).await.is_ok());
        let with = |key: &str, value: Value| {
            let mut claims = good.clone();
            claims[key] = value;
            hs256(claims)
        };
        let without = |key: &str| {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove(key);
            hs256(claims)
        };
        let other_key = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(b"another secret, long enough to be a real one"),
        )
        .unwrap();
        let cases = [
            (None, AuthError::Missing),
            (Some(String::new()), AuthError::Missing),
            (Some("not a token".into()), AuthError::Malformed),
            (Some("a.b.c".into()), AuthError::Malformed),
            (Some(other_key), AuthError::Signature),
            (Some(with("exp", json!(in_secs(-600)))), AuthError::Expired),
            (Some(with("exp", json!("tomorrow"))), AuthError::Malformed),
            (Some(without("exp")), AuthError::MissingClaim),
            // Configured, so required: a token without the claim is no better than a wrong one.
            (Some(without("aud")), AuthError::MissingClaim),
            (Some(without("iss")), AuthError::MissingClaim),
            // Expired a moment ago: within the library's leeway, but `exp` gets none.
            (Some(with("exp", json!(in_secs(-2)))), AuthError::Expired),
            (Some(with("exp", json!(now_unix()))), AuthError::Expired),
            (Some(with("aud", json!("someone-else"))), AuthError::Audience),
            (Some(with("iss", json!("https://evil.example"))), AuthError::Issuer),
            (Some(es256("k1", good.clone())), AuthError::Algorithm),
        ];
        for (token, want) in cases {
            let got = auth.verify(token.as_deref()).await;
            assert_eq!(got, Err(want), "{token:?}");
            let text = want.to_string();
            assert!(text.len() <= 100, "{text}");
            assert!(!text.contains(['{', ':', '(']) && !text.contains("Error"), "no library detail: {text}");
        }
    }

    #[tokio::test]
    async fn without_an_audience_or_issuer_configured_none_is_required() {
        let auth = secret_auth(&[]).await;
        let bare = hs256(json!({"sites": ["*"], "exp": in_secs(600)}));
        assert!(auth.verify(Some(&bare)).await.is_ok());
        let any = hs256(json!({"sites": ["*"], "exp": in_secs(600), "aud": "x", "iss": "y"}));
        assert!(auth.verify(Some(&any)).await.is_ok());
    }

    #[tokio::test]
    async fn anonymous_sites_are_granted_without_a_token_and_added_to_a_tokens() {
        let auth = secret_auth(&["--anonymous-sites", "mrc, sro"]).await;
        for token in [None, Some("")] {
            let grant = auth.verify(token).await.unwrap();
            assert!(grant.allows("mrc") && grant.allows("sro") && !grant.allows("saf"), "{token:?}");
            assert!(!grant.has_token());
        }
        let saf = hs256(json!({"sites": ["saf"], "exp": in_secs(600)}));
        let grant = auth.verify(Some(&saf)).await.unwrap();
        assert!(grant.has_token());
        assert!(
            grant.allows("saf") && grant.allows("mrc") && !grant.allows("tst"),
            "logging in never takes a public site away"
        );
        // A token that is present but invalid is refused, not read as anonymity.
        assert_eq!(auth.verify(Some("not a token")).await, Err(AuthError::Malformed));
        let expired = hs256(json!({"sites": ["saf"], "exp": in_secs(-600)}));
        assert_eq!(auth.verify(Some(&expired)).await, Err(AuthError::Expired));

        let all = secret_auth(&["--anonymous-sites", "*"]).await;
        let grant = all.verify(None).await.unwrap();
        assert!(grant.allows("anything") && !grant.has_token());
        let grant = all.verify(Some(&saf)).await.unwrap();
        assert!(grant.allows("anything") && grant.has_token());

        let none = secret_auth(&[]).await;
        assert_eq!(none.verify(None).await, Err(AuthError::Missing));
    }

    /// A key server that counts its requests and answers slowly, so concurrent fetches overlap.
    async fn counting_jwks_server(body: String) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let body = body.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    body
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/jwks.json"), hits)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_key_ids_arriving_together_fetch_the_jwks_once() {
        let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_ec_pem(ES256_PEM).unwrap(), Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("rotated".into());
        let (url, hits) = counting_jwks_server(json!({"keys": [jwk]}).to_string()).await;
        // The cached set is empty and old enough for a kid-triggered fetch.
        let stale = Instant::now().checked_sub(MIN_REFETCH * 2).unwrap();
        let auth = Arc::new(Auth {
            keys: Some(Keys::Jwks(Jwks::new(url, JwkSet { keys: Vec::new() }, stale))),
            audience: None,
            issuer: None,
            anonymous: Anonymous::None,
        });
        let claims = json!({"sites": ["*"], "exp": in_secs(600)});
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let auth = auth.clone();
            let token = es256(&format!("made-up-{i}"), claims.clone());
            tasks.spawn(async move { auth.verify(Some(&token)).await });
        }
        let rotated = es256("rotated", claims.clone());
        let verified = {
            let auth = auth.clone();
            tokio::spawn(async move { auth.verify(Some(&rotated)).await })
        };
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.unwrap(), Err(AuthError::UnknownKeyId));
        }
        assert!(verified.await.unwrap().is_ok(), "the rotated key arrived with the one fetch");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "one fetch for the whole burst");
        // Within the minimum interval, another unknown kid does not fetch again.
        let token = es256("made-up-later", claims);
        assert_eq!(auth.verify(Some(&token)).await, Err(AuthError::UnknownKeyId));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
