//! `wxnotify platform sync` (docs/interface.md §10): first the authorization codes waiting to be
//! exchanged, then the merchants WeChat lists for a platform
//! (`api_get_authorizer_list`, with each merchant's current refresh token) against the ledger's.
//! A merchant the ledger lacks, or whose refresh token it lost (a cache gone, a row dropped), is
//! restored from WeChat's list: no merchant scans again. A merchant the ledger has as `active`
//! that WeChat no longer lists is `revoked`. A merchant the ledger has `active` with a refresh
//! token is left alone even when WeChat lists another: a refresh may have just rotated it (writing
//! the listed one could put an older token over a newer), and a refresh that meets a stale one
//! recovers it from the same list (`super::tokens`).

use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::PgPool;

use super::client::{ComponentApi, Listed};
use super::templates::{MerchantTemplates, TemplatesReport};
use super::tokens::{Platform, PlatformError, PlatformTokens};
use crate::template::library::Library;

/// `api_get_authorizer_list` pages.
const PAGE: u64 = 500;

/// What a sync did for one platform.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub component_appid: String,
    /// Authorization codes waiting to be exchanged, exchanged first.
    pub exchanged: usize,
    /// Merchants WeChat lists.
    pub listed: usize,
    /// Restored from the list: added, or given back their refresh token.
    pub restored: usize,
    /// Listed without a refresh token (authorized, code never exchanged): left as they are.
    pub without_refresh_token: usize,
    /// Ours, no longer listed: now `revoked`.
    pub revoked: usize,
    /// The library templates on the `active` merchants' accounts.
    pub templates: TemplatesReport,
}

/// Syncs one platform's merchants with WeChat's list, then adds the `libraries` to the accounts
/// of its `active` merchants that lack them (a refusal is asked again).
pub async fn sync(
    pool: &PgPool,
    api: &ComponentApi,
    p: &Platform,
    libraries: &[Library],
) -> Result<SyncReport, PlatformError> {
    let tokens = PlatformTokens::new(pool.clone(), api.clone());
    let exchanged = tokens.exchange_codes(p).await?;
    let component = tokens.component(p).await?;
    let mut listed = Vec::new();
    loop {
        let (total, page) = api
            .authorizer_list(&p.component_appid, &component, listed.len() as u64, PAGE)
            .await?;
        let empty = page.is_empty();
        listed.extend(page);
        if empty || listed.len() as u64 >= total {
            break;
        }
    }
    let mut report = SyncReport {
        component_appid: p.component_appid.clone(),
        exchanged,
        listed: listed.len(),
        ..SyncReport::default()
    };
    for m in &listed {
        if m.refresh_token.expose_secret().is_empty() {
            report.without_refresh_token += 1;
        } else if restore(pool, &p.component_appid, m).await? {
            report.restored += 1;
        }
    }
    report.revoked = revoke_unlisted(pool, &p.component_appid, &listed).await?;
    report.templates = MerchantTemplates::new(pool.clone(), api.clone())
        .provision_platform(&tokens, p, libraries)
        .await?;
    Ok(report)
}

/// Adds a listed merchant the ledger lacks, or gives one without a refresh token (or not
/// `active`) the listed one. Returns whether anything changed.
async fn restore(pool: &PgPool, component_appid: &str, m: &Listed) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "INSERT INTO authorizers AS a
             (authorizer_appid, component_appid, state, authorized_at, changed_at, refresh_token, last_error)
         VALUES ($1, $2, 'active', now(), now(), $3, NULL)
         ON CONFLICT (authorizer_appid) DO UPDATE
            SET state = 'active', refresh_token = EXCLUDED.refresh_token, access_token = NULL,
                access_expires_at = NULL, revoked_at = NULL, last_error = NULL, updated_at = now()
          WHERE a.component_appid = EXCLUDED.component_appid
            AND (a.refresh_token IS NULL OR a.refresh_token = '' OR a.state <> 'active')",
    )
    .bind(&m.authorizer_appid)
    .bind(component_appid)
    .bind(m.refresh_token.expose_secret())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

/// Revokes the platform's `active` merchants WeChat does not list; how many.
async fn revoke_unlisted(pool: &PgPool, component_appid: &str, listed: &[Listed]) -> Result<usize, sqlx::Error> {
    let appids: Vec<&str> = listed.iter().map(|m| m.authorizer_appid.as_str()).collect();
    let revoked = sqlx::query(
        "UPDATE authorizers SET state = 'revoked', revoked_at = now(), access_token = NULL,
                last_error = 'not in WeChat''s authorizer list (platform sync)', updated_at = now()
          WHERE component_appid = $1 AND state = 'active' AND authorizer_appid <> ALL ($2)",
    )
    .bind(component_appid)
    .bind(appids)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(revoked as usize)
}

/// Where a merchant scans to authorize the platform: WeChat's authorization page with a fresh
/// pre-auth code (valid 30 minutes), for official accounts (`auth_type=1`); after the scan WeChat
/// redirects to `redirect_uri` and pushes `authorized` to the receiver.
pub async fn authorize_url(
    pool: &PgPool,
    api: &ComponentApi,
    p: &Platform,
    redirect_uri: &str,
) -> Result<String, PlatformError> {
    let component = PlatformTokens::new(pool.clone(), api.clone()).component(p).await?;
    let code = api.create_preauthcode(&p.component_appid, &component).await?;
    let mut url = reqwest::Url::parse("https://mp.weixin.qq.com/cgi-bin/componentloginpage").expect("a fixed URL");
    url.query_pairs_mut()
        .append_pair("component_appid", &p.component_appid)
        .append_pair("pre_auth_code", &code)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("auth_type", "1");
    Ok(url.to_string())
}

/// One merchant, as `platform list` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MerchantRow {
    pub component_appid: String,
    pub authorizer_appid: String,
    pub state: String,
    pub authorized_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub access_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub refreshed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub has_refresh_token: bool,
    pub last_error: Option<String>,
    /// Library templates on its account (`api_add_template`).
    pub templates: i64,
    /// Library templates WeChat refused to add, with its errcode.
    pub template_errors: Option<String>,
}

/// Every merchant of every platform (no secret: whether a refresh token is held, not which).
pub async fn list(pool: &PgPool) -> Result<Vec<MerchantRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT component_appid, authorizer_appid, state, authorized_at, revoked_at, access_expires_at,
                refreshed_at, COALESCE(refresh_token, '') <> '' AS has_refresh_token, last_error,
                (SELECT count(*) FROM merchant_templates t
                  WHERE t.authorizer_appid = a.authorizer_appid AND t.template_id IS NOT NULL) AS templates,
                (SELECT string_agg(t.library_id || ': errcode ' || t.errcode || ' (' || COALESCE(t.errmsg, '') || ')',
                                   '; ' ORDER BY t.library_id)
                   FROM merchant_templates t
                  WHERE t.authorizer_appid = a.authorizer_appid AND t.errcode IS NOT NULL) AS template_errors
           FROM authorizers a ORDER BY component_appid, authorizer_appid",
    )
    .fetch_all(pool)
    .await
}

/// The merchant's last error and its templates' refusals, on one line.
fn errors(r: &MerchantRow) -> String {
    let parts: Vec<String> = [r.last_error.as_deref(), r.template_errors.as_deref()]
        .into_iter()
        .flatten()
        .map(crate::fate::one_line)
        .collect();
    if parts.is_empty() { "-".into() } else { parts.join("; ") }
}

/// The merchants as a table, for people.
pub fn table(rows: &[MerchantRow]) -> String {
    let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(|| "-".to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string())
    };
    let mut out = format!(
        "{:<20} {:<20} {:<22} {:<17} {:<17} {:<7} {:<9} {}\n",
        "PLATFORM", "MERCHANT", "STATE", "AUTHORIZED", "TOKEN_EXPIRES", "REFRESH", "TEMPLATES", "LAST_ERROR"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:<20} {:<22} {:<17} {:<17} {:<7} {:<9} {}\n",
            crate::event::truncate(&r.component_appid, 20),
            crate::event::truncate(&r.authorizer_appid, 20),
            r.state,
            at(r.authorized_at),
            at(r.access_expires_at),
            if r.has_refresh_token { "yes" } else { "NO" },
            r.templates,
            errors(r)
        ));
    }
    out.push_str(&format!("{} merchant(s)\n", rows.len()));
    out
}
