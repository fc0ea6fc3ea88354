//! A structural check of a dataset's framing: every element header is read and every
//! value skipped by its length — values are never decoded — so a truncated or mangled
//! dataset is refused even though indexing parses only the header. Costs a few reads
//! and seeks per object, whatever its size.
//!
//! Handles explicit and implicit VR little endian and explicit VR big endian, defined-
//! and undefined-length sequences and items, and encapsulated pixel data. A deflated
//! data set is walked through a streaming inflater with a cap on the inflated size
//! ([`MAX_INFLATED`]), so a deflate bomb costs bounded time and no memory.
//!
//! The same walk, reading values instead of skipping them, computes an object's
//! *data-set hash* ([`dataset_hash_source`]): a hash of what the data set says, not of
//! how it is encoded, so that one instance re-encoded by another path (explicit or
//! implicit VR, big endian, deflate, group lengths, defined or undefined lengths, string
//! padding, trailing padding) is recognised as the same. Its exact definition, for
//! auditors, is in `docs/formats.md` ("Data-set hash"). It streams: bounded memory for
//! objects of any size.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Seek};

/// Largest inflated size of a deflated data set.
pub const MAX_INFLATED: u64 = 1 << 30;

/// Where a data set is read from: a file that can skip by seeking (and knows its length),
/// or a stream that skips by reading.
pub trait Source: Read {
    /// Skips `n` bytes; an error if fewer remain.
    fn skip(&mut self, n: u64) -> std::io::Result<()>;
    /// The number of bytes from the start of the data set, when known.
    fn known_len(&self) -> Option<u64>;
}

impl<S: Source + ?Sized> Source for Box<S> {
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        (**self).skip(n)
    }
    fn known_len(&self) -> Option<u64> {
        (**self).known_len()
    }
}

/// A seekable source (a stored object on disk).
pub struct Seekable<R> {
    r: BufReader<R>,
    len: u64,
}

impl<R: Read + Seek> Seekable<R> {
    /// Positions `reader` at `start`; the source ends where the reader ends.
    pub fn new(mut reader: R, start: u64) -> std::io::Result<(Self, u64)> {
        let len = reader.seek(std::io::SeekFrom::End(0))?;
        reader.seek(std::io::SeekFrom::Start(start))?;
        Ok((
            Seekable {
                r: BufReader::with_capacity(16 * 1024, reader),
                len,
            },
            start,
        ))
    }
}

impl<R: Read> Read for Seekable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(buf)
    }
}

impl<R: Read + Seek> Source for Seekable<R> {
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        self.r.seek_relative(n as i64)
    }
    fn known_len(&self) -> Option<u64> {
        Some(self.len)
    }
}

/// A stream (an inflating reader); skipping reads and discards.
pub struct Streamed<R>(pub R);

impl<R: Read> Read for Streamed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Source for Streamed<R> {
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut (&mut self.0).take(n), &mut std::io::sink())?;
        if copied < n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
    fn known_len(&self) -> Option<u64> {
        None
    }
}

const ITEM: u32 = 0xFFFE_E000;
const ITEM_END: u32 = 0xFFFE_E00D;
const SEQUENCE_END: u32 = 0xFFFE_E0DD;
const UNDEFINED: u32 = 0xFFFF_FFFF;
const MAX_DEPTH: usize = 64;
/// DataSetTrailingPadding (FFFC,FFFC), PS3.5 §7.8.1.
const TRAILING_PADDING: u32 = 0xFFFC_FFFC;
/// Textual values up to this length are trimmed of their padding for the data-set hash;
/// longer ones (never seen in practice) are hashed as they are.
const MAX_TRIMMED: u32 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    ExplicitLittle,
    ImplicitLittle,
    ExplicitBig,
}

impl Encoding {
    /// Whether the data set of this transfer syntax is deflated (RFC 1951): Deflated
    /// Explicit VR Little Endian and the JPIP Referenced Deflate syntaxes (PS3.5 A.5,
    /// A.6). A test checks the list against dicom-rs's registry.
    pub fn is_deflated(uid: &str) -> bool {
        matches!(
            uid,
            "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" | "1.2.840.10008.1.2.4.205"
        )
    }

    /// The encoding of a transfer syntax's dataset (after inflating, for deflated ones),
    /// or `None` when the syntax is unknown.
    pub fn of_transfer_syntax(uid: &str) -> Option<Encoding> {
        match uid {
            "1.2.840.10008.1.2" => Some(Encoding::ImplicitLittle),
            "1.2.840.10008.1.2.2" => Some(Encoding::ExplicitBig),
            // deflated: walked after inflating, as explicit VR LE (see `is_deflated`)
            uid if Encoding::is_deflated(uid) => Some(Encoding::ExplicitLittle),
            // every other standard syntax (native explicit LE, JPEG family, JPEG-LS,
            // JPEG 2000, RLE, video, ...) encodes the dataset as explicit VR LE
            _ if uid.starts_with("1.2.840.10008.1.2") => Some(Encoding::ExplicitLittle),
            _ => None,
        }
    }
}

struct Walker<'c, S> {
    r: S,
    pos: u64,
    /// Absolute end offset, when the source knows it.
    len: Option<u64>,
    enc: Encoding,
    /// Top-level tags whose values are kept (at most [`MAX_CAPTURED`] bytes each).
    wanted: &'c [u32],
    captured: BTreeMap<u32, Vec<u8>>,
    /// Capture every top-level element with a defined length (identifiers), and its VR.
    keep_all: bool,
    vrs: BTreeMap<u32, [u8; 2]>,
    /// The data-set hash being computed, when walking for it.
    canon: Option<blake3::Hasher>,
    /// When set, the walk stops at the first top-level element whose tag is at least
    /// this, recording where that element starts in `stopped_at`.
    stop_at: Option<u32>,
    stopped_at: Option<u64>,
}

/// How a value enters the data-set hash, by its VR (PS3.5 §6.2).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// Character strings: trailing spaces and NULs are padding (PS3.5 §6.2), trimmed.
    Text,
    /// Binary numbers of this width: byte-swapped to little endian when big endian.
    Numbers(usize),
    /// Bytes as they are (OB, UN, private elements, VRs the walk cannot know).
    Bytes,
    Sequence,
}

impl ValueKind {
    fn of_vr(vr: &[u8; 2]) -> ValueKind {
        match vr {
            b"AE" | b"AS" | b"CS" | b"DA" | b"DS" | b"DT" | b"IS" | b"LO" | b"LT" | b"PN"
            | b"SH" | b"ST" | b"TM" | b"UC" | b"UI" | b"UR" | b"UT" => ValueKind::Text,
            b"US" | b"SS" | b"OW" | b"AT" => ValueKind::Numbers(2),
            b"UL" | b"SL" | b"FL" | b"OL" | b"OF" => ValueKind::Numbers(4),
            b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => ValueKind::Numbers(8),
            b"SQ" => ValueKind::Sequence,
            _ => ValueKind::Bytes,
        }
    }

    /// For implicit VR: the VR the standard dictionary gives the tag (dicom-dictionary-std);
    /// private and unknown tags are bytes.
    fn of_tag(tag: u32) -> ValueKind {
        use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
        let tag = dicom_core::Tag((tag >> 16) as u16, tag as u16);
        match dicom_dictionary_std::StandardDataDictionary.by_tag(tag) {
            Some(entry) => match entry.vr() {
                VirtualVr::Exact(vr) => ValueKind::of_vr(&vr.to_bytes()),
                VirtualVr::Xs => ValueKind::Numbers(2),
                _ => ValueKind::Bytes,
            },
            None => ValueKind::Bytes,
        }
    }
}

/// Longest value captured; longer values of wanted tags are an error.
pub const MAX_CAPTURED: u32 = 4096;

type Res<T> = Result<T, String>;

/// A failed read, said as the walk sees it: the data set ends early, or the source fails.
fn read_error(e: &std::io::Error, pos: u64) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => format!("dataset truncated at byte {pos}"),
        _ => format!("read failed at byte {pos}: {e}"),
    }
}

impl<'c, S: Source> Walker<'c, S> {
    /// A walk of `source` (first byte at offset `start`) capturing the `wanted` top-level
    /// values.
    fn new(source: S, start: u64, enc: Encoding, wanted: &'c [u32]) -> Self {
        Walker {
            len: source.known_len(),
            r: source,
            pos: start,
            enc,
            wanted,
            captured: BTreeMap::new(),
            keep_all: false,
            vrs: BTreeMap::new(),
            canon: None,
            stop_at: None,
            stopped_at: None,
        }
    }

    fn bytes<const N: usize>(&mut self) -> Res<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| read_error(&e, self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u16(&mut self) -> Res<u16> {
        let b = self.bytes::<2>()?;
        Ok(match self.enc {
            Encoding::ExplicitBig => u16::from_be_bytes(b),
            _ => u16::from_le_bytes(b),
        })
    }

    fn u32(&mut self) -> Res<u32> {
        let b = self.bytes::<4>()?;
        Ok(match self.enc {
            Encoding::ExplicitBig => u32::from_be_bytes(b),
            _ => u32::from_le_bytes(b),
        })
    }

    fn tag(&mut self) -> Res<u32> {
        let g = self.u16()? as u32;
        let e = self.u16()? as u32;
        Ok((g << 16) | e)
    }

    /// The next tag, or `None` at a clean end of input (nothing left at all).
    fn tag_or_end(&mut self) -> Res<Option<u32>> {
        let mut first = [0u8; 1];
        loop {
            match self.r.read(&mut first) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read failed at byte {}: {e}", self.pos)),
            }
        }
        let mut rest = [0u8; 3];
        self.r
            .read_exact(&mut rest)
            .map_err(|e| read_error(&e, self.pos))?;
        self.pos += 4;
        let b = [first[0], rest[0], rest[1], rest[2]];
        let (g, e) = match self.enc {
            Encoding::ExplicitBig => (
                u16::from_be_bytes([b[0], b[1]]),
                u16::from_be_bytes([b[2], b[3]]),
            ),
            _ => (
                u16::from_le_bytes([b[0], b[1]]),
                u16::from_le_bytes([b[2], b[3]]),
            ),
        };
        Ok(Some(((g as u32) << 16) | e as u32))
    }

    /// Refuses a value of `n` bytes that would run past the end of a source of known length.
    fn check_room(&self, n: u64) -> Res<()> {
        match self.len {
            Some(len) if self.pos + n > len => Err(format!(
                "value of {n} bytes at byte {} runs past the end of the dataset ({len} bytes)",
                self.pos
            )),
            _ => Ok(()),
        }
    }

    fn skip(&mut self, n: u32) -> Res<()> {
        let n = n as u64;
        self.check_room(n)?;
        self.r.skip(n).map_err(|e| {
            format!(
                "value of {n} bytes at byte {} cannot be skipped: {e}",
                self.pos
            )
        })?;
        self.pos += n;
        Ok(())
    }

    /// Feeds a structural token into the data-set hash, if one is being computed.
    fn token(&mut self, bytes: &[u8]) {
        if let Some(h) = self.canon.as_mut() {
            h.update(bytes);
        }
    }

    /// Reads a value of `len` bytes into the data-set hash as `'V'`, its normalised length
    /// (u64 LE) and the BLAKE3 hash of its normalised bytes (see [`ValueKind`]).
    fn hash_value(&mut self, kind: ValueKind, len: u32) -> Res<()> {
        self.check_room(len as u64)?;
        let mut value = blake3::Hasher::new();
        let normalised_len = if kind == ValueKind::Text && len <= MAX_TRIMMED {
            let mut bytes = vec![0u8; len as usize];
            self.r
                .read_exact(&mut bytes)
                .map_err(|e| read_error(&e, self.pos))?;
            let kept = bytes
                .iter()
                .rposition(|b| !matches!(b, b' ' | 0))
                .map_or(0, |i| i + 1);
            value.update(&bytes[..kept]);
            kept as u64
        } else {
            let swap = match kind {
                ValueKind::Numbers(width) if self.enc == Encoding::ExplicitBig => width,
                _ => 1,
            };
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = len as usize;
            while left > 0 {
                let n = left.min(buf.len());
                self.r
                    .read_exact(&mut buf[..n])
                    .map_err(|e| read_error(&e, self.pos))?;
                if swap > 1 {
                    for word in buf[..n].chunks_mut(swap) {
                        word.reverse();
                    }
                }
                value.update(&buf[..n]);
                left -= n;
            }
            len as u64
        };
        self.pos += len as u64;
        self.token(b"V");
        self.token(&normalised_len.to_le_bytes());
        self.token(value.finalize().as_bytes());
        Ok(())
    }

    /// Walks elements until the end (`end` = None at top level), a defined end offset,
    /// or an item delimiter.
    fn elements(&mut self, end: Option<u64>, depth: usize) -> Res<()> {
        if depth > MAX_DEPTH {
            return Err("sequences nested too deeply".into());
        }
        loop {
            match end {
                Some(e) if self.pos == e => return Ok(()),
                Some(e) if self.pos > e => {
                    return Err(format!("item overruns its length at byte {}", self.pos))
                }
                _ => {}
            }
            // Only the top level may simply end; inside an undefined-length item the
            // input must go on to the item delimiter.
            let tag = if depth == 0 && end.is_none() {
                match self.tag_or_end()? {
                    Some(tag) => tag,
                    None => return Ok(()),
                }
            } else {
                self.tag()?
            };
            if depth == 0 && self.stop_at.is_some_and(|stop| tag >= stop) {
                self.stopped_at = Some(self.pos - 4);
                return Ok(());
            }
            if depth == 0 && matches!(tag >> 16, 0x0000 | 0x0002) {
                return Err(format!(
                    "command or file meta element ({tag:08X}) inside the data set"
                ));
            }
            if tag == ITEM_END {
                self.u32()?;
                return if end.is_none() && depth > 0 {
                    Ok(())
                } else {
                    Err(format!("unexpected item delimiter at byte {}", self.pos))
                };
            }
            let (vr, len) = match self.enc {
                Encoding::ImplicitLittle => (None, self.u32()?),
                _ => {
                    let vr = self.bytes::<2>()?;
                    let long = super::part10::long_length_vr(&vr);
                    let len = if long {
                        self.bytes::<2>()?;
                        self.u32()?
                    } else {
                        self.u16()? as u32
                    };
                    (Some(vr), len)
                }
            };
            // group lengths (gggg,0000) and trailing padding say nothing about the data
            // set; everything else enters the data-set hash under its tag
            let hashed = self.canon.is_some() && tag & 0xFFFF != 0 && tag != TRAILING_PADDING;
            if hashed {
                self.token(&tag.to_le_bytes());
            }
            if len != UNDEFINED && hashed {
                let kind = match vr {
                    Some(vr) => ValueKind::of_vr(&vr),
                    None => ValueKind::of_tag(tag),
                };
                // private elements (odd groups): their bytes as encoded, whatever their
                // VR, which implicit VR does not carry; private sequences stay sequences
                let kind = match kind {
                    ValueKind::Text | ValueKind::Numbers(_) if (tag >> 16) % 2 == 1 => {
                        ValueKind::Bytes
                    }
                    kind => kind,
                };
                if kind == ValueKind::Sequence {
                    self.token(b"S");
                    let stop = self.pos + len as u64;
                    self.items(Some(stop), depth + 1)?;
                    self.token(b"E");
                } else {
                    self.hash_value(kind, len)?;
                }
                continue;
            }
            if len != UNDEFINED {
                let keep = depth == 0
                    && (self.keep_all && vr != Some(*b"SQ") || self.wanted.contains(&tag));
                if keep {
                    if let Some(vr) = vr {
                        self.vrs.insert(tag, vr);
                    }
                    if self.captured.contains_key(&tag) {
                        return Err(format!("element ({tag:08X}) occurs twice"));
                    }
                    let cap = if self.keep_all {
                        64 * 1024
                    } else {
                        MAX_CAPTURED
                    };
                    if len > cap {
                        return Err(format!("element ({tag:08X}) is {len} bytes long"));
                    }
                    let mut value = vec![0u8; len as usize];
                    self.r
                        .read_exact(&mut value)
                        .map_err(|e| read_error(&e, self.pos))?;
                    self.pos += len as u64;
                    self.captured.insert(tag, value);
                } else if vr == Some(*b"SQ") && len > 0 {
                    let stop = self.pos + len as u64;
                    self.items(Some(stop), depth + 1)?;
                } else {
                    self.skip(len)?;
                }
                continue;
            }
            self.token(if tag == 0x7FE0_0010 { b"P" } else { b"S" });
            match vr {
                Some(v) if (v == *b"OB" || v == *b"OW") && tag == 0x7FE0_0010 => {
                    self.fragments()?
                }
                // UN of undefined length: a sequence encoded in implicit VR LE (PS3.5 6.2.2)
                Some(v) if v == *b"UN" => {
                    let outer = std::mem::replace(&mut self.enc, Encoding::ImplicitLittle);
                    let walked = self.items(None, depth + 1);
                    self.enc = outer;
                    walked?
                }
                _ => self.items(None, depth + 1)?,
            }
            self.token(b"E");
        }
    }

    /// Walks the items of a sequence (undefined length: until the sequence delimiter).
    fn items(&mut self, end: Option<u64>, depth: usize) -> Res<()> {
        loop {
            if let Some(e) = end {
                if self.pos == e {
                    return Ok(());
                }
            }
            let tag = self.tag()?;
            let len = self.u32()?;
            match tag {
                SEQUENCE_END if end.is_none() => return Ok(()),
                ITEM if len == UNDEFINED => {
                    self.token(b"I");
                    self.elements(None, depth)?;
                    self.token(b"i");
                }
                ITEM => {
                    let stop = self.pos + len as u64;
                    if self.len.is_some_and(|l| stop > l) || end.is_some_and(|e| stop > e) {
                        return Err(format!("item at byte {} runs past the end", self.pos));
                    }
                    self.token(b"I");
                    self.elements(Some(stop), depth)?;
                    self.token(b"i");
                }
                other => {
                    return Err(format!(
                        "expected an item, found ({other:08X}) at byte {}",
                        self.pos
                    ))
                }
            }
        }
    }

    /// Walks the items of encapsulated pixel data. For the data-set hash, each fragment
    /// but the first (the Basic Offset Table, PS3.5 §A.4, which encoders fill or leave
    /// empty at will) is a value `'F'`.
    fn fragments(&mut self) -> Res<()> {
        let mut first = true;
        loop {
            let tag = self.tag()?;
            let len = self.u32()?;
            match tag {
                SEQUENCE_END => return Ok(()),
                ITEM if len != UNDEFINED && self.canon.is_some() && !first => {
                    self.token(b"F");
                    self.hash_value(ValueKind::Bytes, len)?;
                }
                ITEM if len != UNDEFINED => {
                    first = false;
                    self.skip(len)?
                }
                other => {
                    return Err(format!(
                        "bad pixel data fragment ({other:08X}) at byte {}",
                        self.pos
                    ))
                }
            }
        }
    }
}

/// Checks that the data set in `source` (whose first byte is at offset `start`) is well
/// framed to its end, and returns the raw values of the `wanted` top-level elements.
pub fn walk_source<S: Source>(
    source: S,
    start: u64,
    enc: Encoding,
    wanted: &[u32],
) -> Result<BTreeMap<u32, Vec<u8>>, String> {
    let mut w = Walker::new(source, start, enc, wanted);
    w.elements(None, 0)?;
    Ok(w.captured)
}

/// Where, in the data set in `source` (first byte at offset `start`), the first
/// top-level element whose tag is at least `tag` starts — or, if none, where the data
/// set ends; the elements before it are checked for framing on the way.
pub fn offset_of_tag<S: Source>(
    source: S,
    start: u64,
    enc: Encoding,
    tag: u32,
) -> Result<u64, String> {
    let mut w = Walker::new(source, start, enc, &[]);
    w.stop_at = Some(tag);
    w.elements(None, 0)?;
    Ok(w.stopped_at.unwrap_or(w.pos))
}

/// Domain separation of the data-set hash (BLAKE3 `derive_key` context); a change to
/// the definition takes a new context, and a new name.
pub const DATASET_HASH_CONTEXT: &str = "Strata data-set hash v2 (docs/formats.md)";

/// The data-set hash of the data set in `source` (first byte at offset `start`), checking
/// its framing on the way: BLAKE3 in `derive_key` mode ([`DATASET_HASH_CONTEXT`]) over the
/// element stream defined in `docs/formats.md`. Equal for encodings of the same data set
/// that differ only in transfer syntax (native), VR explicitness, byte order, group
/// lengths, item and sequence length form, string padding, Basic Offset Table and
/// DataSetTrailingPadding; different when any value, element or fragment differs.
pub fn dataset_hash_source<S: Source>(
    source: S,
    start: u64,
    enc: Encoding,
) -> Result<[u8; 32], String> {
    let mut w = Walker::new(source, start, enc, &[]);
    w.canon = Some(blake3::Hasher::new_derive_key(DATASET_HASH_CONTEXT));
    w.elements(None, 0)?;
    Ok(*w.canon.take().expect("set above").finalize().as_bytes())
}

/// One top-level element of an identifier: tag, VR (explicit syntaxes only), raw value.
pub type IdentifierElement = (u32, Option<[u8; 2]>, Vec<u8>);

/// Reads a small data set (a query identifier) completely: checks its framing and returns
/// every top-level element with a defined length and its raw value (sequences are walked
/// but not returned).
pub fn read_identifier(bytes: &[u8], enc: Encoding) -> Result<Vec<IdentifierElement>, String> {
    let (source, start) =
        Seekable::new(std::io::Cursor::new(bytes), 0).map_err(|e| e.to_string())?;
    let mut w = Walker::new(source, start, enc, &[]);
    w.keep_all = true;
    w.elements(None, 0)?;
    let vrs = w.vrs;
    Ok(w.captured
        .into_iter()
        .map(|(tag, value)| (tag, vrs.get(&tag).copied(), value))
        .collect())
}

/// [`walk_source`] over a seekable reader, from `start` to its end.
pub fn walk_dataset<R: Read + Seek>(
    reader: R,
    start: u64,
    enc: Encoding,
    wanted: &[u32],
) -> Result<BTreeMap<u32, Vec<u8>>, String> {
    let (source, start) = Seekable::new(reader, start).map_err(|e| e.to_string())?;
    walk_source(source, start, enc, wanted)
}

/// Checks framing only.
pub fn check_framing<R: Read + Seek>(reader: R, start: u64, enc: Encoding) -> Result<(), String> {
    walk_dataset(reader, start, enc, &[]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every syntax dicom-rs's registry encodes with a data-set codec (deflate) is one
    /// `is_deflated` knows, and no other.
    #[test]
    fn deflated_syntaxes_match_the_registry() {
        use dicom_encoding::transfer_syntax::Codec;
        use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
        for ts in TransferSyntaxRegistry.iter() {
            let deflated = matches!(ts.codec(), Codec::Dataset(_));
            assert_eq!(Encoding::is_deflated(ts.uid()), deflated, "{}", ts.uid());
        }
    }
    use std::io::Cursor;

    fn el(tag: u32, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
        v.extend_from_slice(&((tag & 0xFFFF) as u16).to_le_bytes());
        v.extend_from_slice(vr);
        if matches!(vr, b"OB" | b"OW" | b"SQ") {
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn accepts_well_framed_and_refuses_truncation() {
        let mut ds = el(0x0008_0018, b"UI", b"1.2.3\0");
        // undefined-length sequence with one undefined-length item
        ds.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        ds.extend(el(0x0008_1150, b"UI", b"1.2\0"));
        ds.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        // encapsulated pixel data: empty offset table + one fragment
        ds.extend_from_slice(&[
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 4, 0, 0, 0, 1, 2, 3, 4]);
        ds.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        check_framing(Cursor::new(&ds), 0, Encoding::ExplicitLittle).unwrap();
        for cut in [1, 7, 20, ds.len() - 5, ds.len() - 1] {
            assert!(
                check_framing(Cursor::new(&ds[..cut]), 0, Encoding::ExplicitLittle).is_err(),
                "cut at {cut}"
            );
        }
        let native = el(0x7FE0_0010, b"OW", &[0u8; 64]);
        check_framing(Cursor::new(&native), 0, Encoding::ExplicitLittle).unwrap();
        assert!(check_framing(Cursor::new(&native[..40]), 0, Encoding::ExplicitLittle).is_err());
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let mut x: u32 = 12345;
        for n in 0..200 {
            let bytes: Vec<u8> = (0..n * 7)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            for enc in [
                Encoding::ExplicitLittle,
                Encoding::ImplicitLittle,
                Encoding::ExplicitBig,
            ] {
                let _ = check_framing(Cursor::new(&bytes), 0, enc);
            }
        }
    }

    /// The data-set hash against dicom-rs: one data set written by dicom-object in
    /// explicit VR LE, implicit VR LE and explicit VR big endian hashes alike; one value
    /// changed hashes otherwise (issue 12; PS3.5 §7.1 and Annex A).
    #[test]
    fn dataset_hash_is_the_same_across_encodings_by_dicom_rs() {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags;
        use dicom_object::InMemDicomObject;
        use dicom_transfer_syntax_registry::entries;

        let build = |description: &str| {
            let item = InMemDicomObject::from_element_iter([
                DataElement::new(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    "1.2.840.10008.5.1.4.1.1.2",
                ),
                DataElement::new(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.3.4"),
            ]);
            InMemDicomObject::from_element_iter([
                DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3"),
                DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, description),
                DataElement::new(
                    tags::REFERENCED_IMAGE_SEQUENCE,
                    VR::SQ,
                    dicom_core::value::DataSetSequence::from(vec![item]),
                ),
                DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(512_u16)),
                DataElement::new(
                    tags::PIXEL_SPACING,
                    VR::DS,
                    PrimitiveValue::from("0.5\\0.5"),
                ),
                DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OW,
                    PrimitiveValue::U16(vec![1, 2, 3, 0x0102].into()),
                ),
            ])
        };
        let hash = |object: &InMemDicomObject, ts: &dicom_encoding::TransferSyntax| {
            let mut bytes = Vec::new();
            object.write_dataset_with_ts(&mut bytes, ts).unwrap();
            let enc = Encoding::of_transfer_syntax(ts.uid()).unwrap();
            let (source, start) = Seekable::new(Cursor::new(bytes), 0).unwrap();
            dataset_hash_source(source, start, enc).unwrap()
        };
        let one = build("AXIAL");
        let explicit = hash(&one, &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased());
        assert_eq!(
            explicit,
            hash(&one, &entries::IMPLICIT_VR_LITTLE_ENDIAN.erased())
        );
        assert_eq!(
            explicit,
            hash(&one, &entries::EXPLICIT_VR_BIG_ENDIAN.erased())
        );
        // trailing spaces are padding (PS3.5 §6.2): "AXIAL  " (8 bytes) is "AXIAL" (6 with its pad)
        assert_eq!(
            explicit,
            hash(
                &build("AXIAL  "),
                &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()
            )
        );
        assert_ne!(
            explicit,
            hash(
                &build("CORONAL"),
                &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()
            )
        );
    }
}
