//! Storing a platform's pushes (docs/interface.md §10), each in one statement, idempotently and
//! in any order: the latest ticket per platform (a later CreateTime wins), authorization codes
//! to exchange, and a merchant's `unauthorized` (it turns `revoked` unless a newer authorization
//! is already known).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Keeps `ticket` as `component_appid`'s latest unless a newer one is stored. Returns whether
/// it was kept.
pub(crate) async fn keep_ticket(
    pool: &PgPool,
    component_appid: &str,
    ticket: &str,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let kept = sqlx::query(
        "INSERT INTO platform_tickets AS t (component_appid, ticket, pushed_at) VALUES ($1, $2, $3)
         ON CONFLICT (component_appid) DO UPDATE
            SET ticket = EXCLUDED.ticket, pushed_at = EXCLUDED.pushed_at, received_at = now()
          WHERE EXCLUDED.pushed_at > t.pushed_at
             OR (EXCLUDED.pushed_at = t.pushed_at AND EXCLUDED.ticket <> t.ticket)",
    )
    .bind(component_appid)
    .bind(ticket)
    .bind(at)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(kept > 0)
}

/// An `authorized` / `updateauthorized` push: its code, kept until exchanged.
pub(crate) struct Authorization<'a> {
    pub component_appid: &'a str,
    pub authorizer_appid: &'a str,
    pub code: &'a str,
    pub code_expires_at: Option<DateTime<Utc>>,
    pub update: bool,
    pub at: DateTime<Utc>,
}

/// Keeps an authorization code to exchange (a repeated push changes nothing).
pub(crate) async fn keep_authorization(pool: &PgPool, a: &Authorization<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO platform_authorizations
             (component_appid, authorizer_appid, authorization_code, code_expires_at, is_update, pushed_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (authorizer_appid, authorization_code) DO NOTHING",
    )
    .bind(a.component_appid)
    .bind(a.authorizer_appid)
    .bind(a.code)
    .bind(a.code_expires_at)
    .bind(a.update)
    .bind(a.at)
    .execute(pool)
    .await?;
    Ok(())
}

/// An `unauthorized` push at `at`: the merchant is `revoked` (a row is made if none exists, so
/// that an older `authorized` arriving late cannot bring it back), unless an authorization newer
/// than `at` is known. An authorization of the same second (CreateTime counts seconds) came
/// before it: pushes of one second apply in the order they arrive. Its tokens are dropped: WeChat no longer takes them.
pub(crate) async fn revoke(
    pool: &PgPool,
    component_appid: &str,
    authorizer_appid: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO authorizers AS a (authorizer_appid, component_appid, state, revoked_at, changed_at)
         VALUES ($2, $1, 'revoked', $3, $3)
         ON CONFLICT (authorizer_appid) DO UPDATE
            SET state = 'revoked', revoked_at = EXCLUDED.revoked_at, changed_at = EXCLUDED.changed_at,
                access_token = NULL, access_expires_at = NULL, refresh_token = NULL, updated_at = now()
          WHERE a.component_appid = EXCLUDED.component_appid AND EXCLUDED.changed_at >= a.changed_at",
    )
    .bind(component_appid)
    .bind(authorizer_appid)
    .bind(at)
    .execute(pool)
    .await?;
    Ok(())
}
