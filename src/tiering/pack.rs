//! Study packs: the cold tier's open, self-describing format (DESIGN promise 6).
//!
//! A pack is a POSIX (ustar) tar archive:
//!
//! 1. `manifest.json`: format name and version, the study, and per member its UIDs,
//!    byte offset of its data in the pack, stored and original sizes, compression, and
//!    the blake3 and sha256 of its Part-10 bytes;
//! 2. `BLAKE3SUMS` and `SHA256SUMS`, in the `b3sum` / `sha256sum` check format, naming the
//!    decompressed files;
//! 3. one member per object: `objects/<blake3>.dcm.zst` (one zstd frame of the Part-10
//!    file) or `objects/<blake3>.dcm` when compression would not shrink it.
//!
//! An auditor needs only standard tools: `tar -x`, `zstd -d objects/*.zst`,
//! `b3sum -c BLAKE3SUMS`, `sha256sum -c SHA256SUMS`.
//!
//! Packs are deterministic: members sorted by object id, every tar header field fixed
//! (mtime 0, uid/gid 0, mode 0644), no time in the manifest. So the same objects always
//! give the same bytes and the same pack id (the blake3 of the pack), and a move retried
//! after a crash re-creates the pack it had already uploaded instead of a second one.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use strata_tiers::ObjectId;

/// The manifest format this build writes (and the newest it reads).
pub const MANIFEST_VERSION: u32 = 1;
pub const MANIFEST_FORMAT: &str = "strata-study-pack";
const BLOCK: u64 = 512;
/// Largest member decompressed in one allocation of its declared size.
const MAX_MEMBER_BYTES: u64 = 4 << 30;

/// Objects larger than this (bytes) are packed and unpacked as streams, a chunk at a
/// time, instead of whole in memory (a multi-frame of gigabytes costs a few MiB).
pub const STREAM_MEMBER_ABOVE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hot copy of object {id} is corrupt (its bytes hash to {actual}); not packed")]
    CorruptSource { id: ObjectId, actual: ObjectId },
    #[error("malformed pack: {0}")]
    Malformed(String),
    #[error("pack member {name} is corrupt: {reason}")]
    CorruptMember { name: String, reason: String },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PackError + 'a {
    move |source| PackError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub use crate::index::Compression;

/// One object of a pack, as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Tar member name.
    pub name: String,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    /// Offset of the member's data (not its tar header) from the start of the pack.
    pub offset: u64,
    /// Bytes the member occupies in the pack (compressed size when compressed).
    pub stored_size: u64,
    /// Size of the Part-10 file.
    pub original_size: u64,
    pub compression: Compression,
    /// blake3 of the Part-10 bytes: the object id.
    pub blake3: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub study_uid: String,
    pub members: Vec<Member>,
}

impl Manifest {
    pub fn parse(json: &[u8]) -> Result<Self, PackError> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
            version: u32,
        }
        let head: Head = serde_json::from_slice(json)
            .map_err(|e| PackError::Malformed(format!("manifest.json: {e}")))?;
        if head.format != MANIFEST_FORMAT {
            return Err(PackError::Malformed(format!(
                "manifest format {:?} is not {MANIFEST_FORMAT}",
                head.format
            )));
        }
        if head.version != MANIFEST_VERSION {
            return Err(PackError::Malformed(format!(
                "manifest version {} is not supported (this build reads {MANIFEST_VERSION})",
                head.version
            )));
        }
        serde_json::from_slice(json)
            .map_err(|e| PackError::Malformed(format!("manifest.json: {e}")))
    }
}

/// An object to put into a pack: its hot file and the UIDs the manifest records.
#[derive(Debug, Clone)]
pub struct Source {
    pub id: ObjectId,
    pub path: PathBuf,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
}

/// A pack ready to upload: `head` (manifest and sums members, in memory) followed by the
/// contents of `body` (the object members and the end-of-archive blocks).
#[derive(Debug)]
pub struct Built {
    pub id: ObjectId,
    pub size: u64,
    pub head: bytes::Bytes,
    pub body: tempfile::NamedTempFile,
    pub manifest: Manifest,
}

/// A ustar header for a regular file with every variable field fixed.
fn tar_header(name: &str, size: u64) -> Result<[u8; 512], PackError> {
    if name.len() > 100 {
        return Err(PackError::Malformed(format!(
            "member name too long: {name}"
        )));
    }
    if size >= 8 << 30 {
        return Err(PackError::Malformed(format!(
            "member {name} of {size} bytes exceeds the ustar limit of 8 GiB"
        )));
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..270].copy_from_slice(b"root\0");
    h[297..302].copy_from_slice(b"root\0");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

fn padding(len: u64) -> usize {
    ((BLOCK - len % BLOCK) % BLOCK) as usize
}

fn push_member(out: &mut Vec<u8>, name: &str, data: &[u8]) -> Result<(), PackError> {
    out.extend_from_slice(&tar_header(name, data.len() as u64)?);
    out.extend_from_slice(data);
    out.resize(out.len() + padding(data.len() as u64), 0);
    Ok(())
}

/// Parses a ustar header: `(name, size)`, or `None` for an end-of-archive block.
pub fn parse_tar_header(h: &[u8]) -> Result<Option<(String, u64)>, PackError> {
    if h.len() < 512 {
        return Err(PackError::Malformed("truncated tar header".into()));
    }
    if h[..512].iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let stored: u32 = std::str::from_utf8(&h[148..154])
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim_matches(|c: char| c == ' ' || c == '\0'), 8).ok())
        .ok_or_else(|| PackError::Malformed("unreadable tar checksum".into()))?;
    let actual: u32 = h[..148]
        .iter()
        .chain([b' '; 8].iter())
        .chain(h[156..512].iter())
        .map(|&b| b as u32)
        .sum();
    if stored != actual {
        return Err(PackError::Malformed("tar header checksum mismatch".into()));
    }
    let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
    let name = String::from_utf8_lossy(&h[..name_end]).into_owned();
    let size = std::str::from_utf8(&h[124..136])
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_matches(|c: char| c == ' ' || c == '\0'), 8).ok())
        .ok_or_else(|| PackError::Malformed(format!("unreadable size of member {name}")))?;
    Ok(Some((name, size)))
}

/// Writes the object members of a pack into a temporary file in `tmp_dir`, compressing
/// each with zstd at `level` (stored raw when that does not shrink it), re-hashing each
/// hot copy on the way (a corrupt one stops the pack), then builds the head and the
/// pack id. Blocking.
pub fn build_blocking(
    study_uid: &str,
    sources: &[Source],
    level: i32,
    tmp_dir: &Path,
) -> Result<Built, PackError> {
    let mut sources: Vec<&Source> = sources.iter().collect();
    sources.sort_by_key(|s| s.id);
    sources.dedup_by_key(|s| s.id);
    std::fs::create_dir_all(tmp_dir).map_err(io("create", tmp_dir))?;
    let mut body = tempfile::Builder::new()
        .prefix("pack-")
        .tempfile_in(tmp_dir)
        .map_err(io("create a temporary file in", tmp_dir))?;
    let body_path = body.path().to_path_buf();
    let mut members = Vec::with_capacity(sources.len());
    let mut pos = 0u64; // within body
    let mut raw = Vec::new();
    for source in sources {
        let hex = source.id.to_hex();
        let large = std::fs::metadata(&source.path)
            .map_err(io("read", &source.path))?
            .len()
            > STREAM_MEMBER_ABOVE;
        let file = body.as_file_mut();
        let written = if large {
            write_member_streamed(file, source, level, pos)?
        } else {
            raw.clear();
            std::fs::File::open(&source.path)
                .and_then(|mut f| f.read_to_end(&mut raw))
                .map_err(io("read", &source.path))?;
            let actual = ObjectId::of_bytes(&raw);
            if actual != source.id {
                return Err(PackError::CorruptSource {
                    id: source.id,
                    actual,
                });
            }
            let sha = sha2::Sha256::digest(&raw);
            let compressed =
                zstd::bulk::compress(&raw, level).map_err(io("compress", &source.path))?;
            let (data, compression): (&[u8], _) = if compressed.len() < raw.len() {
                (&compressed, Compression::Zstd)
            } else {
                (&raw, Compression::None)
            };
            let name = member_name(&hex, compression);
            file.write_all(&tar_header(&name, data.len() as u64)?)
                .and_then(|_| file.write_all(data))
                .and_then(|_| file.write_all(&vec![0u8; padding(data.len() as u64)]))
                .map_err(io("write", &body_path))?;
            Written {
                compression,
                stored_size: data.len() as u64,
                original_size: raw.len() as u64,
                sha256: hex_lower(&sha),
            }
        };
        members.push(Member {
            name: member_name(&hex, written.compression),
            study_uid: source.study_uid.clone(),
            series_uid: source.series_uid.clone(),
            sop_instance_uid: source.sop_instance_uid.clone(),
            sop_class_uid: source.sop_class_uid.clone(),
            transfer_syntax_uid: source.transfer_syntax_uid.clone(),
            offset: pos + BLOCK, // relative to the body for now
            stored_size: written.stored_size,
            original_size: written.original_size,
            compression: written.compression,
            blake3: hex,
            sha256: written.sha256,
        });
        pos += BLOCK + written.stored_size + padding(written.stored_size) as u64;
    }
    body.as_file_mut()
        .write_all(&[0u8; 1024])
        .and_then(|_| body.as_file_mut().sync_data())
        .map_err(io("write", &body_path))?;
    let body_len = pos + 1024;

    // The head's length depends on the manifest, whose offsets depend on the head's
    // length: iterate until the length is stable (two rounds in practice).
    let mut b3sums = String::new();
    let mut shasums = String::new();
    for m in &members {
        let plain = m.name.trim_end_matches(".zst");
        b3sums.push_str(&format!("{}  {plain}\n", m.blake3));
        shasums.push_str(&format!("{}  {plain}\n", m.sha256));
    }
    let mut head_len = 0u64;
    let (head, manifest) = loop {
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            study_uid: study_uid.to_string(),
            members: members
                .iter()
                .map(|m| Member {
                    offset: m.offset + head_len,
                    ..m.clone()
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        let mut head = Vec::new();
        push_member(&mut head, "manifest.json", &json)?;
        push_member(&mut head, "BLAKE3SUMS", b3sums.as_bytes())?;
        push_member(&mut head, "SHA256SUMS", shasums.as_bytes())?;
        if head.len() as u64 == head_len {
            break (head, manifest);
        }
        head_len = head.len() as u64;
    };

    let mut hasher = blake3::Hasher::new();
    hasher.update(&head);
    let mut file = body.reopen().map_err(io("reopen", &body_path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io("read", &body_path))?;
    hasher
        .update_reader(&mut file)
        .map_err(io("read", &body_path))?;
    Ok(Built {
        id: ObjectId::from_hash(hasher.finalize()),
        size: head.len() as u64 + body_len,
        head: bytes::Bytes::from(head),
        body,
        manifest,
    })
}

/// A member's name in the pack: `objects/<id>.dcm`, `.dcm.zst` when compressed.
fn member_name(hex: &str, compression: Compression) -> String {
    match compression {
        Compression::Zstd => format!("objects/{hex}.dcm.zst"),
        Compression::None => format!("objects/{hex}.dcm"),
    }
}

/// What was written for one member.
struct Written {
    compression: Compression,
    stored_size: u64,
    original_size: u64,
    sha256: String,
}

/// Writes one large member at `pos` (the body's current end) a chunk at a time: a
/// header reserved, the object compressed by a zstd stream while blake3 and SHA-256
/// hash it, the header then written with the size; stored raw (copied again) when
/// compression does not shrink it. A hot copy that does not hash to its id stops the
/// pack, as for small members.
fn write_member_streamed(
    file: &mut std::fs::File,
    source: &Source,
    level: i32,
    pos: u64,
) -> Result<Written, PackError> {
    let path = &source.path;
    let data_at = pos + BLOCK;
    let copy_through = |file: &mut std::fs::File,
                        compress: bool|
     -> Result<(u64, ObjectId, String, u64), PackError> {
        let mut input = std::fs::File::open(path).map_err(io("read", path))?;
        file.seek(SeekFrom::Start(data_at))
            .map_err(io("seek", path))?;
        let mut b3 = blake3::Hasher::new();
        let mut sha = sha2::Sha256::new();
        let mut original = 0u64;
        let mut out = CountingWriter {
            inner: &mut *file,
            written: 0,
        };
        let mut pump = |w: &mut dyn Write| -> Result<(), PackError> {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = input.read(&mut buf).map_err(io("read", path))?;
                if n == 0 {
                    return Ok(());
                }
                b3.update(&buf[..n]);
                sha.update(&buf[..n]);
                original += n as u64;
                w.write_all(&buf[..n])
                    .map_err(io("write the pack of", path))?;
            }
        };
        if compress {
            let mut e =
                zstd::stream::write::Encoder::new(&mut out, level).map_err(io("compress", path))?;
            e.set_pledged_src_size(std::fs::metadata(path).ok().map(|m| m.len()))
                .map_err(io("compress", path))?;
            e.include_contentsize(true).map_err(io("compress", path))?;
            pump(&mut e)?;
            e.finish().map_err(io("compress", path))?;
        } else {
            pump(&mut out)?;
        }
        let stored = out.written;
        Ok((
            stored,
            ObjectId::from_hash(b3.finalize()),
            hex_lower(&sha.finalize()),
            original,
        ))
    };
    let (mut stored, actual, sha256, original) = copy_through(file, true)?;
    if actual != source.id {
        return Err(PackError::CorruptSource {
            id: source.id,
            actual,
        });
    }
    let mut compression = Compression::Zstd;
    if stored >= original {
        // compression did not pay: the raw bytes instead, over the compressed ones
        let (raw, again, _, _) = copy_through(file, false)?;
        if again != source.id {
            return Err(PackError::CorruptSource {
                id: source.id,
                actual: again,
            });
        }
        file.set_len(data_at + raw)
            .map_err(io("truncate the pack of", path))?;
        stored = raw;
        compression = Compression::None;
    }
    let name = member_name(&source.id.to_hex(), compression);
    file.seek(SeekFrom::Start(pos)).map_err(io("seek", path))?;
    file.write_all(&tar_header(&name, stored)?)
        .map_err(io("write the pack of", path))?;
    file.seek(SeekFrom::Start(data_at + stored))
        .map_err(io("seek", path))?;
    file.write_all(&vec![0u8; padding(stored)])
        .map_err(io("write the pack of", path))?;
    Ok(Written {
        compression,
        stored_size: stored,
        original_size: original,
        sha256,
    })
}

/// Counts the bytes written through it.
struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Restores a member's Part-10 bytes from its stored bytes and checks them against the
/// object id: nothing read from a pack is trusted before its blake3 matches.
pub fn unpack_member(
    id: &ObjectId,
    stored: &[u8],
    compression: Compression,
    original_size: Option<u64>,
) -> Result<Vec<u8>, PackError> {
    let name = id.to_hex();
    let bytes = match compression {
        Compression::None => stored.to_vec(),
        Compression::Zstd => {
            let corrupt = |e: std::io::Error| PackError::CorruptMember {
                name: name.clone(),
                reason: format!("zstd: {e}"),
            };
            // One allocation of the exact size when it is known (our frames carry it);
            // a claimed size is only a capacity, and the bytes are hashed below anyway.
            let known = original_size.or_else(|| {
                zstd::zstd_safe::get_frame_content_size(stored)
                    .ok()
                    .flatten()
            });
            match known {
                Some(size) if size <= MAX_MEMBER_BYTES => {
                    // one decompression context per thread, reused: making one per
                    // member cost a few per cent of a study's retrieve from cold
                    thread_local! {
                        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                            const { std::cell::RefCell::new(None) };
                    }
                    DCTX.with(|cell| {
                        let mut slot = cell.borrow_mut();
                        let dctx = match slot.as_mut() {
                            Some(d) => d,
                            None => slot.insert(zstd::bulk::Decompressor::new()?),
                        };
                        dctx.decompress(stored, size as usize)
                    })
                    .map_err(corrupt)?
                }
                _ => {
                    let mut out = Vec::with_capacity(stored.len() * 4);
                    zstd::stream::read::Decoder::new(stored)
                        .and_then(|mut d| d.read_to_end(&mut out))
                        .map_err(corrupt)?;
                    out
                }
            }
        }
    };
    let actual = ObjectId::of_bytes(&bytes);
    if &actual != id {
        return Err(PackError::CorruptMember {
            name,
            reason: format!("its bytes hash to {actual}"),
        });
    }
    Ok(bytes)
}

/// What [`read_all`] hands each checked member to.
pub type MemberVisitor<'a> = dyn FnMut(&Member, Vec<u8>) -> Result<(), PackError> + 'a;

/// Reads a whole pack from `reader`: checks the tar structure and the manifest, and
/// gives each object member's Part-10 bytes (checked against its blake3 and sha256) to
/// `visit` in pack order. Used by `verify --tier cold` and `reindex`.
pub fn read_all(
    mut reader: impl Read,
    visit: &mut MemberVisitor<'_>,
) -> Result<Manifest, PackError> {
    let mut pos = 0u64;
    let next = |reader: &mut dyn Read,
                pos: &mut u64|
     -> Result<Option<(String, Vec<u8>, u64)>, PackError> {
        let mut h = [0u8; 512];
        reader
            .read_exact(&mut h)
            .map_err(|e| PackError::Malformed(format!("truncated at byte {pos}: {e}")))?;
        *pos += BLOCK;
        let Some((name, size)) = parse_tar_header(&h)? else {
            return Ok(None);
        };
        let offset = *pos;
        let mut data = vec![0u8; size as usize];
        reader
            .read_exact(&mut data)
            .map_err(|e| PackError::Malformed(format!("member {name} truncated: {e}")))?;
        let mut pad = vec![0u8; padding(size)];
        reader
            .read_exact(&mut pad)
            .map_err(|e| PackError::Malformed(format!("member {name} truncated: {e}")))?;
        *pos += size + pad.len() as u64;
        Ok(Some((name, data, offset)))
    };
    let Some((name, json, _)) = next(&mut reader, &mut pos)? else {
        return Err(PackError::Malformed("empty pack".into()));
    };
    if name != "manifest.json" {
        return Err(PackError::Malformed(format!(
            "first member is {name:?}, not manifest.json"
        )));
    }
    let manifest = Manifest::parse(&json)?;
    let mut expected = manifest.members.iter();
    while let Some((name, data, offset)) = next(&mut reader, &mut pos)? {
        if name == "BLAKE3SUMS" || name == "SHA256SUMS" {
            continue;
        }
        let Some(member) = expected.next() else {
            return Err(PackError::Malformed(format!(
                "member {name} is not in the manifest"
            )));
        };
        if member.name != name || member.offset != offset || member.stored_size != data.len() as u64
        {
            return Err(PackError::Malformed(format!(
                "member {name} at {offset} does not match the manifest entry {} at {}",
                member.name, member.offset
            )));
        }
        let id = ObjectId::from_hex(&member.blake3).ok_or_else(|| {
            PackError::Malformed(format!("manifest blake3 {:?} is not a hash", member.blake3))
        })?;
        let bytes = unpack_member(&id, &data, member.compression, Some(member.original_size))?;
        if hex_lower(&sha2::Sha256::digest(&bytes)) != member.sha256 {
            return Err(PackError::CorruptMember {
                name,
                reason: "sha256 differs from the manifest".into(),
            });
        }
        visit(member, bytes)?;
    }
    if let Some(missing) = expected.next() {
        return Err(PackError::Malformed(format!(
            "member {} listed in the manifest is missing",
            missing.name
        )));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, n: u8, len: usize, compressible: bool) -> Source {
        // xorshift noise does not compress; a short cycle does
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ n as u64;
        let bytes: Vec<u8> = (0..len)
            .map(|i| {
                if compressible {
                    (i % 7) as u8
                } else {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                }
            })
            .collect();
        let id = ObjectId::of_bytes(&bytes);
        let path = dir.join(id.to_hex());
        std::fs::write(&path, &bytes).unwrap();
        Source {
            id,
            path,
            study_uid: "1.2.3".into(),
            series_uid: "1.2.3.4".into(),
            sop_instance_uid: format!("1.2.3.4.{n}"),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        }
    }

    fn whole(built: &Built) -> Vec<u8> {
        let mut all = built.head.to_vec();
        all.extend_from_slice(&std::fs::read(built.body.path()).unwrap());
        all
    }

    #[test]
    fn packs_are_deterministic_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let sources = vec![
            source(dir.path(), 1, 10_000, true),
            source(dir.path(), 2, 3_000, false),
            source(dir.path(), 3, 700, true),
        ];
        let a = build_blocking("1.2.3", &sources, 3, dir.path()).unwrap();
        let mut reversed = sources.clone();
        reversed.reverse();
        let b = build_blocking("1.2.3", &reversed, 3, dir.path()).unwrap();
        assert_eq!(a.id, b.id, "the same objects must give the same pack");
        let bytes = whole(&a);
        assert_eq!(bytes.len() as u64, a.size);
        assert_eq!(ObjectId::of_bytes(&bytes), a.id);
        assert_eq!(bytes.len() % 512, 0);
        // compressible members are compressed, the other one is stored raw
        let kinds: Vec<_> = a.manifest.members.iter().map(|m| m.compression).collect();
        assert!(kinds.contains(&Compression::Zstd) && kinds.contains(&Compression::None));
        // every member is reachable by its offset alone (one ranged read)
        for m in &a.manifest.members {
            let stored = &bytes[m.offset as usize..(m.offset + m.stored_size) as usize];
            let id = ObjectId::from_hex(&m.blake3).unwrap();
            let part10 = unpack_member(&id, stored, m.compression, None).unwrap();
            assert_eq!(part10.len() as u64, m.original_size);
        }
        let mut seen = 0;
        let manifest = read_all(&bytes[..], &mut |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((seen, manifest), (3, a.manifest.clone()));
    }

    /// Members above `STREAM_MEMBER_ABOVE` are written as streams: a compressible one
    /// zstd-compressed (with its content size in the frame), an incompressible one raw
    /// after the compressed attempt is thrown away; the pack reads back whole, each
    /// member by its offset, with the right blake3 and SHA-256.
    #[test]
    fn large_members_are_packed_as_streams() {
        let dir = tempfile::tempdir().unwrap();
        let big = STREAM_MEMBER_ABOVE as usize + 1000;
        let sources = vec![
            source(dir.path(), 1, big, true),
            source(dir.path(), 2, big + 3, false),
            source(dir.path(), 3, 700, true),
        ];
        let built = build_blocking("1.2.3", &sources, 3, dir.path()).unwrap();
        let bytes = whole(&built);
        assert_eq!(bytes.len() as u64, built.size);
        assert_eq!(ObjectId::of_bytes(&bytes), built.id);
        for m in &built.manifest.members {
            let stored = &bytes[m.offset as usize..(m.offset + m.stored_size) as usize];
            let id = ObjectId::from_hex(&m.blake3).unwrap();
            let part10 = unpack_member(&id, stored, m.compression, None).unwrap();
            assert_eq!(part10.len() as u64, m.original_size);
            assert_eq!(hex_lower(&sha2::Sha256::digest(&part10)), m.sha256);
            if m.original_size > STREAM_MEMBER_ABOVE {
                let raw = m.name.ends_with(".dcm");
                assert_eq!(raw, m.compression == Compression::None, "{}", m.name);
            }
        }
        let kinds: Vec<_> = built
            .manifest
            .members
            .iter()
            .map(|m| m.compression)
            .collect();
        assert_eq!(kinds.iter().filter(|k| **k == Compression::None).count(), 1);
        let mut seen = 0;
        read_all(&bytes[..], &mut |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 3);
    }

    #[test]
    fn damaged_packs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sources = vec![source(dir.path(), 1, 5_000, true)];
        let built = build_blocking("1.2.3", &sources, 3, dir.path()).unwrap();
        let bytes = whole(&built);
        let m = &built.manifest.members[0];
        let mut flipped = bytes.clone();
        flipped[m.offset as usize + 10] ^= 1;
        assert!(read_all(&flipped[..], &mut |_, _| Ok(())).is_err());
        let truncated = &bytes[..bytes.len() - 1500];
        assert!(read_all(truncated, &mut |_, _| Ok(())).is_err());
    }

    #[test]
    fn a_corrupt_hot_copy_is_never_packed() {
        let dir = tempfile::tempdir().unwrap();
        let s = source(dir.path(), 1, 5_000, true);
        std::fs::write(&s.path, b"not the original").unwrap();
        assert!(matches!(
            build_blocking("1.2.3", &[s], 3, dir.path()).unwrap_err(),
            PackError::CorruptSource { .. }
        ));
    }
}
