//! Bearer-token validation against an OIDC issuer: the mechanics behind `[auth]`
//! (docs/security.md "Tokens").
//!
//! A token is a JWT (RFC 7519) signed by the issuer with RS256/RS384/RS512, PS256/PS384/
//! PS512 or ES256/ES384; its key is found by the header's `kid` in the issuer's JWKS
//! (RFC 7517), fetched from `[auth] jwks_url` or from the `jwks_uri` of the issuer's
//! discovery document (OpenID Connect Discovery 1.0 §4), kept for `[auth] jwks_refresh`
//! and fetched again at once (at most every [`FORCED_REFRESH_GAP`]) when a token names a
//! key it does not know — how issuers roll keys. Checked: the signature, `iss` equal to
//! `[auth] issuer`, `aud` containing `[auth] audience`, `exp` and `nbf` (with `[auth]
//! leeway`); `exp` is required. Parsing and signature checks are the `jsonwebtoken`
//! crate's (RustCrypto backend); HTTP is reqwest with rustls (ring).
//!
//! What a valid token may do is policy, not here ([`crate::archive::access`]).

use crate::config::AuthConfig;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An unknown `kid` fetches the keys again at most this often.
pub const FORCED_REFRESH_GAP: Duration = Duration::from_secs(30);
/// Timeout of one discovery or JWKS request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a token was not accepted. Every variant but [`TokenError::KeysUnavailable`] is
/// the client's: HTTP 401 with `WWW-Authenticate: Bearer error="invalid_token"`
/// (RFC 6750 §3.1).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("the token is signed with {0:?}, which is not accepted (RS*, PS*, ES256, ES384)")]
    Algorithm(Algorithm),
    #[error("the token names no key the issuer publishes (kid {0:?})")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was issued by another issuer (iss)")]
    Issuer,
    #[error("the token is for another audience (aud)")]
    Audience,
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
    /// The issuer's keys could not be fetched (HTTP 503: try again).
    #[error("the issuer's keys could not be fetched: {0}")]
    KeysUnavailable(String),
}

/// A validated token's claims (its JSON payload).
#[derive(Debug, Clone)]
pub struct Claims(pub Value);

impl Claims {
    fn text(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// The subject (`sub`).
    pub fn subject(&self) -> Option<String> {
        self.text("sub")
    }

    /// The client the token was issued to: `azp` (OIDC), else `client_id` (RFC 9068).
    pub fn client(&self) -> Option<String> {
        self.text("azp").or_else(|| self.text("client_id"))
    }
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// Validates tokens for one `[auth]` configuration; cheap to share (`Arc`).
pub struct Validator {
    config: AuthConfig,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Option<Keys>>,
    last_forced: Mutex<Option<Instant>>,
}

const ACCEPTED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

impl Validator {
    /// A validator for `config` (no request is made until the first token). Fails when
    /// `[auth] ca_file` cannot be read.
    pub fn new(config: &AuthConfig) -> Result<Validator, String> {
        let mut http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3));
        if !config.ca_file.as_os_str().is_empty() {
            let pem = std::fs::read(&config.ca_file)
                .map_err(|e| format!("[auth] ca_file {}: {e}", config.ca_file.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("[auth] ca_file {}: {e}", config.ca_file.display()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Validator {
            config: config.clone(),
            http: http.build().map_err(|e| e.to_string())?,
            keys: tokio::sync::Mutex::new(None),
            last_forced: Mutex::new(None),
        })
    }

    /// Validates `token` (the compact JWS after `Bearer `) and returns its claims.
    pub async fn validate(&self, token: &str) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(TokenError::Algorithm(header.alg));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = match self.key(&kid, header.alg, false).await? {
            Some(key) => key,
            None => self
                .key(&kid, header.alg, true)
                .await?
                .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?,
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.config.issuer.trim()]);
        validation.set_audience(&[self.config.audience.trim()]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map(|data| Claims(data.claims))
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer => TokenError::Issuer,
                ErrorKind::InvalidAudience => TokenError::Audience,
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TokenError::Signature,
                ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                _ => TokenError::Malformed(e.to_string()),
            })
    }

    /// The key `kid` names (the only key, when the token names none and the set has
    /// one), from the cached set; `refetch` fetches the set first (rate limited).
    async fn key(
        &self,
        kid: &str,
        alg: Algorithm,
        refetch: bool,
    ) -> Result<Option<DecodingKey>, TokenError> {
        let mut keys = self.keys.lock().await;
        let stale = keys
            .as_ref()
            .is_none_or(|k| k.fetched.elapsed() >= self.config.jwks_refresh);
        if refetch {
            let mut last = self.last_forced.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < FORCED_REFRESH_GAP) && !stale {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        if stale || refetch {
            match self.fetch().await {
                Ok(set) => {
                    *keys = Some(Keys {
                        set,
                        fetched: Instant::now(),
                    })
                }
                // keep serving with the keys we have while the issuer is away, trying
                // again after FORCED_REFRESH_GAP (not on every request)
                Err(e) if keys.is_some() => {
                    tracing::warn!(error = %e, "could not refresh the issuer's keys; keeping the cached ones");
                    if let Some(k) = keys.as_mut() {
                        let retry_in = self.config.jwks_refresh.saturating_sub(FORCED_REFRESH_GAP);
                        k.fetched = Instant::now()
                            .checked_sub(retry_in)
                            .unwrap_or_else(Instant::now);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let Some(keys) = keys.as_ref() else {
            return Ok(None);
        };
        let jwk = if kid.is_empty() {
            match keys.set.keys.as_slice() {
                [only] => Some(only),
                _ => None,
            }
        } else {
            keys.set.find(kid)
        };
        let Some(jwk) = jwk else {
            return Ok(None);
        };
        if let Some(declared) = jwk.common.key_algorithm {
            if declared.to_string() != format!("{alg:?}") {
                return Err(TokenError::Signature);
            }
        }
        DecodingKey::from_jwk(jwk)
            .map(Some)
            .map_err(|e| TokenError::KeysUnavailable(format!("key {kid:?}: {e}")))
    }

    /// Fetches the JWKS (from the discovery document's `jwks_uri` when no `jwks_url`).
    async fn fetch(&self) -> Result<JwkSet, TokenError> {
        let unavailable = |e: reqwest::Error| TokenError::KeysUnavailable(e.to_string());
        let url = if self.config.jwks_url.trim().is_empty() {
            let discovery = format!(
                "{}/.well-known/openid-configuration",
                self.config.issuer.trim().trim_end_matches('/')
            );
            let doc: Value = self
                .http
                .get(&discovery)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(unavailable)?
                .json()
                .await
                .map_err(unavailable)?;
            doc.get("jwks_uri")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    TokenError::KeysUnavailable(format!("{discovery} names no jwks_uri"))
                })?
        } else {
            self.config.jwks_url.trim().to_string()
        };
        self.http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(unavailable)?
            .json::<JwkSet>()
            .await
            .map_err(unavailable)
    }
}
