//! Access policy: which [`Grant`] a caller gets, and the checks every use case makes
//! with it (docs/security.md "Roles").
//!
//! - A DICOM peer gets the roles of the first `[[access.dicom]]` rule its AE title and
//!   certificate subject match, else `[access] dicom_default`.
//! - A web client with a bearer token gets the roles its claims carry
//!   ([`grant_of_claims`]): Strata role names in `[auth] roles_claim`, and SMART on FHIR
//!   scopes in `scope` (`patient/ImagingStudy.read`, `user/*.read`, `system/*.write`,
//!   and their v2 forms `.rs`, `.cruds`). A token naming a patient (`[auth]
//!   patient_claim`) is restricted to that patient and read-only.
//! - Without tokens (`[auth] issuer` empty), web clients get `[access] web_anonymous`.
//!
//! [`Archive::authorize`] is the one check: a caller lacking the role is refused with
//! [`Error::Forbidden`], and the refusal is an audit record (outcome `refused: …`).
//! A patient-restricted caller's queries are narrowed to its patient
//! ([`Archive::narrow_query`]) and its retrievals drop every other patient's instances,
//! so that nothing about another patient leaks, not even that it exists.

use super::principal::{Grant, Role, Roles};
use super::{Archive, Error, Principal};
use crate::config::{AccessConfig, AuthConfig};
use crate::query::{self, Key, Query};
use serde_json::Value;

/// The grant of a DICOM caller (see the module docs).
pub fn grant_of_dicom(access: &AccessConfig, ae_title: &str, certificate: Option<&str>) -> Grant {
    let ae_title = ae_title.trim();
    let rule = access.dicom.iter().find(|rule| {
        let ae_ok = rule.ae_title.trim().is_empty() || rule.ae_title.trim() == ae_title;
        let cert_ok = rule.certificate.trim().is_empty()
            || certificate.is_some_and(|c| same_subject(c, &rule.certificate));
        ae_ok && cert_ok
    });
    Grant::roles(rule.map_or(access.dicom_default, |r| r.roles))
}

/// Two RFC 4514 subjects are the same when their attributes are, ignoring spaces after
/// commas and the case of attribute types (`CN=a, O=b` is `cn=a,O=b`).
fn same_subject(a: &str, b: &str) -> bool {
    let norm = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|rdn| match rdn.trim().split_once('=') {
                Some((k, v)) => format!("{}={}", k.trim().to_ascii_uppercase(), v.trim()),
                None => rdn.trim().to_string(),
            })
            .collect()
    };
    norm(a) == norm(b)
}

/// The grant a validated token's `claims` carry (see the module docs). `patient_of`
/// turns the patient claim's value (a FHIR Patient.id or a PatientID) into a PatientID.
pub fn grant_of_claims(
    auth: &AuthConfig,
    claims: &Value,
    patient_of: impl Fn(&str) -> Option<String>,
) -> Grant {
    let mut roles = Roles::NONE;
    for name in strings(claim(claims, &auth.roles_claim)) {
        if let Some(role) = Role::parse(&name) {
            roles = roles.with(role);
        }
    }
    // a patient claim that is present but unusable (not a string, empty, not an ID, or
    // a matching pattern) gives nothing: a restriction never fails open
    let patient = match claim(claims, &auth.patient_claim) {
        None | Some(Value::Null) => None,
        Some(value) => {
            let usable = value
                .as_str()
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .and_then(&patient_of)
                .filter(|p| !p.is_empty() && !p.contains(['*', '?', '\\']));
            match usable {
                Some(p) => Some(p),
                None => return Grant::none(),
            }
        }
    };
    let scopes = strings(claims.get("scope").or_else(|| claims.get("scp")));
    for scope in &scopes {
        let Some((context, rest)) = scope.split_once('/') else {
            continue;
        };
        let Some((resource, permission)) = rest.split_once('.') else {
            continue;
        };
        let context_ok = match context {
            "user" | "system" => true,
            // a patient scope needs the launch context's patient
            "patient" => patient.is_some(),
            _ => false,
        };
        if !context_ok || !matches!(resource, "*" | "ImagingStudy") {
            continue;
        }
        let (read, write) = match permission {
            "read" => (true, false),
            "write" => (false, true),
            "*" => (true, true),
            // SMART v2: c(reate) r(ead) u(pdate) d(elete) s(earch)
            v2 if !v2.is_empty() && v2.chars().all(|c| "cruds".contains(c)) => {
                (v2.contains('r') || v2.contains('s'), v2.contains('c'))
            }
            _ => (false, false),
        };
        if read {
            roles = roles.with(Role::Viewer);
        }
        if write {
            roles = roles.with(Role::Uploader);
        }
    }
    match patient {
        // restricted to one patient: read only
        Some(patient) => Grant {
            roles: if roles.has(Role::Viewer) {
                Roles::of(&[Role::Viewer])
            } else {
                Roles::NONE
            },
            patient: Some(patient),
        },
        None => Grant::roles(roles),
    }
}

/// The claim at `path` (dots descend into objects).
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return None;
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

/// A claim's strings: a JSON array's strings, or a space-separated string's words.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

impl Archive {
    /// The grant of a DICOM caller ([`grant_of_dicom`] over this archive's `[access]`).
    pub fn dicom_grant(&self, ae_title: &str, certificate: Option<&str>) -> Grant {
        grant_of_dicom(&self.config.access, ae_title, certificate)
    }

    /// Refuses `principal` ([`Error::Forbidden`]) unless it holds `role`, and, with
    /// `write`, unless it is unrestricted; a refusal is an audit record of `action` with
    /// outcome `refused: …`, written before this returns.
    pub(crate) fn authorize(
        &self,
        principal: &Principal,
        role: Role,
        action: &'static str,
        uids: &[String],
    ) -> Result<(), Error> {
        let why = if !principal.grant.roles.has(role) {
            format!(
                "needs role {} (has {})",
                role.as_str(),
                principal.grant.roles.names()
            )
        } else if principal.grant.patient.is_some() && role != Role::Viewer {
            "a token restricted to one patient is read-only".to_string()
        } else {
            return Ok(());
        };
        self.audit_on_drop(principal, action, uids.to_vec(), format!("refused: {why}"));
        Err(Error::Forbidden {
            who: principal.name(),
            action,
            why,
        })
    }

    /// `query` as a patient-restricted `principal` may run it: its PatientID key set to
    /// the patient (kept as a return key), or `None` when the query asks for another
    /// patient (nothing may match). Unrestricted callers' queries pass unchanged.
    pub(crate) fn narrow_query(&self, principal: &Principal, mut query: Query) -> Option<Query> {
        let Some(patient) = &principal.grant.patient else {
            return Some(query);
        };
        match query
            .keys
            .iter_mut()
            .find(|k| k.tag == query::tags::PATIENT_ID)
        {
            Some(key) => {
                if !key.value.is_empty() && !query::matches(key, patient) {
                    return None;
                }
                key.value = patient.clone();
            }
            None => query.keys.push(Key {
                tag: query::tags::PATIENT_ID,
                vr: *b"LO",
                value: patient.clone(),
            }),
        }
        Some(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DicomAccessRule;
    use serde_json::json;

    fn pid(p: &str) -> Option<String> {
        Some(p.to_string())
    }

    #[test]
    fn smart_scopes_and_role_claims_map_onto_roles() {
        let auth = AuthConfig::default();
        let g = grant_of_claims(&auth, &json!({"scope": "openid user/*.read"}), pid);
        assert_eq!(g, Grant::roles(Roles::of(&[Role::Viewer])));
        let g = grant_of_claims(&auth, &json!({"scope": "system/*.write"}), pid);
        assert_eq!(g, Grant::roles(Roles::of(&[Role::Uploader])));
        let g = grant_of_claims(&auth, &json!({"scope": "system/ImagingStudy.cruds"}), pid);
        assert_eq!(g.roles, Roles::of(&[Role::Viewer, Role::Uploader]));
        // another resource type grants nothing over images
        let g = grant_of_claims(&auth, &json!({"scope": "user/Observation.read"}), pid);
        assert!(g.roles.is_empty());
        // roles claim, array or string, unknown names ignored
        let g = grant_of_claims(&auth, &json!({"roles": ["admin", "offline_access"]}), pid);
        assert_eq!(g.roles, Roles::of(&[Role::Admin]));
        let nested = AuthConfig {
            roles_claim: "realm_access.roles".into(),
            ..AuthConfig::default()
        };
        let g = grant_of_claims(
            &nested,
            &json!({"realm_access": {"roles": ["auditor"]}}),
            pid,
        );
        assert_eq!(g.roles, Roles::of(&[Role::Auditor]));
    }

    #[test]
    fn a_patient_claim_restricts_to_that_patient_and_read_only() {
        let auth = AuthConfig::default();
        let g = grant_of_claims(
            &auth,
            &json!({"scope": "patient/ImagingStudy.read patient/*.write", "roles": ["admin"], "patient": "P1"}),
            pid,
        );
        assert_eq!(g.roles, Roles::of(&[Role::Viewer]));
        assert_eq!(g.patient.as_deref(), Some("P1"));
        // a patient scope without a patient to restrict it to grants nothing
        let g = grant_of_claims(&auth, &json!({"scope": "patient/ImagingStudy.read"}), pid);
        assert!(g.roles.is_empty() && g.patient.is_none());
        // an unusable patient claim grants nothing at all: never an unrestricted token
        for bad in [json!(12345), json!(""), json!("P*"), json!("A\\B")] {
            let g = grant_of_claims(&auth, &json!({"roles": ["viewer"], "patient": bad}), pid);
            assert_eq!(g, Grant::none(), "{bad}");
        }
    }

    #[test]
    fn dicom_callers_get_the_first_matching_rule_else_the_default() {
        let access = AccessConfig {
            dicom: vec![
                DicomAccessRule {
                    ae_title: "CT1".into(),
                    certificate: "CN=ct1,O=Clinic".into(),
                    roles: Roles::of(&[Role::Uploader]),
                },
                DicomAccessRule {
                    ae_title: "VIEWSTATION".into(),
                    certificate: String::new(),
                    roles: Roles::of(&[Role::Viewer]),
                },
            ],
            ..AccessConfig::default()
        };
        let up = grant_of_dicom(&access, "CT1 ", Some("cn=ct1, O=Clinic"));
        assert_eq!(up.roles, Roles::of(&[Role::Uploader]));
        // the AE title alone does not match a rule that also names a certificate
        let other = grant_of_dicom(&access, "CT1", None);
        assert_eq!(other.roles, access.dicom_default);
        let v = grant_of_dicom(&access, "VIEWSTATION", None);
        assert_eq!(v.roles, Roles::of(&[Role::Viewer]));
    }
}
