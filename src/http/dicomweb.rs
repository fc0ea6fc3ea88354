//! # DICOMweb (PS3.18) under `/dicom-web`
//!
//! Each route parses its request into a typed call once, calls the application layer
//! ([`crate::archive`]) with a web [`Principal`] — the same find, retrieve and store use
//! cases as DIMSE, audited the same way — and renders the answer:
//!
//! - **QIDO-RS** (PS3.18 10.6): `GET /studies`, `/studies/{study}/series`,
//!   `/studies/{study}/series/{series}/instances`, `/series`, `/instances`. Matching is
//!   C-FIND's ([`crate::query`]); parameters are attribute keywords or tags
//!   (`PatientID=…`, `00100020=…`), `includefield` (keywords, tags, or `all`), `limit`,
//!   `offset`; `fuzzymatching=true` is answered with literal matching and a `Warning`
//!   header (PS3.18 8.3.4.1). Answers are `application/dicom+json` (also sent for
//!   `application/json`).
//! - **WADO-RS** (PS3.18 10.4): a study, series or instance as `multipart/related;
//!   type="application/dicom"`, each part a Part-10 file: as stored with
//!   `transfer-syntax=*` (its bytes hash to the object id), else in the syntax asked
//!   (Explicit VR Little Endian by default, PS3.18 8.7.3.5.2), converted when needed
//!   ([`crate::dicom::transcode`]). Parts are streamed one object at a time (large objects
//!   from a file, [`crate::archive::retrieve::RetrievalReader::open`]).
//!   `…/metadata` answers the DICOM JSON of each instance (dicom-json), bulk data left
//!   out.
//! - **STOW-RS** (PS3.18 10.5): `POST /studies` and `/studies/{study}` with
//!   `multipart/related; type="application/dicom"` (boundary quoted or not, parsed by
//!   multer): each part goes through the same durable ingest as C-STORE and is answered
//!   in ReferencedSOPSequence or FailedSOPSequence (with the PS3.4 failure reason).
//!
//! Errors are a status with a plain-text reason: 400 for a malformed request, 404 for
//! UIDs the archive does not hold, 406 for an Accept it cannot produce, 415 for a body
//! type it does not take. What is not supported yet is listed in
//! `docs/conformance-dicomweb.md`.

use super::auth::WebCaller;
use crate::archive::principal::Role;
use crate::archive::{Archive, Error};
use crate::dicom::metadata::InstanceMetadata;
use crate::query::{tags, Answer, Level, Model, Query};
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::BTreeSet;

/// The API name in audit records.
const SERVICE: &str = "dicomweb";
/// Explicit VR Little Endian: WADO-RS's default transfer syntax for `application/dicom`.
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Most matches one QIDO-RS answer holds when the request sets no smaller `limit`.
const MAX_RESULTS: usize = 100_000;
/// RetrieveURL (0008,1190).
const RETRIEVE_URL: u32 = 0x0008_1190;

/// The UIDs a path names (`{study}`, `{series}`, `{instance}`), as matching keys.
type UidPath = Path<std::collections::HashMap<String, String>>;

fn path_keys(path: &std::collections::HashMap<String, String>) -> Vec<(u32, &str)> {
    [
        ("study", tags::STUDY_INSTANCE_UID),
        ("series", tags::SERIES_INSTANCE_UID),
        ("instance", tags::SOP_INSTANCE_UID),
    ]
    .into_iter()
    .filter_map(|(name, tag)| path.get(name).map(|v| (tag, v.as_str())))
    .collect()
}

/// A QIDO-RS route searching at `level` under the path's UIDs.
fn searching(level: Level) -> axum::routing::MethodRouter<Archive> {
    get(
        move |State(a): State<Archive>,
              peer: WebCaller,
              path: Option<UidPath>,
              headers: HeaderMap,
              RawQuery(q): RawQuery| async move {
            let path = path.map(|Path(p)| p).unwrap_or_default();
            search(a, peer, headers, level, &path_keys(&path), q).await
        },
    )
}

/// A WADO-RS route retrieving (or, with `metadata`, describing) what the path names
/// at `level`.
fn retrieving(level: Level, metadata_only: bool) -> axum::routing::MethodRouter<Archive> {
    get(
        move |State(a): State<Archive>,
              peer: WebCaller,
              Path(path): UidPath,
              headers: HeaderMap| async move {
            let query = Query::from_keys(level, &path_keys(&path));
            if metadata_only {
                metadata(a.clone(), peer, base_url(&a, &headers), query).await
            } else {
                retrieve(a, peer, headers, query).await
            }
        },
    )
}

pub fn routes() -> Router<Archive> {
    const STUDY: &str = "/dicom-web/studies/{study}";
    const SERIES: &str = "/dicom-web/studies/{study}/series/{series}";
    const INSTANCE: &str = "/dicom-web/studies/{study}/series/{series}/instances/{instance}";
    Router::new()
        .route(
            "/dicom-web/studies",
            searching(Level::Study).post(store_any),
        )
        .route("/dicom-web/series", searching(Level::Series))
        .route("/dicom-web/instances", searching(Level::Image))
        .route(STUDY, retrieving(Level::Study, false).post(store_in_study))
        .route(&format!("{STUDY}/metadata"), retrieving(Level::Study, true))
        .route(&format!("{STUDY}/series"), searching(Level::Series))
        .route(&format!("{STUDY}/instances"), searching(Level::Image))
        .route(SERIES, retrieving(Level::Series, false))
        .route(
            &format!("{SERIES}/metadata"),
            retrieving(Level::Series, true),
        )
        .route(&format!("{SERIES}/instances"), searching(Level::Image))
        .route(INSTANCE, retrieving(Level::Image, false))
        .route(
            &format!("{INSTANCE}/metadata"),
            retrieving(Level::Image, true),
        )
        .route(&format!("{STUDY}/rendered"), get(rendered_many))
        .route(&format!("{STUDY}/thumbnail"), get(thumbnail))
        .route(&format!("{SERIES}/rendered"), get(rendered_many))
        .route(&format!("{SERIES}/thumbnail"), get(thumbnail))
        .route(&format!("{INSTANCE}/rendered"), get(rendered))
        .route(&format!("{INSTANCE}/thumbnail"), get(thumbnail))
        .route(&format!("{INSTANCE}/frames/{{frames}}"), get(frames))
        .route(
            &format!("{INSTANCE}/frames/{{frames}}/rendered"),
            get(rendered),
        )
        .route(
            &format!("{INSTANCE}/frames/{{frames}}/thumbnail"),
            get(thumbnail),
        )
        .route(&format!("{INSTANCE}/bulkdata/{{tag}}"), get(bulkdata))
}

/// A request refused before any work: the response to send (boxed: a `Response` is
/// large for an `Err`).
type Refused = Box<Response>;

/// A failure answered as `status` with `reason` as plain text.
pub(super) fn fail(status: StatusCode, reason: impl Into<String>) -> Response {
    let mut body = reason.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// An application-layer error as its HTTP status ([`Error::http_status`]); a pack being
/// restored from an archive class (hours) or a cold tier that does not answer is a 503
/// with `Retry-After` (RFC 9110 10.2.3): 3600 s and 60 s.
pub(super) fn failed(e: Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry = if e.is_pending_restore() {
        Some("3600")
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        Some("60")
    } else {
        None
    };
    // a 500 says what failed in the server log, not in the answer (paths, internals)
    let text = if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "web request failed");
        "the archive could not answer this request; the server log says why".to_string()
    } else {
        e.to_string()
    };
    let mut response = fail(status, text);
    if let Some(seconds) = retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
    }
    response
}

/// One media range of an Accept header (RFC 9110 12.5.1): its type in lower case and
/// its parameters (names in lower case, values unquoted; `type` values in lower case).
struct MediaRange {
    kind: String,
    params: Vec<(String, String)>,
}

impl MediaRange {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The media ranges an Accept header lists, in order, leaving out those with `q=0`
/// (not acceptable). `None` when the request has no Accept.
fn media_ranges(headers: &HeaderMap) -> Option<Vec<MediaRange>> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    Some(
        accept
            .split(',')
            .filter_map(|media| {
                let mut parts = media.split(';').map(str::trim);
                let kind = parts.next().unwrap_or("").to_ascii_lowercase();
                let params: Vec<(String, String)> = parts
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| {
                        let k = k.trim().to_ascii_lowercase();
                        let v = v.trim().trim_matches('"');
                        let v = if k == "type" {
                            v.to_ascii_lowercase()
                        } else {
                            v.to_string()
                        };
                        (k, v)
                    })
                    .collect();
                let refused = params
                    .iter()
                    .any(|(k, v)| k == "q" && v.parse::<f32>().is_ok_and(|q| q == 0.0));
                (!refused).then_some(MediaRange { kind, params })
            })
            .collect(),
    )
}

/// The Accept header's text, for a 406's reason.
fn accept_text(headers: &HeaderMap) -> String {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// `http://host:port/dicom-web` of the request, for RetrieveURLs and BulkDataURIs
/// ([`super::origin`]).
fn base_url(archive: &Archive, headers: &HeaderMap) -> String {
    format!("{}/dicom-web", super::origin(archive, headers))
}

// ---------------------------------------------------------------------------------------
// QIDO-RS

/// What a search returns by default, per level (PS3.18 Table 10.6.3-3, the attributes the
/// index holds), besides the keys matched on.
fn default_fields(level: Level) -> &'static [u32] {
    match level {
        Level::Study | Level::Patient => &[
            tags::STUDY_DATE,
            tags::STUDY_TIME,
            tags::ACCESSION_NUMBER,
            tags::MODALITIES_IN_STUDY,
            tags::REFERRING_PHYSICIAN_NAME,
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::PATIENT_BIRTH_DATE,
            tags::PATIENT_SEX,
            tags::STUDY_INSTANCE_UID,
            tags::STUDY_ID,
            tags::NUMBER_OF_STUDY_RELATED_SERIES,
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        ],
        Level::Series => &[
            tags::MODALITY,
            tags::SERIES_DESCRIPTION,
            tags::SERIES_NUMBER,
            tags::SERIES_INSTANCE_UID,
            tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
        ],
        Level::Image => &[
            tags::SOP_CLASS_UID,
            tags::SOP_INSTANCE_UID,
            tags::INSTANCE_NUMBER,
        ],
    }
}

/// Every attribute the index can answer at a level and the levels above it
/// (`includefield=all`).
fn all_fields(level: Level) -> Vec<u32> {
    let mut out: Vec<u32> = default_fields(Level::Study).to_vec();
    out.push(tags::STUDY_DESCRIPTION);
    if matches!(level, Level::Series | Level::Image) {
        out.extend(default_fields(Level::Series));
    }
    if level == Level::Image {
        out.extend(default_fields(Level::Image));
    }
    out
}

/// A tag from a keyword (`PatientID`) or 8 hex digits (`00100020`), PS3.18 8.3.4.
fn tag_of(name: &str) -> Option<u32> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    if name.len() == 8 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        return u32::from_str_radix(name, 16).ok();
    }
    dicom_dictionary_std::StandardDataDictionary
        .by_name(name)
        .map(|e| {
            let t = e.tag_range().inner();
            (t.group() as u32) << 16 | t.element() as u32
        })
}

/// A parsed QIDO-RS request.
struct Search {
    query: Query,
    limit: usize,
    offset: usize,
    fuzzy: bool,
}

/// Parses the query parameters of a search at `level` under the path's UIDs.
fn parse_search(
    level: Level,
    path_keys: &[(u32, &str)],
    raw: Option<&str>,
) -> Result<Search, String> {
    let mut keys: Vec<(u32, String)> = path_keys.iter().map(|(t, v)| (*t, v.to_string())).collect();
    let mut fields: BTreeSet<u32> = default_fields(level).iter().copied().collect();
    // PS3.18 10.6.3.3: searches across the whole archive return the attributes of the
    // levels above too (All Series: the study's; All Instances: the study's and the
    // series'), the ones under a study or series only their own
    if path_keys.is_empty() {
        if matches!(level, Level::Series | Level::Image) {
            fields.extend(default_fields(Level::Study));
        }
        if level == Level::Image {
            fields.extend(default_fields(Level::Series));
        }
    }
    let (mut limit, mut offset, mut fuzzy) = (MAX_RESULTS, 0usize, false);
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .map_err(|_| format!("limit={value:?} is not a number"))?
                    .min(MAX_RESULTS)
            }
            "offset" => {
                offset = value
                    .parse()
                    .map_err(|_| format!("offset={value:?} is not a number"))?
            }
            "fuzzymatching" => fuzzy = value.as_ref() == "true",
            "includefield" => {
                for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if field == "all" {
                        fields.extend(all_fields(level));
                    } else {
                        fields.insert(tag_of(field).ok_or_else(|| {
                            format!("includefield {field:?} is not a DICOM keyword or tag")
                        })?);
                    }
                }
            }
            _ => {
                let tag = tag_of(&name).ok_or_else(|| {
                    format!("{name:?} is not a DICOM keyword or tag, nor a QIDO-RS parameter")
                })?;
                if keys.iter().any(|(t, _)| *t == tag) {
                    return Err(format!("{name} is given twice"));
                }
                keys.push((tag, value.into_owned()));
            }
        }
    }
    for tag in fields {
        if !keys.iter().any(|(t, _)| *t == tag) {
            keys.push((tag, String::new()));
        }
    }
    let borrowed: Vec<(u32, &str)> = keys.iter().map(|(t, v)| (*t, v.as_str())).collect();
    let mut query = Query::from_keys(level, &borrowed);
    // the whole-archive resources search across the hierarchy (PS3.18 10.6.1)
    query.relational = true;
    Ok(Search {
        query,
        limit,
        offset,
        fuzzy,
    })
}

/// One attribute in the DICOM JSON model (PS3.18 F.2): `{"vr": …, "Value": […]}`, with
/// PN as component groups, numbers for IS, DS and binary numeric VRs, and no `Value` for
/// an empty attribute.
fn json_attribute(tag: u32, value: &str) -> serde_json::Value {
    use serde_json::{json, Value};
    let vr = crate::query::vr_of_tag(tag);
    let vr = std::str::from_utf8(&vr).unwrap_or("UN").to_string();
    if value.is_empty() {
        return json!({ "vr": vr });
    }
    let values: Vec<Value> = value
        .split('\\')
        .map(|v| match vr.as_str() {
            "PN" => {
                let mut groups = serde_json::Map::new();
                for (name, g) in ["Alphabetic", "Ideographic", "Phonetic"]
                    .iter()
                    .zip(v.split('='))
                {
                    if !g.is_empty() {
                        groups.insert(name.to_string(), Value::String(g.to_string()));
                    }
                }
                Value::Object(groups)
            }
            "IS" | "SL" | "SS" | "UL" | "US" | "SV" | "UV" => v
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(v.to_string())),
            "DS" | "FL" | "FD" => {
                crate::dicom::metadata::ds_number(v).unwrap_or_else(|| Value::String(v.to_string()))
            }
            _ => Value::String(v.to_string()),
        })
        .collect();
    json!({ "vr": vr, "Value": values })
}

/// A match as a DICOM JSON object — the attributes the search asked for (its keys,
/// the defaults and `includefield`), with its RetrieveURL.
fn answer_json(
    answer: &Answer,
    asked: &BTreeSet<u32>,
    level: Level,
    base: &str,
) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    for (tag, value) in answer.iter().filter(|(t, _)| asked.contains(t)) {
        object.insert(format!("{tag:08X}"), json_attribute(*tag, value));
    }
    let uid = |t| answer.get(&t).map(String::as_str).unwrap_or_default();
    let url = match level {
        Level::Study | Level::Patient => {
            format!("{base}/studies/{}", uid(tags::STUDY_INSTANCE_UID))
        }
        Level::Series => format!(
            "{base}/studies/{}/series/{}",
            uid(tags::STUDY_INSTANCE_UID),
            uid(tags::SERIES_INSTANCE_UID)
        ),
        Level::Image => format!(
            "{base}/studies/{}/series/{}/instances/{}",
            uid(tags::STUDY_INSTANCE_UID),
            uid(tags::SERIES_INSTANCE_UID),
            uid(tags::SOP_INSTANCE_UID)
        ),
    };
    object.insert(
        format!("{RETRIEVE_URL:08X}"),
        serde_json::json!({ "vr": "UR", "Value": [url] }),
    );
    serde_json::Value::Object(object)
}

/// Runs a search and answers its matches (from `offset`, at most `limit`) as a DICOM
/// JSON array; a `Warning` says when more matched, or that fuzzy matching was not done.
async fn search(
    archive: Archive,
    peer: WebCaller,
    headers: HeaderMap,
    level: Level,
    path_keys: &[(u32, &str)],
    raw: Option<String>,
) -> Response {
    if let Some(ranges) = media_ranges(&headers) {
        let ok = ranges.iter().any(|m| {
            matches!(
                m.kind.as_str(),
                "application/dicom+json" | "application/json" | "*/*" | "application/*" | ""
            )
        });
        if !ok {
            return fail(
                StatusCode::NOT_ACCEPTABLE,
                format!(
                    "QIDO-RS answers application/dicom+json, not {}",
                    accept_text(&headers)
                ),
            );
        }
    }
    let s = match parse_search(level, path_keys, raw.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    let base = base_url(&archive, &headers);
    let asked: BTreeSet<u32> = s.query.keys.iter().map(|k| k.tag).collect();
    let mut stream = match archive.find(&peer.principal(SERVICE), Model::StudyRoot, s.query) {
        Ok(stream) => stream,
        Err(e) => return failed(e),
    };
    let mut matches = Vec::new();
    let mut seen = 0usize;
    let mut more = false;
    while let Some(answer) = stream.next().await {
        seen += 1;
        if seen <= s.offset {
            continue;
        }
        if matches.len() == s.limit {
            more = true;
            break;
        }
        matches.push(answer_json(&answer, &asked, level, &base));
    }
    let ended = if more {
        stream.cancel().await;
        Ok(0)
    } else {
        stream.finish().await
    };
    if let Err(e) = ended {
        return failed(e);
    }
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        serde_json::Value::Array(matches).to_string(),
    )
        .into_response();
    let mut warnings = Vec::new();
    if more {
        warnings.push("299 strata \"There are additional results that can be requested\"");
    }
    if s.fuzzy {
        warnings.push(
            "299 strata \"The fuzzymatching parameter is not supported. Only literal matching \
             has been performed.\"",
        );
    }
    for w in warnings {
        response
            .headers_mut()
            .append(header::WARNING, HeaderValue::from_static(w));
    }
    response
}

// ---------------------------------------------------------------------------------------
// WADO-RS

/// The transfer syntax a WADO-RS request for instances asks for: `None` for `*` (as
/// stored), else a UID (Explicit VR Little Endian when none is named). `Err`: an Accept
/// this route cannot produce.
fn wanted_syntax(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(ranges) = media_ranges(headers) else {
        return Ok(Some(EXPLICIT_VR_LE.into()));
    };
    for m in &ranges {
        let param = |k: &str| m.param(k);
        let dicom = match m.kind.as_str() {
            "multipart/related" => matches!(param("type"), None | Some("application/dicom")),
            "*/*" | "multipart/*" => true,
            _ => false,
        };
        if dicom {
            // PS3.18 8.7.3: implicit VR and big endian are not for the web; another
            // syntax could only be sent for objects stored in it, so it is refused here
            // rather than answered 200 and cut short
            return match param("transfer-syntax") {
                Some("*") => Ok(None),
                None | Some(EXPLICIT_VR_LE) => Ok(Some(EXPLICIT_VR_LE.into())),
                Some(uid) => Err(format!(
                    "transfer-syntax={uid} cannot be produced: instances are sent as stored \
                     (transfer-syntax=*) or in Explicit VR Little Endian ({EXPLICIT_VR_LE})"
                )),
            };
        }
    }
    Err(format!(
        "this resource is sent as multipart/related; type=\"application/dicom\", not {}",
        accept_text(headers)
    ))
}

/// A Part-10 file holding `dataset` in `syntax`, with a meta group for it (dicom-object).
pub(super) fn part10_of(
    dataset: &[u8],
    sop_class: &str,
    sop_instance: &str,
    syntax: &str,
) -> Result<Vec<u8>, String> {
    let meta = dicom_object::meta::FileMetaTableBuilder::new()
        .transfer_syntax(syntax)
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).map_err(|e| e.to_string())?;
    out.extend_from_slice(dataset);
    Ok(out)
}

/// Streams the instances `query` names as `multipart/related; type="application/dicom"`.
async fn retrieve(archive: Archive, peer: WebCaller, headers: HeaderMap, query: Query) -> Response {
    let syntax = match wanted_syntax(&headers) {
        Ok(s) => s,
        Err(e) => return fail(StatusCode::NOT_ACCEPTABLE, e),
    };
    let retrieval = match open_retrieval(&archive, peer, &query, "WADO-RS").await {
        Ok(r) => r.in_pack_order(),
        Err(r) => return *r,
    };
    let boundary = new_boundary();
    let content_type =
        format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let items = retrieval.items().clone();
        let reader = retrieval.reader();
        let (mut sent, mut failed) = (0usize, 0usize);
        // objects are read a few ahead of the one being sent (ReadAhead; dropping it on
        // an early return stops those reads)
        let (wanted, asked) = (syntax.clone(), syntax.clone());
        let weight = move |item: &crate::archive::retrieve::RetrieveItem| {
            if target_syntax(asked.as_deref(), item) == item.transfer_syntax_uid {
                item.size
            } else {
                crate::archive::retrieve::READ_AHEAD_BYTES
            }
        };
        let mut ahead =
            crate::archive::retrieve::ReadAhead::new(items.clone(), weight, move |item| {
                let (reader, target) = (reader.clone(), target_syntax(wanted.as_deref(), &item));
                async move { prepare_part(&reader, &item, &target).await }
            });
        while let Some((i, prepared)) = ahead.next().await {
            let item = &items[i];
            let target = target_syntax(syntax.as_deref(), item);
            let head = format!(
                "--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={target}\r\n\r\n"
            );
            let prepared = prepared.and_then(|r| r);
            let body: Result<Vec<Bytes>, String> = match prepared {
                Ok(Prepared::File(file)) => {
                    // the whole Part-10 file from disk: meta group, then the data set
                    if tx.send(Ok(Bytes::from(head))).await.is_err() {
                        drop(ahead);
                        retrieval.finish(sent, failed).await;
                        return;
                    }
                    match send_stream_file(&tx, &file).await {
                        Ok(()) => {
                            sent += 1;
                            Ok(vec![Bytes::from_static(b"\r\n")])
                        }
                        Err(e) => Err(e),
                    }
                }
                Ok(Prepared::Bytes(bytes)) => {
                    sent += 1;
                    Ok(vec![
                        Bytes::from(head),
                        Bytes::from(bytes),
                        Bytes::from_static(b"\r\n"),
                    ])
                }
                Err(e) => Err(e),
            };
            match body {
                Ok(chunks) => {
                    for chunk in chunks {
                        if tx.send(Ok(chunk)).await.is_err() {
                            drop(ahead);
                            retrieval.finish(sent, failed).await;
                            return;
                        }
                    }
                }
                Err(e) => {
                    // an object that cannot be sent ends the response early: the client
                    // sees a truncated multipart body, and the audit record says why
                    tracing::warn!(object = %item.id, error = %e, "WADO-RS: object not sent");
                    failed += 1;
                    drop(ahead);
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    retrieval.finish(sent, failed).await;
                    return;
                }
            }
        }
        let _ = tx
            .send(Ok(Bytes::from(format!("--{boundary}--\r\n"))))
            .await;
        retrieval.finish(sent, failed).await;
    });
    streamed(content_type, rx)
}

/// An object ready to go in a multipart answer.
enum Prepared {
    /// A large object as stored: streamed from its checked file.
    File(crate::archive::retrieve::StreamFile),
    /// Read whole (and converted when asked), checked against its id.
    Bytes(Vec<u8>),
}

/// Reads one object for a multipart answer in `target` (see [`Prepared`]).
async fn prepare_part(
    reader: &crate::archive::retrieve::RetrievalReader,
    item: &crate::archive::retrieve::RetrieveItem,
    target: &str,
) -> Result<Prepared, String> {
    use crate::archive::retrieve::Opened;
    if target != item.transfer_syntax_uid {
        return part_bytes(reader, item, target).await.map(Prepared::Bytes);
    }
    match reader.open(item, target).await {
        Ok(Opened::File(file)) => Ok(Prepared::File(file)),
        Ok(Opened::Whole(bytes)) => Ok(Prepared::Bytes(bytes)),
        Err(e) => Err(e.to_string()),
    }
}

/// The transfer syntax an object goes in: the one asked for, else as stored, except the
/// syntaxes PS3.18 8.7.3 keeps off the web (implicit VR, big endian), which go as
/// Explicit VR Little Endian.
fn target_syntax(asked: Option<&str>, item: &crate::archive::retrieve::RetrieveItem) -> String {
    match asked {
        Some(uid) => uid.to_string(),
        None if matches!(
            item.transfer_syntax_uid.as_str(),
            "1.2.840.10008.1.2" | "1.2.840.10008.1.2.2"
        ) =>
        {
            EXPLICIT_VR_LE.to_string()
        }
        None => item.transfer_syntax_uid.clone(),
    }
}

/// The retrieval of what `query` names for a multipart answer, checked before any status
/// is sent: 404 when it names nothing; the first object probed
/// ([`RetrievalReader::probe`](crate::archive::retrieve::RetrievalReader::probe)), so
/// that a pack being restored or a cold tier that does not answer is a 503 with
/// Retry-After rather than a 200 cut short.
async fn open_retrieval(
    archive: &Archive,
    peer: WebCaller,
    query: &Query,
    what: &str,
) -> Result<crate::archive::retrieve::Retrieval, Refused> {
    let retrieval = archive
        .retrieve(&peer.principal(SERVICE), query, what)
        .await
        .map_err(|e| Box::new(failed(e)))?;
    let Some(first) = retrieval.items().first().cloned() else {
        retrieval.finish(0, 0).await;
        return Err(Box::new(fail(
            StatusCode::NOT_FOUND,
            "no such instances in the archive",
        )));
    };
    if let Err(e) = retrieval.reader().probe(&first.id).await {
        retrieval.finish(0, 1).await;
        return Err(Box::new(failed(e)));
    }
    Ok(retrieval)
}

/// A 200 whose body is the chunks a sending task puts in `rx` (an `Err` cuts it short).
fn streamed(
    content_type: String,
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A multipart boundary no content is likely to hold: 128 bits from a hash of the time,
/// a counter and the process id.
fn new_boundary() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{nanos}-{n}-{}", std::process::id());
    format!(
        "strata-{}",
        &strata_tiers::ObjectId::of_bytes(seed.as_bytes()).to_hex()[..32]
    )
}

/// Sends `len` bytes of `path` from `offset` in 256 KiB chunks.
/// Sends a large object in Part-10 form from its [`StreamFile`]: the file's meta group,
/// the coerced header when there is one, then the rest of the file as stored.
async fn send_stream_file(
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    file: &crate::archive::retrieve::StreamFile,
) -> Result<(), String> {
    send_file(tx, &file.path, 0, file.dataset_start).await?;
    if !file.head.is_empty() && tx.send(Ok(Bytes::from(file.head.clone()))).await.is_err() {
        return Err("the client went away".into());
    }
    send_file(tx, &file.path, file.offset, file.len).await
}

async fn send_file(
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    path: &std::path::Path,
    offset: u64,
    len: u64,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| e.to_string())?;
    let mut left = len;
    while left > 0 {
        let n = left.min(256 * 1024) as usize;
        let mut chunk = vec![0u8; n];
        file.read_exact(&mut chunk)
            .await
            .map_err(|e| e.to_string())?;
        left -= n as u64;
        if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
            return Err("the client went away".into());
        }
    }
    Ok(())
}

/// Conversions running at once (each holds an object and its converted copy).
static CONVERSIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// One object as a Part-10 file in `target`: its stored bytes when that is its syntax,
/// else converted.
async fn part_bytes(
    reader: &crate::archive::retrieve::RetrievalReader,
    item: &crate::archive::retrieve::RetrieveItem,
    target: &str,
) -> Result<Vec<u8>, String> {
    if target == item.transfer_syntax_uid {
        return reader.read_item(item).await.map_err(|e| e.to_string());
    }
    // a conversion holds the object and its converted copy in memory: two at once
    let _slot = CONVERSIONS.acquire().await.map_err(|e| e.to_string())?;
    let bytes = reader.read_item(item).await.map_err(|e| e.to_string())?;
    let item = item.clone();
    let target = target.to_string();
    tokio::task::spawn_blocking(move || {
        let dataset =
            crate::dicom::transcode::dataset_in(bytes, &item.transfer_syntax_uid, &target)?;
        part10_of(
            &dataset,
            &item.sop_class_uid,
            &item.sop_instance_uid,
            &target,
        )
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The DICOM JSON of each instance `query` names (PS3.18 10.4.1.1.2, Annex F): its
/// metadata record from the index ([`InstanceMetadata`]) — so neither a cold instance
/// nor one in an archived pack is read for it — or, for an object indexed without one,
/// the object read up to its pixel data. Pixel Data is a BulkDataURI.
async fn metadata(archive: Archive, peer: WebCaller, base: String, query: Query) -> Response {
    let retrieval = match archive
        .retrieve(&peer.principal(SERVICE), &query, "WADO-RS metadata")
        .await
    {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    if retrieval.items().is_empty() {
        retrieval.finish(0, 0).await;
        return fail(StatusCode::NOT_FOUND, "no such instances in the archive");
    }
    let reader = retrieval.reader();
    let items = retrieval.items().clone();
    let mut body = String::from("[");
    for (n, item) in items.iter().enumerate() {
        let found = match reader.metadata(&item.id).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => metadata_from_object(&reader, item).await,
            Err(e) => Err(failed(e)),
        };
        let m = match found {
            Ok(m) => m,
            Err(response) => {
                retrieval.finish(n, 1).await;
                return response;
            }
        };
        // under the identity the patient is known by now (docs/patients.md)
        let m = match &item.patient {
            None => m,
            Some(patient) => match m.with_patient(patient) {
                Ok(m) => m,
                Err(e) => {
                    retrieval.finish(n, 1).await;
                    let why = format!("object {}: {e}", item.id);
                    return fail(StatusCode::INTERNAL_SERVER_ERROR, why);
                }
            },
        };
        if n > 0 {
            body.push(',');
        }
        body.push_str(&m.to_json_text(&format!(
            "{base}/studies/{}/series/{}/instances/{}/bulkdata/7FE00010",
            item.study_uid, item.series_uid, item.sop_instance_uid
        )));
    }
    body.push(']');
    retrieval.finish(items.len(), 0).await;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        body,
    )
        .into_response()
}

/// The metadata of an object indexed without a record, from the object itself: a large
/// one parsed from its checked file (bounded memory), the rest read whole. The error is
/// the response to give (a pending restore, the cold tier down, an unreadable object).
async fn metadata_from_object(
    reader: &crate::archive::retrieve::RetrievalReader,
    item: &crate::archive::retrieve::RetrieveItem,
) -> Result<InstanceMetadata, Response> {
    let unreadable = |e: String| {
        fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("object {} could not be read: {e}", item.id),
        )
    };
    use crate::archive::retrieve::Opened;
    let parsed = match reader
        .open(item, &item.transfer_syntax_uid)
        .await
        .map_err(failed)?
    {
        Opened::File(file) => {
            tokio::task::spawn_blocking(move || InstanceMetadata::of_file(&file.path)).await
        }
        Opened::Whole(bytes) => {
            tokio::task::spawn_blocking(move || InstanceMetadata::of_part10(&bytes)).await
        }
    };
    parsed
        .map_err(|e| unreadable(e.to_string()))?
        .map_err(unreadable)
}

// ---------------------------------------------------------------------------------------
// WADO-RS: frames, bulk data, rendered images

/// One instance's Part-10 bytes, read through the retrieve use case for a web caller of
/// `service` (audited as `what`; the caller finishes the retrieval with what it sent);
/// a 404 when the archive does not hold it, the error's status when it cannot be read.
pub(super) async fn one_instance_as(
    archive: &Archive,
    peer: WebCaller,
    service: &str,
    path: &std::collections::HashMap<String, String>,
    what: &str,
) -> Result<
    (
        crate::archive::retrieve::Retrieval,
        crate::archive::retrieve::RetrieveItem,
        Vec<u8>,
    ),
    Refused,
> {
    // an instance, or the first instance of a study or series (their thumbnails)
    let level = if path.contains_key("instance") {
        Level::Image
    } else if path.contains_key("series") {
        Level::Series
    } else {
        Level::Study
    };
    let query = Query::from_keys(level, &path_keys(path));
    let retrieval = archive
        .retrieve(&peer.principal(service), &query, what)
        .await
        .map_err(|e| Box::new(failed(e)))?;
    let Some(item) = retrieval.items().first().cloned() else {
        retrieval.finish(0, 0).await;
        return Err(Box::new(fail(
            StatusCode::NOT_FOUND,
            "no such instance in the archive",
        )));
    };
    match retrieval.reader().read_item(&item).await {
        Ok(bytes) => Ok((retrieval, item, bytes)),
        Err(e) => {
            retrieval.finish(0, 1).await;
            Err(Box::new(failed(e)))
        }
    }
}

/// [`one_instance_as`] for DICOMweb.
async fn one_instance(
    archive: &Archive,
    peer: WebCaller,
    path: &std::collections::HashMap<String, String>,
    what: &str,
) -> Result<(crate::archive::retrieve::Retrieval, Vec<u8>), Refused> {
    let (retrieval, _, bytes) = one_instance_as(archive, peer, SERVICE, path, what).await?;
    Ok((retrieval, bytes))
}

/// The URL of the instance a path names (for Content-Location).
fn instance_url(
    archive: &Archive,
    headers: &HeaderMap,
    path: &std::collections::HashMap<String, String>,
) -> String {
    let get = |k: &str| path.get(k).map(String::as_str).unwrap_or_default();
    format!(
        "{}/studies/{}/series/{}/instances/{}",
        base_url(archive, headers),
        get("study"),
        get("series"),
        get("instance")
    )
}

/// A frame list (`1,3,5`, PS3.18 8.3.4.1): 1-based numbers.
/// At most this many frames per request: each is decoded and held until sent.
const MAX_FRAMES_PER_REQUEST: usize = 256;

fn frame_list(text: &str) -> Result<Vec<u32>, Refused> {
    let mut frames: Vec<u32> = text
        .split(',')
        .map(|f| match f.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Box::new(fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "{:?} is not a list of frame numbers (1, 2, ...)",
                    text.chars().take(64).collect::<String>()
                ),
            ))),
        })
        .collect::<Result<_, _>>()?;
    // each frame once, in the order first asked
    let mut seen = std::collections::HashSet::new();
    frames.retain(|f| seen.insert(*f));
    if frames.len() > MAX_FRAMES_PER_REQUEST {
        return Err(Box::new(fail(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_FRAMES_PER_REQUEST} frames per request"),
        )));
    }
    Ok(frames)
}

/// Whether an Accept names `multipart/related` with `type` `application/octet-stream`
/// (or any type; quoted or not), or anything at all; the frames are sent decoded, so a
/// transfer syntax other than Explicit VR Little Endian or `*` cannot be honoured.
fn accepts_octet_stream(headers: &HeaderMap) -> Result<Single, Refused> {
    let Some(ranges) = media_ranges(headers) else {
        return Ok(Single(false));
    };
    for m in &ranges {
        let param = |k: &str| m.param(k);
        let kind = m.kind.as_str();
        let ok_syntax = matches!(
            param("transfer-syntax"),
            None | Some("*") | Some(EXPLICIT_VR_LE)
        );
        let single = match kind {
            "multipart/related" => matches!(
                param("type"),
                None | Some("application/octet-stream") | Some("*/*") | Some("*")
            )
            .then_some(false),
            "*/*" | "multipart/*" => Some(false),
            // single part (PS3.18 8.7.3.1: a bulk data or single frame may go alone)
            "application/octet-stream" => Some(true),
            _ => None,
        };
        if let (Some(single), true) = (single, ok_syntax) {
            return Ok(Single(single));
        }
    }
    Err(Box::new(fail(
        StatusCode::NOT_ACCEPTABLE,
        format!(
            "frames and bulk data are sent decoded, as multipart/related; \
             type=\"application/octet-stream\", not {}",
            accept_text(headers)
        ),
    )))
}

/// Whether the client asked for one `application/octet-stream` body rather than a
/// multipart one.
struct Single(bool);

/// `parts` as one `application/octet-stream` body when there is one part and the client
/// asked for that (`single`), else as [`octet_parts`]; several parts asked for singly:
/// 406.
fn octet_answer(parts: Vec<(String, Vec<u8>)>, single: Single) -> Response {
    match (single.0, parts.len()) {
        (false, _) => octet_parts(parts),
        (true, 1) => {
            let (location, bytes) = parts.into_iter().next().expect("one part");
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::CONTENT_LOCATION, location),
                ],
                bytes,
            )
                .into_response()
        }
        (true, _) => fail(
            StatusCode::NOT_ACCEPTABLE,
            "several frames go as multipart/related; type=\"application/octet-stream\", \
             not as one application/octet-stream body",
        ),
    }
}

/// `parts` as `multipart/related; type="application/octet-stream"`, each with its
/// Content-Location (the frame's or the bulk data's own URL).
fn octet_parts(parts: Vec<(String, Vec<u8>)>) -> Response {
    let boundary = new_boundary();
    let mut body = Vec::new();
    for (location, part) in &parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Location: {location}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            format!("multipart/related; type=\"application/octet-stream\"; boundary={boundary}"),
        )],
        body,
    )
        .into_response()
}

/// WADO-RS frames (PS3.18 10.4.1.1.3): the listed frames, decoded, one part each.
async fn frames(
    State(archive): State<Archive>,
    peer: WebCaller,
    Path(path): UidPath,
    headers: HeaderMap,
) -> Response {
    let single = match accepts_octet_stream(&headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let wanted = match frame_list(path.get("frames").map(String::as_str).unwrap_or("")) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let (retrieval, bytes) = match one_instance(&archive, peer, &path, "WADO-RS frames").await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let list = wanted.clone();
    let decoded = work_then_finish(retrieval, move || {
        crate::dicom::render::frames(&bytes, &list)
    })
    .await;
    match decoded {
        Ok(parts) => {
            let instance = instance_url(&archive, &headers, &path);
            octet_answer(
                wanted
                    .iter()
                    .zip(parts)
                    .map(|(f, bytes)| (format!("{instance}/frames/{f}"), bytes))
                    .collect(),
                single,
            )
        }
        Err(e) => fail(StatusCode::BAD_REQUEST, e),
    }
}

/// Runs `work` (decoding or converting one instance read for `retrieval`) on the
/// blocking pool, then finishes the retrieval with its outcome: one instance sent, or
/// one failed.
pub(super) async fn work_then_finish<T: Send + 'static>(
    retrieval: crate::archive::retrieve::Retrieval,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let done = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match &done {
        Ok(_) => retrieval.finish(1, 0).await,
        Err(_) => retrieval.finish(0, 1).await,
    }
    done
}

/// WADO-RS bulk data (PS3.18 10.4.1.1.5) of a top-level attribute: the pixel data's
/// frames decoded (the BulkDataURI metadata gives for 7FE00010), else the value's bytes.
async fn bulkdata(
    State(archive): State<Archive>,
    peer: WebCaller,
    Path(path): UidPath,
    headers: HeaderMap,
) -> Response {
    let single = match accepts_octet_stream(&headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(tag) = path.get("tag").and_then(|t| tag_of(t)) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "the bulk data URI names no attribute",
        );
    };
    let (retrieval, bytes) = match one_instance(&archive, peer, &path, "WADO-RS bulkdata").await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let value = tokio::task::spawn_blocking(move || bulk_value(&bytes, tag))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match value {
        Ok(Some(parts)) => {
            retrieval.finish(1, 0).await;
            let url = format!(
                "{}/bulkdata/{tag:08X}",
                instance_url(&archive, &headers, &path)
            );
            octet_answer(
                parts.into_iter().map(|p| (url.clone(), p)).collect(),
                single,
            )
        }
        Ok(None) => {
            retrieval.finish(0, 0).await;
            fail(
                StatusCode::NOT_FOUND,
                format!("the instance has no attribute {tag:08X}"),
            )
        }
        Err(e) => {
            retrieval.finish(0, 1).await;
            fail(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
    }
}

/// The bulk data of `tag` in a Part-10 object: for the pixel data, every frame decoded
/// (one part); else the value's bytes (dicom-object). `None`: no such attribute.
fn bulk_value(part10: &[u8], tag: u32) -> Result<Option<Vec<Vec<u8>>>, String> {
    if tag == 0x7FE0_0010 {
        let count = crate::dicom::render::number_of_frames(part10)?;
        let all: Vec<u32> = (1..=count).collect();
        return Ok(Some(vec![
            crate::dicom::render::frames(part10, &all)?.concat()
        ]));
    }
    if part10.len() < 132 {
        return Err("not a Part-10 object".into());
    }
    let obj = dicom_object::OpenFileOptions::new()
        .from_reader(&part10[128..])
        .map_err(|e| e.to_string())?;
    let t = dicom_core::Tag((tag >> 16) as u16, tag as u16);
    Ok(obj
        .element(t)
        .ok()
        .and_then(|e| e.value().to_bytes().ok().map(|b| vec![b.into_owned()])))
}

/// The image format an Accept asks for (JPEG when it names none, PS3.18 8.7.4).
fn image_format(headers: &HeaderMap) -> Result<crate::dicom::render::Format, Refused> {
    use crate::dicom::render::Format;
    let Some(ranges) = media_ranges(headers) else {
        return Ok(Format::Jpeg);
    };
    for m in &ranges {
        match m.kind.as_str() {
            "image/jpeg" | "image/*" | "*/*" | "" => return Ok(Format::Jpeg),
            "image/png" => return Ok(Format::Png),
            _ => {}
        }
    }
    Err(Box::new(fail(
        StatusCode::NOT_ACCEPTABLE,
        format!(
            "rendered images are image/jpeg or image/png, not {}",
            accept_text(headers)
        ),
    )))
}

/// `window=center,width[,function]`, `viewport=columns,rows[,…]`, `quality=1..100`
/// (PS3.18 8.3.5.1.3); unknown parameters are an error.
fn render_options(raw: Option<&str>) -> Result<crate::dicom::render::RenderOptions, String> {
    let mut o = crate::dicom::render::RenderOptions::default();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let numbers = |n: usize| -> Result<Vec<f64>, String> {
            let v: Vec<f64> = value
                .split(',')
                .take(n)
                .map(|x| x.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("{name}={value:?} is not a list of numbers"))?;
            if v.len() < n {
                return Err(format!("{name}={value:?} needs {n} numbers"));
            }
            Ok(v)
        };
        match name.as_ref() {
            "window" => {
                let v = numbers(2)?;
                if !(v[0].is_finite() && v[1].is_finite() && v[1] >= 1.0) {
                    return Err(format!("window {value:?}: the width must be at least 1"));
                }
                o.window = Some((v[0], v[1]));
            }
            "viewport" => {
                let v = numbers(2)?;
                o.viewport = Some((v[0].max(1.0) as u32, v[1].max(1.0) as u32));
            }
            "quality" => {
                o.quality = Some(numbers(1)?[0].clamp(1.0, 100.0) as u8);
            }
            "annotation" | "charset" | "iccprofile" => {} // no burnt-in annotation, no ICC
            other => return Err(format!("{other:?} is not a rendering parameter")),
        }
    }
    Ok(o)
}

/// Renders the instance's first frame (or the first listed) as JPEG or PNG.
async fn render_response(
    archive: Archive,
    peer: WebCaller,
    path: std::collections::HashMap<String, String>,
    headers: HeaderMap,
    raw: Option<String>,
    thumbnail: bool,
) -> Response {
    let format = match image_format(&headers) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let mut options = match render_options(raw.as_deref()) {
        Ok(o) => o,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    if thumbnail && options.viewport.is_none() {
        options.viewport = Some((128, 128));
    }
    let frame = match path.get("frames") {
        Some(list) => match frame_list(list) {
            Ok(l) => l[0],
            Err(r) => return *r,
        },
        None => 1,
    };
    let what = if thumbnail {
        "WADO-RS thumbnail"
    } else {
        "WADO-RS rendered"
    };
    render_answer(&archive, peer, SERVICE, &path, frame, format, options, what).await
}

/// Renders `frame` (1-based) of the instance `path` names as `format` for a web caller
/// of `service` (WADO-RS, WADO-URI), audited as `what`: the image, or why not (422 for
/// an object with nothing to render).
#[allow(clippy::too_many_arguments)]
pub(super) async fn render_answer(
    archive: &Archive,
    peer: WebCaller,
    service: &str,
    path: &std::collections::HashMap<String, String>,
    frame: u32,
    format: crate::dicom::render::Format,
    options: crate::dicom::render::RenderOptions,
    what: &str,
) -> Response {
    let (retrieval, _, bytes) = match one_instance_as(archive, peer, service, path, what).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let image = work_then_finish(retrieval, move || {
        crate::dicom::render::render(&bytes, frame, format, &options)
    })
    .await;
    match image {
        Ok(image) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, format.media_type())],
            image,
        )
            .into_response(),
        Err(e) => fail(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

/// Study and series `rendered` (PS3.18 10.4.1.1.4): every instance's first frame
/// rendered, one image part each, streamed as `multipart/related; type="image/jpeg"`
/// (or `image/png`), one object read at a time. Instances with nothing to render are
/// left out (the audit record counts them as failed).
async fn rendered_many(
    State(archive): State<Archive>,
    peer: WebCaller,
    Path(path): UidPath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let format = match image_format(&headers) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let options = match render_options(q.as_deref()) {
        Ok(o) => o,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    let level = if path.contains_key("series") {
        Level::Series
    } else {
        Level::Study
    };
    let query = Query::from_keys(level, &path_keys(&path));
    let retrieval = match open_retrieval(&archive, peer, &query, "WADO-RS rendered").await {
        Ok(r) => r.in_pack_order(),
        Err(r) => return *r,
    };
    let boundary = new_boundary();
    let media = format.media_type();
    let content_type = format!("multipart/related; type=\"{media}\"; boundary={boundary}");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let items = retrieval.items().clone();
        let reader = retrieval.reader();
        let (mut sent, mut failed) = (0usize, 0usize);
        // instances are read and rendered a few ahead of the one being sent, on both
        // cores (ReadAhead; dropping it on an early return stops those)
        let mut ahead = crate::archive::retrieve::ReadAhead::new(
            items.clone(),
            |item| item.size,
            move |item| {
                let (reader, options) = (reader.clone(), options.clone());
                async move {
                    let bytes = reader.read(&item.id).await.map_err(|e| e.to_string())?;
                    tokio::task::spawn_blocking(move || {
                        crate::dicom::render::render(&bytes, 1, format, &options)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                }
            },
        );
        while let Some((_, image)) = ahead.next().await {
            let Ok(Ok(image)) = image else {
                failed += 1;
                continue;
            };
            let head = format!("--{boundary}\r\nContent-Type: {media}\r\n\r\n");
            for chunk in [
                Bytes::from(head),
                Bytes::from(image),
                Bytes::from_static(b"\r\n"),
            ] {
                if tx.send(Ok(chunk)).await.is_err() {
                    drop(ahead);
                    retrieval.finish(sent, failed).await;
                    return;
                }
            }
            sent += 1;
        }
        let _ = tx
            .send(Ok(Bytes::from(format!("--{boundary}--\r\n"))))
            .await;
        retrieval.finish(sent, failed).await;
    });
    streamed(content_type, rx)
}

async fn rendered(
    State(a): State<Archive>,
    peer: WebCaller,
    Path(path): UidPath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    render_response(a, peer, path, headers, q, false).await
}

async fn thumbnail(
    State(a): State<Archive>,
    peer: WebCaller,
    Path(path): UidPath,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    render_response(a, peer, path, headers, q, true).await
}

// ---------------------------------------------------------------------------------------
// STOW-RS

async fn store_any(
    State(a): State<Archive>,
    peer: WebCaller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    stow(a, peer, headers, None, body).await
}

async fn store_in_study(
    State(a): State<Archive>,
    peer: WebCaller,
    Path(study): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    stow(a, peer, headers, Some(study), body).await
}

/// The boundary of a `multipart/related; type="application/dicom"` body (PS3.18
/// 10.5.1.1), parsed with `mime` (quoted or not).
fn stow_boundary(headers: &HeaderMap) -> Result<String, (StatusCode, String)> {
    let unsupported = |why: String| (StatusCode::UNSUPPORTED_MEDIA_TYPE, why);
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unsupported("STOW-RS needs a Content-Type".into()))?;
    let m: mime::Mime = ct
        .parse()
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("Content-Type {ct:?}: {e}")))?;
    if !(m.type_() == mime::MULTIPART && m.subtype() == "related") {
        return Err(unsupported(format!(
            "STOW-RS takes multipart/related; type=\"application/dicom\", not {ct}"
        )));
    }
    if let Some(t) = m.get_param("type") {
        if t.as_str() != "application/dicom" {
            return Err(unsupported(format!(
                "STOW-RS takes parts of type application/dicom, not {t} (the metadata and \
                 bulk data form is not supported)"
            )));
        }
    }
    m.get_param(mime::BOUNDARY)
        .map(|b| b.as_str().to_string())
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "the multipart body has no boundary".into(),
            )
        })
}

/// A blocking reader over chunks handed from async code (a STOW-RS part on its way to
/// the ingest pipeline, which reads Part-10 streams on the blocking pool).
struct ChunkReader {
    /// The part's chunks, then `Ok(None)` once multer saw its closing boundary; an
    /// `Err`, or a channel closed without that end (the client went away and the
    /// handler was dropped), fails the read, so the store refuses the part instead of
    /// taking what came as a whole object.
    rx: tokio::sync::mpsc::Receiver<Result<Option<Bytes>, String>>,
    current: Bytes,
    ended: bool,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(Some(chunk))) => self.current = chunk,
                Some(Ok(None)) => self.ended = true,
                Some(Err(cut)) => return Err(std::io::Error::other(cut)),
                None => {
                    return Err(std::io::Error::other(
                        "the request ended before the part's closing boundary",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Bytes kept from the start of each STOW-RS part, to name it should it fail.
const PART_HEAD: usize = 64 * 1024;

/// The SOP Class and Instance UIDs a part's head names (its file meta), for its
/// FailedSOPSequence item (PS3.18 10.5.3.2: both Type 1); empty when it names none.
fn named_in(head: &[u8]) -> (String, String) {
    crate::dicom::part10::read_foreign_meta(head)
        .map(|m| (m.sop_class_uid, m.sop_instance_uid))
        .unwrap_or_default()
}

/// Parts stored at once, across all STOW-RS requests (each holds a blocking thread
/// while its bytes arrive).
const STOW_PARTS_AT_ONCE: usize = 32;
static STOW_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(STOW_PARTS_AT_ONCE);

/// The most of a refused request's body [`drained`] reads, and for how long.
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// `refusal`, sent once what is left of the refused request's `body` has been read and
/// dropped (up to [`DRAIN_BYTES`], for at most [`DRAIN_TIME`]). A server that answers
/// and closes while the client is still sending resets the connection, and the client
/// may then lose the answer (RFC 9112 section 9.6, the "lingering close"): a STOW-RS
/// client posting a study with a wrong Content-Type saw no status at all. Nothing read
/// here is kept.
async fn drained(body: Body, refusal: Response) -> Response {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
    refusal
}

/// PS3.18 10.5.3: each part stored through the ingest pipeline (durable before it is
/// listed), the answer naming each instance stored and each that failed, with why.
async fn stow(
    archive: Archive,
    peer: WebCaller,
    headers: HeaderMap,
    study: Option<String>,
    body: Body,
) -> Response {
    let boundary = match stow_boundary(&headers) {
        Ok(b) => b,
        Err((status, why)) => return drained(body, fail(status, why)).await,
    };
    let base = base_url(&archive, &headers);
    let who = peer.principal(SERVICE);
    // a caller who may not store is refused whole (403), before the body is stored
    let study_uids: Vec<String> = study.iter().cloned().collect();
    if let Err(e) = archive.authorize(&who, Role::Uploader, "store", &study_uids) {
        return drained(body, failed(e)).await;
    }
    // a STOW-RS request is at most `max_object_mb` in all: multer buffers what precedes
    // a boundary, so an unbounded body must not reach it
    let limit = archive.config().dicom.max_object_mb.saturating_mul(1 << 20);
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit));
    let mut multipart =
        multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let mut referenced = Vec::new();
    let mut failures = Vec::new();
    let mut stores = Vec::new();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                // a malformed body: what was stored before stays stored and is listed
                failures.push(failure_item(
                    "",
                    "",
                    0xC000,
                    &format!("malformed multipart body: {e}"),
                ));
                break;
            }
        };
        if let Some(ct) = field.content_type() {
            if ct.essence_str() != "application/dicom" {
                failures.push(failure_item(
                    "",
                    "",
                    0xC000,
                    &format!("a part of type {ct} is not application/dicom"),
                ));
                continue;
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Option<Bytes>, String>>(8);
        // a part being received holds a blocking thread (the ingest pipeline reads
        // Part-10 streams there): at most STOW_PARTS_AT_ONCE at once, so that slow
        // uploads never take the threads every other request needs
        let slot = match STOW_SLOTS.acquire().await {
            Ok(permit) => permit,
            Err(_) => break,
        };
        let store = {
            let (archive, who, study) = (archive.clone(), who.clone(), study.clone());
            let source = format!("STOW-RS from {peer}");
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let mut reader = ChunkReader {
                    rx,
                    current: Bytes::new(),
                    ended: false,
                };
                let stored =
                    archive.store_part10_blocking(&who, &mut reader, &source, study.as_deref());
                // drain what the store did not read, so the body goes on
                let mut sink = [0u8; 8192];
                while std::io::Read::read(&mut reader, &mut sink).unwrap_or(0) > 0 {}
                stored
            })
        };
        let mut cut = None;
        let mut head: Vec<u8> = Vec::new();
        let idle = archive.config().dicom.read_timeout;
        loop {
            let chunk = match tokio::time::timeout(idle, field.chunk()).await {
                Ok(chunk) => chunk,
                Err(_) => {
                    let why = format!("no data for {idle:?}");
                    let _ = tx.send(Err(why.clone())).await;
                    cut = Some(why);
                    break;
                }
            };
            match chunk {
                Ok(Some(chunk)) => {
                    // the part's head, to name the instance should it fail
                    if head.len() < PART_HEAD {
                        let n = chunk.len().min(PART_HEAD - head.len());
                        head.extend_from_slice(&chunk[..n]);
                    }
                    if tx.send(Ok(Some(chunk))).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Ok(None)).await;
                    break;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("the part was cut short: {e}"))).await;
                    cut = Some(e.to_string());
                    break;
                }
            }
        }
        if cut.is_some() {
            // a truncated part must not be stored: end its stream with an error
            drop(tx);
            let _ = store.await;
            let (class, instance) = named_in(&head);
            failures.push(failure_item(
                &class,
                &instance,
                0xC000,
                &format!("truncated part: {}", cut.unwrap_or_default()),
            ));
            break;
        }
        // the part's bytes are all handed over; its commit goes on while the next part
        // arrives (the group committer makes several durable with one sync)
        drop(tx);
        stores.push((store, head));
    }
    // every part, in order, once durable (or refused)
    for (store, head) in stores {
        let (class, instance) = named_in(&head);
        match store.await {
            Ok(Ok(stored)) => {
                let a = &stored.attrs;
                referenced.push(serde_json::json!({
                    "00081150": { "vr": "UI", "Value": [a.sop_class_uid] },
                    "00081155": { "vr": "UI", "Value": [a.sop_instance_uid] },
                    "00081190": { "vr": "UR", "Value": [format!(
                        "{base}/studies/{}/series/{}/instances/{}",
                        a.study_uid, a.series_uid, a.sop_instance_uid
                    )] },
                }));
            }
            Ok(Err(e)) => failures.push(failure_item(
                &class,
                &instance,
                e.dimse_status(),
                &e.to_string(),
            )),
            Err(e) => failures.push(failure_item(&class, &instance, 0x0110, &e.to_string())),
        }
    }
    let mut answer = serde_json::Map::new();
    if let Some(study) = &study {
        answer.insert(
            "00081190".into(),
            serde_json::json!({ "vr": "UR", "Value": [format!("{base}/studies/{study}")] }),
        );
    }
    let status = match (referenced.is_empty(), failures.is_empty()) {
        (_, true) if !referenced.is_empty() => StatusCode::OK,
        (false, false) => StatusCode::ACCEPTED,
        (true, _) => StatusCode::CONFLICT,
        _ => StatusCode::OK,
    };
    if referenced.is_empty() && failures.is_empty() {
        return fail(StatusCode::BAD_REQUEST, "the multipart body holds no part");
    }
    if !referenced.is_empty() {
        answer.insert(
            "00081199".into(),
            serde_json::json!({ "vr": "SQ", "Value": referenced }),
        );
    }
    if !failures.is_empty() {
        answer.insert(
            "00081198".into(),
            serde_json::json!({ "vr": "SQ", "Value": failures }),
        );
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        serde_json::Value::Object(answer).to_string(),
    )
        .into_response()
}

/// A FailedSOPSequence item (PS3.18 10.5.3.2): the instance when known and
/// FailureReason (0008,1197), a PS3.4 status; the reason in words is logged.
fn failure_item(class: &str, instance: &str, reason: u16, why: &str) -> serde_json::Value {
    tracing::warn!(
        sop = instance,
        reason = format!("{reason:#06x}"),
        why,
        "STOW-RS part refused"
    );
    let mut item = serde_json::Map::new();
    if !class.is_empty() {
        item.insert(
            "00081150".into(),
            serde_json::json!({ "vr": "UI", "Value": [class] }),
        );
    }
    if !instance.is_empty() {
        item.insert(
            "00081155".into(),
            serde_json::json!({ "vr": "UI", "Value": [instance] }),
        );
    }
    item.insert(
        "00081197".into(),
        serde_json::json!({ "vr": "US", "Value": [reason] }),
    );
    serde_json::Value::Object(item)
}
