//! Subscription consent (docs/interface.md §12): per (app, openid, template), the credits a user
//! gave subscribe messages. Every change is a row of `consent_log` (a push's choice, a credit a
//! delivery spent, a 43101); the state in `consents` is a fold over those rows, recomputed under
//! the key's row lock (see the migration `consent`). So pushes apply idempotently and in any order
//! relative to the sends they pay for.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Ledger;
use crate::ids::{AppId, OpenId};

/// One template's word in a consent push: its template id and its `consent_log.kind`.
pub(crate) struct Choice<'a> {
    pub template_id: &'a str,
    pub kind: &'static str,
}

/// Stores one consent push (its choices share `at`, the push's time, and `created`, its
/// `CreateTime` as written, which makes a repeated push the same rows). Returns how many rows
/// were new: 0 for a repeat.
pub(crate) async fn record_push(
    pool: &PgPool,
    app_id: &str,
    openid: &str,
    choices: &[Choice<'_>],
    at: DateTime<Utc>,
    created: i64,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT apply_consent_push($1, $2, $3, $4, $5, $6)")
        .bind(app_id)
        .bind(openid)
        .bind(choices.iter().map(|c| c.template_id).collect::<Vec<_>>())
        .bind(choices.iter().map(|c| c.kind).collect::<Vec<_>>())
        .bind(at)
        .bind(created)
        .fetch_one(pool)
        .await
}

/// What a delivery found when it asked for a credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credit {
    /// One credit is this delivery's (taken now, or by an earlier copy of it).
    Taken,
    /// None to take; `blocked`: the user switched the template off in the settings.
    Missing { blocked: bool },
}

/// Whose credit: a delivery and its (app, openid, template).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConsentKey<'a> {
    pub app_id: &'a AppId,
    pub openid: &'a OpenId,
    pub template_id: &'a str,
    pub delivery_id: i64,
}

impl Ledger {
    /// Takes one credit for the delivery about to be sent (idempotent per delivery).
    pub(crate) async fn take_credit(&self, key: ConsentKey<'_>) -> Result<Credit, sqlx::Error> {
        let (granted, blocked): (bool, bool) =
            sqlx::query_as("SELECT granted, blocked FROM consent_take($1, $2, $3, $4)")
                .bind(key.app_id.as_str())
                .bind(key.openid.as_str())
                .bind(key.template_id)
                .bind(key.delivery_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(if granted {
            Credit::Taken
        } else {
            Credit::Missing { blocked }
        })
    }

    /// The send did not spend the delivery's credit: it is given back. `refused`: WeChat
    /// answered 43101, so the user has none left at all (the credits reset to zero).
    pub(crate) async fn give_back_credit(&self, key: ConsentKey<'_>, refused: bool) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1 FROM consent_give_back($1, $2, $3, $4, $5)")
            .bind(key.app_id.as_str())
            .bind(key.openid.as_str())
            .bind(key.template_id)
            .bind(key.delivery_id)
            .bind(refused)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
