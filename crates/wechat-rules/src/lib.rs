//! WeChat's own rules (WECHAT_API.md), shared by wxnotify and its simulator (`crates/wechat-sim`)
//! so the two never disagree: what a template keyword's value may be ([`keywords`]) and the
//! errcodes WeChat answers ([`errcode`]). What wxnotify *does* about an errcode (retry, defer,
//! dead-letter) is its own policy and stays in wxnotify.

pub mod errcode;
pub mod keywords;
