//! Library templates on merchants' accounts (docs/interface.md §10, "Templates per merchant"):
//! the id of a library template on one merchant's account, added with `api_add_template` once
//! for the whole fleet. Table `merchant_templates` holds one row per (merchant, library id,
//! keywords); its row lock is the single flight, as for tokens: whoever holds it is the only
//! process that asks WeChat, the others wait and read the id it stored. A refusal (such as 45026,
//! the account's 25 templates) is stored with WeChat's errcode and answered from the row for an
//! hour, or until `platform sync` asks again; token errors and WeChat's hiccups are not stored.
//! Within a process a known id costs no database call, and one task per key waits on the row.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use secrecy::SecretString;
use sqlx::PgPool;

use futures_util::StreamExt;

use super::client::{CallError, ComponentApi};
use super::tokens::{Platform, PlatformError, PlatformTokens};
use crate::flights::Flights;
use crate::retry::{ErrorClass, classify_send};
use crate::template::library::Library;

/// How long a stored refusal is answered without asking WeChat again.
const REFUSAL_KEPT_SECS: f64 = 3600.0;

type Key = (String, Arc<Library>);

/// The merchants' library template ids, fleet-wide.
pub(crate) struct MerchantTemplates {
    pool: PgPool,
    api: ComponentApi,
    known: RwLock<HashMap<Key, String>>,
    flights: Flights<Key>,
}

#[derive(sqlx::FromRow)]
struct Row {
    template_id: Option<String>,
    errcode: Option<i64>,
    errmsg: Option<String>,
    refusal_kept: bool,
}

impl MerchantTemplates {
    pub(crate) fn new(pool: PgPool, api: ComponentApi) -> Self {
        Self {
            pool,
            api,
            known: RwLock::default(),
            flights: Flights::default(),
        }
    }

    fn known(&self, key: &Key) -> Option<String> {
        self.known.read().expect("template ids lock").get(key).cloned()
    }

    /// The merchant's id of `library`, added with `token` (the merchant's access token) if the
    /// fleet has none yet. `Ok(Err(_))`: WeChat refused or did not answer; `Err`: the database.
    pub(crate) async fn template_id(
        &self,
        authorizer_appid: &str,
        library: &Arc<Library>,
        token: &SecretString,
    ) -> Result<Result<String, CallError>, sqlx::Error> {
        let key = (authorizer_appid.to_string(), library.clone());
        if let Some(id) = self.known(&key) {
            return Ok(Ok(id));
        }
        let _flight = self.flights.enter(&key).await;
        if let Some(id) = self.known(&key) {
            return Ok(Ok(id));
        }
        let answer = self.provision(authorizer_appid, library, token, false).await?;
        if let Ok(id) = &answer {
            self.known
                .write()
                .expect("template ids lock")
                .insert(key.clone(), id.clone());
            self.flights.forget(&key);
        }
        Ok(answer)
    }

    /// WeChat no longer knows `template_id` on the merchant's account (40037: the merchant deleted
    /// it): forgotten here and in the store, unless another process already replaced it, so that
    /// the next delivery adds the template again.
    pub(crate) async fn forget(
        &self,
        authorizer_appid: &str,
        library: &Arc<Library>,
        template_id: &str,
    ) -> Result<(), sqlx::Error> {
        let key = (authorizer_appid.to_string(), library.clone());
        {
            let mut known = self.known.write().expect("template ids lock");
            if known.get(&key).is_some_and(|id| id == template_id) {
                known.remove(&key);
            }
        }
        sqlx::query(
            "DELETE FROM merchant_templates
              WHERE authorizer_appid = $1 AND library_id = $2 AND keywords = $3 AND template_id = $4",
        )
        .bind(authorizer_appid)
        .bind(&library.library_id)
        .bind(serde_json::json!(library.keywords))
        .bind(template_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Under the row's lock: the stored id or refusal (unless `again`), else WeChat's answer,
    /// stored.
    async fn provision(
        &self,
        authorizer_appid: &str,
        library: &Library,
        token: &SecretString,
        again: bool,
    ) -> Result<Result<String, CallError>, sqlx::Error> {
        let keywords = serde_json::json!(library.keywords);
        let mut tx = crate::db::begin_bounded(&self.pool).await?;
        sqlx::query(
            "INSERT INTO merchant_templates (authorizer_appid, library_id, keywords) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(authorizer_appid)
        .bind(&library.library_id)
        .bind(&keywords)
        .execute(&mut *tx)
        .await?;
        let row: Row = sqlx::query_as(
            "SELECT template_id, errcode, errmsg,
                    COALESCE(refused_at > now() - make_interval(secs => $4), false) AS refusal_kept
               FROM merchant_templates
              WHERE authorizer_appid = $1 AND library_id = $2 AND keywords = $3 FOR UPDATE",
        )
        .bind(authorizer_appid)
        .bind(&library.library_id)
        .bind(&keywords)
        .bind(REFUSAL_KEPT_SECS)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(id) = row.template_id {
            tx.commit().await?;
            return Ok(Ok(id));
        }
        if let (Some(errcode), true, false) = (row.errcode, row.refusal_kept, again) {
            tx.commit().await?;
            let errmsg = row.errmsg.unwrap_or_default();
            return Ok(Err(CallError::WeChat { errcode, errmsg }));
        }
        let answer = self
            .api
            .add_template(token, &library.library_id, &library.keywords)
            .await;
        metrics::counter!("wxnotify_platform_template_adds_total", "result" => result_label(&answer)).increment(1);
        store(&mut tx, authorizer_appid, library, &keywords, &answer).await?;
        tx.commit().await?;
        if let Ok(id) = &answer {
            tracing::info!(merchant = %authorizer_appid, library = %library.library_id, template_id = %id, "library template added to the merchant's account");
        }
        Ok(answer)
    }
}

/// What `platform sync` did for the library templates.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TemplatesReport {
    /// (merchant, template) pairs that have an id now, added or already there.
    pub provisioned: usize,
    /// Refused by WeChat (errcode stored; `platform list` shows it).
    pub refused: usize,
    /// No answer, or no merchant token: asked again on the first delivery.
    pub failed: usize,
}

impl MerchantTemplates {
    /// Ahead of time (`platform sync`): every library template on every `active` merchant of the
    /// platform, a stored refusal asked again. Eight merchants at a time.
    pub(crate) async fn provision_platform(
        &self,
        tokens: &PlatformTokens,
        p: &Platform,
        libraries: &[Library],
    ) -> Result<TemplatesReport, sqlx::Error> {
        let merchants: Vec<String> = sqlx::query_scalar(
            "SELECT authorizer_appid FROM authorizers WHERE component_appid = $1 AND state = 'active'
              ORDER BY authorizer_appid",
        )
        .bind(&p.component_appid)
        .fetch_all(&self.pool)
        .await?;
        let mut report = TemplatesReport::default();
        if libraries.is_empty() {
            return Ok(report);
        }
        let mut each = futures_util::stream::iter(
            merchants
                .iter()
                .map(|m| self.provision_merchant(tokens, p, m, libraries)),
        )
        .buffer_unordered(8);
        while let Some(one) = each.next().await {
            let one = one?;
            report.provisioned += one.provisioned;
            report.refused += one.refused;
            report.failed += one.failed;
        }
        Ok(report)
    }

    async fn provision_merchant(
        &self,
        tokens: &PlatformTokens,
        p: &Platform,
        authorizer_appid: &str,
        libraries: &[Library],
    ) -> Result<TemplatesReport, sqlx::Error> {
        let mut report = TemplatesReport::default();
        let token = match tokens.merchant(p, authorizer_appid).await {
            Ok(t) => t.token,
            Err(PlatformError::Db(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(merchant = %authorizer_appid, error = %e, "no token to add the library templates with");
                report.failed = libraries.len();
                return Ok(report);
            }
        };
        for library in libraries {
            match self.provision(authorizer_appid, library, &token, true).await? {
                Ok(_) => report.provisioned += 1,
                Err(CallError::WeChat { errcode, .. }) if classify_send(errcode) == ErrorClass::Permanent => {
                    report.refused += 1;
                }
                Err(_) => report.failed += 1,
            }
        }
        Ok(report)
    }
}

fn result_label(answer: &Result<String, CallError>) -> &'static str {
    match answer {
        Ok(_) => "added",
        Err(CallError::WeChat { errcode, .. }) if classify_send(*errcode) == ErrorClass::Permanent => "refused",
        Err(_) => "failed",
    }
}

/// Stores an id or a refusal (a permanent errcode); anything else leaves the row as it was.
async fn store(
    tx: &mut sqlx::PgConnection,
    authorizer_appid: &str,
    library: &Library,
    keywords: &serde_json::Value,
    answer: &Result<String, CallError>,
) -> Result<(), sqlx::Error> {
    let (id, errcode, errmsg) = match answer {
        Ok(id) => (Some(id.as_str()), None, None),
        Err(CallError::WeChat { errcode, errmsg }) if classify_send(*errcode) == ErrorClass::Permanent => {
            (None, Some(*errcode), Some(errmsg.as_str()))
        }
        Err(_) => return Ok(()),
    };
    sqlx::query(
        "UPDATE merchant_templates
            SET template_id = $4, errcode = $5, errmsg = $6,
                added_at = CASE WHEN $4::text IS NULL THEN added_at ELSE now() END,
                refused_at = CASE WHEN $5::bigint IS NULL THEN NULL ELSE now() END, updated_at = now()
          WHERE authorizer_appid = $1 AND library_id = $2 AND keywords = $3",
    )
    .bind(authorizer_appid)
    .bind(&library.library_id)
    .bind(keywords)
    .bind(id)
    .bind(errcode)
    .bind(errmsg)
    .execute(tx)
    .await?;
    Ok(())
}
