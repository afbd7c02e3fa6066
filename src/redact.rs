//! Connection URLs fit for a log line or `--print-config`: passwords masked.

use secrecy::{ExposeSecret, SecretString};

/// A URL (or a comma-separated list of them) with its passwords masked, for log lines: the
/// user part's password and every query parameter that names a secret (`is_secret_param`).
pub fn redact_url(url: &SecretString) -> String {
    crate::queue::node_urls(url.expose_secret())
        .into_iter()
        .map(|one| match reqwest::Url::parse(one) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                if let Some(query) = u.query().map(redact_query) {
                    u.set_query(Some(&query));
                }
                u.to_string()
            }
            Err(_) => "[unparseable URL]".into(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A parameter that carries a secret or says where one is: libpq's `password`, `sslpassword`,
/// `sslkey`, and AMQP's `keyfile`, `password` (or anything named like them).
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "key", "secret", "token"].iter().any(|s| name.contains(s))
}

/// The query with each secret parameter's value replaced by `***`; the others stay as written.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(url: &str) -> String {
        redact_url(&SecretString::from(url.to_string()))
    }

    #[test]
    fn passwords_in_the_user_part_are_masked() {
        assert_eq!(
            redacted("postgres://wx:hunter2@db:5432/wxnotify"),
            "postgres://wx:***@db:5432/wxnotify"
        );
        assert_eq!(
            redacted("amqp://a:p1@n1:5672/%2f,amqp://a:p2@n2:5672/%2f"),
            "amqp://a:***@n1:5672/%2f,amqp://a:***@n2:5672/%2f"
        );
    }

    #[test]
    fn secrets_in_url_parameters_are_masked() {
        let out = redacted(
            "postgres://wx@db/wxnotify?password=hunter2&sslmode=verify-full&sslpassword=keypass&sslkey=/etc/k.pem",
        );
        for secret in ["hunter2", "keypass", "/etc/k.pem"] {
            assert!(!out.contains(secret), "{secret} printed in {out}");
        }
        assert!(out.contains("sslmode=verify-full"), "{out}");
        let out = redacted("amqps://u@n1:5671/%2f?cacertfile=/ca.pem&keyfile=/k.pem&password=p&auth_mechanism=plain");
        for secret in ["/k.pem", "password=p&"] {
            assert!(!out.contains(secret), "{secret} printed in {out}");
        }
        assert!(
            out.contains("cacertfile=%2Fca.pem") || out.contains("cacertfile=/ca.pem"),
            "{out}"
        );
    }
}
