//! # The DICOM service: one task per association
//!
//! [`serve_association`] negotiates an association on dicom-ul (async), then reads PDUs and
//! assembles DIMSE messages: command PDVs are collected until their last fragment, data
//! PDVs are streamed straight into the ingest writer (never buffered whole). Supported:
//! C-ECHO and C-STORE. Any other request gets a failure status, never silence.
//!
//! Bad input never hurts (DESIGN promise 7): a malformed command or a protocol violation
//! aborts this association only; a bad dataset gets its DIMSE status and the association
//! goes on. Nothing is written under an id before the whole object was received, hashed,
//! parsed and made durable.

use crate::config::DicomConfig;
use crate::dicom::dimse::{field, status, tag, Command, ResponseBuilder};
use crate::dicom::part10::is_valid_uid;
use crate::dicom::storage_classes::{is_storage_sop_class, STORAGE_SOP_CLASSES};
use crate::index::{CommitOutcome, Provenance};
use crate::ingest::{Ingest, IngestError, ObjectWriter};
use crate::metrics::RejectReason;
use crate::query::Model;
use dicom_dictionary_std::uids;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, PresentationContextResultReason,
};
use dicom_ul::{Pdu, ServerAssociationOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::sync::watch;

pub(crate) type Association = dicom_ul::association::server::AsyncServerAssociation<TcpStream>;

/// Access rule: the called AE must be ours; the calling AE must be on the allow-list
/// when one is configured.
#[derive(Debug, Clone)]
struct StrataAccess {
    allowed_calling: Arc<Vec<String>>,
}

impl AccessControl for StrataAccess {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user: Option<&dicom_ul::pdu::UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            tracing::warn!(
                called = called_ae_title,
                calling = calling_ae_title,
                "rejected: wrong called AE title"
            );
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.allowed_calling.is_empty()
            && !self
                .allowed_calling
                .iter()
                .any(|a| a == calling_ae_title.trim())
        {
            tracing::warn!(
                calling = calling_ae_title,
                "rejected: calling AE title not allowed"
            );
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Role selection: a C-GET requester proposes the SCP role for the storage classes it
/// wants to receive; accept whatever roles it proposes for those.
#[derive(Debug, Clone, Copy)]
pub struct StrataNegotiation;

impl dicom_ul::association::server::Negotiation for StrataNegotiation {
    /// Query/Retrieve extended negotiation: relational queries (byte 0) are supported;
    /// date-time matching, fuzzy semantic matching and timezone adjustment are not.
    fn extended_negotiation(&self, sop_class_uid: &str, input: &[u8]) -> Option<Vec<u8>> {
        let uid = sop_class_uid.trim_end_matches('\0');
        if Model::of_sop_class(uid).is_none() || input.is_empty() {
            return None;
        }
        let mut out = vec![0u8; input.len()];
        out[0] = input[0] & 1;
        Some(out)
    }

    fn negotiate_roles(
        &self,
        sop_class_uid: &str,
        scu_role: bool,
        scp_role: bool,
    ) -> Option<dicom_ul::pdu::RequestorRoles> {
        is_storage_sop_class(sop_class_uid.trim_end_matches('\0')).then_some(
            dicom_ul::pdu::RequestorRoles {
                scu: scu_role,
                scp: scp_role,
            },
        )
    }
}

/// Everything an association task needs.
#[derive(Clone)]
pub struct ScpContext {
    pub config: Arc<DicomConfig>,
    pub ingest: Ingest,
    pub index: Arc<dyn crate::index::Index>,
    /// Reads stored objects from whichever tier holds them (C-MOVE, C-GET).
    pub reader: crate::tiering::reader::ObjectReader,
    pub shutdown: watch::Receiver<bool>,
    pub audit: Option<crate::audit::AuditLog>,
    /// Who this association is (set once it is established), for the audit log.
    pub actor: crate::audit::Actor,
}

impl ScpContext {
    /// Appends an audit record for this association's peer.
    pub async fn audit(&self, action: &'static str, uids: Vec<String>, outcome: String) {
        if let Some(log) = &self.audit {
            log.record_async(vec![crate::audit::Event {
                actor: self.actor.clone(),
                action,
                uids,
                outcome,
            }])
            .await;
        }
    }
}

/// A-ASSOCIATE-RJ: rejected-transient (2), service-provider presentation related (3),
/// local-limit-exceeded (2). Sent when the association cap is reached.
pub const RJ_LOCAL_LIMIT_EXCEEDED: [u8; 10] = [0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2];
/// A-ASSOCIATE-RJ: rejected-permanent (1), service-user (1), no-reason-given (1). Sent to
/// peers whose address is not allowed.
pub const RJ_NOT_ALLOWED: [u8; 10] = [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 1];

fn server_options(
    config: &DicomConfig,
) -> ServerAssociationOptions<'static, StrataAccess, StrataNegotiation> {
    let mut opts = ServerAssociationOptions::new()
        .ae_access_control(StrataAccess {
            allowed_calling: Arc::new(config.allowed_calling_ae_titles.clone()),
        })
        .ae_title(config.ae_title.clone())
        .strict(true)
        .max_pdu_length(config.max_pdu_length)
        .read_timeout(config.read_timeout.max(config.idle_timeout))
        .write_timeout(config.write_timeout)
        .with_abstract_syntax(uids::VERIFICATION)
        .with_abstract_syntax(Model::PATIENT_ROOT_FIND)
        .with_abstract_syntax(Model::STUDY_ROOT_FIND)
        .with_abstract_syntax(PATIENT_ROOT_MOVE)
        .with_abstract_syntax(STUDY_ROOT_MOVE)
        .with_abstract_syntax(PATIENT_ROOT_GET)
        .with_abstract_syntax(STUDY_ROOT_GET)
        .with_abstract_syntax(crate::scp_commit::STORAGE_COMMITMENT_PUSH)
        .with_negotiation(StrataNegotiation);
    if config.accept_private_sop_classes {
        opts = opts.promiscuous(true);
    }
    for (_, uid) in STORAGE_SOP_CLASSES {
        opts = opts.with_abstract_syntax(*uid);
    }
    for ts in TransferSyntaxRegistry
        .iter()
        .filter(|ts| !ts.is_unsupported())
    {
        opts = opts.with_transfer_syntax(ts.uid());
    }
    opts
}

/// Whether a C-STORE of `sop_class` may be accepted.
fn storable(sop_class: &str, config: &DicomConfig) -> bool {
    use dicom_core::dictionary::UidDictionary;
    if is_storage_sop_class(sop_class) {
        return true;
    }
    let standard = dicom_dictionary_std::StandardSopClassDictionary
        .by_uid(sop_class)
        .is_some();
    !standard && config.accept_private_sop_classes
}

/// A C-STORE being received.
struct StoreOp {
    pc_id: u8,
    message_id: u16,
    sop_class: String,
    sop_instance: String,
    started: Instant,
    writer: Option<ObjectWriter>,
    refusal: Option<(u16, RejectReason, String)>,
    received: u64,
}

/// A request whose data set we read and discard before answering with a failure.
struct DiscardOp {
    pc_id: u8,
    request_field: u16,
    message_id: u16,
    status: u16,
    received: u64,
}

enum Pending {
    Store(StoreOp),
    Discard(DiscardOp),
    Find(FindOp),
}

/// A C-FIND whose identifier is being received.
struct FindOp {
    /// Set for a C-MOVE (its destination AE) or a C-GET (empty); a C-FIND otherwise.
    move_destination: Option<String>,
    /// Set for a storage commitment N-ACTION (its ActionTypeID).
    commit_action: Option<u16>,
    pc_id: u8,
    message_id: u16,
    model: Model,
    sop_class: String,
    transfer_syntax: String,
    identifier: Vec<u8>,
    received: u64,
}

impl FindOp {
    /// A C-FIND, C-MOVE, C-GET or N-ACTION whose data set is about to arrive.
    fn new(
        pc_id: u8,
        message_id: u16,
        model: Model,
        sop_class: String,
        transfer_syntax: String,
        move_destination: Option<String>,
        commit_action: Option<u16>,
    ) -> Self {
        FindOp {
            move_destination,
            commit_action,
            pc_id,
            message_id,
            model,
            sop_class,
            transfer_syntax,
            identifier: Vec::new(),
            received: 0,
        }
    }

    fn into_request(self) -> crate::scp_find::FindRequest {
        crate::scp_find::FindRequest {
            pc_id: self.pc_id,
            message_id: self.message_id,
            model: self.model,
            sop_class: self.sop_class,
            transfer_syntax: self.transfer_syntax,
            identifier: self.identifier,
        }
    }
}

const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";
const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

/// Longest C-FIND identifier accepted.
const MAX_IDENTIFIER_BYTES: usize = 1 << 20;

/// Longest command set accepted (real ones are a few hundred bytes).
const MAX_COMMAND_BYTES: usize = 64 * 1024;

impl Pending {
    /// Counts data set bytes received for this message; returns the total so far.
    fn add_received(&mut self, n: usize) -> u64 {
        let total = match self {
            Pending::Store(s) => &mut s.received,
            Pending::Discard(d) => &mut d.received,
            Pending::Find(f) => &mut f.received,
        };
        *total += n as u64;
        *total
    }
}

/// Serves one TCP connection until release, abort, error, timeout or shutdown.
pub async fn serve_association(mut ctx: ScpContext, stream: TcpStream, peer: SocketAddr) {
    let opts = server_options(&ctx.config);
    let negotiated =
        tokio::time::timeout(ctx.config.read_timeout, opts.establish_async(stream)).await;
    let mut assoc = match negotiated {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "association not established");
            ctx.ingest
                .metrics()
                .associations_rejected
                .with_label_values(&["negotiation"])
                .inc();
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "association not established: no A-ASSOCIATE-RQ within the read timeout");
            ctx.ingest
                .metrics()
                .associations_rejected
                .with_label_values(&["timeout"])
                .inc();
            return;
        }
    };
    let calling_ae = dicom_ul::association::Association::peer_ae_title(&assoc)
        .trim()
        .to_string();
    tracing::info!(%peer, calling_ae, "association established");
    ctx.actor = crate::audit::Actor::dicom(&calling_ae, &peer.to_string());
    let metrics = ctx.ingest.metrics().clone();
    metrics.active_associations.inc();
    let outcome = run_messages(&ctx, &mut assoc, peer, &calling_ae).await;
    metrics.active_associations.dec();
    match outcome {
        Ok(End::Released) => tracing::info!(%peer, calling_ae, "association released"),
        Ok(End::PeerAborted) => tracing::info!(%peer, calling_ae, "association aborted by peer"),
        Ok(End::Abort(why)) | Err(why) => {
            tracing::warn!(%peer, calling_ae, reason = %why, "aborting association");
            let _ = assoc.abort().await;
        }
    }
}

enum End {
    Released,
    PeerAborted,
    Abort(String),
}

async fn run_messages(
    ctx: &ScpContext,
    assoc: &mut Association,
    peer: SocketAddr,
    calling_ae: &str,
) -> Result<End, String> {
    let mut shutdown = ctx.shutdown.clone();
    let mut command_buf: Vec<u8> = Vec::new();
    let mut command_pc: Option<u8> = None;
    let mut pending: Option<Pending> = None;
    let max_object = ctx.config.max_object_mb.saturating_mul(1024 * 1024);
    loop {
        let mid_message = pending.is_some() || !command_buf.is_empty();
        let wait = if mid_message {
            ctx.config.read_timeout
        } else {
            ctx.config.idle_timeout
        };
        let pdu = tokio::select! {
            r = tokio::time::timeout(wait, assoc.receive()) => match r {
                Err(_) => return Ok(End::Abort(format!("no PDU for {wait:?}"))),
                Ok(Err(e)) => return Err(format!("receive failed: {e}")),
                Ok(Ok(pdu)) => pdu,
            },
            _ = shutdown.changed(), if !mid_message => return Ok(End::Abort("server shutting down".into())),
        };
        match pdu {
            Pdu::PData { data } => {
                for pdv in data {
                    match pdv.value_type {
                        PDataValueType::Command => {
                            if pending.is_some() {
                                return Ok(End::Abort(
                                    "command received while a data set was expected".into(),
                                ));
                            }
                            if *command_pc.get_or_insert(pdv.presentation_context_id)
                                != pdv.presentation_context_id
                            {
                                return Ok(End::Abort(
                                    "command fragments on different presentation contexts".into(),
                                ));
                            }
                            if command_buf.len() + pdv.data.len() > MAX_COMMAND_BYTES {
                                return Ok(End::Abort(format!(
                                    "command set longer than {MAX_COMMAND_BYTES} bytes"
                                )));
                            }
                            command_buf.extend_from_slice(&pdv.data);
                            if pdv.is_last {
                                command_pc = None;
                                let bytes = std::mem::take(&mut command_buf);
                                pending =
                                    start_message(ctx, assoc, pdv.presentation_context_id, &bytes)
                                        .await?;
                            }
                        }
                        PDataValueType::Data => {
                            let Some(op) = pending.as_mut() else {
                                return Ok(End::Abort(
                                    "data set received without a command".into(),
                                ));
                            };
                            let is_last = pdv.is_last;
                            if op.add_received(pdv.data.len()) > max_object {
                                return Ok(End::Abort(format!(
                                    "data set larger than max_object_mb ({} MiB)",
                                    ctx.config.max_object_mb
                                )));
                            }
                            feed_data(op, pdv).await?;
                            if is_last {
                                let op = pending.take().expect("checked above");
                                finish_message(ctx, assoc, op, peer, calling_ae).await?;
                            }
                        }
                    }
                }
            }
            Pdu::ReleaseRQ => {
                if pending.is_some() {
                    tracing::warn!(%peer, "release requested in the middle of a message");
                }
                assoc
                    .send(&Pdu::ReleaseRP)
                    .await
                    .map_err(|e| format!("send A-RELEASE-RP: {e}"))?;
                return Ok(End::Released);
            }
            Pdu::AbortRQ { .. } => return Ok(End::PeerAborted),
            other => {
                return Ok(End::Abort(format!(
                    "unexpected PDU {}",
                    other.short_description()
                )))
            }
        }
    }
}

/// Returns the accepted presentation context `pc_id` as (abstract syntax, transfer syntax).
fn presentation_context(assoc: &Association, pc_id: u8) -> Option<(String, String)> {
    assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.id == pc_id && pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.abstract_syntax.trim_end_matches('\0').to_string(),
                pc.transfer_syntax.trim_end_matches('\0').to_string(),
            )
        })
}

/// Whether the requester sent a C-CANCEL (checked between pending responses of a C-FIND
/// or C-MOVE, without waiting: the receive is polled once, with no timer — a zero
/// timeout would wait for the timer wheel's next tick, ~1 ms per response; dicom-ul's
/// receive is cancel-safe). Anything but a C-CANCEL here is a protocol error.
pub(crate) async fn cancel_requested(assoc: &mut Association) -> Result<bool, String> {
    use std::future::Future;
    let mut receive = std::pin::pin!(assoc.receive());
    let polled = std::future::poll_fn(|cx| match receive.as_mut().poll(cx) {
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await;
    match polled {
        None => Ok(false),
        Some(Ok(Pdu::PData { data })) => {
            let cancel = data.iter().any(|pdv| {
                pdv.value_type == PDataValueType::Command
                    && Command::decode(&pdv.data)
                        .ok()
                        .and_then(|c| c.command_field().ok())
                        == Some(field::C_CANCEL_RQ)
            });
            if cancel {
                Ok(true)
            } else {
                Err("unexpected P-DATA while responses were pending".into())
            }
        }
        Some(Ok(Pdu::AbortRQ { .. })) => Err("peer aborted while responses were pending".into()),
        Some(Ok(other)) => Err(format!(
            "unexpected {} while responses were pending",
            other.short_description()
        )),
        Some(Err(e)) => Err(format!("receive failed: {e}")),
    }
}

pub(crate) async fn send_command(
    assoc: &mut Association,
    pc_id: u8,
    bytes: Vec<u8>,
) -> Result<(), String> {
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: bytes,
            }],
        })
        .await
        .map_err(|e| format!("send response: {e}"))
}

/// Handles a complete command set; returns what to do with the data set that follows.
async fn start_message(
    ctx: &ScpContext,
    assoc: &mut Association,
    pc_id: u8,
    bytes: &[u8],
) -> Result<Option<Pending>, String> {
    let command = Command::decode(bytes).map_err(|e| format!("malformed command set: {e}"))?;
    let request = command.command_field().map_err(|e| e.to_string())?;
    if request == field::C_CANCEL_RQ {
        return Ok(None); // nothing of ours is cancellable yet; C-CANCEL has no response
    }
    let message_id = command.message_id().map_err(|e| e.to_string())?;
    let has_data = command.has_data_set().map_err(|e| e.to_string())?;
    let Some((abstract_syntax, transfer_syntax)) = presentation_context(assoc, pc_id) else {
        return Err(format!(
            "command on presentation context {pc_id}, which was not accepted"
        ));
    };
    match request {
        field::C_ECHO_RQ => {
            if has_data {
                return Err("C-ECHO-RQ with a data set".into());
            }
            let rsp = ResponseBuilder::new(request, message_id, status::SUCCESS)
                .uid(tag::AFFECTED_SOP_CLASS_UID, uids::VERIFICATION)
                .encode();
            send_command(assoc, pc_id, rsp).await?;
            Ok(None)
        }
        field::C_FIND_RQ if Model::of_sop_class(&abstract_syntax).is_some() => {
            if !has_data {
                return Err("C-FIND-RQ without an identifier".into());
            }
            Ok(Some(Pending::Find(FindOp::new(
                pc_id,
                message_id,
                Model::of_sop_class(&abstract_syntax).expect("checked in the guard"),
                abstract_syntax,
                transfer_syntax,
                None,
                None,
            ))))
        }
        field::C_MOVE_RQ
            if abstract_syntax == PATIENT_ROOT_MOVE || abstract_syntax == STUDY_ROOT_MOVE =>
        {
            if !has_data {
                return Err("C-MOVE-RQ without an identifier".into());
            }
            Ok(Some(Pending::Find(FindOp::new(
                pc_id,
                message_id,
                if abstract_syntax == PATIENT_ROOT_MOVE {
                    Model::PatientRoot
                } else {
                    Model::StudyRoot
                },
                abstract_syntax,
                transfer_syntax,
                Some(command.move_destination().unwrap_or_default()),
                None,
            ))))
        }
        field::C_GET_RQ
            if abstract_syntax == PATIENT_ROOT_GET || abstract_syntax == STUDY_ROOT_GET =>
        {
            if !has_data {
                return Err("C-GET-RQ without an identifier".into());
            }
            Ok(Some(Pending::Find(FindOp::new(
                pc_id,
                message_id,
                if abstract_syntax == PATIENT_ROOT_GET {
                    Model::PatientRoot
                } else {
                    Model::StudyRoot
                },
                abstract_syntax,
                transfer_syntax,
                Some(String::new()),
                None,
            ))))
        }
        field::N_ACTION_RQ if abstract_syntax == crate::scp_commit::STORAGE_COMMITMENT_PUSH => {
            if !has_data {
                return Err("N-ACTION-RQ without a data set".into());
            }
            Ok(Some(Pending::Find(FindOp::new(
                pc_id,
                message_id,
                Model::StudyRoot,
                abstract_syntax,
                transfer_syntax,
                None,
                Some(command.action_type_id().unwrap_or(0)),
            ))))
        }
        field::C_STORE_RQ => {
            if !has_data {
                return Err("C-STORE-RQ without a data set".into());
            }
            let sop_class = command.affected_sop_class_uid().unwrap_or_default();
            let sop_instance = command.affected_sop_instance_uid().unwrap_or_default();
            let mut op = StoreOp {
                pc_id,
                message_id,
                sop_class: sop_class.clone(),
                sop_instance: sop_instance.clone(),
                started: Instant::now(),
                writer: None,
                refusal: None,
                received: 0,
            };
            op.refusal = if !is_valid_uid(&sop_class) || !is_valid_uid(&sop_instance) {
                Some((
                    status::CANNOT_UNDERSTAND,
                    RejectReason::Unparseable,
                    "missing or invalid Affected SOP Class/Instance UID".into(),
                ))
            } else if sop_class != abstract_syntax {
                Some((
                    status::DATASET_DOES_NOT_MATCH,
                    RejectReason::DatasetMismatch,
                    format!("SOP class {sop_class} sent on a presentation context for {abstract_syntax}"),
                ))
            } else if !storable(&sop_class, &ctx.config) {
                Some((
                    status::SOP_CLASS_NOT_SUPPORTED,
                    RejectReason::SopClassNotSupported,
                    format!("{sop_class} is not a storage SOP class"),
                ))
            } else {
                let hot = ctx.ingest.hot().clone();
                match tokio::task::spawn_blocking(move || hot.check_free_space_blocking()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some((
                        status::OUT_OF_RESOURCES,
                        RejectReason::OutOfSpace,
                        e.to_string(),
                    )),
                    Err(e) => Some((
                        status::OUT_OF_RESOURCES,
                        RejectReason::InternalError,
                        e.to_string(),
                    )),
                }
            };
            if op.refusal.is_none() {
                op.writer = Some(
                    ctx.ingest
                        .writer(&sop_class, &sop_instance, &transfer_syntax),
                );
            }
            Ok(Some(Pending::Store(op)))
        }
        other => {
            tracing::info!(
                command = format!("{other:#06x}"),
                "unsupported DIMSE request"
            );
            let discard = DiscardOp {
                pc_id,
                request_field: other,
                message_id,
                status: status::UNRECOGNIZED_OPERATION,
                received: 0,
            };
            if has_data {
                Ok(Some(Pending::Discard(discard)))
            } else {
                respond_discarded(assoc, discard).await?;
                Ok(None)
            }
        }
    }
}

async fn respond_discarded(assoc: &mut Association, op: DiscardOp) -> Result<(), String> {
    let rsp = ResponseBuilder::new(op.request_field, op.message_id, op.status).encode();
    send_command(assoc, op.pc_id, rsp).await
}

async fn feed_data(op: &mut Pending, pdv: PDataValue) -> Result<(), String> {
    if let Pending::Find(f) = op {
        if pdv.presentation_context_id != f.pc_id {
            return Err("identifier on a different presentation context than its command".into());
        }
        if f.identifier.len() + pdv.data.len() > MAX_IDENTIFIER_BYTES {
            return Err(format!(
                "C-FIND identifier longer than {MAX_IDENTIFIER_BYTES} bytes"
            ));
        }
        f.identifier.extend_from_slice(&pdv.data);
        return Ok(());
    }
    let (pc_id, store) = match op {
        Pending::Store(s) => (s.pc_id, Some(s)),
        Pending::Discard(d) => (d.pc_id, None),
        Pending::Find(_) => unreachable!("handled above"),
    };
    if pdv.presentation_context_id != pc_id {
        return Err("data set on a different presentation context than its command".into());
    }
    if let Some(store) = store {
        if let Some(writer) = store.writer.as_mut() {
            if let Err(e) = writer.write(pdv.data).await {
                let reason = e.reason();
                let status = status_for(&e);
                store.writer = None; // drops the tmp file
                store.refusal = Some((status, reason, e.to_string()));
            }
        }
    }
    Ok(())
}

fn status_for(e: &IngestError) -> u16 {
    match e {
        IngestError::OutOfSpace(_) => status::OUT_OF_RESOURCES,
        IngestError::DatasetMismatch(_) => status::DATASET_DOES_NOT_MATCH,
        IngestError::Unparseable(_) => status::CANNOT_UNDERSTAND,
        IngestError::ConflictingVersion(_) => status::DUPLICATE_SOP_INSTANCE,
        IngestError::Storage(_) => status::OUT_OF_RESOURCES,
    }
}

async fn finish_message(
    ctx: &ScpContext,
    assoc: &mut Association,
    op: Pending,
    peer: SocketAddr,
    calling_ae: &str,
) -> Result<(), String> {
    let op = match op {
        Pending::Discard(d) => return respond_discarded(assoc, d).await,
        Pending::Find(f) if f.commit_action.is_some() => {
            let req = crate::scp_commit::CommitRequest {
                pc_id: f.pc_id,
                message_id: f.message_id,
                transfer_syntax: f.transfer_syntax,
                action_type: f.commit_action.unwrap_or(0),
                dataset: f.identifier,
            };
            return crate::scp_commit::run_commit(ctx, assoc, req).await;
        }
        Pending::Find(f) => {
            return match f.move_destination.clone() {
                Some(destination) => {
                    let r = f.into_request();
                    let req = crate::scp_move::MoveRequest {
                        pc_id: r.pc_id,
                        message_id: r.message_id,
                        sop_class: r.sop_class,
                        transfer_syntax: r.transfer_syntax,
                        destination,
                        identifier: r.identifier,
                    };
                    if req.destination.is_empty() {
                        crate::scp_move::run_get(ctx, assoc, req).await
                    } else {
                        crate::scp_move::run_move(ctx, assoc, req).await
                    }
                }
                None => crate::scp_find::run_find(ctx, assoc, f.into_request()).await,
            }
        }
        Pending::Store(s) => s,
    };
    let metrics = ctx.ingest.metrics().clone();
    let result: Result<(u16, Option<CommitOutcome>), (u16, RejectReason, String)> =
        match (op.refusal, op.writer) {
            (Some(refusal), _) => Err(refusal),
            (None, None) => Err((
                status::PROCESSING_FAILURE,
                RejectReason::InternalError,
                "no writer".into(),
            )),
            (None, Some(writer)) => {
                let provenance = Provenance {
                    received_at_ms: crate::index::rocks::unix_ms_now(),
                    calling_ae: calling_ae.to_string(),
                    source: peer.to_string(),
                };
                match writer
                    .finish_and_commit(
                        &ctx.ingest,
                        op.sop_class.clone(),
                        op.sop_instance.clone(),
                        provenance,
                    )
                    .await
                {
                    Ok(stored) => Ok((status::SUCCESS, Some(stored.outcome))),
                    Err(e) => Err((status_for(&e), e.reason(), e.to_string())),
                }
            }
        };
    let mut error_comment = None;
    let status = match result {
        Ok((status, outcome)) => {
            tracing::debug!(sop = op.sop_instance, ?outcome, "stored");
            metrics
                .store_seconds
                .observe(op.started.elapsed().as_secs_f64());
            status
        }
        Err((status, reason, message)) => {
            metrics.reject(reason);
            tracing::warn!(
                %peer, calling_ae, sop = op.sop_instance, status = format!("{status:#06x}"), %message,
                "C-STORE refused"
            );
            error_comment = Some(message);
            status
        }
    };
    let mut rsp = ResponseBuilder::new(field::C_STORE_RQ, op.message_id, status);
    if is_valid_uid(&op.sop_class) {
        rsp = rsp.uid(tag::AFFECTED_SOP_CLASS_UID, &op.sop_class);
    }
    if is_valid_uid(&op.sop_instance) {
        rsp = rsp.uid(tag::AFFECTED_SOP_INSTANCE_UID, &op.sop_instance);
    }
    if let Some(comment) = error_comment {
        rsp = rsp.text(tag::ERROR_COMMENT, &comment);
    }
    send_command(assoc, op.pc_id, rsp.encode()).await
}
