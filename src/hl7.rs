//! # The HL7 v2 adapter: patient identity from the hospital's ADT feed
//!
//! A listener on `[hl7] port` (0 = off; with `[hl7] tls`, over TLS 1.2/1.3 with the
//! `[tls]` files, mutual when `client_ca_file` is set) speaks MLLP ([`mllp`]: each message framed by
//! `0x0B` … `0x1C 0x0D`, HL7 v2.5.1 Appendix C). Messages are parsed with the
//! `hl7-parser` crate and turned into the application layer's
//! [`PatientChange`](crate::archive::patients::PatientChange):
//!
//! | message | read | change |
//! |---|---|---|
//! | `ADT^A08`, `ADT^A31` | PID-3 (ID, 3.4 assigning authority), PID-5, PID-7, PID-8 | demographics updated |
//! | `ADT^A40` | PID-3 … (the survivor), MRG-1 (the prior ID) | prior merged into survivor |
//! | `ADT^A47` | PID-3 … (the new ID), MRG-1 (the old ID) | identifier changed |
//! | `ORM^O01`, `OMI^O23` | PID-3.1 | the patient's priors brought back to hot ([`crate::archive::prefetch`]) |
//!
//! Each message gets one ACK (MSA-1 `AA` accepted, `AE` error in its content or in
//! processing, `AR` rejected: not HL7, not a message Strata acts on), echoing its
//! control id (MSA-2) with the reason in MSA-3 and ERR. A message is acknowledged only
//! after its change is durable (the use case syncs the governance log, the index and
//! the audit log); a control id seen before is acknowledged `AA` again without a
//! second change. Messages of one connection are processed in order, one at a time.
//! The caller of every change is the sending application and facility (MSH-3^MSH-4)
//! at the peer's address ([`Principal::hl7`](crate::archive::Principal::hl7)).

pub mod mllp;

use crate::archive::patients::{Demographics, PatientChange};
use crate::archive::{Archive, Principal};
use hl7_parser::Message;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// An acknowledgement code (HL7 v2 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application Accept.
    Accept,
    /// Application Error: the message's content, or processing it, failed.
    Error,
    /// Application Reject: not a message Strata can act on.
    Reject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }
}

/// Serves MLLP on `listener` — a [`tokio::net::TcpListener`], or a
/// [`crate::tls::TlsListener`] for `[hl7] tls` — until `shutdown` turns true.
pub async fn serve<L>(mut listener: L, archive: Archive, mut shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    loop {
        tokio::select! {
            (stream, peer) = listener.accept() => {
                let (archive, stop) = (archive.clone(), shutdown.clone());
                tokio::spawn(async move { connection(stream, peer, archive, stop).await });
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// One connection: its messages in order, each acknowledged before the next is read.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    archive: Archive,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = archive.config().hl7.max_message_kb.saturating_mul(1024);
    let mut reader = mllp::Reader::new(limit);
    loop {
        let idle = archive.config().hl7.idle_timeout;
        let frame = tokio::select! {
            frame = tokio::time::timeout(idle, reader.next(&mut stream)) => frame,
            _ = shutdown.changed() => return,
        };
        let bytes = match frame {
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "HL7: connection dropped");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "HL7: idle connection closed");
                return;
            }
        };
        let ack = handle(&archive, peer, &bytes).await;
        if let Err(e) = mllp::write(&mut stream, ack.as_bytes()).await {
            tracing::warn!(%peer, error = %e, "HL7: the ACK could not be sent");
            return;
        }
    }
}

/// Processes one message; its ACK.
pub async fn handle(archive: &Archive, peer: SocketAddr, bytes: &[u8]) -> String {
    // HL7 v2's default character set is ASCII; ISO 8859-1 where MSH-18 says so, and
    // anything not UTF-8 is read as Latin-1 rather than refused
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.to_string(),
        Err(_) => encoding_rs::WINDOWS_1252.decode(bytes).0.into_owned(),
    };
    let message = match hl7_parser::parse_message_with_lenient_newlines(&text) {
        Ok(m) => m,
        Err(e) => {
            let control_id = raw_control_id(&text);
            tracing::warn!(%peer, error = %e, "HL7: unparseable message refused");
            return ack_for(
                None,
                &control_id,
                AckCode::Reject,
                &format!("not an HL7 v2 message: {e}"),
            );
        }
    };
    let field = |q: &str| value(&message, q);
    let control_id = field("MSH.10");
    let (kind, trigger) = (field("MSH.9.1"), field("MSH.9.2"));
    let application = [field("MSH.3"), field("MSH.4")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("^");
    let who = Principal::hl7(&application, &peer.to_string());
    // MSH-10 is unique within its sending system only (HL7 v2.5.1 2.14.9.10): a message
    // is known by its sender and control id together
    let message_key = format!("{application}|{control_id}");
    if control_id.is_empty() {
        return ack_for(
            Some(&message),
            "",
            AckCode::Reject,
            "MSH-10 (message control id) is empty",
        );
    }
    if matches!(
        (kind.as_str(), trigger.as_str()),
        ("ORM", "O01") | ("OMI", "O23")
    ) {
        return order(archive, &who, &message, &control_id, &message_key).await;
    }
    let change = match change_of(&message, &kind, &trigger) {
        Ok(change) => change,
        Err((code, why)) => {
            tracing::warn!(%peer, control_id, kind, trigger, why, "HL7: message refused");
            archive.connection_refused_as(&who, "hl7_message", &format!("{control_id}: {why}"));
            return ack_for(Some(&message), &control_id, code, &why);
        }
    };
    match archive
        .change_patient(&who, change, Some(&message_key))
        .await
    {
        Ok(outcome) if outcome.duplicate => {
            tracing::info!(%peer, control_id, "HL7: a message seen before: acknowledged again, not applied twice");
            ack_for(
                Some(&message),
                &control_id,
                AckCode::Accept,
                &format!("already processed: {}", outcome.summary),
            )
        }
        Ok(outcome) => {
            tracing::info!(%peer, control_id, summary = outcome.summary, "HL7: patient identity changed");
            crate::tiering::failpoint("hl7-before-ack");
            ack_for(Some(&message), &control_id, AckCode::Accept, "")
        }
        Err(e) => {
            tracing::warn!(%peer, control_id, error = %e, "HL7: message not applied");
            ack_for(Some(&message), &control_id, AckCode::Error, &e.to_string())
        }
    }
}

/// A new order: the patient's priors brought back to hot ([`crate::archive::prefetch`]);
/// acknowledged once the order is on record, while the priors come back.
async fn order(
    archive: &Archive,
    who: &Principal,
    message: &Message<'_>,
    control_id: &str,
    message_key: &str,
) -> String {
    if !archive.config().prefetch.enabled {
        let why = "prior prefetch is off ([prefetch] enabled = false)";
        return ack_for(Some(message), control_id, AckCode::Reject, why);
    }
    let patient_id = value(message, "PID.3.1");
    match archive
        .prefetch_priors(who, &patient_id, Some(message_key))
        .await
    {
        Ok(outcome) if outcome.duplicate => ack_for(
            Some(message),
            control_id,
            AckCode::Accept,
            &format!("already processed: {}", outcome.summary),
        ),
        Ok(outcome) => {
            tracing::info!(
                control_id,
                summary = outcome.summary,
                "HL7: order: priors prefetched"
            );
            ack_for(Some(message), control_id, AckCode::Accept, "")
        }
        Err(e) => ack_for(Some(message), control_id, AckCode::Error, &e.to_string()),
    }
}

/// The change a message asks for, or the ACK code and reason refusing it.
fn change_of(
    message: &Message,
    kind: &str,
    trigger: &str,
) -> Result<PatientChange, (AckCode, String)> {
    let unsupported = || {
        (
            AckCode::Reject,
            format!(
                "{kind}^{trigger} is not a message Strata acts on \
                 (ADT^A08, A31, A40, A47; ORM^O01, OMI^O23)"
            ),
        )
    };
    if kind != "ADT" {
        return Err(unsupported());
    }
    let patient = demographics(message).map_err(|why| (AckCode::Error, why))?;
    // the prior patient: MRG-1.1 and its assigning authority MRG-1.4
    let prior = || {
        let (id, issuer) = (value(message, "MRG.1.1"), value(message, "MRG.1.4.1"));
        if message.segment("MRG").is_none() || id.is_empty() {
            return Err((
                AckCode::Error,
                format!("ADT^{trigger} needs MRG-1 (the prior patient identifier)"),
            ));
        }
        lo_value("MRG-1", &id)
            .and_then(|()| lo_value("MRG-1.4", &issuer))
            .map_err(|why| (AckCode::Error, why))?;
        Ok((id, issuer))
    };
    match trigger {
        "A08" | "A31" => Ok(PatientChange::Update { patient }),
        "A40" => {
            let (prior, prior_issuer) = prior()?;
            Ok(PatientChange::Merge {
                prior,
                prior_issuer,
                survivor: patient,
            })
        }
        "A47" => {
            let (old, old_issuer) = prior()?;
            Ok(PatientChange::ChangeId {
                old,
                old_issuer,
                patient,
            })
        }
        _ => Err(unsupported()),
    }
}

/// Checks that an identifier fits DICOM's LO (PatientID, IssuerOfPatientID: at most 64
/// characters, no backslash and no control character; PS3.5 §6.2), which the patient key
/// relies on.
fn lo_value(field: &str, value: &str) -> Result<(), String> {
    if value.chars().count() > 64 || value.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(format!(
            "{field} ({value:?}) is not a valid DICOM identifier (LO: at most 64 characters, no backslash)"
        ));
    }
    Ok(())
}

/// The patient of a message's PID segment, in DICOM's forms.
fn demographics(message: &Message) -> Result<Demographics, String> {
    if message.segment("PID").is_none() {
        return Err("the message has no PID segment".into());
    }
    let v = |q: &str| value(message, q);
    let patient_id = v("PID.3.1");
    if patient_id.is_empty() {
        return Err("PID-3 (patient identifier) is empty".into());
    }
    let issuer = v("PID.3.4.1");
    lo_value("PID-3", &patient_id)?;
    lo_value("PID-3.4", &issuer)?;
    // XPN (family^given^middle^suffix^prefix) to PN (family^given^middle^prefix^suffix)
    let name = [
        v("PID.5.1"),
        v("PID.5.2"),
        v("PID.5.3"),
        v("PID.5.5"),
        v("PID.5.4"),
    ];
    let mut name = name.join("^");
    while name.ends_with('^') {
        name.pop();
    }
    let birth: String = v("PID.7.1").chars().take(8).collect();
    let sex = match v("PID.8").as_str() {
        s @ ("M" | "F" | "O") => s.to_string(),
        _ => String::new(),
    };
    Ok(Demographics {
        patient_id,
        issuer,
        patient_name: name,
        patient_birth_date: birth,
        patient_sex: sex,
    })
}

/// A field, component or subcomponent, its escape sequences decoded; empty if absent.
fn value(message: &Message, query: &str) -> String {
    message
        .query(query)
        .map(|r| r.display(&message.separators).to_string())
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// MSH-10 of a message too broken to parse, when it can be found.
fn raw_control_id(text: &str) -> String {
    text.lines()
        .flat_map(|l| l.split('\r'))
        .find(|l| l.starts_with("MSH"))
        .and_then(|msh| msh.split('|').nth(9))
        .unwrap_or("")
        .to_string()
}

/// HL7 escapes of text placed in a field (v2.5.1 2.7.1).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The ACK of a message (MSH, MSA, and ERR when not accepted), segments ended by CR.
pub fn ack_for(message: Option<&Message>, control_id: &str, code: AckCode, text: &str) -> String {
    let get = |q: &str| message.map(|m| value(m, q)).unwrap_or_default();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let ts: String = now
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(14)
        .collect();
    let version = Some(get("MSH.12"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "2.5.1".into());
    let trigger = get("MSH.9.2");
    let mut ack = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{ts}||ACK^{}^ACK|ACK{}|P|{}\rMSA|{}|{}|{}\r",
        escape(&get("MSH.5")),
        escape(&get("MSH.6")),
        escape(&get("MSH.3")),
        escape(&get("MSH.4")),
        escape(&trigger),
        escape(control_id),
        escape(&version),
        code.as_str(),
        escape(control_id),
        escape(&text.chars().take(80).collect::<String>()),
    );
    if code != AckCode::Accept {
        // ERR-3 error code (table 0357: 207 application internal error, 200 unsupported
        // message type), ERR-4 severity E, ERR-8 the full reason
        let err_code = if code == AckCode::Reject {
            "200"
        } else {
            "207"
        };
        ack.push_str(&format!("ERR|||{err_code}|E||||{}\r", escape(text)));
    }
    ack
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Message<'_> {
        hl7_parser::parse_message_with_lenient_newlines(text).unwrap()
    }

    #[test]
    fn adt_messages_become_changes_and_names_become_dicom_pn() {
        let a40 = "MSH|^~\\&|EHR|HOSP|STRATA|RAD|20261130||ADT^A40^ADT_A39|MSG1|P|2.5.1\r\
                   PID|||ALICE001^^^HOSP^MR||DOE^JANE^Q^^DR||19700102|F\r\
                   MRG|BOB001^^^HOSP^MR\r";
        let m = parse(a40);
        let change = change_of(&m, "ADT", "A40").unwrap();
        let PatientChange::Merge {
            survivor,
            prior,
            prior_issuer,
        } = change
        else {
            panic!("{change:?}")
        };
        assert_eq!(prior, "BOB001");
        assert_eq!(prior_issuer, "HOSP");
        assert_eq!(survivor.patient_id, "ALICE001");
        assert_eq!(survivor.issuer, "HOSP");
        // PS3.5 6.2.1: PN components family^given^middle^prefix^suffix
        assert_eq!(survivor.patient_name, "DOE^JANE^Q^DR");
        assert_eq!(survivor.patient_birth_date, "19700102");
        assert_eq!(survivor.patient_sex, "F");
        // an escaped separator in a name is decoded (HL7 v2.5.1 2.7.1)
        let a08 = "MSH|^~\\&|EHR|HOSP|||20261130||ADT^A08|MSG2|P|2.5.1\r\
                   PID|||P1||O\\S\\BRIEN^PAT\r";
        let PatientChange::Update { patient } = change_of(&parse(a08), "ADT", "A08").unwrap()
        else {
            panic!()
        };
        assert_eq!(patient.patient_name, "O^BRIEN^PAT");
        // a backslash cannot be in a DICOM PatientID (LO, PS3.5 §6.2): refused
        let backslash = "MSH|^~\\&|EHR|HOSP|||20261130||ADT^A08|MSG4|P|2.5.1\r\
                   PID|||P\\E\\1\r";
        assert!(change_of(&parse(backslash), "ADT", "A08")
            .unwrap_err()
            .1
            .contains("no backslash"));
        // a merge without MRG is an error in the content; an order is not acted on
        let no_mrg = "MSH|^~\\&|EHR|HOSP|||20261130||ADT^A40|MSG3|P|2.5.1\rPID|||P1\r";
        assert_eq!(
            change_of(&parse(no_mrg), "ADT", "A40").unwrap_err().0,
            AckCode::Error
        );
        assert_eq!(
            change_of(&parse(no_mrg), "ORM", "O01").unwrap_err().0,
            AckCode::Reject
        );
    }

    #[test]
    fn acks_echo_the_control_id_and_escape_the_reason() {
        let m = parse("MSH|^~\\&|EHR|HOSP|STRATA|RAD|20261130||ADT^A08|MSG9|P|2.3\rPID|||P1\r");
        let ack = ack_for(Some(&m), "MSG9", AckCode::Error, "bad | value");
        let parsed = parse(&ack);
        assert_eq!(value(&parsed, "MSA.1"), "AE");
        assert_eq!(value(&parsed, "MSA.2"), "MSG9");
        assert_eq!(value(&parsed, "MSA.3"), "bad | value");
        assert_eq!(value(&parsed, "MSH.3"), "STRATA");
        assert_eq!(value(&parsed, "MSH.5"), "EHR");
        assert_eq!(value(&parsed, "MSH.9.1"), "ACK");
        assert_eq!(value(&parsed, "MSH.12"), "2.3");
    }
}
