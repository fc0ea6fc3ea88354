//! Who a web request comes from: bearer tokens on the protected APIs, and the caller
//! every handler hands to its use case (docs/security.md "Tokens").
//!
//! [`authenticate`] runs before every matched route. On the protected prefixes —
//! `/dicom-web`, `/wado`, `/fhir` (but its CapabilityStatement `/fhir/metadata`) and
//! `/admin` — it puts a [`WebCaller`] into the request:
//! - tokens on (`[auth] issuer`): the `Authorization: Bearer <JWT>` header (RFC 6750
//!   §2.1) validated by [`crate::oidc`]; its claims give the grant
//!   ([`crate::archive::access::grant_of_claims`]). No token → 401 with
//!   `WWW-Authenticate: Bearer realm="strata"`; a bad one → 401 with
//!   `error="invalid_token"` and the reason (RFC 6750 §3.1); the issuer's keys out of
//!   reach → 503. Each refusal is an audit record (action `authenticate`, DCM 110114).
//! - tokens off: the caller is anonymous with `[access] web_anonymous`; an
//!   `Authorization` header is then ignored.
//!
//! A use case that refuses the caller answers 403 ([`crate::archive::Error::Forbidden`]);
//! with tokens on, such an answer also carries `WWW-Authenticate: Bearer
//! error="insufficient_scope"`. The viewer's static files, `/metrics`, `/healthz` and
//! `/readyz` carry no patient data and stay open.

use crate::archive::access::grant_of_claims;
use crate::archive::principal::Grant;
use crate::archive::{Archive, Principal};
use crate::oidc::TokenError;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

/// The realm named in `WWW-Authenticate`.
const REALM: &str = "strata";

/// The caller of a web request, as [`authenticate`] established it.
#[derive(Debug, Clone)]
pub struct WebCaller {
    pub address: SocketAddr,
    /// The token's subject (`sub`), when it presented one.
    pub user: Option<String>,
    /// The token's client (`azp` or `client_id`).
    pub client: Option<String>,
    pub grant: Grant,
    /// Whether the caller presented a valid token (else tokens are off).
    pub token: bool,
}

impl WebCaller {
    /// The use cases' [`Principal`] of this caller of `service`.
    pub fn principal(&self, service: &str) -> Principal {
        Principal::web_user(
            service,
            &self.address.to_string(),
            self.user.clone(),
            self.client.clone(),
        )
        .granted(self.grant.clone())
    }
}

impl std::fmt::Display for WebCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(user) => write!(f, "{user}@{}", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        parts.extensions.get::<WebCaller>().cloned().ok_or_else(|| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "no caller was established for this route",
            )
                .into_response()
        })
    }
}

/// The API a protected path belongs to (the audit record's `service`), or `None` for
/// an open path.
fn service_of(path: &str) -> Option<&'static str> {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if under("/dicom-web") {
        Some("dicomweb")
    } else if under("/wado") {
        Some("wado-uri")
    } else if under("/fhir") {
        (path != "/fhir/metadata").then_some("fhir")
    } else if under("/admin") {
        Some("admin")
    } else {
        None
    }
}

/// The middleware; see the module docs.
pub async fn authenticate(
    State(archive): State<Archive>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(service) = service_of(request.uri().path()) else {
        return next.run(request).await;
    };
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let Some(validator) = archive.tokens().cloned() else {
        request.extensions_mut().insert(WebCaller {
            address,
            user: None,
            client: None,
            grant: Grant::roles(archive.config().access.web_anonymous),
            token: false,
        });
        return next.run(request).await;
    };
    let refuse = |status: StatusCode, challenge: String, why: String| {
        let who = Principal::web(service, &address.to_string());
        archive.connection_refused_as(&who, "authenticate", &why);
        let mut response = (status, format!("{why}\n")).into_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        response
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        })
        .filter(|t| !t.is_empty());
    let Some(token) = bearer else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("Bearer realm=\"{REALM}\""),
            "a bearer token is required (Authorization: Bearer <token>)".into(),
        );
    };
    let claims = match validator.validate(&token).await {
        Ok(claims) => claims,
        Err(e @ TokenError::KeysUnavailable(_)) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Bearer realm=\"{REALM}\""),
                e.to_string(),
            )
        }
        Err(e) => {
            let why = e.to_string();
            return refuse(
                StatusCode::UNAUTHORIZED,
                format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                    why.replace('"', "'")
                ),
                why,
            );
        }
    };
    let grant = grant_of_claims(&archive.config().auth, &claims.0, |p| {
        super::fhir::ids::fhir_to_patient_id(p)
    });
    request.extensions_mut().insert(WebCaller {
        address,
        user: claims.subject(),
        client: claims.client(),
        grant,
        token: true,
    });
    let mut response = next.run(request).await;
    if response.status() == StatusCode::FORBIDDEN {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"strata\", error=\"insufficient_scope\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::service_of;

    #[test]
    fn protected_paths_are_the_apis_with_patient_data() {
        assert_eq!(service_of("/dicom-web/studies"), Some("dicomweb"));
        assert_eq!(service_of("/wado"), Some("wado-uri"));
        assert_eq!(service_of("/fhir/ImagingStudy"), Some("fhir"));
        assert_eq!(service_of("/admin/tier/run"), Some("admin"));
        assert_eq!(service_of("/fhir/metadata"), None);
        assert_eq!(service_of("/viewer/index.html"), None);
        assert_eq!(service_of("/wadofoo"), None);
        assert_eq!(service_of("/metrics"), None);
    }
}
