//! Coercion of a stored object's patient module to the identity its patient is known
//! by now (a merge, an identifier change, a demographics update: docs/patients.md),
//! for the copy that goes out — the stored object never changes.
//!
//! Only the top-level elements of group 0010 are rewritten: their byte span is found
//! by the framing walk ([`super::framing::offset_of_tag`]), parsed and re-encoded by
//! dicom-object in the object's own transfer syntax and character set (PS3.5 6.1, the
//! data set's SpecificCharacterSet), with PatientID, IssuerOfPatientID, PatientName,
//! PatientBirthDate and PatientSex set; every other byte — the file meta, the rest of
//! the header, the pixel data — is passed through as stored. A group length (0010,0000)
//! is dropped (it would no longer be right; it is optional, PS3.5 7.2).

use super::framing::{offset_of_tag, walk_source, Encoding, Seekable};
use super::part10::read_foreign_meta;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use std::io::Cursor;

/// The patient attributes an object is sent with (DICOM forms: PN, DA, CS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientModule {
    pub patient_id: String,
    pub issuer: String,
    pub patient_name: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
}

/// The most bytes a deflated data set is inflated to for coercion (in memory).
pub const MAX_INFLATED_COERCE: u64 = 256 << 20;

/// Explicit VR Little Endian: the encoding of a deflated data set once inflated (PS3.5
/// A.5).
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// The Part-10 object `bytes` with its patient module set to `patient` (see the module
/// docs). A deflated data set (PS3.5 A.5) is inflated, coerced as the Explicit VR Little
/// Endian it is, and deflated again (its file meta stays as stored). Errors: not
/// Part-10, an unknown transfer syntax, a malformed group 0010, a deflated data set
/// that inflates beyond [`MAX_INFLATED_COERCE`].
pub fn coerce_part10(bytes: &[u8], patient: &PatientModule) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    let meta = read_foreign_meta(bytes).map_err(|e| e.to_string())?;
    let ts_uid = meta.transfer_syntax_uid.trim_end_matches('\0').trim();
    let mut out = bytes[..meta.dataset_offset].to_vec();
    let dataset = &bytes[meta.dataset_offset..];
    if Encoding::is_deflated(ts_uid) {
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(dataset)
            .take(MAX_INFLATED_COERCE + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| format!("the deflated data set cannot be inflated: {e}"))?;
        if inflated.len() as u64 > MAX_INFLATED_COERCE {
            return Err(format!(
                "the deflated data set inflates beyond {MAX_INFLATED_COERCE} bytes"
            ));
        }
        let coerced = coerce_dataset(&inflated, EXPLICIT_VR_LE, patient)?;
        let mut deflate = flate2::write::DeflateEncoder::new(out, flate2::Compression::default());
        deflate
            .write_all(&coerced)
            .map_err(|e| format!("deflate: {e}"))?;
        return deflate.finish().map_err(|e| format!("deflate: {e}"));
    }
    out.extend_from_slice(&coerce_dataset(dataset, ts_uid, patient)?);
    Ok(out)
}

/// The data set `dataset` (encoded in `ts_uid`, not deflated) with its top-level group
/// 0010 re-encoded with `patient`'s values; every other byte as it was.
fn coerce_dataset(
    dataset: &[u8],
    ts_uid: &str,
    patient: &PatientModule,
) -> Result<Vec<u8>, String> {
    let enc = Encoding::of_transfer_syntax(ts_uid)
        .ok_or_else(|| format!("unknown transfer syntax {ts_uid}"))?;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| format!("unknown transfer syntax {ts_uid}"))?;
    let offset = |tag: u32| -> Result<usize, String> {
        let (source, start) = Seekable::new(Cursor::new(dataset), 0).map_err(|e| e.to_string())?;
        Ok(offset_of_tag(source, start, enc, tag)? as usize)
    };
    let (from, to) = (offset(0x0010_0000)?, offset(0x0011_0000)?);
    // the character set the data set declares (it precedes group 0010)
    let (source, start) =
        Seekable::new(Cursor::new(&dataset[..from]), 0).map_err(|e| e.to_string())?;
    let declared = walk_source(source, start, enc, &[0x0008_0005])?;
    let charset = declared
        .get(&0x0008_0005)
        .and_then(|v| {
            let text = String::from_utf8_lossy(v);
            // the set of the first value applies to the group's values (PS3.3 C.12.1.1.2)
            let first = text.split('\\').next().unwrap_or("").trim().to_string();
            SpecificCharacterSet::from_code(&first)
        })
        .unwrap_or_default();
    // without a SpecificCharacterSet the default repertoire (ASCII) is all a value may use
    let declared_none = !declared.contains_key(&0x0008_0005);
    let non_ascii = [
        &patient.patient_id,
        &patient.issuer,
        &patient.patient_name,
        &patient.patient_birth_date,
        &patient.patient_sex,
    ]
    .iter()
    .any(|v| !v.is_ascii());
    let first_try = if declared_none && non_ascii {
        Err("the object declares no SpecificCharacterSet (default repertoire: ASCII)".to_string())
    } else {
        encode_group(&dataset[from..to], ts, &charset, patient)
    };
    let encoded = match first_try {
        Ok(encoded) => encoded,
        // a value the data set's character set cannot carry (an HL7 name in a script the
        // object never declared): sent with those characters as `?` rather than not at
        // all, and said in the log
        Err(e) => {
            let ascii = |s: &str| -> String {
                s.chars()
                    .map(|c| if c.is_ascii() { c } else { '?' })
                    .collect()
            };
            tracing::warn!(error = %e, "patient module: characters outside the object's character set sent as '?'");
            let plain = PatientModule {
                patient_id: ascii(&patient.patient_id),
                issuer: ascii(&patient.issuer),
                patient_name: ascii(&patient.patient_name),
                patient_birth_date: ascii(&patient.patient_birth_date),
                patient_sex: ascii(&patient.patient_sex),
            };
            encode_group(&dataset[from..to], ts, &charset, &plain)?
        }
    };
    let mut out = Vec::with_capacity(dataset.len() + encoded.len());
    out.extend_from_slice(&dataset[..from]);
    out.extend_from_slice(&encoded);
    out.extend_from_slice(&dataset[to..]);
    Ok(out)
}

/// The most header bytes (the data set up to its group 0010's end) read into memory to
/// coerce a large object streamed from its file.
pub const MAX_COERCED_HEAD: u64 = 16 << 20;

/// The coerced head of a stored Part-10 file too large to read whole: `(dataset_start,
/// head, rest_from)` — the file's data set starts at `dataset_start`; `head` is the
/// data set's bytes up to the end of its group 0010 with the patient module set to
/// `patient` ([`coerce_part10`]), standing for the file's bytes from `dataset_start` to
/// `rest_from`; the object as sent is the file's meta group, `head`, then the file from
/// `rest_from` on, as stored (the pixel data is never read here). Errors as
/// [`coerce_part10`], and a header longer than [`MAX_COERCED_HEAD`]. Blocking.
pub fn coerce_file_head(
    path: &std::path::Path,
    patient: &PatientModule,
) -> Result<(u64, Vec<u8>, u64), String> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let (meta, meta_bytes) = super::part10::read_file_meta_blocking(path)?;
    let mut file = std::fs::File::open(path).map_err(io)?;
    let ts_uid = meta.transfer_syntax_uid.trim_end_matches('\0').trim();
    if Encoding::is_deflated(ts_uid) {
        return Err(format!("a deflated data set ({ts_uid}) is not coerced"));
    }
    let enc = Encoding::of_transfer_syntax(ts_uid)
        .ok_or_else(|| format!("unknown transfer syntax {ts_uid}"))?;
    let start = meta.dataset_offset as u64;
    let (source, at) = Seekable::new(std::fs::File::open(path).map_err(io)?, start).map_err(io)?;
    let rest_from = offset_of_tag(source, at, enc, 0x0011_0000)?;
    if rest_from - start > MAX_COERCED_HEAD {
        return Err(format!(
            "its header before group 0011 is {} bytes, more than the {MAX_COERCED_HEAD} coerced in memory",
            rest_from - start
        ));
    }
    // the meta group and the header up to group 0011, coerced as a Part-10 object of its own
    let mut part = meta_bytes;
    part.truncate(meta.dataset_offset);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut header = vec![0u8; (rest_from - start) as usize];
    file.read_exact(&mut header).map_err(io)?;
    part.extend_from_slice(&header);
    let mut coerced = coerce_part10(&part, patient)?;
    let head = coerced.split_off(meta.dataset_offset);
    Ok((start, head, rest_from))
}

/// The top-level group 0010 elements `group` (their bytes, in `ts`), parsed and
/// re-encoded by dicom-object in `charset` with `patient`'s values.
fn encode_group(
    group: &[u8],
    ts: &dicom_encoding::TransferSyntax,
    charset: &SpecificCharacterSet,
    patient: &PatientModule,
) -> Result<Vec<u8>, String> {
    let mut group =
        dicom_object::InMemDicomObject::read_dataset_with_ts_cs(group, ts, charset.clone())
            .map_err(|e| format!("the patient module cannot be read: {e}"))?;
    let text =
        |tag: Tag, vr: VR, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
    group.remove_element(Tag(0x0010, 0x0000));
    group.put(text(tags::PATIENT_ID, VR::LO, &patient.patient_id));
    group.put(text(tags::PATIENT_NAME, VR::PN, &patient.patient_name));
    group.put(text(
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        &patient.patient_birth_date,
    ));
    group.put(text(tags::PATIENT_SEX, VR::CS, &patient.patient_sex));
    if patient.issuer.is_empty() {
        group.remove_element(tags::ISSUER_OF_PATIENT_ID);
    } else {
        group.put(text(tags::ISSUER_OF_PATIENT_ID, VR::LO, &patient.issuer));
    }
    let mut encoded = Vec::new();
    group
        .write_dataset_with_ts_cs(&mut encoded, ts, charset.clone())
        .map_err(|e| format!("the patient module cannot be written: {e}"))?;
    Ok(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    /// The trimmed text of `tag` in a data set read back.
    fn text_of(obj: &dicom_object::DefaultDicomObject, tag: Tag) -> String {
        obj.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_string()
    }

    fn part10(ts: &str, name: &str) -> Vec<u8> {
        let mut obj = InMemDicomObject::new_empty();
        let put = |o: &mut InMemDicomObject, tag, vr, v: &str| {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)))
        };
        put(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
        put(
            &mut obj,
            tags::SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.5.1.4.1.1.7",
        );
        put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4");
        put(&mut obj, tags::PATIENT_NAME, VR::PN, name);
        put(&mut obj, tags::PATIENT_ID, VR::LO, "BOB001");
        put(&mut obj, tags::PATIENT_SEX, VR::CS, "M");
        put(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3");
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(vec![7u8; 64]),
        ));
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(ts)
                    .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
                    .media_storage_sop_instance_uid("1.2.3.4"),
            )
            .unwrap();
        let mut out = Vec::new();
        file.write_all(&mut out).unwrap();
        out
    }

    #[test]
    fn only_the_patient_module_changes_in_each_byte_order_and_charset() {
        let to = PatientModule {
            patient_id: "ALICE-NEW".into(),
            issuer: "HOSPITAL".into(),
            patient_name: "MÜLLER^ANNA".into(),
            patient_birth_date: "19700102".into(),
            patient_sex: "F".into(),
        };
        for ts in [
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.2",
        ] {
            let stored = part10(ts, "SMITH^BOB");
            let sent = coerce_part10(&stored, &to).unwrap();
            // read back with dicom-object: the new identity, the rest as stored
            let obj = dicom_object::from_reader(&sent[128..]).unwrap();
            let s = |tag| text_of(&obj, tag);
            assert_eq!(s(tags::PATIENT_ID), "ALICE-NEW", "{ts}");
            // ISO_IR 100 (Latin-1) as the data set declares (PS3.5 6.1)
            assert_eq!(s(tags::PATIENT_NAME), "MÜLLER^ANNA", "{ts}");
            assert_eq!(s(tags::ISSUER_OF_PATIENT_ID), "HOSPITAL");
            assert_eq!(s(tags::PATIENT_SEX), "F");
            assert_eq!(s(tags::STUDY_INSTANCE_UID), "1.2.3");
            assert_eq!(
                obj.element(tags::PIXEL_DATA)
                    .unwrap()
                    .to_bytes()
                    .unwrap()
                    .as_ref(),
                &[7u8; 64][..]
            );
            // the bytes after group 0010 are the stored ones, unchanged
            let tail = 64 + 12;
            assert_eq!(
                &sent[sent.len() - tail..],
                &stored[stored.len() - tail..],
                "{ts}"
            );
        }
    }

    /// A deflated data set (Deflated Explicit VR Little Endian, PS3.5 A.5) is inflated,
    /// coerced and deflated again: it reads back (dicom-object) with the new identity.
    #[test]
    fn a_deflated_data_set_is_coerced_and_deflated_again() {
        let to = PatientModule {
            patient_id: "ALICE-NEW".into(),
            issuer: String::new(),
            patient_name: "SMITH^ALICE".into(),
            patient_birth_date: String::new(),
            patient_sex: "F".into(),
        };
        let stored = part10("1.2.840.10008.1.2.1.99", "SMITH^BOB");
        let sent = coerce_part10(&stored, &to).unwrap();
        let meta = read_foreign_meta(&sent).unwrap();
        assert_eq!(
            meta.transfer_syntax_uid.trim_end_matches('\0'),
            "1.2.840.10008.1.2.1.99"
        );
        let obj = dicom_object::from_reader(&sent[128..]).unwrap();
        let s = |tag| text_of(&obj, tag);
        assert_eq!(s(tags::PATIENT_ID), "ALICE-NEW");
        assert_eq!(s(tags::PATIENT_NAME), "SMITH^ALICE");
        assert_eq!(s(tags::STUDY_INSTANCE_UID), "1.2.3");
    }

    #[test]
    fn a_name_the_objects_character_set_cannot_carry_goes_as_question_marks() {
        let to = PatientModule {
            patient_id: "P1".into(),
            issuer: String::new(),
            patient_name: "WIŚNIEWSKA^ANNA".into(),
            patient_birth_date: String::new(),
            patient_sex: "F".into(),
        };
        // ISO_IR 100 (Latin-1) has no Ś: the retrieval still goes, with '?'
        let sent = coerce_part10(&part10("1.2.840.10008.1.2.1", "SMITH^BOB"), &to).unwrap();
        let obj = dicom_object::from_reader(&sent[128..]).unwrap();
        let name = obj
            .element(tags::PATIENT_NAME)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(name, "WI?NIEWSKA^ANNA");
    }
}
