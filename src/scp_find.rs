//! The C-FIND SCP: runs a query (see [`crate::query`]) on the blocking pool and streams
//! one pending response (0xFF00) per match, as matches are found, checking for C-CANCEL
//! before each; ends with 0x0000 (done), 0xFE00 (cancelled) or a failure status.

use crate::dicom::dimse::{field, status, tag, ResponseBuilder};
use crate::dicom::part10::long_length_vr;
use crate::query::{self, Model, Query, QueryError};
use crate::scp::{cancel_requested, send_command, Association, ScpContext};
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;

const PENDING: u16 = status::PENDING;
const CANCELLED: u16 = status::CANCEL;
const IDENTIFIER_DOES_NOT_MATCH: u16 = status::DATASET_DOES_NOT_MATCH;
const UNABLE_TO_PROCESS: u16 = status::UNABLE_TO_PROCESS;

pub struct FindRequest {
    pub pc_id: u8,
    pub message_id: u16,
    pub model: Model,
    pub sop_class: String,
    pub transfer_syntax: String,
    pub identifier: Vec<u8>,
}

/// Encodes a response identifier (explicit or implicit VR little endian).
pub(crate) fn encode_identifier(elements: &[(u32, [u8; 2], String)], explicit: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    for (tag, vr, value) in elements {
        let mut v = value.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(if vr == b"UI" { 0 } else { b' ' });
        }
        out.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
        out.extend_from_slice(&((tag & 0xFFFF) as u16).to_le_bytes());
        if explicit {
            out.extend_from_slice(vr);
            if long_length_vr(vr) {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            } else {
                out.extend_from_slice(&(v.len() as u16).to_le_bytes());
            }
        } else {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(&v);
    }
    out
}

/// The identifier returned for one match: the level, then every requested key with its
/// value (empty when unknown), sorted by tag.
fn identifier_for(
    query: &Query,
    answer: &query::Answer,
    level: &str,
    ae_title: &str,
) -> Vec<(u32, [u8; 2], String)> {
    let mut elements: Vec<(u32, [u8; 2], String)> =
        vec![(query::tags::QUERY_RETRIEVE_LEVEL, *b"CS", level.into())];
    for key in &query.keys {
        let value = match key.tag {
            query::tags::RETRIEVE_AE_TITLE => ae_title.to_string(),
            t => answer.get(&t).cloned().unwrap_or_default(),
        };
        let vr = if long_length_vr(&key.vr) && key.vr != *b"UT" && key.vr != *b"UC" {
            *b"UN"
        } else {
            key.vr
        };
        // binary or sequence keys are returned empty
        let value = if vr == *b"UN" { String::new() } else { value };
        elements.push((key.tag, vr, value));
    }
    if elements.iter().any(|(_, _, v)| !v.is_ascii()) {
        elements.push((
            query::tags::SPECIFIC_CHARACTER_SET,
            *b"CS",
            "ISO_IR 192".into(),
        ));
    }
    elements.sort_by_key(|(t, _, _)| *t);
    elements.dedup_by_key(|(t, _, _)| *t);
    elements
}

pub(crate) async fn send_data(
    assoc: &mut Association,
    pc_id: u8,
    bytes: Vec<u8>,
) -> Result<(), String> {
    let max = match assoc.requestor_max_pdu_length() {
        0 => usize::MAX,
        n => (n as usize).saturating_sub(6).max(1),
    };
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[][..]]
    } else {
        bytes.chunks(max).collect()
    };
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc_id,
                    value_type: PDataValueType::Data,
                    is_last: i + 1 == n,
                    data: chunk.to_vec(),
                }],
            })
            .await
            .map_err(|e| format!("send identifier: {e}"))?;
    }
    Ok(())
}

/// Whether the requester asked for relational queries on this SOP class (extended
/// negotiation, byte 0), which [`crate::scp::StrataNegotiation`] always grants.
fn relational_negotiated(assoc: &Association, sop_class: &str) -> bool {
    use dicom_ul::association::Association as _;
    assoc.user_variables().iter().any(|v| {
        matches!(v, dicom_ul::pdu::UserVariableItem::SopClassExtendedNegotiationSubItem(uid, data)
            if uid.trim_end_matches('\0') == sop_class && data.first() == Some(&1))
    })
}

pub async fn run_find(
    ctx: &ScpContext,
    assoc: &mut Association,
    req: FindRequest,
) -> Result<(), String> {
    let final_rsp = |status: u16, comment: Option<&str>| {
        let mut b = ResponseBuilder::new(field::C_FIND_RQ, req.message_id, status)
            .uid(tag::AFFECTED_SOP_CLASS_UID, &req.sop_class);
        if let Some(c) = comment {
            b = b.text(tag::ERROR_COMMENT, c);
        }
        b.encode()
    };
    let query = match Query::parse(&req.identifier, &req.transfer_syntax) {
        Ok(mut q) => {
            q.relational = relational_negotiated(assoc, &req.sop_class);
            q
        }
        Err(e) => {
            tracing::warn!(error = %e, "C-FIND refused");
            return send_command(
                assoc,
                req.pc_id,
                final_rsp(IDENTIFIER_DOES_NOT_MATCH, Some(&e.to_string())),
            )
            .await;
        }
    };
    let level = match query.level {
        query::Level::Patient => "PATIENT",
        query::Level::Study => "STUDY",
        query::Level::Series => "SERIES",
        query::Level::Image => "IMAGE",
    };
    // The query runs on the blocking pool and hands over matches as it finds them through
    // a small bounded channel: results stream out without being collected, and a
    // cancelled or failed C-FIND stops the query (its channel closes).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<query::Answer>(32);
    let index = ctx.index.clone();
    let (model, q) = (req.model, query.clone());
    let search = tokio::task::spawn_blocking(move || {
        query::find_each(index.as_ref(), model, &q, &mut |answer| {
            tx.blocking_send(answer).is_ok()
        })
    });
    let explicit = req.transfer_syntax != "1.2.840.10008.1.2";
    let mut sent = 0usize;
    while let Some(answer) = rx.recv().await {
        if cancel_requested(assoc).await? {
            drop(rx);
            let _ = search.await;
            tracing::info!(level, sent, "C-FIND cancelled");
            return send_command(assoc, req.pc_id, final_rsp(CANCELLED, None)).await;
        }
        let rsp = ResponseBuilder::new(field::C_FIND_RQ, req.message_id, PENDING)
            .uid(tag::AFFECTED_SOP_CLASS_UID, &req.sop_class)
            .u16(tag::COMMAND_DATA_SET_TYPE, 0x0001)
            .encode();
        send_command(assoc, req.pc_id, rsp).await?;
        let id = encode_identifier(
            &identifier_for(&query, &answer, level, &ctx.config.ae_title),
            explicit,
        );
        send_data(assoc, req.pc_id, id).await?;
        sent += 1;
    }
    let searched = search
        .await
        .map_err(|e| format!("query task failed: {e}"))?;
    if let Err(e) = searched {
        let status = match e {
            QueryError::Unsupported(ref m) if m.starts_with("index error") => UNABLE_TO_PROCESS,
            _ => IDENTIFIER_DOES_NOT_MATCH,
        };
        tracing::warn!(error = %e, "C-FIND refused");
        return send_command(assoc, req.pc_id, final_rsp(status, Some(&e.to_string()))).await;
    }
    tracing::info!(level, matches = sent, "C-FIND");
    let keys: Vec<String> = query
        .keys
        .iter()
        .filter(|k| !k.value.is_empty())
        .map(|k| format!("({:04X},{:04X})={}", k.tag >> 16, k.tag & 0xFFFF, k.value))
        .collect();
    ctx.audit("query", keys, format!("{level}: {sent} matches"))
        .await;
    send_command(assoc, req.pc_id, final_rsp(0x0000, None)).await
}
