//! # The zero-footprint viewer at `/viewer` (OHIF)
//!
//! `http://HOST:PORT/viewer?StudyInstanceUIDs=<uid>` opens a study in OHIF, served
//! same-origin from its prebuilt files (`[web] viewer_dir`, fetched by
//! `scripts/install-viewer.sh`; tower-http's `ServeDir`, any unknown path falling back to
//! `index.html` as a single-page app needs). Strata answers the viewer's `app-config.js`
//! itself: one DICOMweb data source, our own `/dicom-web` (QIDO-RS, WADO-RS with frames
//! and metadata, WADO-URI at `/wado`), so nothing leaves this origin.
//!
//! OHIF's files live at the root (`/app.bundle.….js`, `/assets/…`), as its build expects;
//! the API prefixes (`/dicom-web`, `/fhir`, `/wado`, `/admin`) never fall back to it:
//! an unknown API path stays a 404. With `[web] viewer = false` nothing is served; with
//! the files missing, the viewer's paths answer 503 saying how to install them.

use crate::archive::Archive;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceExt;

/// The paths of Strata's own APIs: never answered by the viewer's files.
const API_PREFIXES: [&str; 6] = [
    "/dicom-web",
    "/fhir",
    "/wado",
    "/admin",
    "/metrics",
    "/healthz",
];

/// The viewer's configuration (OHIF `window.config`): one DICOMweb data source, this
/// origin's `/dicom-web`.
const APP_CONFIG: &str = r#"/** OHIF configuration, answered by Strata: its own DICOMweb, same origin. */
window.config = {
  name: 'strata',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'strata',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'strata',
      configuration: {
        friendlyName: 'Strata',
        name: 'strata',
        wadoUriRoot: window.location.origin + '/wado',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"#;

/// The viewer's routes, when `[web] viewer` is on.
pub fn routes(archive: &Archive) -> Router<Archive> {
    if !archive.config().web.viewer {
        return Router::new();
    }
    Router::new()
        .route("/app-config.js", get(app_config))
        .fallback(files)
}

async fn app_config() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/javascript; charset=utf-8",
        )],
        APP_CONFIG,
    )
        .into_response()
}

/// The viewer's files, any other path being the single-page app's `index.html`.
async fn files(State(archive): State<Archive>, request: Request) -> Response {
    let path = request.uri().path();
    if API_PREFIXES
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
    {
        return (StatusCode::NOT_FOUND, "no such resource\n").into_response();
    }
    let dir = archive.config().web.viewer_dir.clone();
    let index = dir.join("index.html");
    if !index.is_file() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the viewer is not installed in {}: run scripts/install-viewer.sh (or set \
                 [web] viewer = false)\n",
                dir.display()
            ),
        )
            .into_response();
    }
    let serve = tower_http::services::ServeDir::new(&dir)
        .fallback(tower_http::services::ServeFile::new(index));
    match serve.oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
