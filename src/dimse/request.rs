//! What a peer asks, decoded from a complete command set (PS3.7 9.3 and 10.3): one
//! variant per DIMSE service Strata answers, with what that service needs from the
//! command. The association loop then collects (or streams) the data set that follows
//! and hands both to the service module.

use super::command::{field, Command};
use super::AssocError;
use crate::query::Model;

/// The SOP classes of the query/retrieve services (PS3.4 C.6).
pub mod sop {
    pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
    pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
    pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";
    pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
    /// Storage Commitment Push Model (PS3.4 J.3).
    pub const STORAGE_COMMITMENT_PUSH: &str = "1.2.840.10008.1.20.1";
    pub const STORAGE_COMMITMENT_INSTANCE: &str = "1.2.840.10008.1.20.1.1";
}

/// A request, by service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// C-ECHO-RQ (PS3.7 9.1.5).
    Echo,
    /// C-STORE-RQ (PS3.7 9.1.1): the announced SOP class and instance.
    Store {
        sop_class_uid: String,
        sop_instance_uid: String,
    },
    /// C-FIND-RQ (PS3.7 9.1.2) under an information model.
    Find { model: Model },
    /// C-MOVE-RQ (PS3.7 9.1.4) to a destination AE title.
    Move { model: Model, destination: String },
    /// C-GET-RQ (PS3.7 9.1.3).
    Get { model: Model },
    /// N-ACTION-RQ of Storage Commitment (PS3.7 10.1.4, PS3.4 J.3.2).
    Commit { action_type_id: u16 },
    /// C-CANCEL-RQ (PS3.7 9.3.2.3): nothing outstanding to cancel at this point.
    Cancel,
    /// Anything else: answered with 0x0211 (unrecognized operation).
    Unsupported { command_field: u16 },
}

/// A decoded command: the request, its message id, and whether a data set follows.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub request: Request,
    pub command_field: u16,
    pub message_id: u16,
    pub has_data_set: bool,
}

impl Incoming {
    /// Decodes a command set received on a presentation context for `abstract_syntax`.
    /// A command that does not belong on that context is [`Request::Unsupported`]; a
    /// malformed command set is a protocol violation.
    pub fn decode(bytes: &[u8], abstract_syntax: &str) -> Result<Incoming, AssocError> {
        let command = Command::decode(bytes)
            .map_err(|e| AssocError::protocol(format!("malformed command set: {e}")))?;
        let command_field = command
            .command_field()
            .map_err(|e| AssocError::protocol(e.to_string()))?;
        if command_field == field::C_CANCEL_RQ {
            return Ok(Incoming {
                request: Request::Cancel,
                command_field,
                message_id: 0,
                has_data_set: false,
            });
        }
        let message_id = command
            .message_id()
            .map_err(|e| AssocError::protocol(e.to_string()))?;
        let has_data_set = command
            .has_data_set()
            .map_err(|e| AssocError::protocol(e.to_string()))?;
        let root = |patient: &str| {
            if abstract_syntax == patient {
                Model::PatientRoot
            } else {
                Model::StudyRoot
            }
        };
        use sop::*;
        let request = match command_field {
            field::C_ECHO_RQ => Request::Echo,
            field::C_FIND_RQ => match Model::of_sop_class(abstract_syntax) {
                Some(model) => Request::Find { model },
                None => Request::Unsupported { command_field },
            },
            field::C_MOVE_RQ
                if abstract_syntax == PATIENT_ROOT_MOVE || abstract_syntax == STUDY_ROOT_MOVE =>
            {
                Request::Move {
                    model: root(PATIENT_ROOT_MOVE),
                    destination: command.move_destination().unwrap_or_default(),
                }
            }
            field::C_GET_RQ
                if abstract_syntax == PATIENT_ROOT_GET || abstract_syntax == STUDY_ROOT_GET =>
            {
                Request::Get {
                    model: root(PATIENT_ROOT_GET),
                }
            }
            field::N_ACTION_RQ if abstract_syntax == STORAGE_COMMITMENT_PUSH => Request::Commit {
                action_type_id: command.action_type_id().unwrap_or(0),
            },
            field::C_STORE_RQ => Request::Store {
                sop_class_uid: command.affected_sop_class_uid().unwrap_or_default(),
                sop_instance_uid: command.affected_sop_instance_uid().unwrap_or_default(),
            },
            other => Request::Unsupported {
                command_field: other,
            },
        };
        // requests that need a data set must have one, and C-ECHO must not (PS3.7 9.3)
        let needs_data = matches!(
            request,
            Request::Store { .. }
                | Request::Find { .. }
                | Request::Move { .. }
                | Request::Get { .. }
                | Request::Commit { .. }
        );
        if needs_data && !has_data_set {
            return Err(AssocError::protocol(format!(
                "{} without a data set",
                name(command_field)
            )));
        }
        if request == Request::Echo && has_data_set {
            return Err(AssocError::protocol("C-ECHO-RQ with a data set"));
        }
        Ok(Incoming {
            request,
            command_field,
            message_id,
            has_data_set,
        })
    }
}

/// The DIMSE name of a request command field, for messages.
pub fn name(command_field: u16) -> &'static str {
    match command_field {
        field::C_ECHO_RQ => "C-ECHO-RQ",
        field::C_STORE_RQ => "C-STORE-RQ",
        field::C_FIND_RQ => "C-FIND-RQ",
        field::C_MOVE_RQ => "C-MOVE-RQ",
        field::C_GET_RQ => "C-GET-RQ",
        field::N_ACTION_RQ => "N-ACTION-RQ",
        field::C_CANCEL_RQ => "C-CANCEL-RQ",
        _ => "request",
    }
}
