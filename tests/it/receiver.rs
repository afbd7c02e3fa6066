//! `wxnotify receiver` (CONTRACT §9) on real Postgres: the three modes, forged and hostile
//! pushes, receipts before their rows, repeats and races, an unreachable database, follower
//! events, and the whole trip from the worker through the simulator's push.
//!
//! Pushes are signed and encrypted with the simulator's own `wire` module, written apart from
//! the receiver from the documented algorithm.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wechat_sim::wire;

use crate::helpers::{AES_KEY, APP_ID, CALLBACK_TOKEN, ReceiverHandle, TestEnv, WorkerOpts, event, wait_for};
use crate::proxy::Proxy;

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// How a test push is signed and wrapped.
#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Compatible,
    Safe,
}

/// A push as WeChat would make it, with knobs to forge it.
struct Push<'a> {
    xml: &'a str,
    mode: Mode,
    token: &'a str,
    aes_key: &'a str,
    /// The appid encrypted after the message.
    appid: &'a str,
    timestamp: i64,
}

impl<'a> Push<'a> {
    fn new(xml: &'a str, mode: Mode) -> Self {
        Self {
            xml,
            mode,
            token: CALLBACK_TOKEN,
            aes_key: AES_KEY,
            appid: APP_ID,
            timestamp: unix_now(),
        }
    }

    /// The query pairs and the body.
    fn build(&self) -> (Vec<(&'static str, String)>, String) {
        let ts = self.timestamp.to_string();
        let nonce = format!("{}", rand::random::<u32>());
        let mut query = vec![
            ("signature", wire::sign(&[self.token, &ts, &nonce])),
            ("timestamp", ts.clone()),
            ("nonce", nonce.clone()),
            ("openid", "oUser".to_string()),
        ];
        let body = match self.mode {
            Mode::Plain => self.xml.to_string(),
            Mode::Compatible | Mode::Safe => {
                let key = wire::aes_key(self.aes_key).expect("a 43-character key");
                let encrypted = wire::encrypt(&key, self.xml, self.appid);
                query.push(("encrypt_type", "aes".into()));
                query.push(("msg_signature", wire::sign(&[self.token, &ts, &nonce, &encrypted])));
                match self.mode {
                    Mode::Compatible => wire::compatible_body(self.xml, &encrypted),
                    _ => wire::safe_body(&encrypted),
                }
            }
        };
        (query, body)
    }

    async fn send(&self, receiver: &ReceiverHandle) -> (StatusCode, String) {
        let (query, body) = self.build();
        post(&receiver.url(), &query, body).await
    }
}

/// `url` with the query pairs appended.
fn with_query(url: &str, query: &[(&str, String)]) -> reqwest::Url {
    let mut url = reqwest::Url::parse(url).expect("a URL");
    url.query_pairs_mut().extend_pairs(query);
    url
}

async fn post(url: &str, query: &[(&str, String)], body: impl Into<reqwest::Body>) -> (StatusCode, String) {
    let r = reqwest::Client::new()
        .post(with_query(url, query))
        .header("content-type", "text/xml")
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .expect("the receiver answers");
    (r.status(), r.text().await.unwrap_or_default())
}

fn finish(msgid: i64, status: &str) -> String {
    wire::template_finish("oUser", unix_now(), msgid, status)
}

async fn metrics(receiver: &ReceiverHandle) -> String {
    reqwest::get(format!("http://{}/metrics", receiver.admin_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

async fn readyz(receiver: &ReceiverHandle) -> StatusCode {
    reqwest::get(format!("http://{}/readyz", receiver.admin_addr))
        .await
        .expect("readyz")
        .status()
}

async fn stored_receipts(env: &TestEnv) -> i64 {
    env.count("SELECT count(*) FROM delivery_receipts").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_compatible_and_safe_pushes_are_accepted_and_applied() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    for (i, msgid) in [1001_i64, 1002, 1003].into_iter().enumerate() {
        env.insert_sent(&format!("e-{i}"), Some(msgid)).await;
    }
    let cases = [
        (Mode::Plain, 1001, "success", "delivered"),
        (Mode::Compatible, 1002, "failed:user block", "user_block"),
        (Mode::Safe, 1003, "failed: system failed", "system_failed"),
    ];
    for (mode, msgid, status, expected) in cases {
        let xml = finish(msgid, status);
        assert_eq!(
            Push::new(&xml, mode).send(&receiver).await,
            (StatusCode::OK, "success".into())
        );
        assert_eq!(env.receipt_of(msgid).await.as_deref(), Some(expected), "{status}");
    }
    let receipt_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT receipt_at FROM deliveries WHERE wechat_msgid = 1001")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(
        (unix_now() - receipt_at.timestamp()).abs() < 60,
        "the push's CreateTime"
    );

    // The URL check echoes echostr only with a right signature.
    let ts = unix_now().to_string();
    let good = [
        ("signature", wire::sign(&[CALLBACK_TOKEN, &ts, "77"])),
        ("timestamp", ts.clone()),
        ("nonce", "77".into()),
        ("echostr", "echo-4711".into()),
    ];
    let client = reqwest::Client::new();
    let r = client.get(with_query(&receiver.url(), &good)).send().await.unwrap();
    assert_eq!(
        (r.status(), r.text().await.unwrap()),
        (StatusCode::OK, "echo-4711".into())
    );
    let mut bad = good.clone();
    bad[0].1 = wire::sign(&["another-token", &ts, "77"]);
    let r = client.get(with_query(&receiver.url(), &bad)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client
        .get(with_query(
            &format!("http://{}/wechat/wxUnknownApp", receiver.addr),
            &good,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        metrics(&receiver)
            .await
            .contains("wxnotify_pushes_total{event=\"TEMPLATESENDJOBFINISH\",result=\"ok\"}")
    );
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_stale_pushes_get_401_and_change_nothing() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    env.insert_sent("e-1", Some(2001)).await;
    let xml = finish(2001, "success");
    let wrong_token = Push {
        token: "notTheToken",
        ..Push::new(&xml, Mode::Plain)
    };
    let wrong_key = Push {
        aes_key: "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut",
        ..Push::new(&xml, Mode::Safe)
    };
    let wrong_appid = Push {
        appid: "wx9999999999999999",
        ..Push::new(&xml, Mode::Safe)
    };
    let stale = Push {
        timestamp: unix_now() - 301,
        ..Push::new(&xml, Mode::Plain)
    };
    let future = Push {
        // 310: the receiver reads its clock a moment later, which brings the future closer.
        timestamp: unix_now() + 310,
        ..Push::new(&xml, Mode::Safe)
    };
    for (what, push) in [
        ("wrong token", wrong_token),
        ("wrong AES key", wrong_key),
        ("wrong trailing appid", wrong_appid),
        ("stale timestamp", stale),
        ("timestamp from the future", future),
    ] {
        assert_eq!(push.send(&receiver).await.0, StatusCode::UNAUTHORIZED, "{what}");
    }
    // No signature at all; a right signature over another body in safe mode (msg_signature).
    let (mut query, body) = Push::new(&xml, Mode::Plain).build();
    query.retain(|(k, _)| *k != "signature");
    assert_eq!(post(&receiver.url(), &query, body).await.0, StatusCode::UNAUTHORIZED);
    let (query, _) = Push::new(&xml, Mode::Safe).build();
    let (_, other_body) = Push::new(&finish(2001, "failed:user block"), Mode::Safe).build();
    assert_eq!(
        post(&receiver.url(), &query, other_body).await.0,
        StatusCode::UNAUTHORIZED
    );

    assert_eq!(stored_receipts(&env).await, 0);
    assert_eq!(env.receipt_of(2001).await, None);
    assert!(metrics(&receiver).await.contains("result=\"bad_signature\""));
    // The same push, rightly made, is taken: the refusals above were about the forgeries.
    assert_eq!(Push::new(&xml, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    assert_eq!(env.receipt_of(2001).await.as_deref(), Some("delivered"));
    receiver.stop().await;
}

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
                    let (query, _) = Push::new("", Mode::Plain).build();
                    post(&receiver.url(), &query, body.clone()).await
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
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_before_its_sent_row_is_kept_and_applied_when_the_msgid_is_written() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    for (msgid, status) in [(4001_i64, "success"), (4002, "failed:user block")] {
        let xml = finish(msgid, status);
        assert_eq!(Push::new(&xml, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    }
    assert_eq!(stored_receipts(&env).await, 2, "kept without a delivery");
    assert!(metrics(&receiver).await.contains("result=\"unknown_msgid\""));
    // The row is written with its msgid at once (INSERT) ...
    env.insert_sent("e-1", Some(4001)).await;
    assert_eq!(env.receipt_of(4001).await.as_deref(), Some("delivered"));
    // ... or gets it later (UPDATE), as the worker's record does.
    let id = env.insert_sent("e-2", None).await;
    assert_eq!(env.receipt_of(4002).await, None);
    sqlx::query("UPDATE deliveries SET status = 'sent', wechat_msgid = 4002 WHERE id = $1")
        .bind(id)
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(env.receipt_of(4002).await.as_deref(), Some("user_block"));
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_repeated_three_times_is_applied_once_and_an_older_one_never_wins() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    env.insert_sent("e-1", Some(5001)).await;
    let xml = wire::template_finish("oUser", unix_now() - 10, 5001, "failed:user block");
    let mut seen = Vec::new();
    for _ in 0..3 {
        assert_eq!(Push::new(&xml, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
        let row: (Option<String>, Option<chrono::DateTime<chrono::Utc>>, String) = sqlx::query_as(
            "SELECT receipt_status, receipt_at, (SELECT string_agg(status || '@' || event_at, ',') FROM delivery_receipts)
               FROM deliveries WHERE wechat_msgid = 5001",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        seen.push(row);
    }
    assert_eq!(seen[0].0.as_deref(), Some("user_block"));
    assert!(seen.iter().all(|r| *r == seen[0]), "{seen:?}");
    // An older push (earlier CreateTime) arriving late changes nothing.
    let older = wire::template_finish("oUser", unix_now() - 100, 5001, "success");
    assert_eq!(Push::new(&older, Mode::Plain).send(&receiver).await.0, StatusCode::OK);
    assert_eq!(env.receipt_of(5001).await.as_deref(), Some("user_block"));

    // Followers: the latest by CreateTime wins, whatever the order of arrival.
    let t = unix_now();
    for (at, followed) in [(t - 20, false), (t - 30, true)] {
        let xml = wire::follow("oFan", at, followed);
        assert_eq!(Push::new(&xml, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    }
    let followed = || async {
        sqlx::query_scalar::<_, bool>("SELECT followed FROM followers WHERE app_id = $1 AND openid = 'oFan'")
            .bind(APP_ID)
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    assert!(
        !followed().await,
        "the older subscribe does not undo the newer unsubscribe"
    );
    let xml = wire::follow("oFan", t - 5, true);
    assert_eq!(Push::new(&xml, Mode::Plain).send(&receiver).await.0, StatusCode::OK);
    assert!(followed().await);
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_racing_the_writes_of_their_msgids_each_land_on_their_row() {
    const N: i64 = 1000;
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id)
         SELECT 'race-' || i, 'booking.confirmed', $1, 'o' || i, 'TPL', now(), 'c' || i FROM generate_series(1, $2) i",
    )
    .bind(APP_ID)
    .bind(N)
    .execute(&env.pool)
    .await
    .unwrap();
    let status_of = |i: i64| ["success", "failed:user block", "failed: system failed"][(i % 3) as usize];
    let expected_of = |i: i64| ["delivered", "user_block", "system_failed"][(i % 3) as usize];
    let msgid_of = |i: i64| 7_000_000_000_000_000_000 + i;
    // The worker's side: msgids written in batches of 50, as its batched record does, each
    // transaction held open a moment after its UPDATE (a busy database): receipts for those
    // msgids arrive while the msgids are written but not yet committed.
    let pool = env.pool.clone();
    let writer = tokio::spawn(async move {
        for batch in (1..=N).collect::<Vec<_>>().chunks(50) {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(
                "UPDATE deliveries d SET status = 'sent', wechat_msgid = v.msgid, sent_at = now()
                   FROM unnest($1::text[], $2::bigint[]) AS v(event_id, msgid) WHERE d.event_id = v.event_id",
            )
            .bind(batch.iter().map(|i| format!("race-{i}")).collect::<Vec<_>>())
            .bind(batch.iter().map(|&i| msgid_of(i)).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query("SELECT pg_sleep(0.1)").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    });
    // WeChat's side: the receipts, 32 at a time.
    let pushes = futures_util::stream::iter((1..=N).map(|i| {
        let receiver = &receiver;
        async move {
            let xml = finish(msgid_of(i), status_of(i));
            Push::new(&xml, if i % 2 == 0 { Mode::Safe } else { Mode::Plain })
                .send(receiver)
                .await
                .0
        }
    }));
    use futures_util::StreamExt;
    let answers: Vec<StatusCode> = pushes.buffer_unordered(32).collect().await;
    writer.await.unwrap();
    assert!(answers.iter().all(|s| *s == StatusCode::OK));
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT event_id, receipt_status FROM deliveries ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), N as usize);
    let wrong: Vec<_> = rows
        .iter()
        .filter(|(event_id, status)| {
            let i: i64 = event_id.trim_start_matches("race-").parse().unwrap();
            status.as_deref() != Some(expected_of(i))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} rows without their receipt, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_success_for_what_postgres_did_not_store_and_retries_land_after() {
    const N: i64 = 20;
    let env = TestEnv::new().await;
    let upstream = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::to(upstream).await;
    let via_proxy = env.db_url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(via_proxy, env.db_url, "the test database is on 127.0.0.1:5432");
    let receiver = env.spawn_receiver(Some(&via_proxy), false).await;
    // WeChat's tries 3 s apart: room for the checks below before the last one.
    env.push_to(&receiver, true, 3000);
    for i in 0..N {
        env.insert_sent(&format!("e-{i}"), Some(8000 + i)).await;
    }
    proxy.cut();
    for i in 0..N {
        env.sim.push(wechat_sim::PushEvent {
            appid: APP_ID.into(),
            openid: "oUser".into(),
            kind: wechat_sim::PushKind::TemplateFinish {
                msgid: 8000 + i,
                status: "success".into(),
            },
        });
    }
    wait_for("every first try refused", Duration::from_secs(20), || async {
        env.sim.stats().push_tries_failed >= N as u64
    })
    .await;
    assert_eq!(
        env.sim.stats().pushes_acknowledged,
        0,
        "no success while Postgres is away"
    );
    assert_eq!(stored_receipts(&env).await, 0);
    assert!(metrics(&receiver).await.contains("result=\"db_error\""));
    wait_for("/readyz says not ready", Duration::from_secs(5), || async {
        readyz(&receiver).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;

    let _back = Proxy::at(proxy.addr, upstream).await;
    wait_for("every receipt applied by a retry", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM deliveries WHERE receipt_status = 'delivered'")
            .await
            == N
    })
    .await;
    wait_for("every push acknowledged", Duration::from_secs(10), || async {
        env.sim.stats().pushes_acknowledged == N as u64
    })
    .await;
    assert_eq!(env.sim.stats().pushes_abandoned, 0);
    wait_for("/readyz says ready again", Duration::from_secs(10), || async {
        readyz(&receiver).await == StatusCode::OK
    })
    .await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_the_worker_sends_the_simulator_pushes_and_the_row_gets_its_receipt() {
    const N: usize = 300;
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    env.push_to(&receiver, true, 1000);
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        push_user_block_rate: Some(0.2),
        push_system_failed_rate: Some(0.1),
        ..Default::default()
    });
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    // Two thirds template messages, a third subscribe messages (booking.reminder).
    for i in 0..N {
        let event_type = if i % 3 == 0 {
            "booking.reminder"
        } else {
            "booking.confirmed"
        };
        env.publish(&event(&format!("e2e-{i}"), event_type, &format!("oE2E{i}")))
            .await;
    }
    wait_for("every delivery with its receipt", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE receipt_status IS NOT NULL")
            .await
            == N as i64
    })
    .await;
    // The simulator notes a push's fate after the receiver's answer: wait for the last notes.
    wait_for("every push noted", Duration::from_secs(10), || async {
        env.sim.pushes().len() == N
    })
    .await;
    let pushed = env.sim.pushes();
    let subscribe_results = pushed
        .iter()
        .filter(|p| matches!(p.event.kind, wechat_sim::PushKind::SubscribeMsgSent { .. }))
        .count();
    assert_eq!(
        subscribe_results,
        N / 3,
        "a subscribe_msg_sent_event for each subscribe message"
    );
    for p in &pushed {
        let (msgid, status) = match &p.event.kind {
            wechat_sim::PushKind::TemplateFinish { msgid, status } => (msgid, status),
            wechat_sim::PushKind::SubscribeMsgSent { msgid, status, .. } => (msgid, status),
            other => panic!("{other:?}"),
        };
        let expected = match status.as_str() {
            "success" => "delivered",
            s if s.starts_with("failed:user") => "user_block",
            _ => "system_failed",
        };
        assert!(p.acknowledged);
        assert_eq!(env.receipt_of(*msgid).await.as_deref(), Some(expected), "msgid {msgid}");
    }
    // Follower events on request, through the simulator's control.
    env.sim.follow(APP_ID, "oE2E1", false);
    wait_for("the unfollow stored", Duration::from_secs(10), || async {
        env.count("SELECT count(*) FROM followers WHERE openid = 'oE2E1' AND NOT followed")
            .await
            == 1
    })
    .await;
    worker.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_aes_key_is_a_configuration_error_naming_the_variable() {
    let env = TestEnv::new().await;
    let secret_key = "TooShortAesKeyValue";
    let out = env
        .wxnotify(&["receiver"])
        .env("WECHAT_CALLBACK_TOKEN", CALLBACK_TOKEN)
        .env("WECHAT_ENCODING_AES_KEY", secret_key)
        .env("WXNOTIFY_RECEIVER_ADDR", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("WECHAT_ENCODING_AES_KEY"), "{stderr}");
    assert!(
        !stderr.contains(secret_key) && !stderr.contains(CALLBACK_TOKEN),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_broker_a_push_postgres_cannot_take_is_queued_answered_success_and_stored_later() {
    const N: i64 = 20;
    let env = TestEnv::new().await;
    let upstream = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::to(upstream).await;
    let via_proxy = env.db_url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let receiver = env.spawn_receiver(Some(&via_proxy), true).await;
    for i in 0..N {
        env.insert_sent(&format!("e-{i}"), Some(9000 + i)).await;
    }
    proxy.cut();
    let receiver_ref = &receiver;
    let answers = futures_util::future::join_all((0..N).map(|i| async move {
        let xml = finish(9000 + i, "success");
        let started = Instant::now();
        let answer = Push::new(&xml, Mode::Safe).send(receiver_ref).await;
        (answer, started.elapsed())
    }))
    .await;
    for (answer, took) in answers {
        assert_eq!(answer, (StatusCode::OK, "success".into()));
        assert!(took < Duration::from_secs(5), "within WeChat's 5 s: {took:?}");
    }
    assert_eq!(
        stored_receipts(&env).await,
        0,
        "not in Postgres yet: in the pushes queue"
    );
    assert!(metrics(&receiver).await.contains("result=\"queued\""));

    let _back = Proxy::at(proxy.addr, upstream).await;
    wait_for(
        "every queued receipt stored and applied",
        Duration::from_secs(30),
        || async {
            env.count("SELECT count(*) FROM deliveries WHERE receipt_status = 'delivered'")
                .await
                == N
        },
    )
    .await;
    receiver.stop().await;
    let ch = env.channel().await;
    let pushes = format!("{}.pushes", env.topology.queue);
    let _ = ch
        .queue_delete(pushes.as_str().into(), lapin::options::QueueDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_gets_503_within_4_s_and_the_retry_lands() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    env.insert_sent("e-1", Some(10_001)).await;
    // A stuck transaction holds the msgid's lock (as a worker's write of it would): the receiver waits.
    let mut blocker = env.pool.begin().await.unwrap();
    sqlx::query("SELECT lock_receipt_msgid(10001)")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let xml = finish(10_001, "failed:user block");
    let started = Instant::now();
    let (status, _) = Push::new(&xml, Mode::Safe).send(&receiver).await;
    let took = started.elapsed();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no success before it is stored"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "answered before WeChat's 5 s: {took:?}"
    );
    assert_eq!(env.receipt_of(10_001).await, None);
    blocker.rollback().await.unwrap();
    // WeChat's next try.
    assert_eq!(Push::new(&xml, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    assert_eq!(env.receipt_of(10_001).await.as_deref(), Some("user_block"));
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mini_program_json_pushes_are_read_in_plain_and_safe_mode() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    // Above 2^53: exact only if never read through an f64.
    let (a, b) = (9_007_199_254_740_993_i64, 9_007_199_254_740_995_i64);
    env.insert_sent("e-a", Some(a)).await;
    env.insert_sent("e-b", Some(b)).await;
    let now = unix_now();
    let one = format!(
        r#"{{"ToUserName":"gh_sim","FromUserName":"oUser","CreateTime":{now},"MsgType":"event",
            "Event":"subscribe_msg_sent_event","SubscribeMsgSentEvent":{{"List":
            {{"TemplateId":"TPL","MsgID":"{a}","ErrorCode":0,"ErrorStatus":"success"}}}}}}"#
    );
    assert_eq!(Push::new(&one, Mode::Plain).send(&receiver).await.0, StatusCode::OK);
    assert_eq!(env.receipt_of(a).await.as_deref(), Some("delivered"));
    let many = format!(
        r#"{{"ToUserName":"gh_sim","FromUserName":"oUser","CreateTime":{now},"MsgType":"event",
            "Event":"subscribe_msg_sent_event","SubscribeMsgSentEvent":{{"List":[
            {{"TemplateId":"TPL","MsgID":{b},"ErrorCode":43101,"ErrorStatus":"failed:user refuse to accept the msg"}},
            {{"TemplateId":"TPL","MsgID":{a},"ErrorCode":0,"ErrorStatus":"success"}}]}}}}"#
    );
    // Safe mode in JSON: the envelope is JSON too.
    let (query, _) = Push::new(&many, Mode::Safe).build();
    let key = wire::aes_key(AES_KEY).unwrap();
    let encrypted = wire::encrypt(&key, &many, APP_ID);
    let ts = query.iter().find(|(k, _)| *k == "timestamp").unwrap().1.clone();
    let nonce = query.iter().find(|(k, _)| *k == "nonce").unwrap().1.clone();
    let query: Vec<(&str, String)> = query
        .into_iter()
        .map(|(k, v)| match k {
            "msg_signature" => (k, wire::sign(&[CALLBACK_TOKEN, &ts, &nonce, &encrypted])),
            _ => (k, v),
        })
        .collect();
    let body = format!(r#"{{"ToUserName":"gh_sim","Encrypt":"{encrypted}"}}"#);
    assert_eq!(post(&receiver.url(), &query, body).await.0, StatusCode::OK);
    assert_eq!(env.receipt_of(b).await.as_deref(), Some("user_block"));
    assert_eq!(env.receipt_of(a).await.as_deref(), Some("delivered"));
    receiver.stop().await;
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
    let (query, _) = Push::new("", Mode::Plain).build();
    let injected = "<xml><MsgType>event</MsgType>\nINJECTED-LINE level=ERROR<Event></xml>";
    assert_eq!(post(&url, &query, injected).await.0, StatusCode::BAD_REQUEST);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_configured_app_is_served_with_its_own_token_and_key() {
    use std::process::Stdio;

    const APP2: &str = "wx2222222222222222";
    const TOKEN2: &str = "secondAppToken";
    const KEY2: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("wxn-receiver-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = std::fs::read_to_string(&env.templates).unwrap();
    let with_app = dir.join("templates.toml");
    std::fs::write(
        &with_app,
        format!(
            "{shipped}\n[[apps]]\napp_id = \"{APP2}\"\nsecret_env = \"APP2_SECRET\"\n\
             callback_token_env = \"APP2_CALLBACK_TOKEN\"\naes_key_env = \"APP2_AES_KEY\"\n"
        ),
    )
    .unwrap();
    let without_token = dir.join("no-token.toml");
    std::fs::write(
        &without_token,
        format!("{shipped}\n[[apps]]\napp_id = \"{APP2}\"\nsecret_env = \"APP2_SECRET\"\n"),
    )
    .unwrap();

    let out = env
        .wxnotify(&["receiver"])
        .env("WECHAT_CALLBACK_TOKEN", CALLBACK_TOKEN)
        .env("WXNOTIFY_TEMPLATES", &without_token)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(APP2) && stderr.contains("callback_token_env"),
        "{stderr}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = env
        .wxnotify(&["receiver"])
        .env("WECHAT_CALLBACK_TOKEN", CALLBACK_TOKEN)
        .env("WECHAT_ENCODING_AES_KEY", AES_KEY)
        .env("WXNOTIFY_TEMPLATES", &with_app)
        .env("APP2_CALLBACK_TOKEN", TOKEN2)
        .env("APP2_AES_KEY", KEY2)
        .env("WXNOTIFY_RECEIVER_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wxnotify receiver");
    wait_for("the receiver listens", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    let xml = finish(12_001, "success");
    let url2 = format!("http://127.0.0.1:{port}/wechat/{APP2}");
    let app2 = Push {
        token: TOKEN2,
        aes_key: KEY2,
        appid: APP2,
        ..Push::new(&xml, Mode::Safe)
    };
    let (query, body) = app2.build();
    assert_eq!(post(&url2, &query, body).await, (StatusCode::OK, "success".into()));
    // The default app's credentials do not open the second app's door, nor the other way round.
    let (query, body) = Push::new(&xml, Mode::Safe).build();
    assert_eq!(post(&url2, &query, body).await.0, StatusCode::UNAUTHORIZED);
    let (query, body) = app2.build();
    let url1 = format!("http://127.0.0.1:{port}/wechat/{APP_ID}");
    assert_eq!(post(&url1, &query, body).await.0, StatusCode::UNAUTHORIZED);
    let stored: Vec<String> = sqlx::query_scalar("SELECT app_id FROM delivery_receipts")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![APP2.to_string()]);

    let pid = child.id().expect("running").to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_of_several_receipts_never_deadlocks_with_a_worker_writing_their_msgids() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    // Two msgids whose locks the receiver would take second-first (by their hash order).
    let m1: i64 = 13_001;
    let m2: i64 = sqlx::query_scalar(
        "SELECT m FROM generate_series(13002::bigint, 13100) m WHERE hashint8(m) < hashint8(13001::bigint) LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let r1 = env.insert_sent("e-1", None).await;
    let r2 = env.insert_sent("e-2", None).await;
    // A worker's batched record, mid-way: msgid 1 written (its lock held), msgid 2 next.
    let mut worker = env.pool.begin().await.unwrap();
    sqlx::query("UPDATE deliveries SET status = 'sent', wechat_msgid = $1 WHERE id = $2")
        .bind(m1)
        .bind(r1)
        .execute(&mut *worker)
        .await
        .unwrap();
    let now = unix_now();
    let xml = format!(
        "<xml><ToUserName>gh</ToUserName><FromUserName>oUser</FromUserName><CreateTime>{now}</CreateTime>\
         <MsgType>event</MsgType><Event>subscribe_msg_sent_event</Event><SubscribeMsgSentEvent>\
         <List><TemplateId>T</TemplateId><MsgID>{m1}</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List>\
         <List><TemplateId>T</TemplateId><MsgID>{m2}</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List>\
         </SubscribeMsgSentEvent></xml>"
    );
    let (query, body) = Push::new(&xml, Mode::Plain).build();
    let url = receiver.url();
    let push = tokio::spawn(async move { post(&url, &query, body).await });
    wait_for(
        "the receiver waits for msgid 1's lock",
        Duration::from_secs(10),
        || async {
            env.count(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
            )
            .await
                == 1
        },
    )
    .await;
    let second = sqlx::query("UPDATE deliveries SET status = 'sent', wechat_msgid = $1 WHERE id = $2")
        .bind(m2)
        .bind(r2)
        .execute(&mut *worker)
        .await;
    assert!(second.is_ok(), "the worker's write failed: {second:?}");
    worker.commit().await.unwrap();
    assert_eq!(push.await.unwrap().0, StatusCode::OK);
    assert_eq!(env.receipt_of(m1).await.as_deref(), Some("delivered"));
    assert_eq!(env.receipt_of(m2).await.as_deref(), Some("delivered"));
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_left_gets_no_template_message_until_they_follow_again() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    env.push_to(&receiver, true, 0);
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    // The user leaves: WeChat pushes `unsubscribe`.
    env.sim.follow(APP_ID, "oLeft", false);
    wait_for("the unfollow stored", Duration::from_secs(10), || async {
        env.count("SELECT count(*) FROM followers WHERE openid = 'oLeft' AND NOT followed")
            .await
            == 1
    })
    .await;
    let sends_before = env.sim.stats().send_requests;
    env.publish(&event("left-1", "booking.confirmed", "oLeft")).await;
    // A subscribe message (mini program) is not about following the account: it goes.
    env.publish(&event("left-2", "booking.reminder", "oLeft")).await;
    wait_for("both final", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status IN ('suppressed', 'sent')")
            .await
            == 2
    })
    .await;
    let statuses = env.statuses().await;
    assert_eq!(statuses["left-1"], "suppressed");
    assert_eq!(statuses["left-2"], "sent");
    assert_eq!(
        env.sim.stats().send_requests,
        sends_before + 1,
        "no call for the suppressed one"
    );
    assert_eq!(
        env.collect_dlq(0, Duration::from_millis(200)).await.len(),
        0,
        "no dead letter"
    );
    // They follow again: the next one is sent.
    env.sim.follow(APP_ID, "oLeft", true);
    wait_for("the follow stored", Duration::from_secs(10), || async {
        env.count("SELECT count(*) FROM followers WHERE openid = 'oLeft' AND followed")
            .await
            == 1
    })
    .await;
    env.publish(&event("left-3", "booking.confirmed", "oLeft")).await;
    wait_for("sent", Duration::from_secs(30), || async {
        env.statuses().await.get("left-3").map(String::as_str) == Some("sent")
    })
    .await;
    worker.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_43004_marks_the_user_unfollowed_and_the_next_template_message_is_suppressed() {
    let env = TestEnv::new().await;
    env.sim.set_unsubscribed(&["oGone"]);
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("gone-1", "booking.confirmed", "oGone")).await;
    wait_for("dead on 43004", Duration::from_secs(30), || async {
        env.statuses().await.get("gone-1").map(String::as_str) == Some("dead")
    })
    .await;
    // The unfollow is noted after the delivery's own outcome (carry-out's order): `dead` can be
    // seen a moment before the `followers` row (a CI run did).
    wait_for("the unfollow noted", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM followers WHERE openid = 'oGone' AND NOT followed AND source = 'errcode_43004'")
            .await
            == 1
    })
    .await;
    let sends = env.sim.stats().send_requests;
    env.publish(&event("gone-2", "booking.completed", "oGone")).await;
    wait_for("suppressed", Duration::from_secs(30), || async {
        env.statuses().await.get("gone-2").map(String::as_str) == Some("suppressed")
    })
    .await;
    assert_eq!(env.sim.stats().send_requests, sends, "WeChat was not called again");
    worker.stop().await;
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
                let (query, _) = Push::new("", Mode::Plain).build();
                let bomb = post(&url, &query, laughs.clone());
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

/// The 43004 is noted only after the delivery's own outcome: a worker killed in between leaves
/// the message to be decided again (dead-lettered with its errcode, replayable), not suppressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_a_43004_but_before_its_record_leaves_a_dead_letter_not_a_suppression() {
    use std::process::Stdio;

    let env = TestEnv::with_faults(wechat_sim::Faults {
        latency_ms: 1500,
        ..wechat_sim::Faults::default()
    })
    .await;
    env.sim.set_unsubscribed(&["oKill43004"]);
    let mut child = env
        .worker_command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wxnotify worker");
    env.publish(&event("k43-1", "booking.confirmed", "oKill43004")).await;
    wait_for("claimed, being sent", Duration::from_secs(30), || async {
        env.statuses().await.get("k43-1").map(String::as_str) == Some("pending")
    })
    .await;
    // Hold the row: the worker's record of the outcome waits behind this lock.
    let mut tx = env.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM deliveries WHERE event_id = 'k43-1' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    wait_for("WeChat answered 43004", Duration::from_secs(30), || async {
        env.sim.stats().errors.get(&43004).copied().unwrap_or(0) == 1
    })
    .await;
    // The simulator counts the error when it decides, halfway through its latency: wait until
    // the answer has reached the worker and the worker has done whatever comes before its record,
    // i.e. until that record waits behind this lock.
    wait_for(
        "the worker's record waits behind the held row",
        Duration::from_secs(30),
        || async { env.lock_waiters().await >= 1 },
    )
    .await;
    let noted = env
        .count("SELECT count(*) FROM followers WHERE openid = 'oKill43004'")
        .await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    drop(tx);
    assert_eq!(
        noted, 0,
        "the 43004 was noted before the delivery's outcome was recorded"
    );

    env.sim.patch_faults(wechat_sim::FaultsPatch {
        latency_ms: Some(0),
        ..Default::default()
    });
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    wait_for("dead on 43004", Duration::from_secs(60), || async {
        env.statuses().await.get("k43-1").map(String::as_str) == Some("dead")
    })
    .await;
    let dead = env.collect_dlq(1, Duration::from_secs(10)).await;
    // Its outcome: dead with its errcode, in the DLQ for a replay; the killed worker's held-back
    // record may land after it died (its statement was already in Postgres) or the next worker
    // decides again: either way the message is not `suppressed`.
    assert_eq!(dead[0].1.get("wxnotify-errcode").map(String::as_str), Some("43004"));
    worker.stop().await;
}

/// A 43004 whose dead letter could not be published (its exchange gone) is not noted: the message
/// goes back, meets WeChat's 43004 again and is dead-lettered with it, not suppressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_43004_whose_dead_letter_publish_failed_is_dead_lettered_on_its_next_delivery_not_suppressed() {
    use lapin::options::ExchangeDeleteOptions;

    let env = TestEnv::new().await;
    env.sim.set_unsubscribed(&["oNoDlx"]);
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("warm", "booking.confirmed", "oWarm")).await;
    wait_for("the worker delivers", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 1
    })
    .await;
    // The dead-letter exchange vanishes: the 43004's dead-letter publish fails.
    let ch = env.channel().await;
    ch.exchange_delete(env.topology.dlx.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    env.publish(&event("nodlx-1", "booking.confirmed", "oNoDlx")).await;
    let dead = env.collect_dlq(1, Duration::from_secs(60)).await;
    assert_eq!(dead[0].1.get("wxnotify-errcode").map(String::as_str), Some("43004"));
    wait_for("dead", Duration::from_secs(30), || async {
        env.statuses().await.get("nodlx-1").map(String::as_str) == Some("dead")
    })
    .await;
    assert!(
        env.sim.stats().errors.get(&43004).copied().unwrap_or(0) >= 2,
        "sent again after the failed publish"
    );
    worker.stop().await;
}
