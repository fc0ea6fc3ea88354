//! # The DIMSE adapter: the DICOM upper layer in and out
//!
//! Strata's DICOM service (PS3.7 DIMSE over PS3.8 upper layer, on dicom-ul) and its DICOM
//! client. It owns the protocol — negotiation, PDU reading, command sets, fragmenting
//! data sets to the peer's maximum PDU length — and nothing else: every request becomes
//! a call to the application layer ([`crate::archive`]) with the association's
//! [`Principal`](crate::archive::Principal), and every answer a DIMSE status from
//! [`Error::dimse_status`](crate::archive::Error::dimse_status).
//!
//! - [`listener`]: the DICOM listener: association cap, address allow-list, shutdown.
//! - [`association`]: one task per association: negotiation ([`negotiation`]), the
//!   message loop, and the dispatch of each [`request::Request`] to its service module.
//! - [`context`]: what every service handler works with (the association, the
//!   archive and caller, the message, the C-CANCEL check).
//! - [`command`]: the DIMSE command set codec (always Implicit VR Little Endian) and the
//!   status, field and tag constants.
//! - [`pdv`]: sending command and data PDVs, data fragmented to the peer's max PDU.
//! - services: [`echo`] (C-ECHO), [`store`] (C-STORE), [`find`] (C-FIND),
//!   [`retrieve`] (C-MOVE, C-GET), [`commit`] (Storage Commitment Push Model).
//! - [`scu`]: the client side (C-ECHO, C-FIND, C-MOVE) used by `strata-migrate`.
//!
//! ## Errors
//! A service returns `Ok` after it answered, whatever the answer's status; an
//! [`AssocError`] means the association itself cannot go on (a protocol violation, a
//! broken connection) and is aborted. Bad input never hurts (DESIGN promise 7): it gets
//! its status, or aborts its own association only.

pub mod association;
pub mod command;
pub mod commit;
pub mod context;
pub mod echo;
pub mod find;
pub mod listener;
pub mod negotiation;
pub mod pdv;
pub mod request;
pub mod retrieve;
pub mod scu;
pub mod store;

/// Why an association cannot go on: it is aborted (A-ABORT) after this.
#[derive(Debug, thiserror::Error)]
pub enum AssocError {
    /// The peer broke the protocol (PS3.8 9.3): an unexpected PDU, a malformed command
    /// set, data on the wrong presentation context, a message over the limits.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A PDU could not be sent.
    #[error("send {what}: {detail}")]
    Send { what: &'static str, detail: String },
    /// No PDU could be read (the connection broke or timed out).
    #[error("receive: {0}")]
    Receive(String),
}

impl AssocError {
    pub(crate) fn protocol(detail: impl Into<String>) -> Self {
        AssocError::Protocol(detail.into())
    }

    pub(crate) fn send(what: &'static str) -> impl FnOnce(dicom_ul::association::Error) -> Self {
        move |e| AssocError::Send {
            what,
            detail: e.to_string(),
        }
    }
}
