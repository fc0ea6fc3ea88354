//! # WADO-URI (PS3.18 9) at `/wado`, for older EHR links
//!
//! `GET /wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…` answers one instance:
//! - `contentType=application/dicom`: the object as a Part-10 file in Explicit VR Little
//!   Endian unless `transferSyntax` names another (`*`: as stored); as stored (its bytes
//!   hash to its id) whenever that is the syntax it has, else converted
//!   ([`crate::dicom::transcode`]);
//! - `contentType=image/jpeg` (the default, PS3.18 9.1.2.1.2) or `image/png`: one frame
//!   (`frameNumber`, default 1) rendered as in WADO-RS, with `windowCenter` and
//!   `windowWidth`, scaled down to `rows`/`columns`, JPEG `imageQuality`.
//!
//! `anonymize=yes`, `annotation`, `region` and `presentationUID` are not supported
//! (400). Each request goes through the retrieve use case under a web principal
//! (`service: wado-uri`) and is audited.

use super::auth::WebCaller;
use super::dicomweb::{fail, one_instance_as, render_answer};
use crate::archive::Archive;
use crate::dicom::render::{Format, RenderOptions};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;

/// Explicit VR Little Endian: WADO-URI's default transfer syntax.
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

pub fn routes() -> Router<Archive> {
    Router::new().route("/wado", get(wado))
}

/// A parsed WADO-URI request.
struct Request {
    uids: HashMap<String, String>,
    content: Content,
    transfer_syntax: Option<String>,
    frame: u32,
    render: RenderOptions,
}

enum Content {
    Dicom,
    Image(Format),
}

fn parse(raw: Option<&str>) -> Result<Request, String> {
    let mut p: HashMap<String, String> = HashMap::new();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if p.insert(name.to_string(), value.to_string()).is_some() {
            return Err(format!("{name} is given twice"));
        }
    }
    match p.get("requestType").map(String::as_str) {
        Some("WADO") => {}
        Some(other) => return Err(format!("requestType={other:?}: only WADO is served")),
        None => return Err("requestType=WADO is required (PS3.18 9.1.2.1.1)".into()),
    }
    let mut uids = HashMap::new();
    for (param, key) in [
        ("studyUID", "study"),
        ("seriesUID", "series"),
        ("objectUID", "instance"),
    ] {
        let value = p
            .get(param)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{param} is required (PS3.18 9.1.2.1)"))?;
        uids.insert(key.to_string(), value.clone());
    }
    let content = match p.get("contentType").map(String::as_str) {
        None | Some("image/jpeg") => Content::Image(Format::Jpeg),
        Some("image/png") => Content::Image(Format::Png),
        Some("application/dicom") => Content::Dicom,
        // a list in order of preference: the first we can produce
        Some(list) => list
            .split(',')
            .find_map(|c| match c.trim() {
                "image/jpeg" | "*/*" => Some(Content::Image(Format::Jpeg)),
                "image/png" => Some(Content::Image(Format::Png)),
                "application/dicom" => Some(Content::Dicom),
                _ => None,
            })
            .ok_or_else(|| {
                format!(
                    "contentType={list:?}: served are application/dicom, image/jpeg and image/png"
                )
            })?,
    };
    for unsupported in [
        "anonymize",
        "annotation",
        "region",
        "presentationUID",
        "presentationSeriesUID",
    ] {
        if p.contains_key(unsupported) {
            return Err(format!("{unsupported} is not supported"));
        }
    }
    let number = |name: &str| -> Result<Option<f64>, String> {
        p.get(name)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{name}={v:?} is not a number"))
            })
            .transpose()
    };
    let frame = match number("frameNumber")? {
        None => 1,
        Some(f) if f >= 1.0 && f.fract() == 0.0 && f <= u32::MAX as f64 => f as u32,
        Some(f) => return Err(format!("frameNumber={f} is not a frame number (1, 2, ...)")),
    };
    let window = match (number("windowCenter")?, number("windowWidth")?) {
        (Some(c), Some(w)) if c.is_finite() && w.is_finite() && w >= 1.0 => Some((c, w)),
        (None, None) => None,
        _ => return Err("windowCenter and windowWidth go together, the width positive".into()),
    };
    let viewport = match (number("columns")?, number("rows")?) {
        (None, None) => None,
        (c, r) => Some((
            c.map(|c| c.max(1.0) as u32).unwrap_or(u32::MAX),
            r.map(|r| r.max(1.0) as u32).unwrap_or(u32::MAX),
        )),
    };
    let quality = number("imageQuality")?.map(|q| q.clamp(1.0, 100.0) as u8);
    Ok(Request {
        uids,
        content,
        transfer_syntax: p.get("transferSyntax").cloned(),
        frame,
        render: RenderOptions {
            window,
            viewport,
            quality,
        },
    })
}

async fn wado(
    State(archive): State<Archive>,
    peer: WebCaller,
    RawQuery(raw): RawQuery,
) -> Response {
    let request = match parse(raw.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    match request.content {
        Content::Image(format) => {
            render_answer(
                &archive,
                peer,
                "wado-uri",
                &request.uids,
                request.frame,
                format,
                request.render,
                "WADO-URI",
            )
            .await
        }
        Content::Dicom => {
            let (retrieval, item, bytes) = match one_instance_as(
                &archive,
                peer,
                "wado-uri",
                &request.uids,
                "WADO-URI",
            )
            .await
            {
                Ok(x) => x,
                Err(r) => return *r,
            };
            // PS3.18 9.1.2.2.3 / 8.7.3: Explicit VR Little Endian unless another syntax is
            // asked for (`*` being the stored one)
            let target = match request.transfer_syntax.as_deref() {
                None => EXPLICIT_VR_LE.to_string(),
                Some("*") => item.transfer_syntax_uid.clone(),
                Some(uid) => uid.to_string(),
            };
            let part10 = super::dicomweb::work_then_finish(retrieval, move || {
                if target == item.transfer_syntax_uid {
                    return Ok(bytes);
                }
                let dataset =
                    crate::dicom::transcode::dataset_in(bytes, &item.transfer_syntax_uid, &target)?;
                super::dicomweb::part10_of(
                    &dataset,
                    &item.sop_class_uid,
                    &item.sop_instance_uid,
                    &target,
                )
            })
            .await;
            match part10 {
                Ok(body) => ([(header::CONTENT_TYPE, "application/dicom")], body).into_response(),
                // the transfer syntax asked for cannot be produced from the stored one
                Err(e) => fail(StatusCode::NOT_ACCEPTABLE, e),
            }
        }
    }
}
