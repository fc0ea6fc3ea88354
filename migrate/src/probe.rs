//! What the source says to our calling AE title, said plainly: one C-ECHO, then one Study
//! Root C-FIND that matches nothing. A source may answer C-ECHO from anyone yet refuse
//! queries and retrievals from AE titles it does not know (Orthanc does, with its
//! default `DicomAlwaysAllowFind`/`DicomAlwaysAllowMove` = false): an echo alone proves
//! nothing about a mistyped `--calling-ae`.
//!
//! Used before `plan` writes a ledger, before `run --source/--calling-ae` changes the
//! ledger's settings, and by `run` when a C-MOVE association fails, to stop at once with
//! the reason instead of retrying study after study.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use std::time::Duration;
use strata::dimse::scu::{self, RemoteAe, Scu, ScuError};

/// A Study Instance UID no archive holds (a UUID-derived UID, PS3.5 B.2, of zero).
const NO_STUDY: &str = "2.25.0";

/// Why the source cannot be used, said plainly.
#[derive(Debug, Clone)]
pub enum SourceProblem {
    /// It does not answer (down, unreachable): worth retrying.
    Unreachable(String),
    /// It answers but refuses us (our AE title, a status): retrying changes nothing.
    Refuses(String),
}

impl std::fmt::Display for SourceProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceProblem::Unreachable(why) | SourceProblem::Refuses(why) => f.write_str(why),
        }
    }
}

/// `Ok` when the source answers our C-ECHO and our C-FIND as `calling_ae`; otherwise
/// what failed, which step, and what that usually means.
pub async fn check_source(
    calling_ae: &str,
    source: &RemoteAe,
    timeout: Duration,
) -> Result<(), SourceProblem> {
    use SourceProblem::{Refuses, Unreachable};
    let echoed = async {
        let mut scu = Scu::connect(calling_ae, source, scu::VERIFICATION, timeout).await?;
        let status = scu.echo().await?;
        scu.release().await;
        Ok::<u16, ScuError>(status)
    }
    .await;
    match echoed {
        Ok(0) => {}
        Ok(status) => {
            return Err(Refuses(format!(
            "the source {source} answered our C-ECHO (as {calling_ae:?}) with status {status:#06X}"
        )))
        }
        Err(e @ ScuError::Rejected { .. }) => {
            return Err(Refuses(format!(
                "the source {source} rejected an association from {calling_ae:?}: {e}. Check the \
                 source's AE title and that it accepts {calling_ae:?} (--calling-ae)"
            )))
        }
        Err(e) => {
            return Err(Unreachable(format!(
                "the source {source} does not answer: {e}"
            )))
        }
    }
    let found = async {
        let mut scu = Scu::connect(calling_ae, source, scu::STUDY_ROOT_FIND, timeout).await?;
        let identifier = scu::identifier(&[
            (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
            (tags::STUDY_INSTANCE_UID, VR::UI, NO_STUDY),
        ]);
        let status = scu.find(&identifier, &mut |_| {}).await?;
        scu.release().await;
        Ok::<u16, ScuError>(status)
    }
    .await;
    match found {
        Ok(0) => Ok(()),
        Ok(status) => Err(Refuses(format!(
            "the source {source} answers C-ECHO from {calling_ae:?} but answered its C-FIND with \
             status {status:#06X}"
        ))),
        Err(e @ ScuError::NotAccepted { .. }) => Err(Refuses(e.to_string())),
        Err(e @ ScuError::Timeout { .. }) => Err(Unreachable(format!(
            "the source {source} answers C-ECHO but not a C-FIND in time: {e}"
        ))),
        Err(e) => Err(Refuses(format!(
            "the source {source} answers C-ECHO from {calling_ae:?} but refused its C-FIND ({e}). \
             Sources refuse queries and retrievals from calling AE titles they do not know \
             (Orthanc: \"DicomModalities\", \"DicomAlwaysAllowFind\"/\"DicomAlwaysAllowMove\"): \
             check that {calling_ae:?} is the AE title the source knows for this archive, or fix \
             --calling-ae"
        ))),
    }
}
