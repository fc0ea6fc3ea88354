//! Who is asking, and what they may do: the caller identity every use case takes
//! (DESIGN promise 10).
//!
//! A [`Principal`] is built by the adapter that received the request — the DIMSE
//! association from its calling AE title, peer address and TLS certificate subject, the
//! HTTP adapter from the bearer token's subject and client, the CLI from the operating
//! system user — and flows unchanged into the use case, which checks its [`Grant`] (the
//! [`Role`]s it holds and, for an EHR-embedded viewer, the one patient it is restricted
//! to) and attributes its audit record to it. Which roles a caller gets is policy
//! ([`super::access`]); what each role allows is [`Role`]'s table, enforced by the use
//! cases themselves (docs/security.md "Roles").

use crate::audit::Actor;

pub use crate::roles::{Role, Roles};

/// What a caller may do: its roles, and the one patient (PatientID) it is restricted to,
/// if any — an EHR-embedded viewer's token carries its launch context's patient, and
/// then sees that patient's studies only and stores nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    pub roles: Roles,
    pub patient: Option<String>,
}

impl Grant {
    /// Every role, no restriction: the local operating-system user (who could open the
    /// archive's files anyway) and the archive's own workers.
    pub fn all() -> Grant {
        Grant {
            roles: Roles::ALL,
            patient: None,
        }
    }

    pub fn none() -> Grant {
        Grant::default()
    }

    pub fn roles(roles: Roles) -> Grant {
        Grant {
            roles,
            patient: None,
        }
    }
}

/// Who the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A DICOM application entity: the calling AE title of the association, the peer's
    /// address (`ip:port`) and, over DICOM TLS with client certificates, the subject of
    /// the certificate it presented (RFC 4514 form, `CN=…,O=…`).
    Dicom {
        ae_title: String,
        address: String,
        certificate: Option<String>,
    },
    /// A command-line user (the operating system user; `via` names the route, e.g. the
    /// admin API, when the command reached a running server).
    Cli { user: String, via: Option<String> },
    /// The archive's own workers (tiering, scrubber, reader).
    System { worker: String },
    /// An HL7 v2 feed on the MLLP listener: the sending application and facility
    /// (MSH-3^MSH-4) and the peer's address.
    Hl7 {
        application: String,
        address: String,
    },
    /// A web client (DICOMweb, FHIR, the viewer, the admin API with a token): the peer's
    /// address, `service` naming the API (`dicomweb`, `wado-uri`, `fhir`, `admin`), and
    /// when it presented a bearer token, the token's subject (`sub`) and client (`azp`
    /// or `client_id`).
    Web {
        address: String,
        service: String,
        user: Option<String>,
        client: Option<String>,
    },
}

/// The caller of a use case: who ([`Caller`]) and what it may do ([`Grant`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub caller: Caller,
    pub grant: Grant,
}

impl Principal {
    /// A DICOM peer, with no roles until [`Principal::granted`] gives it its own.
    pub fn dicom(ae_title: &str, address: &str) -> Self {
        Principal::dicom_tls(ae_title, address, None)
    }

    /// A DICOM peer over TLS, identified by its AE title and, when it presented one, its
    /// certificate's subject; no roles until [`Principal::granted`].
    pub fn dicom_tls(ae_title: &str, address: &str, certificate: Option<String>) -> Self {
        Principal {
            caller: Caller::Dicom {
                ae_title: ae_title.trim().to_string(),
                address: address.to_string(),
                certificate,
            },
            grant: Grant::none(),
        }
    }

    /// This caller with `grant` in place of what it had.
    pub fn granted(self, grant: Grant) -> Self {
        Principal { grant, ..self }
    }

    /// The user running this process: `SUDO_USER`, else `USER`, else the numeric uid.
    /// Every role: whoever can run the CLI on the archive's files holds them anyway.
    pub fn cli_user() -> Self {
        let user = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            // SAFETY: getuid(2) has no preconditions and cannot fail.
            .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
        Principal {
            caller: Caller::Cli { user, via: None },
            grant: Grant::all(),
        }
    }

    /// A command-line user whose request reached the server over `via`, with `grant`.
    pub fn cli_via(user: &str, via: &str, grant: Grant) -> Self {
        Principal {
            caller: Caller::Cli {
                user: user.to_string(),
                via: Some(via.to_string()),
            },
            grant,
        }
    }

    /// A web client of `service` at `address` (`ip:port`), with no roles until
    /// [`Principal::granted`]; `user` and `client` from its token, if it sent one.
    pub fn web(service: &str, address: &str) -> Self {
        Principal::web_user(service, address, None, None)
    }

    pub fn web_user(
        service: &str,
        address: &str,
        user: Option<String>,
        client: Option<String>,
    ) -> Self {
        Principal {
            caller: Caller::Web {
                address: address.to_string(),
                service: service.to_string(),
                user,
                client,
            },
            grant: Grant::none(),
        }
    }

    /// An HL7 feed (patient identity changes: the `admin` role, nothing else is asked of
    /// it). Who may send is the listener's `[hl7] bind` and network's to decide.
    pub fn hl7(application: &str, address: &str) -> Self {
        Principal {
            caller: Caller::Hl7 {
                application: application.to_string(),
                address: address.to_string(),
            },
            grant: Grant::roles(Roles::of(&[Role::Admin])),
        }
    }

    /// The archive's own worker; every role.
    pub fn system(worker: &str) -> Self {
        Principal {
            caller: Caller::System {
                worker: worker.to_string(),
            },
            grant: Grant::all(),
        }
    }

    /// The user name for records that name a person (tombstones, holds): the CLI user,
    /// `AE@address` for a DICOM peer, `system:worker` for the archive itself.
    pub fn name(&self) -> String {
        match &self.caller {
            Caller::Dicom {
                ae_title, address, ..
            } => format!("{ae_title}@{address}"),
            Caller::Cli { user, .. } => user.clone(),
            Caller::System { worker } => format!("system:{worker}"),
            Caller::Hl7 {
                application,
                address,
            } => format!("hl7:{application}@{address}"),
            Caller::Web { address, user, .. } => match user {
                Some(user) => format!("{user}@{address}"),
                None => format!("web@{address}"),
            },
        }
    }

    /// The audit log's record of this caller.
    pub fn actor(&self) -> Actor {
        match &self.caller {
            Caller::Dicom {
                ae_title,
                address,
                certificate,
            } => Actor {
                certificate: certificate.clone().unwrap_or_default(),
                ..Actor::dicom(ae_title, address)
            },
            Caller::Cli { user, via } => Actor {
                kind: "cli".into(),
                user: user.clone(),
                address: via.clone().unwrap_or_default(),
                ..Default::default()
            },
            Caller::System { worker } => Actor::system(worker),
            Caller::Hl7 {
                application,
                address,
            } => Actor {
                kind: "hl7".into(),
                user: application.clone(),
                address: address.clone(),
                ..Default::default()
            },
            Caller::Web {
                address,
                service,
                user,
                client,
            } => Actor {
                kind: "web".into(),
                user: user.clone().unwrap_or_default(),
                client: client.clone().unwrap_or_default(),
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
    use serde::Deserialize;

    #[test]
    fn each_principal_maps_to_its_audit_actor() {
        let d = Principal::dicom("MODALITY ", "127.0.0.1:4000").actor();
        assert_eq!(
            (d.kind.as_str(), d.ae_title.as_str()),
            ("dicom", "MODALITY")
        );
        assert_eq!(d.address, "127.0.0.1:4000");
        let c = Principal::cli_via("alice", "admin-api", Grant::all()).actor();
        assert_eq!((c.kind.as_str(), c.user.as_str()), ("cli", "alice"));
        assert_eq!(c.address, "admin-api");
        let s = Principal::system("tiering").actor();
        assert_eq!((s.kind.as_str(), s.user.as_str()), ("system", "tiering"));
        let w = Principal::web_user(
            "dicomweb",
            "127.0.0.1:5000",
            Some("dr-who".into()),
            Some("ehr".into()),
        )
        .actor();
        assert_eq!((w.user.as_str(), w.client.as_str()), ("dr-who", "ehr"));
    }

    #[test]
    fn roles_parse_from_toml_names_and_refuse_unknown_ones() {
        #[derive(Deserialize)]
        struct T {
            roles: Roles,
        }
        let t: T = toml::from_str(r#"roles = ["viewer", "admin"]"#).unwrap();
        assert!(t.roles.has(Role::Viewer) && t.roles.has(Role::Admin));
        assert!(!t.roles.has(Role::Uploader) && !t.roles.has(Role::Auditor));
        assert_eq!(t.roles.names(), "viewer,admin");
        assert!(toml::from_str::<T>(r#"roles = ["root"]"#).is_err());
        assert_eq!(Roles::NONE.names(), "none");
        assert!(Principal::dicom("A", "x").grant.roles.is_empty());
        assert_eq!(Principal::cli_user().grant, Grant::all());
    }
}
