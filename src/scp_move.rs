//! The C-MOVE SCP: resolves the identifier (PATIENT, STUDY, SERIES or IMAGE level, by
//! UID lists or PatientID) to the served version of each instance, opens a new
//! association to the destination named in the request — which must be one of the
//! configured `[[dicom.peers]]`, else 0xA801 — and sends every instance with C-STORE in
//! its stored transfer syntax, reporting pending responses with the four sub-operation
//! counters. Ends with 0x0000, 0xB000 (some failed; FailedSOPInstanceUIDList in the
//! identifier), 0xA702 (none could be sent), or 0xFE00 when cancelled.
//!
//! Objects go in their stored transfer syntax; when the destination does not accept it,
//! native syntaxes (implicit/explicit VR little endian, explicit big endian) are
//! re-encoded among themselves, and anything else fails its sub-operation with a log line.

use crate::dicom::dimse::{field, status, tag, Command, ResponseBuilder};
use crate::dicom::part10::read_foreign_meta;
use crate::index::{Index, InstanceEntry, SecondaryKey};
use crate::query::{tags as qtags, Level, Query};
use crate::scp::{cancel_requested, send_command, Association, ScpContext};
use crate::tiering::reader::ObjectReader;
use dicom_ul::association::AsyncAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};
use std::collections::BTreeSet;
use std::time::Duration;
use strata_tiers::ObjectId;

const PENDING: u16 = status::PENDING;
const CANCELLED: u16 = status::CANCEL;
const DESTINATION_UNKNOWN: u16 = status::MOVE_DESTINATION_UNKNOWN;
const UNABLE_TO_PERFORM: u16 = status::UNABLE_TO_PERFORM_SUB_OPERATIONS;
const SOME_FAILED: u16 = status::SUB_OPERATIONS_FAILED;
const IDENTIFIER_DOES_NOT_MATCH: u16 = status::DATASET_DOES_NOT_MATCH;
const FAILED_SOP_INSTANCE_UID_LIST: u32 = 0x0008_0058;

pub struct MoveRequest {
    pub pc_id: u8,
    pub message_id: u16,
    pub sop_class: String,
    pub transfer_syntax: String,
    pub destination: String,
    pub identifier: Vec<u8>,
}

/// One instance to send: its served object and what the C-STORE needs.
#[derive(Clone)]
struct Item {
    study_uid: String,
    sop_instance_uid: String,
    sop_class_uid: String,
    transfer_syntax_uid: String,
    id: ObjectId,
}

/// The served version of every instance the identifier names.
fn resolve(index: &dyn Index, query: &Query) -> Result<Vec<Item>, String> {
    let value = |t| {
        query
            .keys
            .iter()
            .find(|k| k.tag == t)
            .map(|k| k.value.clone())
            .filter(|v| !v.is_empty())
    };
    let list = |t| value(t).map(|v| v.split('\\').map(str::to_string).collect::<Vec<_>>());
    let e = |e: crate::index::IndexError| e.to_string();
    let mut entries: Vec<InstanceEntry> = Vec::new();
    match query.level {
        Level::Patient => {
            let pid = value(qtags::PATIENT_ID).ok_or("PATIENT level needs a PatientID")?;
            for study in index.studies_by(SecondaryKey::PatientId, &pid).map_err(e)? {
                entries.extend(index.instances_of_study(&study).map_err(e)?);
            }
        }
        Level::Study => {
            for study in
                list(qtags::STUDY_INSTANCE_UID).ok_or("STUDY level needs StudyInstanceUID")?
            {
                entries.extend(index.instances_of_study(&study).map_err(e)?);
            }
        }
        Level::Series => {
            let wanted: BTreeSet<String> = list(qtags::SERIES_INSTANCE_UID)
                .ok_or("SERIES level needs SeriesInstanceUID")?
                .into_iter()
                .collect();
            let studies: BTreeSet<String> = wanted
                .iter()
                .filter_map(|s| index.series(s).ok().flatten().map(|(study, _)| study))
                .collect();
            for study in studies {
                entries.extend(
                    index
                        .instances_of_study(&study)
                        .map_err(e)?
                        .into_iter()
                        .filter(|i| wanted.contains(&i.series_uid)),
                );
            }
        }
        Level::Image => {
            for sop in list(qtags::SOP_INSTANCE_UID).ok_or("IMAGE level needs SOPInstanceUID")? {
                entries.extend(index.instance(&sop).map_err(e)?);
            }
        }
    }
    entries
        .into_iter()
        .map(|i| {
            let current = i.record.current().ok_or("instance without versions")?;
            Ok(Item {
                id: ObjectId::from_hex(&current.id).ok_or("malformed object id in the index")?,
                study_uid: i.study_uid,
                sop_instance_uid: i.sop_instance_uid,
                sop_class_uid: i.record.sop_class_uid,
                transfer_syntax_uid: i.record.transfer_syntax_uid,
            })
        })
        .collect()
}

#[derive(Default)]
struct Counters {
    remaining: u16,
    completed: u16,
    failed: u16,
    warning: u16,
}

impl Counters {
    /// Counts one sub-operation's outcome; a failure also lists its instance.
    fn count(
        &mut self,
        item: &Item,
        outcome: &Result<u16, String>,
        op: &str,
        failed: &mut Vec<String>,
    ) {
        self.remaining = self.remaining.saturating_sub(1);
        match outcome {
            Ok(0x0000) => self.completed += 1,
            Ok(s) if s & 0xF000 == 0xB000 => self.warning += 1,
            Ok(s) => {
                tracing::warn!(
                    sop = item.sop_instance_uid,
                    status = format!("{s:#06x}"),
                    "{op} sub-operation refused"
                );
                self.failed += 1;
                failed.push(item.sop_instance_uid.clone());
            }
            Err(e) => {
                if !e.starts_with("cannot reach") {
                    tracing::warn!(sop = item.sop_instance_uid, error = %e, "{op} sub-operation failed");
                }
                self.failed += 1;
                failed.push(item.sop_instance_uid.clone());
            }
        }
    }
}

fn move_rsp(req: &MoveRequest, status: u16, c: &Counters, with_data: bool) -> Vec<u8> {
    let request = if req.destination.is_empty() {
        field::C_GET_RQ
    } else {
        field::C_MOVE_RQ
    };
    let mut b = ResponseBuilder::new(request, req.message_id, status)
        .uid(tag::AFFECTED_SOP_CLASS_UID, &req.sop_class)
        .u16(tag::COMPLETED_SUB_OPERATIONS, c.completed)
        .u16(tag::FAILED_SUB_OPERATIONS, c.failed)
        .u16(tag::WARNING_SUB_OPERATIONS, c.warning);
    if status == PENDING {
        b = b.u16(tag::REMAINING_SUB_OPERATIONS, c.remaining);
    }
    if with_data {
        b = b.u16(tag::COMMAND_DATA_SET_TYPE, 0x0001);
    }
    b.encode()
}

/// One association's worth of sub-operations.
struct Sender {
    our_ae: String,
    max_pdu: u32,
    read_timeout: Duration,
    address: String,
    called: String,
    reader: ObjectReader,
    move_message_id: u16,
}

impl Sender {
    /// Sends `mine` (indexes into `items`) over one new association, reporting each
    /// outcome; stops early when `stop` is set (C-CANCEL).
    async fn run(
        &self,
        items: &[Item],
        mine: &[usize],
        tx: &tokio::sync::mpsc::Sender<(usize, Result<u16, String>)>,
        stop: &std::sync::atomic::AtomicBool,
    ) {
        // one presentation context per (SOP class, stored transfer syntax), at most 128
        let contexts: BTreeSet<(String, String)> = mine
            .iter()
            .map(|&i| {
                (
                    items[i].sop_class_uid.clone(),
                    items[i].transfer_syntax_uid.clone(),
                )
            })
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
        let mut dest = match options.establish_with_async(&self.address).await {
            Ok(d) => d,
            Err(e) => {
                for &i in mine {
                    let _ = tx
                        .send((i, Err(format!("cannot reach {}: {e}", self.address))))
                        .await;
                }
                return;
            }
        };
        // Nagle would hold each small command PDU for the peer's delayed ACK (~40 ms)
        let _ = dest.inner_stream().set_nodelay(true);
        let accepted = accepted_contexts(dest.presentation_contexts());
        let mut message_id: u16 = 0;
        for &i in mine {
            if stop.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            let item = &items[i];
            message_id = message_id.wrapping_add(1);
            let outcome = match context_for(&accepted, item) {
                None => Err(format!(
                    "destination accepts neither {} in {} nor a native syntax to convert to",
                    item.sop_class_uid, item.transfer_syntax_uid
                )),
                Some((pc_id, _, target)) => match dataset_for(&self.reader, item, target).await {
                    Ok(dataset) => {
                        let max = pdv_limit(dest.acceptor_max_pdu_length());
                        let mut ignored = false;
                        store_one(
                            &mut dest,
                            *pc_id,
                            message_id,
                            item,
                            &dataset,
                            Some((&self.our_ae, self.move_message_id)),
                            max,
                            &mut ignored,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                },
            };
            let broken = matches!(&outcome, Err(e) if e.starts_with("send") || e.starts_with("receive") || e.starts_with("no C-STORE-RSP"));
            if tx.send((i, outcome)).await.is_err() || broken {
                break;
            }
        }
        let _ = dest.release().await;
    }
}

/// Sends one stored object with C-STORE on `dest` (a new association for C-MOVE, the
/// requester's own for C-GET) in PDVs of at most `max` bytes; returns the response
/// status. A C-CANCEL arriving meanwhile (C-GET) sets `cancel_seen`.
#[allow(clippy::too_many_arguments)]
async fn store_one<A: AsyncAssociation<tokio::net::TcpStream> + Send>(
    dest: &mut A,
    pc_id: u8,
    message_id: u16,
    item: &Item,
    dataset: &[u8],
    originator: Option<(&str, u16)>,
    max: usize,
    cancel_seen: &mut bool,
) -> Result<u16, String> {
    let mut cmd = ResponseBuilder::request(field::C_STORE_RQ, message_id, true)
        .uid(tag::AFFECTED_SOP_CLASS_UID, &item.sop_class_uid)
        .uid(tag::AFFECTED_SOP_INSTANCE_UID, &item.sop_instance_uid);
    if let Some((ae, id)) = originator {
        cmd = cmd
            .text(tag::MOVE_ORIGINATOR_AE, ae)
            .u16(tag::MOVE_ORIGINATOR_MESSAGE_ID, id);
    }
    let command = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: cmd.encode(),
        }],
    };
    AsyncAssociation::send(dest, &command)
        .await
        .map_err(|e| format!("send C-STORE-RQ: {e}"))?;
    let max = max.clamp(1, 256 * 1024);
    let chunks: Vec<&[u8]> = if dataset.is_empty() {
        vec![&[][..]]
    } else {
        dataset.chunks(max).collect()
    };
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Data,
                is_last: i + 1 == n,
                data: chunk.to_vec(),
            }],
        };
        AsyncAssociation::send(dest, &pdu)
            .await
            .map_err(|e| format!("send data set: {e}"))?;
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(120), AsyncAssociation::receive(dest)).await
        {
            Err(_) => return Err("no C-STORE-RSP within 120 s".into()),
            Ok(Err(e)) => return Err(format!("receive C-STORE-RSP: {e}")),
            Ok(Ok(Pdu::PData { data })) => {
                let cmd = data
                    .iter()
                    .find(|p| p.value_type == PDataValueType::Command)
                    .ok_or("response without command")?;
                let cmd = Command::decode(&cmd.data).map_err(|e| e.to_string())?;
                if cmd.command_field().ok() == Some(field::C_CANCEL_RQ) {
                    *cancel_seen = true;
                    continue;
                }
                return cmd
                    .status()
                    .ok_or_else(|| "C-STORE-RSP without a status".to_string());
            }
            Ok(Ok(other)) => return Err(format!("unexpected {}", other.short_description())),
        }
    }
}

const NATIVE: [&str; 3] = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
];

/// The transfer syntaxes to propose for objects stored in `stored`: that one first, and
/// for a native syntax the other native ones too (we convert among those).
fn proposals(stored: &str) -> Vec<String> {
    let mut out = vec![stored.to_string()];
    if NATIVE.contains(&stored) {
        out.extend(
            NATIVE
                .iter()
                .filter(|t| **t != stored)
                .map(|t| t.to_string()),
        );
    }
    out
}

/// Returns a stored object's data set in `target` syntax: verbatim when it is the
/// stored one, re-encoded when both are native, else an error.
fn dataset_for_blocking(bytes: Vec<u8>, item: &Item, target: &str) -> Result<Vec<u8>, String> {
    let meta = read_foreign_meta(&bytes).map_err(|e| e.to_string())?;
    let dataset = &bytes[meta.dataset_offset..];
    if target == item.transfer_syntax_uid {
        return Ok(dataset.to_vec());
    }
    if !(NATIVE.contains(&target) && NATIVE.contains(&item.transfer_syntax_uid.as_str())) {
        return Err(format!(
            "cannot convert {} to {target} (only native syntaxes are converted)",
            item.transfer_syntax_uid
        ));
    }
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let from = registry
        .get(&item.transfer_syntax_uid)
        .ok_or("unknown stored syntax")?;
    let to = registry.get(target).ok_or("unknown target syntax")?;
    let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(dataset, from)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(dataset.len());
    obj.write_dataset_with_ts(&mut out, to)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Reads the object from its tier (hot file, or one ranged GET of its cold pack member),
/// then [`dataset_for_blocking`] on the blocking pool.
async fn dataset_for(reader: &ObjectReader, item: &Item, target: &str) -> Result<Vec<u8>, String> {
    let bytes = reader
        .read(&item.id)
        .await
        .map_err(|e| format!("read object {}: {e}", item.id))?;
    let (item, target) = (item.clone(), target.to_string());
    tokio::task::spawn_blocking(move || dataset_for_blocking(bytes, &item, &target))
        .await
        .map_err(|e| e.to_string())?
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
    item: &Item,
) -> Option<&'a (u8, String, String)> {
    let same_class = || accepted.iter().filter(|(_, a, _)| *a == item.sop_class_uid);
    same_class()
        .find(|(_, _, t)| *t == item.transfer_syntax_uid)
        .or_else(|| {
            NATIVE
                .contains(&item.transfer_syntax_uid.as_str())
                .then(|| same_class().find(|(_, _, t)| NATIVE.contains(&t.as_str())))
                .flatten()
        })
}

/// The largest PDV payload a peer accepts (its announced maximum PDU length).
fn pdv_limit(max_pdu: u32) -> usize {
    match max_pdu {
        0 => 256 * 1024,
        n => (n as usize).saturating_sub(6),
    }
}

pub async fn run_move(
    ctx: &ScpContext,
    assoc: &mut Association,
    req: MoveRequest,
) -> Result<(), String> {
    let mut counters = Counters::default();
    let fail = |status: u16, c: &Counters, comment: &str| {
        let mut b = ResponseBuilder::new(field::C_MOVE_RQ, req.message_id, status)
            .uid(tag::AFFECTED_SOP_CLASS_UID, &req.sop_class)
            .u16(tag::COMPLETED_SUB_OPERATIONS, c.completed)
            .u16(tag::FAILED_SUB_OPERATIONS, c.failed)
            .u16(tag::WARNING_SUB_OPERATIONS, c.warning);
        if !comment.is_empty() {
            b = b.text(tag::ERROR_COMMENT, comment);
        }
        b.encode()
    };
    let Some(peer) = ctx
        .config
        .peers
        .iter()
        .find(|p| p.ae_title == req.destination)
        .cloned()
    else {
        tracing::warn!(
            destination = req.destination,
            "C-MOVE to an unknown destination"
        );
        let msg = format!(
            "move destination {} is not in [[dicom.peers]]",
            req.destination
        );
        return send_command(assoc, req.pc_id, fail(DESTINATION_UNKNOWN, &counters, &msg)).await;
    };
    let query = match Query::parse(&req.identifier, &req.transfer_syntax) {
        Ok(q) => q,
        Err(e) => {
            return send_command(
                assoc,
                req.pc_id,
                fail(IDENTIFIER_DOES_NOT_MATCH, &counters, &e.to_string()),
            )
            .await
        }
    };
    let index = ctx.index.clone();
    let q = query.clone();
    let items = match tokio::task::spawn_blocking(move || resolve(index.as_ref(), &q)).await {
        Ok(Ok(items)) => items,
        Ok(Err(e)) => {
            return send_command(
                assoc,
                req.pc_id,
                fail(IDENTIFIER_DOES_NOT_MATCH, &counters, &e),
            )
            .await
        }
        Err(e) => return Err(format!("resolve task failed: {e}")),
    };
    counters.remaining = items.len().min(u16::MAX as usize) as u16;
    if items.is_empty() {
        return send_command(assoc, req.pc_id, fail(0x0000, &counters, "")).await;
    }

    // Sub-operations run over several associations at once (as many as
    // `move_associations`, when the destination accepts them), each sending its share of
    // the instances in turn; results come back here, where the counters and pending
    // responses live.
    let address = format!("{}@{}:{}", peer.ae_title, peer.host, peer.port);
    let items = std::sync::Arc::new(items);
    let lanes = ctx.config.move_associations.clamp(1, 16).min(items.len());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Result<u16, String>)>(64);
    for lane in 0..lanes {
        let (items, tx, stop) = (items.clone(), tx.clone(), stop.clone());
        let sender = Sender {
            our_ae: ctx.config.ae_title.clone(),
            max_pdu: ctx.config.max_pdu_length,
            read_timeout: ctx.config.read_timeout,
            address: address.clone(),
            called: peer.ae_title.clone(),
            reader: ctx.reader.clone(),
            move_message_id: req.message_id,
        };
        tokio::spawn(async move {
            let mine: Vec<usize> = (lane..items.len()).step_by(lanes).collect();
            sender.run(&items, &mine, &tx, &stop).await;
        });
    }
    drop(tx);

    let mut failed_uids: Vec<String> = Vec::new();
    let mut unreachable = 0usize;
    let mut reported = vec![false; items.len()];
    while let Some((i, outcome)) = rx.recv().await {
        let item = &items[i];
        reported[i] = true;
        if let Err(e) = &outcome {
            if e.starts_with("cannot reach") {
                unreachable += 1;
                if unreachable == 1 {
                    tracing::warn!(destination = %address, error = %e, "C-MOVE destination unreachable");
                }
            }
        }
        counters.count(item, &outcome, "C-MOVE", &mut failed_uids);
        if counters.remaining > 0 {
            if cancel_requested(assoc).await? {
                stop.store(true, std::sync::atomic::Ordering::Release);
                return send_command(assoc, req.pc_id, fail(CANCELLED, &counters, "")).await;
            }
            send_command(assoc, req.pc_id, move_rsp(&req, PENDING, &counters, false)).await?;
        }
    }
    // a lane whose association broke leaves its remaining instances unsent: failures
    for (i, done) in reported.iter().enumerate() {
        if !done {
            counters.failed += 1;
            failed_uids.push(items[i].sop_instance_uid.clone());
        }
    }
    counters.remaining = 0;
    record_retrieval(ctx, studies_of(&items)).await;
    tracing::info!(destination = %address, completed = counters.completed, failed = counters.failed, "C-MOVE");
    ctx.audit(
        "retrieve",
        studies_of(&items),
        format!(
            "C-MOVE to {}: {} sent, {} failed",
            req.destination, counters.completed, counters.failed
        ),
    )
    .await;
    final_response(assoc, &req, &counters, &failed_uids).await
}

/// The final C-MOVE/C-GET response: success, or 0xB000 / 0xA702 with the
/// FailedSOPInstanceUIDList in an identifier.
async fn final_response(
    assoc: &mut Association,
    req: &MoveRequest,
    counters: &Counters,
    failed_uids: &[String],
) -> Result<(), String> {
    if counters.failed == 0 {
        return send_command(assoc, req.pc_id, move_rsp(req, 0x0000, counters, false)).await;
    }
    let status = if counters.completed + counters.warning == 0 {
        UNABLE_TO_PERFORM
    } else {
        SOME_FAILED
    };
    send_command(assoc, req.pc_id, move_rsp(req, status, counters, true)).await?;
    let explicit = req.transfer_syntax != "1.2.840.10008.1.2";
    let identifier = crate::scp_find::encode_identifier(
        &[(FAILED_SOP_INSTANCE_UID_LIST, *b"UI", failed_uids.join("\\"))],
        explicit,
    );
    crate::scp_find::send_data(assoc, req.pc_id, identifier).await
}

/// The distinct studies of these items.
fn studies_of(items: &[Item]) -> Vec<String> {
    let set: BTreeSet<&str> = items.iter().map(|i| i.study_uid.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

/// Records a retrieval of the studies these instances belong to (tiering's last access).
async fn record_retrieval(ctx: &ScpContext, studies: Vec<String>) {
    let index = ctx.index.clone();
    let at = crate::index::rocks::unix_ms_now();
    match tokio::task::spawn_blocking(move || index.record_access(&studies, at)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record a study's last access"),
        Err(e) => tracing::warn!(error = %e, "could not record a study's last access"),
    }
}

/// C-GET: like C-MOVE, but the instances go back over the requester's own association,
/// on the storage presentation contexts it proposed with the SCP role (role selection).
pub async fn run_get(
    ctx: &ScpContext,
    assoc: &mut Association,
    req: MoveRequest,
) -> Result<(), String> {
    let mut counters = Counters::default();
    let query = match Query::parse(&req.identifier, &req.transfer_syntax) {
        Ok(q) => q,
        Err(e) => {
            let rsp =
                ResponseBuilder::new(field::C_GET_RQ, req.message_id, IDENTIFIER_DOES_NOT_MATCH)
                    .uid(tag::AFFECTED_SOP_CLASS_UID, &req.sop_class)
                    .text(tag::ERROR_COMMENT, &e.to_string())
                    .encode();
            return send_command(assoc, req.pc_id, rsp).await;
        }
    };
    let index = ctx.index.clone();
    let items = match tokio::task::spawn_blocking(move || resolve(index.as_ref(), &query)).await {
        Ok(Ok(items)) => items,
        Ok(Err(e)) => {
            let rsp =
                ResponseBuilder::new(field::C_GET_RQ, req.message_id, IDENTIFIER_DOES_NOT_MATCH)
                    .uid(tag::AFFECTED_SOP_CLASS_UID, &req.sop_class)
                    .text(tag::ERROR_COMMENT, &e)
                    .encode();
            return send_command(assoc, req.pc_id, rsp).await;
        }
        Err(e) => return Err(format!("resolve task failed: {e}")),
    };
    counters.remaining = items.len().min(u16::MAX as usize) as u16;
    let accepted = accepted_contexts(assoc.presentation_contexts());
    let max = pdv_limit(assoc.requestor_max_pdu_length());
    let mut failed_uids = Vec::new();
    let mut cancel_seen = false;
    let mut message_id: u16 = 0;
    for item in &items {
        if cancel_seen || cancel_requested(assoc).await? {
            let rsp = move_rsp(&req, CANCELLED, &counters, false);
            return send_command(assoc, req.pc_id, rsp).await;
        }
        message_id = message_id.wrapping_add(1);
        let outcome = match context_for(&accepted, item) {
            None => Err(format!(
                "the requester offered no context for {} in {} or a native syntax",
                item.sop_class_uid, item.transfer_syntax_uid
            )),
            Some((pc_id, _, target)) => match dataset_for(&ctx.reader, item, target).await {
                Ok(dataset) => {
                    store_one(
                        assoc,
                        *pc_id,
                        message_id,
                        item,
                        &dataset,
                        None,
                        max,
                        &mut cancel_seen,
                    )
                    .await
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = &outcome {
            if e.starts_with("send") || e.starts_with("receive") {
                tracing::warn!(sop = item.sop_instance_uid, error = %e, "C-GET association broken");
                return Err(e.clone());
            }
        }
        counters.count(item, &outcome, "C-GET", &mut failed_uids);
        if counters.remaining > 0 {
            send_command(assoc, req.pc_id, move_rsp(&req, PENDING, &counters, false)).await?;
        }
    }
    tracing::info!(
        completed = counters.completed,
        failed = counters.failed,
        "C-GET"
    );
    ctx.audit(
        "retrieve",
        studies_of(&items),
        format!(
            "C-GET: {} sent, {} failed",
            counters.completed, counters.failed
        ),
    )
    .await;
    final_response(assoc, &req, &counters, &failed_uids).await
}
