//! DIMSE command sets: decoding requests and encoding responses.
//!
//! Command sets are always Implicit VR Little Endian (PS3.7 §6.3.1) and small, so this is a
//! tiny hand-written codec rather than a general dataset parser: every length is checked
//! against the input, and a malformed command is an error, never a panic.

use std::collections::BTreeMap;

pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_GET_RQ: u16 = 0x0010;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_MOVE_RQ: u16 = 0x0021;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
    pub const N_EVENT_REPORT_RQ: u16 = 0x0100;
    pub const N_EVENT_REPORT_RSP: u16 = 0x8100;
    pub const N_ACTION_RQ: u16 = 0x0130;
    /// A response's command field is its request's with the high bit set.
    pub const RESPONSE_BIT: u16 = 0x8000;
}

pub use crate::dicom::status;

pub mod tag {
    pub const AFFECTED_SOP_CLASS_UID: u32 = 0x0000_0002;
    pub const COMMAND_FIELD: u32 = 0x0000_0100;
    pub const MESSAGE_ID: u32 = 0x0000_0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u32 = 0x0000_0120;
    pub const PRIORITY: u32 = 0x0000_0700;
    pub const COMMAND_DATA_SET_TYPE: u32 = 0x0000_0800;
    pub const STATUS: u32 = 0x0000_0900;
    pub const ERROR_COMMENT: u32 = 0x0000_0902;
    pub const AFFECTED_SOP_INSTANCE_UID: u32 = 0x0000_1000;
    pub const REQUESTED_SOP_CLASS_UID: u32 = 0x0000_0003;
    pub const REQUESTED_SOP_INSTANCE_UID: u32 = 0x0000_1001;
    pub const EVENT_TYPE_ID: u32 = 0x0000_1002;
    pub const ACTION_TYPE_ID: u32 = 0x0000_1008;
    pub const MOVE_DESTINATION: u32 = 0x0000_0600;
    pub const REMAINING_SUB_OPERATIONS: u32 = 0x0000_1020;
    pub const COMPLETED_SUB_OPERATIONS: u32 = 0x0000_1021;
    pub const FAILED_SUB_OPERATIONS: u32 = 0x0000_1022;
    pub const WARNING_SUB_OPERATIONS: u32 = 0x0000_1023;
    pub const MOVE_ORIGINATOR_AE: u32 = 0x0000_1030;
    pub const MOVE_ORIGINATOR_MESSAGE_ID: u32 = 0x0000_1031;
}

/// CommandDataSetType value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command set truncated at byte {0}")]
    Truncated(usize),
    #[error("command set element ({0:08X}) is not in group 0000")]
    WrongGroup(u32),
    #[error("command set lacks {0}")]
    Missing(&'static str),
    #[error("command set element {0} has a bad length")]
    BadLength(&'static str),
}

/// A decoded command set: every element's raw value by tag.
#[derive(Debug, Clone, Default)]
pub struct Command {
    elements: BTreeMap<u32, Vec<u8>>,
}

impl Command {
    pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
        let mut elements = BTreeMap::new();
        let mut pos = 0;
        while pos < bytes.len() {
            if pos + 8 > bytes.len() {
                return Err(CommandError::Truncated(pos));
            }
            let group = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]) as u32;
            let element = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]) as u32;
            let tag = (group << 16) | element;
            if group != 0 {
                return Err(CommandError::WrongGroup(tag));
            }
            let len =
                u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
            let start = pos + 8;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= bytes.len())
                .ok_or(CommandError::Truncated(pos))?;
            elements.insert(tag, bytes[start..end].to_vec());
            pos = end;
        }
        Ok(Command { elements })
    }

    fn u16_of(&self, tag: u32, name: &'static str) -> Result<u16, CommandError> {
        let v = self.elements.get(&tag).ok_or(CommandError::Missing(name))?;
        if v.len() != 2 {
            return Err(CommandError::BadLength(name));
        }
        Ok(u16::from_le_bytes([v[0], v[1]]))
    }

    fn text_of(&self, tag: u32) -> Option<String> {
        self.elements
            .get(&tag)
            .map(|v| crate::dicom::part10::trim_value(v))
    }

    pub fn command_field(&self) -> Result<u16, CommandError> {
        self.u16_of(tag::COMMAND_FIELD, "CommandField (0000,0100)")
    }

    pub fn message_id(&self) -> Result<u16, CommandError> {
        self.u16_of(tag::MESSAGE_ID, "MessageID (0000,0110)")
    }

    /// Whether a data set follows the command.
    pub fn has_data_set(&self) -> Result<bool, CommandError> {
        Ok(
            self.u16_of(tag::COMMAND_DATA_SET_TYPE, "CommandDataSetType (0000,0800)")?
                != NO_DATA_SET,
        )
    }

    pub fn affected_sop_class_uid(&self) -> Option<String> {
        self.text_of(tag::AFFECTED_SOP_CLASS_UID)
    }

    pub fn affected_sop_instance_uid(&self) -> Option<String> {
        self.text_of(tag::AFFECTED_SOP_INSTANCE_UID)
    }

    /// (0000,0900) Status, in a response.
    pub fn status(&self) -> Option<u16> {
        self.u16_of(tag::STATUS, "Status (0000,0900)").ok()
    }

    pub fn action_type_id(&self) -> Option<u16> {
        self.u16_of(tag::ACTION_TYPE_ID, "ActionTypeID (0000,1008)")
            .ok()
    }

    pub fn move_destination(&self) -> Option<String> {
        self.text_of(tag::MOVE_DESTINATION)
    }

    pub fn move_originator_ae(&self) -> Option<String> {
        self.text_of(tag::MOVE_ORIGINATOR_AE)
    }

    /// Any US element of the command (sub-operation counters, for instance).
    pub fn u16_at(&self, tag: u32) -> Option<u16> {
        self.u16_of(tag, "US element").ok()
    }

    /// Any text element of the command (ErrorComment, for instance).
    pub fn text_at(&self, tag: u32) -> Option<String> {
        self.text_of(tag)
    }
}

/// Builds a response command set.
#[derive(Debug, Clone)]
pub struct ResponseBuilder {
    elements: BTreeMap<u32, Vec<u8>>,
}

impl ResponseBuilder {
    /// A response to `request_field` for message `message_id`, with no data set.
    pub fn new(request_field: u16, message_id: u16, status: u16) -> Self {
        let mut b = ResponseBuilder {
            elements: BTreeMap::new(),
        };
        b = b
            .u16(tag::COMMAND_FIELD, request_field | field::RESPONSE_BIT)
            .u16(tag::MESSAGE_ID_BEING_RESPONDED_TO, message_id)
            .u16(tag::COMMAND_DATA_SET_TYPE, NO_DATA_SET)
            .u16(tag::STATUS, status);
        b
    }

    /// A request command set (e.g. a C-STORE-RQ sent as a C-MOVE sub-operation).
    pub fn request(command_field: u16, message_id: u16, with_data: bool) -> Self {
        ResponseBuilder {
            elements: BTreeMap::new(),
        }
        .u16(tag::COMMAND_FIELD, command_field)
        .u16(tag::MESSAGE_ID, message_id)
        .u16(tag::PRIORITY, 0)
        .u16(
            tag::COMMAND_DATA_SET_TYPE,
            if with_data { 0x0000 } else { NO_DATA_SET },
        )
    }

    pub fn u16(mut self, tag: u32, value: u16) -> Self {
        self.elements.insert(tag, value.to_le_bytes().to_vec());
        self
    }

    /// A UI value, NUL-padded to even length.
    pub fn uid(mut self, tag: u32, uid: &str) -> Self {
        let mut v = uid.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        self.elements.insert(tag, v);
        self
    }

    /// A text value (LO), space-padded to even length and cut at 64 characters.
    pub fn text(mut self, tag: u32, text: &str) -> Self {
        let mut v: Vec<u8> = text
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
            .take(64)
            .map(|c| c as u8)
            .collect();
        if v.len() % 2 == 1 {
            v.push(b' ');
        }
        self.elements.insert(tag, v);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        for (tag, value) in &self.elements {
            body.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
            body.extend_from_slice(&((tag & 0xFFFF) as u16).to_le_bytes());
            body.extend_from_slice(&(value.len() as u32).to_le_bytes());
            body.extend_from_slice(value);
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_round_trips_through_decode() {
        let bytes = ResponseBuilder::new(field::C_STORE_RQ, 7, status::SUCCESS)
            .uid(tag::AFFECTED_SOP_CLASS_UID, "1.2.840.10008.5.1.4.1.1.2")
            .uid(tag::AFFECTED_SOP_INSTANCE_UID, "1.2.3")
            .encode();
        let cmd = Command::decode(&bytes).unwrap();
        assert_eq!(cmd.command_field().unwrap(), field::C_STORE_RSP);
        assert!(!cmd.has_data_set().unwrap());
        assert_eq!(cmd.affected_sop_instance_uid().as_deref(), Some("1.2.3"));
        // group length is right
        let group_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(group_len + 12, bytes.len());
    }

    #[test]
    fn malformed_commands_are_errors() {
        assert!(matches!(
            Command::decode(&[1, 2, 3]),
            Err(CommandError::Truncated(0))
        ));
        assert!(Command::decode(&[0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(matches!(
            Command::decode(&[8, 0, 0, 1, 0, 0, 0, 0]),
            Err(CommandError::WrongGroup(_))
        ));
        let empty = Command::decode(&[]).unwrap();
        assert!(empty.command_field().is_err());
    }

    #[test]
    fn dicom_rs_reads_our_encoding() {
        use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
        let bytes = ResponseBuilder::new(field::C_ECHO_RQ, 3, status::SUCCESS)
            .uid(tag::AFFECTED_SOP_CLASS_UID, "1.2.840.10008.1.1")
            .encode();
        let obj = dicom_object::InMemDicomObject::read_dataset_with_ts(
            &bytes[..],
            &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        let field = obj
            .element(dicom_dictionary_std::tags::COMMAND_FIELD)
            .unwrap()
            .to_int::<u16>()
            .unwrap();
        assert_eq!(field, field::C_ECHO_RSP);
    }
}
