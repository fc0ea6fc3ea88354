//! Converting a stored object's data set to another transfer syntax, for a receiver
//! that does not take it as stored (C-MOVE, C-GET, WADO-RS): native syntaxes re-encoded
//! among themselves and deflate inflated (dicom-object), encapsulated ones decompressed
//! to a native syntax (dicom-pixeldata's `Transcode` with the registry's codecs). Never
//! compresses. Works on the whole object in memory.

use super::part10::read_foreign_meta;

/// The native transfer syntaxes: explicit VR little endian, implicit VR little endian,
/// explicit VR big endian (retired).
pub const NATIVE: [&str; 3] = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
];

/// Whether objects stored in `uid` can be sent in a native syntax: native already, or
/// encapsulated in a syntax whose pixel data the registry's codecs decode (dicom-rs
/// `dicom-transfer-syntax-registry`: JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000,
/// RLE). Video (MPEG, HEVC) and other syntaxes are sent only as stored.
pub fn convertible_to_native(uid: &str) -> bool {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    NATIVE.contains(&uid)
        || crate::dicom::framing::Encoding::is_deflated(uid)
        || dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(uid)
            .is_some_and(|ts| ts.is_encapsulated_pixel_data() && ts.can_decode_all())
}

/// Returns a stored object's data set (`bytes`: its Part-10 file, stored in
/// `stored_syntax`) in `target` syntax: verbatim when it is the
/// stored one, re-encoded when both are native, decompressed (dicom-pixeldata's
/// `Transcode`, with the registry's codecs) when the stored syntax is encapsulated and
/// decodable and the target native; else an error saying why.
pub fn dataset_in(bytes: Vec<u8>, stored_syntax: &str, target: &str) -> Result<Vec<u8>, String> {
    let meta = read_foreign_meta(&bytes).map_err(|e| e.to_string())?;
    let dataset = &bytes[meta.dataset_offset..];
    if target == stored_syntax {
        return Ok(dataset.to_vec());
    }
    if !(NATIVE.contains(&target) && convertible_to_native(stored_syntax)) {
        return Err(format!(
            "cannot convert {} to {target}: only native syntaxes, and JPEG, JPEG-LS, JPEG 2000 \
             and RLE to native ones, are converted",
            stored_syntax
        ));
    }
    // deflated (PS3.5 A.5): inflated (RFC 1951) to the explicit VR LE it wraps, capped
    let inflated;
    let (dataset, stored) = if crate::dicom::framing::Encoding::is_deflated(stored_syntax) {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(dataset)
            .take(crate::dicom::framing::MAX_INFLATED + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot inflate the stored data set: {e}"))?;
        if out.len() as u64 > crate::dicom::framing::MAX_INFLATED {
            return Err("the inflated data set is too large".into());
        }
        inflated = out;
        (&inflated[..], "1.2.840.10008.1.2.1")
    } else {
        (dataset, stored_syntax)
    };
    if !NATIVE.contains(&stored) {
        return decompress_blocking(&bytes, stored_syntax, target);
    }
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let from = registry.get(stored).ok_or("unknown stored syntax")?;
    let to = registry.get(target).ok_or("unknown target syntax")?;
    let mut obj = dicom_object::InMemDicomObject::read_dataset_with_ts(dataset, from)
        .map_err(|e| e.to_string())?;
    if to.uid() != "1.2.840.10008.1.2" {
        values_too_long_become_un(&mut obj);
    }
    let mut out = Vec::with_capacity(dataset.len());
    obj.write_dataset_with_ts(&mut out, to)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// In explicit VR, a value longer than its VR's 16-bit length field allows (a DS of
/// 79 KB in an RT Dose's DVH Data, fine in implicit VR) is sent as UN, whose length field
/// is 32-bit (PS3.5 §6.2.2): its bytes as they would be encoded, little endian.
fn values_too_long_become_un(obj: &mut dicom_object::InMemDicomObject) {
    use dicom_core::header::Header;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    let short =
        |vr: VR| !super::part10::long_length_vr(&vr.to_bytes()) && !matches!(vr, VR::SQ | VR::UN);
    let too_long: Vec<(dicom_core::Tag, Vec<u8>)> = obj
        .iter()
        .filter(|e| short(e.vr()))
        .filter_map(|e| {
            let le = |v: &[u8]| v.to_vec();
            let bytes = match e.value().primitive()? {
                PrimitiveValue::Str(_) | PrimitiveValue::Strs(_) => {
                    e.value().to_str().ok()?.as_bytes().to_vec()
                }
                PrimitiveValue::U8(v) => le(v),
                PrimitiveValue::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                PrimitiveValue::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                PrimitiveValue::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                PrimitiveValue::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                PrimitiveValue::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                PrimitiveValue::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                PrimitiveValue::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                PrimitiveValue::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                PrimitiveValue::Tags(v) => v
                    .iter()
                    .flat_map(|t| [t.group().to_le_bytes(), t.element().to_le_bytes()])
                    .flatten()
                    .collect(),
                // dates and times are text (only parsed values carry these variants)
                _ => e.value().to_str().ok()?.as_bytes().to_vec(),
            };
            (bytes.len() > 0xFFFE).then(|| (e.tag(), bytes))
        })
        .collect();
    for (tag, mut bytes) in too_long {
        if bytes.len() % 2 == 1 {
            bytes.push(b' ');
        }
        obj.put(DataElement::new(
            tag,
            VR::UN,
            PrimitiveValue::U8(bytes.into()),
        ));
    }
    // and in the items of every sequence, at any depth
    let sequences: Vec<(dicom_core::Tag, Vec<dicom_object::InMemDicomObject>)> = obj
        .iter()
        .filter_map(|e| e.items().map(|items| (e.tag(), items.to_vec())))
        .collect();
    for (tag, mut items) in sequences {
        for item in &mut items {
            values_too_long_become_un(item);
        }
        obj.put(DataElement::new(
            tag,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(items),
        ));
    }
}

/// An encapsulated object's data set decoded to the native syntax `target`, with
/// dicom-pixeldata's `Transcode` (which also sets PhotometricInterpretation and the pixel
/// attributes to what the decoder produced). Holds the object and its decoded pixels in
/// memory: compressed objects only, where the receiver cannot take them as stored.
fn decompress_blocking(part10: &[u8], stored: &str, target: &str) -> Result<Vec<u8>, String> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    use dicom_pixeldata::Transcode;
    let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let to = registry.get(target).ok_or("unknown target syntax")?;
    if part10.len() < 132 {
        return Err("not a Part-10 object".into());
    }
    let mut obj = dicom_object::OpenFileOptions::new()
        .from_reader(&part10[128..])
        .map_err(|e| format!("cannot parse the stored object: {e}"))?;
    obj.transcode(to)
        .map_err(|e| format!("cannot decompress {stored} to {target}: {e}"))?;
    // as for native objects: in explicit VR, a value too long for its 16-bit length goes
    // as UN (PS3.5 6.2.2)
    if to.uid() != "1.2.840.10008.1.2" {
        values_too_long_become_un(&mut obj);
    }
    let mut out = Vec::with_capacity(part10.len() * 2);
    obj.write_dataset_with_ts(&mut out, to)
        .map_err(|e| e.to_string())?;
    Ok(out)
}
