//! Storage Commitment Push Model SCP (PS3.4 J.3): N-ACTION → N-ACTION-RSP, then the
//! N-EVENT-REPORT on the same association (the requester negotiates the SCP role).
//!
//! Which instances are committed is the application layer's answer
//! ([`Archive::commitment`](crate::archive::Archive::commitment)): only those indexed
//! under the requested SOP class whose served object is durable right now. The report
//! lists them in ReferencedSOPSequence and the others in FailedSOPSequence with their
//! FailureReason.

use super::command::{field, tag, Command, ResponseBuilder};
use super::context::{AssocContext, Association, Link, Message};
use super::pdv::{pdv_limit, send_command, send_data};
use super::request::sop::{STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH};
use super::AssocError;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_ul::pdu::PDataValueType;
use dicom_ul::Pdu;
use std::time::Duration;

/// Defined-length explicit/implicit VR LE encoding of the event report data set.
struct Writer {
    out: Vec<u8>,
    explicit: bool,
}

impl Writer {
    fn header(&mut self, tag: u32, vr: &[u8; 2], len: u32) {
        self.out
            .extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
        self.out
            .extend_from_slice(&((tag & 0xFFFF) as u16).to_le_bytes());
        if self.explicit {
            self.out.extend_from_slice(vr);
            if vr == b"SQ" {
                self.out.extend_from_slice(&[0, 0]);
                self.out.extend_from_slice(&len.to_le_bytes());
            } else {
                self.out.extend_from_slice(&(len as u16).to_le_bytes());
            }
        } else {
            self.out.extend_from_slice(&len.to_le_bytes());
        }
    }

    fn uid(&mut self, tag: u32, uid: &str) {
        let mut v = uid.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        self.header(tag, b"UI", v.len() as u32);
        self.out.extend_from_slice(&v);
    }

    fn us(&mut self, tag: u32, value: u16) {
        self.header(tag, b"US", 2);
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    /// A sequence of items, each written by `item` into a fresh writer.
    fn sequence<T>(&mut self, tag: u32, items: &[T], item: impl Fn(&mut Writer, &T)) {
        let mut body = Vec::new();
        for it in items {
            let mut w = Writer {
                out: Vec::new(),
                explicit: self.explicit,
            };
            item(&mut w, it);
            body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
            body.extend_from_slice(&(w.out.len() as u32).to_le_bytes());
            body.extend_from_slice(&w.out);
        }
        self.header(tag, b"SQ", body.len() as u32);
        self.out.extend_from_slice(&body);
    }
}

const TRANSACTION_UID: u32 = 0x0008_1195;
const REFERENCED_SOP_SEQUENCE: u32 = 0x0008_1199;
const FAILED_SOP_SEQUENCE: u32 = 0x0008_1198;
const REFERENCED_SOP_CLASS_UID: u32 = 0x0008_1150;
const REFERENCED_SOP_INSTANCE_UID: u32 = 0x0008_1155;
const FAILURE_REASON: u32 = 0x0008_1197;

fn parse_request(dataset: &[u8], ts: &str) -> Result<(String, Vec<(String, String)>), String> {
    let enc = match ts {
        "1.2.840.10008.1.2" => crate::dicom::framing::Encoding::ImplicitLittle,
        "1.2.840.10008.1.2.1" => crate::dicom::framing::Encoding::ExplicitLittle,
        other => return Err(format!("unsupported transfer syntax {other}")),
    };
    // framing first (our walker), so the general parser only sees well-framed input
    crate::dicom::framing::check_framing(std::io::Cursor::new(dataset), 0, enc)?;
    let registry_ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let ts = registry_ts.get(ts).ok_or("unknown transfer syntax")?;
    let obj = InMemDicomObject::read_dataset_with_ts(dataset, ts).map_err(|e| e.to_string())?;
    let text = |o: &InMemDicomObject, t: Tag| -> Option<String> {
        o.element_opt(t)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_matches(['\0', ' ']).to_string())
    };
    let transaction = text(&obj, tags::TRANSACTION_UID).ok_or("no TransactionUID")?;
    let items = obj
        .element_opt(tags::REFERENCED_SOP_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .ok_or("no ReferencedSOPSequence")?;
    let mut refs = Vec::new();
    for item in items {
        let class = text(item, tags::REFERENCED_SOP_CLASS_UID)
            .ok_or("item without ReferencedSOPClassUID")?;
        let sop = text(item, tags::REFERENCED_SOP_INSTANCE_UID)
            .ok_or("item without ReferencedSOPInstanceUID")?;
        refs.push((class, sop));
    }
    Ok((transaction, refs))
}

pub async fn run_commit<S: Link>(
    ctx: &AssocContext,
    assoc: &mut Association<S>,
    req: Message,
    action_type_id: u16,
) -> Result<(), AssocError> {
    let rsp = |status: u16, comment: Option<&str>| {
        let mut b = ResponseBuilder::new(field::N_ACTION_RQ, req.incoming.message_id, status)
            .uid(tag::AFFECTED_SOP_CLASS_UID, STORAGE_COMMITMENT_PUSH)
            .uid(tag::AFFECTED_SOP_INSTANCE_UID, STORAGE_COMMITMENT_INSTANCE)
            .u16(tag::ACTION_TYPE_ID, action_type_id);
        if let Some(c) = comment {
            b = b.text(tag::ERROR_COMMENT, c);
        }
        b.encode()
    };
    if action_type_id != 1 {
        return send_command(assoc, req.pc_id, rsp(0x0123, Some("no such action"))).await;
    }
    let (transaction, refs) = match parse_request(&req.data, &req.transfer_syntax) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "storage commitment request refused");
            return send_command(assoc, req.pc_id, rsp(0x0110, Some(&e))).await;
        }
    };
    send_command(assoc, req.pc_id, rsp(0x0000, None)).await?;

    let outcome = match ctx
        .archive
        .commitment(&ctx.principal, &transaction, refs.clone())
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            // the check itself failed: nothing is committed (PS3.4 J.3.3.1.1, 0x0110)
            tracing::error!(error = %e, "storage commitment check failed");
            crate::archive::integrity::Commitment {
                committed: Vec::new(),
                failed: refs.into_iter().map(|(c, s)| (c, s, 0x0110)).collect(),
            }
        }
    };
    tracing::info!(
        transaction,
        committed = outcome.committed.len(),
        failed = outcome.failed.len(),
        "storage commitment"
    );

    // N-EVENT-REPORT on the same association
    let mut w = Writer {
        out: Vec::new(),
        explicit: req.transfer_syntax != "1.2.840.10008.1.2",
    };
    w.uid(TRANSACTION_UID, &transaction);
    if !outcome.failed.is_empty() {
        w.sequence(
            FAILED_SOP_SEQUENCE,
            &outcome.failed,
            |w, (class, sop, reason)| {
                w.uid(REFERENCED_SOP_CLASS_UID, class);
                w.uid(REFERENCED_SOP_INSTANCE_UID, sop);
                w.us(FAILURE_REASON, *reason);
            },
        );
    }
    if !outcome.committed.is_empty() {
        w.sequence(
            REFERENCED_SOP_SEQUENCE,
            &outcome.committed,
            |w, (class, sop)| {
                w.uid(REFERENCED_SOP_CLASS_UID, class);
                w.uid(REFERENCED_SOP_INSTANCE_UID, sop);
            },
        );
    }
    let event_type: u16 = if outcome.failed.is_empty() { 1 } else { 2 };
    let cmd = ResponseBuilder::request(field::N_EVENT_REPORT_RQ, 1, true)
        .uid(tag::AFFECTED_SOP_CLASS_UID, STORAGE_COMMITMENT_PUSH)
        .uid(tag::AFFECTED_SOP_INSTANCE_UID, STORAGE_COMMITMENT_INSTANCE)
        .u16(tag::EVENT_TYPE_ID, event_type)
        .encode();
    send_command(assoc, req.pc_id, cmd).await?;
    let max = pdv_limit(assoc.requestor_max_pdu_length());
    send_data(assoc, req.pc_id, &w.out, max).await?;
    match tokio::time::timeout(Duration::from_secs(30), assoc.receive()).await {
        Ok(Ok(Pdu::PData { data })) => {
            let answer = data
                .iter()
                .find(|p| p.value_type == PDataValueType::Command)
                .and_then(|p| Command::decode(&p.data).ok());
            if answer.as_ref().and_then(|c| c.command_field().ok())
                != Some(field::N_EVENT_REPORT_RSP)
            {
                tracing::warn!("storage commitment: no N-EVENT-REPORT-RSP");
            }
            Ok(())
        }
        Ok(Ok(Pdu::ReleaseRQ)) => {
            let _ = assoc.send(&Pdu::ReleaseRP).await;
            Err(AssocError::protocol(
                "released before the event report was answered",
            ))
        }
        Ok(Ok(other)) => Err(AssocError::protocol(format!(
            "unexpected {} after the event report",
            other.short_description()
        ))),
        Ok(Err(e)) => Err(AssocError::Receive(format!("N-EVENT-REPORT-RSP: {e}"))),
        Err(_) => Err(AssocError::Receive(
            "no N-EVENT-REPORT-RSP within 30 s".into(),
        )),
    }
}
