//! TLS to Postgres and RabbitMQ, both over rustls, trusting the system's roots unless a CA is
//! given: `sslmode`/`sslrootcert` in `DATABASE_URL` (sqlx reads them), `amqps://` with an optional
//! `cacertfile=/path/ca.pem` query parameter in `AMQP_URL` (RabbitMQ's URI spelling; taken out here
//! and given to lapin as an extra root, beside the system's).
//!
//! Two crypto providers are compiled in (sqlx's rustls-with-native-roots feature brings ring, lapin
//! and reqwest use aws-lc-rs). Each library picks its own, but rustls calls that consult the
//! process-wide default (sqlx's `sslmode=verify-ca` path) panic when two are present and none is
//! installed: [`install_crypto_provider`] installs aws-lc-rs first, before any connection.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Makes aws-lc-rs the process's default rustls provider (once; a default already installed, by
/// us or by a library, stays).
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing one is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// RabbitMQ's TLS URI parameters that wxnotify does not implement: refused rather than ignored,
/// so that nobody believes a client certificate is sent or verification is off.
const UNSUPPORTED_AMQP_TLS_PARAMS: [&str; 6] = [
    "certfile",
    "keyfile",
    "verify",
    "fail_if_no_peer_cert",
    "server_name_indication",
    "password",
];

/// An AMQP URL as lapin gets it, and the CA file its `cacertfile` parameter named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    /// The URL without `cacertfile` (the rest unchanged).
    pub url: String,
    pub ca_file: Option<PathBuf>,
}

impl AmqpUrl {
    /// Splits `cacertfile` off `url`. Errors (no secret in them): a `cacertfile` on an `amqp://`
    /// URL, twice, or empty, and the TLS parameters wxnotify does not implement.
    pub fn parse(url: &str) -> Result<Self, String> {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            // lapin says what is wrong with it when it connects; nothing of ours to take out.
            return Ok(Self {
                url: url.to_string(),
                ca_file: None,
            });
        };
        let mut ca_files = Vec::new();
        let mut rest = Vec::new();
        for (key, value) in parsed.query_pairs() {
            if key == "cacertfile" {
                ca_files.push(value.into_owned());
            } else if UNSUPPORTED_AMQP_TLS_PARAMS.contains(&key.as_ref()) {
                return Err(format!(
                    "the TLS parameter {key} is not supported (cacertfile is: the CA that signed the broker's certificate)"
                ));
            } else {
                rest.push((key.into_owned(), value.into_owned()));
            }
        }
        let ca_file = match ca_files.as_slice() {
            [] => {
                return Ok(Self {
                    url: url.to_string(),
                    ca_file: None,
                });
            }
            [one] if !one.trim().is_empty() => PathBuf::from(one),
            [_] => return Err("cacertfile is empty".into()),
            _ => return Err("cacertfile is given more than once".into()),
        };
        if parsed.scheme() != "amqps" {
            return Err(format!(
                "cacertfile={} needs an amqps:// URL (this one is not TLS)",
                ca_file.display()
            ));
        }
        let mut stripped = parsed;
        if rest.is_empty() {
            stripped.set_query(None);
        } else {
            stripped.query_pairs_mut().clear().extend_pairs(rest);
        }
        Ok(Self {
            url: stripped.to_string(),
            ca_file: Some(ca_file),
        })
    }
}

/// The certificates of the PEM file at `path`, as text (what lapin takes); an error, naming the
/// file, when it cannot be read or holds no certificate.
pub fn read_ca_file(path: &Path) -> Result<String, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut certs = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
        certs += 1;
    }
    if certs == 0 {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    String::from_utf8(pem).map_err(|_| format!("{} is not a PEM text file", path.display()))
}

/// The TLS failure in `err`'s chain, if any: a certificate the given CA (or the system's roots)
/// did not sign, a host name the certificate does not name, a handshake the server refused.
/// Retrying does not mend these, unlike a refused or reset connection.
pub fn tls_failure<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the error it wraps: look at that one too.
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(tls) = tls_failure(inner)
        {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

/// A database error that retrying will not mend: TLS refused by either side (see [`tls_failure`]),
/// or TLS required by the URL but not offered by the server.
pub fn is_database_tls_failure(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Tls(_)) || tls_failure(err).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cacertfile_is_taken_out_and_the_rest_kept() {
        let u =
            AmqpUrl::parse("amqps://u:p%40ss@mq.example.com:5671/%2f?heartbeat=30&cacertfile=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(u.url, "amqps://u:p%40ss@mq.example.com:5671/%2f?heartbeat=30");
        assert_eq!(u.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        let u = AmqpUrl::parse("amqps://u:p@localhost/%2f?cacertfile=/tmp/ca.pem").unwrap();
        assert_eq!(u.url, "amqps://u:p@localhost/%2f");
        assert_eq!(u.ca_file.as_deref(), Some(Path::new("/tmp/ca.pem")));
    }

    #[test]
    fn a_url_without_cacertfile_is_left_as_it_is() {
        for url in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqps://guest:guest@localhost/%2f?heartbeat=10",
            "not a url",
        ] {
            assert_eq!(
                AmqpUrl::parse(url).unwrap(),
                AmqpUrl {
                    url: url.into(),
                    ca_file: None
                }
            );
        }
    }

    #[test]
    fn misused_tls_parameters_are_refused() {
        for (url, says) in [
            ("amqp://h/%2f?cacertfile=/ca.pem", "needs an amqps:// URL"),
            ("amqps://h/%2f?cacertfile=", "empty"),
            ("amqps://h/%2f?cacertfile=/a&cacertfile=/b", "more than once"),
            ("amqps://h/%2f?certfile=/c.pem", "certfile is not supported"),
            ("amqps://h/%2f?verify=verify_none", "verify is not supported"),
        ] {
            let err = AmqpUrl::parse(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("wxnotify-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        assert!(read_ca_file(&empty).unwrap_err().contains("holds no PEM certificate"));
        let missing = dir.join("missing.pem");
        assert!(read_ca_file(&missing).unwrap_err().contains("missing.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_certificate_error_is_found_inside_io_and_lapin_errors() {
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, cert.clone());
        let lapin: lapin::Error = std::io::Error::new(std::io::ErrorKind::InvalidData, cert.clone()).into();
        assert_eq!(tls_failure(&io), Some(&cert));
        assert_eq!(tls_failure(&lapin), Some(&cert));
        let refused: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(tls_failure(&refused), None);
        assert!(is_database_tls_failure(&sqlx::Error::Io(io)));
        assert!(!is_database_tls_failure(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
    }
}
