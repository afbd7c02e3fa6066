//! The platform's secrets never reach any output: its AppSecret, message-check token and key,
//! verify tickets, component tokens, merchants' access and refresh tokens. The worker runs at
//! trace level through sends, a library template's addition, a rotation and a refresh (WeChat
//! rotating the refresh token too); then `status`, `platform list` and `worker --print-config`.

use std::process::Stdio;

use tokio::io::AsyncReadExt;

use super::*;

const TOKEN: &str = "platformToken42";
const KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";

const LIBRARY_TEMPLATE: &str = r#"
[[templates]]
event_type = "booking.library"
library_id = "OPENTM422222222"
keywords = ["服务项目"]
[templates.data]
thing1 = "{{ data.service }}"
"#;

/// Every secret the ledger holds now: tickets, component tokens, merchants' tokens.
async fn stored_secrets(env: &TestEnv) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT ticket FROM platform_tickets
         UNION ALL SELECT access_token FROM platform_tokens WHERE access_token IS NOT NULL
         UNION ALL SELECT access_token FROM authorizers WHERE access_token IS NOT NULL
         UNION ALL SELECT refresh_token FROM authorizers WHERE refresh_token IS NOT NULL",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

async fn send_one(env: &TestEnv, id: &str, merchant: &str, sent: usize) {
    env.publish(&booking(id, "booking.library", merchant)).await;
    crate::helpers::wait_for("sent", Duration::from_secs(60), || async {
        env.sim.messages().len() == sent
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_platform_secret_reaches_any_output() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    let m = "wxMERCHANT0000061";
    onboard(&env, &t, &[m]).await;
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        rotate_refresh_on_refresh: Some(true),
        ..Default::default()
    });
    let mut secrets = stored_secrets(&env).await;
    let file = platforms_file_with(&env, LIBRARY_TEMPLATE);
    let mut child = env
        .worker_command()
        .env("WXNOTIFY_TEMPLATES", &file.0)
        .env("WXN_TEST_COMPONENT_SECRET", SECRET)
        .env("WXN_TEST_COMPONENT_TOKEN", TOKEN)
        .env("WXN_TEST_COMPONENT_KEY", KEY)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf).await.map(|_| buf)
    });
    let err_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        err.read_to_end(&mut buf).await.map(|_| buf)
    });
    send_one(&env, "sec-1", m, 1).await;
    // WeChat revokes the merchant's token: a 40001, a refresh, new access and refresh tokens.
    env.sim.rotate_merchants(Some(PLATFORM), Some(m));
    send_one(&env, "sec-2", m, 2).await;
    secrets.extend(stored_secrets(&env).await);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let mut output = [out_task.await.unwrap().unwrap(), err_task.await.unwrap().unwrap()].concat();
    assert!(output.len() > 1000, "trace output was captured");
    for args in [
        &["status"][..],
        &["platform", "list"],
        &["platform", "list", "--format", "json"],
        &["worker", "--print-config"],
    ] {
        let out = env
            .wxnotify(args)
            .env("WXNOTIFY_TEMPLATES", &file.0)
            .env("WXN_TEST_COMPONENT_SECRET", SECRET)
            .env("WXN_TEST_COMPONENT_TOKEN", TOKEN)
            .env("WXN_TEST_COMPONENT_KEY", KEY)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        output.extend(out.stdout);
        output.extend(out.stderr);
    }
    let output = String::from_utf8_lossy(&output);
    assert!(
        secrets.len() >= 6,
        "tickets and tokens before and after the refresh: {}",
        secrets.len()
    );
    for s in secrets.iter().map(String::as_str).chain([SECRET, TOKEN, KEY]) {
        assert!(!output.contains(s), "a secret reached the output: {}…", &s[..6]);
    }
}
