//! # FHIR R4 under `/fhir` (HL7 FHIR 4.0.1)
//!
//! The EHR's way to a patient's imaging: `ImagingStudy` read and search, `Patient` read
//! and search by identifier, the one `Endpoint` (`dicom-wado-rs`, our `/dicom-web`) every
//! ImagingStudy points at, and a `CapabilityStatement` at `/fhir/metadata`. Answers are
//! `application/fhir+json`; errors an `OperationOutcome` with the HTTP status.
//!
//! Every search and read runs the find use case ([`Archive::find`], C-FIND's matching,
//! audited as a query with `service: fhir`); an ImagingStudy's series and instances come
//! from the catalog. Mapping (see `docs/conformance-fhir.md`):
//! - ImagingStudy.id is the StudyInstanceUID (digits and dots, at most 64: a valid FHIR
//!   id); identifier `urn:dicom:uid` = `urn:oid:<uid>`, and the AccessionNumber typed ACSN;
//! - Patient.id is the PatientID when it is a valid FHIR id, else `x` and its UTF-8 bytes
//!   in hex (at most 64 characters);
//! - `started` is the StudyDate alone: a time without a timezone is not a FHIR dateTime.

pub mod ids;

use super::auth::WebCaller;
use crate::archive::Archive;
use crate::index::{patient_key, split_patient_key};
use crate::query::{tags, Answer, Level, Model, Query};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
pub use ids::{fhir_to_patient_id, patient_id_to_fhir};
use serde_json::{json, Value};

/// The API name in audit records.
const SERVICE: &str = "fhir";
const FHIR_JSON: &str = "application/fhir+json";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// The one Endpoint resource.
const ENDPOINT_ID: &str = "dicomweb";
/// Default and largest page size of a search (`_count`).
const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 1000;

pub fn routes() -> Router<Archive> {
    Router::new()
        .route("/fhir/metadata", get(capability_statement))
        .route("/fhir/ImagingStudy", get(search_imaging_studies))
        .route("/fhir/ImagingStudy/{id}", get(read_imaging_study))
        .route("/fhir/Patient", get(search_patients))
        .route("/fhir/Patient/{id}", get(read_patient))
        .route("/fhir/Endpoint/{id}", get(read_endpoint))
}

fn fhir(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        body.to_string(),
    )
        .into_response()
}

/// An OperationOutcome (R4) with one issue.
fn outcome(status: StatusCode, code: &str, text: impl Into<String>) -> Response {
    fhir(
        status,
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": code, "diagnostics": text.into() }]
        }),
    )
}

/// `http://host:port` of the request ([`super::origin`]).
fn base(archive: &Archive, headers: &HeaderMap) -> String {
    super::origin(archive, headers)
}

/// A DA value as a FHIR date (`YYYY-MM-DD`).
fn fhir_date(da: &str) -> Option<String> {
    let d = da.trim();
    (d.len() == 8 && d.chars().all(|c| c.is_ascii_digit()))
        .then(|| format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..]))
}

/// A PN value as a FHIR HumanName (the alphabetic group).
fn human_name(pn: &str) -> Option<Value> {
    let alphabetic = pn.split('=').next().unwrap_or("").trim();
    if alphabetic.is_empty() {
        return None;
    }
    let parts: Vec<&str> = alphabetic.split('^').collect();
    let mut name = serde_json::Map::new();
    name.insert("text".into(), json!(alphabetic.replace('^', " ").trim()));
    if let Some(family) = parts.first().filter(|f| !f.is_empty()) {
        name.insert("family".into(), json!(family));
    }
    let given: Vec<&str> = parts
        .iter()
        .skip(1)
        .take(2)
        .copied()
        .filter(|g| !g.is_empty())
        .collect();
    if !given.is_empty() {
        name.insert("given".into(), json!(given));
    }
    if let Some(prefix) = parts.get(3).filter(|p| !p.is_empty()) {
        name.insert("prefix".into(), json!([prefix]));
    }
    if let Some(suffix) = parts.get(4).filter(|s| !s.is_empty()) {
        name.insert("suffix".into(), json!([suffix]));
    }
    Some(Value::Object(name))
}

/// A Patient resource from a match's patient attributes.
fn patient_resource(a: &Answer) -> Option<Value> {
    let get = |t| a.get(&t).map(String::as_str).unwrap_or("");
    let pid = get(tags::PATIENT_ID);
    let id = patient_id_to_fhir(&patient_key(pid, get(tags::ISSUER_OF_PATIENT_ID)))?;
    let mut p = serde_json::Map::new();
    p.insert("resourceType".into(), json!("Patient"));
    p.insert("id".into(), json!(id));
    // the PatientID's issuer (IssuerOfPatientID) as the identifier's assigner (R4
    // Identifier.assigner: a display-only Reference)
    let identifier = match get(tags::ISSUER_OF_PATIENT_ID) {
        "" => json!({ "value": pid }),
        issuer => json!({ "value": pid, "assigner": { "display": issuer } }),
    };
    p.insert("identifier".into(), json!([identifier]));
    if let Some(name) = human_name(get(tags::PATIENT_NAME)) {
        p.insert("name".into(), json!([name]));
    }
    let gender = match get(tags::PATIENT_SEX).trim() {
        "M" => "male",
        "F" => "female",
        "O" => "other",
        _ => "unknown",
    };
    p.insert("gender".into(), json!(gender));
    if let Some(date) = fhir_date(get(tags::PATIENT_BIRTH_DATE)) {
        p.insert("birthDate".into(), json!(date));
    }
    Some(Value::Object(p))
}

/// The Endpoint every ImagingStudy names: our DICOMweb root (`dicom-wado-rs`).
fn endpoint_resource(base: &str) -> Value {
    json!({
        "resourceType": "Endpoint",
        "id": ENDPOINT_ID,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs"
        },
        "name": "Strata DICOMweb (WADO-RS, QIDO-RS, STOW-RS)",
        "payloadType": [{ "text": "DICOM" }],
        "payloadMimeType": ["application/dicom"],
        "address": format!("{base}/dicom-web")
    })
}

/// An ImagingStudy from a study-level match and the study's catalog view (its series
/// under the match's patient only, when the study holds several: a patient conflict).
fn imaging_study(a: &Answer, view: &crate::archive::catalog::StudyView) -> Value {
    let get = |t| a.get(&t).map(String::as_str).unwrap_or("");
    let uid = get(tags::STUDY_INSTANCE_UID);
    let pid = get(tags::PATIENT_ID);
    let others = &view.study.patient_conflicts;
    let belongs = |series: &str| match others.iter().find(|o| o.series.iter().any(|s| s == series))
    {
        Some(o) => o.patient_id == pid,
        None => view.study.patient_id == pid,
    };
    let mut identifiers =
        vec![json!({ "system": "urn:dicom:uid", "value": format!("urn:oid:{uid}") })];
    if !get(tags::ACCESSION_NUMBER).is_empty() {
        identifiers.push(json!({
            "type": { "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"
            }] },
            "value": get(tags::ACCESSION_NUMBER)
        }));
    }
    let mut study = serde_json::Map::new();
    study.insert("resourceType".into(), json!("ImagingStudy"));
    study.insert("id".into(), json!(uid));
    study.insert("identifier".into(), json!(identifiers));
    study.insert("status".into(), json!("available"));
    // subject is required (1..1): by reference when the PatientID makes a Patient id,
    // else by its identifier
    let subject = match patient_id_to_fhir(&patient_key(pid, get(tags::ISSUER_OF_PATIENT_ID))) {
        Some(patient) => json!({ "reference": format!("Patient/{patient}") }),
        None => json!({ "identifier": { "value": pid }, "display": "no usable PatientID" }),
    };
    study.insert("subject".into(), subject);
    if let Some(date) = fhir_date(get(tags::STUDY_DATE)) {
        study.insert("started".into(), json!(date));
    }
    study.insert(
        "endpoint".into(),
        json!([{ "reference": format!("Endpoint/{ENDPOINT_ID}") }]),
    );
    if !get(tags::STUDY_DESCRIPTION).is_empty() {
        study.insert("description".into(), json!(get(tags::STUDY_DESCRIPTION)));
    }
    let mut series_out = Vec::new();
    let mut modalities: Vec<String> = Vec::new();
    let mut instances_total = 0usize;
    for series in view.series.iter().filter(|s| belongs(&s.series_uid)) {
        let modality = if series.modality.is_empty() {
            "OT"
        } else {
            &series.modality
        };
        if !modalities.iter().any(|m| m == modality) {
            modalities.push(modality.to_string());
        }
        let instances: Vec<Value> = series
            .instances
            .iter()
            .map(|i| {
                let mut inst = serde_json::Map::new();
                inst.insert("uid".into(), json!(i.sop_instance_uid));
                inst.insert(
                    "sopClass".into(),
                    json!({ "system": "urn:ietf:rfc:3986", "code": format!("urn:oid:{}", i.sop_class_uid) }),
                );
                if let Ok(n) = i.instance_number.trim().parse::<u32>() {
                    inst.insert("number".into(), json!(n));
                }
                Value::Object(inst)
            })
            .collect();
        instances_total += instances.len();
        let mut s = serde_json::Map::new();
        s.insert("uid".into(), json!(series.series_uid));
        if let Ok(n) = series.series_number.trim().parse::<u32>() {
            s.insert("number".into(), json!(n));
        }
        s.insert(
            "modality".into(),
            json!({ "system": DCM, "code": modality }),
        );
        if !series.series_description.is_empty() {
            s.insert("description".into(), json!(series.series_description));
        }
        s.insert("numberOfInstances".into(), json!(instances.len()));
        s.insert("instance".into(), json!(instances));
        series_out.push(Value::Object(s));
    }
    if !modalities.is_empty() {
        study.insert(
            "modality".into(),
            json!(modalities
                .iter()
                .map(|m| json!({ "system": DCM, "code": m }))
                .collect::<Vec<_>>()),
        );
    }
    study.insert("numberOfSeries".into(), json!(series_out.len()));
    study.insert("numberOfInstances".into(), json!(instances_total));
    if !series_out.is_empty() {
        study.insert("series".into(), json!(series_out));
    }
    Value::Object(study)
}

/// The study-level attributes every ImagingStudy needs returned.
const STUDY_FIELDS: [u32; 10] = [
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::ACCESSION_NUMBER,
    tags::STUDY_DESCRIPTION,
    tags::MODALITIES_IN_STUDY,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_NAME,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
];

/// A parsed search: matching keys, page size and offset.
struct Search {
    keys: Vec<(u32, String)>,
    count: usize,
    offset: usize,
    /// The search's own parameters, for the Bundle's links.
    params: Vec<(String, String)>,
}

/// A `date` search value (R4 3.1.1.5.7): `[prefix]YYYY[-MM[-DD]]` as a DA range.
fn date_range(value: &str) -> Result<(String, String), String> {
    let (mut prefix, date) = match value.get(..2) {
        Some(p @ ("eq" | "ge" | "le" | "gt" | "lt")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    // a dateTime: the index knows the study's day, so the day of the instant is compared
    // and `gt`/`lt` keep that day (its study may lie after or before the instant)
    let date = match date.split_once('T') {
        Some((day, _)) => {
            prefix = match prefix {
                "gt" => "ge",
                "lt" => "le",
                p => p,
            };
            day
        }
        None => date,
    };
    let digits: String = date.chars().filter(|c| *c != '-').collect();
    if !(digits.len() == 4 || digits.len() == 6 || digits.len() == 8)
        || !digits.chars().all(|c| c.is_ascii_digit())
    {
        return Err(format!(
            "{value:?} is not a date (YYYY, YYYY-MM or YYYY-MM-DD)"
        ));
    }
    let first = match digits.len() {
        4 => format!("{digits}0101"),
        6 => format!("{digits}01"),
        _ => digits.clone(),
    };
    let last = match digits.len() {
        4 => format!("{digits}1231"),
        6 => format!("{digits}31"),
        _ => digits.clone(),
    };
    // `gt`/`lt` a day: from the next day / to the day before. DA ranges compare as
    // digit strings, so adding one to YYYYMMDD (20240131 -> 20240132) orders the same
    // way against real dates as the true next day would.
    let day_after = |d: &str| -> String {
        let n: u64 = d.parse().unwrap_or(0);
        format!("{:08}", n + 1)
    };
    let day_before = |d: &str| -> String {
        let n: u64 = d.parse().unwrap_or(0);
        format!("{:08}", n.saturating_sub(1))
    };
    Ok(match prefix {
        "ge" => (first, String::new()),
        "gt" => (day_after(&last), String::new()),
        "le" => (String::new(), last),
        "lt" => (String::new(), day_before(&first)),
        _ => (first, last),
    })
}

/// A token or reference value as an exact C-FIND key: `*`, `?` and `\` would be
/// wildcards or lists there (PS3.4 C.2.2.2), so a value holding one is refused, never
/// matched loosely (a search by patient must not reach another patient).
fn exact(name: &str, value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains(['*', '?', '\\']) {
        return Err(format!(
            "{name}={value:?}: an exact value is needed (no *, ? or \\)"
        ));
    }
    Ok(value.to_string())
}

/// Whether the client asked for lenient handling of unknown search parameters (R4
/// 3.1.1.4, `Prefer: handling=lenient`): they are then ignored, and left out of the
/// Bundle's `self` link, which lists the parameters used. Without it they are refused
/// (`handling=strict`, Strata's default): a misspelt `patient` must never widen a search
/// to every patient's studies.
fn lenient(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=lenient"))
}

/// Parses an ImagingStudy search (R4 ImagingStudy search parameters); unknown
/// parameters are refused, or ignored when `lenient`.
fn parse_study_search(raw: Option<&str>, lenient: bool) -> Result<Search, String> {
    let mut s = Search {
        keys: Vec::new(),
        count: DEFAULT_COUNT,
        offset: 0,
        params: Vec::new(),
    };
    let mut from = String::new();
    let mut to = String::new();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let (name, value) = (name.to_string(), value.to_string());
        match name.as_str() {
            "_count" => {
                s.count = value
                    .parse::<usize>()
                    .map_err(|_| format!("_count={value:?} is not a number"))?
                    .clamp(1, MAX_COUNT);
                continue;
            }
            "_offset" => {
                s.offset = value
                    .parse()
                    .map_err(|_| format!("_offset={value:?} is not a number"))?;
                continue;
            }
            "_format" if value.contains("json") => continue,
            "patient" | "subject" => {
                let id = value
                    .strip_prefix("Patient/")
                    .unwrap_or(&value)
                    .rsplit('/')
                    .next()
                    .unwrap_or("");
                let key = fhir_to_patient_id(id)
                    .ok_or_else(|| format!("{name}={value:?} names no Patient"))?;
                // a Patient of a known issuer matches that issuer's studies only; one of
                // unknown issuer, its PatientID's (docs/patients.md)
                let (pid, issuer) = split_patient_key(&key);
                s.keys.push((tags::PATIENT_ID, exact(&name, pid)?));
                if !issuer.is_empty() {
                    s.keys
                        .push((tags::ISSUER_OF_PATIENT_ID, exact(&name, issuer)?));
                }
            }
            "identifier" => {
                let (system, v) = value.split_once('|').unwrap_or(("", value.as_str()));
                let v = exact(&name, v)?;
                let v = v.as_str();
                match v.strip_prefix("urn:oid:") {
                    Some(uid) => s.keys.push((tags::STUDY_INSTANCE_UID, uid.to_string())),
                    None if system == "urn:dicom:uid" => {
                        s.keys.push((tags::STUDY_INSTANCE_UID, v.to_string()))
                    }
                    None => s.keys.push((tags::ACCESSION_NUMBER, v.to_string())),
                }
            }
            "started" => {
                let (f, t) = date_range(&value)?;
                if !f.is_empty() && (from.is_empty() || f > from) {
                    from = f;
                }
                if !t.is_empty() && (to.is_empty() || t < to) {
                    to = t;
                }
            }
            "modality" => {
                // a comma-separated list of tokens, each `[system|]code`
                let codes: Vec<String> = value
                    .split(',')
                    .map(|t| exact(&name, t.rsplit('|').next().unwrap_or("")))
                    .collect::<Result<_, _>>()?;
                s.keys.push((tags::MODALITIES_IN_STUDY, codes.join("\\")));
            }
            _ if lenient => continue,
            other => {
                return Err(format!(
                    "{other:?} is not a supported ImagingStudy search parameter \
                     (send `Prefer: handling=lenient` to have unknown parameters ignored)"
                ))
            }
        }
        s.params.push((name, value));
    }
    if !from.is_empty() || !to.is_empty() {
        s.keys.push((tags::STUDY_DATE, format!("{from}-{to}")));
    }
    Ok(s)
}

/// Runs a study-level find for `keys`; the matches from `offset`, at most `count`, and
/// whether more matched.
async fn find_studies(
    archive: &Archive,
    peer: WebCaller,
    keys: &[(u32, String)],
    offset: usize,
    count: usize,
) -> Result<(Vec<Answer>, usize), Response> {
    let mut all: Vec<(u32, &str)> = keys.iter().map(|(t, v)| (*t, v.as_str())).collect();
    for t in STUDY_FIELDS {
        if !all.iter().any(|(k, _)| *k == t) {
            all.push((t, ""));
        }
    }
    let query = Query::from_keys(Level::Study, &all);
    let forbidden = |e: crate::archive::Error| {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = if status == StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "exception"
        };
        outcome(status, code, e.to_string())
    };
    let mut stream = archive
        .find(&peer.principal(SERVICE), Model::StudyRoot, query)
        .map_err(forbidden)?;
    let mut total = 0usize;
    let mut page = Vec::new();
    while let Some(answer) = stream.next().await {
        if total >= offset && page.len() < count {
            page.push(answer);
        }
        total += 1;
    }
    stream.finish().await.map_err(forbidden)?;
    Ok((page, total))
}

/// The ImagingStudy of each match (the catalog read on the blocking pool). A study
/// filed under two patients (a patient conflict) matches once per patient; a Bundle
/// holds one resource per id (R4 bdl-7), so the first view is kept — a search by
/// either patient still finds the study with that patient's series.
async fn imaging_studies(archive: &Archive, answers: Vec<Answer>) -> Result<Vec<Value>, Response> {
    let archive = archive.clone();
    tokio::task::spawn_blocking(move || {
        let mut seen = std::collections::HashSet::new();
        answers
            .iter()
            .filter(|a| {
                a.get(&tags::STUDY_INSTANCE_UID)
                    .is_some_and(|uid| seen.insert(uid.clone()))
            })
            .filter_map(|a| {
                let uid = a.get(&tags::STUDY_INSTANCE_UID)?;
                let mut view = archive.study_view_unaudited(uid).ok().flatten()?;
                // instances an IOCM rejection note hid are not listed (nor counted)
                let hidden = crate::query::rejected_of(archive.index.as_ref(), uid).ok()?;
                if !hidden.is_empty() {
                    for series in &mut view.series {
                        let series_uid = series.series_uid.clone();
                        series.instances.retain(|i| {
                            !hidden.contains(&(series_uid.clone(), i.sop_instance_uid.clone()))
                        });
                    }
                    view.series.retain(|s| !s.instances.is_empty());
                }
                Some(imaging_study(a, &view))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| {
        outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            e.to_string(),
        )
    })
}

/// A searchset Bundle of `resources` (page `offset`/`count` of `total`), with paging links.
fn bundle(
    base: &str,
    kind: &str,
    params: &[(String, String)],
    resources: Vec<Value>,
    total: usize,
    offset: usize,
    count: usize,
) -> Value {
    let link = |offset: usize| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            q.append_pair(k, v);
        }
        q.append_pair("_count", &count.to_string());
        q.append_pair("_offset", &offset.to_string());
        format!("{base}/fhir/{kind}?{}", q.finish())
    };
    let mut links = vec![json!({ "relation": "self", "url": link(offset) })];
    if offset + count < total {
        links.push(json!({ "relation": "next", "url": link(offset + count) }));
    }
    if offset > 0 {
        links.push(json!({ "relation": "previous", "url": link(offset.saturating_sub(count)) }));
    }
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap_or_default().to_string();
            let rt = r["resourceType"].as_str().unwrap_or_default().to_string();
            json!({ "fullUrl": format!("{base}/fhir/{rt}/{id}"), "resource": r, "search": { "mode": "match" } })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries
    })
}

async fn search_imaging_studies(
    State(archive): State<Archive>,
    peer: WebCaller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let s = match parse_study_search(raw.as_deref(), lenient(&headers)) {
        Ok(s) => s,
        Err(e) => return outcome(StatusCode::BAD_REQUEST, "invalid", e),
    };
    let (answers, total) = match find_studies(&archive, peer, &s.keys, s.offset, s.count).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let resources = match imaging_studies(&archive, answers).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let base = base(&archive, &headers);
    fhir(
        StatusCode::OK,
        bundle(
            &base,
            "ImagingStudy",
            &s.params,
            resources,
            total,
            s.offset,
            s.count,
        ),
    )
}

async fn read_imaging_study(
    State(archive): State<Archive>,
    peer: WebCaller,
    Path(id): Path<String>,
) -> Response {
    if !crate::dicom::part10::is_valid_uid(&id) {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no ImagingStudy {id}"),
        );
    }
    let keys = [(tags::STUDY_INSTANCE_UID, id.clone())];
    let (answers, _) = match find_studies(&archive, peer, &keys, 0, 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match imaging_studies(&archive, answers).await {
        Ok(mut r) if !r.is_empty() => fhir(StatusCode::OK, r.remove(0)),
        Ok(_) => outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no ImagingStudy {id}"),
        ),
        Err(r) => r,
    }
}

/// The most studies read to tell the patients of one PatientID apart (issuers).
const PATIENTS_OF_ID: usize = 1000;

/// The Patients a PatientID names, one per issuer (IssuerOfPatientID), from their
/// studies' patient attributes.
async fn patients_of(
    archive: &Archive,
    peer: WebCaller,
    pid: &str,
) -> Result<Vec<Value>, Response> {
    let keys = [(tags::PATIENT_ID, pid.to_string())];
    let (answers, _) = find_studies(archive, peer, &keys, 0, PATIENTS_OF_ID).await?;
    let mut seen = std::collections::BTreeSet::new();
    Ok(answers
        .iter()
        .filter(|a| {
            let get = |t| a.get(&t).map_or("", String::as_str);
            seen.insert(patient_key(
                get(tags::PATIENT_ID),
                get(tags::ISSUER_OF_PATIENT_ID),
            ))
        })
        .filter_map(patient_resource)
        .collect())
}

/// The Patient a patient key ([`patient_key`], from a Patient.id) names: the patient of
/// that PatientID and issuer; for a key of unknown issuer, the PatientID's only
/// patient when it has one (an unknown issuer agrees with one known issuer).
async fn patient_of(
    archive: &Archive,
    peer: WebCaller,
    key: &str,
) -> Result<Option<Value>, Response> {
    let (pid, issuer) = split_patient_key(key);
    let mut found = patients_of(archive, peer, pid).await?;
    let exact = found
        .iter()
        .position(|p| patient_id_to_fhir(key).is_some_and(|id| p["id"] == json!(id)));
    Ok(match exact {
        Some(at) => Some(found.swap_remove(at)),
        None if issuer.is_empty() && found.len() == 1 => found.pop(),
        None => None,
    })
}

async fn read_patient(
    State(archive): State<Archive>,
    peer: WebCaller,
    Path(id): Path<String>,
) -> Response {
    let Some(key) = fhir_to_patient_id(&id).filter(|k| {
        let (pid, issuer) = split_patient_key(k);
        exact("id", pid).is_ok() && (issuer.is_empty() || exact("id", issuer).is_ok())
    }) else {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no Patient {id}"),
        );
    };
    match patient_of(&archive, peer.clone(), &key).await {
        Ok(Some(p)) => fhir(StatusCode::OK, p),
        Ok(None) => match replaced_patient(&archive, &peer, &id, &key).await {
            Some(p) => fhir(StatusCode::OK, p),
            None => outcome(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no Patient {id}"),
            ),
        },
        Err(r) => r,
    }
}

/// The Patient a merged-away or changed PatientID was (the hospital's merge, ADT^A40, or
/// identifier change, A47: docs/patients.md): `active: false` and a `link` of type
/// `replaced-by` to the Patient it is known as now (R4 Patient.link). `None` when the
/// ID was never replaced (or the caller may not see the patient it became).
async fn replaced_patient(
    archive: &Archive,
    peer: &WebCaller,
    id: &str,
    key: &str,
) -> Option<Value> {
    let (pid, issuer) = split_patient_key(key);
    let (this, who, asked, of) = (
        archive.clone(),
        peer.principal(SERVICE),
        pid.to_string(),
        issuer.to_string(),
    );
    let view = tokio::task::spawn_blocking(move || this.patient_view_blocking(&who, &asked, &of))
        .await
        .ok()?
        .ok()?;
    if view.patient_id == view.asked {
        return None;
    }
    let now_issuer = view.link.as_ref().map_or("", |l| l.issuer.as_str());
    let survivor = patient_id_to_fhir(&patient_key(&view.patient_id, now_issuer))?;
    Some(json!({
        "resourceType": "Patient",
        "id": id,
        "active": false,
        "identifier": [{ "value": pid }],
        "link": [{ "other": { "reference": format!("Patient/{survivor}") }, "type": "replaced-by" }]
    }))
}

async fn search_patients(
    State(archive): State<Archive>,
    peer: WebCaller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let mut pid = None;
    let mut search_by_id = false;
    let mut params = Vec::new();
    for (name, value) in form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "identifier" | "_id" => {
                search_by_id = name == "_id";
                let v = if search_by_id {
                    fhir_to_patient_id(&value).unwrap_or_default()
                } else {
                    value.rsplit('|').next().unwrap_or("").to_string()
                };
                // (an `_id` is a patient key: the PatientID, and its issuer if known)
                let (id, issuer) = split_patient_key(&v);
                let issuer_ok = issuer.is_empty() || exact(&name, issuer).is_ok();
                match exact(&name, id).and_then(|_| {
                    issuer_ok
                        .then_some(())
                        .ok_or_else(|| format!("{name}={value:?}: not a patient"))
                }) {
                    Ok(_) => pid = Some(v.clone()),
                    Err(e) => return outcome(StatusCode::BAD_REQUEST, "invalid", e),
                }
                params.push((name.to_string(), value.to_string()));
            }
            "_format" | "_count" => {}
            _ if lenient(&headers) => {}
            other => {
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!(
                        "{other:?} is not a supported Patient search parameter (identifier, \
                         _id; send `Prefer: handling=lenient` to have unknown parameters ignored)"
                    ),
                )
            }
        }
    }
    let Some(pid) = pid.filter(|p| !p.is_empty()) else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "a Patient search needs identifier (a PatientID) or _id",
        );
    };
    // `_id` names one patient (its key); `identifier` a PatientID: one per issuer
    let found = match search_by_id {
        true => patient_of(&archive, peer, &pid)
            .await
            .map(|p| p.into_iter().collect()),
        false => patients_of(&archive, peer, &pid).await,
    };
    let found: Vec<Value> = match found {
        Ok(p) => p,
        Err(r) => return r,
    };
    let total = found.len();
    let base = base(&archive, &headers);
    fhir(
        StatusCode::OK,
        bundle(&base, "Patient", &params, found, total, 0, DEFAULT_COUNT),
    )
}

async fn read_endpoint(
    State(archive): State<Archive>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if id != ENDPOINT_ID {
        return outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no Endpoint {id}"),
        );
    }
    fhir(StatusCode::OK, endpoint_resource(&base(&archive, &headers)))
}

/// The CapabilityStatement (R4): what this server reads and searches.
async fn capability_statement(State(archive): State<Archive>, headers: HeaderMap) -> Response {
    let base = base(&archive, &headers);
    let param = |name: &str, kind: &str, doc: &str| json!({ "name": name, "type": kind, "documentation": doc });
    let mut statement = json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-11-29",
            "publisher": "Strata",
            "kind": "instance",
            "software": { "name": "Strata", "version": env!("CARGO_PKG_VERSION") },
            "implementation": { "description": "Strata vendor-neutral archive", "url": format!("{base}/fhir") },
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [{
                "mode": "server",
                "resource": [
                    {
                        "type": "ImagingStudy",
                        "interaction": [{ "code": "read" }, { "code": "search-type" }],
                        "searchParam": [
                            param("patient", "reference", "the study's Patient (PatientID)"),
                            param("subject", "reference", "as patient"),
                            param("identifier", "token", "urn:oid:<StudyInstanceUID>, or an AccessionNumber"),
                            param("started", "date", "StudyDate, with eq/ge/le/gt/lt"),
                            param("modality", "token", "a ModalitiesInStudy code (DCM)"),
                            param("_count", "number", "page size, at most 1000 (default 50)")
                        ]
                    },
                    {
                        "type": "Patient",
                        "interaction": [{ "code": "read" }, { "code": "search-type" }],
                        "searchParam": [
                            param("identifier", "token", "PatientID"),
                            param("_id", "token", "the Patient id")
                        ]
                    },
                    { "type": "Endpoint", "interaction": [{ "code": "read" }] }
                ]
            }]
    });
    // with tokens on, say so (R4 CapabilityStatement.rest.security, SMART on FHIR)
    let auth = &archive.config().auth;
    if auth.enabled() {
        statement["rest"][0]["security"] = json!({
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]
            }],
            "description": format!(
                "Bearer tokens (JWT) issued by {} for audience {}; SMART scopes \
                 user/ImagingStudy.read or user/*.read to read; a patient claim restricts \
                 a token to that patient",
                auth.issuer.trim(),
                auth.audience.trim()
            )
        });
    }
    fhir(StatusCode::OK, statement)
}

#[cfg(test)]
mod tests {
    use super::ids::is_fhir_id;
    use super::*;

    #[test]
    fn patient_ids_round_trip_and_stay_fhir_ids() {
        for pid in ["P601", "STRATA001", "A B/C", "Häberle", "x123"] {
            let id = patient_id_to_fhir(pid).unwrap();
            assert!(is_fhir_id(&id), "{id}");
            assert_eq!(fhir_to_patient_id(&id).as_deref(), Some(pid));
        }
    }

    #[test]
    fn started_prefixes_become_date_ranges() {
        assert_eq!(
            date_range("2024-01-11").unwrap(),
            ("20240111".into(), "20240111".into())
        );
        assert_eq!(
            date_range("ge2024-01").unwrap(),
            ("20240101".into(), String::new())
        );
        assert_eq!(
            date_range("le2024").unwrap(),
            (String::new(), "20241231".into())
        );
        assert_eq!(
            date_range("gt2024-01-11").unwrap(),
            ("20240112".into(), String::new())
        );
        assert!(date_range("yesterday").is_err());
        // a dateTime compares its day
        assert_eq!(
            date_range("gt2024-01-11T10:00:00Z").unwrap(),
            ("20240111".into(), String::new())
        );
    }
}
