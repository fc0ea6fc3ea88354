//! # Other nodes' hot disks
//!
//! Nodes that share one index (docs/scale-out.md) each keep the objects they received on
//! their own hot disk until the objects age to the shared cold bucket. A node asked for an
//! object whose hot file is on another node ([`ObjectRecord::hot_node`]) fetches it from
//! that node's internal route, `GET /internal/objects/{id}` on its HTTP port
//! ([`crate::http::internal`]), at the URL the node advertises in its [`NodeRecord`].
//!
//! Requests carry `Authorization: Bearer <JWT>` (RFC 6750 §2.1): an HS256 token (RFC 7519,
//! signed and checked by the `jsonwebtoken` crate) made with the secret the nodes share
//! (`[cluster] secret_file`), naming the requesting node (`iss`), the audience
//! `strata-node` (`aud`), the object id (`sub`) and an expiry one minute ahead (`exp`).
//! The secret itself never travels; a token opens one object for a minute.
//!
//! What comes back is streamed (never held whole) and checked against the object id
//! (blake3) by the reader ([`crate::tiering::reader`]): a node that answers with other
//! bytes is an error, and the reader falls back to the object's cold copies.
//!
//! [`ObjectRecord::hot_node`]: crate::index::ObjectRecord::hot_node
//! [`NodeRecord`]: crate::index::NodeRecord

use crate::index::{unix_ms_now, Index, NodeRecord};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use strata_tiers::ObjectId;

/// The `aud` of the nodes' tokens.
const AUDIENCE: &str = "strata-node";
/// How long a token is good for, seconds.
const TOKEN_LIFETIME_S: u64 = 60;
/// Clock skew allowed between nodes, seconds.
const LEEWAY_S: u64 = 30;

/// Why an object could not be fetched from another node.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("node {0} is not known to the index")]
    Unknown(String),
    #[error("node {0} is down (silent for more than three heartbeats, or stopped)")]
    Down(String),
    #[error("node {0} advertises no URL (a build before the internal route)")]
    NoUrl(String),
    #[error("node {node}: {detail}")]
    Request { node: String, detail: String },
    #[error("the index: {0}")]
    Index(String),
}

/// A token's claims (RFC 7519 §4.1).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
}

/// Signs this node's requests to other nodes and checks theirs; fetches objects. Cheap
/// to share (`Arc`).
pub struct Peers {
    node_id: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    client: reqwest::Client,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// This node (`node_id`) among nodes sharing `secret`; an error for a secret the
    /// token library refuses (empty).
    pub fn new(node_id: &str, secret: &[u8]) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let bad = |e: jsonwebtoken::errors::Error| format!("the cluster secret: {e}");
        Ok(Peers {
            node_id: node_id.to_string(),
            encoding: EncodingKey::from_secret(secret).map_err(bad)?,
            decoding: DecodingKey::from_secret(secret).map_err(bad)?,
            client,
        })
    }

    /// The peers of the configured node, when `[cluster] secret_file` is set (an
    /// unreadable secret was refused when the configuration was loaded: `None` too).
    pub fn of_config(config: &crate::config::Config) -> Option<Arc<Self>> {
        match config.cluster.secret() {
            Ok(Some(secret)) => match Peers::new(&config.cluster.node(), &secret) {
                Ok(peers) => Some(Arc::new(peers)),
                Err(e) => {
                    tracing::error!(error = %e, "no fetching from other nodes");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "no fetching from other nodes");
                None
            }
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A token opening object `id` for a minute.
    pub fn token(&self, id: &ObjectId) -> String {
        let now = unix_ms_now() / 1000;
        let claims = Claims {
            iss: self.node_id.clone(),
            aud: AUDIENCE.into(),
            sub: id.to_hex(),
            iat: now,
            exp: now + TOKEN_LIFETIME_S,
        };
        // HS256 over serialisable claims cannot fail
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Checks a token presented for object `id`: signed with the shared secret (HS256
    /// only), for `strata-node`, naming `id`, not expired. Returns the node it names.
    pub fn verify(&self, token: &str, id: &ObjectId) -> Result<String, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub", "iss"]);
        validation.leeway = LEEWAY_S;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| format!("invalid node token: {e}"))?
            .claims;
        if claims.sub != id.to_hex() {
            return Err(format!(
                "the token opens object {}, not {}",
                claims.sub,
                id.to_hex()
            ));
        }
        Ok(claims.iss)
    }

    /// The node record of `node`, if it is alive and says where it is.
    fn locate(index: &dyn Index, node: &str) -> Result<NodeRecord, PeerError> {
        let record = index
            .nodes()
            .map_err(|e| PeerError::Index(e.to_string()))?
            .into_iter()
            .find(|n| n.node_id == node)
            .ok_or_else(|| PeerError::Unknown(node.to_string()))?;
        if !record.alive(unix_ms_now()) {
            return Err(PeerError::Down(node.to_string()));
        }
        if record.url.is_empty() {
            return Err(PeerError::NoUrl(node.to_string()));
        }
        Ok(record)
    }

    /// Object `id`'s bytes from `node`'s hot disk, as a stream of chunks (unchecked:
    /// the caller hashes them against `id`). Fails at once when the node is down,
    /// unknown, or does not answer 200.
    pub async fn fetch(
        &self,
        index: Arc<dyn Index>,
        node: &str,
        id: &ObjectId,
    ) -> Result<BoxStream<'static, Result<Bytes, PeerError>>, PeerError> {
        let holder = node.to_string();
        let record = tokio::task::spawn_blocking(move || Self::locate(index.as_ref(), &holder))
            .await
            .map_err(|e| PeerError::Index(e.to_string()))??;
        let url = format!("{}/internal/objects/{}", record.url, id.to_hex());
        let failed = |detail: String| PeerError::Request {
            node: node.to_string(),
            detail,
        };
        let response = self
            .client
            .get(&url)
            .bearer_auth(self.token(id))
            .send()
            .await
            .map_err(|e| failed(format!("GET {url}: {e}")))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(failed(format!("GET {url}: {status}: {}", body.trim())));
        }
        let node = node.to_string();
        Ok(futures::stream::unfold(Some(response), move |response| {
            let node = node.clone();
            async move {
                let mut response = response?;
                match response.chunk().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
                    Ok(None) => None,
                    Err(e) => Some((
                        Err(PeerError::Request {
                            node,
                            detail: format!("reading the answer: {e}"),
                        }),
                        None,
                    )),
                }
            }
        })
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_object_only_and_only_with_the_secret() {
        let a = Peers::new("node-a", &[7u8; 32]).unwrap();
        let b = Peers::new("node-b", &[7u8; 32]).unwrap();
        let stranger = Peers::new("node-x", &[8u8; 32]).unwrap();
        let (id, other) = (ObjectId::of_bytes(b"one"), ObjectId::of_bytes(b"two"));
        let token = a.token(&id);
        assert_eq!(b.verify(&token, &id).unwrap(), "node-a");
        assert!(b.verify(&token, &other).unwrap_err().contains("not"));
        assert!(stranger.verify(&token, &id).is_err(), "another secret");
        assert!(b.verify("not.a.token", &id).is_err());
        // an expired token
        let now = unix_ms_now() / 1000;
        let stale = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                iss: "node-a".into(),
                aud: AUDIENCE.into(),
                sub: id.to_hex(),
                iat: now - 600,
                exp: now - 300,
            },
            &EncodingKey::from_secret(&[7u8; 32]).unwrap(),
        )
        .unwrap();
        assert!(b.verify(&stale, &id).unwrap_err().contains("xpired"));
        // alg "none" or another algorithm is refused
        let none = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
            token.split('.').nth(1).unwrap()
        );
        assert!(b.verify(&none, &id).is_err());
    }
}
