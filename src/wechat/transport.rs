//! The HTTP transport to WeChat's API: hyper's pooled client over rustls (the platform's
//! verifier; HTTP/2 when the server offers it, else HTTP/1.1), with a whole-exchange timeout and
//! small per-connection buffers.
//!
//! When the environment names a proxy for WeChat's address (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, minus `NO_PROXY`, as curl reads them), the exchange goes through reqwest instead,
//! which speaks to proxies (CONNECT, credentials); memory per connection is then reqwest's.
//!
//! Why not reqwest here: a worker keeps one HTTP/1.1 connection per send in flight (1,000 by
//! default), and reqwest gives no say over hyper's read buffer (8 KiB a connection) or spares the
//! boxed layers around each request. WeChat's answers are a few hundred bytes, so the read buffer
//! is [`READ_BUFFER`]; measured in BENCHMARKS.md ("session 12").
//!
//! Error text never holds the URL (hyper's errors do not carry it), so neither a token in a query
//! string nor an app secret can reach a log line, an error message or the ledger.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reqwest::Url;

/// Bytes hyper reads a connection with: a response's status line and headers must fit (WeChat's
/// take about 300); the body streams through it.
const READ_BUFFER: usize = 4096;

/// The most of an answer's body that is read: WeChat's are under 1 KiB.
const MAX_BODY: usize = 1 << 20;

/// Why an exchange got no answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection was made: the request never left.
    Connect(String),
    /// Anything after that (a timeout, a reset, a body cut short; the HTTP status if one came):
    /// it may have arrived.
    Unknown(String, Option<u16>),
}

#[derive(Clone)]
pub(crate) struct Transport {
    via: Via,
    timeout: Duration,
    user_agent: HeaderValue,
}

#[derive(Clone)]
enum Via {
    // Boxed: hyper's client is 336 bytes, reqwest's one pointer.
    Direct(Box<Client<HttpsConnector<HttpConnector>, Full<Bytes>>>),
    Proxy(reqwest::Client),
}

impl Transport {
    /// The transport to `base` (WeChat's API): direct, or through reqwest when a proxy applies.
    pub(crate) fn to(base: &Url, timeout: Duration) -> Result<Self, String> {
        let proxied = base.as_str().parse::<hyper::Uri>().is_ok_and(|uri| {
            hyper_util::client::proxy::matcher::Matcher::from_env()
                .intercept(&uri)
                .is_some()
        });
        if proxied {
            // reqwest reads the same variables itself (its system proxy).
            Self::through(reqwest::Client::builder(), timeout)
        } else {
            Self::new(timeout)
        }
    }

    /// Through reqwest as `builder` sets it up (its proxies), with this transport's timeouts.
    fn through(builder: reqwest::ClientBuilder, timeout: Duration) -> Result<Self, String> {
        let client = builder
            .timeout(timeout)
            .connect_timeout(connect_timeout(timeout))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| chain("cannot build the HTTP client", &e.without_url()))?;
        Ok(Self {
            via: Via::Proxy(client),
            timeout,
            user_agent: user_agent(),
        })
    }

    fn new(timeout: Duration) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout(timeout)));
        let tls = tls_config().map_err(|e| format!("cannot set up TLS: {e}"))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .http1_read_buf_exact_size(READ_BUFFER)
            .build(connector);
        Ok(Self {
            via: Via::Direct(Box::new(client)),
            timeout,
            user_agent: user_agent(),
        })
    }

    /// GET `url`, or POST `json` to it: the status and the body, within the timeout.
    pub(crate) async fn exchange(&self, url: &Url, json: Option<Vec<u8>>) -> Result<(u16, Bytes), Failure> {
        let request = self.request(url, json)?;
        let trip = async {
            match &self.via {
                Via::Direct(client) => round_trip(client, request).await,
                Via::Proxy(client) => round_trip_proxied(client, request).await,
            }
        };
        match tokio::time::timeout(self.timeout, trip).await {
            Ok(answer) => answer,
            Err(_) => Err(Failure::Unknown("timed out".into(), None)),
        }
    }

    fn request(&self, url: &Url, json: Option<Vec<u8>>) -> Result<Request<Full<Bytes>>, Failure> {
        let builder = Request::builder()
            .uri(url.as_str())
            .header(USER_AGENT, self.user_agent.clone());
        let built = match json {
            Some(body) => builder
                .method("POST")
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(Full::new(Bytes::from(body))),
            None => builder.method("GET").body(Full::new(Bytes::new())),
        };
        // Only a malformed URI fails here; the text says so without repeating it.
        built.map_err(|_| Failure::Connect("request failed: not a valid request URL".into()))
    }
}

fn user_agent() -> HeaderValue {
    HeaderValue::from_static(concat!("wxnotify/", env!("CARGO_PKG_VERSION")))
}

async fn round_trip(
    client: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(u16, Bytes), Failure> {
    let response = client
        .request(request)
        .await
        .map_err(|e| unanswered(e.is_connect(), &e))?;
    read(response.status().as_u16(), response.into_body()).await
}

/// The same exchange through reqwest; its errors lose their URL before they become text.
async fn round_trip_proxied(client: &reqwest::Client, request: Request<Full<Bytes>>) -> Result<(u16, Bytes), Failure> {
    let request =
        reqwest::Request::try_from(request.map(|body| reqwest::Body::from(body.into_inner().unwrap_or_default())))
            .map_err(|e| Failure::Connect(chain("request failed", &e.without_url())))?;
    let response = client
        .execute(request)
        .await
        .map_err(|e| unanswered(e.is_connect(), &e.without_url()))?;
    read(response.status().as_u16(), reqwest::Body::from(response)).await
}

/// A request without an answer: not sent if no connection was made, else perhaps arrived.
fn unanswered(connect: bool, err: &(dyn std::error::Error + 'static)) -> Failure {
    if connect {
        Failure::Connect(chain("connection failed", err))
    } else {
        Failure::Unknown(chain("request failed", err), None)
    }
}

/// An answer's body, at most [`MAX_BODY`] bytes of it.
async fn read<B>(status: u16, body: B) -> Result<(u16, Bytes), Failure>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| Failure::Unknown(format!("bad response body: {e}"), Some(status)))?;
    Ok((status, body.to_bytes()))
}

/// rustls with aws-lc-rs (as for RabbitMQ, src/tls.rs) and the platform's certificate verifier,
/// as reqwest set it up before.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// `kind: error: its source: …`, the source chain saying what happened (refused, reset...).
fn chain(kind: &str, err: &(dyn std::error::Error + 'static)) -> String {
    format!("{kind}: {}", crate::error_text::with_sources(err))
}

/// How long a connection may take to open: the exchange's timeout, at most 5 s.
fn connect_timeout(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers one request with `head` and `body_len` bytes of body.
    async fn answering(head: String, body_len: usize) -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(&vec![b' '; body_len]).await;
        });
        Url::parse(&format!(
            "http://{addr}/cgi-bin/message/template/send?access_token=T0KEN-SECRET"
        ))
        .expect("url")
    }

    fn transport() -> Transport {
        Transport::new(Duration::from_secs(5)).expect("transport")
    }

    #[tokio::test]
    async fn an_answer_is_read_whole() {
        let body = r#"{"errcode":0,"errmsg":"ok","msgid":1}"#;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        let (status, got) = transport()
            .exchange(&answering(head, 0).await, Some(b"{}".to_vec()))
            .await
            .expect("answer");
        assert_eq!((status, got.as_ref()), (200, body.as_bytes()));
    }

    #[tokio::test]
    async fn a_head_of_3_kib_fits_the_read_buffer() {
        let padding = "x".repeat(3000);
        let head = format!("HTTP/1.1 200 OK\r\nx-padding: {padding}\r\ncontent-length: 2\r\n\r\n{{}}");
        let (status, _) = transport()
            .exchange(&answering(head, 0).await, None)
            .await
            .expect("answer");
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_not_buffered() {
        let len = MAX_BODY + 1;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
        match transport().exchange(&answering(head, len).await, None).await {
            Err(Failure::Unknown(text, Some(200))) => assert!(text.starts_with("bad response body"), "{text}"),
            other => panic!("expected a refused body, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn no_error_text_holds_the_url_or_its_token() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let url = Url::parse(&format!("http://{addr}/cgi-bin/token?secret=APP-SECRET")).expect("url");
        let refused = transport().exchange(&url, None).await;
        let Err(Failure::Connect(text)) = refused else {
            panic!("expected a refused connection, got {refused:?}");
        };
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_string();
        let cut = answering(head, 3).await;
        let Err(Failure::Unknown(cut_text, _)) = transport().exchange(&cut, None).await else {
            panic!("expected a body cut short");
        };
        for t in [&text, &cut_text] {
            assert!(!t.contains("SECRET") && !t.contains("127.0.0.1"), "{t}");
        }
    }

    #[tokio::test]
    async fn through_a_proxy_the_request_goes_to_the_proxy() {
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let at = proxy.local_addr().expect("addr");
        let seen = tokio::spawn(async move {
            let (mut conn, _) = proxy.accept().await.expect("accept");
            let mut request = vec![0u8; 4096];
            let n = conn.read(&mut request).await.expect("read");
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
            String::from_utf8_lossy(&request[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        });
        let builder = reqwest::Client::builder().proxy(reqwest::Proxy::all(format!("http://{at}")).expect("proxy"));
        let via = Transport::through(builder, Duration::from_secs(5)).expect("transport");
        let url = Url::parse("http://api.weixin.invalid/cgi-bin/token").expect("url");
        let (status, body) = via.exchange(&url, None).await.expect("answer");
        assert_eq!((status, body.as_ref()), (200, b"{}".as_slice()));
        assert_eq!(
            seen.await.expect("proxy"),
            "GET http://api.weixin.invalid/cgi-bin/token HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = Url::parse(&format!("http://{}/", listener.local_addr().expect("addr"))).expect("url");
        let quick = Transport::new(Duration::from_millis(200)).expect("transport");
        match quick.exchange(&url, None).await {
            Err(Failure::Unknown(text, None)) => assert_eq!(text, "timed out"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        drop(listener);
    }
}
