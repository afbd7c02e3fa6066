//! Who follows each app (`followers`), as WeChat told us: a `subscribe`/`unsubscribe` push (the
//! receiver) or a 43004 from the send API (the delivery path). The latest word wins by its own
//! time: an older push that arrives late never overrides a newer one.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Ledger;
use crate::ids::{AppId, OpenId};

/// Where the word came from (`followers.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FollowSource {
    /// A `subscribe`/`unsubscribe` push; its time is the push's CreateTime.
    Push,
    /// The send API answered 43004 ("require subscribe"); its time is when it did.
    Errcode43004,
}

impl FollowSource {
    fn as_str(self) -> &'static str {
        match self {
            FollowSource::Push => "push",
            FollowSource::Errcode43004 => "errcode_43004",
        }
    }
}

/// Stores that `openid` follows `app_id` (or not) as of `at`, unless a word at least as new is
/// stored already. Returns whether the row changed.
pub(crate) async fn set_following(
    pool: &PgPool,
    app_id: &str,
    openid: &str,
    followed: bool,
    at: DateTime<Utc>,
    source: FollowSource,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "INSERT INTO followers AS f (app_id, openid, followed, changed_at, source)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (app_id, openid) DO UPDATE
            SET followed = EXCLUDED.followed, changed_at = EXCLUDED.changed_at,
                source = EXCLUDED.source, updated_at = now()
          WHERE EXCLUDED.changed_at >= f.changed_at
            AND (f.followed, f.changed_at) IS DISTINCT FROM (EXCLUDED.followed, EXCLUDED.changed_at)",
    )
    .bind(app_id)
    .bind(openid)
    .bind(followed)
    .bind(at)
    .bind(source.as_str())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

impl Ledger {
    /// WeChat answered 43004 for `openid` to the send that started at `sent_at`: it does not
    /// follow `app_id`. Later template messages to it end `suppressed` until a `subscribe` push
    /// newer than that says otherwise. The send's start, not the moment it is recorded: a
    /// `subscribe` pushed while the send was under way (or before its outcome was recorded) is
    /// the newer word and stays.
    pub(crate) async fn mark_unfollowed(
        &self,
        app_id: &AppId,
        openid: &OpenId,
        sent_at: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        set_following(&self.pool, app_id, openid, false, sent_at, FollowSource::Errcode43004).await
    }
}
