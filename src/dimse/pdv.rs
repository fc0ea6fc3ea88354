//! Sending DIMSE messages: a command set in one PDV, a data set fragmented into PDVs
//! that fit the peer's maximum PDU length (PS3.8 9.3.1: the PDU length includes the
//! 6-byte PDV header; 0 means no limit), each in its own P-DATA-TF.
//!
//! One sender for every message Strata sends — C-FIND identifiers, C-MOVE/C-GET
//! sub-operation data sets, N-EVENT-REPORT data sets — on the server's association or
//! on one it opened, so the peer's limit is honoured everywhere.

use super::context::Link;
use super::AssocError;
use dicom_ul::association::AsyncAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;

/// Largest PDV payload we send, whatever the peer allows: one such chunk is in memory
/// per association at a time. Used as is when the peer sets no limit (max PDU length 0,
/// which dicom-ul reports as its largest PDU size).
pub const UNLIMITED_PDV: usize = 256 * 1024;

/// The PDV payload size for a peer, from its announced maximum PDU length (PS3.8 D.1:
/// 0 means unlimited): what it accepts, at most [`UNLIMITED_PDV`] bytes.
pub fn pdv_limit(max_pdu: u32) -> usize {
    match max_pdu {
        0 => UNLIMITED_PDV,
        n => (n as usize).saturating_sub(6).clamp(1, UNLIMITED_PDV),
    }
}

/// Sends a command set (always one PDV: command sets are small).
pub async fn send_command<A: AsyncAssociation<S> + Send, S: Link>(
    assoc: &mut A,
    pc_id: u8,
    bytes: Vec<u8>,
) -> Result<(), AssocError> {
    send_pdv(assoc, pc_id, PDataValueType::Command, bytes, true)
        .await
        .map_err(AssocError::send("command"))
}

/// Sends a message whose command set and data set fit in one P-DATA-TF together (the
/// two PDVs and their 6-byte headers within the peer's maximum PDU length, `max_pdv`
/// being [`pdv_limit`] of it) as one PDU holding a command PDV and a data PDV, each with
/// its last-fragment flag (PS3.8 9.3.5: a P-DATA-TF carries one or more PDVs; PS3.8 E.2:
/// each PDV's control header says whether it holds command or data set bytes); a larger
/// one as [`send_command`] then [`send_data`]. One write per C-FIND match instead of
/// two: a study search returning a hundred studies sent two hundred PDUs.
pub async fn send_message<A: AsyncAssociation<S> + Send, S: Link>(
    assoc: &mut A,
    pc_id: u8,
    command: Vec<u8>,
    data: Vec<u8>,
    max_pdv: usize,
) -> Result<(), AssocError> {
    if command.len() + 6 + data.len() > max_pdv.clamp(1, UNLIMITED_PDV) {
        send_command(assoc, pc_id, command).await?;
        return send_data(assoc, pc_id, &data, max_pdv).await;
    }
    let pdv = |value_type, data| PDataValue {
        presentation_context_id: pc_id,
        value_type,
        is_last: true,
        data,
    };
    let pdu = Pdu::PData {
        data: vec![
            pdv(PDataValueType::Command, command),
            pdv(PDataValueType::Data, data),
        ],
    };
    AsyncAssociation::send(assoc, &pdu)
        .await
        .map_err(AssocError::send("message"))
}

/// Sends a data set in PDVs of at most `max_pdv` bytes (see [`pdv_limit`]); the last
/// one carries the last-fragment flag. An empty data set is one empty last PDV.
pub async fn send_data<A: AsyncAssociation<S> + Send, S: Link>(
    assoc: &mut A,
    pc_id: u8,
    bytes: &[u8],
    max_pdv: usize,
) -> Result<(), AssocError> {
    let max = max_pdv.clamp(1, UNLIMITED_PDV);
    let mut chunks = bytes.chunks(max).peekable();
    let data = PDataValueType::Data;
    if chunks.peek().is_none() {
        return send_pdv(assoc, pc_id, data, Vec::new(), true)
            .await
            .map_err(AssocError::send("data set"));
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        send_pdv(assoc, pc_id, data.clone(), chunk.to_vec(), last)
            .await
            .map_err(AssocError::send("data set"))?;
    }
    Ok(())
}

/// Sends `head` (a coerced header, or nothing) then `len` bytes of `path` from `offset`
/// as the data set, read in PDV-sized chunks: one chunk in memory at a time, whatever
/// the object's size.
pub async fn send_data_file<A: AsyncAssociation<S> + Send, S: Link>(
    assoc: &mut A,
    pc_id: u8,
    head: &[u8],
    path: &std::path::Path,
    offset: u64,
    len: u64,
    max_pdv: usize,
) -> Result<(), AssocError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let read_failed =
        |e: std::io::Error| AssocError::Receive(format!("read {} to send it: {e}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(read_failed)?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(read_failed)?;
    let max = max_pdv.clamp(1, UNLIMITED_PDV) as u64;
    let mut head = head;
    let mut left = head.len() as u64 + len;
    loop {
        let n = left.min(max) as usize;
        // the head's bytes first, then the file's
        let from_head = n.min(head.len());
        let mut chunk = vec![0u8; n];
        chunk[..from_head].copy_from_slice(&head[..from_head]);
        head = &head[from_head..];
        file.read_exact(&mut chunk[from_head..])
            .await
            .map_err(read_failed)?;
        left -= n as u64;
        send_pdv(assoc, pc_id, PDataValueType::Data, chunk, left == 0)
            .await
            .map_err(AssocError::send("data set"))?;
        if left == 0 {
            return Ok(());
        }
    }
}

/// One PDV in one P-DATA-TF.
async fn send_pdv<A: AsyncAssociation<S> + Send, S: Link>(
    assoc: &mut A,
    pc_id: u8,
    value_type: PDataValueType,
    data: Vec<u8>,
    is_last: bool,
) -> Result<(), dicom_ul::association::Error> {
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type,
            is_last,
            data,
        }],
    };
    AsyncAssociation::send(assoc, &pdu).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdv_payloads_fit_the_peers_max_pdu() {
        // PS3.8 9.3.1: a P-DATA-TF of max length L carries a PDV of L - 6 payload bytes
        // (4 length + 1 context id + 1 control header).
        assert_eq!(pdv_limit(16_384), 16_378);
        assert_eq!(pdv_limit(0), UNLIMITED_PDV);
        // dicom-ul reports a peer's 0 as its largest PDU size: never one chunk per object
        assert_eq!(pdv_limit(dicom_ul::pdu::MAXIMUM_PDU_SIZE), UNLIMITED_PDV);
        assert_eq!(pdv_limit(4), 1);
    }
}
