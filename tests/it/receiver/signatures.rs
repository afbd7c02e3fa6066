//! Who may push: the three modes (plain, compatible, safe), JSON pushes, every configured app
//! with its own token and key; forged, stale and misconfigured ones refused.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_compatible_and_safe_pushes_are_accepted_and_applied() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    // Plaintext pushes go to an app without a key: the mode is the app's.
    let plain = spawn_plain_receiver(&env).await;
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
        let to = if matches!(mode, Mode::Plain) { &plain } else { &receiver };
        assert_eq!(Push::new(&xml, mode).send(to).await, (StatusCode::OK, "success".into()));
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
    plain.stop().await;
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
    let plain = spawn_plain_receiver(&env).await;
    assert_eq!(Push::new(&one, Mode::Plain).send(&plain).await.0, StatusCode::OK);
    plain.stop().await;
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

/// Whether `openid` follows the default app, as `followers` says (`None`: no row).
async fn follows(env: &TestEnv, openid: &str) -> Option<bool> {
    sqlx::query_scalar("SELECT followed FROM followers WHERE app_id = $1 AND openid = $2")
        .bind(APP_ID)
        .bind(openid)
        .fetch_optional(&env.pool)
        .await
        .expect("query")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mode_is_the_apps_a_plaintext_push_to_an_app_with_a_key_is_401_and_changes_nothing() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    let now = unix_now();
    let follow = wire::follow("oVictim", now - 5, true);
    assert_eq!(Push::new(&follow, Mode::Safe).send(&receiver).await.0, StatusCode::OK);
    assert_eq!(follows(&env, "oVictim").await, Some(true));
    // A signed query string from a proxy log, and any body: the plaintext signature never
    // covered it. The app has an AES key, so it takes encrypted pushes only.
    let forged = wire::follow("oVictim", now, false);
    assert_eq!(
        Push::new(&forged, Mode::Plain).send(&receiver).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Nor does `encrypt_type` alone make a plaintext body pass.
    let (mut query, _) = Push::new(&forged, Mode::Safe).build();
    query.retain(|(k, _)| *k != "msg_signature");
    assert_eq!(
        post(&receiver.url(), &query, forged.clone()).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        follows(&env, "oVictim").await,
        Some(true),
        "the forgery changed nothing"
    );
    assert!(metrics(&receiver).await.contains("result=\"bad_signature\""));
    // Compatible mode (both copies, the encrypted one checked) is the app's too: what counts is
    // the encrypted copy, whatever the plaintext copy says.
    let genuine = wire::follow("oVictim", now + 1, false);
    let key = wire::aes_key(AES_KEY).unwrap();
    let encrypted = wire::encrypt(&key, &genuine, APP_ID);
    let (query, _) = Push::new(&genuine, Mode::Safe).build();
    let ts = query.iter().find(|(k, _)| *k == "timestamp").unwrap().1.clone();
    let nonce = query.iter().find(|(k, _)| *k == "nonce").unwrap().1.clone();
    let query: Vec<(&str, String)> = query
        .into_iter()
        .map(|(k, v)| match k {
            "msg_signature" => (k, wire::sign(&[CALLBACK_TOKEN, &ts, &nonce, &encrypted])),
            _ => (k, v),
        })
        .collect();
    let lying_copy = wire::compatible_body(&wire::follow("oVictim", now + 1, true), &encrypted);
    assert_eq!(post(&receiver.url(), &query, lying_copy).await.0, StatusCode::OK);
    assert_eq!(follows(&env, "oVictim").await, Some(false), "the encrypted copy counts");
    receiver.stop().await;

    // An app without a key takes plaintext, and refuses what it cannot decrypt.
    let plain = spawn_plain_receiver(&env).await;
    let follow = wire::follow("oPlain", unix_now(), true);
    assert_eq!(Push::new(&follow, Mode::Plain).send(&plain).await.0, StatusCode::OK);
    assert_eq!(follows(&env, "oPlain").await, Some(true));
    let leave = wire::follow("oPlain", unix_now() + 1, false);
    assert_eq!(
        Push::new(&leave, Mode::Safe).send(&plain).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(follows(&env, "oPlain").await, Some(true));
    plain.stop().await;
}
