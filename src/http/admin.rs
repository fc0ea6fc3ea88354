//! The admin API: what the `strata` command line asks of a running server, so that
//! governance works without downtime (one process owns the archive, DESIGN "Who owns an
//! archive"). Loopback peers only; authentication of the caller comes with the security
//! issue — until then the client names its operating-system user in the
//! [`USER_HEADER`] header and the server attributes the action to it
//! ([`Principal::cli_via`]).
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /admin/tier/status` | | [`TierStatus`] |
//! | `POST /admin/tier/run` | | [`PassReport`] |
//! | `POST /admin/tier/move` | [`TierMoveRequest`] | [`MoveReport`] |
//! | `POST /admin/hold` | [`HoldRequest`] | `{}` |
//! | `POST /admin/delete` | [`DeleteRequest`] | [`DeleteReport`] |
//! | `POST /admin/retention` | [`RetentionRequest`] | [`RetentionReport`] |
//! | `POST /admin/repair` | | [`RepairAnswer`] |
//! | `POST /admin/patient/merge` | [`MergeRequest`] | [`ChangeOutcome`] |
//!
//! Bodies are JSON. A failure answers the status of
//! [`Error::http_status`](crate::archive::Error::http_status) with `{"error": "..."}`.
//! [`AdminClient`] is the typed client (reqwest, with timeouts).

use super::auth::WebCaller;
use crate::archive::governance::{DeleteReport, RetentionReport};
use crate::archive::integrity::{RepairReport, VerifyReport};
use crate::archive::patients::{ChangeOutcome, MergeRequest};
use crate::archive::principal::Grant;
use crate::archive::tier::TierTarget;
use crate::archive::{Archive, Error, Principal};
use crate::index::HoldRecord;
use crate::tiering::mover::MoveReport;
use crate::tiering::worker::{PassReport, TierStatus};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The header naming the command-line user the request acts for.
pub const USER_HEADER: &str = "x-strata-user";
/// The route the admin API records as `via` in the caller's identity.
const VIA: &str = "admin-api";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TierMoveRequest {
    pub study_uid: String,
    /// `cold`, `hot` or `archive`.
    pub to: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldRequest {
    pub study_uid: String,
    /// The matter (placing) or why the hold is lifted (releasing).
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub release: bool,
    /// Releasing: the reason of the hold to lift (needed when several stand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matter: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub study_uid: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionRequest {
    #[serde(default)]
    pub dry_run: bool,
    /// The rule to apply (`[retention] study_age` of the caller's configuration), in
    /// seconds; absent: the server's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study_age_secs: Option<u64>,
}

/// What `verify --repair` found and did.
#[derive(Debug, Serialize, Deserialize)]
pub struct RepairAnswer {
    pub found: VerifyReport,
    pub repair: RepairReport,
}

/// The admin routes (merged into the HTTP router).
pub fn routes() -> Router<Archive> {
    Router::new()
        .route("/admin/tier/status", get(tier_status))
        .route("/admin/tier/run", post(tier_run))
        .route("/admin/tier/move", post(tier_move))
        .route("/admin/hold", post(hold))
        .route("/admin/delete", post(delete))
        .route("/admin/retention", post(retention))
        .route("/admin/repair", post(repair))
        .route("/admin/patient/merge", post(patient_merge))
}

/// A refusal or failure, rendered as `{"error": ...}` with its status.
struct Failure(StatusCode, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Failure(status, e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type Answer<T> = Result<Json<T>, Failure>;

/// The caller: a loopback peer with a token carrying its roles (tokens on), or naming
/// its user in [`USER_HEADER`] and holding `[access] admin_loopback` (tokens off).
fn principal(
    peer: &WebCaller,
    headers: &HeaderMap,
    archive: &Archive,
) -> Result<Principal, Failure> {
    if !peer.address.ip().is_loopback() {
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "admin routes answer loopback peers only".into(),
        ));
    }
    if peer.token {
        return Ok(peer.principal("admin"));
    }
    let user = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Failure(
                StatusCode::BAD_REQUEST,
                format!("name the acting user in the {USER_HEADER} header"),
            )
        })?;
    let grant = Grant::roles(archive.config().access.admin_loopback);
    Ok(Principal::cli_via(user, VIA, grant))
}

async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Failure> {
    Ok(crate::archive::blocking(f).await?)
}

async fn tier_status(
    peer: WebCaller,
    headers: HeaderMap,
    State(archive): State<Archive>,
) -> Answer<TierStatus> {
    principal(&peer, &headers, &archive)?;
    Ok(Json(archive.tier_status().await?))
}

async fn tier_run(
    peer: WebCaller,
    headers: HeaderMap,
    State(archive): State<Archive>,
) -> Answer<PassReport> {
    let p = principal(&peer, &headers, &archive)?;
    Ok(Json(archive.tier_pass(&p).await?))
}

async fn tier_move(
    peer: WebCaller,
    headers: HeaderMap,
    State(archive): State<Archive>,
    Json(req): Json<TierMoveRequest>,
) -> Answer<MoveReport> {
    let p = principal(&peer, &headers, &archive)?;
    let to: TierTarget = req.to.parse()?;
    Ok(Json(archive.tier_move(&p, &req.study_uid, to).await?))
}

async fn hold(
    peer: WebCaller,
    headers: HeaderMap,
    State(archive): State<Archive>,
    Json(req): Json<HoldRequest>,
) -> Answer<HoldRecord> {
    let p = principal(&peer, &headers, &archive)?;
    let this = archive.clone();
    let hold = on_blocking_pool(move || {
        this.hold_blocking(
            &p,
            &req.study_uid,
            &req.reason,
            req.release,
            req.matter.as_deref(),
        )
    })
    .await?;
    archive.sync_governance_or_log().await;
    Ok(Json(hold))
}

async fn delete(
    peer: WebCaller,
    headers: HeaderMap,
    State(archive): State<Archive>,
    Json(req): Json<DeleteRequest>,
) -> Answer<DeleteReport> {
    let p = principal(&peer, &headers, &archive)?;
    Ok(Json(
        archive
            .delete_study(&p, &req.study_uid, &req.reason)
            .await?,
    ))
}

async fn retention(
    peer: WebCaller,
    headers: HeaderMap,
    State(archive): State<Archive>,
    Json(req): Json<RetentionRequest>,
) -> Answer<RetentionReport> {
    let p = principal(&peer, &headers, &archive)?;
    let age = req
        .study_age_secs
        .map(std::time::Duration::from_secs)
        .unwrap_or(archive.config().retention.study_age);
    Ok(Json(archive.retention(&p, age, req.dry_run).await?))
}

async fn repair(
    peer: WebCaller,
    headers: HeaderMap,
    State(archive): State<Archive>,
) -> Answer<RepairAnswer> {
    let p = principal(&peer, &headers, &archive)?;
    let workers = archive.config().workers();
    let (found, repair) = on_blocking_pool(move || archive.repair_blocking(&p, workers)).await?;
    Ok(Json(RepairAnswer { found, repair }))
}

async fn patient_merge(
    peer: WebCaller,
    headers: HeaderMap,
    State(archive): State<Archive>,
    Json(req): Json<MergeRequest>,
) -> Answer<ChangeOutcome> {
    let p = principal(&peer, &headers, &archive)?;
    let outcome = archive.merge_patients(&p, &req).await?;
    archive.sync_governance_or_log().await;
    Ok(Json(outcome))
}

/// Why an admin request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The server could not be reached or did not answer in time.
    #[error("the server's admin API at {url} did not answer: {detail} (a `strata serve` holds this archive: check that this configuration's [http] port is the server's)")]
    Unreachable { url: String, detail: String },
    /// The server answered with a failure status (`status`, RFC 9110); `message` says
    /// why, as the use case put it.
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// The answer was not the JSON expected.
    #[error("the server's answer is unreadable: {0}")]
    Malformed(String),
}

/// The typed client of the admin API (reqwest), with a connect timeout and a timeout
/// per request suited to its work.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    user: String,
    /// A bearer token sent with every request (a server with `[auth] issuer`).
    token: Option<String>,
    http: reqwest::Client,
}

/// Connect timeout of every admin request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of quick requests (status, hold).
const QUICK: Duration = Duration::from_secs(60);
/// Timeout of requests that move or re-hash data (tier moves, delete, retention, repair).
const LONG: Duration = Duration::from_secs(24 * 3600);

impl AdminClient {
    /// A client of the server listening on `port` on loopback, acting for `user`.
    pub fn new(port: u16, user: &str) -> Result<Self, AdminError> {
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // loopback only: never through an HTTP_PROXY from the environment
            .no_proxy()
            .build()
            .map_err(|e| AdminError::Unreachable {
                url: base.clone(),
                detail: e.to_string(),
            })?;
        Ok(AdminClient {
            base,
            user: user.to_string(),
            token: None,
            http,
        })
    }

    /// This client sending `token` as `Authorization: Bearer` (its roles decide).
    pub fn with_token(self, token: Option<String>) -> Self {
        AdminClient { token, ..self }
    }

    async fn call<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        get: bool,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, AdminError> {
        let url = format!("{}{path}", self.base);
        let mut req = if get {
            self.http.get(&url)
        } else {
            self.http.post(&url)
        }
        .header(USER_HEADER, &self.user)
        .timeout(timeout);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let unreachable = |e: reqwest::Error| AdminError::Unreachable {
            url: url.clone(),
            detail: e.to_string(),
        };
        let rsp = req.send().await.map_err(unreachable)?;
        let status = rsp.status();
        let text = rsp.text().await.map_err(unreachable)?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            let message = if status == reqwest::StatusCode::UNAUTHORIZED {
                format!(
                    "{} (the server wants a bearer token: set STRATA_TOKEN, or \
                     STRATA_TOKEN_FILE to a file holding it)",
                    message.trim()
                )
            } else {
                message
            };
            return Err(AdminError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_str(&text).map_err(|e| AdminError::Malformed(e.to_string()))
    }

    pub async fn tier_status(&self) -> Result<TierStatus, AdminError> {
        self.call::<(), _>(true, "/admin/tier/status", None, QUICK)
            .await
    }

    pub async fn tier_run(&self) -> Result<PassReport, AdminError> {
        self.call::<(), _>(false, "/admin/tier/run", None, LONG)
            .await
    }

    pub async fn tier_move(&self, study_uid: &str, to: &str) -> Result<MoveReport, AdminError> {
        let body = TierMoveRequest {
            study_uid: study_uid.into(),
            to: to.into(),
        };
        self.call(false, "/admin/tier/move", Some(&body), LONG)
            .await
    }

    pub async fn hold(
        &self,
        study_uid: &str,
        reason: &str,
        release: bool,
        matter: Option<&str>,
    ) -> Result<HoldRecord, AdminError> {
        let body = HoldRequest {
            study_uid: study_uid.into(),
            reason: reason.into(),
            release,
            matter: matter.map(Into::into),
        };
        self.call(false, "/admin/hold", Some(&body), QUICK).await
    }

    pub async fn delete(&self, study_uid: &str, reason: &str) -> Result<DeleteReport, AdminError> {
        let body = DeleteRequest {
            study_uid: study_uid.into(),
            reason: reason.into(),
        };
        self.call(false, "/admin/delete", Some(&body), LONG).await
    }

    /// Applies the retention rule `study_age` (the caller's configuration) in the server.
    pub async fn retention(
        &self,
        study_age: std::time::Duration,
        dry_run: bool,
    ) -> Result<RetentionReport, AdminError> {
        let body = RetentionRequest {
            dry_run,
            study_age_secs: Some(study_age.as_secs()),
        };
        self.call(false, "/admin/retention", Some(&body), LONG)
            .await
    }

    pub async fn repair(&self) -> Result<RepairAnswer, AdminError> {
        self.call::<(), _>(false, "/admin/repair", None, LONG).await
    }

    /// Merges two patients in the server (`strata patient merge`).
    pub async fn patient_merge(&self, request: &MergeRequest) -> Result<ChangeOutcome, AdminError> {
        self.call(false, "/admin/patient/merge", Some(request), QUICK)
            .await
    }
}
