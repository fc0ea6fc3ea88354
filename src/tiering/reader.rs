//! Reading objects from whichever tier holds them.
//!
//! The hot file is tried first (it is the fast copy, and a study being evicted may still
//! be marked hot for a moment after its file went). Otherwise the object's cold copies
//! are tried in order: one ranged GET of the pack member, decompressed, and checked
//! against the object id before anything is returned. A pack in an archive storage
//! class answers [`TierError::PendingRestore`](strata_tiers::TierError) after asking
//! for a restore.
//!
//! A whole study ([`ObjectReader::read_many`]) is read per pack with one streamed GET
//! spanning the wanted members, not one request per instance.
//!
//! Large objects are never held whole: [`ObjectReader::pipe_copy`] streams one cold copy
//! through a decompressor and a hasher into any writer, a chunk at a time, and
//! [`ObjectReader::stage_cold`] uses it to land a cold object, checked, in a tmp file on
//! hot disk — which C-MOVE, C-GET and export then stream from, and a recall makes
//! durable under its id. The scrubber checks large copies with it too.

use super::pack::unpack_member;
use super::{blocking, TieringError};
use crate::index::{ColdCopy, Index};
use crate::metrics::TierMetrics;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use strata_tiers::{ColdStore, HotDisk, ObjectId, TierError};

/// Pack members being decompressed at once while a study streams.
const UNPACK_AHEAD: usize = 8;
/// Bytes of a pack span downloaded ahead of the member being unpacked.
const DOWNLOAD_AHEAD: usize = 4 << 20;

#[derive(Clone)]
pub struct ObjectReader {
    pub hot: HotDisk,
    pub cold: ColdStore,
    pub index: Arc<dyn Index>,
    pub metrics: Option<TierMetrics>,
    /// Where restores of archived packs are recorded.
    pub audit: Option<crate::audit::AuditLog>,
    /// This node (`[cluster] node_id`): objects hot on another node's disk are fetched
    /// from it ([`crate::peer`]) when `peers` is set, else read from their cold copies.
    pub node: Arc<str>,
    pub peers: Option<Arc<crate::peer::Peers>>,
    /// The most bytes of a pack a retrieval's window reads at once (`[cold]
    /// read_window_mb`; 0: none, see [`super::ahead`]).
    pub window_bytes: u64,
}

/// Where an object not on this node's hot disk is to be read from.
pub(crate) struct Elsewhere {
    /// The other node whose hot disk holds it, when fetching from nodes is on.
    pub(super) node: Option<String>,
    pub(super) cold: Vec<ColdCopy>,
    /// A verified replica of the object is in the cold tier ([`super::replicate`]).
    pub(super) replica: bool,
}

impl Elsewhere {
    /// Whether anything but the holder node can give the object.
    fn in_cold(&self) -> bool {
        !self.cold.is_empty() || self.replica
    }
}

/// Reads a hot file and checks it against its id. `None` when it is missing, unreadable
/// or corrupt (logged): the caller then reads a cold copy. Hot bytes are never served
/// unchecked.
pub(crate) fn read_hot_blocking(hot: &HotDisk, id: &ObjectId) -> Option<Vec<u8>> {
    let path = hot.path_of(id);
    match std::fs::read(&path) {
        Ok(bytes) if ObjectId::of_bytes(&bytes) == *id => Some(bytes),
        Ok(_) => {
            tracing::error!(object = %id, path = %path.display(), "hot copy is corrupt (its bytes do not hash to its id); reading a cold copy");
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::error!(object = %id, path = %path.display(), error = %e, "hot copy unreadable; reading a cold copy");
            None
        }
    }
}

impl ObjectReader {
    /// Records that reading `pack` asked S3 to restore it (an archived pack).
    async fn note_restore(&self, pack: &ObjectId, pending: bool) {
        if let (true, Some(log)) = (pending, &self.audit) {
            log.record_async(vec![crate::audit::Event {
                actor: crate::audit::Actor::system("reader"),
                action: "restore",
                uids: Vec::new(),
                outcome: format!("restore of pack {pack} requested; pending"),
            }])
            .await;
        }
    }

    pub(super) fn observe_recall(&self, started: std::time::Instant) {
        if let Some(m) = &self.metrics {
            m.recall_seconds.observe(started.elapsed().as_secs_f64());
        }
    }

    /// Where to read an object that is not on this node's hot disk, by its record
    /// (blocking).
    fn elsewhere_blocking(&self, id: &ObjectId) -> Result<Elsewhere, TieringError> {
        let record = self
            .index
            .object(id)?
            .ok_or_else(|| TieringError::Unreadable {
                id: id.to_hex(),
                detail: "not in the index".into(),
            })?;
        Ok(self.elsewhere_of(record))
    }

    /// Where to read an object that is not on this node's hot disk, by its `record`.
    pub(crate) fn elsewhere_of(&self, record: crate::index::ObjectRecord) -> Elsewhere {
        let node = self
            .peers
            .as_ref()
            .and(record.hot_elsewhere(&self.node))
            .map(str::to_string);
        Elsewhere {
            node,
            cold: record.cold,
            replica: record.replica,
        }
    }

    /// The object's Part-10 bytes, from this node's hot disk, another node's, or its
    /// cold pack.
    pub async fn read(&self, id: &ObjectId) -> Result<Vec<u8>, TieringError> {
        match self.find(id).await? {
            Ok(bytes) => Ok(bytes),
            Err(elsewhere) => self.read_elsewhere(id, elsewhere).await,
        }
    }

    /// The object's bytes when this node's hot file holds them (checked), else where to
    /// read it from (one blocking call).
    pub(crate) async fn find(
        &self,
        id: &ObjectId,
    ) -> Result<Result<Vec<u8>, Elsewhere>, TieringError> {
        let (this, oid) = (self.clone(), *id);
        blocking(move || {
            if let Some(bytes) = read_hot_blocking(&this.hot, &oid) {
                return Ok(Ok(bytes));
            }
            Ok(Err(this.elsewhere_blocking(&oid)?))
        })
        .await
    }

    /// Reads an object from the node that holds it, else (that failing) from its cold
    /// copies.
    pub(crate) async fn read_elsewhere(
        &self,
        id: &ObjectId,
        elsewhere: Elsewhere,
    ) -> Result<Vec<u8>, TieringError> {
        if let Some(node) = &elsewhere.node {
            match self.pipe_peer(id, node, Vec::new()).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) if !elsewhere.in_cold() => return Err(e),
                Err(e) => {
                    tracing::warn!(object = %id, node, error = %e, "cannot fetch from the node that holds it; reading a cold copy")
                }
            }
        }
        if !elsewhere.replica {
            return self.read_cold(id, &elsewhere.cold).await;
        }
        if !elsewhere.cold.is_empty() {
            match self.read_cold(id, &elsewhere.cold).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) if e.is_pending_restore() => return Err(e),
                Err(e) => {
                    tracing::warn!(object = %id, error = %e, "pack copies unreadable; reading the replica")
                }
            }
        }
        self.pipe_replica(id, Vec::new()).await
    }

    /// Streams the object's replica in the cold tier into `sink`, checked against `id`
    /// (like [`ObjectReader::pipe_copy`]).
    pub async fn pipe_replica<W: std::io::Write + Send + 'static>(
        &self,
        id: &ObjectId,
        sink: W,
    ) -> Result<W, TieringError> {
        let started = std::time::Instant::now();
        let stream = self.cold.replicas().stream_range(id, None).await?;
        let stream = stream.map(|chunk| chunk.map_err(TieringError::from));
        let sink = drain_checked(stream, id, crate::index::Compression::None, sink).await?;
        self.observe_recall(started);
        Ok(sink)
    }

    /// Streams object `id` from `node`'s hot disk into `sink`, checked against `id`
    /// ([`crate::peer`]); like [`ObjectReader::pipe_copy`], the sink must not be used
    /// on failure.
    pub async fn pipe_peer<W: std::io::Write + Send + 'static>(
        &self,
        id: &ObjectId,
        node: &str,
        sink: W,
    ) -> Result<W, TieringError> {
        let peers = self
            .peers
            .as_ref()
            .ok_or_else(|| TieringError::Other("fetching from other nodes is off".into()))?;
        let stream = peers.fetch(self.index.clone(), node, id).await?;
        let stream = stream.map(|chunk| chunk.map_err(TieringError::from));
        let sink = drain_checked(stream, id, crate::index::Compression::None, sink).await?;
        if let Some(m) = &self.metrics {
            m.peer_fetches.inc();
        }
        Ok(sink)
    }

    /// Whether the object can be read now without reading it: a hot file, or one byte of
    /// its first cold copy (a pending restore or a failing cold tier says so; reading
    /// that byte of an archived pack asks S3 for its restore, as a read would).
    pub async fn probe(&self, id: &ObjectId) -> Result<(), TieringError> {
        if self.hot.path_of(id).exists() {
            return Ok(());
        }
        let (this, oid) = (self.clone(), *id);
        let elsewhere = blocking(move || this.elsewhere_blocking(&oid)).await?;
        if elsewhere.node.is_some() || (elsewhere.replica && elsewhere.cold.is_empty()) {
            // hot on another node: fetched from it (or, that failing, from cold) on read;
            // a replica is never in an archive class
            return Ok(());
        }
        let Some(copy) = elsewhere.cold.first() else {
            return Err(TieringError::Unreadable {
                id: id.to_hex(),
                detail: "no hot file and no cold copy".into(),
            });
        };
        let pack = copy
            .pack_id()
            .ok_or_else(|| TieringError::Other(format!("bad pack id {:?}", copy.pack)))?;
        let read = self
            .cold
            .read_range(&pack, copy.offset..copy.offset + 1)
            .await;
        let pending = matches!(&read, Err(e) if e.is_pending_restore());
        self.note_restore(&pack, pending).await;
        read.map(|_| ()).map_err(Into::into)
    }

    /// Reads an object from its cold copies, trying each in turn.
    pub async fn read_cold(
        &self,
        id: &ObjectId,
        copies: &[ColdCopy],
    ) -> Result<Vec<u8>, TieringError> {
        first_good_copy(id, copies, |copy| self.read_copy(id, copy)).await
    }

    /// Streams one cold copy of `id` into `sink` a chunk at a time — one ranged GET,
    /// decompressed by a zstd stream when the member is compressed — hashing what comes
    /// out, and returns `sink` once the bytes hash to `id`. On any failure (the GET, the
    /// decompression, a hash mismatch) the sink has received bytes that must not be
    /// used. Memory: a few chunks, whatever the object's size.
    pub async fn pipe_copy<W: std::io::Write + Send + 'static>(
        &self,
        id: &ObjectId,
        copy: &ColdCopy,
        sink: W,
    ) -> Result<W, TieringError> {
        let pack = copy
            .pack_id()
            .ok_or_else(|| TieringError::Other(format!("bad pack id {:?}", copy.pack)))?;
        let started = std::time::Instant::now();
        let stream = self
            .cold
            .stream_range(&pack, Some(copy.offset..copy.offset + copy.stored_size))
            .await;
        let pending = matches!(&stream, Err(e) if e.is_pending_restore());
        self.note_restore(&pack, pending).await;
        let stream = stream?.map(|chunk| chunk.map_err(TieringError::from));
        let sink = drain_checked(stream, id, copy.compression, sink).await?;
        self.observe_recall(started);
        Ok(sink)
    }

    /// A cold object landed whole in a tmp file on hot disk, checked against its id
    /// (the first of its copies that reads), in bounded memory (see
    /// [`ObjectReader::pipe_copy`]). Dropping the file removes it; a recall persists it.
    pub async fn stage_cold(
        &self,
        id: &ObjectId,
        copies: &[ColdCopy],
    ) -> Result<strata_tiers::TmpObject, TieringError> {
        first_good_copy(id, copies, |copy| async move {
            let hot = self.hot.clone();
            let tmp = blocking(move || Ok(hot.create_tmp_blocking()?)).await?;
            let TmpSink(tmp) = self.pipe_copy(id, copy, TmpSink(tmp)).await?;
            Ok(tmp)
        })
        .await
    }

    /// An object not on this node's hot disk landed whole in a tmp file on it, checked
    /// against its id, in bounded memory: fetched from the node whose hot disk holds it
    /// ([`ObjectReader::pipe_peer`]), else (that failing) staged from a cold copy
    /// ([`ObjectReader::stage_cold`]).
    pub async fn stage_elsewhere(
        &self,
        id: &ObjectId,
    ) -> Result<strata_tiers::TmpObject, TieringError> {
        let (this, oid) = (self.clone(), *id);
        let elsewhere = blocking(move || this.elsewhere_blocking(&oid)).await?;
        if let Some(node) = &elsewhere.node {
            let hot = self.hot.clone();
            let tmp = blocking(move || Ok(hot.create_tmp_blocking()?)).await?;
            match self.pipe_peer(id, node, TmpSink(tmp)).await {
                Ok(TmpSink(tmp)) => return Ok(tmp),
                Err(e) if !elsewhere.in_cold() => return Err(e),
                Err(e) => {
                    tracing::warn!(object = %id, node, error = %e, "cannot fetch from the node that holds it; staging a cold copy")
                }
            }
        }
        if elsewhere.replica && elsewhere.cold.is_empty() {
            let hot = self.hot.clone();
            let tmp = blocking(move || Ok(hot.create_tmp_blocking()?)).await?;
            let TmpSink(tmp) = self.pipe_replica(id, TmpSink(tmp)).await?;
            return Ok(tmp);
        }
        self.stage_cold(id, &elsewhere.cold).await
    }

    /// One ranged GET of a pack member, decompressed and checked against `id`. From a
    /// `file://` tier, the read, the decompression and the check are one blocking call.
    pub async fn read_copy(&self, id: &ObjectId, copy: &ColdCopy) -> Result<Vec<u8>, TieringError> {
        let pack = copy
            .pack_id()
            .ok_or_else(|| TieringError::Other(format!("bad pack id {:?}", copy.pack)))?;
        let started = std::time::Instant::now();
        if self.cold.is_local() {
            let (cold, oid, compression) = (self.cold.clone(), *id, copy.compression);
            let range = copy.offset..copy.offset + copy.stored_size;
            let bytes = blocking(move || {
                let stored = cold.read_range_local_blocking(&pack, range)?;
                Ok(unpack_member(&oid, &stored, compression, None)?)
            })
            .await?;
            self.observe_recall(started);
            return Ok(bytes);
        }
        let stored = self
            .cold
            .read_range(&pack, copy.offset..copy.offset + copy.stored_size)
            .await;
        let pending = matches!(&stored, Err(e) if e.is_pending_restore());
        self.note_restore(&pack, pending).await;
        let stored = stored?;
        self.observe_recall(started);
        let (oid, compression) = (*id, copy.compression);
        blocking(move || Ok(unpack_member(&oid, &stored, compression, None)?)).await
    }

    /// Reads many objects (a study), handing each to `visit` as it arrives: hot files
    /// first, then per pack one streamed GET over the span of the wanted members.
    /// Objects that cannot be read are reported in the returned list, with the reason,
    /// and do not stop the others.
    pub async fn read_many(
        &self,
        ids: &[ObjectId],
        visit: &mut (dyn FnMut(ObjectId, Vec<u8>) -> Result<(), TieringError> + Send),
    ) -> Result<Vec<(ObjectId, TieringError)>, TieringError> {
        let mut failed = Vec::new();
        // pack -> (offset, id, copy), for objects with no hot file
        let mut by_pack: BTreeMap<ObjectId, Vec<(u64, ObjectId, ColdCopy)>> = BTreeMap::new();
        for id in ids {
            let (this, oid) = (self.clone(), *id);
            let found = blocking(move || {
                if let Some(bytes) = read_hot_blocking(&this.hot, &oid) {
                    return Ok(Ok(bytes));
                }
                Ok(Err(this.elsewhere_blocking(&oid)?))
            })
            .await?;
            match found {
                Ok(bytes) => visit(*id, bytes)?,
                Err(elsewhere)
                    if elsewhere.node.is_some()
                        || (elsewhere.replica && elsewhere.cold.is_empty()) =>
                {
                    match self.read_elsewhere(id, elsewhere).await {
                        Ok(bytes) => visit(*id, bytes)?,
                        Err(e) if e.is_pending_restore() || e.is_transient() => return Err(e),
                        Err(e) => failed.push((*id, e)),
                    }
                }
                Err(Elsewhere { cold: copies, .. }) => {
                    match copies.first().and_then(|c| c.pack_id().map(|p| (p, c))) {
                        Some((pack, copy)) => {
                            by_pack
                                .entry(pack)
                                .or_default()
                                .push((copy.offset, *id, copy.clone()))
                        }
                        None => failed.push((
                            *id,
                            TieringError::Unreadable {
                                id: id.to_hex(),
                                detail: "no hot file and no cold copy".into(),
                            },
                        )),
                    }
                }
            }
        }
        for (pack, mut members) in by_pack {
            members.sort_by_key(|m| m.0);
            let mut delivered = std::collections::HashSet::new();
            if let Err(e) = self
                .stream_members(&pack, &members, visit, &mut delivered)
                .await
            {
                if e.is_pending_restore() || e.is_transient() {
                    return Err(e);
                }
                // Fall back to the other copies, one by one, for what was not delivered.
                tracing::warn!(pack = %pack, error = %e, "pack stream failed; reading the remaining members singly");
                for (_, id, _) in members.iter().filter(|m| !delivered.contains(&m.1)) {
                    let (hot, index, oid) = (self.hot.clone(), self.index.clone(), *id);
                    let copies = blocking(move || {
                        let _ = hot;
                        Ok(index.object(&oid)?.map(|r| r.cold).unwrap_or_default())
                    })
                    .await?;
                    match self.read_cold(id, &copies).await {
                        Ok(bytes) => visit(*id, bytes)?,
                        Err(e) => failed.push((*id, e)),
                    }
                }
            }
        }
        Ok(failed)
    }

    /// Streams the span of a pack covering `members` (sorted by offset) and hands each
    /// member, checked, to `visit`.
    async fn stream_members(
        &self,
        pack: &ObjectId,
        members: &[(u64, ObjectId, ColdCopy)],
        visit: &mut (dyn FnMut(ObjectId, Vec<u8>) -> Result<(), TieringError> + Send),
        delivered: &mut std::collections::HashSet<ObjectId>,
    ) -> Result<(), TieringError> {
        let (Some(first), Some(last)) = (members.first(), members.last()) else {
            return Ok(());
        };
        let start = first.0;
        let end = last.0 + last.2.stored_size;
        let started = std::time::Instant::now();
        let stream = self.cold.stream_range(pack, Some(start..end)).await;
        let pending = matches!(&stream, Err(e) if e.is_pending_restore());
        self.note_restore(pack, pending).await;
        let mut stream = stream?;
        // Keep the download going while members are decompressed, checked and handed
        // out: a separate task drains the response into a channel holding at most
        // DOWNLOAD_AHEAD bytes (chunk sizes differ: a few KiB from S3, 256 KiB from a
        // file:// tier).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let room = Arc::new(tokio::sync::Semaphore::new(DOWNLOAD_AHEAD));
        let download_room = room.clone();
        let download = tokio::spawn(async move {
            while let Some(chunk) = stream.next().await {
                let len = chunk.as_ref().map_or(0, |c| c.len().min(DOWNLOAD_AHEAD));
                match download_room.acquire_many(len as u32).await {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
                if tx.send((chunk, len)).is_err() {
                    break;
                }
            }
        });
        let _abort_on_drop = AbortOnDrop(download);
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_start = start; // pack offset of buf[0]
        let mut next = 0;
        let mut unpacking = futures::stream::FuturesOrdered::new();
        while next < members.len() {
            let (offset, id, copy) = &members[next];
            let member_end = offset + copy.stored_size;
            if buf_start + (buf.len() as u64) >= member_end {
                let from = (offset - buf_start) as usize;
                let to = (member_end - buf_start) as usize;
                let stored = buf[from..to].to_vec();
                let (oid, compression) = (*id, copy.compression);
                // members decompress and check on the blocking pool, a few at once,
                // and are handed out in pack order
                unpacking.push_back(blocking(move || {
                    Ok((oid, unpack_member(&oid, &stored, compression, None)?))
                }));
                if unpacking.len() >= UNPACK_AHEAD {
                    if let Some(done) = unpacking.next().await {
                        let (oid, bytes) = done?;
                        visit(oid, bytes)?;
                        delivered.insert(oid);
                    }
                }
                // drop what no later member needs
                let keep_from = members
                    .get(next + 1)
                    .map(|m| m.0)
                    .unwrap_or(member_end)
                    .min(buf_start + buf.len() as u64);
                buf.drain(..(keep_from - buf_start) as usize);
                buf_start = keep_from;
                next += 1;
                continue;
            }
            if buf_start < *offset {
                // bytes between wanted members are never kept
                let gap = ((offset - buf_start) as usize).min(buf.len());
                buf.drain(..gap);
                buf_start += gap as u64;
            }
            match rx.recv().await {
                Some((chunk, len)) => {
                    room.add_permits(len);
                    buf.extend_from_slice(&chunk?)
                }
                None => {
                    return Err(TieringError::Tier(TierError::InvalidRange {
                        id: *pack,
                        start,
                        end,
                        size: buf_start + buf.len() as u64,
                    }))
                }
            }
        }
        while let Some(done) = unpacking.next().await {
            let (oid, bytes) = done?;
            visit(oid, bytes)?;
            delivered.insert(oid);
        }
        self.observe_recall(started);
        Ok(())
    }
}

/// Streams a whole pack into a temporary file and checks its blake3 against its id (verify, reindex).
/// Blocking: `rt` runs the download.
pub fn download_pack_blocking(
    cold: &ColdStore,
    rt: &tokio::runtime::Handle,
    pack_id: &ObjectId,
    tmp_dir: &Path,
) -> std::result::Result<tempfile::NamedTempFile, String> {
    use futures::StreamExt;
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new_in(tmp_dir).map_err(|e| e.to_string())?;
    let hash = rt.block_on(async {
        let mut stream = cold
            .stream_range(pack_id, None)
            .await
            .map_err(|e| e.to_string())?;
        let mut hasher = blake3::Hasher::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(ObjectId::from_hash(hasher.finalize()))
    })?;
    if &hash != pack_id {
        return Err(format!("the pack's bytes hash to {hash}, not to its id"));
    }
    Ok(file)
}

/// Tries `read` on each cold copy in turn and returns the first success. A pending
/// restore or a failing cold tier ends the attempt at once (another copy in the same
/// tier fares no better); other failures are logged and the next copy is tried.
async fn first_good_copy<'c, T, F, Fut>(
    id: &ObjectId,
    copies: &'c [ColdCopy],
    mut read: F,
) -> Result<T, TieringError>
where
    F: FnMut(&'c ColdCopy) -> Fut,
    Fut: std::future::Future<Output = Result<T, TieringError>>,
{
    let mut last = format!("no hot file and no cold copy of {id}");
    for copy in copies {
        match read(copy).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_pending_restore() || e.is_transient() => return Err(e),
            Err(e) => {
                tracing::warn!(object = %id, pack = %copy.pack, error = %e, "cold copy unreadable");
                last = e.to_string();
            }
        }
    }
    Err(TieringError::Unreadable {
        id: id.to_hex(),
        detail: last,
    })
}

/// Writes the chunks of `stream` — the stored bytes of object `id`, compressed as
/// `compression` says — into `sink` on the blocking pool, a chunk at a time, hashing what
/// comes out, and returns `sink` once the bytes hash to `id`. On any failure (the stream,
/// the decompression, a hash mismatch) the sink has received bytes that must not be used.
async fn drain_checked<W, S>(
    mut stream: S,
    id: &ObjectId,
    compression: crate::index::Compression,
    sink: W,
) -> Result<W, TieringError>
where
    W: std::io::Write + Send + 'static,
    S: futures::Stream<Item = Result<bytes::Bytes, TieringError>> + Unpin,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let oid = *id;
    let writer = tokio::task::spawn_blocking(move || -> Result<W, TieringError> {
        let corrupt = |reason: String| {
            TieringError::Pack(super::pack::PackError::CorruptMember {
                name: oid.to_hex(),
                reason,
            })
        };
        let mut out = HashingWriter {
            inner: sink,
            hasher: blake3::Hasher::new(),
        };
        let failed = |e: std::io::Error| corrupt(format!("write: {e}"));
        match compression {
            crate::index::Compression::None => {
                while let Some(chunk) = rx.blocking_recv() {
                    std::io::Write::write_all(&mut out, &chunk).map_err(failed)?;
                }
            }
            crate::index::Compression::Zstd => {
                let mut decoder = zstd::stream::write::Decoder::new(&mut out)
                    .map_err(|e| corrupt(format!("zstd: {e}")))?;
                while let Some(chunk) = rx.blocking_recv() {
                    std::io::Write::write_all(&mut decoder, &chunk)
                        .map_err(|e| corrupt(format!("zstd: {e}")))?;
                }
                std::io::Write::flush(&mut decoder).map_err(|e| corrupt(format!("zstd: {e}")))?;
            }
        }
        std::io::Write::flush(&mut out).map_err(failed)?;
        let actual = ObjectId::from_hash(out.hasher.finalize());
        if actual != oid {
            return Err(corrupt(format!("its bytes hash to {actual}")));
        }
        Ok(out.inner)
    });
    let mut streamed = Ok(());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed: its error says why
                }
            }
            Err(e) => {
                streamed = Err(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| TieringError::Other(format!("the writer task failed: {e}")))?;
    streamed?;
    written
}

/// Hashes what it passes on (blake3), to check streamed bytes against their id.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A hot tmp file as a writer (its writes hint the kernel to start writeback).
struct TmpSink(strata_tiers::TmpObject);

impl std::io::Write for TmpSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .write_all_blocking(buf)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Aborts a task when dropped (an early return stops the download).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
