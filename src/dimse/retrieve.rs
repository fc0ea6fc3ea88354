//! The C-MOVE and C-GET SCPs (PS3.4 C.4.2, C.4.3): the identifier (PATIENT, STUDY,
//! SERIES or IMAGE level) is resolved by the retrieve use case
//! ([`Archive::retrieve`](crate::archive::Archive::retrieve)) to the served version of
//! each instance; each is sent with a C-STORE sub-operation in its stored transfer
//! syntax, with pending responses carrying the four sub-operation counters (US,
//! saturated at 65,535; kept whole inside). Ends with 0x0000, 0xB000 (some failed —
//! FailedSOPInstanceUIDList in the identifier — or some ended with a warning), 0xA702
//! (none could be sent), or 0xFE00 when cancelled. The use case audits the retrieval.
//!
//! - C-MOVE opens new associations to the destination named in the request — which
//!   must be one of the configured `[[dicom.peers]]`, else 0xA801 — up to
//!   `move_associations` of them at once, sharing one queue of instances: a lane the
//!   destination does not accept takes nothing, so a destination that serves one
//!   association at a time still gets every instance.
//! - C-GET sends over the requester's own association, on the storage contexts it
//!   proposed with the SCP role (role selection).
//!
//! Objects go in their stored transfer syntax; when the receiver does not accept it,
//! native syntaxes (implicit/explicit VR little endian, explicit big endian, deflated)
//! are re-encoded among themselves (dicom-rs), encapsulated ones are decompressed to a
//! native syntax (dicom-pixeldata), and anything that cannot be converted fails its
//! sub-operation with the reason in the Error Comment.

use super::command::{field, status, tag, Command, ResponseBuilder};
use super::context::{cancel_requested, AssocContext, Association, Link, Message};
use super::pdv::{pdv_limit, send_command, send_data};
use super::AssocError;
use crate::archive::retrieve::{Opened, RetrievalReader, RetrieveItem};
use crate::archive::Error;
use crate::dicom::transcode::{convertible_to_native, dataset_in, NATIVE};
use crate::query::{Model, Query};
use dicom_ul::association::AsyncAssociation;
use dicom_ul::pdu::{PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const FAILED_SOP_INSTANCE_UID_LIST: u32 = 0x0008_0058;

/// How long a C-STORE sub-operation may wait for its response.
const SUB_OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Why one C-STORE sub-operation did not succeed.
#[derive(Debug, thiserror::Error)]
enum SubOpError {
    /// The C-MOVE destination could not be associated with.
    #[error("cannot reach {address}: {detail}")]
    Unreachable { address: String, detail: String },
    /// The association carrying the sub-operations broke: the rest cannot be sent on it.
    #[error(transparent)]
    Broken(#[from] AssocError),
    /// No accepted presentation context fits the object.
    #[error(
        "the receiver accepted no presentation context for {sop_class} in {transfer_syntax}{}",
        if *convertible {
            " nor in a native syntax it could be converted to"
        } else {
            " (objects in this syntax are sent only as stored: Strata has no decoder for it)"
        }
    )]
    NoContext {
        sop_class: String,
        transfer_syntax: String,
        convertible: bool,
    },
    /// The object could not be read or converted.
    #[error("{0}")]
    Object(String),
    /// The receiver did not answer the C-STORE-RQ in time.
    #[error("no C-STORE-RSP within {0:?}")]
    NoResponse(Duration),
    /// The receiver answered with something that is not a C-STORE-RSP with a status.
    #[error("bad C-STORE-RSP: {0}")]
    BadResponse(String),
}

impl SubOpError {
    /// Whether a C-MOVE lane stops sending on its association: it is gone, or its
    /// receiver stopped answering (a late answer would be taken for the next one's). A
    /// C-GET ends only when its association is gone ([`SubOpError::Broken`]).
    fn stops_lane(&self) -> bool {
        matches!(self, SubOpError::Broken(_) | SubOpError::NoResponse(_))
    }

    /// The reason as an Error Comment (0000,0902) can carry it (LO: 64 characters).
    fn comment(&self) -> String {
        match self {
            SubOpError::Unreachable { .. } => "C-MOVE destination unreachable".into(),
            SubOpError::Broken(_) => "association broken".into(),
            SubOpError::NoContext { .. } => {
                "no accepted presentation context fits the stored object".into()
            }
            SubOpError::Object(_) => "stored object could not be read or converted".into(),
            SubOpError::NoResponse(_) => "receiver sent no C-STORE-RSP in time".into(),
            SubOpError::BadResponse(_) => "receiver sent a bad C-STORE-RSP".into(),
        }
    }
}

/// Sub-operation counters, kept whole: a study may hold more than 65,535 instances. The
/// responses carry them as US (PS3.7 Table 9.3-8), saturated at 65,535
/// ([`Counters::us`]); the operation itself goes on to the end.
#[derive(Default)]
struct Counters {
    remaining: usize,
    completed: usize,
    failed: usize,
    warning: usize,
    /// Why the first failed sub-operation failed, for the final response's Error Comment.
    first_failure: Option<String>,
}

impl Counters {
    /// A counter as the US a response carries: saturated at 65,535.
    fn us(n: usize) -> u16 {
        n.min(u16::MAX as usize) as u16
    }

    /// Counts one sub-operation's outcome; a failure also lists its instance.
    fn count(
        &mut self,
        item: &RetrieveItem,
        outcome: &Result<u16, SubOpError>,
        op: &str,
        failed: &mut Vec<String>,
    ) {
        self.remaining = self.remaining.saturating_sub(1);
        match outcome {
            Ok(status::SUCCESS) => self.completed += 1,
            Ok(s) if s & 0xF000 == 0xB000 => self.warning += 1,
            Ok(s) => {
                tracing::warn!(
                    sop = item.sop_instance_uid,
                    status = format!("{s:#06x}"),
                    "{op} sub-operation refused"
                );
                self.first_failure
                    .get_or_insert_with(|| format!("C-STORE refused with status {s:#06X}"));
                self.failed += 1;
                failed.push(item.sop_instance_uid.clone());
            }
            Err(e) => {
                if !matches!(e, SubOpError::Unreachable { .. }) {
                    tracing::warn!(sop = item.sop_instance_uid, error = %e, "{op} sub-operation failed");
                }
                self.first_failure.get_or_insert_with(|| e.comment());
                self.failed += 1;
                failed.push(item.sop_instance_uid.clone());
            }
        }
    }
}

/// A C-MOVE or C-GET response with the counters (PS3.7 9.3.4.2, 9.3.3.2).
fn retrieve_rsp(
    req: &Message,
    status: u16,
    c: &Counters,
    with_data: bool,
    comment: &str,
) -> Vec<u8> {
    let request = req.incoming.command_field;
    let mut b = ResponseBuilder::new(request, req.incoming.message_id, status)
        .uid(tag::AFFECTED_SOP_CLASS_UID, &req.sop_class)
        .u16(tag::COMPLETED_SUB_OPERATIONS, Counters::us(c.completed))
        .u16(tag::FAILED_SUB_OPERATIONS, Counters::us(c.failed))
        .u16(tag::WARNING_SUB_OPERATIONS, Counters::us(c.warning));
    if status == status::PENDING {
        b = b.u16(tag::REMAINING_SUB_OPERATIONS, Counters::us(c.remaining));
    }
    if with_data {
        b = b.u16(tag::COMMAND_DATA_SET_TYPE, 0x0001);
    }
    if !comment.is_empty() {
        b = b.text(tag::ERROR_COMMENT, comment);
    }
    b.encode()
}

/// One association's worth of C-MOVE sub-operations.
struct Lane {
    our_ae: String,
    max_pdu: u32,
    read_timeout: Duration,
    address: String,
    called: String,
    /// For a destination with `tls = true`: the client configuration and the name its
    /// certificate must carry (its `host`).
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    reader: RetrievalReader,
    move_message_id: u16,
}

/// The work the lanes of one C-MOVE share: the next item to send, and how many lanes
/// are still opening their association and how many have one.
struct LaneQueue {
    next: AtomicUsize,
    opening: AtomicUsize,
    connected: AtomicUsize,
}

impl LaneQueue {
    fn new(lanes: usize) -> Self {
        LaneQueue {
            next: AtomicUsize::new(0),
            opening: AtomicUsize::new(lanes),
            connected: AtomicUsize::new(0),
        }
    }

    /// The next item's index, until every item was taken.
    fn take(&self, len: usize) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::AcqRel);
        (i < len).then_some(i)
    }
}

impl Lane {
    /// Opens one association to the destination and sends items taken from the shared
    /// `queue` until none is left, reporting each outcome; stops early when `stop` is set
    /// (C-CANCEL). A lane that cannot open its association takes nothing: the others
    /// send everything (a destination that takes one association at a time still gets
    /// every instance). Only when no lane could connect are the items reported as
    /// unreachable, by the last lane to give up.
    async fn run(
        &self,
        items: &[RetrieveItem],
        queue: &LaneQueue,
        tx: &tokio::sync::mpsc::Sender<(usize, Result<u16, SubOpError>)>,
        stop: &AtomicBool,
    ) {
        // one presentation context per (SOP class, stored transfer syntax), at most 128
        let contexts: BTreeSet<(String, String)> = items
            .iter()
            .map(|item| (item.sop_class_uid.clone(), item.transfer_syntax_uid.clone()))
            .collect();
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(self.our_ae.clone())
            .called_ae_title(self.called.clone())
            .max_pdu_length(self.max_pdu)
            .connection_timeout(Duration::from_secs(10))
            .read_timeout(self.read_timeout);
        for (class, ts) in contexts.iter().take(128) {
            options = options.with_presentation_context(class.clone(), proposals(ts));
        }
        match &self.tls {
            Some((config, server_name)) => {
                let opened = options
                    .tls_config(config.clone())
                    .server_name(server_name)
                    .establish_with_async_tls(&self.address)
                    .await;
                self.send_over(opened, |s| s.get_ref().0, items, queue, tx, stop)
                    .await
            }
            None => {
                let opened = options.establish_with_async(&self.address).await;
                self.send_over(opened, |s| s, items, queue, tx, stop).await
            }
        }
    }

    /// Sends items over the association `opened` (plain or TLS; `tcp` reaches its TCP
    /// stream), or, when it could not be opened, lets the other lanes send them — or,
    /// if no lane could connect, reports them unreachable.
    async fn send_over<S: Link>(
        &self,
        opened: Result<
            dicom_ul::association::client::AsyncClientAssociation<S>,
            dicom_ul::association::Error,
        >,
        tcp: impl Fn(&S) -> &tokio::net::TcpStream,
        items: &[RetrieveItem],
        queue: &LaneQueue,
        tx: &tokio::sync::mpsc::Sender<(usize, Result<u16, SubOpError>)>,
        stop: &AtomicBool,
    ) {
        let mut dest = match opened {
            Ok(d) => {
                queue.connected.fetch_add(1, Ordering::AcqRel);
                queue.opening.fetch_sub(1, Ordering::AcqRel);
                d
            }
            Err(e) => {
                let last = queue.opening.fetch_sub(1, Ordering::AcqRel) == 1;
                if !last || queue.connected.load(Ordering::Acquire) > 0 {
                    tracing::info!(destination = %self.address, error = %e, "an extra C-MOVE association was not opened; the others send its share");
                    return;
                }
                while let Some(i) = queue.take(items.len()) {
                    let unreachable = SubOpError::Unreachable {
                        address: self.address.clone(),
                        detail: e.to_string(),
                    };
                    if tx.send((i, Err(unreachable))).await.is_err() {
                        break;
                    }
                }
                return;
            }
        };
        // Nagle would hold each small command PDU for the peer's delayed ACK (~40 ms)
        let _ = tcp(dest.inner_stream()).set_nodelay(true);
        let accepted = accepted_contexts(dest.presentation_contexts());
        let max = pdv_limit(dest.acceptor_max_pdu_length());
        let mut message_id: u16 = 0;
        while !stop.load(Ordering::Acquire) {
            let Some(i) = queue.take(items.len()) else {
                break;
            };
            let item = &items[i];
            message_id = message_id.wrapping_add(1);
            let mut ignored = false;
            let outcome = send_item(
                &mut dest,
                &self.reader,
                &accepted,
                item,
                message_id,
                Some((&self.our_ae, self.move_message_id)),
                max,
                &mut ignored,
            )
            .await;
            let stop_lane = matches!(&outcome, Err(e) if e.stops_lane());
            if tx.send((i, outcome)).await.is_err() || stop_lane {
                break;
            }
        }
        let _ = dest.release().await;
    }
}

/// Sends one item as a C-STORE sub-operation on `dest`: picks the context, reads the
/// object (converting among native syntaxes when needed), sends it, and returns the
/// response status.
#[allow(clippy::too_many_arguments)]
async fn send_item<A: AsyncAssociation<S> + Send, S: Link>(
    dest: &mut A,
    reader: &RetrievalReader,
    accepted: &[(u8, String, String)],
    item: &RetrieveItem,
    message_id: u16,
    originator: Option<(&str, u16)>,
    max_pdv: usize,
    cancel_seen: &mut bool,
) -> Result<u16, SubOpError> {
    let (pc_id, payload) = payload_for(reader, accepted, item).await?;
    store_one(
        dest,
        pc_id,
        message_id,
        item,
        &payload,
        originator,
        max_pdv,
        cancel_seen,
    )
    .await
}

/// The presentation context an item goes on and its data set, read (and converted)
/// for it: a large object that goes as stored is streamed from a file — its hot file,
/// or its cold copy staged on hot disk (bounded memory); anything else is read, checked
/// and converted in memory. An error when no accepted context fits, or the object
/// cannot be read or converted.
async fn payload_for(
    reader: &RetrievalReader,
    accepted: &[(u8, String, String)],
    item: &RetrieveItem,
) -> Result<(u8, Payload), SubOpError> {
    let (pc_id, _, target) = context_for(accepted, item).ok_or_else(|| SubOpError::NoContext {
        sop_class: item.sop_class_uid.clone(),
        transfer_syntax: item.transfer_syntax_uid.clone(),
        convertible: convertible_to_native(&item.transfer_syntax_uid),
    })?;
    let payload = match reader
        .open(item, target)
        .await
        .map_err(|e| SubOpError::Object(format!("read object {}: {e}", item.id)))?
    {
        Opened::File(file) => Payload::File(file),
        Opened::Whole(bytes) => Payload::Bytes(dataset_for(bytes, item, target).await?),
    };
    Ok((*pc_id, payload))
}

/// What a C-STORE sub-operation sends as its data set.
enum Payload {
    Bytes(Vec<u8>),
    /// The data set in a verified file (a hot file, or a staged cold object), sent as
    /// read.
    File(crate::archive::retrieve::StreamFile),
}

/// Sends one stored object with C-STORE on `dest` (a new association for C-MOVE, the
/// requester's own for C-GET) in PDVs of at most `max_pdv` bytes; returns the response
/// status. A C-CANCEL arriving meanwhile (C-GET) sets `cancel_seen`. A failure to send
/// or receive breaks the association; a missing or malformed answer fails this
/// sub-operation only.
#[allow(clippy::too_many_arguments)]
async fn store_one<A: AsyncAssociation<S> + Send, S: Link>(
    dest: &mut A,
    pc_id: u8,
    message_id: u16,
    item: &RetrieveItem,
    payload: &Payload,
    originator: Option<(&str, u16)>,
    max_pdv: usize,
    cancel_seen: &mut bool,
) -> Result<u16, SubOpError> {
    let mut cmd = ResponseBuilder::request(field::C_STORE_RQ, message_id, true)
        .uid(tag::AFFECTED_SOP_CLASS_UID, &item.sop_class_uid)
        .uid(tag::AFFECTED_SOP_INSTANCE_UID, &item.sop_instance_uid);
    if let Some((ae, id)) = originator {
        cmd = cmd
            .text(tag::MOVE_ORIGINATOR_AE, ae)
            .u16(tag::MOVE_ORIGINATOR_MESSAGE_ID, id);
    }
    send_command(dest, pc_id, cmd.encode()).await?;
    match payload {
        Payload::Bytes(dataset) => send_data(dest, pc_id, dataset, max_pdv).await?,
        Payload::File(f) => {
            super::pdv::send_data_file(dest, pc_id, &f.head, &f.path, f.offset, f.len, max_pdv)
                .await?
        }
    }
    let bad = |detail: String| SubOpError::BadResponse(detail);
    loop {
        match tokio::time::timeout(SUB_OPERATION_TIMEOUT, AsyncAssociation::receive(dest)).await {
            Err(_) => return Err(SubOpError::NoResponse(SUB_OPERATION_TIMEOUT)),
            Ok(Err(e)) => {
                return Err(AssocError::Receive(format!("C-STORE-RSP: {e}")).into());
            }
            Ok(Ok(Pdu::PData { data })) => {
                let cmd = data
                    .iter()
                    .find(|p| p.value_type == PDataValueType::Command)
                    .ok_or_else(|| bad("response without command".into()))?;
                let cmd = Command::decode(&cmd.data).map_err(|e| bad(e.to_string()))?;
                if cmd.command_field().ok() == Some(field::C_CANCEL_RQ) {
                    *cancel_seen = true;
                    continue;
                }
                return cmd
                    .status()
                    .ok_or_else(|| bad("C-STORE-RSP without a status".into()));
            }
            Ok(Ok(other)) => return Err(bad(format!("unexpected {}", other.short_description()))),
        }
    }
}

/// The transfer syntaxes to propose for objects stored in `stored`: that one first, and
/// the native ones when it is native or decodable (we convert to those, PS3.4 C.4.2.3:
/// a C-MOVE SCP may send in any syntax the destination accepts).
fn proposals(stored: &str) -> Vec<String> {
    let mut out = vec![stored.to_string()];
    if convertible_to_native(stored) {
        out.extend(
            NATIVE
                .iter()
                .filter(|t| **t != stored)
                .map(|t| t.to_string()),
        );
    }
    out
}

/// The data set an object's Part-10 `bytes` (as read by [`RetrievalReader::open`]) go
/// out with in `target`: [`dataset_in`] on the blocking pool.
async fn dataset_for(
    bytes: Vec<u8>,
    item: &RetrieveItem,
    target: &str,
) -> Result<Vec<u8>, SubOpError> {
    let (stored, target) = (item.transfer_syntax_uid.clone(), target.to_string());
    tokio::task::spawn_blocking(move || dataset_in(bytes, &stored, &target))
        .await
        .map_err(|e| SubOpError::Object(e.to_string()))?
        .map_err(SubOpError::Object)
}

/// The accepted presentation contexts as (id, abstract syntax, transfer syntax).
fn accepted_contexts(
    pcs: &[dicom_ul::pdu::PresentationContextNegotiated],
) -> Vec<(u8, String, String)> {
    pcs.iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.id,
                pc.abstract_syntax.trim_end_matches('\0').to_string(),
                pc.transfer_syntax.trim_end_matches('\0').to_string(),
            )
        })
        .collect()
}

/// The accepted context to send `item` on: the same SOP class, preferably in its stored
/// syntax, else a native syntax we can convert to.
fn context_for<'a>(
    accepted: &'a [(u8, String, String)],
    item: &RetrieveItem,
) -> Option<&'a (u8, String, String)> {
    let same_class = || accepted.iter().filter(|(_, a, _)| *a == item.sop_class_uid);
    same_class()
        .find(|(_, _, t)| *t == item.transfer_syntax_uid)
        .or_else(|| {
            convertible_to_native(&item.transfer_syntax_uid)
                .then(|| same_class().find(|(_, _, t)| NATIVE.contains(&t.as_str())))
                .flatten()
        })
}

/// The request's identifier as a query, or the failure response already sent. The
/// Study Root model has no PATIENT level (PS3.4 C.6.2): refused as in C-FIND (0xA900).
async fn parse_identifier<S: Link>(
    assoc: &mut Association<S>,
    req: &Message,
    model: Model,
) -> Result<Option<Query>, AssocError> {
    let parsed = Query::parse(&req.data, &req.transfer_syntax).and_then(|q| {
        if model == Model::StudyRoot && q.level == crate::query::Level::Patient {
            Err(crate::query::QueryError::Unsupported(
                "PATIENT level needs the Patient Root model".into(),
            ))
        } else {
            Ok(q)
        }
    });
    match parsed {
        Ok(q) => Ok(Some(q)),
        Err(e) => {
            let e = Error::Query(e);
            let rsp = retrieve_rsp(
                req,
                e.dimse_status(),
                &Counters::default(),
                false,
                &e.to_string(),
            );
            send_command(assoc, req.pc_id, rsp).await?;
            Ok(None)
        }
    }
}

pub async fn run_move<S: Link>(
    ctx: &AssocContext,
    assoc: &mut Association<S>,
    req: Message,
    model: Model,
    destination: &str,
) -> Result<(), AssocError> {
    let mut counters = Counters::default();
    let peer = ctx
        .config
        .peers
        .iter()
        .find(|p| p.ae_title == destination)
        .cloned();
    // (a C-MOVE-RQ without Move Destination, a required element, answers the same as
    // an unknown one: there is nowhere to send to, PS3.7 9.1.4.1)
    let refused = match &peer {
        None if destination.trim().is_empty() => {
            Some("the C-MOVE-RQ names no Move Destination (0000,0600)".to_string())
        }
        None => Some(format!(
            "move destination {destination} is not in [[dicom.peers]]"
        )),
        // (the configuration refuses such a peer without the file: not expected here)
        Some(p) if p.tls && ctx.outbound_tls.is_none() => Some(format!(
            "move destination {destination} needs TLS, and [tls] peer_ca_file is not set"
        )),
        Some(_) => None,
    };
    let (Some(peer), None) = (peer, &refused) else {
        let msg = refused.unwrap_or_default();
        tracing::warn!(destination, reason = %msg, "C-MOVE refused");
        let rsp = retrieve_rsp(
            &req,
            status::MOVE_DESTINATION_UNKNOWN,
            &counters,
            false,
            &msg,
        );
        return send_command(assoc, req.pc_id, rsp).await;
    };
    // a destination marked `tls = true` is reached over TLS (PS3.15 B.1), its
    // certificate verified against `[tls] peer_ca_file` for its `host`
    let tls = match (peer.tls, &ctx.outbound_tls) {
        (true, Some(config)) => Some((config.clone(), peer.host.clone())),
        _ => None,
    };
    let Some(query) = parse_identifier(assoc, &req, model).await? else {
        return Ok(());
    };
    let what = format!("C-MOVE to {destination}");
    let retrieval = match ctx.archive.retrieve(&ctx.principal, &query, &what).await {
        Ok(r) => r.in_pack_order(),
        Err(e) => {
            let rsp = retrieve_rsp(&req, e.dimse_status(), &counters, false, &e.to_string());
            return send_command(assoc, req.pc_id, rsp).await;
        }
    };
    let items = retrieval.items().clone();
    counters.remaining = items.len();
    if items.is_empty() {
        retrieval.finish(0, 0).await;
        let rsp = retrieve_rsp(&req, status::SUCCESS, &counters, false, "");
        return send_command(assoc, req.pc_id, rsp).await;
    }

    // Sub-operations run over several associations at once (as many as
    // `move_associations`, when the destination accepts them), each sending its share of
    // the instances in turn; results come back here, where the counters and pending
    // responses live.
    let address = format!("{}@{}:{}", peer.ae_title, peer.host, peer.port);
    let lanes = ctx.config.move_associations.clamp(1, 16).min(items.len());
    let stop = Arc::new(AtomicBool::new(false));
    let queue = Arc::new(LaneQueue::new(lanes));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Result<u16, SubOpError>)>(64);
    for _ in 0..lanes {
        let (items, tx, stop, queue) = (items.clone(), tx.clone(), stop.clone(), queue.clone());
        let sender = Lane {
            our_ae: ctx.config.ae_title.clone(),
            max_pdu: ctx.config.max_pdu_length,
            read_timeout: ctx.config.read_timeout,
            address: address.clone(),
            called: peer.ae_title.clone(),
            tls: tls.clone(),
            reader: retrieval.reader(),
            move_message_id: req.incoming.message_id,
        };
        tokio::spawn(async move {
            sender.run(&items, &queue, &tx, &stop).await;
        });
    }
    drop(tx);

    let mut failed_uids: Vec<String> = Vec::new();
    let mut unreachable = 0usize;
    let mut reported = vec![false; items.len()];
    let mut outstanding = items.len();
    // until every item is reported (a lane still waiting for its association is not
    // waited for) or every lane has ended
    while outstanding > 0 {
        let Some((i, outcome)) = rx.recv().await else {
            break;
        };
        let item = &items[i];
        reported[i] = true;
        outstanding -= 1;
        if let Err(e @ SubOpError::Unreachable { .. }) = &outcome {
            unreachable += 1;
            if unreachable == 1 {
                tracing::warn!(destination = %address, error = %e, "C-MOVE destination unreachable");
            }
        }
        counters.count(item, &outcome, "C-MOVE", &mut failed_uids);
        if counters.remaining > 0 {
            if cancel_requested(assoc).await? {
                stop.store(true, Ordering::Release);
                let (completed, failed) = (counters.completed, counters.failed);
                retrieval.finish(completed, failed).await;
                let rsp = retrieve_rsp(&req, status::CANCEL, &counters, false, "");
                return send_command(assoc, req.pc_id, rsp).await;
            }
            let rsp = retrieve_rsp(&req, status::PENDING, &counters, false, "");
            send_command(assoc, req.pc_id, rsp).await?;
        }
    }
    // a lane whose association broke leaves its remaining instances unsent: failures
    for (i, done) in reported.iter().enumerate() {
        if !done {
            counters
                .first_failure
                .get_or_insert_with(|| "association to the destination broke".into());
            counters.failed += 1;
            failed_uids.push(items[i].sop_instance_uid.clone());
        }
    }
    counters.remaining = 0;
    tracing::info!(destination = %address, completed = counters.completed, failed = counters.failed, "C-MOVE");
    retrieval.finish(counters.completed, counters.failed).await;
    final_response(assoc, &req, &counters, &failed_uids).await
}

/// The final C-MOVE/C-GET response: success, or 0xB000 / 0xA702 with the
/// FailedSOPInstanceUIDList in an identifier.
async fn final_response<S: Link>(
    assoc: &mut Association<S>,
    req: &Message,
    counters: &Counters,
    failed_uids: &[String],
) -> Result<(), AssocError> {
    if counters.failed == 0 {
        // PS3.4 C.4.2.1.4 / C.4.3.1.4: 0xB000 when any sub-operation ended with a warning
        let status = if counters.warning == 0 {
            status::SUCCESS
        } else {
            status::SUB_OPERATIONS_FAILED
        };
        let rsp = retrieve_rsp(req, status, counters, false, "");
        return send_command(assoc, req.pc_id, rsp).await;
    }
    let status = if counters.completed + counters.warning == 0 {
        status::UNABLE_TO_PERFORM_SUB_OPERATIONS
    } else {
        status::SUB_OPERATIONS_FAILED
    };
    let comment = counters.first_failure.as_deref().unwrap_or_default();
    send_command(
        assoc,
        req.pc_id,
        retrieve_rsp(req, status, counters, true, comment),
    )
    .await?;
    let identifier = super::find::encode_identifier(
        &[(FAILED_SOP_INSTANCE_UID_LIST, *b"UI", failed_uids.join("\\"))],
        &req.transfer_syntax,
    );
    let max = pdv_limit(assoc.requestor_max_pdu_length());
    send_data(assoc, req.pc_id, &identifier, max).await
}

/// C-GET: like C-MOVE, but the instances go back over the requester's own association,
/// on the storage presentation contexts it proposed with the SCP role (role selection).
pub async fn run_get<S: Link>(
    ctx: &AssocContext,
    assoc: &mut Association<S>,
    req: Message,
    model: Model,
) -> Result<(), AssocError> {
    let mut counters = Counters::default();
    let Some(query) = parse_identifier(assoc, &req, model).await? else {
        return Ok(());
    };
    let retrieval = match ctx.archive.retrieve(&ctx.principal, &query, "C-GET").await {
        Ok(r) => r.in_pack_order(),
        Err(e) => {
            let rsp = retrieve_rsp(&req, e.dimse_status(), &counters, false, &e.to_string());
            return send_command(assoc, req.pc_id, rsp).await;
        }
    };
    let items = retrieval.items().clone();
    let reader = retrieval.reader();
    counters.remaining = items.len();
    let accepted = Arc::new(accepted_contexts(assoc.presentation_contexts()));
    let max = pdv_limit(assoc.requestor_max_pdu_length());
    let mut failed_uids = Vec::new();
    let mut cancel_seen = false;
    let mut message_id: u16 = 0;
    // objects are read a few ahead of the one being sent (ReadAhead; dropping it on an
    // early return stops those reads)
    let converted = accepted.clone();
    let weight = move |item: &RetrieveItem| match context_for(&converted, item) {
        Some((_, _, target)) if *target == item.transfer_syntax_uid => item.size,
        _ => crate::archive::retrieve::READ_AHEAD_BYTES,
    };
    let mut ahead = crate::archive::retrieve::ReadAhead::new(items.clone(), weight, move |item| {
        let (reader, accepted) = (reader.clone(), accepted.clone());
        async move { payload_for(&reader, &accepted, &item).await }
    });
    while let Some((i, prepared)) = ahead.next().await {
        let item = &items[i];
        if cancel_seen || cancel_requested(assoc).await? {
            drop(ahead);
            retrieval.finish(counters.completed, counters.failed).await;
            let rsp = retrieve_rsp(&req, status::CANCEL, &counters, false, "");
            return send_command(assoc, req.pc_id, rsp).await;
        }
        message_id = message_id.wrapping_add(1);
        let outcome = match prepared.map_err(SubOpError::Object).and_then(|r| r) {
            Ok((pc_id, payload)) => {
                store_one(
                    assoc,
                    pc_id,
                    message_id,
                    item,
                    &payload,
                    None,
                    max,
                    &mut cancel_seen,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Err(SubOpError::Broken(e)) => {
                tracing::warn!(sop = item.sop_instance_uid, error = %e, "C-GET association broken");
                return Err(e);
            }
            outcome => counters.count(item, &outcome, "C-GET", &mut failed_uids),
        }
        if counters.remaining > 0 {
            let rsp = retrieve_rsp(&req, status::PENDING, &counters, false, "");
            send_command(assoc, req.pc_id, rsp).await?;
        }
    }
    tracing::info!(
        completed = counters.completed,
        failed = counters.failed,
        "C-GET"
    );
    retrieval.finish(counters.completed, counters.failed).await;
    final_response(assoc, &req, &counters, &failed_uids).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11 item 3: a study of more than 65,535 instances. The counters count on,
    /// and every response carries them saturated at 65,535 (US); they never wrap
    /// around, nor panic.
    #[test]
    fn counters_past_65535_saturate_in_responses() {
        let mut c = Counters {
            remaining: 70_000,
            ..Default::default()
        };
        for _ in 0..70_000 {
            c.remaining = c.remaining.saturating_sub(1);
            c.completed += 1;
        }
        assert_eq!((c.completed, c.remaining), (70_000, 0));
        assert_eq!(Counters::us(c.completed), u16::MAX);
        assert_eq!(Counters::us(70_000 - 65_000), 5_000);
    }
}
