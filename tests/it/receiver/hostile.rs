//! Hostile senders: bodies that are huge, slow, malformed or endless get a 4xx fast, the
//! process memory stays flat, and nothing a sender wrote reaches the output unescaped.

use super::*;

/// Sends raw HTTP and reads the status line (a client that writes a huge body first would be
/// cut off before it reads the answer).
async fn raw_status(receiver: &ReceiverHandle, head: &str, body: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(receiver.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    let _ = stream.write_all(body).await;
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered within 5 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_4xx_fast_and_the_receiver_lives_on() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    let plain = spawn_plain_receiver(&env).await;
    env.insert_sent("e-1", Some(3001)).await;
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY a \"aaaaaaaaaa\">{}]><xml><MsgType>event</MsgType>\
         <Event>TEMPLATESENDJOBFINISH</Event><MsgID>3001</MsgID><Status>&a9;</Status><CreateTime>1</CreateTime></xml>",
        (1..10)
            .map(|i| format!(
                "<!ENTITY a{i} \"{}\">",
                format!("&a{};", if i == 1 { String::new() } else { (i - 1).to_string() }).repeat(10)
            ))
            .collect::<String>()
    );
    let external = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\
                    <xml><MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>3001</MsgID>\
                    <Status>&x;</Status><CreateTime>1</CreateTime></xml>"
        .to_string();
    let valid = finish(3001, "success");
    let truncated = valid[..valid.len() / 2].to_string();
    let gbk = valid.replacen("<xml>", "<?xml version=\"1.0\" encoding=\"GBK\"?><xml>", 1);
    for (what, body) in [
        ("billion laughs", laughs.into_bytes()),
        ("external entity", external.into_bytes()),
        ("truncated XML", truncated.into_bytes()),
        ("declared GBK", gbk.into_bytes()),
        ("not UTF-8", b"<xml><MsgType>\xc4\xe3\xba\xc3</MsgType></xml>".to_vec()),
    ] {
        for mode in [Mode::Plain, Mode::Safe] {
            let started = Instant::now();
            let (status, _) = match mode {
                // Signed right: the body itself is what is refused.
                Mode::Plain => {
                    // To an app without a key: one with a key refuses plaintext unread (401).
                    let (query, _) = Push::new("", Mode::Plain).build();
                    post(&plain.url(), &query, body.clone()).await
                }
                _ => match std::str::from_utf8(&body) {
                    Ok(text) => Push::new(text, Mode::Safe).send(&receiver).await,
                    Err(_) => continue,
                },
            };
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{what} took {:?}",
                started.elapsed()
            );
        }
    }
    // 10 MB announced: refused by its length, before it is read.
    let (query, _) = Push::new("", Mode::Plain).build();
    let qs = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let head = format!(
        "POST /wechat/{APP_ID}?{qs} HTTP/1.1\r\nhost: x\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n",
        10 << 20
    );
    let started = Instant::now();
    assert!(raw_status(&receiver, &head, b"<xml>").await.starts_with("HTTP/1.1 413"));
    assert!(started.elapsed() < Duration::from_secs(2));
    // 70 KiB in chunks, no length announced: cut at 64 KiB.
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "a".repeat(8192));
    let chunked = format!("{}0\r\n\r\n", chunk.repeat(9));
    let head = format!(
        "POST /wechat/{APP_ID}?{qs} HTTP/1.1\r\nhost: x\r\ncontent-type: text/xml\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert!(
        raw_status(&receiver, &head, chunked.as_bytes())
            .await
            .starts_with("HTTP/1.1 413")
    );

    assert_eq!(stored_receipts(&env).await, 0);
    let m = metrics(&receiver).await;
    assert!(
        m.contains("result=\"too_large\"") && m.contains("result=\"bad_body\""),
        "{m}"
    );
    // Alive, and a right push still lands.
    assert_eq!(Push::new(&valid, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    assert_eq!(env.receipt_of(3001).await.as_deref(), Some("delivered"));
    tokio::join!(receiver.stop(), plain.stop());
}

/// The receiver process's resident memory, in KiB (`VmRSS`, or the peak with `VmHWM`).
fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Streams `total` bytes of chunked garbage at the receiver and returns its status line (the
/// receiver may hang up after 64 KiB: the rest is not sent).
async fn stream_chunked(addr: std::net::SocketAddr, total: usize) -> String {
    let (query, _) = Push::new("", Mode::Plain).build();
    let qs = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /wechat/{APP_ID}?{qs} HTTP/1.1\r\nhost: x\r\ncontent-type: text/xml\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = format!("{:x}\r\n{}\r\n", 65536, "<".repeat(65536));
    let mut sent = 0;
    while sent < total {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += 65536;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered within 5 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_keep_the_receiver_process_memory_flat() {
    use std::process::Stdio;

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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wxnotify receiver");
    let pid = child.id().unwrap();
    wait_for("the receiver listens", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Warm up with a few of each, then measure the growth over many more.
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE xml [{}]><xml><Status>&a9;</Status></xml>",
        (1..10)
            .map(|i| format!("<!ENTITY a{i} \"{}\">", format!("&a{};", i - 1).repeat(10)))
            .collect::<String>()
    );
    let url = format!("http://{addr}/wechat/{APP_ID}");
    let round = |n: usize| {
        let (laughs, url) = (laughs.clone(), url.clone());
        async move {
            for _ in 0..n {
                let ten_mb = stream_chunked(addr, 10 << 20);
                let (query, body) = Push::new(&laughs, Mode::Safe).build();
                let bomb = post(&url, &query, body);
                let (status, (bomb, _)) = tokio::join!(ten_mb, bomb);
                assert!(status.starts_with("HTTP/1.1 413"), "{status}");
                assert_eq!(bomb, StatusCode::BAD_REQUEST);
            }
        }
    };
    round(5).await;
    let before = rss_kib(pid, "VmRSS:");
    round(40).await;
    let after = rss_kib(pid, "VmRSS:");
    let peak = rss_kib(pid, "VmHWM:");
    println!(
        "receiver RSS {before} KiB before, {after} KiB after 40 × (10 MB chunked + billion laughs); peak {peak} KiB"
    );
    assert!(after < before + 16 * 1024, "memory grew from {before} to {after} KiB");
    assert!(peak < 128 * 1024, "peak {peak} KiB");
    assert_eq!(stored_receipts(&env).await, 0, "nothing stored");
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_no_secret_and_nothing_the_sender_wrote_unescaped() {
    use std::process::Stdio;

    let env = TestEnv::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = env
        .wxnotify(&["receiver"])
        .env("RUST_LOG", "trace")
        .env("WECHAT_CALLBACK_TOKEN", CALLBACK_TOKEN)
        .env("WECHAT_ENCODING_AES_KEY", AES_KEY)
        .env("WXNOTIFY_RECEIVER_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wxnotify receiver");
    let mut stderr = child.stderr.take().unwrap();
    let err_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).await.map(|_| buf)
    });
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the receiver listens", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    env.insert_sent("e-1", Some(11_001)).await;
    let url = format!("{base}/wechat/{APP_ID}");
    let good = finish(11_001, "success");
    let (query, body) = Push::new(&good, Mode::Safe).build();
    assert_eq!(post(&url, &query, body).await.0, StatusCode::OK);
    let (mut query, body) = Push::new(&good, Mode::Plain).build();
    query[0].1 = "0".repeat(40);
    assert_eq!(post(&url, &query, body).await.0, StatusCode::UNAUTHORIZED);
    // Line breaks and a fake log line, in the path and in a malformed body.
    let injected = "<xml><MsgType>event</MsgType>\nINJECTED-LINE level=ERROR<Event></xml>";
    let (query, body) = Push::new(injected, Mode::Safe).build();
    assert_eq!(post(&url, &query, body).await.0, StatusCode::BAD_REQUEST);
    let r = reqwest::Client::new()
        .post(format!("{base}/wechat/wx%0AINJECTED-PATH%0D"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let pid = child.id().expect("running").to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit 0 after SIGTERM, got {status:?}");
    let output = String::from_utf8_lossy(&err_task.await.unwrap().unwrap()).into_owned();
    assert!(output.len() > 1000, "trace output was captured");
    assert!(!output.contains(CALLBACK_TOKEN), "the callback token leaked");
    assert!(!output.contains(&AES_KEY[..20]), "the AES key leaked");
    assert!(output.contains("INJECTED-PATH"), "the unknown app was logged (escaped)");
    for line in output.lines() {
        assert!(
            !line.starts_with("INJECTED") && !line.contains("\rINJECTED"),
            "the sender broke a log line: {line:?}"
        );
    }
}
