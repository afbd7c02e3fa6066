//! Natural batching of ledger writes: callers wait for their own answer as if they ran their own
//! statement, but whatever requests are queued when a statement starts go into that statement.
//! Under load one round trip (and one commit) serves many deliveries; when idle a request runs
//! at once, alone, with no added delay. Each request still gets its own result.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// A database error shared by every request of the batch it failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LedgerError(pub Arc<sqlx::Error>);

impl LedgerError {
    /// Postgres refused a value of the request (SQLSTATE class 22: a NUL byte, a string too
    /// long, a number out of range): retrying cannot help.
    pub(crate) fn is_data_error(&self) -> bool {
        matches!(&*self.0, sqlx::Error::Database(e) if e.code().is_some_and(|c| c.starts_with("22")))
    }
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        Self(Arc::new(e))
    }
}

type Job<Req, Resp> = (Req, oneshot::Sender<Result<Resp, LedgerError>>);

/// Sends requests to a task that runs them in batches of up to `max`, at most `parallel` at once.
pub struct Batcher<Req, Resp> {
    tx: mpsc::UnboundedSender<Job<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// `run` executes one batch and returns one result per request, in order (or one error for
    /// all). Must be called within a tokio runtime.
    pub fn spawn<F, Fut>(max: usize, parallel: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Result<Resp, LedgerError>>, LedgerError>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job<Req, Resp>>();
        let run = Arc::new(run);
        let slots = Arc::new(Semaphore::new(parallel.max(1)));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Wait for a free slot first: requests arriving meanwhile join this batch.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let mut jobs = vec![first];
                while jobs.len() < max {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let (reqs, replies): (Vec<Req>, Vec<_>) = jobs.into_iter().unzip();
                    let n = reqs.len();
                    match run(reqs).await {
                        Ok(results) if results.len() == n => {
                            for (reply, r) in replies.into_iter().zip(results) {
                                let _ = reply.send(r);
                            }
                        }
                        Ok(results) => {
                            let e = LedgerError::from(sqlx::Error::Protocol(format!(
                                "batch of {n} returned {} results",
                                results.len()
                            )));
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        Self { tx }
    }

    pub async fn call(&self, req: Req) -> Result<Resp, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let gone = || LedgerError::from(sqlx::Error::PoolClosed);
        self.tx.send((req, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_queued_together_share_a_batch_and_get_their_own_answers() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b: Batcher<u32, u32> = Batcher::spawn(64, 1, move |reqs: Vec<u32>| {
            seen.lock().unwrap().push(reqs.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(reqs.into_iter().map(|r| Ok(r * 2)).collect())
            }
        });
        let answers = futures_util::future::join_all((0..100).map(|i| b.call(i))).await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.unwrap(), 2 * i as u32);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.len() < 10, "batched, not one by one: {sizes:?}");
        assert!(sizes.iter().all(|s| *s <= 64));
    }
}
