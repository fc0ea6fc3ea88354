//! DICOM client operations (SCU) on dicom-ul's async associations: C-ECHO, C-FIND and
//! C-MOVE, as `strata-migrate` needs them to enumerate a legacy PACS, drive its moves and
//! reconcile it against the archive.
//!
//! One [`Scu`] is one association with one presentation context for the requested
//! abstract syntax (explicit and implicit VR little endian proposed), over plain TCP or,
//! for a [`RemoteAe`] with `tls`, DICOM TLS (PS3.15 B.1; rustls, the peer's certificate
//! verified for its host name). Messages are sent
//! as a command PDV followed by the identifier's PDVs; responses are read fragment by
//! fragment until their last PDV, command and data set alike. Identifiers are encoded
//! and decoded with dicom-object (they are small).

use super::command::{field, status, tag, Command, ResponseBuilder};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_ul::association::client::AsyncClientAssociation;
use dicom_ul::pdu::PDataValueType;
use dicom_ul::{ClientAssociationOptions, Pdu};
use std::time::Duration;
use tokio::net::TcpStream;

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// The standard name of the SOP classes the SCU asks for, for messages.
fn sop_class_name(uid: &str) -> &'static str {
    match uid {
        VERIFICATION => "Verification",
        STUDY_ROOT_FIND => "Study Root Query/Retrieve Information Model - FIND",
        STUDY_ROOT_MOVE => "Study Root Query/Retrieve Information Model - MOVE",
        _ => "a SOP class",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScuError {
    #[error("cannot associate with {peer}: {detail}")]
    Associate { peer: String, detail: String },
    #[error(
        "{peer} does not offer {abstract_syntax} ({}): it may support only another query/retrieve information model (PS3.4 C.6), such as Patient Root; strata-migrate needs Study Root",
        sop_class_name(abstract_syntax)
    )]
    NotAccepted {
        peer: String,
        abstract_syntax: String,
    },
    /// The peer answered the association request with A-ASSOCIATE-RJ (a wrong called
    /// AE title, a calling AE it does not accept, no capacity).
    #[error("{peer} rejected the association: {detail}")]
    Rejected { peer: String, detail: String },
    #[error("association with {peer} failed: {detail}")]
    Network { peer: String, detail: String },
    #[error("malformed response from {peer}: {detail}")]
    Protocol { peer: String, detail: String },
    #[error("no response from {peer} within {seconds} s")]
    Timeout { peer: String, seconds: u64 },
}

/// A remote application entity: `AE@HOST:PORT`, reached over plain TCP or DICOM TLS.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteAe {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// Reach it over DICOM TLS (PS3.15 B.1), its certificate verified for `host`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// The TLS client configuration to do so with (from the program's options; never
    /// persisted).
    #[serde(skip)]
    pub tls_config: Option<TlsClient>,
}

/// A rustls client configuration ([`crate::tls::client_config`]) for reaching peers.
#[derive(Clone)]
pub struct TlsClient(pub std::sync::Arc<rustls::ClientConfig>);

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TlsClient {}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl RemoteAe {
    /// This AE reached over DICOM TLS with `config`.
    pub fn over_tls(self, config: TlsClient) -> Self {
        RemoteAe {
            tls: true,
            tls_config: Some(config),
            ..self
        }
    }
}

impl std::str::FromStr for RemoteAe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ae, addr) = s
            .split_once('@')
            .ok_or_else(|| format!("{s:?}: expected AE@HOST:PORT"))?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected AE@HOST:PORT"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
        if ae.is_empty() || ae.len() > 16 || host.is_empty() {
            return Err(format!(
                "{s:?}: expected AE@HOST:PORT (AE title 1-16 characters)"
            ));
        }
        Ok(RemoteAe {
            ae_title: ae.to_string(),
            host: host.to_string(),
            port,
            tls: false,
            tls_config: None,
        })
    }
}

impl std::fmt::Display for RemoteAe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.ae_title, self.host, self.port)?;
        if self.tls {
            f.write_str(" (TLS)")?;
        }
        Ok(())
    }
}

/// The outcome of a C-MOVE: its final status and sub-operation counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MoveOutcome {
    pub status: u16,
    pub completed: u32,
    pub failed: u32,
    pub warning: u32,
    /// FailedSOPInstanceUIDList from the final response, if any.
    pub failed_uids: Vec<String>,
    pub error_comment: Option<String>,
}

/// Progress of a C-MOVE, from a pending response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveProgress {
    pub remaining: u32,
    pub completed: u32,
    pub failed: u32,
    pub warning: u32,
}

/// An association over plain TCP or TLS. One lives per [`Scu`], for one association:
/// the TLS variant's size (its session state) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Conn {
    Plain(AsyncClientAssociation<TcpStream>),
    Tls(AsyncClientAssociation<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// `$body` with `$a` bound to the association, whichever its stream.
macro_rules! on_assoc {
    ($conn:expr, $a:ident => $body:expr) => {
        match $conn {
            Conn::Plain($a) => $body,
            Conn::Tls($a) => $body,
        }
    };
}

/// One association with one accepted presentation context.
pub struct Scu {
    assoc: Conn,
    peer: String,
    pc_id: u8,
    transfer_syntax: String,
    message_id: u16,
    timeout: Duration,
}

impl Scu {
    /// Associates with `remote` as `calling_ae` for one abstract syntax.
    pub async fn connect(
        calling_ae: &str,
        remote: &RemoteAe,
        abstract_syntax: &str,
        timeout: Duration,
    ) -> Result<Scu, ScuError> {
        let peer = remote.to_string();
        let options = ClientAssociationOptions::new()
            .calling_ae_title(calling_ae.to_string())
            .called_ae_title(remote.ae_title.clone())
            .with_presentation_context(
                abstract_syntax.to_string(),
                vec![EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()],
            )
            .connection_timeout(timeout)
            .read_timeout(timeout);
        let address = format!("{}:{}", remote.host, remote.port);
        let failed = |e: dicom_ul::association::Error| match e {
            // typed: the peer took the association but none of our contexts
            dicom_ul::association::Error::NoAcceptedPresentationContexts { .. } => {
                ScuError::NotAccepted {
                    peer: peer.clone(),
                    abstract_syntax: abstract_syntax.to_string(),
                }
            }
            // typed: the peer answered with A-ASSOCIATE-RJ (PS3.8 9.3.4)
            e @ dicom_ul::association::Error::Rejected { .. } => ScuError::Rejected {
                peer: peer.clone(),
                detail: e.to_string(),
            },
            e => ScuError::Associate {
                peer: peer.clone(),
                detail: e.to_string(),
            },
        };
        let assoc = if remote.tls {
            let config = remote
                .tls_config
                .as_ref()
                .ok_or_else(|| ScuError::Associate {
                    peer: peer.clone(),
                    detail:
                        "TLS is asked for, but no TLS client configuration (CA bundle) was given"
                            .into(),
                })?;
            let mut assoc = options
                .tls_config(config.0.clone())
                .server_name(&remote.host)
                .establish_with_async_tls(&address)
                .await
                .map_err(failed)?;
            let _ = assoc.inner_stream().get_ref().0.set_nodelay(true);
            Conn::Tls(assoc)
        } else {
            let mut assoc = options
                .establish_with_async(&address)
                .await
                .map_err(failed)?;
            let _ = assoc.inner_stream().set_nodelay(true);
            Conn::Plain(assoc)
        };
        let contexts = on_assoc!(&assoc, a => a.presentation_contexts().to_vec());
        let pc = contexts
            .iter()
            .find(|pc| pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
            .cloned()
            .ok_or_else(|| ScuError::NotAccepted {
                peer: peer.clone(),
                abstract_syntax: abstract_syntax.to_string(),
            })?;
        Ok(Scu {
            assoc,
            peer,
            pc_id: pc.id,
            transfer_syntax: pc.transfer_syntax.trim_end_matches('\0').to_string(),
            message_id: 0,
            timeout,
        })
    }

    fn net(&self, e: impl std::fmt::Display) -> ScuError {
        ScuError::Network {
            peer: self.peer.clone(),
            detail: e.to_string(),
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> ScuError {
        ScuError::Protocol {
            peer: self.peer.clone(),
            detail: detail.into(),
        }
    }

    /// The accepted transfer syntax, for identifiers.
    fn syntax(&self) -> Result<&'static dicom_encoding::TransferSyntax, ScuError> {
        dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(&self.transfer_syntax)
            .ok_or_else(|| self.protocol(format!("unknown syntax {}", self.transfer_syntax)))
    }

    fn encode(&self, identifier: &InMemDicomObject) -> Result<Vec<u8>, ScuError> {
        let ts = self.syntax()?;
        let mut out = Vec::new();
        identifier
            .write_dataset_with_ts(&mut out, ts)
            .map_err(|e| self.protocol(format!("encode identifier: {e}")))?;
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<InMemDicomObject, ScuError> {
        let ts = self.syntax()?;
        InMemDicomObject::read_dataset_with_ts(bytes, ts)
            .map_err(|e| self.protocol(format!("decode identifier: {e}")))
    }

    /// Sends a request command followed by its identifier.
    async fn send_request(
        &mut self,
        command: Vec<u8>,
        identifier: &InMemDicomObject,
    ) -> Result<(), ScuError> {
        let data = self.encode(identifier)?;
        let pc_id = self.pc_id;
        let sent = on_assoc!(&mut self.assoc, a => {
            let max = super::pdv::pdv_limit(a.acceptor_max_pdu_length());
            async {
                super::pdv::send_command(a, pc_id, command).await?;
                super::pdv::send_data(a, pc_id, &data, max).await
            }
            .await
        });
        sent.map_err(|e| self.net(e))
    }

    /// Reads one whole message: the command and, if it announces one, the data set.
    async fn receive_message(&mut self) -> Result<(Command, Option<Vec<u8>>), ScuError> {
        let mut command = Vec::new();
        let mut data = Vec::new();
        let mut command_done = false;
        let mut data_done = false;
        loop {
            let received = on_assoc!(&mut self.assoc, a =>
                tokio::time::timeout(self.timeout, a.receive()).await);
            let pdu = match received {
                Err(_) => {
                    return Err(ScuError::Timeout {
                        peer: self.peer.clone(),
                        seconds: self.timeout.as_secs(),
                    })
                }
                Ok(Err(e)) => return Err(self.net(e)),
                Ok(Ok(pdu)) => pdu,
            };
            match pdu {
                Pdu::PData { data: pdvs } => {
                    for pdv in pdvs {
                        match pdv.value_type {
                            PDataValueType::Command => {
                                command.extend_from_slice(&pdv.data);
                                command_done |= pdv.is_last;
                            }
                            PDataValueType::Data => {
                                data.extend_from_slice(&pdv.data);
                                data_done |= pdv.is_last;
                            }
                        }
                    }
                }
                Pdu::AbortRQ { .. } => return Err(self.net("the peer aborted the association")),
                Pdu::ReleaseRQ => return Err(self.net("the peer released the association")),
                other => {
                    return Err(self.protocol(format!("unexpected {}", other.short_description())))
                }
            }
            if command_done {
                let cmd = Command::decode(&command)
                    .map_err(|e| self.protocol(format!("command set: {e}")))?;
                let has_data = cmd.has_data_set().unwrap_or(false);
                if !has_data {
                    return Ok((cmd, None));
                }
                if data_done {
                    return Ok((cmd, Some(data)));
                }
            }
        }
    }

    fn next_id(&mut self) -> u16 {
        self.message_id = self.message_id.wrapping_add(1).max(1);
        self.message_id
    }

    /// C-ECHO; returns the status.
    pub async fn echo(&mut self) -> Result<u16, ScuError> {
        let id = self.next_id();
        let cmd = ResponseBuilder::request(field::C_ECHO_RQ, id, false)
            .uid(tag::AFFECTED_SOP_CLASS_UID, VERIFICATION)
            .encode();
        let pc_id = self.pc_id;
        let sent = on_assoc!(&mut self.assoc, a => super::pdv::send_command(a, pc_id, cmd).await);
        sent.map_err(|e| self.net(e))?;
        let (rsp, _) = self.receive_message().await?;
        rsp.status()
            .ok_or_else(|| self.protocol("C-ECHO-RSP without a status"))
    }

    /// C-FIND (Study Root): hands each match to `on_match` and returns the final status
    /// (0x0000, or the failure the peer answered, such as 0xA700 when its result cap hit).
    pub async fn find(
        &mut self,
        identifier: &InMemDicomObject,
        on_match: &mut (dyn FnMut(InMemDicomObject) + Send),
    ) -> Result<u16, ScuError> {
        let id = self.next_id();
        let cmd = ResponseBuilder::request(field::C_FIND_RQ, id, true)
            .uid(tag::AFFECTED_SOP_CLASS_UID, STUDY_ROOT_FIND)
            .u16(tag::PRIORITY, 0)
            .encode();
        self.send_request(cmd, identifier).await?;
        loop {
            let (rsp, data) = self.receive_message().await?;
            let st = rsp
                .status()
                .ok_or_else(|| self.protocol("C-FIND-RSP without a status"))?;
            if st == status::PENDING || st == 0xFF01 {
                if let Some(bytes) = data {
                    on_match(self.decode(&bytes)?);
                }
                continue;
            }
            return Ok(st);
        }
    }

    /// C-MOVE (Study Root) to `destination`; reports pending counters to `on_progress`
    /// and returns the final outcome.
    pub async fn move_to(
        &mut self,
        destination: &str,
        identifier: &InMemDicomObject,
        on_progress: &mut (dyn FnMut(MoveProgress) + Send),
    ) -> Result<MoveOutcome, ScuError> {
        let id = self.next_id();
        let cmd = ResponseBuilder::request(field::C_MOVE_RQ, id, true)
            .uid(tag::AFFECTED_SOP_CLASS_UID, STUDY_ROOT_MOVE)
            .u16(tag::PRIORITY, 0)
            .text(tag::MOVE_DESTINATION, destination)
            .encode();
        self.send_request(cmd, identifier).await?;
        loop {
            let (rsp, data) = self.receive_message().await?;
            let st = rsp
                .status()
                .ok_or_else(|| self.protocol("C-MOVE-RSP without a status"))?;
            let counter = |t| rsp.u16_at(t).unwrap_or(0) as u32;
            if st == status::PENDING {
                on_progress(MoveProgress {
                    remaining: counter(tag::REMAINING_SUB_OPERATIONS),
                    completed: counter(tag::COMPLETED_SUB_OPERATIONS),
                    failed: counter(tag::FAILED_SUB_OPERATIONS),
                    warning: counter(tag::WARNING_SUB_OPERATIONS),
                });
                continue;
            }
            let failed_uids = match data {
                Some(bytes) if !bytes.is_empty() => self
                    .decode(&bytes)
                    .ok()
                    .and_then(|o| {
                        o.element(Tag(0x0008, 0x0058))
                            .ok()
                            .and_then(|e| e.to_str().ok().map(|s| s.to_string()))
                    })
                    .map(|s| {
                        s.split('\\')
                            .map(|u| u.trim().trim_end_matches('\0').to_string())
                            .filter(|u| !u.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            return Ok(MoveOutcome {
                status: st,
                completed: counter(tag::COMPLETED_SUB_OPERATIONS),
                failed: counter(tag::FAILED_SUB_OPERATIONS),
                warning: counter(tag::WARNING_SUB_OPERATIONS),
                failed_uids,
                error_comment: rsp.text_at(tag::ERROR_COMMENT),
            });
        }
    }

    /// Releases the association (errors ignored: the work is done).
    pub async fn release(self) {
        on_assoc!(self.assoc, a => {
            let _ = a.release().await;
        });
    }
}

/// Builds an identifier from `(tag, VR, value)` triples; an empty value asks for the
/// attribute to be returned.
pub fn identifier(keys: &[(Tag, VR, &str)]) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    for (tag, vr, value) in keys {
        obj.put(DataElement::new(*tag, *vr, PrimitiveValue::from(*value)));
    }
    obj
}

/// A text attribute as the peer sent it, only its NUL padding removed; empty when
/// absent. A UID some archive stores with a trailing space (PS3.5 §6.2 pads UI with NUL,
/// but such values exist) must be sent back exactly so for a byte-exact match there.
pub fn raw_text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| {
            e.to_raw_str()
                .ok()
                .map(|s| s.trim_end_matches('\0').to_string())
        })
        .unwrap_or_default()
}

/// A text attribute of a response identifier, trimmed; empty when absent.
pub fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| {
            e.to_str()
                .ok()
                .map(|s| s.trim().trim_end_matches('\0').to_string())
        })
        .unwrap_or_default()
}
