//! A platform's tokens, fleet-wide in Postgres (docs/interface.md §10): its component access
//! token (`platform_tokens`) and each merchant's access and refresh tokens (`authorizers`). Each
//! row's lock is the single flight: whoever holds it is the only process that asks WeChat; the
//! others wait and then read what it stored. The refresh token WeChat gives back is written in
//! the same transaction as the access token, so no refresh can store an older refresh token over
//! a newer one. A refresh token WeChat calls invalid (61023) is first looked up in
//! `api_get_authorizer_list`, which lists each merchant's current one (a worker killed between
//! WeChat's answer and its commit leaves exactly that), before the merchant is declared
//! `revoked`.

use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgPool, Postgres, Transaction};

use super::client::{CallError, ComponentApi, MerchantTokens};

/// Tokens are refreshed this long before WeChat's expiry.
const MARGIN_SECS: f64 = 300.0;
/// A verify ticket is valid this long after its push.
const TICKET_HOURS: f64 = 12.0;
/// Without a ticket, WeChat is asked for one at most this often (`api_start_push_ticket`).
const TICKET_ASK_EVERY_SECS: f64 = 60.0;
/// WeChat's "refresh token invalid".
const REFRESH_TOKEN_INVALID: i64 = 61023;
/// `api_get_authorizer_list` pages.
const LIST_PAGE: u64 = 500;

/// A platform and its AppSecret (`Debug` masks it).
#[derive(Debug, Clone)]
pub struct Platform {
    pub component_appid: String,
    pub secret: SecretString,
}

/// Why no token.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("platform {0}: no verify ticket younger than 12 h; WeChat was asked to push one")]
    NoTicket(String),
    #[error("merchant {0} is not an authorizer of this platform")]
    UnknownMerchant(String),
    #[error("merchant {authorizer_appid} is {state}")]
    NotActive { authorizer_appid: String, state: String },
    #[error("WeChat: {0}")]
    WeChat(#[from] CallError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// A merchant's row as its token is read under its lock.
#[derive(sqlx::FromRow)]
struct MerchantRow {
    state: String,
    refresh_token: Option<String>,
    access_token: Option<String>,
    /// The access token is valid beyond the refresh margin.
    valid: bool,
    generation: i64,
}

/// A merchant's access token and its generation.
pub struct MerchantToken {
    pub token: SecretString,
    pub generation: i64,
}

#[derive(Clone)]
pub struct PlatformTokens {
    pool: PgPool,
    api: ComponentApi,
}

impl PlatformTokens {
    pub fn new(pool: PgPool, api: ComponentApi) -> Self {
        Self { pool, api }
    }

    /// The platform's component access token: the stored one while valid, else one fetched with
    /// the latest verify ticket, by one process of the fleet at a time.
    pub async fn component(&self, p: &Platform) -> Result<SecretString, PlatformError> {
        let mut tx = crate::db::begin_bounded(&self.pool).await?;
        sqlx::query("INSERT INTO platform_tokens (component_appid) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&p.component_appid)
            .execute(&mut *tx)
            .await?;
        let (stored, valid): (Option<String>, bool) = sqlx::query_as(
            "SELECT access_token, COALESCE(expires_at > now() + make_interval(secs => $2), false)
               FROM platform_tokens WHERE component_appid = $1 FOR UPDATE",
        )
        .bind(&p.component_appid)
        .bind(MARGIN_SECS)
        .fetch_one(&mut *tx)
        .await?;
        if let (Some(token), true) = (stored, valid) {
            tx.commit().await?;
            return Ok(SecretString::from(token));
        }
        let ticket: Option<String> = sqlx::query_scalar(
            "SELECT ticket FROM platform_tickets
              WHERE component_appid = $1 AND pushed_at > now() - make_interval(hours => $2::int)",
        )
        .bind(&p.component_appid)
        .bind(TICKET_HOURS as i32)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(ticket) = ticket else {
            return Err(self.ask_for_ticket(tx, p).await?);
        };
        let fetched = self
            .api
            .component_token(&p.component_appid, &p.secret, &SecretString::from(ticket))
            .await;
        refreshed(&p.component_appid, "component", fetched.is_ok());
        let (token, error) = match &fetched {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e.to_string())),
        };
        sqlx::query(
            "UPDATE platform_tokens
                SET access_token = COALESCE($2, access_token),
                    expires_at = CASE WHEN $2 IS NULL THEN expires_at ELSE now() + make_interval(secs => $3) END,
                    generation = generation + CASE WHEN $2 IS NULL THEN 0 ELSE 1 END,
                    fetched_at = CASE WHEN $2 IS NULL THEN fetched_at ELSE now() END,
                    last_error = $4, updated_at = now()
              WHERE component_appid = $1",
        )
        .bind(&p.component_appid)
        .bind(token.map(|t| t.token.expose_secret().to_string()))
        .bind(token.map_or(0.0, |t| t.expires_in as f64))
        .bind(error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(fetched?.token)
    }

    /// No ticket younger than 12 h: WeChat is asked to push one (`api_start_push_ticket`), at
    /// most once a minute for the whole fleet however many deliveries wait; the caller's error.
    async fn ask_for_ticket(
        &self,
        mut tx: Transaction<'static, Postgres>,
        p: &Platform,
    ) -> Result<PlatformError, PlatformError> {
        let ask = sqlx::query(
            "UPDATE platform_tokens SET ticket_asked_at = now()
              WHERE component_appid = $1
                AND (ticket_asked_at IS NULL OR ticket_asked_at < now() - make_interval(secs => $2))",
        )
        .bind(&p.component_appid)
        .bind(TICKET_ASK_EVERY_SECS)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        tx.commit().await?;
        if ask {
            tracing::warn!(platform = %p.component_appid, "no verify ticket younger than 12 h; asking WeChat to push one");
            if let Err(e) = self.api.start_push_ticket(&p.component_appid, &p.secret).await {
                tracing::warn!(platform = %p.component_appid, error = %e, "could not ask WeChat for a verify ticket");
            }
        }
        Ok(PlatformError::NoTicket(p.component_appid.clone()))
    }

    /// A merchant's access token: the stored one while valid, else refreshed with its stored
    /// refresh token (the new pair committed together), by one process of the fleet at a time.
    pub async fn merchant(&self, p: &Platform, authorizer_appid: &str) -> Result<MerchantToken, PlatformError> {
        let mut tx = crate::db::begin_bounded(&self.pool).await?;
        let row: Option<MerchantRow> = sqlx::query_as(
            "SELECT state, refresh_token, access_token,
                    COALESCE(access_expires_at > now() + make_interval(secs => $3), false) AS valid, generation
               FROM authorizers WHERE authorizer_appid = $1 AND component_appid = $2 FOR UPDATE",
        )
        .bind(authorizer_appid)
        .bind(&p.component_appid)
        .bind(MARGIN_SECS)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(MerchantRow {
            state,
            refresh_token: refresh,
            access_token: access,
            valid,
            generation,
        }) = row
        else {
            return Err(PlatformError::UnknownMerchant(authorizer_appid.to_string()));
        };
        if state != "active" {
            return Err(PlatformError::NotActive {
                authorizer_appid: authorizer_appid.to_string(),
                state,
            });
        }
        if let (Some(token), true) = (access, valid) {
            tx.commit().await?;
            return Ok(MerchantToken {
                token: SecretString::from(token),
                generation,
            });
        }
        let component = self.component(p).await?;
        let refresh = SecretString::from(refresh.unwrap_or_default());
        self.refresh(tx, p, &component, authorizer_appid, &refresh).await
    }

    /// Refreshes under the held lock; a refresh token WeChat calls invalid is looked up in the
    /// authorizer list once before the merchant is given up.
    async fn refresh(
        &self,
        mut tx: Transaction<'static, Postgres>,
        p: &Platform,
        component: &SecretString,
        authorizer_appid: &str,
        refresh: &SecretString,
    ) -> Result<MerchantToken, PlatformError> {
        let c = p.component_appid.as_str();
        let mut answer = self.api.authorizer_token(c, component, authorizer_appid, refresh).await;
        if answer.as_ref().err().and_then(CallError::errcode) == Some(REFRESH_TOKEN_INVALID) {
            match self.listed_refresh_token(c, component, authorizer_appid).await? {
                Some(current) if current.expose_secret() != refresh.expose_secret() => {
                    tracing::info!(merchant = %authorizer_appid, "refresh token replaced from the authorizer list");
                    answer = self
                        .api
                        .authorizer_token(c, component, authorizer_appid, &current)
                        .await;
                }
                listed => {
                    let state = if listed.is_some() {
                        "needs_reauthorization"
                    } else {
                        "revoked"
                    };
                    mark(
                        &mut tx,
                        authorizer_appid,
                        state,
                        "WeChat: refresh token invalid (61023)",
                    )
                    .await?;
                    tx.commit().await?;
                    return Err(PlatformError::NotActive {
                        authorizer_appid: authorizer_appid.to_string(),
                        state: state.to_string(),
                    });
                }
            }
        }
        refreshed(c, "merchant", answer.is_ok());
        match answer {
            Ok(tokens) => {
                let generation = store_tokens(&mut tx, authorizer_appid, &tokens).await?;
                tx.commit().await?;
                Ok(MerchantToken {
                    token: tokens.access.token,
                    generation,
                })
            }
            Err(e) => {
                sqlx::query("UPDATE authorizers SET last_error = $2, updated_at = now() WHERE authorizer_appid = $1")
                    .bind(authorizer_appid)
                    .bind(e.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Err(e.into())
            }
        }
    }

    /// The merchant's current refresh token as `api_get_authorizer_list` has it (`None`: not
    /// listed; an empty one counts as none).
    async fn listed_refresh_token(
        &self,
        component_appid: &str,
        component: &SecretString,
        authorizer_appid: &str,
    ) -> Result<Option<SecretString>, PlatformError> {
        let mut offset = 0;
        loop {
            let (total, page) = self
                .api
                .authorizer_list(component_appid, component, offset, LIST_PAGE)
                .await?;
            if let Some(m) = page.iter().find(|m| m.authorizer_appid == authorizer_appid) {
                let token = m.refresh_token.expose_secret();
                return Ok((!token.is_empty()).then(|| SecretString::from(token.to_string())));
            }
            offset += page.len() as u64;
            if page.is_empty() || offset >= total {
                return Ok(None);
            }
        }
    }

    /// Exchanges the platform's authorization codes not exchanged yet (`authorized` and
    /// `updateauthorized` pushes, oldest first) for the merchants' tokens: each merchant becomes
    /// `active` with its new refresh token (an old one replaced), in one transaction with the code
    /// marked exchanged. A code WeChat refuses is marked with the error and not tried again;
    /// a transport error leaves it for the next call. Returns how many were exchanged.
    pub async fn exchange_codes(&self, p: &Platform) -> Result<usize, PlatformError> {
        let mut exchanged = 0;
        loop {
            let mut tx = crate::db::begin_bounded(&self.pool).await?;
            let next: Option<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
                "SELECT authorizer_appid, authorization_code, pushed_at FROM platform_authorizations
                  WHERE component_appid = $1 AND exchanged_at IS NULL
                  ORDER BY pushed_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .bind(&p.component_appid)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((authorizer_appid, code, pushed_at)) = next else {
                return Ok(exchanged);
            };
            let component = self.component(p).await?;
            let answer = self.api.query_auth(&p.component_appid, &component, &code).await;
            let error = match &answer {
                Ok((appid, tokens)) if *appid == authorizer_appid => {
                    activate(&mut tx, &p.component_appid, appid, tokens, pushed_at).await?;
                    exchanged += 1;
                    None
                }
                Ok((appid, _)) => Some(format!("the code is merchant {appid}'s, not {authorizer_appid}'s")),
                Err(CallError::Transport(e)) => return Err(CallError::Transport(e.clone()).into()),
                Err(e) => Some(e.to_string()),
            };
            sqlx::query(
                "UPDATE platform_authorizations SET exchanged_at = now(), last_error = $3
                  WHERE authorizer_appid = $1 AND authorization_code = $2",
            )
            .bind(&authorizer_appid)
            .bind(&code)
            .bind(error)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
    }

    /// WeChat rejected this generation of the merchant's token (40001, 42001, 40014): it is
    /// expired now if it is still the current one, so the next caller refreshes it once.
    pub async fn invalidate_merchant(&self, authorizer_appid: &str, generation: i64) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "UPDATE authorizers SET access_expires_at = now(), updated_at = now()
              WHERE authorizer_appid = $1 AND generation = $2",
        )
        .bind(authorizer_appid)
        .bind(generation)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }
}

/// Counts a token refresh asked of WeChat (`wxnotify_platform_token_refreshes_total`).
fn refreshed(platform: &str, token: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    let labels = [
        ("platform", platform.to_string()),
        ("token", token.to_string()),
        ("result", result.to_string()),
    ];
    metrics::counter!("wxnotify_platform_token_refreshes_total", &labels).increment(1);
}

/// A merchant's exchanged authorization, pushed at `pushed_at`: `active` with its tokens, unless
/// a newer push (an `unauthorized`) is already applied.
async fn activate(
    tx: &mut Transaction<'static, Postgres>,
    component_appid: &str,
    authorizer_appid: &str,
    tokens: &MerchantTokens,
    pushed_at: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO authorizers AS a
             (authorizer_appid, component_appid, state, func_info, authorized_at, changed_at,
              refresh_token, access_token, access_expires_at, generation, refreshed_at)
         VALUES ($1, $2, 'active', $3, $4, $4, $5, $6, now() + make_interval(secs => $7), 1, now())
         ON CONFLICT (authorizer_appid) DO UPDATE
            SET state = 'active', func_info = EXCLUDED.func_info, authorized_at = EXCLUDED.authorized_at,
                changed_at = EXCLUDED.changed_at, refresh_token = EXCLUDED.refresh_token,
                access_token = EXCLUDED.access_token, access_expires_at = EXCLUDED.access_expires_at,
                generation = a.generation + 1, refreshed_at = now(), revoked_at = NULL, last_error = NULL,
                updated_at = now()
          WHERE a.component_appid = EXCLUDED.component_appid AND a.changed_at <= EXCLUDED.changed_at",
    )
    .bind(authorizer_appid)
    .bind(component_appid)
    .bind(&tokens.func_info)
    .bind(pushed_at)
    .bind(tokens.refresh_token.expose_secret())
    .bind(tokens.access.token.expose_secret())
    .bind(tokens.access.expires_in as f64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes a refresh's access token and refresh token together; the new generation.
async fn store_tokens(
    tx: &mut Transaction<'static, Postgres>,
    authorizer_appid: &str,
    tokens: &MerchantTokens,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE authorizers
            SET access_token = $2, access_expires_at = now() + make_interval(secs => $3),
                refresh_token = $4, generation = generation + 1, refreshed_at = now(),
                last_error = NULL, updated_at = now()
          WHERE authorizer_appid = $1
          RETURNING generation",
    )
    .bind(authorizer_appid)
    .bind(tokens.access.token.expose_secret())
    .bind(tokens.access.expires_in as f64)
    .bind(tokens.refresh_token.expose_secret())
    .fetch_one(&mut **tx)
    .await
}

/// The merchant can no longer be refreshed: its new state and why.
async fn mark(
    tx: &mut Transaction<'static, Postgres>,
    authorizer_appid: &str,
    state: &str,
    why: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE authorizers SET state = $2, last_error = $3, access_token = NULL,
                revoked_at = CASE WHEN $2 = 'revoked' THEN now() ELSE revoked_at END, updated_at = now()
          WHERE authorizer_appid = $1",
    )
    .bind(authorizer_appid)
    .bind(state)
    .bind(why)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
