//! A structural check of a dataset's framing: every element header is read and every
//! value skipped by its length — values are never decoded — so a truncated or mangled
//! dataset is refused even though indexing parses only the header. Costs a few reads
//! and seeks per object, whatever its size.
//!
//! Handles explicit and implicit VR little endian and explicit VR big endian, defined-
//! and undefined-length sequences and items, and encapsulated pixel data. A deflated
//! data set is walked through a streaming inflater with a cap on the inflated size
//! ([`MAX_INFLATED`]), so a deflate bomb costs bounded time and no memory.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    ExplicitLittle,
    ImplicitLittle,
    ExplicitBig,
}

impl Encoding {
    /// Whether the data set of this transfer syntax is deflated (RFC 1951).
    pub fn is_deflated(uid: &str) -> bool {
        matches!(uid, "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95")
    }

    /// The encoding of a transfer syntax's dataset (after inflating, for deflated ones),
    /// or `None` when the syntax is unknown.
    pub fn of_transfer_syntax(uid: &str) -> Option<Encoding> {
        match uid {
            "1.2.840.10008.1.2" => Some(Encoding::ImplicitLittle),
            "1.2.840.10008.1.2.2" => Some(Encoding::ExplicitBig),
            // deflated: walked after inflating, as explicit VR LE (see `is_deflated`)
            "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" => Some(Encoding::ExplicitLittle),
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
}

/// Longest value captured; longer values of wanted tags are an error.
pub const MAX_CAPTURED: u32 = 4096;

type Res<T> = Result<T, String>;

impl<S: Source> Walker<'_, S> {
    fn bytes<const N: usize>(&mut self) -> Res<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| format!("dataset truncated at byte {}", self.pos))?;
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
            .map_err(|_| format!("dataset truncated at byte {}", self.pos))?;
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

    fn skip(&mut self, n: u32) -> Res<()> {
        let n = n as u64;
        if let Some(len) = self.len {
            if self.pos + n > len {
                return Err(format!(
                    "value of {n} bytes at byte {} runs past the end of the dataset ({len} bytes)",
                    self.pos
                ));
            }
        }
        self.r.skip(n).map_err(|e| {
            format!(
                "value of {n} bytes at byte {} cannot be skipped: {e}",
                self.pos
            )
        })?;
        self.pos += n;
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
                        .map_err(|_| format!("dataset truncated at byte {}", self.pos))?;
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
                ITEM if len == UNDEFINED => self.elements(None, depth)?,
                ITEM => {
                    let stop = self.pos + len as u64;
                    if self.len.is_some_and(|l| stop > l) || end.is_some_and(|e| stop > e) {
                        return Err(format!("item at byte {} runs past the end", self.pos));
                    }
                    self.elements(Some(stop), depth)?
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

    fn fragments(&mut self) -> Res<()> {
        loop {
            let tag = self.tag()?;
            let len = self.u32()?;
            match tag {
                SEQUENCE_END => return Ok(()),
                ITEM if len != UNDEFINED => self.skip(len)?,
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
    let len = source.known_len();
    let mut w = Walker {
        r: source,
        pos: start,
        len,
        enc,
        wanted,
        captured: BTreeMap::new(),
        keep_all: false,
        vrs: BTreeMap::new(),
    };
    w.elements(None, 0)?;
    Ok(w.captured)
}

/// One top-level element of an identifier: tag, VR (explicit syntaxes only), raw value.
pub type IdentifierElement = (u32, Option<[u8; 2]>, Vec<u8>);

/// Reads a small data set (a query identifier) completely: checks its framing and returns
/// every top-level element with a defined length and its raw value (sequences are walked
/// but not returned).
pub fn read_identifier(bytes: &[u8], enc: Encoding) -> Result<Vec<IdentifierElement>, String> {
    let (source, start) =
        Seekable::new(std::io::Cursor::new(bytes), 0).map_err(|e| e.to_string())?;
    let mut w = Walker {
        len: source.known_len(),
        r: source,
        pos: start,
        enc,
        wanted: &[],
        captured: BTreeMap::new(),
        keep_all: true,
        vrs: BTreeMap::new(),
    };
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
}
