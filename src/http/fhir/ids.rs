//! FHIR ids of patients: the Patient.id Strata gives a PatientID, and back (see
//! [`super`]'s module docs). A leaf module, so that the token layer can read a
//! `patient` claim given in either form.

/// Whether `s` is a FHIR id (R4 2.24.0.1: `[A-Za-z0-9\-\.]{1,64}`).
pub(crate) fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// The Patient.id of a PatientID (see the module docs); `None` when no id can be made.
pub fn patient_id_to_fhir(pid: &str) -> Option<String> {
    if is_fhir_id(pid) && !pid.starts_with('x') {
        return Some(pid.to_string());
    }
    let hex: String = pid.bytes().map(|b| format!("{b:02x}")).collect();
    (hex.len() < 64 && !pid.is_empty()).then(|| format!("x{hex}"))
}

/// The PatientID a Patient.id stands for.
pub fn fhir_to_patient_id(id: &str) -> Option<String> {
    match id.strip_prefix('x') {
        Some(hex) if hex.len() % 2 == 0 && hex.chars().all(|c| c.is_ascii_hexdigit()) => {
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect();
            bytes.and_then(|b| String::from_utf8(b).ok())
        }
        _ => Some(id.to_string()),
    }
}
