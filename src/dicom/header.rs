//! The attributes the index keeps, read in one pass over a stored object that also
//! checks its framing ([`super::framing`]): element headers are read and values skipped
//! by length, only the few wanted top-level values are kept, and nothing is decoded. So a
//! 500 MB multi-frame costs what a 500 KB CT costs, and malformed input never reaches a
//! general-purpose parser. Deflated data sets are inflated as a stream for the walk, with
//! a cap on their inflated size.
//!
//! Text values are decoded by their Specific Character Set ([`super::charset`]: every
//! single-byte set, ISO 2022 code extensions, UTF-8, GB18030, GBK). A value its declared
//! set cannot decode is read as UTF-8 if it is valid UTF-8, else as Latin-1, with a
//! warning naming the element: the index needs some text, and the stored bytes are
//! never altered.

use super::framing::{
    dataset_hash_source, walk_source, Encoding, Seekable, Source, Streamed, MAX_INFLATED,
};
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
    /// IssuerOfPatientID (0010,0021) as the data set carries it; empty when absent (ingest
    /// may fill a configured default: docs/patients.md "The identity model").
    #[serde(default)]
    pub issuer_of_patient_id: String,
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

const WANTED: [Tag; 20] = [
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
    tags::ISSUER_OF_PATIENT_ID,
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
    let file = std::fs::File::open(path).map_err(|e| HeaderError::Io(e.to_string()))?;
    read_header_from(file)
}

/// [`read_header_blocking`] over a Part-10 object from any seekable reader (one held in
/// memory, as ingest keeps it).
pub fn read_header_from<R: Read + Seek>(reader: R) -> Result<InstanceAttrs, HeaderError> {
    let wanted: Vec<u32> = WANTED.iter().map(|t| key(*t)).collect();
    let (transfer_syntax_uid, values) = with_dataset(reader, |source, start, encoding| {
        walk_source(source, start, encoding, &wanted)
    })?;
    attrs_of(&values, transfer_syntax_uid)
}

/// The data-set hash of a stored Part-10 object ([`super::framing::dataset_hash_source`];
/// defined in `docs/formats.md`), read as a stream in bounded memory.
pub fn dataset_hash_blocking(path: &Path) -> Result<[u8; 32], HeaderError> {
    let file = std::fs::File::open(path).map_err(|e| HeaderError::Io(e.to_string()))?;
    dataset_hash_from(file)
}

/// [`dataset_hash_blocking`] over a Part-10 object from any seekable reader (one held in
/// memory, as ingest keeps it).
pub fn dataset_hash_from<R: Read + Seek>(reader: R) -> Result<[u8; 32], HeaderError> {
    with_dataset(reader, |source, start, encoding| {
        dataset_hash_source(source, start, encoding)
    })
    .map(|(_, hash)| hash)
}

/// Reads a Part-10 object's file meta information and hands its data set (inflated as a
/// stream for deflated syntaxes, never more than [`MAX_INFLATED`] bytes) to `walk`.
/// Returns the transfer syntax and what `walk` returned.
fn with_dataset<R: Read + Seek, T>(
    mut file: R,
    walk: impl FnOnce(Box<dyn Source + '_>, u64, Encoding) -> Result<T, String>,
) -> Result<(String, T), HeaderError> {
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
    let walked = if Encoding::is_deflated(&meta.transfer_syntax_uid) {
        file.seek(SeekFrom::Start(meta.dataset_offset as u64))
            .map_err(|e| HeaderError::Io(e.to_string()))?;
        let inflated = flate2::read::DeflateDecoder::new(BufReader::new(file));
        walk(
            Box::new(Streamed(Capped {
                inner: inflated,
                left: MAX_INFLATED,
            })),
            0,
            encoding,
        )
    } else {
        let (source, start) = Seekable::new(file, meta.dataset_offset as u64)
            .map_err(|e| HeaderError::Io(e.to_string()))?;
        walk(Box::new(source), start, encoding)
    };
    walked
        .map(|t| (meta.transfer_syntax_uid, t))
        .map_err(HeaderError::Malformed)
}

/// Fails a read that would go past `left` bytes (a deflate bomb), with a clear error.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // one byte more than allowed?
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(format!(
                    "inflated data set exceeds {MAX_INFLATED} bytes"
                ))),
            };
        }
        let cap = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..cap])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn decode_text(bytes: &[u8], charset: &str) -> String {
    let text = match super::charset::decode(bytes, charset) {
        Ok(text) => text,
        Err(why) => {
            // a value its own character set cannot read (common: Latin-1 or UTF-8 bytes
            // under the default repertoire)
            if !charset.trim().is_empty() {
                tracing::warn!(charset, %why, "a text value its character set cannot decode");
            }
            match std::str::from_utf8(bytes) {
                Ok(utf8) => utf8.to_string(),
                Err(_) => bytes.iter().map(|&b| b as char).collect(),
            }
        }
    };
    text.trim_matches(['\0', ' ']).to_string()
}

/// A PN value without trailing empty component groups (`Wang^XiaoDong=王^小東=` is
/// `Wang^XiaoDong=王^小東`, PS3.5 §6.2.1).
fn person_name(value: String) -> String {
    value.trim_end_matches('=').to_string()
}

fn attrs_of(
    values: &BTreeMap<u32, Vec<u8>>,
    transfer_syntax_uid: String,
) -> Result<InstanceAttrs, HeaderError> {
    let charset = values
        .get(&key(tags::SPECIFIC_CHARACTER_SET))
        .map(|v| {
            String::from_utf8_lossy(v)
                .trim_matches(['\0', ' '])
                .to_string()
        })
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
        issuer_of_patient_id: text(tags::ISSUER_OF_PATIENT_ID),
        patient_name: person_name(text(tags::PATIENT_NAME)),
        patient_birth_date: text(tags::PATIENT_BIRTH_DATE),
        patient_sex: text(tags::PATIENT_SEX),
        study_uid: uid(tags::STUDY_INSTANCE_UID, "StudyInstanceUID (0020,000D)")?,
        study_date: text(tags::STUDY_DATE),
        study_time: text(tags::STUDY_TIME),
        accession_number: text(tags::ACCESSION_NUMBER),
        study_id: text(tags::STUDY_ID),
        study_description: text(tags::STUDY_DESCRIPTION),
        referring_physician_name: person_name(text(tags::REFERRING_PHYSICIAN_NAME)),
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
