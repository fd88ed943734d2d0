//! Devices, preferences and the caller's notifications over HTTP, against real Postgres and
//! Redis with the notify workers running in-process and no push or email provider configured
//! (but for the one-click unsubscribe test, which mails through a local SMTP server).

#[allow(dead_code)]
#[path = "http/helpers.rs"]
mod helpers;
#[allow(dead_code)]
mod social;

use std::sync::Arc;

use groundcrew_jobs::{
    Queue,
    notify::{
        Providers,
        settings::{NotifySettings, SmtpPool},
        unsubscribe::OneClick,
    },
    worker::PoolSpec,
};
use groundcrew_testkit::{eventually, smtp::SmtpServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

use helpers::{TestApp, announcement, expect_error};
use social::{WITHIN, json_with, settled_notifications, signed_up};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_follower_is_listed_with_its_deliveries() {
    let app = TestApp::start().await;
    let _workers = app.env.spawn_workers(vec![PoolSpec {
        queue: Queue::Notify,
        concurrency: 2,
    }]);
    let alice = signed_up(&app, "alice", None).await;
    let bob = signed_up(&app, "bob", None).await;
    let device = json!({ "platform": "apns", "environment": "sandbox" });
    for _ in 0..2 {
        let resp = app
            .put("/v1/me/devices/abc123", Some(&bob.token), &device)
            .await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "idempotent");
    }
    let resp = app
        .request(
            Method::PUT,
            &format!("/v1/me/following/{}", bob.id),
            Some(&alice.token),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let items = settled_notifications(&app, &bob).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(item["category"], "social");
    assert_eq!(item["title"], "New follower");
    assert_eq!(item["body"], "@alice followed you");
    assert_eq!(item["data"]["follower_id"], json!(alice.id));
    let deliveries = item["deliveries"].as_array().unwrap();
    assert_eq!(
        deliveries.len(),
        1,
        "one push to the one device: {deliveries:?}"
    );
    assert_eq!(deliveries[0]["channel"], "apns");
    assert_eq!(deliveries[0]["status"], "skipped");
    assert_eq!(deliveries[0]["detail"], "provider not configured");
    assert!(deliveries[0]["at"].is_string());

    // Unregistering forgets the token, so no later push goes to it.
    let resp = app
        .request(Method::DELETE, "/v1/me/devices/abc123", Some(&bob.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE user_id = $1")
        .bind(bob.id)
        .fetch_one(&app.env.services.db)
        .await
        .unwrap();
    assert_eq!(devices, 0);
    expect_error(
        app.put(
            "/v1/me/devices/abc123",
            Some(&bob.token),
            &json!({ "platform": "sms" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn welcome_emails_and_announcements_are_listed() {
    let app = TestApp::start().await;
    let quiet = signed_up(&app, "quiet", None).await;
    let mailed = signed_up(&app, "mailed", Some("mailed@example.com")).await;
    let list = |token: String| {
        let app = &app;
        async move {
            let page = json_with(
                app.get("/v1/me/notifications", Some(&token)).await,
                StatusCode::OK,
            )
            .await;
            page["items"].as_array().unwrap().clone()
        }
    };
    assert!(
        list(quiet.token.clone()).await.is_empty(),
        "no email, no welcome"
    );
    let welcome = list(mailed.token.clone()).await;
    assert_eq!(welcome.len(), 1);
    assert_eq!(welcome[0]["body"], "Welcome, @mailed");

    let resp = app
        .post(
            "/v1/ops/notifications",
            Some(&app.admin()),
            &announcement(&[quiet.id, mailed.id]),
        )
        .await;
    let id = json_with(resp, StatusCode::ACCEPTED).await["id"].clone();
    for token in [quiet.token.clone(), mailed.token.clone()] {
        let items = list(token).await;
        assert_eq!(items[0]["title"], "Hello");
        assert_eq!(items[0]["body"], "We shipped something.");
        assert_eq!(items[0]["data"]["announcement_id"], id);
    }
}

#[tokio::test]
async fn preferences_round_trip_and_refuse_bad_times() {
    let app = TestApp::start().await;
    let alice = signed_up(&app, "alice", None).await;
    let path = "/v1/me/notification-preferences";
    let defaults = json_with(app.get(path, Some(&alice.token)).await, StatusCode::OK).await;
    assert_eq!(
        defaults,
        json!({
            "categories": {"social": true, "picks": true, "payments": true,
                           "verification": true, "marketing": false},
            "quiet_hours": null,
            "email_digest": "weekly",
        })
    );

    let chosen = json!({
        "categories": {"social": false, "picks": true, "payments": true,
                       "verification": true, "marketing": true},
        "quiet_hours": {"start": "22:30", "end": "07:00"},
        "email_digest": "off",
    });
    let saved = json_with(
        app.put(path, Some(&alice.token), &chosen).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(saved, chosen);
    let read = json_with(app.get(path, Some(&alice.token)).await, StatusCode::OK).await;
    assert_eq!(read, chosen);

    for bad in ["24:00", "7:00", "07:60", "noon"] {
        let mut body = chosen.clone();
        body["quiet_hours"]["end"] = bad.into();
        expect_error(
            app.put(path, Some(&alice.token), &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    let read = json_with(app.get(path, Some(&alice.token)).await, StatusCode::OK).await;
    assert_eq!(
        read, chosen,
        "a refused change leaves the preferences alone"
    );

    let mut cleared = chosen.clone();
    cleared["quiet_hours"] = json!(null);
    json_with(
        app.put(path, Some(&alice.token), &cleared).await,
        StatusCode::OK,
    )
    .await;
    let read = json_with(app.get(path, Some(&alice.token)).await, StatusCode::OK).await;
    assert_eq!(read["quiet_hours"], json!(null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suppressed_address_gets_no_email_and_only_admins_change_the_list() {
    let app = TestApp::start().await;
    let _workers = app.env.spawn_workers(vec![PoolSpec {
        queue: Queue::Notify,
        concurrency: 2,
    }]);
    let bounce = json!({ "reason": "bounce" });
    let path = "/v1/ops/email-suppressions/Bounced@Example.com";
    let someone = signed_up(&app, "someone", None).await;
    expect_error(
        app.put(path, Some(&someone.token), &bounce).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_error(
        app.put(
            "/v1/ops/email-suppressions/not-an-address",
            Some(&app.admin()),
            &bounce,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    for _ in 0..2 {
        let resp = app.put(path, Some(&app.admin()), &bounce).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "idempotent");
    }

    let bounced = signed_up(&app, "bounced", Some("bounced@example.com")).await;
    let welcome = settled_notifications(&app, &bounced).await;
    let deliveries = welcome[0]["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0]["channel"], "email");
    assert_eq!(deliveries[0]["status"], "skipped");
    assert_eq!(deliveries[0]["detail"], "address suppressed");

    let resp = app
        .request(Method::DELETE, path, Some(&app.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM email_suppressions")
        .fetch_one(&app.env.services.db)
        .await
        .unwrap();
    assert_eq!(kept, 0, "the address may be mailed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_click_link_turns_off_what_the_email_was_and_nothing_else() {
    let smtp = SmtpServer::start();
    let mut app = TestApp::start().await;
    // The workers sign links with the API's token secret and point them at the API.
    app.env.services.notify = Arc::new(
        Providers::new(NotifySettings {
            apns: None,
            fcm: None,
            smtp_url: Some(smtp.url()),
            smtp_pool: SmtpPool::default(),
            mail_from: "groundcrew <noreply@groundcrew.test>".into(),
            data_dir: std::env::temp_dir().join("gc-unsubscribe-test-data"),
            one_click: Some(OneClick {
                public_url: app.base.clone(),
                secret: helpers::SECRET.into(),
            }),
        })
        .expect("providers"),
    );
    let _workers = app.env.spawn_workers(vec![PoolSpec {
        queue: Queue::Notify,
        concurrency: 2,
    }]);
    let user = signed_up(&app, "leaving", Some("leaving@example.com")).await;
    let mail = eventually(WITHIN, "the welcome email", || async {
        smtp.messages().into_iter().next()
    })
    .await;

    // RFC 8058: an https-or-http link in List-Unsubscribe, the one-click marker beside it, and
    // the same link in the body.
    let header = mail.header("List-Unsubscribe").expect("List-Unsubscribe");
    let link = header
        .strip_prefix('<')
        .and_then(|h| h.strip_suffix('>'))
        .expect("one <link>")
        .to_owned();
    assert!(
        link.starts_with(&format!("{}/v1/email/unsubscribe?token=", app.base)),
        "{link}"
    );
    assert_eq!(
        mail.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(mail.text().contains(&link), "the body links it too");

    // Opening the link only shows the button; preferences stay as they were.
    let page = app.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("<form method=\"post\""));
    let preferences = || async {
        json_with(
            app.get("/v1/me/notification-preferences", Some(&user.token))
                .await,
            StatusCode::OK,
        )
        .await
    };
    assert_eq!(preferences().await["categories"]["social"], true);

    // What a mail client sends; twice changes nothing more.
    for _ in 0..2 {
        let resp = app
            .http
            .post(&link)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(
            json_with(resp, StatusCode::OK).await,
            json!({"unsubscribed": "social"})
        );
    }
    let after = preferences().await;
    assert_eq!(after["categories"]["social"], false, "{after}");
    assert_eq!(
        after["categories"]["picks"], true,
        "only the email's category"
    );
    assert_eq!(after["email_digest"], "weekly");

    // A link altered or signed by someone else unsubscribes nobody.
    let token = link.split("token=").nth(1).unwrap();
    let forged = format!("{}A", &token[..token.len() - 1]);
    let forged = if forged == token {
        format!("{}B", &token[..token.len() - 1])
    } else {
        forged
    };
    for bad in [forged.as_str(), "not-a-token"] {
        expect_error(
            app.http
                .post(format!("{}/v1/email/unsubscribe?token={bad}", app.base))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_token",
        )
        .await;
    }
}
