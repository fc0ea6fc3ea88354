//! The archive's roles (RBAC): the names configured in TOML and carried by tokens, and
//! sets of them. What each role allows is enforced by the use cases
//! ([`crate::archive::principal`]); which caller gets which roles is policy
//! ([`crate::archive::access`]). A leaf module, so that the configuration can name roles.

use serde::{Deserialize, Serialize};

/// A role of the archive's role-based access control (docs/security.md "Roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Query (C-FIND, QIDO-RS, FHIR search) and retrieve (C-MOVE, C-GET, WADO-RS,
    /// WADO-URI, the viewer, `strata export`).
    Viewer,
    /// Store (C-STORE, STOW-RS, `strata import`) and request storage commitment.
    Uploader,
    /// The audit log, `verify` and manifests; no pixel data.
    Auditor,
    /// Tier moves and passes, legal holds, deletion, retention, repair.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Uploader, Role::Auditor, Role::Admin];

    /// The role's name as configured and shown (`viewer`, `uploader`, `auditor`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Uploader => "uploader",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name.trim())
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Role`]s. In TOML, a list of role names (`["viewer", "uploader"]`); an
/// unknown name is a configuration error.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Roles = Roles(0);
    pub const ALL: Roles = Roles(0b1111);

    pub fn of(roles: &[Role]) -> Roles {
        Roles(roles.iter().fold(0, |bits, r| bits | r.bit()))
    }

    pub fn has(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    pub fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }

    pub fn union(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.has(*r))
    }

    /// The names, comma-separated (`viewer,uploader`; `none` for the empty set).
    pub fn names(self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        self.iter().map(Role::as_str).collect::<Vec<_>>().join(",")
    }
}

impl std::fmt::Debug for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}]", self.names())
    }
}

impl Serialize for Roles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Role::as_str))
    }
}

impl<'de> Deserialize<'de> for Roles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut roles = Roles::NONE;
        for name in names {
            let role = Role::parse(&name).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown role {name:?} (roles: viewer, uploader, auditor, admin)"
                ))
            })?;
            roles = roles.with(role);
        }
        Ok(roles)
    }
}
