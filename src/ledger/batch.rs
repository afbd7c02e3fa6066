//! Natural batching of ledger writes: callers wait for their own answer as if they ran their own
//! statement, but whatever requests are queued when a statement starts go into that statement.
//! Under load one round trip (and one commit) serves many deliveries; when idle a request runs
//! at once, alone, with no added delay. Each request still gets its own result.
//!
//! A batch that Postgres refuses because of a value (a data error, SQLSTATE class 22: a NUL in a
//! text, a string too long) is split in halves, and those again, until the requests carrying such
//! values run alone and get their own error: their companions get their normal results. Any other
//! error fails the whole batch; nothing of it was written and the callers retry.

use std::future::Future;
use std::ops::{Deref, Range};
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// A database error shared by every request of the batch it failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct LedgerError(pub Arc<sqlx::Error>);

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        Self(Arc::new(e))
    }
}

impl LedgerError {
    /// A value of the request was refused (SQLSTATE class 22): retrying it cannot help, and in a
    /// batch it was one request's value, not the others'.
    pub(crate) fn is_data_error(&self) -> bool {
        crate::db::is_data_error(&self.0)
    }
}

type Reply<Resp> = oneshot::Sender<Result<Resp, LedgerError>>;
type Job<Req, Resp> = (Req, Reply<Resp>);

/// The requests one statement carries: the whole batch or a part of it, shared (not copied) so
/// that a refused batch can be run again in parts.
pub(crate) struct Batch<Req> {
    reqs: Arc<[Req]>,
    range: Range<usize>,
}

impl<Req> Deref for Batch<Req> {
    type Target = [Req];

    fn deref(&self) -> &[Req] {
        &self.reqs[self.range.clone()]
    }
}

/// Sends requests to a task that runs them in batches of up to `max`, at most `parallel` at once.
pub(crate) struct Batcher<Req, Resp> {
    tx: mpsc::UnboundedSender<Job<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<Req: Send + Sync + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// `run` executes one batch and returns one result per request, in order (or one error for
    /// all). Must be called within a tokio runtime.
    pub(crate) fn spawn<F, Fut>(max: usize, parallel: usize, run: F) -> Self
    where
        F: Fn(Batch<Req>) -> Fut + Send + Sync + 'static,
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
                    run_and_answer(&*run, jobs).await;
                });
            }
        });
        Self { tx }
    }

    pub(crate) async fn call(&self, req: Req) -> Result<Resp, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let gone = || LedgerError::from(sqlx::Error::PoolClosed);
        self.tx.send((req, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Runs a batch and answers each of its requests; on a data error, runs its halves instead (one
/// after the other, in the batch's slot), down to single requests.
async fn run_and_answer<Req, Resp, F, Fut>(run: &F, jobs: Vec<Job<Req, Resp>>)
where
    F: Fn(Batch<Req>) -> Fut,
    Fut: Future<Output = Result<Vec<Result<Resp, LedgerError>>, LedgerError>>,
{
    let (reqs, replies): (Vec<Req>, Vec<Reply<Resp>>) = jobs.into_iter().unzip();
    let reqs: Arc<[Req]> = reqs.into();
    let mut replies: Vec<Option<Reply<Resp>>> = replies.into_iter().map(Some).collect();
    let mut answer = |range: Range<usize>, results: Vec<Result<Resp, LedgerError>>| {
        for (reply, r) in replies[range].iter_mut().zip(results) {
            if let Some(reply) = reply.take() {
                let _ = reply.send(r);
            }
        }
    };
    // Parts still to run, the next one last.
    let mut todo = Vec::new();
    todo.push(0..reqs.len());
    while let Some(range) = todo.pop() {
        let n = range.len();
        let batch = Batch {
            reqs: reqs.clone(),
            range: range.clone(),
        };
        let failed = |e: LedgerError| (0..n).map(|_| Err(e.clone())).collect();
        match run(batch).await {
            Ok(results) if results.len() == n => answer(range, results),
            Ok(results) => {
                let e = sqlx::Error::Protocol(format!("batch of {n} returned {} results", results.len()));
                answer(range, failed(e.into()));
            }
            Err(e) if n > 1 && e.is_data_error() => {
                if n == reqs.len() {
                    tracing::warn!(
                        batch = n,
                        error = %e,
                        "Postgres refused a value in a batch: running it in parts to find the request"
                    );
                }
                let mid = range.start + n / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
            }
            Err(e) => answer(range, failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_queued_together_share_a_batch_and_get_their_own_answers() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b: Batcher<u32, u32> = Batcher::spawn(64, 1, move |reqs: Batch<u32>| {
            seen.lock().unwrap().push(reqs.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(reqs.iter().map(|r| Ok(r * 2)).collect())
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

    /// A database error with an SQLSTATE, as Postgres would return it.
    #[derive(Debug)]
    struct PgError(&'static str);

    impl std::fmt::Display for PgError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for PgError {}

    impl sqlx::error::DatabaseError for PgError {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn pg_error(sqlstate: &'static str) -> LedgerError {
        sqlx::Error::Database(Box::new(PgError(sqlstate))).into()
    }

    #[test]
    fn data_errors_are_sqlstate_class_22() {
        for code in ["22021", "22001", "22003", "22P02"] {
            assert!(pg_error(code).is_data_error(), "{code}");
        }
        for code in ["40P01", "40001", "23505", "57P01"] {
            assert!(!pg_error(code).is_data_error(), "{code}");
        }
        assert!(!LedgerError::from(sqlx::Error::PoolClosed).is_data_error());
    }

    /// A batcher doubling its requests whose statement fails, with `sqlstate`, whenever the batch
    /// holds a `poison` request; it notes the size of every statement it runs.
    fn poisoned(
        sqlstate: &'static str,
        poison: fn(&u32) -> bool,
    ) -> (Batcher<u32, u32>, Arc<std::sync::Mutex<Vec<usize>>>) {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b = Batcher::spawn(64, 1, move |reqs: Batch<u32>| {
            seen.lock().unwrap().push(reqs.len());
            let poisoned = reqs.iter().any(poison);
            async move {
                if poisoned {
                    return Err(pg_error(sqlstate));
                }
                Ok(reqs.iter().map(|r| Ok(r * 2)).collect())
            }
        });
        (b, sizes)
    }

    fn thirteens(r: &u32) -> bool {
        r.is_multiple_of(13)
    }

    #[tokio::test]
    async fn a_refused_value_fails_its_own_request_and_no_other() {
        let (b, sizes) = poisoned("22021", thirteens);
        // All queued before the batcher runs (one thread): two batches, of 64 and 36.
        let answers = futures_util::future::join_all((1..=100).map(|i| b.call(i))).await;
        for (i, a) in (1..=100).zip(answers) {
            if thirteens(&i) {
                assert!(a.unwrap_err().is_data_error(), "request {i} gets its own error");
            } else {
                assert_eq!(a.unwrap(), 2 * i, "request {i} gets its answer");
            }
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(&sizes[..1], &[64], "batched first: {sizes:?}");
        assert!(sizes.contains(&36), "{sizes:?}");
        assert!(
            sizes.iter().filter(|s| **s == 1).count() >= 7,
            "each offender alone: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn one_refused_request_costs_two_statements_per_halving() {
        let (b, sizes) = poisoned("22001", |r| *r == 40);
        let answers = futures_util::future::join_all((1..=64).map(|i| b.call(i))).await;
        assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 63);
        assert!(answers[39].as_ref().unwrap_err().is_data_error());
        let mut sizes = sizes.lock().unwrap().clone();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64]);
    }

    #[tokio::test]
    async fn other_errors_fail_the_whole_batch_unsplit() {
        let (b, sizes) = poisoned("40P01", thirteens);
        let answers = futures_util::future::join_all((1..=100).map(|i| b.call(i))).await;
        for a in answers {
            assert!(
                !a.unwrap_err().is_data_error(),
                "every caller gets the deadlock and retries"
            );
        }
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![64, 36],
            "no statement beyond the two batches"
        );
    }

    #[tokio::test]
    async fn a_lone_refused_request_gets_its_error_in_one_statement() {
        let (b, sizes) = poisoned("22001", thirteens);
        assert!(b.call(26).await.unwrap_err().is_data_error());
        assert_eq!(b.call(4).await.unwrap(), 8);
        assert_eq!(*sizes.lock().unwrap(), vec![1, 1]);
    }
}
