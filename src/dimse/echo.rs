//! C-ECHO SCP (PS3.4 A.4, PS3.7 9.1.5): verification answers success.

use super::command::{field, status, tag, ResponseBuilder};
use super::context::{Association, Link};
use super::pdv::send_command;
use super::AssocError;
use dicom_dictionary_std::uids;

/// Answers a C-ECHO-RQ with success.
pub async fn answer<S: Link>(
    assoc: &mut Association<S>,
    pc_id: u8,
    message_id: u16,
) -> Result<(), AssocError> {
    let rsp = ResponseBuilder::new(field::C_ECHO_RQ, message_id, status::SUCCESS)
        .uid(tag::AFFECTED_SOP_CLASS_UID, uids::VERIFICATION)
        .encode();
    send_command(assoc, pc_id, rsp).await
}
