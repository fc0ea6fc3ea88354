//! # Pack windows: one ranged GET for the next members a retrieval reads (issue 13)
//!
//! A retrieval (WADO-RS, C-MOVE, C-GET) reads its objects one by one — a few at once — in
//! its own order, each through [`crate::archive::retrieve::RetrievalReader`]. From a
//! remote cold tier (S3), a single read of a pack member is one ranged GET, so a study
//! read from its pack costs a round trip per instance. [`PackReadAhead`] reads, instead,
//! the span of the pack that covers the member asked for and the members of the same
//! pack that the retrieval asks for next (a *window*, at most `[cold] read_window_mb` of
//! the pack, 8 MiB by default), with one ranged GET; each member is then cut from the window, decompressed and
//! checked against its id exactly as a single read does ([`super::pack::unpack_member`]).
//!
//! - What a window holds is planned from the index records of the objects around the
//!   one asked for in the retrieval's order ([`PLAN_BEHIND`] before it, since readers
//!   running at once ask in any order, and [`PLAN_AHEAD`] after): those with no hot copy
//!   on this node (nor on a node it fetches from) whose first cold copy is in the same
//!   pack, and that no window holds yet. A retrieval reads each study in pack order (by
//!   object id), so consecutive windows cover consecutive spans of a pack. Each record is
//!   looked up once per retrieval (on PostgreSQL a query each), however often planned.
//! - Anything that goes wrong with a window (the GET fails, the pack awaits a restore, a
//!   member does not check) sends the member back to the single read
//!   ([`ObjectReader::read_elsewhere`]), which tries every copy and says what is wrong.
//! - The next window is fetched while this one is read: when a reader first asks for a
//!   member of a window, and the first object after the window's members in the
//!   retrieval's order (skipping objects read from the hot tier) is in no window yet, the
//!   window for that object is planned and its GET started in the background. This
//!   happens once per window, never in a chain, and at most one window ahead; the next
//!   window's round trip then overlaps the reading of this one.
//! - Memory: at most [`WINDOWS`] windows per retrieval (32 MiB by default); a window is
//!   dropped once each of its members was taken, or when a newer one needs its place
//!   (a dropped window lives on while a reader still cuts its member from it).
//! - A `file://` tier is read member by member: a positioned read costs no round trip.

use super::blocking;
use super::pack::unpack_member;
use super::reader::{Elsewhere, ObjectReader};
use crate::index::ColdCopy;
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use strata_tiers::ObjectId;

/// Windows one retrieval keeps at once: the one fetched ahead, and up to three that its
/// readers (a few at once, in any order) are still cutting members from.
pub const WINDOWS: usize = 4;
/// Objects after the one asked for, in the retrieval's order, looked at when a window
/// is planned.
pub const PLAN_AHEAD: usize = 64;
/// Objects before it looked at too: readers running at once (a WADO-RS answer reads 4
/// ahead, a C-MOVE up to 16 associations) ask in any order.
pub const PLAN_BEHIND: usize = 16;

/// The pack windows of one retrieval; shared by the tasks that read its objects.
pub struct PackReadAhead {
    /// The objects of the retrieval, in the order it reads them.
    order: Vec<ObjectId>,
    largest: u64,
    positions: OnceLock<HashMap<ObjectId, usize>>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The windows kept, oldest first.
    windows: VecDeque<Arc<Window>>,
    /// Objects planned into a window or read singly: no later window holds them.
    claimed: HashSet<ObjectId>,
    /// Each object looked up so far: its first cold copy, `None` when it has none or
    /// is hot here (or on a node this one fetches from).
    known: HashMap<ObjectId, Option<ColdCopy>>,
}

/// A span of one pack, `start..end`, and the members read from it.
struct Window {
    pack: ObjectId,
    start: u64,
    end: u64,
    members: HashMap<ObjectId, ColdCopy>,
    /// Members read from it so far (an object a retrieval names twice counts once).
    taken: std::sync::Mutex<HashSet<ObjectId>>,
    /// The span's bytes once fetched; `None` when the GET failed.
    bytes: tokio::sync::OnceCell<Option<Bytes>>,
    /// Set once the window after it was asked for ([`PackReadAhead::fetch_next`]).
    next_started: AtomicBool,
}

impl PackReadAhead {
    /// For a retrieval reading `order`, in that order; objects larger than `largest`
    /// (bytes, Part-10) are read another way (streamed from a staged copy) and never
    /// planned into a window.
    pub fn new(order: Vec<ObjectId>, largest: u64) -> Self {
        PackReadAhead {
            order,
            largest,
            positions: OnceLock::new(),
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// The Part-10 bytes of `id`, checked against it, from a window of its pack; `None`
    /// when no window applies or it failed (the caller then reads the object singly):
    /// a `file://` tier, an object held by another node, no cold copy, or no other
    /// member of its pack coming next.
    pub(crate) async fn read(
        self: &Arc<Self>,
        reader: &ObjectReader,
        id: &ObjectId,
        elsewhere: &Elsewhere,
    ) -> Option<Vec<u8>> {
        if reader.cold.is_local() || reader.window_bytes == 0 || elsewhere.node.is_some() {
            return None;
        }
        let copy = elsewhere.cold.first()?;
        let pack = copy.pack_id()?;
        let window = self.window_for(reader, id, pack).await?;
        self.fetch_next(&window, reader);
        let bytes = window
            .bytes
            .get_or_init(|| window.fetch(reader))
            .await
            .clone();
        self.taken(&window, id).await;
        let bytes = bytes?;
        let member = window.members.get(id)?;
        let from = (member.offset - window.start) as usize;
        let stored = bytes.slice(from..from + member.stored_size as usize);
        let (oid, compression) = (*id, member.compression);
        match blocking(move || Ok(unpack_member(&oid, &stored, compression, None)?)).await {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(object = %id, pack = %pack, error = %e, "pack member from a window does not check; reading it singly");
                None
            }
        }
    }

    /// The window holding `id`, planned now when none does.
    async fn window_for(
        &self,
        reader: &ObjectReader,
        id: &ObjectId,
        pack: ObjectId,
    ) -> Option<Arc<Window>> {
        let held = |state: &State| {
            state
                .windows
                .iter()
                .find(|w| w.pack == pack && w.members.contains_key(id))
                .cloned()
        };
        let state = self.state.lock().await;
        if let Some(w) = held(&state) {
            return Some(w);
        }
        let Some(at) = self
            .positions
            .get_or_init(|| {
                let mut at = HashMap::with_capacity(self.order.len());
                for (i, id) in self.order.iter().enumerate() {
                    at.entry(*id).or_insert(i);
                }
                at
            })
            .get(id)
            .copied()
        else {
            tracing::debug!(object = %id, "not in the retrieval's order");
            return None;
        };
        // this object first; then those just before it (readers running at once ask in
        // any order), nearest first; then the next ones
        let wanted: Vec<ObjectId> = std::iter::once(at)
            .chain((at.saturating_sub(PLAN_BEHIND)..at).rev())
            .chain(at + 1..(at + 1 + PLAN_AHEAD).min(self.order.len()))
            .map(|i| self.order[i])
            .collect();
        drop(state);
        if let Err(e) = self.learn(reader, &wanted).await {
            tracing::debug!(object = %id, error = %e, "pack window not planned");
            return None;
        }
        let mut state = self.state.lock().await;
        // another reader may have planned a window holding it meanwhile
        if let Some(w) = held(&state) {
            return Some(w);
        }
        let planned: Vec<(ObjectId, ColdCopy)> = wanted
            .iter()
            .filter_map(|oid| Some((*oid, state.known.get(oid)?.clone()?)))
            .collect();
        let candidates = planned.len();
        let claimed = |oid: &ObjectId| state.claimed.contains(oid);
        let Some(window) = plan(pack, id, reader.window_bytes, planned, claimed) else {
            tracing::debug!(object = %id, pack = %pack, candidates, "no pack window: read singly");
            state.claimed.insert(*id);
            return None;
        };
        tracing::debug!(object = %id, pack = %pack, members = window.members.len(), start = window.start, end = window.end, "pack window planned");
        state.claimed.extend(window.members.keys().copied());
        let window = Arc::new(window);
        state.windows.push_back(window.clone());
        if state.windows.len() > WINDOWS {
            state.windows.pop_front();
        }
        Some(window)
    }

    /// Records in `known` each of `ids` not known yet: its first cold copy; `None` when
    /// it has none, is hot on this node (or on a node this one fetches from), or is
    /// larger than `largest` (streamed from a staged copy instead). Each record is thus
    /// looked up once per retrieval, however often planned, and without holding the
    /// lock (other readers take their members meanwhile).
    async fn learn(
        &self,
        reader: &ObjectReader,
        ids: &[ObjectId],
    ) -> Result<(), super::TieringError> {
        let missing: Vec<ObjectId> = {
            let state = self.state.lock().await;
            ids.iter()
                .filter(|oid| !state.known.contains_key(*oid))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let (index, node, fetches, largest) = (
            reader.index.clone(),
            reader.node.clone(),
            reader.peers.is_some(),
            self.largest,
        );
        let found = blocking(move || {
            let mut copies = Vec::with_capacity(missing.len());
            for oid in missing {
                let copy = index.object(&oid)?.and_then(|record| {
                    let hot =
                        record.hot_on(&node) || (fetches && record.hot_elsewhere(&node).is_some());
                    // an object streamed from a staged copy is never read from a window
                    let staged = record.size > largest;
                    (!hot && !staged)
                        .then(|| record.cold.into_iter().next())
                        .flatten()
                });
                copies.push((oid, copy));
            }
            Ok(copies)
        })
        .await?;
        self.state.lock().await.known.extend(found);
        Ok(())
    }

    /// Once per window: plans, in the background, the window for the first cold object
    /// after `window`'s members in the retrieval's order, unless a window holds it already
    /// (or it was read singly), and starts its GET, so that it is on its way while
    /// `window` is read. The task holds the retrieval weakly: a retrieval dropped before
    /// the GET starts costs nothing more.
    fn fetch_next(self: &Arc<Self>, window: &Window, reader: &ObjectReader) {
        if window.next_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(positions) = self.positions.get() else {
            return;
        };
        let Some(last) = window.members.keys().filter_map(|m| positions.get(m)).max() else {
            return;
        };
        let (this, reader, after) = (Arc::downgrade(self), reader.clone(), *last);
        let task = async move {
            let Some(this) = this.upgrade() else {
                return;
            };
            let Some((next, copy)) = this.next_cold(&reader, after).await else {
                return;
            };
            let Some(pack) = copy.pack_id() else {
                return;
            };
            if let Some(w) = this.window_for(&reader, &next, pack).await {
                w.bytes.get_or_init(|| w.fetch(&reader)).await;
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(task));
    }

    /// The first object after position `after` in the retrieval's order (within
    /// [`PLAN_AHEAD`]) that has a cold copy to read from, with that copy (looked up
    /// in the index when not yet known); `None` when there is none, or when it is in a
    /// window already or was read singly (the next window is under way: nothing to
    /// fetch ahead).
    async fn next_cold(&self, reader: &ObjectReader, after: usize) -> Option<(ObjectId, ColdCopy)> {
        let end = (after + 1 + PLAN_AHEAD).min(self.order.len());
        let next = self.order.get(after + 1..end)?;
        self.learn(reader, next).await.ok()?;
        let state = self.state.lock().await;
        for oid in next {
            if state.claimed.contains(oid) {
                return None;
            }
            // an object read from the hot tier (or with no cold copy) is skipped
            if let Some(Some(copy)) = state.known.get(oid) {
                return Some((*oid, copy.clone()));
            }
        }
        None
    }

    /// Notes `id` taken from `window`; the window goes once each member was.
    async fn taken(&self, window: &Arc<Window>, id: &ObjectId) {
        let all = {
            let mut taken = window.taken.lock().unwrap_or_else(|p| p.into_inner());
            taken.insert(*id);
            taken.len() >= window.members.len()
        };
        if all {
            self.state
                .lock()
                .await
                .windows
                .retain(|w| !Arc::ptr_eq(w, window));
        }
    }
}

/// A window of `pack` for `first` (the first of `candidates`, each with its first cold
/// copy, the others in the order they are wanted), holding with it the candidates in
/// `pack` not yet claimed (`claimed`: in a window, or read singly) while the span
/// covering them stays within `max_span` bytes and at least a quarter of it is wanted (a
/// few members scattered over a pack are read singly rather than with the bytes between
/// them). `None` unless it holds `first` and at least one more.
fn plan(
    pack: ObjectId,
    first: &ObjectId,
    max_span: u64,
    candidates: Vec<(ObjectId, ColdCopy)>,
    claimed: impl Fn(&ObjectId) -> bool,
) -> Option<Window> {
    let mut candidates = candidates.into_iter();
    let (oid, copy) = candidates.next()?;
    if oid != *first || copy.pack_id() != Some(pack) || copy.stored_size > max_span {
        return None;
    }
    let (mut start, mut end, mut wanted) = (
        copy.offset,
        copy.offset + copy.stored_size,
        copy.stored_size,
    );
    let mut members = HashMap::from([(oid, copy)]);
    for (oid, copy) in candidates {
        if copy.pack_id() != Some(pack) || members.contains_key(&oid) || claimed(&oid) {
            continue;
        }
        let (s, e) = (
            start.min(copy.offset),
            end.max(copy.offset.saturating_add(copy.stored_size)),
        );
        if e - s > max_span || (wanted + copy.stored_size) * 4 < e - s {
            continue;
        }
        (start, end, wanted) = (s, e, wanted + copy.stored_size);
        members.insert(oid, copy);
    }
    (members.len() > 1).then(|| Window {
        pack,
        start,
        end,
        members,
        taken: std::sync::Mutex::new(HashSet::new()),
        bytes: tokio::sync::OnceCell::new(),
        next_started: AtomicBool::new(false),
    })
}

impl Window {
    /// One ranged GET of the span; `None` (logged) when it fails.
    async fn fetch(&self, reader: &ObjectReader) -> Option<Bytes> {
        let started = std::time::Instant::now();
        match reader
            .cold
            .read_range(&self.pack, self.start..self.end)
            .await
        {
            Ok(bytes) if bytes.len() as u64 == self.end - self.start => {
                reader.observe_recall(started);
                Some(bytes)
            }
            Ok(bytes) => {
                tracing::warn!(pack = %self.pack, got = bytes.len(), wanted = self.end - self.start, "short pack window; reading its members singly");
                None
            }
            Err(e) => {
                tracing::debug!(pack = %self.pack, error = %e, "pack window not read; reading its members singly");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Compression;

    fn copy(pack: &ObjectId, offset: u64, size: u64) -> ColdCopy {
        ColdCopy {
            pack: pack.to_hex(),
            offset,
            stored_size: size,
            compression: Compression::Zstd,
        }
    }

    fn id(n: u8) -> ObjectId {
        ObjectId::of_bytes(&[n])
    }

    const WINDOW_BYTES: u64 = 8 << 20;

    #[test]
    fn a_window_holds_the_unclaimed_members_of_the_same_pack_within_its_span() {
        let (p, q) = (id(100), id(101));
        let mb = 1 << 20;
        let candidates = vec![
            (id(1), copy(&p, 10 * mb, mb)),
            (id(2), copy(&p, 11 * mb, mb)),
            (id(3), copy(&q, 0, mb)),           // another pack
            (id(4), copy(&p, 9 * mb, mb)),      // before the first: still within the span
            (id(5), copy(&p, 17 * mb, mb)),     // 9..18 MiB: past the span
            (id(6), copy(&p, 12 * mb, mb)),     // claimed: in another window
            (id(7), copy(&p, 13 * mb, 2 * mb)), // 9..15 MiB
            (id(8), copy(&p, 0, 1024)),         // 0..15 MiB: past the span
        ];
        let w = plan(p, &id(1), WINDOW_BYTES, candidates, |o| *o == id(6)).expect("a window");
        let mut held: Vec<_> = w.members.keys().copied().collect();
        held.sort();
        let mut want = vec![id(1), id(2), id(4), id(7)];
        want.sort();
        assert_eq!(held, want);
        assert_eq!((w.start, w.end), (9 * mb, 15 * mb));
        assert!(w.end - w.start <= WINDOW_BYTES);
        // the object asked for is in a window already dropped: it still gets one
        let again = vec![(id(1), copy(&p, 0, mb)), (id(2), copy(&p, mb, mb))];
        let w = plan(p, &id(1), WINDOW_BYTES, again, |o| *o == id(1)).expect("a window");
        assert_eq!(w.members.len(), 2);
    }

    #[test]
    fn no_window_for_a_lone_member_a_member_too_large_or_a_missing_first() {
        let p = id(100);
        let mb = 1 << 20;
        // nothing else of its pack comes next
        assert!(plan(
            p,
            &id(1),
            WINDOW_BYTES,
            vec![(id(1), copy(&p, 0, mb))],
            |_| false
        )
        .is_none());
        // larger than a window by itself
        let big = vec![
            (id(1), copy(&p, 0, WINDOW_BYTES + 1)),
            (id(2), copy(&p, WINDOW_BYTES + 1, mb)),
        ];
        assert!(plan(p, &id(1), WINDOW_BYTES, big, |_| false).is_none());
        // too sparse: 2 KiB wanted of a span of 2 MiB
        let sparse = vec![
            (id(1), copy(&p, 0, 1024)),
            (id(2), copy(&p, 2 * mb - 1024, 1024)),
        ];
        assert!(plan(p, &id(1), WINDOW_BYTES, sparse, |_| false).is_none());
        // the object asked for has no record (the list starts with another)
        let other = vec![(id(2), copy(&p, 0, mb)), (id(3), copy(&p, mb, mb))];
        assert!(plan(p, &id(1), WINDOW_BYTES, other, |_| false).is_none());
    }
}
