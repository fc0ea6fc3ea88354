//! Tier moves asked for by a caller: the status of the tiers, one policy pass now, and
//! forcing one study to cold, hot or the archive class. The background policy
//! ([`crate::tiering::worker`]) does the same moves on its own, audited as the system's.

use super::principal::Role;
use super::{blocking, Archive, Error, Principal};
use crate::tiering::mover::MoveReport;
use crate::tiering::worker::{force_move_locked, PassReport, TierStatus};

type Result<T> = std::result::Result<T, Error>;

/// Where a forced move sends a study.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierTarget {
    Cold,
    Hot,
    /// Cold, then the pack's storage class set to `[tiering] archive_storage_class`.
    Archive,
}

impl std::str::FromStr for TierTarget {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cold" => Ok(TierTarget::Cold),
            "hot" => Ok(TierTarget::Hot),
            "archive" => Ok(TierTarget::Archive),
            other => Err(Error::InvalidRequest(format!(
                "unknown tier {other:?}: expected cold, hot or archive"
            ))),
        }
    }
}

impl TierTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            TierTarget::Cold => "cold",
            TierTarget::Hot => "hot",
            TierTarget::Archive => "archive",
        }
    }
}

impl Archive {
    /// Studies, objects and bytes per tier; queue lengths; the oldest item waiting; and
    /// whether the cold tier can be used (its preflight).
    pub async fn tier_status(&self) -> Result<TierStatus> {
        let tiering = self.tiering.clone();
        let mut status = blocking(move || Ok(tiering.status_blocking()?)).await?;
        status.cold_check = match self.cold.preflight().await {
            Ok(()) => match crate::storage::cold_tier::check_marker(
                &self.config,
                &self.cold,
                Some(self.index.as_ref()),
            )
            .await
            {
                Ok(()) => "ok".into(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        status.incomplete_uploads = self
            .cold
            .incomplete_uploads()
            .await
            .map(|u| u.len() as u64)
            .unwrap_or(0);
        Ok(status)
    }

    /// One policy pass now (age, watermarks, archive class, orphan uploads); each move
    /// it makes is audited as the tiering worker's, and the pass as `principal`'s.
    pub async fn tier_pass(&self, principal: &Principal) -> Result<PassReport> {
        self.authorize(principal, Role::Admin, "tier_pass", &[])?;
        self.ingest()?;
        let report = self.tiering.run_pass().await;
        let outcome = match &report {
            Ok(r) => format!(
                "policy pass: {} moved, {} failed",
                r.moved.len(),
                r.failed.len()
            ),
            Err(e) => format!("policy pass failed: {e}"),
        };
        self.audit(principal, "tier_pass", Vec::new(), outcome)
            .await;
        Ok(report?)
    }

    /// Forces one study to `to` now; audited as `tier_move` by `principal`.
    pub async fn tier_move(
        &self,
        principal: &Principal,
        study_uid: &str,
        to: TierTarget,
    ) -> Result<MoveReport> {
        self.authorize(
            principal,
            Role::Admin,
            "tier_move",
            &[study_uid.to_string()],
        )?;
        self.ingest()?;
        if !crate::dicom::part10::is_valid_uid(study_uid) {
            return Err(Error::InvalidRequest(format!(
                "{study_uid:?} is not a valid Study Instance UID"
            )));
        }
        let _busy = self.tiering.busy.lock().await;
        let result = force_move_locked(&self.tiering, study_uid, to.as_str()).await;
        self.tiering
            .audit_move(
                principal.actor(),
                study_uid,
                &format!("forced to {}", to.as_str()),
                &result,
            )
            .await;
        Ok(result?)
    }
}
