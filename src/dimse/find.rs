//! The C-FIND SCP (PS3.4 C.4.1): parses the identifier into a typed query, runs it
//! through the find use case ([`Archive::find`](crate::archive::Archive::find)) and
//! streams one pending response (0xFF00) per match, as matches are found, checking for
//! C-CANCEL before each; ends with 0x0000 (done), 0xFE00 (cancelled) or a failure
//! status. The use case audits the query.

use super::command::{field, status, tag, ResponseBuilder};
use super::context::{cancel_requested, AssocContext, Association, Link, Message};
use super::pdv::{pdv_limit, send_command, send_message};
use super::AssocError;
use crate::archive::Error;
use crate::dicom::part10::long_length_vr;
use crate::query::{self, Model, Query};

/// Encodes a response identifier (explicit or implicit VR little endian).
/// Encodes an identifier of text elements in the transfer syntax `ts` of the
/// presentation context it answers on (PS3.7 §9.3: a response's data set is in the
/// context's syntax): implicit or explicit VR little endian, explicit VR big endian, or
/// deflated explicit VR little endian (RFC 1951).
pub(crate) fn encode_identifier(elements: &[(u32, [u8; 2], String)], ts: &str) -> Vec<u8> {
    let big = ts == "1.2.840.10008.1.2.2";
    let explicit = ts != "1.2.840.10008.1.2";
    let u16b = |v: u16| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u32b = |v: u32| {
        if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut out = Vec::with_capacity(512);
    for (tag, vr, value) in elements {
        // binary numbers (Rows, …) as binary values, text as text
        let mut v = query::binary_numbers_bytes(vr, value, big)
            .unwrap_or_else(|| value.as_bytes().to_vec());
        if v.len() % 2 == 1 {
            v.push(if vr == b"UI" { 0 } else { b' ' });
        }
        out.extend_from_slice(&u16b((tag >> 16) as u16));
        out.extend_from_slice(&u16b((tag & 0xFFFF) as u16));
        if explicit {
            out.extend_from_slice(vr);
            if long_length_vr(vr) {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&u32b(v.len() as u32));
            } else {
                out.extend_from_slice(&u16b(v.len() as u16));
            }
        } else {
            out.extend_from_slice(&u32b(v.len() as u32));
        }
        out.extend_from_slice(&v);
    }
    if crate::dicom::framing::Encoding::is_deflated(ts) {
        use std::io::Write;
        let mut deflated =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflated.write_all(&out).expect("deflating into memory");
        return deflated.finish().expect("deflating into memory");
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
        // sequence keys are left out (no sequence matching); other long-length binary
        // VRs come back empty as UN; UT, UC and UR are text (a UR RetrieveURL stays UR)
        if key.vr == *b"SQ" {
            continue;
        }
        let vr = if long_length_vr(&key.vr) && !matches!(&key.vr, b"UT" | b"UC" | b"UR") {
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

/// Whether the requester asked for relational queries on this SOP class (extended
/// negotiation, byte 0), which [`super::negotiation::StrataNegotiation`] always grants.
fn relational_negotiated<S: Link>(assoc: &Association<S>, sop_class: &str) -> bool {
    use dicom_ul::association::Association as _;
    assoc.user_variables().iter().any(|v| {
        matches!(v, dicom_ul::pdu::UserVariableItem::SopClassExtendedNegotiationSubItem(uid, data)
            if uid.trim_end_matches('\0') == sop_class && data.first() == Some(&1))
    })
}

pub async fn run_find<S: Link>(
    ctx: &AssocContext,
    assoc: &mut Association<S>,
    req: Message,
    model: Model,
) -> Result<(), AssocError> {
    let message_id = req.incoming.message_id;
    let final_rsp = |status: u16, comment: Option<&str>| {
        let mut b = ResponseBuilder::new(field::C_FIND_RQ, message_id, status)
            .uid(tag::AFFECTED_SOP_CLASS_UID, &req.sop_class);
        if let Some(c) = comment {
            b = b.text(tag::ERROR_COMMENT, c);
        }
        b.encode()
    };
    // a failure response (PS3.4 C.4.1.1.4) carrying the error's status and its reason
    let refusal = |e: Error| {
        tracing::warn!(error = %e, "C-FIND refused");
        final_rsp(e.dimse_status(), Some(&e.to_string()))
    };
    let query = match Query::parse(&req.data, &req.transfer_syntax) {
        Ok(mut q) => {
            q.relational = relational_negotiated(assoc, &req.sop_class);
            q
        }
        Err(e) => return send_command(assoc, req.pc_id, refusal(Error::Query(e))).await,
    };
    let level = query.level.keyword();
    let mut found = match ctx.archive.find(&ctx.principal, model, query.clone()) {
        Ok(found) => found,
        Err(e) => return send_command(assoc, req.pc_id, refusal(e)).await,
    };
    let max_pdv = pdv_limit(assoc.requestor_max_pdu_length());
    let mut sent = 0usize;
    while let Some(answer) = found.next().await {
        if cancel_requested(assoc).await? {
            found.cancel().await;
            tracing::info!(level, sent, "C-FIND cancelled");
            return send_command(assoc, req.pc_id, final_rsp(status::CANCEL, None)).await;
        }
        let rsp = ResponseBuilder::new(field::C_FIND_RQ, message_id, status::PENDING)
            .uid(tag::AFFECTED_SOP_CLASS_UID, &req.sop_class)
            .u16(tag::COMMAND_DATA_SET_TYPE, 0x0001)
            .encode();
        let id = encode_identifier(
            &identifier_for(&query, &answer, level, &ctx.config.ae_title),
            &req.transfer_syntax,
        );
        send_message(assoc, req.pc_id, rsp, id, max_pdv).await?;
        sent += 1;
    }
    if let Err(e) = found.finish().await {
        return send_command(assoc, req.pc_id, refusal(e)).await;
    }
    tracing::info!(level, matches = sent, "C-FIND");
    send_command(assoc, req.pc_id, final_rsp(status::SUCCESS, None)).await
}
