//! DIMSE status codes Strata sends (PS3.7 Annex C; per service in PS3.4: B.2.3 C-STORE,
//! C.4.1.1.4 C-FIND, C.4.2.1.5 C-MOVE, C.4.3.1.4 C-GET).

pub const SUCCESS: u16 = 0x0000;
/// Refused: out of resources (disk full or below the free-space floor).
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// Error: data set does not match SOP class (or the affected SOP instance).
pub const DATASET_DOES_NOT_MATCH: u16 = 0xA900;
/// Error: cannot understand.
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
/// Refused: SOP class not supported.
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Refused: not authorized (PS3.7 C.5.x general status 0124H): the caller's roles do not
/// allow the operation.
pub const NOT_AUTHORIZED: u16 = 0x0124;
/// Unrecognized operation.
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// Duplicate SOP instance (a different version is stored and the policy refuses it).
pub const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
/// Processing failure.
pub const PROCESSING_FAILURE: u16 = 0x0110;
/// Pending (C-FIND match, C-MOVE sub-operations going on).
pub const PENDING: u16 = 0xFF00;
/// Cancelled by C-CANCEL.
pub const CANCEL: u16 = 0xFE00;
/// C-MOVE: move destination unknown.
pub const MOVE_DESTINATION_UNKNOWN: u16 = 0xA801;
/// C-MOVE: unable to perform sub-operations.
pub const UNABLE_TO_PERFORM_SUB_OPERATIONS: u16 = 0xA702;
/// C-MOVE: sub-operations complete, one or more failures.
pub const SUB_OPERATIONS_FAILED: u16 = 0xB000;
/// C-FIND: unable to process.
pub const UNABLE_TO_PROCESS: u16 = 0xC001;
