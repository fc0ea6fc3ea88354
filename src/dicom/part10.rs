//! # The stored object format (format version 1)
//!
//! Every object Strata stores is a DICOM Part-10 file whose bytes are a pure function of
//! (SOP Class UID, SOP Instance UID, Transfer Syntax UID, dataset bytes as received):
//!
//! ```text
//! 128 zero bytes | "DICM" | file meta group (explicit VR little endian) | dataset bytes
//! ```
//!
//! The file meta group holds exactly these elements, in this order, each UI value padded
//! to even length with one NUL byte when odd:
//!
//! | tag | VR | value |
//! |---|---|---|
//! | (0002,0000) | UL | byte length of the following meta elements |
//! | (0002,0001) | OB | `00 01` |
//! | (0002,0002) | UI | SOP Class UID |
//! | (0002,0003) | UI | SOP Instance UID |
//! | (0002,0010) | UI | Transfer Syntax UID of the dataset |
//! | (0002,0012) | UI | [`IMPLEMENTATION_CLASS_UID`] (fixed) |
//! | (0002,0013) | SH | [`IMPLEMENTATION_VERSION_NAME`] = `STRATA_1` (format version 1) |
//!
//! No receive time, sender AE or other per-transfer value is written: those are
//! provenance and go to the index. So identical datasets sent twice produce identical
//! bytes, and the object id (the blake3 of these bytes) deduplicates them. `b3sum` of an
//! exported file equals its id. `docs/formats.md` repeats this for auditors.

use std::fmt;

/// Fixed implementation class UID written in every stored object's meta group.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.305828014042125329152440386003154178089";
/// Implementation version name; the suffix is the object format version.
pub const IMPLEMENTATION_VERSION_NAME: &str = "STRATA_1";

/// The preamble, magic and meta group for an object (everything before the dataset).
pub fn object_prefix(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax_uid: &str,
) -> Vec<u8> {
    let mut meta = Vec::with_capacity(256);
    put_element(&mut meta, 0x0001, b"OB", &[0x00, 0x01]);
    put_element(&mut meta, 0x0002, b"UI", &pad_uid(sop_class_uid));
    put_element(&mut meta, 0x0003, b"UI", &pad_uid(sop_instance_uid));
    put_element(&mut meta, 0x0010, b"UI", &pad_uid(transfer_syntax_uid));
    put_element(&mut meta, 0x0012, b"UI", &pad_uid(IMPLEMENTATION_CLASS_UID));
    put_element(
        &mut meta,
        0x0013,
        b"SH",
        IMPLEMENTATION_VERSION_NAME.as_bytes(),
    );

    let mut out = Vec::with_capacity(132 + 12 + meta.len());
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    put_element(&mut out, 0x0000, b"UL", &(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out
}

fn pad_uid(uid: &str) -> Vec<u8> {
    let mut v = uid.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

fn put_element(out: &mut Vec<u8>, element: u16, vr: &[u8; 2], value: &[u8]) {
    out.extend_from_slice(&0x0002u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    if long_length_vr(vr) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
}

/// VRs whose explicit-VR length field is 4 bytes (after 2 reserved bytes), PS3.5 7.1.2.
pub(crate) fn long_length_vr(vr: &[u8; 2]) -> bool {
    matches!(
        vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

/// What the meta group of a foreign Part-10 file says, and where its dataset starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignMeta {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub dataset_offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaError {
    NotPart10,
    Truncated,
    Missing(&'static str),
    BadValue(&'static str),
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::NotPart10 => {
                f.write_str("not a DICOM Part-10 file (no \"DICM\" after a 128-byte preamble)")
            }
            MetaError::Truncated => f.write_str("file meta group is truncated"),
            MetaError::Missing(what) => write!(f, "file meta group lacks {what}"),
            MetaError::BadValue(what) => write!(f, "file meta group has an invalid {what}"),
        }
    }
}

impl std::error::Error for MetaError {}

/// Reads the meta group of a Part-10 file given (at least) its first bytes. `head` must
/// contain the whole meta group; 64 KiB is always enough for real files.
/// The file meta of the Part-10 file at `path` ([`read_foreign_meta`] on its first 64
/// KiB), and those bytes. Blocking. The error says what was wrong, with the path.
pub fn read_file_meta_blocking(path: &std::path::Path) -> Result<(ForeignMeta, Vec<u8>), String> {
    use std::io::Read;
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut head = vec![0u8; 64 * 1024];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(io)? {
            0 => break,
            n => filled += n,
        }
    }
    head.truncate(filled);
    let meta = read_foreign_meta(&head).map_err(|e| {
        format!(
            "{}: stored object without a meta group: {e}",
            path.display()
        )
    })?;
    Ok((meta, head))
}

pub fn read_foreign_meta(head: &[u8]) -> Result<ForeignMeta, MetaError> {
    if head.len() < 132 || &head[128..132] != b"DICM" {
        return Err(MetaError::NotPart10);
    }
    let mut pos = 132;
    let (mut class, mut instance, mut ts) = (None, None, None);
    // With a group length (0002,0000), the meta group ends exactly where it says: group
    // 0002 elements after it belong to the dataset (and are refused there), not here.
    let mut meta_end = None;
    loop {
        if pos == head.len() || meta_end == Some(pos) {
            break; // meta group ends the input: an empty dataset follows
        }
        if pos + 8 > head.len() {
            return Err(MetaError::Truncated);
        }
        let group = u16::from_le_bytes([head[pos], head[pos + 1]]);
        if group != 0x0002 {
            break;
        }
        let element = u16::from_le_bytes([head[pos + 2], head[pos + 3]]);
        let vr = [head[pos + 4], head[pos + 5]];
        let (len, header) = if long_length_vr(&vr) {
            if pos + 12 > head.len() {
                return Err(MetaError::Truncated);
            }
            (
                u32::from_le_bytes(head[pos + 8..pos + 12].try_into().expect("4 bytes")) as usize,
                12,
            )
        } else {
            (
                u16::from_le_bytes([head[pos + 6], head[pos + 7]]) as usize,
                8,
            )
        };
        let start = pos + header;
        let end = start.checked_add(len).ok_or(MetaError::Truncated)?;
        if end > head.len() {
            return Err(MetaError::Truncated);
        }
        let value = || trim_value(&head[start..end]);
        if element == 0x0000 && pos == 132 && len == 4 {
            let group_len =
                u32::from_le_bytes(head[start..end].try_into().expect("4 bytes")) as usize;
            meta_end = Some(
                end.checked_add(group_len)
                    .ok_or(MetaError::BadValue("group length"))?,
            );
        }
        match element {
            0x0002 => class = Some(value()),
            0x0003 => instance = Some(value()),
            0x0010 => ts = Some(value()),
            _ => {}
        }
        pos = end;
        if meta_end.is_some_and(|e| pos > e) {
            return Err(MetaError::BadValue("group length (0002,0000)"));
        }
    }
    let check = |v: Option<String>, what: &'static str| -> Result<String, MetaError> {
        let v = v.ok_or(MetaError::Missing(what))?;
        if is_valid_uid(&v) {
            Ok(v)
        } else {
            Err(MetaError::BadValue(what))
        }
    };
    Ok(ForeignMeta {
        sop_class_uid: check(class, "MediaStorageSOPClassUID (0002,0002)")?,
        sop_instance_uid: check(instance, "MediaStorageSOPInstanceUID (0002,0003)")?,
        transfer_syntax_uid: check(ts, "TransferSyntaxUID (0002,0010)")?,
        dataset_offset: pos,
    })
}

/// A placeholder SOP Class and Instance UID for a data set read without a file meta
/// group: the object is re-framed under the data set's own UIDs once they are read.
pub const UNKNOWN_UID: &str = "0.0";

/// What a file that is not Part-10 (no preamble and "DICM") holds, when it is a bare data
/// set — as DCMTK, pydicom and older archives write them, and as `storescu` sends them:
/// - a file meta group without the preamble: read as such;
/// - otherwise the transfer syntax is inferred from the first element (PS3.5 §7.1):
///   explicit VR when bytes 4–5 are a VR, else implicit VR little endian; big endian when
///   the first group reads smaller that way (elements are in ascending tag order and a
///   data set starts with a low group, usually 0008).
///
/// Returns meta with [`UNKNOWN_UID`] as SOP UIDs (a bare data set), or `None` when the
/// first element does not look like a data set at all. The framing walk of the whole
/// data set decides afterwards whether it really is one.
pub fn bare_dataset_meta(head: &[u8]) -> Option<ForeignMeta> {
    if head.len() < 8 {
        return None;
    }
    if head[..2] == [0x02, 0x00] && head[4..6].iter().all(u8::is_ascii_uppercase) {
        let mut framed = vec![0u8; 128];
        framed.extend_from_slice(b"DICM");
        framed.extend_from_slice(head);
        return read_foreign_meta(&framed).ok().map(|meta| ForeignMeta {
            dataset_offset: meta.dataset_offset - 132,
            ..meta
        });
    }
    let little = u16::from_le_bytes([head[0], head[1]]);
    let big = u16::from_be_bytes([head[0], head[1]]);
    let plausible = |group: u16| (0x0004..=0x7FE0).contains(&group) && group.is_multiple_of(2);
    let explicit = is_vr(&[head[4], head[5]]);
    // implicit VR: the first value (a short one, in group 0008) lies within the head
    let implicit_len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let transfer_syntax = match (plausible(little), plausible(big)) {
        (true, true) if big < little && explicit => "1.2.840.10008.1.2.2",
        (_, true) if !plausible(little) && explicit => "1.2.840.10008.1.2.2",
        (true, _) if explicit => "1.2.840.10008.1.2.1",
        (true, _) if implicit_len <= head.len() - 8 => "1.2.840.10008.1.2",
        _ => return None,
    };
    Some(ForeignMeta {
        sop_class_uid: UNKNOWN_UID.into(),
        sop_instance_uid: UNKNOWN_UID.into(),
        transfer_syntax_uid: transfer_syntax.into(),
        dataset_offset: 0,
    })
}

/// Whether two bytes are a VR of PS3.5 §6.2.
fn is_vr(vr: &[u8; 2]) -> bool {
    matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SQ"
            | b"SS"
            | b"ST"
            | b"SV"
            | b"TM"
            | b"UC"
            | b"UI"
            | b"UL"
            | b"UN"
            | b"UR"
            | b"US"
            | b"UT"
            | b"UV"
    )
}

/// Strips the trailing NUL/space padding of a DICOM string value.
pub fn trim_value(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}

/// A syntactically valid UID: 1–64 characters of digits and dots, no empty component.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !uid.split('.').any(|c| c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_deterministic_and_reads_back() {
        let a = object_prefix(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4.5",
            "1.2.840.10008.1.2.1",
        );
        let b = object_prefix(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4.5",
            "1.2.840.10008.1.2.1",
        );
        assert_eq!(a, b);
        let meta = read_foreign_meta(&a).unwrap();
        assert_eq!(meta.sop_class_uid, "1.2.840.10008.5.1.4.1.1.2");
        assert_eq!(meta.sop_instance_uid, "1.2.3.4.5");
        assert_eq!(meta.transfer_syntax_uid, "1.2.840.10008.1.2.1");
        assert_eq!(meta.dataset_offset, a.len());
        // group length covers exactly the following meta elements
        let group_len = u32::from_le_bytes(a[140..144].try_into().unwrap()) as usize;
        assert_eq!(144 + group_len, a.len());
    }

    #[test]
    fn meta_is_parsed_by_dicom_rs_too() {
        let mut bytes = object_prefix("1.2.840.10008.5.1.4.1.1.7", "1.2.3", "1.2.840.10008.1.2");
        // a tiny implicit VR LE dataset: SOPInstanceUID (0008,0018) = "1.2.3" + pad
        bytes.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, 6, 0, 0, 0]);
        bytes.extend_from_slice(b"1.2.3\0");
        let obj = dicom_object::from_reader(&bytes[128..]).unwrap();
        assert_eq!(obj.meta().media_storage_sop_instance_uid(), "1.2.3");
        assert_eq!(obj.meta().transfer_syntax(), "1.2.840.10008.1.2");
        assert_eq!(
            obj.meta().implementation_version_name.as_deref(),
            Some(IMPLEMENTATION_VERSION_NAME)
        );
    }

    #[test]
    fn group_length_bounds_the_meta_group() {
        let mut bytes = object_prefix("1.2.840.10008.5.1.4.1.1.7", "1.2.3", "1.2.840.10008.1.2.1");
        let prefix_len = bytes.len();
        // a dataset that (wrongly) starts with a group 0002 element
        bytes.extend_from_slice(&[
            0x02, 0x00, 0x10, 0x00, b'U', b'I', 4, 0, b'1', b'.', b'2', 0,
        ]);
        let meta = read_foreign_meta(&bytes).unwrap();
        assert_eq!(meta.dataset_offset, prefix_len);
        assert_eq!(meta.transfer_syntax_uid, "1.2.840.10008.1.2.1");
    }

    #[test]
    fn rejects_non_part10_and_truncation() {
        assert_eq!(read_foreign_meta(b"garbage"), Err(MetaError::NotPart10));
        let a = object_prefix("1.2", "1.3", "1.2.840.10008.1.2");
        assert_eq!(read_foreign_meta(&a[..150]), Err(MetaError::Truncated));
    }

    #[test]
    fn uid_syntax() {
        assert!(is_valid_uid("1.2.840.10008.1.2"));
        assert!(!is_valid_uid(""));
        assert!(!is_valid_uid("1..2"));
        assert!(!is_valid_uid("../etc"));
        assert!(!is_valid_uid(&"1".repeat(65)));
    }

    /// Bare data sets (no preamble, no file meta), PS3.5 §7.1: the transfer syntax is
    /// inferred from the first element; text is not a data set.
    #[test]
    fn bare_data_sets_are_recognised_by_their_first_element() {
        // (0008,0005) CS "ISO_IR 100" in explicit VR LE, explicit VR BE, implicit VR LE
        let explicit_le = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100";
        let explicit_be = b"\x00\x08\x00\x05CS\x00\x0aISO_IR 100";
        let implicit_le = b"\x08\x00\x05\x00\x0a\x00\x00\x00ISO_IR 100";
        for (bytes, ts) in [
            (&explicit_le[..], "1.2.840.10008.1.2.1"),
            (&explicit_be[..], "1.2.840.10008.1.2.2"),
            (&implicit_le[..], "1.2.840.10008.1.2"),
        ] {
            let meta = bare_dataset_meta(bytes).expect("a bare data set");
            assert_eq!(meta.transfer_syntax_uid, ts);
            assert_eq!(meta.sop_instance_uid, UNKNOWN_UID);
            assert_eq!(meta.dataset_offset, 0);
        }
        assert!(bare_dataset_meta(b"Test Files used in pydicom").is_none());
        assert!(bare_dataset_meta(b"\x01\x00").is_none());
    }
}
