//! WeChat's component APIs (docs/interface.md §10): `POST` with a JSON body, a component access
//! token in the query string where one is needed, `{errcode, errmsg}` on failure. Secrets (the
//! platform's AppSecret, tickets, tokens, refresh tokens) travel only in the body or the query
//! string of a request built here; no error text carries a URL or a body.

use std::time::Duration;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

/// A call that did not give what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("WeChat refused: errcode {errcode} ({errmsg})")]
    WeChat { errcode: i64, errmsg: String },
    #[error("{0}")]
    Transport(String),
}

impl CallError {
    pub fn errcode(&self) -> Option<i64> {
        match self {
            CallError::WeChat { errcode, .. } => Some(*errcode),
            CallError::Transport(_) => None,
        }
    }
}

/// A token and its lifetime, as WeChat gave them.
pub(crate) struct Issued {
    pub token: SecretString,
    pub expires_in: u64,
}

/// What `api_query_auth` and `api_authorizer_token` give for a merchant.
pub(crate) struct MerchantTokens {
    pub access: Issued,
    /// The refresh token that came back (store it, whatever it is: WeChat may rotate it).
    pub refresh_token: SecretString,
    pub func_info: Option<Value>,
}

/// One merchant of `api_get_authorizer_list`.
pub(crate) struct Listed {
    pub authorizer_appid: String,
    /// Empty: authorized, but its code never exchanged.
    pub refresh_token: SecretString,
}

#[derive(Clone)]
pub struct ComponentApi {
    http: reqwest::Client,
    base: Url,
}

fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    format!(
        "{kind}: {}",
        err.to_string().split(" for url").next().unwrap_or_default()
    )
}

fn text(v: &Value, key: &str) -> Result<String, CallError> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| CallError::Transport(format!("no {key} in WeChat's answer")))
}

fn issued(v: &Value, token_key: &str) -> Result<Issued, CallError> {
    Ok(Issued {
        token: SecretString::from(text(v, token_key)?),
        expires_in: v.get("expires_in").and_then(Value::as_u64).unwrap_or(7200),
    })
}

impl ComponentApi {
    /// `base` is `WECHAT_API_BASE`.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, String> {
        let base = Url::parse(base).map_err(|e| format!("not a URL: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", describe(&e)))?;
        Ok(Self { http, base })
    }

    /// One component call (the component access token in the query string, where given).
    async fn call(&self, path: &str, token: Option<&SecretString>, body: Value) -> Result<Value, CallError> {
        self.post(path, token.map(|t| ("component_access_token", t)), body)
            .await
    }

    /// One call: `Ok` with the answer when its errcode is 0 (or absent).
    async fn post(&self, path: &str, token: Option<(&str, &SecretString)>, body: Value) -> Result<Value, CallError> {
        #[derive(Deserialize)]
        struct Errors {
            #[serde(default)]
            errcode: i64,
            #[serde(default)]
            errmsg: String,
        }
        let mut url = self.base.clone();
        let prefix = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{prefix}{path}"));
        if let Some((name, t)) = token {
            url.query_pairs_mut().append_pair(name, t.expose_secret());
        }
        let answer = self.http.post(url).json(&body).send().await;
        let bytes = match answer {
            Ok(r) if r.status().is_success() => r.bytes().await.map_err(|e| CallError::Transport(describe(&e)))?,
            Ok(r) => {
                return Err(CallError::Transport(format!(
                    "HTTP {} from WeChat",
                    r.status().as_u16()
                )));
            }
            Err(e) => return Err(CallError::Transport(describe(&e))),
        };
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|_| CallError::Transport("unparseable answer from WeChat".into()))?;
        let errors: Errors = serde_json::from_value(value.clone()).unwrap_or(Errors {
            errcode: 0,
            errmsg: String::new(),
        });
        if errors.errcode != 0 {
            return Err(CallError::WeChat {
                errcode: errors.errcode,
                errmsg: crate::event::truncate(&errors.errmsg, 200).to_string(),
            });
        }
        Ok(value)
    }

    /// `api_component_token`: the platform's token, asked with its latest verify ticket.
    pub(crate) async fn component_token(
        &self,
        component_appid: &str,
        secret: &SecretString,
        ticket: &SecretString,
    ) -> Result<Issued, CallError> {
        let body = json!({
            "component_appid": component_appid,
            "component_appsecret": secret.expose_secret(),
            "component_verify_ticket": ticket.expose_secret(),
        });
        let v = self.call("/cgi-bin/component/api_component_token", None, body).await?;
        issued(&v, "component_access_token")
    }

    /// `api_start_push_ticket`: asks WeChat to push a verify ticket now.
    pub(crate) async fn start_push_ticket(
        &self,
        component_appid: &str,
        secret: &SecretString,
    ) -> Result<(), CallError> {
        let body = json!({"component_appid": component_appid, "component_secret": secret.expose_secret()});
        self.call("/cgi-bin/component/api_start_push_ticket", None, body)
            .await
            .map(|_| ())
    }

    /// `api_create_preauthcode`: a pre-auth code for the page a merchant scans (30 minutes).
    pub(crate) async fn create_preauthcode(
        &self,
        component_appid: &str,
        token: &SecretString,
    ) -> Result<String, CallError> {
        let body = json!({"component_appid": component_appid});
        let v = self
            .call("/cgi-bin/component/api_create_preauthcode", Some(token), body)
            .await?;
        text(&v, "pre_auth_code")
    }

    /// `api_add_template` with a merchant's access token: the library template `library_id`
    /// with these keywords added to the merchant's account; its new template id there.
    pub(crate) async fn add_template(
        &self,
        access_token: &SecretString,
        library_id: &str,
        keywords: &[String],
    ) -> Result<String, CallError> {
        let body = json!({"template_id_short": library_id, "keyword_name_list": keywords});
        let v = self
            .post(
                "/cgi-bin/template/api_add_template",
                Some(("access_token", access_token)),
                body,
            )
            .await?;
        text(&v, "template_id")
    }

    /// `api_query_auth`: an authorization code for the merchant's tokens.
    pub(crate) async fn query_auth(
        &self,
        component_appid: &str,
        token: &SecretString,
        code: &str,
    ) -> Result<(String, MerchantTokens), CallError> {
        let body = json!({"component_appid": component_appid, "authorization_code": code});
        let v = self
            .call("/cgi-bin/component/api_query_auth", Some(token), body)
            .await?;
        let info = v
            .get("authorization_info")
            .ok_or_else(|| CallError::Transport("no authorization_info in WeChat's answer".into()))?;
        let tokens = MerchantTokens {
            access: issued(info, "authorizer_access_token")?,
            refresh_token: SecretString::from(text(info, "authorizer_refresh_token")?),
            func_info: info.get("func_info").cloned(),
        };
        Ok((text(info, "authorizer_appid")?, tokens))
    }

    /// `api_authorizer_token`: a merchant's token from its refresh token.
    pub(crate) async fn authorizer_token(
        &self,
        component_appid: &str,
        token: &SecretString,
        authorizer_appid: &str,
        refresh_token: &SecretString,
    ) -> Result<MerchantTokens, CallError> {
        let body = json!({
            "component_appid": component_appid,
            "authorizer_appid": authorizer_appid,
            "authorizer_refresh_token": refresh_token.expose_secret(),
        });
        let v = self
            .call("/cgi-bin/component/api_authorizer_token", Some(token), body)
            .await?;
        Ok(MerchantTokens {
            access: issued(&v, "authorizer_access_token")?,
            // Some answers leave it out or repeat it: keep the one we used then.
            refresh_token: v
                .get("authorizer_refresh_token")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
                .map_or_else(|| refresh_token.clone(), |r| SecretString::from(r.to_string())),
            func_info: None,
        })
    }

    /// `api_get_authorizer_list`, one page (`count` ≤ 500): the total and the page.
    pub(crate) async fn authorizer_list(
        &self,
        component_appid: &str,
        token: &SecretString,
        offset: u64,
        count: u64,
    ) -> Result<(u64, Vec<Listed>), CallError> {
        let body = json!({"component_appid": component_appid, "offset": offset, "count": count.min(500)});
        let v = self
            .call("/cgi-bin/component/api_get_authorizer_list", Some(token), body)
            .await?;
        let total = v.get("total_count").and_then(Value::as_u64).unwrap_or(0);
        let list = v
            .get("list")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| {
                        Some(Listed {
                            authorizer_appid: i.get("authorizer_appid")?.as_str()?.to_string(),
                            refresh_token: SecretString::from(
                                i.get("refresh_token")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string(),
                            ),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((total, list))
    }
}
