//! # One task per association
//!
//! [`serve_association`] negotiates an association on dicom-ul (async, see
//! [`super::negotiation`]), then reads PDUs and assembles DIMSE messages: command PDVs
//! are collected until their last fragment and decoded into a [`Request`]; the data set
//! that follows is streamed straight into the store use case for a C-STORE (never
//! buffered whole) and collected (bounded) for the other services. Each complete message
//! goes to its service module, which calls the application layer with this
//! association's [`Principal`] and answers.
//!
//! Bad input never hurts (DESIGN promise 7): a malformed command or a protocol violation
//! aborts this association only; a bad data set gets its DIMSE status and the
//! association goes on. Nothing is written under an id before the whole object was
//! received, hashed, parsed and made durable.

use super::command::{field, status, Command, ResponseBuilder};
use super::context::{AssocContext, Association, Link, Message};
use super::negotiation::{
    check_context_ids, server_options, valid_context_ids, ABORT_INVALID_PARAMETER,
};
use super::pdv::send_command;
use super::request::{Incoming, Request};
use super::store::Receiving;
use super::AssocError;
use crate::archive::Principal;
use dicom_ul::pdu::{PDataValueType, PresentationContextResultReason};
use dicom_ul::Pdu;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Longest identifier (C-FIND, C-MOVE, C-GET) or N-ACTION data set accepted.
const MAX_IDENTIFIER_BYTES: usize = 1 << 20;

/// Longest command set accepted (real ones are a few hundred bytes).
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// A request whose data set is arriving.
enum Pending {
    /// A C-STORE: its data set streams into the store use case (boxed: the writer's
    /// state is large, and one is pending at a time).
    Store(Box<Receiving>),
    /// A query, retrieve or commitment request: its data set is collected.
    Collect(Message),
    /// An unsupported request: its data set is read and dropped, then answered.
    Discard(Message),
}

impl Pending {
    fn pc_id(&self) -> u8 {
        match self {
            Pending::Store(s) => s.pc_id,
            Pending::Collect(m) | Pending::Discard(m) => m.pc_id,
        }
    }

    /// Counts data set bytes received for this message; returns the total so far.
    fn add_received(&mut self, n: usize) -> u64 {
        let total = match self {
            Pending::Store(s) => &mut s.received,
            Pending::Collect(m) | Pending::Discard(m) => &mut m.received,
        };
        *total += n as u64;
        *total
    }
}

/// Serves one TCP connection until release, abort, error, timeout or shutdown.
pub async fn serve_association(mut ctx: AssocContext, stream: TcpStream, peer: SocketAddr) {
    ctx.socket = Some(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let opts = server_options(&ctx.config);
    let metrics = ctx.archive.metrics().clone();
    // one deadline for the whole negotiation
    let deadline = tokio::time::Instant::now() + ctx.config.read_timeout;
    if let Ok(Err(why)) = tokio::time::timeout_at(deadline, check_context_ids(&stream)).await {
        tracing::warn!(%peer, reason = %why, "association aborted: invalid A-ASSOCIATE-RQ");
        metrics
            .associations_rejected
            .with_label_values(&["invalid_request"])
            .inc();
        let mut stream = stream;
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &ABORT_INVALID_PARAMETER).await;
        return;
    }
    let negotiated = tokio::time::timeout_at(deadline, opts.establish_async(stream)).await;
    let assoc = match negotiated {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "association not established");
            ctx.archive.connection_refused(
                &Principal::dicom("", &peer.to_string()),
                &format!("association not established: {e}"),
            );
            metrics
                .associations_rejected
                .with_label_values(&["negotiation"])
                .inc();
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "association not established: no A-ASSOCIATE-RQ within the read timeout");
            metrics
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
    let grant = ctx.archive.dicom_grant(&calling_ae, None);
    ctx.principal = Principal::dicom(&calling_ae, &peer.to_string()).granted(grant);
    run_established(ctx, assoc, peer).await;
}

/// Serves one TCP connection of the DICOM TLS port (PS3.15 B.1): the TLS handshake with
/// `tls` (client certificates required when `[tls] client_ca_file` is set), then the
/// association as on the plain port. The caller is the calling AE title together with
/// its certificate's subject. A refused handshake is counted
/// (`strata_tls_handshake_failures_total{service="dicom"}`) and logged; it never
/// reaches DICOM negotiation.
pub async fn serve_tls_association(
    mut ctx: AssocContext,
    stream: TcpStream,
    peer: SocketAddr,
    tls: std::sync::Arc<rustls::ServerConfig>,
) {
    ctx.socket = Some(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let opts = server_options(&ctx.config).tls_config(tls);
    let metrics = ctx.archive.metrics().clone();
    let deadline = tokio::time::Instant::now() + ctx.config.read_timeout;
    let negotiated = tokio::time::timeout_at(deadline, opts.establish_tls_async(stream)).await;
    let mut assoc = match negotiated {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            use dicom_ul::association::Error as UlError;
            let tls_failure = matches!(
                e,
                UlError::TlsHandshake { .. } | UlError::TlsConnection { .. }
            );
            let (label, service) = if tls_failure {
                metrics
                    .tls_handshake_failures
                    .with_label_values(&["dicom"])
                    .inc();
                ("tls", "TLS handshake refused")
            } else {
                ("negotiation", "association not established")
            };
            tracing::warn!(%peer, error = %e, "DICOM TLS: {service}");
            ctx.archive.connection_refused(
                &Principal::dicom("", &peer.to_string()),
                &format!("DICOM TLS: {service}: {e}"),
            );
            metrics
                .associations_rejected
                .with_label_values(&[label])
                .inc();
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "DICOM TLS: no handshake and A-ASSOCIATE-RQ within the read timeout");
            metrics
                .associations_rejected
                .with_label_values(&["timeout"])
                .inc();
            return;
        }
    };
    // the IDs' check the plain port makes before negotiating (PS3.8 9.3.2.2), made on
    // what was negotiated: the TLS stream cannot be peeked before dicom-ul reads it
    let ids = assoc.presentation_contexts().iter().map(|pc| pc.id);
    if let Err(why) = valid_context_ids(ids) {
        tracing::warn!(%peer, reason = %why, "association aborted: invalid A-ASSOCIATE-RQ");
        metrics
            .associations_rejected
            .with_label_values(&["invalid_request"])
            .inc();
        let _ = assoc.abort().await;
        return;
    }
    let calling_ae = dicom_ul::association::Association::peer_ae_title(&assoc)
        .trim()
        .to_string();
    let subject = {
        let (_, connection) = assoc.inner_stream().get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| crate::tls::subject_of(leaf))
    };
    tracing::info!(%peer, calling_ae, certificate = subject.as_deref().unwrap_or(""), "association established over TLS");
    let grant = ctx.archive.dicom_grant(&calling_ae, subject.as_deref());
    ctx.principal = Principal::dicom_tls(&calling_ae, &peer.to_string(), subject).granted(grant);
    run_established(ctx, assoc, peer).await;
}

/// Runs an established association's messages until its end, and ends it.
async fn run_established<S: Link>(ctx: AssocContext, mut assoc: Association<S>, peer: SocketAddr) {
    let metrics = ctx.archive.metrics().clone();
    let calling_ae = dicom_ul::association::Association::peer_ae_title(&assoc)
        .trim()
        .to_string();
    metrics.active_associations.inc();
    let outcome = run_messages(&ctx, &mut assoc, peer).await;
    metrics.active_associations.dec();
    match outcome {
        Ok(End::Released) => tracing::info!(%peer, calling_ae, "association released"),
        Ok(End::PeerAborted) => tracing::info!(%peer, calling_ae, "association aborted by peer"),
        Ok(End::Abort(why)) => {
            tracing::warn!(%peer, calling_ae, reason = %why, "aborting association");
            let _ = assoc.abort().await;
        }
        Err(e) => {
            tracing::warn!(%peer, calling_ae, reason = %e, "aborting association");
            let _ = assoc.abort().await;
        }
    }
}

enum End {
    Released,
    PeerAborted,
    Abort(String),
}

async fn run_messages<S: Link>(
    ctx: &AssocContext,
    assoc: &mut Association<S>,
    peer: SocketAddr,
) -> Result<End, AssocError> {
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
        super::context::quick_ack(ctx.socket);
        let pdu = tokio::select! {
            r = tokio::time::timeout(wait, assoc.receive()) => match r {
                Err(_) => return Ok(End::Abort(format!("no PDU for {wait:?}"))),
                Ok(Err(e)) => return Err(AssocError::Receive(e.to_string())),
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
                            if pdv.presentation_context_id != op.pc_id() {
                                return Err(AssocError::protocol(
                                    "data set on a different presentation context than its command",
                                ));
                            }
                            let is_last = pdv.is_last;
                            if op.add_received(pdv.data.len()) > max_object {
                                return Ok(End::Abort(format!(
                                    "data set larger than max_object_mb ({} MiB)",
                                    ctx.config.max_object_mb
                                )));
                            }
                            feed_data(op, pdv.data).await?;
                            if is_last {
                                let op = pending.take().expect("checked above");
                                finish_message(ctx, assoc, op, peer).await?;
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
                    .map_err(AssocError::send("A-RELEASE-RP"))?;
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
fn presentation_context<S: Link>(assoc: &Association<S>, pc_id: u8) -> Option<(String, String)> {
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

/// Handles a complete command set; returns what to do with the data set that follows.
async fn start_message<S: Link>(
    ctx: &AssocContext,
    assoc: &mut Association<S>,
    pc_id: u8,
    bytes: &[u8],
) -> Result<Option<Pending>, AssocError> {
    let Some((abstract_syntax, transfer_syntax)) = presentation_context(assoc, pc_id) else {
        // a C-CANCEL may come on any context; anything else must use an accepted one
        if Command::decode(bytes)
            .ok()
            .and_then(|c| c.command_field().ok())
            == Some(field::C_CANCEL_RQ)
        {
            return Ok(None);
        }
        return Err(AssocError::protocol(format!(
            "command on presentation context {pc_id}, which was not accepted"
        )));
    };
    let incoming = Incoming::decode(bytes, &abstract_syntax)?;
    let message = |incoming: Incoming| Message {
        incoming,
        pc_id,
        sop_class: abstract_syntax.clone(),
        transfer_syntax: transfer_syntax.clone(),
        data: Vec::new(),
        received: 0,
    };
    match &incoming.request {
        Request::Cancel => Ok(None), // nothing outstanding; C-CANCEL has no response
        Request::Echo => {
            super::echo::answer(assoc, pc_id, incoming.message_id).await?;
            Ok(None)
        }
        Request::Store {
            sop_class_uid,
            sop_instance_uid,
        } => Ok(Some(Pending::Store(Box::new(
            super::store::begin(
                ctx,
                pc_id,
                incoming.message_id,
                sop_class_uid,
                sop_instance_uid,
                &abstract_syntax,
                &transfer_syntax,
            )
            .await,
        )))),
        Request::Find { .. }
        | Request::Move { .. }
        | Request::Get { .. }
        | Request::Commit { .. } => Ok(Some(Pending::Collect(message(incoming)))),
        Request::Unsupported { command_field } => {
            tracing::info!(
                command = format!("{command_field:#06x}"),
                "unsupported DIMSE request"
            );
            if incoming.has_data_set {
                Ok(Some(Pending::Discard(message(incoming))))
            } else {
                respond_unsupported(assoc, &message(incoming)).await?;
                Ok(None)
            }
        }
    }
}

/// 0x0211 (unrecognized operation) for a request Strata does not answer.
async fn respond_unsupported<S: Link>(
    assoc: &mut Association<S>,
    m: &Message,
) -> Result<(), AssocError> {
    let rsp = ResponseBuilder::new(
        m.incoming.command_field,
        m.incoming.message_id,
        status::UNRECOGNIZED_OPERATION,
    )
    .encode();
    send_command(assoc, m.pc_id, rsp).await
}

async fn feed_data(op: &mut Pending, data: Vec<u8>) -> Result<(), AssocError> {
    match op {
        Pending::Store(s) => s.write(data).await?,
        Pending::Collect(m) => {
            if m.data.len() + data.len() > MAX_IDENTIFIER_BYTES {
                return Err(AssocError::protocol(format!(
                    "identifier longer than {MAX_IDENTIFIER_BYTES} bytes"
                )));
            }
            m.data.extend_from_slice(&data);
        }
        Pending::Discard(_) => {}
    }
    Ok(())
}

async fn finish_message<S: Link>(
    ctx: &AssocContext,
    assoc: &mut Association<S>,
    op: Pending,
    peer: SocketAddr,
) -> Result<(), AssocError> {
    match op {
        Pending::Discard(m) => respond_unsupported(assoc, &m).await,
        Pending::Store(s) => (*s).finish(ctx, assoc, peer).await,
        Pending::Collect(m) => match m.incoming.request.clone() {
            Request::Find { model } => super::find::run_find(ctx, assoc, m, model).await,
            Request::Move { model, destination } => {
                super::retrieve::run_move(ctx, assoc, m, model, &destination).await
            }
            Request::Get { model } => super::retrieve::run_get(ctx, assoc, m, model).await,
            Request::Commit { action_type_id } => {
                super::commit::run_commit(ctx, assoc, m, action_type_id).await
            }
            _ => unreachable!("only these requests collect a data set"),
        },
    }
}
