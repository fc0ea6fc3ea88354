//! Readiness: can the archive do its work right now (`/readyz`)? Liveness (`/healthz`)
//! only says the process answers; readiness checks each part a store or a retrieval
//! needs: the index answers a read, the hot disk is above its free-space floor, and the
//! cold tier answers a request (its bucket exists and takes the credentials, then a HEAD
//! of an id no pack has: "not found" is an answer). The cold tier's answer is reused for
//! `[cold] readiness_interval` (30 s by default): a load balancer polling every few
//! seconds would otherwise cost three S3 requests a poll (about 26,000 a day at one poll
//! per 10 s).

use super::{blocking, Archive};
use serde::Serialize;
use strata_tiers::{BlobStore, ObjectId};

/// How long the cold tier may take to answer the readiness probe.
const COLD_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One part's state.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn of<T, E: std::fmt::Display>(r: Result<T, E>, ok: impl FnOnce(T) -> String) -> Self {
        match r {
            Ok(v) => Check {
                ok: true,
                detail: ok(v),
            },
            Err(e) => Check {
                ok: false,
                detail: e.to_string(),
            },
        }
    }
}

/// The readiness of each part; ready when all are.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub index: Check,
    pub hot: Check,
    pub cold: Check,
}

impl Archive {
    /// Probes the index, the hot disk and the cold tier (see the module docs).
    pub async fn readiness(&self) -> Readiness {
        let probe = ObjectId::of_bytes(b"strata readiness probe");
        let index = self.index.clone();
        let index = Check::of(
            blocking(move || Ok(index.has_object(&probe)?)).await,
            |_| "answers".into(),
        );
        let hot = self.hot.clone();
        let hot = Check::of(
            blocking(move || {
                hot.check_free_space_blocking()?;
                Ok(hot.free_bytes_blocking()?)
            })
            .await,
            |free| format!("{} MiB free", free / (1024 * 1024)),
        );
        // one probe at a time; a recent answer is reused
        let mut cached = self.cold_probe.lock().await;
        let cold = match cached.as_ref() {
            Some((at, check)) if at.elapsed() < self.config.cold.readiness_interval => Check {
                ok: check.ok,
                detail: format!(
                    "{} (checked {} s ago)",
                    check.detail,
                    at.elapsed().as_secs()
                ),
            },
            _ => {
                let check = self.probe_cold().await;
                *cached = Some((std::time::Instant::now(), check.clone()));
                check
            }
        };
        drop(cached);
        Readiness {
            ready: index.ok && hot.ok && cold.ok,
            index,
            hot,
            cold,
        }
    }

    /// Asks the cold tier (3 requests: HeadBucket, the archive marker, a HEAD).
    async fn probe_cold(&self) -> Check {
        let probe = ObjectId::of_bytes(b"strata readiness probe");
        let probe_cold = async {
            // the bucket first: a HEAD of a missing object in a missing bucket is a
            // 404 either way (a HEAD answer has no body to say which)
            self.cold.check_bucket().await.map_err(|e| e.to_string())?;
            // a tier another archive claimed cannot take this one's packs
            crate::storage::cold_tier::check_marker(
                &self.config,
                &self.cold,
                Some(self.index.as_ref()),
            )
            .await
            .map_err(|e| e.to_string())?;
            self.cold.head(&probe).await.map(|_| ()).or_else(|e| {
                if e.is_not_found() {
                    Ok(())
                } else {
                    Err(e.to_string())
                }
            })
        };
        match tokio::time::timeout(COLD_PROBE_TIMEOUT, probe_cold).await {
            Err(_) => Check {
                ok: false,
                detail: format!(
                    "{}: no answer within {COLD_PROBE_TIMEOUT:?}",
                    self.cold.describe()
                ),
            },
            Ok(Err(e)) => Check {
                ok: false,
                detail: format!("{}: {e}", self.cold.describe()),
            },
            Ok(_) => Check {
                ok: true,
                detail: format!("{} answers", self.cold.describe()),
            },
        }
    }
}
