//! Association negotiation (PS3.8 9.3.2–9.3.4, PS3.7 D.3.3): who may associate, which
//! presentation contexts Strata accepts, role selection for C-GET, and extended
//! negotiation for relational queries.

use super::request::sop;
use crate::config::DicomConfig;
use crate::dicom::storage_classes::{all_storage_sop_classes, is_storage_sop_class};
use crate::query::Model;
use dicom_dictionary_std::uids;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::AssociationRJServiceUserReason;
use dicom_ul::ServerAssociationOptions;
use std::sync::Arc;

/// Access rule: the called AE must be ours; the calling AE must be on the allow-list
/// when one is configured.
#[derive(Debug, Clone)]
pub struct StrataAccess {
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

/// Role selection (PS3.7 D.3.3.4): a C-GET requester proposes the SCP role for the
/// storage classes it wants to receive, and a storage commitment requester for the
/// Storage Commitment Push Model, to receive the N-EVENT-REPORT on the same association
/// (PS3.4 J.3.3). Accept whatever roles it proposes for those.
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
        let uid = sop_class_uid.trim_end_matches('\0');
        (is_storage_sop_class(uid) || uid == sop::STORAGE_COMMITMENT_PUSH).then_some(
            dicom_ul::pdu::RequestorRoles {
                scu: scu_role,
                scp: scp_role,
            },
        )
    }
}

/// A-ASSOCIATE-RJ: rejected-transient (2), service-provider presentation related (3),
/// local-limit-exceeded (2). Sent when the association cap is reached.
pub const RJ_LOCAL_LIMIT_EXCEEDED: [u8; 10] = [0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2];
/// A-ASSOCIATE-RJ: rejected-permanent (1), service-user (1), no-reason-given (1). Sent to
/// peers whose address is not allowed.
pub const RJ_NOT_ALLOWED: [u8; 10] = [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 1];

/// A-ABORT: source service-provider (2), reason invalid-PDU-parameter value (6)
/// (PS3.8 9.3.8, state machine action AA-8). Sent for an A-ASSOCIATE-RQ whose
/// presentation context IDs break PS3.8 9.3.2.2.
pub const ABORT_INVALID_PARAMETER: [u8; 10] = [0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6];

/// Largest A-ASSOCIATE-RQ checked by [`check_context_ids`]: 128 contexts of one abstract
/// syntax and a dozen transfer syntaxes each stay well below it.
const MAX_CHECKED_RQ: usize = 256 * 1024;

/// Checks the presentation context IDs of the A-ASSOCIATE-RQ waiting on `stream`, read
/// with [`TcpStream::peek`] (not consumed: dicom-ul then negotiates from the same bytes).
/// Each ID must be an odd integer 1–255 and appear once (PS3.8 9.3.2.2), which also
/// bounds a request to 128 contexts; dicom-ul does not check this and would answer
/// duplicates twice.
///
/// Returns the violation, or `Ok` when the IDs are valid or the bytes are not a whole
/// A-ASSOCIATE-RQ of at most 256 KiB (dicom-ul judges those). Waits for the whole PDU;
/// the caller bounds the wait with its read timeout.
pub async fn check_context_ids(stream: &tokio::net::TcpStream) -> Result<(), String> {
    let mut buf = vec![0u8; 6];
    let mut want = 6;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let got = stream.peek(&mut buf).await.map_err(|e| e.to_string())?;
        if got == 0 {
            return Ok(()); // closed: nothing to negotiate
        }
        if got >= 6 && want == 6 {
            if buf[0] != 0x01 {
                return Ok(());
            }
            let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
            if len + 6 > MAX_CHECKED_RQ {
                return Ok(());
            }
            want = len + 6;
            buf.resize(want, 0);
            continue;
        }
        if got >= want {
            break;
        }
        // part of the PDU is still in flight (or the peer stopped mid-way: peek cannot
        // tell, so back off until the caller's timeout)
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
    let Ok(Some(dicom_ul::Pdu::AssociationRQ(rq))) =
        dicom_ul::pdu::read_pdu(&buf[..], dicom_ul::pdu::MAXIMUM_PDU_SIZE, false)
    else {
        return Ok(());
    };
    valid_context_ids(rq.presentation_contexts.iter().map(|pc| pc.id))
}

/// Whether presentation context IDs are odd integers 1–255, each once (PS3.8 9.3.2.2,
/// which also bounds a request to 128 contexts); the violation otherwise.
pub fn valid_context_ids(ids: impl Iterator<Item = u8>) -> Result<(), String> {
    let mut seen = [false; 256];
    let mut count = 0usize;
    for id in ids {
        count += 1;
        if id % 2 == 0 {
            return Err(format!(
                "presentation context ID {id} is even (PS3.8 9.3.2.2: odd integers 1-255)"
            ));
        }
        if std::mem::replace(&mut seen[id as usize], true) {
            return Err(format!(
                "presentation context ID {id} is proposed twice (after {count} contexts; at \
                 most 128 distinct odd IDs exist, PS3.8 9.3.2.2)"
            ));
        }
    }
    Ok(())
}

pub fn server_options(
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
        .with_abstract_syntax(sop::PATIENT_ROOT_MOVE)
        .with_abstract_syntax(sop::STUDY_ROOT_MOVE)
        .with_abstract_syntax(sop::PATIENT_ROOT_GET)
        .with_abstract_syntax(sop::STUDY_ROOT_GET)
        .with_abstract_syntax(sop::STORAGE_COMMITMENT_PUSH)
        .with_negotiation(StrataNegotiation);
    if config.accept_private_sop_classes {
        opts = opts.promiscuous(true);
    }
    for (_, uid) in all_storage_sop_classes() {
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
pub fn storable(sop_class: &str, config: &DicomConfig) -> bool {
    use dicom_core::dictionary::UidDictionary;
    if is_storage_sop_class(sop_class) {
        return true;
    }
    let standard = dicom_dictionary_std::StandardSopClassDictionary
        .by_uid(sop_class)
        .is_some();
    !standard && config.accept_private_sop_classes
}
