//! What every DIMSE service handler works with: the association, its context (the
//! archive, the configuration, the caller), the message being answered, and the check
//! for a C-CANCEL between pending responses. Shared by [`super::association`] (which
//! builds them) and the service modules (which use them), so that neither imports the
//! other.

use super::command::{field, Command};
use super::request::Incoming;
use super::AssocError;
use crate::archive::{Archive, Principal};
use crate::config::DicomConfig;
use dicom_ul::pdu::PDataValueType;
use dicom_ul::Pdu;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The byte stream an association runs over: plain TCP, or TLS over TCP (PS3.15 B.1).
pub trait Link:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static> Link for T {}

/// An association Strata accepted, over plain TCP unless said otherwise.
pub(crate) type Association<S = TcpStream> =
    dicom_ul::association::server::AsyncServerAssociation<S>;

/// Everything an association task needs.
#[derive(Clone)]
pub struct AssocContext {
    pub config: Arc<DicomConfig>,
    pub archive: Archive,
    pub shutdown: watch::Receiver<bool>,
    /// Who this association is (set once it is established).
    pub principal: Principal,
    /// The TLS client configuration for C-MOVE destinations with `tls = true` (built at
    /// start from `[tls]` when one needs it).
    pub outbound_tls: Option<Arc<rustls::ClientConfig>>,
    /// The association's TCP socket, for [`quick_ack`]; set when the association starts
    /// and valid while it lasts (the association owns the socket).
    pub socket: Option<std::os::fd::RawFd>,
}

/// Asks the kernel to acknowledge the next segments received at once (`TCP_QUICKACK`,
/// tcp(7); not sticky, so set before each read). A sender with Nagle's algorithm on —
/// DCMTK's default, unless its `TCP_NODELAY` environment variable is set — holds the
/// last, short PDU of every data set until its earlier segments are acknowledged, and
/// a delayed acknowledgement then costs that sender time on every instance (issue 17:
/// `storescu` over one association went from 230–357 to ~470 instances/s).
pub(crate) fn quick_ack(socket: Option<std::os::fd::RawFd>) {
    if let Some(fd) = socket {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a descriptor the association owns, with a c_int option;
        // failure (not a TCP socket) is harmless.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// A complete (or collecting) message of a service other than C-STORE.
pub struct Message {
    pub incoming: Incoming,
    pub pc_id: u8,
    /// The presentation context's abstract syntax (the request's SOP class).
    pub sop_class: String,
    pub transfer_syntax: String,
    pub data: Vec<u8>,
    pub(crate) received: u64,
}

/// Whether the requester sent a C-CANCEL (checked between pending responses of a C-FIND
/// or C-MOVE, without waiting: the receive is polled once, with no timer — a zero
/// timeout would wait for the timer wheel's next tick, ~1 ms per response; dicom-ul's
/// receive is cancel-safe). Anything but a C-CANCEL here is a protocol error.
pub(crate) async fn cancel_requested<S: Link>(
    assoc: &mut Association<S>,
) -> Result<bool, AssocError> {
    use std::future::Future;
    let mut receive = std::pin::pin!(assoc.receive());
    let polled = std::future::poll_fn(|cx| match receive.as_mut().poll(cx) {
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await;
    match polled {
        None => Ok(false),
        Some(Ok(Pdu::PData { data })) => {
            let cancel = data.iter().any(|pdv| {
                pdv.value_type == PDataValueType::Command
                    && Command::decode(&pdv.data)
                        .ok()
                        .and_then(|c| c.command_field().ok())
                        == Some(field::C_CANCEL_RQ)
            });
            if cancel {
                Ok(true)
            } else {
                Err(AssocError::protocol(
                    "unexpected P-DATA while responses were pending",
                ))
            }
        }
        Some(Ok(Pdu::AbortRQ { .. })) => Err(AssocError::Receive(
            "peer aborted while responses were pending".into(),
        )),
        Some(Ok(other)) => Err(AssocError::protocol(format!(
            "unexpected {} while responses were pending",
            other.short_description()
        ))),
        Some(Err(e)) => Err(AssocError::Receive(e.to_string())),
    }
}
