//! Push and email over TLS, as in production: the `workers` binary pushes to an HTTPS endpoint
//! (APNs, or FCM and its token endpoint), or mails to an SMTP server over TLS, whose certificate
//! a local CA signed. It checks the certificate against the system's CA store, so without that
//! CA the send fails and waits for a retry; with the CA named in `SSL_CERT_FILE` the retry goes
//! through.

mod common;

use std::{path::Path, time::Duration};

use common::Workers;

use groundcrew_jobs::{
    notify::{Category, Notification},
    queue::Queue,
};
use groundcrew_testkit::{
    TestEnv, apns::FakeApns, eventually, fcm::FakeFcm, smtp::SmtpServer, tls::TestCa,
};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_push_goes_over_tls_only_to_a_trusted_certificate() {
    let ca = TestCa::new();
    let apns = FakeApns::start_tls(&ca).await;
    assert!(apns.url.starts_with("https://"), "{}", apns.url);
    let id = delivered_once_trusted(
        &ca,
        "apns",
        |dir| apns.child_env(dir),
        || apns.request_count(),
    )
    .await;
    let requests = apns.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].device_token, "tlsdevice");
    assert_eq!(requests[0].auth_error, None);
    assert_eq!(
        requests[0].header("apns-collapse-id"),
        Some(&*id.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_push_goes_over_tls_only_to_a_trusted_certificate() {
    let ca = TestCa::new();
    let fcm = FakeFcm::start_tls(&ca).await;
    assert!(fcm.url.starts_with("https://"), "{}", fcm.url);
    let id = delivered_once_trusted(
        &ca,
        "fcm",
        |dir| fcm.child_env(dir),
        || fcm.token_requests() + fcm.messages().len(),
    )
    .await;
    assert_eq!(fcm.assertion_errors(), Vec::<String>::new());
    assert_eq!(fcm.token_requests(), 1);
    let messages = fcm.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].device_token, "tlsdevice");
    assert_eq!(messages[0].status, 200);
    assert_eq!(
        messages[0].version,
        hyper::Version::HTTP_2,
        "HTTP/2 by ALPN, as to fcm.googleapis.com"
    );
    assert_eq!(
        messages[0].body["message"]["android"]["collapse_key"],
        id.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_over_tls_only_to_a_trusted_certificate() {
    let ca = TestCa::new();
    let smtp = SmtpServer::start_tls(&ca);
    assert!(smtp.url().starts_with("smtps://"), "{}", smtp.url());
    delivered_once_trusted(
        &ca,
        "email",
        |_| vec![("GROUNDCREW_SMTP_URL".into(), smtp.url())],
        || smtp.messages().len(),
    )
    .await;
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, ["tls@example.test"]);
    assert!(messages[0].header("List-Unsubscribe").is_some());
}

/// Notifies a user on `channel` (`apns` or `fcm`: a device named `tlsdevice`; `email`: the
/// address tls@example.test) and has a `workers` child send it with `provider_env` (given a
/// directory for its files): first trusting only the system's CA store, which must leave the
/// delivery pending on a certificate error with nothing `reached` at the provider, then with
/// `SSL_CERT_FILE` naming `ca`, which must deliver it. Returns the notification's id.
async fn delivered_once_trusted(
    ca: &TestCa,
    channel: &str,
    provider_env: impl FnOnce(&Path) -> Vec<(String, String)>,
    reached: impl Fn() -> usize,
) -> Uuid {
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("gc-notify-tls-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let notification = if channel == "email" {
        let user = env.user_with(Some("tls@example.test"), "UTC").await;
        Notification::new(user, Category::Social, "Over TLS", "hello")
            .email("welcome", serde_json::json!({}))
            .without_push()
    } else {
        let user = env.user().await;
        env.device(user, "tlsdevice", channel).await;
        Notification::new(user, Category::Social, "Over TLS", "hello")
    };
    let id = env.send(notification).await;
    let delivery = || async {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT status, detail FROM notification_deliveries WHERE notification_id = $1",
        )
        .bind(id)
        .fetch_optional(&env.services.db)
        .await
        .unwrap()
    };

    // The system's CA store does not know the test CA: the handshake fails and the send waits.
    let mut child_env = provider_env(&dir);
    let untrusting = Workers::start(&env, "notify", 4, child_env.clone());
    let (status, detail) = eventually(Duration::from_secs(30), "a failed first send", || async {
        delivery().await
    })
    .await;
    assert_eq!(status, "pending");
    let detail = detail.unwrap_or_default();
    assert!(detail.contains("certificate"), "{detail}");
    assert_eq!(reached(), 0, "nothing reached the endpoint");
    // Killed only once the retry is on the schedule: killed between the row's write and that,
    // the job would come back only when its 30 s lease ran out.
    eventually(Duration::from_secs(30), "the retry scheduled", || async {
        let depth = env.services.broker.depth(Queue::Notify).await.unwrap();
        (depth.scheduled == 1 && depth.running == 0 && depth.pending == 0).then_some(())
    })
    .await;
    drop(untrusting);

    // Trusting the CA, the retry is delivered over TLS.
    child_env.push(("SSL_CERT_FILE".into(), ca.ca_file().display().to_string()));
    let _trusting = Workers::start(&env, "notify", 4, child_env);
    eventually(Duration::from_secs(30), "the notification sent", || async {
        delivery().await.filter(|(status, _)| status == "sent")
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    id
}
