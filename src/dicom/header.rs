//! The attributes the index keeps, read in one pass over a stored object that also
//! checks its framing ([`super::framing`]): element headers are read and values skipped
//! by length, only the few wanted top-level values are kept, and nothing is decoded. So a
//! 500 MB multi-frame costs what a 500 KB CT costs, and malformed input never reaches a
//! general-purpose parser. Deflated data sets are inflated as a stream for the walk, with
//! a cap on their inflated size.
//!
//! Text values are decoded by SpecificCharacterSet: `ISO_IR 192` as UTF-8, the default
//! repertoire and `ISO_IR 100` as Latin-1, anything else as lossy UTF-8 (good enough for
//! listing; the stored bytes are never altered).

use super::framing::{walk_dataset, walk_source, Encoding, Streamed, MAX_INFLATED};
use super::part10::{is_valid_uid, read_foreign_meta};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

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
    #[error("cannot read the object: {0}")]
    Io(String),
    #[error("malformed dataset: {0}")]
    Malformed(String),
    #[error("cannot parse the dataset: {0}")]
    Parse(String),
    #[error("the dataset lacks {0}")]
    Missing(&'static str),
    #[error("the dataset has an invalid {what}: {value:?}")]
    InvalidUid { what: &'static str, value: String },
}

const WANTED: [Tag; 19] = [
    tags::SPECIFIC_CHARACTER_SET,
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::MODALITY,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_DESCRIPTION,
    tags::SERIES_DESCRIPTION,
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::STUDY_ID,
    tags::SERIES_NUMBER,
    tags::INSTANCE_NUMBER,
];

fn key(tag: Tag) -> u32 {
    ((tag.group() as u32) << 16) | tag.element() as u32
}

/// Parses the header of a stored Part-10 object (and checks its framing).
pub fn read_header_blocking(path: &Path) -> Result<InstanceAttrs, HeaderError> {
    let mut file = std::fs::File::open(path).map_err(|e| HeaderError::Io(e.to_string()))?;
    let mut head = vec![0u8; 16 * 1024];
    let mut filled = 0;
    while filled < head.len() {
        match file
            .read(&mut head[filled..])
            .map_err(|e| HeaderError::Io(e.to_string()))?
        {
            0 => break,
            n => filled += n,
        }
    }
    let meta =
        read_foreign_meta(&head[..filled]).map_err(|e| HeaderError::Malformed(e.to_string()))?;
    let Some(encoding) = Encoding::of_transfer_syntax(&meta.transfer_syntax_uid) else {
        return Err(HeaderError::Malformed(format!(
            "unknown transfer syntax {}",
            meta.transfer_syntax_uid
        )));
    };
    let wanted: Vec<u32> = WANTED.iter().map(|t| key(*t)).collect();
    let values: BTreeMap<u32, Vec<u8>> = if Encoding::is_deflated(&meta.transfer_syntax_uid) {
        // inflate as a stream, never more than MAX_INFLATED bytes (deflate bombs)
        file.seek(SeekFrom::Start(meta.dataset_offset as u64))
            .map_err(|e| HeaderError::Io(e.to_string()))?;
        let inflated =
            flate2::read::DeflateDecoder::new(BufReader::new(file)).take(MAX_INFLATED + 1);
        let mut counted = CountingReader {
            inner: inflated,
            read: 0,
        };
        let walked = walk_source(Streamed(&mut counted), 0, encoding, &wanted);
        if counted.read > MAX_INFLATED {
            return Err(HeaderError::Malformed(format!(
                "inflated data set exceeds {MAX_INFLATED} bytes"
            )));
        }
        walked.map_err(HeaderError::Malformed)?
    } else {
        walk_dataset(file, meta.dataset_offset as u64, encoding, &wanted)
            .map_err(HeaderError::Malformed)?
    };
    attrs_of(&values, meta.transfer_syntax_uid)
}

/// Counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

fn decode_text(bytes: &[u8], charset: &str) -> String {
    let text = if charset.contains("ISO_IR 192")
        || charset.is_empty() && std::str::from_utf8(bytes).is_ok()
    {
        String::from_utf8_lossy(bytes).into_owned()
    } else if charset.is_empty() || charset.contains("ISO_IR 100") || charset.contains("ISO_IR 6") {
        bytes.iter().map(|&b| b as char).collect()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    };
    text.trim_matches(['\0', ' ']).to_string()
}

fn attrs_of(
    values: &BTreeMap<u32, Vec<u8>>,
    transfer_syntax_uid: String,
) -> Result<InstanceAttrs, HeaderError> {
    let charset = values
        .get(&key(tags::SPECIFIC_CHARACTER_SET))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let text = |tag: Tag| {
        values
            .get(&key(tag))
            .map(|v| decode_text(v, &charset))
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
        transfer_syntax_uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_decoding_by_charset() {
        assert_eq!(decode_text(b"DOE^JOHN ", ""), "DOE^JOHN");
        assert_eq!(
            decode_text(&[0x4D, 0xFC, 0x6C, 0x6C, 0x65, 0x72], "ISO_IR 100"),
            "Müller"
        );
        assert_eq!(decode_text("Müller".as_bytes(), "ISO_IR 192"), "Müller");
        assert_eq!(decode_text(b"1.2.3\0", ""), "1.2.3");
    }
}
