//! # The per-instance metadata record (`docs/formats.md`, "Instance metadata record")
//!
//! Everything of a stored object's data set that is not bulk data, as DICOM JSON (PS3.18
//! Annex F), captured once when the object is indexed — at ingest, by start-up recovery
//! and by `reindex`, from hot objects and from pack members — and kept in the index beside
//! the object record, keyed by the object id. WADO-RS metadata answers from it without
//! reading (or recalling) the object, and QIDO-RS and C-FIND match and return the
//! attributes the index does not keep as columns (Rows, BodyPartExamined, …) from it.
//!
//! The JSON is the one dicom-json (dicom-rs) writes for the data set read by dicom-object
//! up to its Pixel Data (7FE0,0010), with IS and DS values as JSON numbers (PS3.18
//! F.2.3). Pixel Data itself is never kept: an image (a data set with Rows) gets it as a
//! `BulkDataURI` (PS3.18 F.2.6) when served, pointing at the instance's WADO-RS
//! `bulkdata/7FE00010`. The record depends only on the object's bytes, so it is as
//! immutable as the object and rebuildable from it.
//!
//! ## Encoding, version 1
//! | bytes | meaning |
//! |---|---|
//! | 0 | format version, 1 |
//! | 1 | flags: bit 0 set when the data set is an image whose Pixel Data is served as bulk data |
//! | 2.. | one zstd frame holding the DICOM JSON object (UTF-8), without Pixel Data |
//!
//! A reader refuses any other version rather than guess.

use dicom_dictionary_std::tags;
use serde_json::Value;
use std::path::Path;

/// The current format version of the record.
pub const METADATA_VERSION: u8 = 1;

/// The flag bit: the data set is an image; Pixel Data is served as a BulkDataURI.
const FLAG_PIXELS: u8 = 1;

/// zstd level of the record: the fastest, since it is paid on the ingest path.
const ZSTD_LEVEL: i32 = 1;

/// A decoded metadata record. Its JSON holds no Pixel Data: the data set is read only up
/// to it (dicom-object's `read_until`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// The DICOM JSON object of the data set, without Pixel Data, as compact JSON text.
    pub json: String,
    /// Whether the data set is an image (it has Rows): its Pixel Data is bulk data.
    pub has_pixels: bool,
}

impl InstanceMetadata {
    /// Reads the data set of a Part-10 file up to its Pixel Data (bounded memory,
    /// whatever the object's size). Errors name what dicom-object could not parse.
    pub fn of_file(path: &Path) -> Result<Self, String> {
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .map_err(|e| format!("cannot parse the stored object: {e}"))?;
        Self::of_object(&obj)
    }

    /// [`Self::of_file`] over a Part-10 object held in memory (preamble included).
    pub fn of_part10(part10: &[u8]) -> Result<Self, String> {
        if part10.len() < 132 {
            return Err("not a Part-10 object".into());
        }
        Self::of_reader(part10)
    }

    /// [`Self::of_file`] over a Part-10 object read as a stream (preamble included); reads
    /// no further than its pixel data.
    pub fn of_reader(mut part10: impl std::io::Read) -> Result<Self, String> {
        let mut preamble = [0u8; 128];
        part10
            .read_exact(&mut preamble)
            .map_err(|_| "not a Part-10 object".to_string())?;
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .from_reader(part10)
            .map_err(|e| format!("cannot parse the stored object: {e}"))?;
        Self::of_object(&obj)
    }

    fn of_object(obj: &dicom_object::DefaultDicomObject) -> Result<Self, String> {
        let dataset: &dicom_object::InMemDicomObject = obj;
        let mut json = dicom_json::to_value(dataset).map_err(|e| e.to_string())?;
        numbers_as_numbers(&mut json);
        Ok(InstanceMetadata {
            json: json.to_string(),
            has_pixels: obj.element(tags::ROWS).is_ok(),
        })
    }

    /// The record's bytes (format above).
    pub fn encode(&self) -> Vec<u8> {
        let flags = if self.has_pixels { FLAG_PIXELS } else { 0 };
        let mut out = vec![METADATA_VERSION, flags];
        // one compression context per thread, not one per record (its tables are the cost)
        thread_local! {
            static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
                const { std::cell::RefCell::new(None) };
        }
        let packed = COMPRESSOR
            .with(|c| {
                let mut c = c.borrow_mut();
                if c.is_none() {
                    *c = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
                }
                c.as_mut()
                    .expect("set above")
                    .compress(self.json.as_bytes())
            })
            .expect("zstd compresses into a growing buffer");
        out.extend_from_slice(&packed);
        out
    }

    /// Decodes a record; refuses an unknown version or a damaged frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes {
            [METADATA_VERSION, flags, frame @ ..] => {
                let mut json = Vec::new();
                zstd::stream::copy_decode(frame, &mut json)
                    .map_err(|e| format!("damaged metadata record: {e}"))?;
                let json = String::from_utf8(json)
                    .map_err(|_| "metadata record is not UTF-8".to_string())?;
                Ok(InstanceMetadata {
                    json,
                    has_pixels: flags & FLAG_PIXELS != 0,
                })
            }
            [v, ..] => Err(format!("unknown metadata record version {v}")),
            [] => Err("empty metadata record".into()),
        }
    }

    /// The DICOM JSON object as served by WADO-RS metadata: the record's JSON with, for
    /// an image, Pixel Data as `{"vr":"OW","BulkDataURI": pixel_data_uri}` — appended
    /// last, where its tag sorts (nothing after Pixel Data is kept).
    /// This metadata with its patient module as `patient` (the identity the hospital
    /// knows the patient by now: [`super::coerce`]); DICOM JSON per PS3.18 F.2 (PN as
    /// `{"Alphabetic": …}`). An attribute given empty is written without a value.
    pub fn with_patient(&self, patient: &super::coerce::PatientModule) -> Result<Self, String> {
        let mut json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&self.json).map_err(|e| e.to_string())?;
        let mut set = |tag: &str, vr: &str, value: Option<serde_json::Value>| {
            let mut attribute = serde_json::json!({ "vr": vr });
            if let Some(v) = value {
                attribute["Value"] = serde_json::json!([v]);
            }
            json.insert(tag.to_string(), attribute);
        };
        let text = |s: &str| (!s.is_empty()).then(|| serde_json::json!(s));
        set(
            "00100010",
            "PN",
            text(&patient.patient_name).map(|n| serde_json::json!({ "Alphabetic": n })),
        );
        set("00100020", "LO", text(&patient.patient_id));
        set("00100030", "DA", text(&patient.patient_birth_date));
        set("00100040", "CS", text(&patient.patient_sex));
        if patient.issuer.is_empty() {
            json.remove("00100021");
        } else {
            set("00100021", "LO", text(&patient.issuer));
        }
        Ok(InstanceMetadata {
            json: serde_json::Value::Object(json).to_string(),
            has_pixels: self.has_pixels,
        })
    }

    pub fn to_json_text(&self, pixel_data_uri: &str) -> String {
        if !self.has_pixels {
            return self.json.clone();
        }
        let attribute = serde_json::json!({ "vr": "OW", "BulkDataURI": pixel_data_uri });
        let body = self.json.trim_end().strip_suffix('}').unwrap_or("{");
        let sep = if body.trim_end() == "{" { "" } else { "," };
        format!("{body}{sep}\"7FE00010\":{attribute}}}")
    }

    /// The values of `wanted` top-level attributes as C-FIND matches them: text values
    /// joined with `\`, numbers as written, PN as `Alphabetic=Ideographic=Phonetic`.
    /// Attributes absent from the data set, sequences and binary values are left out
    /// (they are not matched, PS3.4 C.2.2.2 covers neither here).
    pub fn attribute_text(&self, wanted: &[u32]) -> Vec<(u32, String)> {
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&self.json) else {
            return Vec::new();
        };
        wanted
            .iter()
            .filter_map(|tag| {
                let attribute = object.get(&format!("{tag:08X}"))?;
                let vr = attribute.get("vr")?.as_str()?;
                if vr == "SQ" {
                    return None;
                }
                let Some(values) = attribute.get("Value").and_then(Value::as_array) else {
                    // present but empty, unless binary (InlineBinary / BulkDataURI)
                    return attribute
                        .get("InlineBinary")
                        .or_else(|| attribute.get("BulkDataURI"))
                        .is_none()
                        .then(|| (*tag, String::new()));
                };
                let text: Vec<String> = values
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Object(groups) => {
                            let group =
                                |name: &str| groups.get(name).and_then(Value::as_str).unwrap_or("");
                            let pn = [group("Alphabetic"), group("Ideographic"), group("Phonetic")]
                                .join("=");
                            pn.trim_end_matches('=').to_string()
                        }
                        _ => String::new(),
                    })
                    .collect();
                Some((*tag, text.join("\\")))
            })
            .collect()
    }
}

/// [`capture_blocking`] from a whole Part-10 object read as a stream (one held in
/// memory, as ingest keeps it).
pub fn capture_from(part10: impl std::io::Read) -> Option<Vec<u8>> {
    match InstanceMetadata::of_reader(part10) {
        Ok(m) => Some(m.encode()),
        Err(e) => {
            tracing::warn!(error = %e, "no metadata record for this object");
            None
        }
    }
}

/// Captures the record of a stored object from its file, for the index. `None` (with a
/// warning) when dicom-object cannot read a data set the framing walk accepted: the
/// object is stored all the same, and WADO-RS metadata then reads the object itself.
pub fn capture_blocking(path: &Path) -> Option<Vec<u8>> {
    match InstanceMetadata::of_file(path) {
        Ok(m) => Some(m.encode()),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no metadata record for this object");
            None
        }
    }
}

/// A decimal string as a JSON number: an integer when it is written as one (`120`, not
/// `120.0`), else a float; `None` when it is not a number.
pub fn ds_number(text: &str) -> Option<Value> {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(Value::from(i));
    }
    t.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
}

/// PS3.18 F.2.3: IS and DS values are JSON numbers. dicom-json 0.10 writes them as the
/// strings they are encoded as; this turns each into a number, at any sequence depth
/// (a value that does not parse stays a string rather than being lost).
fn numbers_as_numbers(json: &mut Value) {
    let Some(object) = json.as_object_mut() else {
        return;
    };
    for attribute in object.values_mut() {
        let vr = attribute["vr"].as_str().unwrap_or("").to_string();
        let Some(values) = attribute.get_mut("Value").and_then(Value::as_array_mut) else {
            continue;
        };
        for v in values.iter_mut() {
            match (vr.as_str(), &*v) {
                ("IS", Value::String(text)) => {
                    if let Ok(n) = text.trim().parse::<i64>() {
                        *v = Value::from(n);
                    }
                }
                ("DS", Value::String(text)) => {
                    if let Some(n) = ds_number(text) {
                        *v = n;
                    }
                }
                ("SQ", Value::Object(_)) => numbers_as_numbers(v),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    fn ct_file(dir: &Path) -> std::path::PathBuf {
        let mut obj = InMemDicomObject::new_empty();
        let put = |o: &mut InMemDicomObject, tag, vr, v: PrimitiveValue| {
            o.put(DataElement::new(tag, vr, v));
        };
        put(
            &mut obj,
            tags::SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.2".into(),
        );
        put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4".into());
        put(
            &mut obj,
            tags::PATIENT_NAME,
            VR::PN,
            "DOE^JANE==DOE^J".into(),
        );
        put(&mut obj, tags::SLICE_THICKNESS, VR::DS, "2.50".into());
        put(
            &mut obj,
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(["ORIGINAL".into(), "PRIMARY".into()].into()),
        );
        put(&mut obj, tags::ROWS, VR::US, PrimitiveValue::from(2u16));
        put(&mut obj, tags::COLUMNS, VR::US, PrimitiveValue::from(2u16));
        put(
            &mut obj,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(dicom_core::value::C::from_slice(&[1, 2, 3, 4])),
        );
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax("1.2.840.10008.1.2.1")
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
                    .media_storage_sop_instance_uid("1.2.3.4"),
            )
            .unwrap();
        let path = dir.join("ct.dcm");
        file.write_to_file(&path).unwrap();
        path
    }

    /// The record round-trips, and the served JSON is the library's JSON of the data
    /// set (dicom-json over dicom-object's reading) with Pixel Data as a BulkDataURI
    /// (PS3.18 F.2.6) and DS as a number (PS3.18 F.2.3).
    #[test]
    fn record_round_trips_and_serves_the_library_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = ct_file(dir.path());
        let captured = InstanceMetadata::of_file(&path).unwrap();
        assert!(captured.has_pixels);
        let bytes = capture_blocking(&path).unwrap();
        assert_eq!(bytes[0], METADATA_VERSION);
        let decoded = InstanceMetadata::decode(&bytes).unwrap();
        assert_eq!(decoded, captured);
        let from_bytes = InstanceMetadata::of_part10(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(from_bytes, captured);

        let served: Value = serde_json::from_str(&decoded.to_json_text("http://x/bulk")).unwrap();
        let obj = dicom_object::open_file(&path).unwrap();
        let mut library = dicom_json::to_value(&*obj as &InMemDicomObject).unwrap();
        library["7FE00010"] = serde_json::json!({ "vr": "OW", "BulkDataURI": "http://x/bulk" });
        library["00180050"]["Value"] = serde_json::json!([2.5]);
        assert_eq!(served, library);

        let t = |tag: dicom_core::Tag| (tag.group() as u32) << 16 | tag.element() as u32;
        let text = decoded.attribute_text(&[
            t(tags::ROWS),
            t(tags::PATIENT_NAME),
            t(tags::SLICE_THICKNESS),
            t(tags::IMAGE_TYPE),
            t(tags::STUDY_DATE),
        ]);
        assert_eq!(
            text,
            vec![
                (t(tags::ROWS), "2".to_string()),
                (t(tags::PATIENT_NAME), "DOE^JANE==DOE^J".to_string()),
                (t(tags::SLICE_THICKNESS), "2.5".to_string()),
                (t(tags::IMAGE_TYPE), "ORIGINAL\\PRIMARY".to_string()),
            ]
        );
    }

    #[test]
    fn unknown_versions_and_damage_are_refused() {
        let m = InstanceMetadata {
            json: "{}".into(),
            has_pixels: true,
        };
        assert_eq!(
            m.to_json_text("u"),
            r#"{"7FE00010":{"vr":"OW","BulkDataURI":"u"}}"#
        );
        let mut bytes = m.encode();
        assert_eq!(InstanceMetadata::decode(&bytes).unwrap(), m);
        bytes[0] = 2;
        assert!(InstanceMetadata::decode(&bytes)
            .unwrap_err()
            .contains("version 2"));
        bytes[0] = 1;
        bytes.truncate(5);
        assert!(InstanceMetadata::decode(&bytes).is_err());
        assert!(InstanceMetadata::decode(&[]).is_err());
    }
}
