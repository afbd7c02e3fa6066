//! Everything about WeChat's server API: the HTTP client ([`client`]), the message bodies
//! ([`message`]), WeChat's keyword rules (`keywords`, from the `wechat-rules` crate the simulator
//! shares) and what each errcode means to wxnotify ([`errcode`]).

pub mod client;
pub mod errcode;
pub mod message;
mod transport;

pub(crate) use wechat_rules::keywords;

pub use client::{FetchedToken, SendError, SendReply, TokenFetchError, WechatClient};
pub use message::{Api, Miniprogram, OutgoingMessage};

use serde::{Deserialize, Serialize};

/// Which token API a worker uses (`WECHAT_TOKEN_API`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenApi {
    /// `POST /cgi-bin/stable_token`: the same token while valid; forced refresh only after a rejection.
    #[default]
    Stable,
    /// `GET /cgi-bin/token`: every call issues a new token and retires the previous one.
    Classic,
}

impl TokenApi {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenApi::Stable => "stable",
            TokenApi::Classic => "classic",
        }
    }
}
