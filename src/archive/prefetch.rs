//! Prior prefetch: when an order arrives (HL7 ORM^O01 / OMI^O23), the patient's prior
//! studies that live only in the cold tier are brought back to hot disk in the
//! background, so the radiologist who opens the new study finds them there
//! (docs/patients.md "Prior prefetch").
//!
//! Which priors is `[prefetch]`: the `max_studies` most recent studies of the patient
//! (by its current identity, as C-FIND finds them), of `modalities` when given, no
//! older than `max_age`. The order is recorded (its control id: exactly once) and
//! audited (`prefetch`, naming the studies) before it is acknowledged; each move is a
//! `tier_move` record of its own, attributed to the order's sender.

use super::principal::Role;
use super::tier::TierTarget;
use super::{blocking, Archive, Error, Principal};
use crate::index::Tier;
use crate::query::{self, tags, Level, Model, Query};
use serde::Serialize;

/// What an order set going.
#[derive(Debug, Clone, Serialize)]
pub struct PrefetchOutcome {
    /// The control id was processed before: nothing new was started.
    pub duplicate: bool,
    /// The priors chosen (Study Instance UIDs), newest first.
    pub studies: Vec<String>,
    /// Those of them with objects only in the cold tier, being brought back.
    pub recalled: Vec<String>,
    pub summary: String,
}

impl Archive {
    /// Chooses the priors of `patient_id` and starts bringing those in cold back to hot
    /// (a background task); see the module docs. `principal` needs `admin`.
    pub async fn prefetch_priors(
        &self,
        principal: &Principal,
        patient_id: &str,
        control_id: Option<&str>,
    ) -> Result<PrefetchOutcome, Error> {
        self.authorize(principal, Role::Admin, "prefetch", &[])?;
        self.ingest()?;
        if patient_id.trim().is_empty() {
            return Err(Error::InvalidRequest(
                "the order names no patient (PID-3)".into(),
            ));
        }
        let _serial = self.patient_changes.lock().await;
        let (this, p, pid, cid) = (
            self.clone(),
            principal.clone(),
            patient_id.to_string(),
            control_id.map(str::to_string),
        );
        let outcome =
            blocking(move || this.choose_priors_blocking(&p, &pid, cid.as_deref())).await?;
        if !outcome.duplicate && !outcome.recalled.is_empty() {
            let (this, p, studies) = (self.clone(), principal.clone(), outcome.recalled.clone());
            tokio::spawn(async move {
                for study in studies {
                    match this.tier_move(&p, &study, TierTarget::Hot).await {
                        Ok(r) => tracing::info!(
                            study,
                            objects = r.objects_recalled,
                            "prefetch: prior brought back to hot"
                        ),
                        Err(e) => {
                            tracing::warn!(study, error = %e, "prefetch: prior not brought back")
                        }
                    }
                }
            });
        }
        Ok(outcome)
    }

    fn choose_priors_blocking(
        &self,
        principal: &Principal,
        patient_id: &str,
        control_id: Option<&str>,
    ) -> Result<PrefetchOutcome, Error> {
        let index = self.index.as_ref();
        if let Some(earlier) = self.earlier_message(control_id)? {
            return Ok(PrefetchOutcome {
                duplicate: true,
                studies: Vec::new(),
                recalled: Vec::new(),
                summary: earlier,
            });
        }
        let policy = &self.config.prefetch;
        let query = Query::from_keys(
            Level::Study,
            &[
                (tags::PATIENT_ID, patient_id),
                (tags::STUDY_INSTANCE_UID, ""),
                (tags::STUDY_DATE, ""),
                (tags::MODALITIES_IN_STUDY, ""),
            ],
        );
        let oldest = (!policy.max_age.is_zero()).then(|| {
            let since = std::time::SystemTime::now() - policy.max_age;
            humantime::format_rfc3339_seconds(since)
                .to_string()
                .chars()
                .filter(char::is_ascii_digit)
                .take(8)
                .collect::<String>()
        });
        let mut candidates: Vec<(String, String)> = query::find(index, Model::StudyRoot, &query)?
            .into_iter()
            .filter(|a| {
                policy.modalities.is_empty()
                    || a.get(&tags::MODALITIES_IN_STUDY).is_some_and(|m| {
                        m.split('\\')
                            .any(|m| policy.modalities.iter().any(|p| p == m))
                    })
            })
            .filter(|a| {
                let date = a.get(&tags::STUDY_DATE).map_or("", String::as_str);
                oldest.as_ref().is_none_or(|o| date >= o.as_str())
            })
            .filter_map(|a| {
                Some((
                    a.get(&tags::STUDY_DATE).cloned().unwrap_or_default(),
                    a.get(&tags::STUDY_INSTANCE_UID)?.clone(),
                ))
            })
            .collect();
        candidates.sort_by(|a, b| b.cmp(a));
        candidates.truncate(policy.max_studies);
        let studies: Vec<String> = candidates.into_iter().map(|(_, uid)| uid).collect();
        let mut recalled = Vec::new();
        for study in &studies {
            let mut cold_only = false;
            for e in index.instances_of_study(study)? {
                let id = e
                    .record
                    .current()
                    .and_then(|v| strata_tiers::ObjectId::from_hex(&v.id));
                if let Some(id) = id {
                    cold_only |= index.object(&id)?.is_some_and(|r| r.tier == Tier::Cold);
                }
                if cold_only {
                    break;
                }
            }
            if cold_only {
                recalled.push(study.clone());
            }
        }
        let summary = format!(
            "{}prefetch for {patient_id}: {} priors, {} brought back from cold",
            control_id.map(|c| format!("{c}: ")).unwrap_or_default(),
            studies.len(),
            recalled.len()
        );
        // on record before it is acknowledged: the message (exactly once) and the audit
        if let Some(cid) = control_id {
            index.set_patient_links(&[], Some((cid, summary.as_str())))?;
        }
        self.audit_synced(principal, "prefetch", studies.clone(), summary.clone())?;
        Ok(PrefetchOutcome {
            duplicate: false,
            studies,
            recalled,
            summary,
        })
    }
}
