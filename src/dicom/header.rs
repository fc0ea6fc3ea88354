//! The attributes the index keeps, read from a stored object's header only: parsing stops
//! before pixel data, so a 500 MB multi-frame costs what a 500 KB CT costs.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::part10::is_valid_uid;

/// Parsing stops at the first root-level tag at or after this one: (7FE0,0008)
/// FloatPixelData, which precedes DoublePixelData and PixelData.
const STOP_AT: Tag = Tag(0x7FE0, 0x0008);

/// What the index records about one instance, as found in its dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceAttrs {
    pub patient_id: String,
    pub patient_name: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub accession_number: String,
    pub study_id: String,
    pub study_description: String,
    pub referring_physician_name: String,
    pub series_uid: String,
    pub series_number: String,
    pub modality: String,
    pub series_description: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub instance_number: String,
    pub transfer_syntax_uid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("cannot parse the dataset: {0}")]
    Parse(String),
    #[error("the dataset lacks {0}")]
    Missing(&'static str),
    #[error("the dataset has an invalid {what}: {value:?}")]
    InvalidUid { what: &'static str, value: String },
}

/// Parses the header of a Part-10 file (ours or a foreign one).
pub fn read_header_blocking(path: &Path) -> Result<InstanceAttrs, HeaderError> {
    let obj = OpenFileOptions::new()
        .read_until(STOP_AT)
        .open_file(path)
        .map_err(|e| HeaderError::Parse(e.to_string()))?;
    attrs_of(&obj)
}

fn attrs_of(obj: &DefaultDicomObject) -> Result<InstanceAttrs, HeaderError> {
    let text = |tag: Tag| -> String {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok().map(|s| s.trim_matches(['\0', ' ']).to_string()))
            .unwrap_or_default()
    };
    let uid = |tag: Tag, what: &'static str| -> Result<String, HeaderError> {
        let value = text(tag);
        if value.is_empty() {
            return Err(HeaderError::Missing(what));
        }
        if !is_valid_uid(&value) {
            return Err(HeaderError::InvalidUid { what, value });
        }
        Ok(value)
    };
    Ok(InstanceAttrs {
        patient_id: text(tags::PATIENT_ID),
        patient_name: text(tags::PATIENT_NAME),
        patient_birth_date: text(tags::PATIENT_BIRTH_DATE),
        patient_sex: text(tags::PATIENT_SEX),
        study_uid: uid(tags::STUDY_INSTANCE_UID, "StudyInstanceUID (0020,000D)")?,
        study_date: text(tags::STUDY_DATE),
        study_time: text(tags::STUDY_TIME),
        accession_number: text(tags::ACCESSION_NUMBER),
        study_id: text(tags::STUDY_ID),
        study_description: text(tags::STUDY_DESCRIPTION),
        referring_physician_name: text(tags::REFERRING_PHYSICIAN_NAME),
        series_uid: uid(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID (0020,000E)")?,
        series_number: text(tags::SERIES_NUMBER),
        modality: text(tags::MODALITY),
        series_description: text(tags::SERIES_DESCRIPTION),
        sop_instance_uid: uid(tags::SOP_INSTANCE_UID, "SOPInstanceUID (0008,0018)")?,
        sop_class_uid: uid(tags::SOP_CLASS_UID, "SOPClassUID (0008,0016)")?,
        instance_number: text(tags::INSTANCE_NUMBER),
        transfer_syntax_uid: obj.meta().transfer_syntax().trim_end_matches('\0').to_string(),
    })
}
