//! Find: a typed [`Query`] over the index, answers streamed as they are found.
//!
//! A C-FIND identifier ([`Query::parse`]) and URL parameters ([`Query::from_keys`]) build
//! the same query; [`Archive::find`] runs it on the blocking pool ([`crate::query`]'s
//! matching, PS3.4 C.2.2.2) and hands each match through a small bounded channel, so
//! results are never collected whole and a caller that stops reading (C-CANCEL, a closed
//! connection) stops the search. The search task writes the audit record when it ends —
//! with the keys asked and the number of matches handed over — whether the caller read
//! everything, cancelled, or went away.

use super::{Archive, Error, Principal};
use crate::query::{self, Answer, Model, Query};
use tokio::sync::mpsc;

/// Matches handed over but not yet taken, at most.
const AHEAD: usize = 32;

/// A running query; see [`Archive::find`].
pub struct FindStream {
    answers: mpsc::Receiver<Answer>,
    search: tokio::task::JoinHandle<Result<usize, query::QueryError>>,
}

impl Archive {
    /// Starts `query` under `model` (Patient or Study Root) for `principal`. Must be
    /// called within a tokio runtime.
    pub fn find(&self, principal: &Principal, model: Model, query: Query) -> FindStream {
        let (tx, answers) = mpsc::channel::<Answer>(AHEAD);
        let this = self.clone();
        let principal = principal.clone();
        let search = tokio::task::spawn_blocking(move || {
            let mut found = 0usize;
            let result = query::find_each(this.index.as_ref(), model, &query, &mut |answer| {
                let sent = tx.blocking_send(answer).is_ok();
                found += sent as usize;
                sent
            });
            let keys: Vec<String> = query
                .keys
                .iter()
                .filter(|k| !k.value.is_empty())
                .map(|k| format!("({:04X},{:04X})={}", k.tag >> 16, k.tag & 0xFFFF, k.value))
                .collect();
            let level = query.level.keyword();
            let outcome = match &result {
                Ok(()) => format!("{level}: {found} matches"),
                Err(e) => format!("{level}: failed: {e}"),
            };
            this.audit_blocking(&principal, "query", keys, outcome);
            result.map(|()| found)
        });
        FindStream { answers, search }
    }
}

impl FindStream {
    /// The next match, or `None` when the search has ended (see [`FindStream::finish`]).
    pub async fn next(&mut self) -> Option<Answer> {
        self.answers.recv().await
    }

    /// Stops the search (its channel closes) and waits for it to end.
    pub async fn cancel(self) {
        drop(self.answers);
        let _ = self.search.await;
    }

    /// Waits for the search to end; the number of matches, or why it failed.
    pub async fn finish(self) -> Result<usize, Error> {
        drop(self.answers);
        self.search
            .await
            .map_err(|e| Error::Internal(format!("query task failed: {e}")))?
            .map_err(Error::Query)
    }
}
