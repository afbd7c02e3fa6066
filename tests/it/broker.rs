//! The broker connection itself.

use secrecy::SecretString;

use crate::common::amqp_url;

/// lapin keeps 32 frames of read and of write buffer per connection, zero-filled (so resident) as
/// soon as it connects: with RabbitMQ's default frame size (128 KiB) that is 8 MiB a connection.
/// wxnotify asks for 16 KiB frames unless `AMQP_URL` says otherwise (`?frame_max=`).
#[tokio::test]
async fn connections_ask_for_small_frames_unless_the_url_says_otherwise() {
    let conn = wxnotify::queue::connect(&SecretString::from(amqp_url()), "wxnotify-test-frames")
        .await
        .expect("connect");
    assert_eq!(conn.configuration().frame_max(), 16 * 1024);
    conn.close(200, "done".into()).await.ok();

    let sep = if amqp_url().contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}frame_max=65536", amqp_url());
    let conn = wxnotify::queue::connect(&SecretString::from(url), "wxnotify-test-frames")
        .await
        .expect("connect");
    assert_eq!(conn.configuration().frame_max(), 65536);
    conn.close(200, "done".into()).await.ok();
}
