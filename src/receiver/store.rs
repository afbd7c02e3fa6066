//! Storing what a push says, durably, before it is answered `success`: receipts through the
//! `apply_receipts` function (one round trip: advisory locks, the receipt rows, the deliveries
//! with those msgids; see the migration `receipts`), follower changes into `followers`.

use std::collections::BTreeMap;

use sqlx::PgPool;

use super::push::{Push, Receipt};
use crate::ledger::followers::{FollowSource, set_following};

/// What storing a push found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Stored {
    /// Receipts whose msgid no delivery has yet (kept; applied when the delivery is written).
    pub unknown_msgids: usize,
}

/// Stores `push` for `app_id`; returns once it is committed.
pub(crate) async fn store(pool: &PgPool, app_id: &str, push: &Push) -> Result<Stored, sqlx::Error> {
    match push {
        Push::Receipts {
            openid, at, receipts, ..
        } => {
            // One row per msgid (a push that lists one twice: the last word).
            let distinct: BTreeMap<i64, &Receipt> = receipts.iter().map(|r| (r.msgid, r)).collect();
            let rows: Vec<(i64, bool)> =
                sqlx::query_as("SELECT receipt_msgid, has_delivery FROM apply_receipts($1, $2, $3, $4, $5, $6)")
                    .bind(app_id)
                    .bind(openid.as_deref())
                    .bind(at)
                    .bind(distinct.keys().copied().collect::<Vec<i64>>())
                    .bind(distinct.values().map(|r| r.status.as_str()).collect::<Vec<_>>())
                    .bind(distinct.values().map(|r| r.wechat_status.as_str()).collect::<Vec<_>>())
                    .fetch_all(pool)
                    .await?;
            Ok(Stored {
                unknown_msgids: rows.iter().filter(|(_, matched)| !matched).count(),
            })
        }
        Push::Follow { openid, followed, at } => {
            set_following(pool, app_id, openid, *followed, *at, FollowSource::Push).await?;
            Ok(Stored::default())
        }
        Push::Other => Ok(Stored::default()),
    }
}
