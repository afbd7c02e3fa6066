//! Storing what a push says, durably, before it is answered `success`. Receipts go through the
//! `apply_receipts` function (advisory locks, the receipt rows, the deliveries with those msgids;
//! see the migration `receipts`), batched: whatever receipts wait when a call starts share that
//! call and its one commit (under load, one fsync serves many pushes; when idle, a push runs at
//! once, alone), each push answered only after the commit. Follower changes go to `followers`,
//! consent choices to `consent_log` (see `crate::ledger::consent`).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::platform_push::{PlatformInfo, PlatformPush};
use super::push::{Push, Receipt};
use crate::ledger::consent::{Choice, record_push};
use crate::ledger::followers::{FollowSource, set_following};
use crate::platform::pushes;

/// Most receipts one call carries.
const BATCH_MAX: usize = 512;

/// What storing a push found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stored {
    /// Receipts whose msgid no delivery has yet (kept; applied when the delivery is written).
    pub unknown_msgids: usize,
}

/// A database error, shared by every push of the call it failed.
pub(crate) type StoreError = Arc<sqlx::Error>;

/// One push's receipts, waiting for a call.
struct Job {
    app_id: String,
    openid: Option<String>,
    at: DateTime<Utc>,
    receipts: Vec<Receipt>,
    reply: oneshot::Sender<Result<Stored, StoreError>>,
}

/// Stores pushes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    pool: PgPool,
    receipts: mpsc::UnboundedSender<Job>,
}

impl Store {
    /// Spawns the receipts writer: call within a tokio runtime.
    pub(crate) fn new(pool: PgPool) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let writer_pool = pool.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                let mut receipts = jobs[0].receipts.len();
                while receipts < BATCH_MAX {
                    match rx.try_recv() {
                        Ok(job) => {
                            receipts += job.receipts.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                write_and_answer(&writer_pool, jobs).await;
            }
        });
        Self { pool, receipts: tx }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores `push` for `app_id`; returns once it is committed.
    pub(crate) async fn store(&self, app_id: &str, push: &Push) -> Result<Stored, StoreError> {
        match push {
            Push::Receipts {
                openid, at, receipts, ..
            } => {
                let (reply, answer) = oneshot::channel();
                let job = Job {
                    app_id: app_id.to_string(),
                    openid: openid.clone(),
                    at: *at,
                    receipts: receipts.clone(),
                    reply,
                };
                let gone = || Arc::new(sqlx::Error::PoolClosed);
                self.receipts.send(job).map_err(|_| gone())?;
                answer.await.map_err(|_| gone())?
            }
            Push::Follow { openid, followed, at } => {
                set_following(&self.pool, app_id, openid, *followed, *at, FollowSource::Push).await?;
                Ok(Stored::default())
            }
            Push::Consent {
                openid,
                at,
                created,
                consents,
                ..
            } => {
                let choices: Vec<Choice<'_>> = consents
                    .iter()
                    .map(|c| Choice {
                        template_id: &c.template_id,
                        kind: c.choice.as_str(),
                    })
                    .collect();
                record_push(&self.pool, app_id, openid, &choices, *at, *created).await?;
                Ok(Stored::default())
            }
            Push::Platform(p) => {
                store_platform(&self.pool, p).await?;
                Ok(Stored::default())
            }
            Push::Other => Ok(Stored::default()),
        }
    }
}

/// A platform's push: the ticket kept, the code kept to exchange, or the merchant revoked.
async fn store_platform(pool: &PgPool, p: &PlatformPush) -> Result<(), sqlx::Error> {
    let component = p.component_appid.as_str();
    match &p.info {
        PlatformInfo::Ticket { ticket } => {
            pushes::keep_ticket(pool, component, ticket, p.at).await?;
        }
        PlatformInfo::Authorized {
            authorizer_appid,
            code,
            code_expires_at,
            update,
        } => {
            let a = pushes::Authorization {
                component_appid: component,
                authorizer_appid,
                code,
                code_expires_at: *code_expires_at,
                update: *update,
                at: p.at,
            };
            pushes::keep_authorization(pool, &a).await?;
        }
        PlatformInfo::Unauthorized { authorizer_appid } => {
            pushes::revoke(pool, component, authorizer_appid, p.at).await?;
        }
    }
    Ok(())
}

/// Runs one call for `jobs` and answers each. A value Postgres refuses (SQLSTATE class 22) is
/// one push's: the pushes are then written one by one, so only that one fails.
async fn write_and_answer(pool: &PgPool, jobs: Vec<Job>) {
    match write(pool, &jobs).await {
        Err(e) if jobs.len() > 1 && crate::db::is_data_error(&e) => {
            for job in jobs {
                let result = write(pool, std::slice::from_ref(&job)).await;
                let _ = job.reply.send(result.map(|mut r| r.remove(0)).map_err(Arc::new));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        Ok(results) => {
            for (job, stored) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(Ok(stored));
            }
        }
    }
}

/// What `apply_receipts` says of one receipt.
#[derive(sqlx::FromRow)]
struct Applied {
    receipt_app_id: String,
    receipt_msgid: i64,
    has_delivery: bool,
    deferred: bool,
}

/// One call of `apply_receipts` for these receipts; with `wait`, it waits for busy msgid locks
/// (only ever for one receipt: see the function's comment on deadlocks).
async fn call(pool: &PgPool, items: &[(&Job, &Receipt)], wait: bool) -> Result<Vec<Applied>, sqlx::Error> {
    sqlx::query_as(
        "SELECT receipt_app_id, receipt_msgid, has_delivery, deferred
           FROM apply_receipts($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(items.iter().map(|(j, _)| j.app_id.as_str()).collect::<Vec<_>>())
    .bind(items.iter().map(|(_, r)| r.msgid).collect::<Vec<_>>())
    .bind(items.iter().map(|(j, _)| j.openid.as_deref()).collect::<Vec<_>>())
    .bind(items.iter().map(|(_, r)| r.status.as_str()).collect::<Vec<_>>())
    .bind(items.iter().map(|(_, r)| r.wechat_status.as_str()).collect::<Vec<_>>())
    .bind(items.iter().map(|(j, _)| j.at).collect::<Vec<_>>())
    .bind(wait)
    .fetch_all(pool)
    .await
}

/// The receipts of `jobs`: one call for all, then one call each for those whose msgid was being
/// written right then (deferred); what each job found.
async fn write(pool: &PgPool, jobs: &[Job]) -> Result<Vec<Stored>, sqlx::Error> {
    let items: Vec<(&Job, &Receipt)> = jobs
        .iter()
        .flat_map(|j| j.receipts.iter().map(move |r| (j, r)))
        .collect();
    let mut applied = call(pool, &items, false).await?;
    let deferred: HashSet<(String, i64)> = applied
        .iter()
        .filter(|a| a.deferred)
        .map(|a| (a.receipt_app_id.clone(), a.receipt_msgid))
        .collect();
    for item in items
        .iter()
        .filter(|(j, r)| deferred.contains(&(j.app_id.clone(), r.msgid)))
    {
        applied.extend(call(pool, std::slice::from_ref(item), true).await?);
    }
    let unknown: HashSet<(String, i64)> = applied
        .into_iter()
        .filter(|a| !a.has_delivery && !a.deferred)
        .map(|a| (a.receipt_app_id, a.receipt_msgid))
        .collect();
    Ok(jobs
        .iter()
        .map(|j| Stored {
            unknown_msgids: j
                .receipts
                .iter()
                .filter(|r| unknown.contains(&(j.app_id.clone(), r.msgid)))
                .count(),
        })
        .collect())
}
