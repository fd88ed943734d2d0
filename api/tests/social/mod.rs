//! What the feed and notify suites share: users who exist through the API, as a client would
//! create them.

use groundcrew_testkit::eventually;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

use crate::helpers::TestApp;

/// Long enough for a busy CI box; the polls return as soon as the effect is visible.
pub const WITHIN: Duration = Duration::from_secs(20);

pub struct User {
    pub id: Uuid,
    pub token: String,
}

/// A user with a profile (`PUT /v1/me`), which following and posting require.
pub async fn signed_up(app: &TestApp, handle: &str, email: Option<&str>) -> User {
    let id = Uuid::now_v7();
    let token = app.token(id, &[]);
    let resp = app
        .put(
            "/v1/me",
            Some(&token),
            &json!({ "handle": handle, "email": email }),
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap()
    );
    User { id, token }
}

/// A JSON body from a request expected to return `status`.
pub async fn json_with(resp: reqwest::Response, status: StatusCode) -> Value {
    let got = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(got, status, "body {body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// The caller's notifications once every delivery of the newest one has left `pending`.
pub async fn settled_notifications(app: &TestApp, user: &User) -> Vec<Value> {
    eventually(WITHIN, "deliveries to settle", || async {
        let page = json_with(
            app.get("/v1/me/notifications", Some(&user.token)).await,
            StatusCode::OK,
        )
        .await;
        let items = page["items"].as_array()?.clone();
        let deliveries = items.first()?["deliveries"].as_array()?;
        (!deliveries.is_empty() && deliveries.iter().all(|d| d["status"] != "pending"))
            .then_some(items)
    })
    .await
}
