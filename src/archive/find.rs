//! Find: a typed [`Query`] over the index, answers streamed as they are found.
//!
//! A C-FIND identifier ([`Query::parse`]) and URL parameters ([`Query::from_keys`]) build
//! the same query; [`Archive::find`] runs it on the blocking pool ([`crate::query`]'s
//! matching, PS3.4 C.2.2.2) and hands the matches through a small bounded channel (one
//! at a time while the reader keeps up, in batches when it does not), so
//! results are never collected whole and a caller that stops reading (C-CANCEL, a closed
//! connection) stops the search.
//!
//! The stream writes the audit record when it ends — with the keys asked and the number
//! of matches delivered to the caller — whether the caller read everything
//! ([`FindStream::finish`]), cancelled ([`FindStream::cancel`]) or went away (dropped:
//! recorded as interrupted).

use super::principal::Role;
use super::{Archive, Error, Principal};
use crate::query::{self, Answer, Model, Query};
use tokio::sync::mpsc;

/// Batches of matches handed over but not yet taken, at most.
const AHEAD: usize = 8;
/// Matches per batch at most. The search hands each match over at once while the reader
/// keeps up (the channel has room); once it is full, it gathers up to this many before
/// it waits. Handing over one match per freed slot woke the search thread once per
/// match: a 7-day C-FIND over a 10 M index spent more time in those wake-ups than in
/// the search (docs/benchmarks.md).
const BATCH: usize = 32;

/// A running query; see [`Archive::find`].
pub struct FindStream {
    answers: Option<mpsc::Receiver<Vec<Answer>>>,
    /// Of the last batch received, the matches not yet taken.
    taken: std::collections::VecDeque<Answer>,
    search: Option<tokio::task::JoinHandle<Result<(), query::QueryError>>>,
    archive: Archive,
    principal: Principal,
    keys: Vec<String>,
    level: &'static str,
    delivered: usize,
    audited: bool,
}

impl Archive {
    /// Starts `query` under `model` (Patient or Study Root) for `principal`, who needs
    /// the `viewer` role ([`Error::Forbidden`]); a patient-restricted principal's query
    /// is narrowed to its patient ([`Archive::narrow_query`]). Must be called within a
    /// tokio runtime.
    pub fn find(
        &self,
        principal: &Principal,
        model: Model,
        query: Query,
    ) -> Result<FindStream, Error> {
        let (tx, answers) = mpsc::channel::<Vec<Answer>>(AHEAD);
        let keys: Vec<String> = query
            .keys
            .iter()
            .filter(|k| !k.value.is_empty())
            .map(|k| format!("({:04X},{:04X})={}", k.tag >> 16, k.tag & 0xFFFF, k.value))
            .collect();
        let level = query.level.keyword();
        self.authorize(principal, Role::Viewer, "query", &keys)?;
        let index = self.index.clone();
        let search = self.narrow_query(principal, query).map(|query| {
            tokio::task::spawn_blocking(move || {
                let mut batch = Vec::new();
                query::find_each(index.as_ref(), model, &query, &mut |answer| {
                    batch.push(answer);
                    hand_over(&tx, &mut batch)
                })?;
                if !batch.is_empty() {
                    let _ = tx.blocking_send(batch);
                }
                Ok(())
            })
        });
        Ok(FindStream {
            answers: Some(answers),
            taken: Default::default(),
            search,
            archive: self.clone(),
            principal: principal.clone(),
            keys,
            level,
            delivered: 0,
            audited: false,
        })
    }
}

/// Hands `batch` (the matches gathered so far) to the reader when the channel has room,
/// or when it holds [`BATCH`] matches (then waiting for room); `false` once the reader
/// is gone, which stops the search.
fn hand_over(tx: &mpsc::Sender<Vec<Answer>>, batch: &mut Vec<Answer>) -> bool {
    match tx.try_send(std::mem::take(batch)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(full)) if full.len() < BATCH => {
            *batch = full;
            true
        }
        Err(mpsc::error::TrySendError::Full(full)) => tx.blocking_send(full).is_ok(),
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

impl FindStream {
    /// The next match, or `None` when the search has ended (see [`FindStream::finish`]).
    pub async fn next(&mut self) -> Option<Answer> {
        loop {
            if let Some(answer) = self.taken.pop_front() {
                self.delivered += 1;
                return Some(answer);
            }
            let batch = self.answers.as_mut()?.recv().await?;
            self.taken.extend(batch);
        }
    }

    /// Stops the search (its channel closes), waits for it to end, and records the
    /// query as cancelled.
    pub async fn cancel(mut self) {
        self.answers = None;
        if let Some(search) = self.search.take() {
            let _ = search.await;
        }
        let outcome = format!("{}: cancelled after {} matches", self.level, self.delivered);
        self.record(outcome).await;
    }

    /// Waits for the search to end (call once [`FindStream::next`] gave `None`) and
    /// records it; the number of matches delivered, or why the search failed.
    pub async fn finish(mut self) -> Result<usize, Error> {
        self.answers = None;
        let result = match self.search.take() {
            Some(search) => search
                .await
                .map_err(|e| Error::Internal(format!("query task failed: {e}")))
                .and_then(|r| r.map_err(Error::Query)),
            None => Ok(()),
        };
        let outcome = match &result {
            Ok(()) => format!("{}: {} matches", self.level, self.delivered),
            Err(e) => format!("{}: failed: {e}", self.level),
        };
        self.record(outcome).await;
        result.map(|()| self.delivered)
    }

    async fn record(&mut self, outcome: String) {
        self.audited = true;
        let keys = std::mem::take(&mut self.keys);
        self.archive
            .audit(&self.principal, "query", keys, outcome)
            .await;
    }
}

impl Drop for FindStream {
    fn drop(&mut self) {
        if !self.audited {
            let outcome = format!(
                "{}: interrupted after {} matches",
                self.level, self.delivered
            );
            let keys = std::mem::take(&mut self.keys);
            self.archive
                .audit_on_drop(&self.principal, "query", keys, outcome);
        }
    }
}
