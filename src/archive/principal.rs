//! Who is asking: the caller identity every use case takes (DESIGN promise 10).
//!
//! A [`Principal`] is built by the adapter that received the request — the DIMSE
//! association from its calling AE title and peer address, the CLI from the operating
//! system user, the admin API from the user its client names — and flows unchanged into
//! the use case, which attributes its audit record to it. A DICOM TLS peer's certificate
//! subject is part of it; roles and token subjects join it with the rest of the security
//! issue.

use crate::audit::Actor;
use serde::{Deserialize, Serialize};

/// The caller of a use case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Principal {
    /// A DICOM application entity: the calling AE title of the association, the peer's
    /// address (`ip:port`) and, over DICOM TLS with client certificates, the subject of
    /// the certificate it presented (RFC 4514 form, `CN=…,O=…`).
    Dicom {
        ae_title: String,
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate: Option<String>,
    },
    /// A command-line user (the operating system user; `via` names the route, e.g. the
    /// admin API, when the command reached a running server).
    Cli {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
    },
    /// The archive's own workers (tiering, scrubber, reader).
    System { worker: String },
    /// A web client (DICOMweb, FHIR, the viewer): the peer's address, and the
    /// authenticated user once tokens exist (the security issue); `service` names the
    /// API (`dicomweb`, `wado-uri`, `fhir`).
    Web {
        address: String,
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
}

impl Principal {
    pub fn dicom(ae_title: &str, address: &str) -> Self {
        Principal::Dicom {
            ae_title: ae_title.trim().to_string(),
            address: address.to_string(),
            certificate: None,
        }
    }

    /// A DICOM peer over TLS, identified by its AE title and, when it presented one, its
    /// certificate's subject.
    pub fn dicom_tls(ae_title: &str, address: &str, certificate: Option<String>) -> Self {
        Principal::Dicom {
            ae_title: ae_title.trim().to_string(),
            address: address.to_string(),
            certificate,
        }
    }

    /// The user running this process: `SUDO_USER`, else `USER`, else the numeric uid.
    pub fn cli_user() -> Self {
        let user = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            // SAFETY: getuid(2) has no preconditions and cannot fail.
            .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
        Principal::Cli { user, via: None }
    }

    /// A command-line user whose request reached the server over `via`.
    pub fn cli_via(user: &str, via: &str) -> Self {
        Principal::Cli {
            user: user.to_string(),
            via: Some(via.to_string()),
        }
    }

    /// An unauthenticated web client of `service` at `address` (`ip:port`).
    pub fn web(service: &str, address: &str) -> Self {
        Principal::Web {
            address: address.to_string(),
            service: service.to_string(),
            user: None,
        }
    }

    pub fn system(worker: &str) -> Self {
        Principal::System {
            worker: worker.to_string(),
        }
    }

    /// The user name for records that name a person (tombstones, holds): the CLI user,
    /// `AE@address` for a DICOM peer, `system:worker` for the archive itself.
    pub fn name(&self) -> String {
        match self {
            Principal::Dicom {
                ae_title, address, ..
            } => format!("{ae_title}@{address}"),
            Principal::Cli { user, .. } => user.clone(),
            Principal::System { worker } => format!("system:{worker}"),
            Principal::Web { address, user, .. } => match user {
                Some(user) => format!("{user}@{address}"),
                None => format!("web@{address}"),
            },
        }
    }

    /// The audit log's record of this caller.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Dicom {
                ae_title,
                address,
                certificate,
            } => Actor {
                certificate: certificate.clone().unwrap_or_default(),
                ..Actor::dicom(ae_title, address)
            },
            Principal::Cli { user, via } => Actor {
                kind: "cli".into(),
                user: user.clone(),
                address: via.clone().unwrap_or_default(),
                ..Default::default()
            },
            Principal::System { worker } => Actor::system(worker),
            Principal::Web {
                address,
                service,
                user,
            } => Actor {
                kind: "web".into(),
                user: user.clone().unwrap_or_default(),
                address: address.clone(),
                service: service.clone(),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_principal_maps_to_its_audit_actor() {
        let d = Principal::dicom("MODALITY ", "127.0.0.1:4000").actor();
        assert_eq!(
            (d.kind.as_str(), d.ae_title.as_str()),
            ("dicom", "MODALITY")
        );
        assert_eq!(d.address, "127.0.0.1:4000");
        let c = Principal::cli_via("alice", "admin-api").actor();
        assert_eq!((c.kind.as_str(), c.user.as_str()), ("cli", "alice"));
        assert_eq!(c.address, "admin-api");
        let s = Principal::system("tiering").actor();
        assert_eq!((s.kind.as_str(), s.user.as_str()), ("system", "tiering"));
    }
}
