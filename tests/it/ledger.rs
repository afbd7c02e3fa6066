//! The ledger on a real Postgres: a value Postgres refuses (a NUL in a text) fails only the
//! request carrying it, never its batch companions; error texts are stored bounded and storable.

use chrono::{DateTime, Utc};
use wxnotify::event::BookingEvent;
use wxnotify::ledger::{AttemptRecord, Claim, ClaimRequest, Finish, Ledger};

use crate::common::fresh_database;

fn booking(event_id: &str, openid: &str) -> BookingEvent {
    let occurred_at = "2026-11-21T09:30:00+08:00";
    BookingEvent {
        event_id: event_id.into(),
        event_type: "booking.confirmed".into(),
        occurred_at: occurred_at.into(),
        occurred: DateTime::parse_from_rfc3339(occurred_at).unwrap(),
        openid: openid.into(),
        app_id: None,
        data: Default::default(),
    }
}

async fn ledger() -> (Ledger, sqlx::PgPool) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (_, pool) = fresh_database(&id, 4).await;
    (Ledger::new(pool.clone(), "w-ledger-test".into()), pool)
}

fn claim_request(event: &BookingEvent) -> ClaimRequest<'_> {
    ClaimRequest {
        event,
        app_id: "wx1111111111111111",
        template_id: "TPL",
        client_msg_id: "wxn-test",
        reopen_dead: false,
    }
}

/// One thread: the 50 claims are all queued before the batcher runs, so they share a statement.
#[tokio::test(flavor = "current_thread")]
async fn a_claim_postgres_refuses_fails_alone_and_its_batch_companions_are_claimed() {
    let (ledger, pool) = ledger().await;
    let events: Vec<BookingEvent> = (0..50)
        .map(|i| {
            let openid = if i == 25 {
                "o-\0-poison".to_string()
            } else {
                format!("o-{i}")
            };
            booking(&format!("c-{i}"), &openid)
        })
        .collect();
    let requests: Vec<ClaimRequest<'_>> = events.iter().map(claim_request).collect();
    let claims = futures_util::future::join_all(requests.iter().map(|r| ledger.claim(r))).await;
    for (i, claim) in claims.into_iter().enumerate() {
        match claim {
            Err(e) if i == 25 => assert!(e.is_data_error(), "its own data error: {e}"),
            Ok(Claim::Owned(_)) if i != 25 => {}
            other => panic!("claim {i}: {other:?}"),
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 49);
}

/// An error text with a NUL, longer than 500 characters (multi-byte ones at the cut).
fn hostile_text() -> String {
    format!("bad\0byte {}", "é".repeat(600))
}

fn assert_bounded(stored: &str) {
    assert!(!stored.contains('\0'), "no NUL: {stored:?}");
    assert_eq!(stored.chars().count(), 500);
    assert!(stored.starts_with("bad\u{FFFD}byte éé"), "{stored:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn error_texts_are_stored_bounded_and_without_nul() {
    let (ledger, pool) = ledger().await;
    let events: Vec<BookingEvent> = (0..3).map(|i| booking(&format!("r-{i}"), "o-r")).collect();
    let mut ids = Vec::new();
    for e in &events {
        match ledger.claim(&claim_request(e)).await.unwrap() {
            Claim::Owned(c) => ids.push(c.id),
            other => panic!("{other:?}"),
        }
    }
    let attempt = AttemptRecord {
        started_at: Utc::now(),
        duration_ms: 12,
        http_status: Some(200),
        errcode: Some(47003),
        errmsg: Some(hostile_text()),
    };
    let finishes = [
        Finish::retrying(Some(47003), hostile_text()),
        Finish::sent(Some(42)),
        Finish::dead("permanent_error", Some(47003), hostile_text()),
    ];
    // Recorded together, in one batch.
    let recorded = futures_util::future::join_all(
        ids.iter()
            .zip(&finishes)
            .map(|(id, finish)| ledger.record(*id, Some(&attempt), finish)),
    )
    .await;
    for r in recorded {
        assert!(r.unwrap(), "recorded");
    }
    let stored: Vec<Option<String>> = sqlx::query_scalar("SELECT last_error FROM deliveries ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_bounded(stored[0].as_deref().unwrap());
    assert_eq!(stored[1], None, "sent: no error");
    assert_bounded(stored[2].as_deref().unwrap());
    let errmsgs: Vec<String> = sqlx::query_scalar("SELECT errmsg FROM delivery_attempts")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(errmsgs.len(), 3);
    errmsgs.iter().for_each(|m| assert_bounded(m));

    let unsendable = booking("u-1", "o-u");
    ledger
        .record_unsendable(
            &unsendable,
            "wx1111111111111111",
            "TPL",
            "wxn-u",
            "render_failed",
            &hostile_text(),
        )
        .await
        .expect("a render error with a NUL is stored");
    let stored: String = sqlx::query_scalar("SELECT last_error FROM deliveries WHERE event_id = 'u-1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_bounded(&stored);
}
