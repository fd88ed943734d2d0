//! Delivery end to end: notify() in a transaction → notify.deliver on an in-process worker →
//! local servers speaking APNs (HTTP/2), FCM v1 + OAuth, and SMTP (aiosmtpd). What arrives is
//! asserted as the provider sees it; outcomes as the user sees them (delivery rows, devices).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Timelike, Utc};
use groundcrew_jobs::{
    Job, JobTx, Queue,
    notify::{
        Category, Deliver, DeliverBatch, Notification, Providers, SendWeeklyDigests, notify_many,
        settings::{NotifySettings, SmtpPool},
    },
    worker::PoolSpec,
};
use groundcrew_testkit::{
    InProcess, TestEnv,
    apns::{ApnsReply, FakeApns, TOPIC},
    eventually,
    fcm::{FakeFcm, FcmReply},
    smtp::SmtpServer,
};
use serde_json::json;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(20);

fn settings(
    apns: Option<&FakeApns>,
    fcm: Option<&FakeFcm>,
    smtp: Option<&SmtpServer>,
) -> NotifySettings {
    NotifySettings {
        apns: apns.map(FakeApns::settings),
        fcm: fcm.map(FakeFcm::settings),
        smtp_url: smtp.map(SmtpServer::url),
        smtp_pool: SmtpPool::default(),
        mail_from: "groundcrew <noreply@groundcrew.test>".into(),
        data_dir: std::env::temp_dir().join("gc-notify-test-data"),
        one_click: None,
    }
}

/// A test database whose services push and mail to the given servers; no pool runs yet.
async fn env_for(settings: NotifySettings) -> TestEnv {
    let mut env = TestEnv::new().await;
    env.services.notify = Arc::new(Providers::new(settings).expect("providers"));
    env
}

/// A test database whose services push and mail to the given servers, with a notify pool.
async fn env_with(settings: NotifySettings) -> (TestEnv, InProcess) {
    let env = env_for(settings).await;
    let workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Notify,
        concurrency: 8,
    }]);
    (env, workers)
}

async fn user(env: &TestEnv, email: Option<&str>, timezone: &str) -> Uuid {
    env.user_with(email, timezone).await
}

/// (target, status, detail) of every delivery of a notification, by target.
async fn deliveries(env: &TestEnv, id: Uuid) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT target, status, detail FROM notification_deliveries
         WHERE notification_id = $1 ORDER BY target",
    )
    .bind(id)
    .fetch_all(&env.services.db)
    .await
    .unwrap()
}

/// Waits until no delivery of the notification is pending or due.
async fn settled(env: &TestEnv, id: Uuid, rows: usize) -> Vec<(String, String, Option<String>)> {
    eventually(WITHIN, "deliveries to settle", || async {
        let rows_now = deliveries(env, id).await;
        (rows_now.len() == rows && rows_now.iter().all(|r| r.1 != "pending")).then_some(rows_now)
    })
    .await
}

async fn device_enabled(env: &TestEnv, token: &str) -> bool {
    sqlx::query_scalar("SELECT enabled FROM devices WHERE token = $1")
        .bind(token)
        .fetch_one(&env.services.db)
        .await
        .unwrap()
}

fn status_of<'a>(rows: &'a [(String, String, Option<String>)], target: &str) -> &'a str {
    &rows.iter().find(|r| r.0 == target).expect("a row").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_push_carries_a_signed_token_the_headers_and_the_a2_payload() {
    let apns = FakeApns::start().await;
    let (env, _workers) = env_with(settings(Some(&apns), None, None)).await;
    let alice = user(&env, None, "UTC").await;
    env.device(alice, "aaaa01", "apns").await;

    let first = env
        .send(
            Notification::new(alice, Category::Social, "New follower", "@bob follows you")
                .data(json!({"follower_id": "b0b", "n": 1})),
        )
        .await;
    settled(&env, first, 1).await;
    let second = env
        .send(Notification::new(
            alice,
            Category::Social,
            "Again",
            "@carol too",
        ))
        .await;
    settled(&env, second, 1).await;

    let requests = apns.requests();
    assert_eq!(requests.len(), 2);
    let push = &requests[0];
    assert_eq!(push.auth_error, None, "the provider token verifies");
    assert_eq!(push.device_token, "aaaa01");
    assert_eq!(push.header("apns-push-type"), Some("alert"));
    assert_eq!(push.header("apns-topic"), Some(TOPIC));
    assert_eq!(push.header("apns-priority"), Some("10"));
    assert_eq!(
        push.header("apns-collapse-id"),
        Some(first.to_string().as_str())
    );
    let expiration: i64 = push.header("apns-expiration").unwrap().parse().unwrap();
    let in_a_day = Utc::now().timestamp() + 86_400;
    assert!(
        (in_a_day - 120..=in_a_day + 5).contains(&expiration),
        "{expiration}"
    );
    assert_eq!(
        String::from_utf8(push.body.clone()).unwrap(),
        format!(
            r#"{{"aps":{{"alert":{{"title":"New follower","body":"@bob follows you"}},"sound":"default","mutable-content":0}},"data":{{"follower_id":"b0b","n":1}},"notification_id":"{first}"}}"#
        )
    );
    assert_eq!(
        requests[0].header("authorization"),
        requests[1].header("authorization"),
        "the provider token is reused, not signed per push"
    );
    assert_eq!(deliveries(&env, first).await[0].1, "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_errors_disable_dead_tokens_and_retry_after_the_asked_delay() {
    let apns = FakeApns::start().await;
    let (env, _workers) = env_with(settings(Some(&apns), None, None)).await;
    let alice = user(&env, None, "UTC").await;
    for token in ["t200", "t410", "tbad", "t429", "t503", "t400"] {
        env.device(alice, token, "apns").await;
    }
    let error = |status, reason, retry_after| ApnsReply::Error {
        status,
        reason,
        retry_after,
    };
    apns.script("t410", vec![error(410, "Unregistered", None)]);
    apns.script("tbad", vec![error(400, "BadDeviceToken", None)]);
    apns.script("t429", vec![error(429, "TooManyRequests", Some(3))]);
    apns.script("t503", vec![error(503, "ServiceUnavailable", None)]);
    apns.script("t400", vec![error(400, "BadTopic", None)]);

    let id = env
        .send(Notification::new(
            alice,
            Category::Picks,
            "Pick settled",
            "You won",
        ))
        .await;
    let rows = settled(&env, id, 6).await;

    assert_eq!(status_of(&rows, "t200"), "sent");
    assert_eq!(status_of(&rows, "t429"), "sent", "429 retried, then sent");
    assert_eq!(status_of(&rows, "t503"), "sent", "503 retried, then sent");
    for dead in ["t410", "tbad"] {
        assert_eq!(status_of(&rows, dead), "failed");
        assert!(!device_enabled(&env, dead).await, "{dead} is disabled");
    }
    assert_eq!(status_of(&rows, "t400"), "failed");
    assert!(
        device_enabled(&env, "t400").await,
        "a rejected payload keeps the device"
    );

    let requests = apns.requests();
    let to = |token: &str| {
        requests
            .iter()
            .filter(|r| r.device_token == token)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        to("t200").len(),
        1,
        "a sent push is not repeated by the retry"
    );
    assert_eq!(to("t410").len(), 1);
    let throttled = to("t429");
    assert_eq!(throttled.len(), 2);
    assert_eq!(
        throttled[0].header("apns-collapse-id"),
        throttled[1].header("apns-collapse-id")
    );
    let waited = throttled[1].at - throttled[0].at;
    assert!(
        waited >= Duration::from_secs(3),
        "retried after {waited:?}, asked 3 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_uses_one_oauth_token_and_maps_each_error() {
    let fcm = FakeFcm::start().await;
    let (env, _workers) = env_with(settings(None, Some(&fcm), None)).await;
    let alice = user(&env, None, "UTC").await;
    for token in ["f200", "funreg", "finvalid", "fquota", "funavail"] {
        env.device(alice, token, "fcm").await;
    }
    let error = |status, rpc_status, error_code, retry_after| FcmReply::Error {
        status,
        rpc_status,
        error_code,
        retry_after,
    };
    fcm.script(
        "funreg",
        vec![error(404, "NOT_FOUND", "UNREGISTERED", None)],
    );
    fcm.script(
        "finvalid",
        vec![error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", None)],
    );
    fcm.script(
        "fquota",
        vec![error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", Some(2))],
    );
    fcm.script(
        "funavail",
        vec![error(503, "UNAVAILABLE", "UNAVAILABLE", None)],
    );

    let id = env
        .send(
            Notification::new(
                alice,
                Category::Payments,
                "Payout sent",
                "$90.91 is on its way",
            )
            .data(json!({"escrow_id": "e1", "cents": 9091})),
        )
        .await;
    let rows = settled(&env, id, 5).await;

    assert_eq!(fcm.assertion_errors(), Vec::<String>::new());
    assert_eq!(
        fcm.token_requests(),
        1,
        "the access token is cached across sends"
    );
    for sent in ["f200", "fquota", "funavail"] {
        assert_eq!(status_of(&rows, sent), "sent", "{sent}");
    }
    for dead in ["funreg", "finvalid"] {
        assert_eq!(status_of(&rows, dead), "failed");
        assert!(!device_enabled(&env, dead).await, "{dead} is disabled");
    }
    let messages = fcm.messages();
    let ok: Vec<_> = messages
        .iter()
        .filter(|m| m.device_token == "f200")
        .collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(
        ok[0].body,
        json!({"message": {
            "token": "f200",
            "notification": {"title": "Payout sent", "body": "$90.91 is on its way"},
            "data": {"escrow_id": "e1", "cents": "9091", "notification_id": id.to_string()},
            "android": {"collapse_key": id.to_string(), "notification": {"tag": id.to_string()}},
            "apns": {"headers": {"apns-collapse-id": id.to_string()}},
        }})
    );
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.device_token == "fquota")
            .count(),
        2
    );
}

/// `HH:MM` of a local time `minutes` from now in New York.
fn new_york_hh_mm(minutes: i64) -> String {
    let t = (Utc::now() + chrono::Duration::minutes(minutes))
        .with_timezone(&chrono_tz::America::New_York);
    format!("{:02}:{:02}", t.hour(), t.minute())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_defer_push_to_the_end_of_the_window_and_category_off_skips() {
    let apns = FakeApns::start().await;
    let (env, _workers) = env_with(settings(Some(&apns), None, None)).await;
    let night_owl = user(&env, None, "America/New_York").await;
    env.device(night_owl, "quiet1", "apns").await;
    // A window around the present New York time (the 22:00–07:00 arithmetic across midnight
    // and DST is covered by the unit tests in notify::preferences).
    let end = new_york_hh_mm(90);
    sqlx::query(
        "INSERT INTO notification_preferences (user_id, categories, quiet_start, quiet_end)
         VALUES ($1, '{\"marketing\": false}', $2::time, $3::time)",
    )
    .bind(night_owl)
    .bind(new_york_hh_mm(-60))
    .bind(&end)
    .execute(&env.services.db)
    .await
    .unwrap();

    let id = env
        .send(Notification::new(
            night_owl,
            Category::Social,
            "Late",
            "zzz",
        ))
        .await;
    let promo = env
        .send(Notification::new(
            night_owl,
            Category::Marketing,
            "Sale",
            "50%",
        ))
        .await;
    let deferred_until: DateTime<Utc> = eventually(WITHIN, "the push to be deferred", || async {
        sqlx::query_scalar(
            "SELECT deferred_until FROM notification_deliveries
             WHERE notification_id = $1 AND status = 'deferred'",
        )
        .bind(id)
        .fetch_optional(&env.services.db)
        .await
        .unwrap()
    })
    .await;
    let local = deferred_until.with_timezone(&chrono_tz::America::New_York);
    assert_eq!(format!("{:02}:{:02}", local.hour(), local.minute()), end);
    assert_eq!(local.second(), 0);
    assert_eq!(
        settled(&env, promo, 1).await[0].2.as_deref(),
        Some("category off")
    );
    let depth = env.services.broker.depth(Queue::Notify).await.unwrap();
    assert_eq!(
        depth.scheduled, 1,
        "the wake-up at the end of quiet hours is scheduled"
    );
    assert_eq!(apns.request_count(), 0, "nothing rings during quiet hours");

    // The end of the window arrives: what the scheduled job does then.
    sqlx::query(
        "UPDATE notification_deliveries SET deferred_until = now() WHERE notification_id = $1",
    )
    .bind(id)
    .execute(&env.services.db)
    .await
    .unwrap();
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    tx.enqueue(&Deliver {
        notification_id: id,
        first_delivery: false,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    eventually(WITHIN, "the deferred push to be sent", || async {
        (deliveries(&env, id).await[0].1 == "sent").then_some(())
    })
    .await;
    assert_eq!(apns.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_send_applies_each_users_rules_and_its_retry_repeats_nothing_sent() {
    let apns = FakeApns::start().await;
    let (env, _workers) = env_with(settings(Some(&apns), None, None)).await;
    let awake = user(&env, None, "UTC").await;
    let night_owl = user(&env, None, "America/New_York").await;
    let gone = user(&env, None, "UTC").await;
    let flaky = user(&env, None, "UTC").await;
    for (owner, token) in [
        (awake, "bulk-awake"),
        (night_owl, "bulk-quiet"),
        (gone, "bulk-gone"),
        (flaky, "bulk-flaky"),
    ] {
        env.device(owner, token, "apns").await;
    }
    sqlx::query(
        "INSERT INTO notification_preferences (user_id, quiet_start, quiet_end)
         VALUES ($1, $2::time, $3::time)",
    )
    .bind(night_owl)
    .bind(new_york_hh_mm(-60))
    .bind(new_york_hh_mm(90))
    .execute(&env.services.db)
    .await
    .unwrap();
    let error = |status, reason| ApnsReply::Error {
        status,
        reason,
        retry_after: None,
    };
    apns.script("bulk-gone", vec![error(410, "Unregistered")]);
    apns.script("bulk-flaky", vec![error(503, "ServiceUnavailable")]);

    // Several notifications in one call: one `notify.deliver_batch` job.
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let ids = notify_many(
        &mut tx,
        [awake, night_owl, gone, flaky]
            .into_iter()
            .map(|u| Notification::new(u, Category::Picks, "Pick settled", "You won"))
            .collect(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let status = |i: usize| {
        let env = &env;
        let id = ids[i];
        async move { deliveries(env, id).await.first().map(|row| row.1.clone()) }
    };
    eventually(WITHIN, "every delivery of the batch to settle", || async {
        let all = [
            status(0).await,
            status(1).await,
            status(2).await,
            status(3).await,
        ];
        let expected = ["sent", "deferred", "failed", "sent"].map(|s| Some(s.to_owned()));
        (all == expected).then_some(())
    })
    .await;
    assert!(!device_enabled(&env, "bulk-gone").await);
    let to = |token: &str| {
        apns.requests()
            .iter()
            .filter(|r| r.device_token == token)
            .count()
    };
    assert_eq!(to("bulk-awake"), 1, "the batch's retry did not repeat it");
    assert_eq!(to("bulk-flaky"), 2, "503, then sent by the retry");
    assert_eq!(to("bulk-quiet"), 0, "nothing rings during quiet hours");
    let depth = env.services.broker.depth(Queue::Notify).await.unwrap();
    assert_eq!(depth.scheduled, 1, "one wake-up, for the night owl only");
}

/// The outbox relay pushes a row whose push it cannot know about: here a batch that was
/// delivered, whose outbox delete was lost, relayed after the job's Redis record expired (a
/// new id, as after the retention). Its run reads the delivery rows like any re-run and sends
/// nothing again, though it is the lease's first run and the batch says `first_delivery`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_relay_pushes_again_after_its_record_expired_sends_nothing_twice() {
    let apns = FakeApns::start().await;
    let (env, _workers) = env_with(settings(Some(&apns), None, None)).await;
    let owner = user(&env, None, "UTC").await;
    env.device(owner, "relayed-again", "apns").await;
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let ids = notify_many(
        &mut tx,
        vec![Notification::new(
            owner,
            Category::Social,
            "New follower",
            "@a follows you",
        )],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    eventually(WITHIN, "the push to be sent", || async {
        (env.sent_deliveries(&ids).await == 1).then_some(())
    })
    .await;

    let again = DeliverBatch {
        notification_ids: ids.clone(),
        first_delivery: true,
    };
    let job_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO job_outbox (id, queue, kind, args, max_attempts, created_at)
         VALUES ($1, 'notify', $2, $3, 8, now() - interval '1 minute')",
    )
    .bind(job_id)
    .bind(<DeliverBatch as Job>::KIND)
    .bind(serde_json::to_value(&again).unwrap())
    .execute(&env.services.db)
    .await
    .unwrap();
    let relayed = groundcrew_jobs::outbox::relay_once(&env.services.db, &env.services.broker)
        .await
        .unwrap();
    assert_eq!(relayed, 1);
    eventually(WITHIN, "the relayed batch to finish", || async {
        let record = env.services.broker.job(job_id).await.unwrap()?;
        (record.status == "succeeded").then_some(())
    })
    .await;
    assert_eq!(apns.request_count(), 1, "the push was not sent again");
    assert_eq!(
        status_of(&deliveries(&env, ids[0]).await, "relayed-again"),
        "sent"
    );
}

/// A notify pool's first burst on a new connection is larger than the server's stream limit:
/// it waits for the server's settings and then for free streams instead of opening streams
/// the server refuses, so nothing is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_servers_stream_limit_is_sent_once_without_retries() {
    const PUSHES: i32 = 2_000;
    let apns = FakeApns::start_with_stream_limit(16).await;
    let env = env_for(settings(Some(&apns), None, None)).await;
    let users: Vec<Uuid> = sqlx::query_scalar(
        "WITH u AS (SELECT gen_random_uuid() AS id, n FROM generate_series(1, $1) AS n),
              users AS (INSERT INTO users (id, handle) SELECT id, 'burst_' || n FROM u)
         INSERT INTO devices (id, token, user_id, platform)
         SELECT gen_random_uuid(), 'burst-' || n, id, 'apns' FROM u RETURNING user_id",
    )
    .bind(PUSHES)
    .fetch_all(&env.services.db)
    .await
    .unwrap();
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let notifications = users
        .iter()
        .map(|u| Notification::new(*u, Category::Social, "New follower", "@a follows you"))
        .collect();
    let ids = notify_many(&mut tx, notifications).await.unwrap();
    tx.commit().await.unwrap();

    // Started after the enqueue: every batch at once, 2,000 sends on the first connection.
    let _workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Notify,
        concurrency: 32,
    }]);
    eventually(WITHIN, "every push of the burst to be sent", || async {
        (env.sent_deliveries(&ids).await == users.len()).then_some(())
    })
    .await;
    let retried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notification_deliveries
         WHERE notification_id = ANY($1) AND attempts > 1",
    )
    .bind(&ids)
    .fetch_one(&env.services.db)
    .await
    .unwrap();
    assert_eq!(retried, 0, "no send was refused and retried");
    assert_eq!(apns.request_count(), users.len(), "each push arrived once");
}

/// A row another run writes between this run's read and its write (a worker presumed dead
/// that woke up) is never written over: the run's insert meets it and the run writes again
/// with the guarded upsert, which leaves a `sent` row as it is. Here the run's own send of that
/// row fails late (a dead token), so its write is a transaction with the device's disabling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_sent_between_a_runs_read_and_write_stays_sent() {
    row_sent_between_read_and_write(true).await;
}

/// The same when the run has nothing but new rows to write, which it does with one statement
/// outside a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_sent_between_a_runs_read_and_its_lone_insert_stays_sent() {
    row_sent_between_read_and_write(false).await;
}

/// Another run's `sent` row for `late-token` lands while this run's insert waits on it; the
/// run's own send of that token is answered 410 when `dead_token`, 200 otherwise.
async fn row_sent_between_read_and_write(dead_token: bool) {
    let apns = FakeApns::start().await;
    let env = env_for(settings(Some(&apns), None, None)).await;
    let alice = user(&env, None, "UTC").await;
    env.device(alice, "late-token", "apns").await;
    env.device(alice, "fresh-token", "apns").await;
    if dead_token {
        apns.script(
            "late-token",
            vec![ApnsReply::Error {
                status: 410,
                reason: "Unregistered",
                retry_after: None,
            }],
        );
    }
    let id = env
        .send(Notification::new(alice, Category::Social, "Hi", "there"))
        .await;

    // The other run's write, not committed yet: invisible to this run's read, in the way of
    // its insert.
    let mut other = env.services.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO notification_deliveries
             (notification_id, channel, target, send_id, status, attempts)
         VALUES ($1, 'apns', 'late-token', $1::text, 'sent', 7)",
    )
    .bind(id)
    .execute(&mut *other)
    .await
    .unwrap();
    let _workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Notify,
        concurrency: 2,
    }]);
    eventually(
        WITHIN,
        "the run's insert to wait on the other's row",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock'
               AND query LIKE 'COPY notification_deliveries%'",
            )
            .fetch_one(&env.services.db)
            .await
            .unwrap();
            (waiting == 1).then_some(())
        },
    )
    .await;
    other.commit().await.unwrap();

    eventually(WITHIN, "the run to finish", || async {
        let depth = env.services.broker.depth(Queue::Notify).await.unwrap();
        (depth.pending + depth.scheduled + depth.running == 0).then_some(())
    })
    .await;
    assert_eq!(
        device_enabled(&env, "late-token").await,
        !dead_token,
        "a 410 disables the device"
    );
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT target, status, attempts FROM notification_deliveries
         WHERE notification_id = $1 ORDER BY target",
    )
    .bind(id)
    .fetch_all(&env.services.db)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("fresh-token".into(), "sent".into(), 1),
            ("late-token".into(), "sent".into(), 7),
        ],
        "the run did not write over the sent row; the new row was written"
    );
    assert_eq!(apns.request_count(), 2, "one send each, no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_arrives_once_with_both_parts_and_list_unsubscribe_and_never_to_suppressed() {
    let smtp = SmtpServer::start();
    let (env, _workers) = env_with(settings(None, None, Some(&smtp))).await;
    let alice = user(&env, Some("alice@example.test"), "UTC").await;
    let bounced = user(&env, Some("Bounced@Example.test"), "UTC").await;
    sqlx::query(
        "INSERT INTO email_suppressions (email, reason) VALUES ('bounced@example.test', 'bounce')",
    )
    .execute(&env.services.db)
    .await
    .unwrap();
    let welcome = |user| {
        Notification::new(user, Category::Social, "Welcome", "Welcome aboard")
            .email("welcome", json!({}))
            .without_push()
    };
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let ids = notify_many(&mut tx, vec![welcome(alice), welcome(bounced)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let to_alice = settled(&env, ids[0], 1).await;
    assert_eq!(to_alice[0].1, "sent");
    let to_bounced = settled(&env, ids[1], 1).await;
    assert_eq!(
        (to_bounced[0].1.as_str(), to_bounced[0].2.as_deref()),
        ("skipped", Some("address suppressed"))
    );

    // A re-run (a retried or recovered job) sends nothing again.
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    tx.enqueue(&Deliver {
        notification_id: ids[0],
        first_delivery: false,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    eventually(WITHIN, "the re-run to finish", || async {
        let depth = env.services.broker.depth(Queue::Notify).await.unwrap();
        (depth.pending + depth.running == 0).then_some(())
    })
    .await;

    let mails = smtp.messages();
    assert_eq!(
        mails.len(),
        1,
        "exactly one message, none to the suppressed address"
    );
    let mail = &mails[0];
    assert_eq!(mail.rcpt_to, vec!["alice@example.test".to_owned()]);
    let handle: String = sqlx::query_scalar("SELECT handle FROM users WHERE id = $1")
        .bind(alice)
        .fetch_one(&env.services.db)
        .await
        .unwrap();
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some(format!("Welcome, @{handle}").as_str())
    );
    assert_eq!(
        mail.header("From").as_deref(),
        Some("groundcrew <noreply@groundcrew.test>")
    );
    assert_eq!(
        mail.header("Message-ID"),
        Some(format!("<{}@groundcrew.test>", ids[0]))
    );
    assert_eq!(
        mail.header("List-Unsubscribe"),
        Some(format!(
            "<mailto:noreply@groundcrew.test?subject=unsubscribe%20{alice}>"
        ))
    );
    let content_type = mail.header("Content-Type").unwrap();
    assert!(
        content_type.starts_with("multipart/alternative; boundary="),
        "{content_type}"
    );
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let text = mail.text();
    let parts: Vec<&str> = text.split(&format!("--{boundary}")).collect();
    assert_eq!(parts.len(), 4, "preamble, text, html, closing: {text}");
    assert!(
        parts[1].contains("Content-Type: text/plain; charset=utf-8"),
        "{}",
        parts[1]
    );
    assert!(parts[1].contains(&format!("Hi @{handle},")), "{}", parts[1]);
    assert!(
        parts[2].contains("Content-Type: text/html; charset=utf-8"),
        "{}",
        parts[2]
    );
    assert!(
        parts[2].contains(&format!("<h1>Welcome, @{handle}</h1>")),
        "{}",
        parts[2]
    );
    assert_eq!(parts[3].trim(), "--");
}

/// Runs the digest job once and waits until the notify queue is idle again.
async fn run_digest(env: &TestEnv) {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    tx.enqueue(&SendWeeklyDigests {}).await.unwrap();
    tx.commit().await.unwrap();
    eventually(WITHIN, "the digest run to finish", || async {
        let depth = env.services.broker.depth(Queue::Notify).await.unwrap();
        (depth.pending + depth.running + depth.scheduled == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weekly_digest_lists_the_week_once_and_only_for_those_who_want_it() {
    let smtp = SmtpServer::start();
    let (env, _workers) = env_with(settings(None, None, Some(&smtp))).await;
    let busy = user(&env, Some("busy@example.test"), "UTC").await;
    let opted_out = user(&env, Some("quiet@example.test"), "UTC").await;
    let _idle = user(&env, Some("idle@example.test"), "UTC").await;
    sqlx::query("INSERT INTO notification_preferences (user_id, email_digest) VALUES ($1, 'off')")
        .bind(opted_out)
        .execute(&env.services.db)
        .await
        .unwrap();
    for (to, title) in [
        (busy, "Sam followed you"),
        (busy, "Your pick won"),
        (busy, "Old news"),
        (opted_out, "Kim followed you"),
    ] {
        env.send(Notification::new(to, Category::Social, title, "details"))
            .await;
    }
    sqlx::query(
        "UPDATE notifications SET created_at = now() - interval '8 days' WHERE title = 'Old news'",
    )
    .execute(&env.services.db)
    .await
    .unwrap();

    run_digest(&env).await;
    eventually(WITHIN, "the digest email", || async {
        (!smtp.messages().is_empty()).then_some(())
    })
    .await;
    // A second run in the same week (a re-run, or an overlapping tick) sends nothing more.
    run_digest(&env).await;

    let mails = smtp.messages();
    assert_eq!(
        mails.len(),
        1,
        "one digest, to the one user who wants it and had news"
    );
    let mail = &mails[0];
    assert_eq!(mail.rcpt_to, vec!["busy@example.test".to_owned()]);
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("Your week: 2 updates")
    );
    let text = mail.text();
    assert!(text.contains("- Your pick won: details"), "{text}");
    assert!(text.contains("- Sam followed you: details"), "{text}");
    assert!(!text.contains("Old news"), "older than a week: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_deliveries_are_skipped_as_not_configured() {
    let (env, _workers) = env_with(settings(None, None, None)).await;
    let alice = user(&env, None, "UTC").await;
    env.device(alice, "noapns", "apns").await;
    env.device(alice, "nofcm", "fcm").await;
    let id = env
        .send(Notification::new(alice, Category::Social, "Hi", "there"))
        .await;
    let rows = settled(&env, id, 2).await;
    for row in rows {
        assert_eq!(
            (row.1.as_str(), row.2.as_deref()),
            ("skipped", Some("provider not configured"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_beyond_the_smtp_pool_wait_for_a_later_job_and_arrive_once() {
    let smtp = SmtpServer::start();
    // One connection and no patience: most of the batch finds it busy.
    let mut tight = settings(None, None, Some(&smtp));
    tight.smtp_pool = SmtpPool {
        connections: 1,
        wait: Duration::from_millis(1),
    };
    let (env, _workers) = env_with(tight).await;
    let mut users = Vec::new();
    for i in 0..30 {
        users.push(user(&env, Some(&format!("crowd{i}@example.test")), "UTC").await);
    }
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let ids = notify_many(
        &mut tx,
        users
            .iter()
            .map(|u| {
                Notification::new(*u, Category::Social, "Welcome", "hi")
                    .email("welcome", json!({}))
                    .without_push()
            })
            .collect(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // Every delivery ends sent, none failed for having waited (no attempt is spent on it).
    eventually(WITHIN, "every email sent", || async {
        (env.sent_deliveries(&ids).await == 30).then_some(())
    })
    .await;
    let mut recipients: Vec<String> = smtp
        .messages()
        .into_iter()
        .flat_map(|m| m.rcpt_to)
        .collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(smtp.messages().len(), 30, "each email once");
    assert_eq!(recipients.len(), 30);
}
