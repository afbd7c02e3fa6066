//! Slow clients (docs/interface.md §9): a request whose headers and body are not complete within
//! 10 s gets 408 (or, headers never complete, its connection closed); at most
//! `WXNOTIFY_RECEIVER_MAX_CONNECTIONS` connections are served at once; SIGTERM exits within the
//! grace period whatever clients do.

use std::net::SocketAddr;

use super::*;

/// The receiver's bound on reading a request (headers and body), and the slack the tests allow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SLACK: Duration = Duration::from_secs(2);

/// How a slow client talks.
#[derive(Clone, Copy, Debug)]
enum Slow {
    /// Headers at once, announcing 60,000 bytes; then the body a byte at a time.
    Body,
    /// The headers a byte at a time, never finished.
    Headers,
    /// The last header a byte at a time (about 6 s), then the body a byte at a time.
    HeadersThenBody,
}

/// What a slow client saw, and when (from its connect).
#[derive(Debug)]
struct Outcome {
    /// The answer's status line; empty: the connection was closed unanswered.
    status: String,
    after: Duration,
}

/// A plaintext push's path and query, rightly signed (the body never arrives whole).
fn push_target() -> String {
    let (query, _) = Push::new("", Mode::Safe).build();
    let qs = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!("/wechat/{APP_ID}?{qs}")
}

/// Connects and trickles (a byte every 250 ms) until answered or cut off, at most `give_up`.
async fn trickle(addr: SocketAddr, how: Slow, give_up: Duration) -> Outcome {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rx, mut tx) = stream.into_split();
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: x\r\ncontent-type: text/xml\r\ncontent-length: 60000\r\n\r\n",
        push_target()
    );
    let (fast, slow_head) = match how {
        Slow::Body => (head.into_bytes(), Vec::new()),
        Slow::Headers | Slow::HeadersThenBody => {
            let cut = head.find("content-length").expect("a header");
            (head.as_bytes()[..cut].to_vec(), head.as_bytes()[cut..].to_vec())
        }
    };
    let _ = tx.write_all(&fast).await;
    let slow: Vec<u8> = match how {
        Slow::Body => Vec::new(),
        Slow::Headers => b"x-slow: ".to_vec(),
        Slow::HeadersThenBody => slow_head,
    };
    let filler = if matches!(how, Slow::Headers) { b'a' } else { b'<' };
    let writer = async move {
        for byte in slow.into_iter().chain(std::iter::repeat(filler)) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if tx.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut answer = vec![0u8; 256];
        let n = rx.read(&mut answer).await.unwrap_or(0);
        String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let status = tokio::time::timeout(give_up, async {
        tokio::select! {
            status = reader => status,
            () = writer => "writer stopped".to_string(),
        }
    })
    .await
    .unwrap_or_else(|_| format!("still open after {give_up:?}"));
    Outcome {
        status,
        after: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_get_408_within_10_s_and_a_push_lands_meanwhile() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    env.insert_sent("e-1", Some(13_001)).await;
    let give_up = REQUEST_TIMEOUT + SLACK + Duration::from_secs(3);
    let addr = receiver.addr;
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..50 {
        let how = match i {
            0..=1 => Slow::Headers,
            2..=3 => Slow::HeadersThenBody,
            _ => Slow::Body,
        };
        clients.spawn(async move { (how, trickle(addr, how, give_up).await) });
    }
    // Meanwhile, WeChat's push is served at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let xml = finish(13_001, "success");
    assert_eq!(Push::new(&xml, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(env.receipt_of(13_001).await.as_deref(), Some("delivered"));
    while let Some(joined) = clients.join_next().await {
        let (how, outcome) = joined.expect("a client");
        assert!(outcome.after <= REQUEST_TIMEOUT + SLACK, "{how:?}: {outcome:?}");
        match how {
            Slow::Headers => assert!(
                outcome.status.is_empty() || outcome.status.starts_with("HTTP/1.1 408"),
                "{how:?}: {outcome:?}"
            ),
            _ => assert!(outcome.status.starts_with("HTTP/1.1 408"), "{how:?}: {outcome:?}"),
        }
        assert!(
            outcome.after >= REQUEST_TIMEOUT - SLACK,
            "{how:?}: cut too early: {outcome:?}"
        );
    }
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_connections_are_served_and_sigterm_exits_whatever_clients_do() {
    use std::process::Stdio;

    const CAP: usize = 20;
    let env = TestEnv::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = env
        .wxnotify(&["receiver"])
        .env("WECHAT_CALLBACK_TOKEN", CALLBACK_TOKEN)
        .env("WECHAT_ENCODING_AES_KEY", AES_KEY)
        .env("WXNOTIFY_RECEIVER_ADDR", format!("127.0.0.1:{port}"))
        .env("WXNOTIFY_RECEIVER_MAX_CONNECTIONS", CAP.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wxnotify receiver");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let url = format!("http://{addr}/wechat/{APP_ID}");
    wait_for("the receiver answers", Duration::from_secs(30), || async {
        reqwest::get(&url).await.is_ok()
    })
    .await;
    env.insert_sent("e-1", Some(14_001)).await;
    let give_up = REQUEST_TIMEOUT + SLACK + Duration::from_secs(3);
    // The cap's worth of slow clients...
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CAP {
        clients.spawn(trickle(addr, Slow::Body, give_up));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ... and one connection more: it waits (or is refused) while they hold theirs.
    let xml = finish(14_001, "success");
    let (query, body) = Push::new(&xml, Mode::Safe).build();
    let started = Instant::now();
    let beyond = tokio::spawn({
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(with_query(&url, &query))
                .body(body)
                .timeout(give_up)
                .send()
                .await
                .map(|r| r.status())
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!beyond.is_finished(), "a connection beyond the cap was served at once");
    while let Some(joined) = clients.join_next().await {
        let outcome = joined.expect("a client");
        assert!(
            outcome.status.starts_with("HTTP/1.1 408") && outcome.after <= REQUEST_TIMEOUT + SLACK,
            "{outcome:?}"
        );
    }
    // Once they are cut off, the waiting one is served (or, refused, its retry is).
    let status = match beyond.await.expect("the push") {
        Ok(status) => status,
        Err(_) => Push::new(&xml, Mode::Safe).send_to(&url).await.0,
    };
    assert_eq!(status, StatusCode::OK, "after {:?}", started.elapsed());
    assert_eq!(env.receipt_of(14_001).await.as_deref(), Some("delivered"));

    // SIGTERM while slow clients hold connections: the process exits 0 within the grace period.
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CAP {
        clients.spawn(trickle(addr, Slow::Body, give_up));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().expect("running").to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let stopping = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(8), child.wait())
        .await
        .expect("exits within the grace period after SIGTERM")
        .unwrap();
    assert!(
        status.success(),
        "exit 0, got {status:?} after {:?}",
        stopping.elapsed()
    );
    clients.shutdown().await;
}
