//! C-STORE SCP (PS3.4 Annex B, PS3.7 9.1.1): the data set streams into the store use
//! case ([`Archive::begin_store`](crate::archive::Archive::begin_store)) as its PDVs
//! arrive; the response is sent only once the use case says the instance is durable,
//! indexed and audited (DESIGN promise 1).
//!
//! A request refused before its data set ends (invalid UIDs, a SOP class that does not
//! match its presentation context or is not a storage class, a full disk) still has its
//! data set read — and dropped — before the failure response, so the association goes
//! on.

use super::command::{field, status, tag, ResponseBuilder};
use super::context::{AssocContext, Association, Link};
use super::negotiation::storable;
use super::pdv::send_command;
use super::AssocError;
use crate::archive::store::StoreStream;
use crate::archive::Error;
use crate::dicom::part10::is_valid_uid;
use crate::ingest::IngestError;
use crate::metrics::RejectReason;
use std::net::SocketAddr;
use std::time::Instant;

/// A C-STORE whose data set is arriving.
pub struct Receiving {
    pub(crate) pc_id: u8,
    message_id: u16,
    sop_class: String,
    sop_instance: String,
    started: Instant,
    stream: Option<StoreStream>,
    refusal: Option<(u16, RejectReason, String)>,
    pub(crate) received: u64,
}

/// The metrics label of a refused store.
fn reject_reason(e: &Error) -> RejectReason {
    match e {
        Error::Ingest(e) => e.reason(),
        Error::Tier(e) if e.is_out_of_space() => RejectReason::OutOfSpace,
        _ => RejectReason::InternalError,
    }
}

fn refusal(e: Error) -> (u16, RejectReason, String) {
    (e.dimse_status(), reject_reason(&e), e.to_string())
}

/// Checks a C-STORE-RQ and, when it may be stored, begins the store use case.
pub async fn begin(
    ctx: &AssocContext,
    pc_id: u8,
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
    abstract_syntax: &str,
    transfer_syntax: &str,
) -> Receiving {
    let mut op = Receiving {
        pc_id,
        message_id,
        sop_class: sop_class.to_string(),
        sop_instance: sop_instance.to_string(),
        started: Instant::now(),
        stream: None,
        refusal: None,
        received: 0,
    };
    op.refusal = if !is_valid_uid(sop_class) || !is_valid_uid(sop_instance) {
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
    } else if !storable(sop_class, &ctx.config) {
        Some((
            status::SOP_CLASS_NOT_SUPPORTED,
            RejectReason::SopClassNotSupported,
            format!("{sop_class} is not a storage SOP class"),
        ))
    } else {
        match ctx
            .archive
            .begin_store(&ctx.principal, sop_class, sop_instance, transfer_syntax)
            .await
        {
            Ok(stream) => {
                op.stream = Some(stream);
                None
            }
            Err(e) => Some(match e {
                // the free-space check failed: out of resources, whatever the cause
                Error::Tier(t) if !t.is_out_of_space() => (
                    status::OUT_OF_RESOURCES,
                    RejectReason::OutOfSpace,
                    t.to_string(),
                ),
                Error::Internal(m) => (status::OUT_OF_RESOURCES, RejectReason::InternalError, m),
                e => refusal(e),
            }),
        }
    };
    op
}

impl Receiving {
    /// Feeds one PDV's data; a failure refuses the store (its tmp file is dropped) but
    /// the rest of the data set is still read.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), AssocError> {
        if let Some(stream) = self.stream.as_mut() {
            if let Err(e) = stream.write(data).await {
                self.stream = None;
                self.refusal = Some(refusal(e));
            }
        }
        Ok(())
    }

    /// The data set is complete: store it and answer.
    pub async fn finish<S: Link>(
        self,
        ctx: &AssocContext,
        assoc: &mut Association<S>,
        peer: SocketAddr,
    ) -> Result<(), AssocError> {
        let metrics = ctx.archive.metrics().clone();
        metrics
            .commit_seconds
            .with_label_values(&["receive"])
            .observe(self.started.elapsed().as_secs_f64());
        let result = match (self.refusal, self.stream) {
            (Some(refusal), _) => Err(refusal),
            (None, None) => Err(refusal(Error::Ingest(IngestError::Storage(
                "no writer".into(),
            )))),
            (None, Some(stream)) => stream.finish().await.map_err(refusal),
        };
        let mut error_comment = None;
        let status = match result {
            Ok(stored) => {
                tracing::debug!(sop = self.sop_instance, outcome = ?stored.outcome, "stored");
                metrics
                    .store_seconds
                    .observe(self.started.elapsed().as_secs_f64());
                status::SUCCESS
            }
            Err((status, reason, message)) => {
                metrics.reject(reason);
                tracing::warn!(
                    %peer, principal = ?ctx.principal, sop = self.sop_instance,
                    status = format!("{status:#06x}"), %message,
                    "C-STORE refused"
                );
                error_comment = Some(message);
                status
            }
        };
        let mut rsp = ResponseBuilder::new(field::C_STORE_RQ, self.message_id, status);
        if is_valid_uid(&self.sop_class) {
            rsp = rsp.uid(tag::AFFECTED_SOP_CLASS_UID, &self.sop_class);
        }
        if is_valid_uid(&self.sop_instance) {
            rsp = rsp.uid(tag::AFFECTED_SOP_INSTANCE_UID, &self.sop_instance);
        }
        if let Some(comment) = error_comment {
            rsp = rsp.text(tag::ERROR_COMMENT, &comment);
        }
        send_command(assoc, self.pc_id, rsp.encode()).await
    }
}
