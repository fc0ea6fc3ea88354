//! # The nodes' internal route
//!
//! `GET /internal/objects/{id}` answers another node of the archive with the bytes of
//! object `id` (64 hex digits) from this node's hot disk, streamed as stored
//! (`application/octet-stream`, with its `Content-Length`). The caller proves it is a
//! node of the archive with `Authorization: Bearer <token>`: an HS256 token made with
//! the shared `[cluster] secret_file` for exactly this object ([`crate::peer`]).
//!
//! Answers: 200; 400 for an id that is not 64 hex digits; 401 without a token
//! (`WWW-Authenticate: Bearer realm="strata-node"`); 403 for a token that does not check
//! out (another secret, expired, another object), with the reason; 404 when the object
//! has no hot file here, or when this node has no secret (the route is off). The
//! requesting node checks what it receives against the id; the access itself is
//! audited there, with the caller who asked for the object.

use crate::archive::Archive;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use strata_tiers::ObjectId;

/// Bytes read from the hot file per chunk of the answer.
const CHUNK: usize = 256 << 10;

pub fn routes() -> Router<Archive> {
    Router::new().route("/internal/objects/{id}", get(object))
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", why.into()),
    )
        .into_response()
}

async fn object(
    State(archive): State<Archive>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(peers) = archive.tiering().peers.clone() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "no internal route on this node ([cluster] secret_file is not set)",
        );
    };
    let Some(id) = ObjectId::from_hex(&id) else {
        return refuse(StatusCode::BAD_REQUEST, "an object id is 64 hex digits");
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        let mut response = refuse(StatusCode::UNAUTHORIZED, "a node token is needed");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"strata-node\""),
        );
        return response;
    };
    let node = match peers.verify(token.trim(), &id) {
        Ok(node) => node,
        Err(why) => {
            tracing::warn!(object = %id, %why, "internal route: request refused");
            return refuse(StatusCode::FORBIDDEN, why);
        }
    };
    let path = archive.hot().path_of(&id);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("object {id} has no hot file on this node"),
            )
        }
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("object {id}: {e}"),
            )
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("object {id}: {e}"),
            )
        }
    };
    tracing::debug!(object = %id, node, "internal route: sending a hot object to another node");
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}
