//! Holding events' waiting deliveries and cancellations, batched (`crate::ledger::batch`): the
//! events a worker has in flight share one transaction and one commit, each with its own answer.
//! One event alone still gets its own transaction at once.
//!
//! The batch keeps what one event's transaction guaranteed (see `store.rs`): every cancel key of
//! the batch is locked first, in key order, so a batch serializes with any other transaction
//! storing or cancelling the same keys; the cancellations are applied before the waiting
//! deliveries are stored, so a cancellation in the same batch is seen by the delivery it cancels,
//! in whatever order the two events arrived.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;

use super::store::{self, Cancellation, Held, Waiting};
use crate::event::DeliveryKey;
use crate::ledger::batch::{Batch, Batcher, LedgerError};

/// Most events one transaction carries.
const HOLD_MAX: usize = 256;
/// Hold transactions of one worker in flight at once: one keeps the batches full.
const HOLD_PARALLEL: usize = 1;

/// One event's waiting deliveries and the cancellations it brings.
#[derive(Debug)]
pub(crate) struct HoldRequest {
    pub waiting: Vec<Waiting>,
    pub cancellations: Vec<Cancellation>,
}

/// The worker's batcher of holds.
#[derive(Clone)]
pub(crate) struct Holds(Batcher<Arc<HoldRequest>, Held>);

impl Holds {
    /// Spawns the batcher: call within a tokio runtime.
    pub(crate) fn new(pool: PgPool) -> Self {
        Self(Batcher::spawn(HOLD_MAX, HOLD_PARALLEL, move |batch| {
            let pool = pool.clone();
            async move {
                let started = std::time::Instant::now();
                let r = crate::db::bounded(hold_batch(&pool, &batch)).await;
                crate::ledger::statement_done("hold", batch.len(), started);
                r
            }
        }))
    }

    /// Stores an event's waiting deliveries and applies its cancellations; answered once they are
    /// committed. A data error is this event's own (its batch is split until it runs alone).
    /// Shared, not copied: a database retry sends the same request again.
    pub(crate) async fn hold(&self, request: Arc<HoldRequest>) -> Result<Held, LedgerError> {
        self.0.call(request).await
    }
}

/// One transaction for the batch: lock every cancel key, cancel, store, notify the due loops if
/// anything falls due soon, commit. What each event's rows became, in the batch's order.
async fn hold_batch(
    pool: &PgPool,
    batch: &Batch<Arc<HoldRequest>>,
) -> Result<Vec<Result<Held, LedgerError>>, LedgerError> {
    let waiting: Vec<&Waiting> = batch.iter().flat_map(|r| &r.waiting).collect();
    let cancellations: Vec<(usize, &Cancellation)> = batch
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.cancellations.iter().map(move |c| (i, c)))
        .collect();
    let mut tx = crate::db::begin(pool).await?;
    store::lock_keys(&mut tx, &waiting, cancellations.iter().map(|(_, c)| *c)).await?;
    let mut held: Vec<Held> = (0..batch.len()).map(|_| Held::default()).collect();
    if !cancellations.is_empty() {
        for i in store::cancel(&mut tx, &cancellations).await? {
            if let Some(h) = held.get_mut(i) {
                h.cancelled_others += 1;
            }
        }
    }
    if !waiting.is_empty() {
        let stored = store::store(&mut tx, &waiting).await?;
        if stored.values().any(|(_, soon)| *soon) {
            store::notify_due(&mut tx).await?;
        }
        count_stored(batch, &stored, &mut held);
    }
    tx.commit().await?;
    Ok(held.into_iter().map(Ok).collect())
}

/// Each stored row counted for the first event of the batch that carries its key (a copy of a
/// row stored before, or by an earlier event of the batch, changes nothing).
fn count_stored(batch: &[Arc<HoldRequest>], stored: &HashMap<DeliveryKey, (String, bool)>, held: &mut [Held]) {
    let mut seen = std::collections::HashSet::new();
    for (i, r) in batch.iter().enumerate() {
        for w in &r.waiting {
            if !seen.insert(&w.key) {
                continue;
            }
            match stored.get(&w.key).map(|(s, _)| s.as_str()) {
                Some("scheduled") => held[i].scheduled += 1,
                Some("cancelled") => held[i].cancelled += 1,
                Some(_) => held[i].expired += 1,
                None => {}
            }
        }
    }
}
