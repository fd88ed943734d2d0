//! The ops routes over a real job core: queues, dead jobs, job status, schedules, workers.

use std::time::Duration;

use groundcrew_jobs::{
    Queue,
    maintenance::{Canary, CanaryFailure},
    worker::PoolSpec,
};
use groundcrew_testkit::eventually;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, expect_error};

async fn json_of(resp: reqwest::Response, status: StatusCode) -> Value {
    let got = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(got, status, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn queue<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap()
}

async fn wait_for_attempts(app: &TestApp, job: Uuid, wanted: i64) {
    eventually(
        Duration::from_secs(15),
        "the canary's next attempt",
        || async {
            let attempts: i64 =
                sqlx::query_scalar("SELECT count(*) FROM canary_attempts WHERE job_id = $1")
                    .bind(job)
                    .fetch_one(&app.env.services.db)
                    .await
                    .unwrap();
            (attempts == wanted).then_some(())
        },
    )
    .await
}

/// Waits until the job is dead and returns its status as the ops route shows it.
async fn dead_status(app: &TestApp, admin: &str, job: Uuid) -> Value {
    let path = format!("/v1/ops/jobs/{job}");
    eventually(Duration::from_secs(15), "the canary to die", || async {
        let status = json_of(app.get(&path, Some(admin)).await, StatusCode::OK).await;
        (status["status"] == "dead").then_some(status)
    })
    .await
}

#[tokio::test]
async fn queues_pause_and_resume() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let resp = app
        .post("/v1/ops/queues/maintenance/pause", Some(&admin), &json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let list = json_of(
        app.get("/v1/ops/queues", Some(&admin)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["queues"].as_array().unwrap().len(), Queue::ALL.len());
    assert_eq!(queue(&list, "maintenance")["paused"], true);
    assert_eq!(queue(&list, "feed")["paused"], false);

    let resp = app
        .post(
            "/v1/ops/queues/maintenance/resume",
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let list = json_of(
        app.get("/v1/ops/queues", Some(&admin)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(queue(&list, "maintenance")["paused"], false);

    let resp = app
        .post("/v1/ops/queues/nope/pause", Some(&admin), &json!({}))
        .await;
    expect_error(resp, StatusCode::NOT_FOUND, "queue_not_found").await;
}

#[tokio::test]
async fn dead_jobs_are_listed_and_retried() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let mut tx = app.env.services.begin().await.unwrap();
    let job = tx
        .enqueue(&Canary {
            hold_ms: 0,
            fail: CanaryFailure::Permanent,
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let workers = app.env.spawn_workers(vec![PoolSpec {
        queue: Queue::Maintenance,
        concurrency: 2,
    }]);

    let dead = dead_status(&app, &admin, job).await;
    assert_eq!(dead["kind"], "maintenance.canary");
    assert_eq!(dead["queue"], "maintenance");
    assert_eq!(dead["attempts"], 1);
    assert!(
        dead["finished_at"].is_string() && dead["enqueued_at"].is_string(),
        "{dead}"
    );

    let workers_list = json_of(
        app.get("/v1/ops/workers", Some(&admin)).await,
        StatusCode::OK,
    )
    .await;
    let worker = &workers_list["items"][0];
    assert_eq!(worker["queues"], json!(["maintenance"]));
    assert!(worker["last_heartbeat_at"].is_string());
    let list = json_of(
        app.get("/v1/ops/queues", Some(&admin)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(queue(&list, "maintenance")["workers"], 1);
    assert_eq!(queue(&list, "maintenance")["dead"], 1);
    assert_eq!(queue(&list, "feed")["workers"], 0);

    let page = json_of(
        app.get("/v1/ops/dead-jobs?queue=maintenance", Some(&admin))
            .await,
        StatusCode::OK,
    )
    .await;
    let item = &page["items"][0];
    assert_eq!(item["id"], job.to_string());
    assert_eq!(item["payload"]["fail"], "permanent");
    assert!(
        item["last_error"].as_str().unwrap().contains("for good"),
        "{item}"
    );
    assert!(item["failed_at"].is_string());

    // Across all queues, one at a time, the cursor walks to the end.
    let first = json_of(
        app.get("/v1/ops/dead-jobs?limit=1", Some(&admin)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(first["items"][0]["id"], job.to_string());
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a cursor after a full page");
    let rest = json_of(
        app.get(
            &format!("/v1/ops/dead-jobs?limit=1&cursor={cursor}"),
            Some(&admin),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rest["items"], json!([]));
    assert!(rest["next_cursor"].is_null(), "{rest}");
    let resp = app
        .get("/v1/ops/dead-jobs?cursor=bogus", Some(&admin))
        .await;
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    let resp = app
        .post(
            &format!("/v1/ops/dead-jobs/{job}/retry"),
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(json_of(resp, StatusCode::ACCEPTED).await["retried"], 1);
    wait_for_attempts(&app, job, 2).await;

    dead_status(&app, &admin, job).await;
    let resp = app
        .post(
            "/v1/ops/queues/maintenance/dead-jobs/retry",
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(json_of(resp, StatusCode::ACCEPTED).await["retried"], 1);
    wait_for_attempts(&app, job, 3).await;
    workers.shutdown().await;

    let unknown = Uuid::now_v7();
    let resp = app
        .post(
            &format!("/v1/ops/dead-jobs/{unknown}/retry"),
            Some(&admin),
            &json!({}),
        )
        .await;
    expect_error(resp, StatusCode::NOT_FOUND, "dead_job_not_found").await;
    let resp = app
        .get(&format!("/v1/ops/jobs/{unknown}"), Some(&admin))
        .await;
    expect_error(resp, StatusCode::NOT_FOUND, "job_not_found").await;
}

#[tokio::test]
async fn schedules_are_listed_and_run_now() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let list = json_of(
        app.get("/v1/ops/schedules", Some(&admin)).await,
        StatusCode::OK,
    )
    .await;
    let canary = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "canary")
        .expect("the canary schedule")
        .clone();
    assert_eq!(canary["job"], "maintenance.noop");
    assert!(canary["next_run_at"].is_string());
    assert!(canary["last_run_at"].is_null());

    let resp = app
        .post("/v1/ops/schedules/canary/run", Some(&admin), &json!({}))
        .await;
    let job_id = json_of(resp, StatusCode::ACCEPTED).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = json_of(
        app.get(&format!("/v1/ops/jobs/{job_id}"), Some(&admin))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(job["kind"], "maintenance.noop");
    assert_eq!(job["status"], "pending");

    let list = json_of(
        app.get("/v1/ops/schedules", Some(&admin)).await,
        StatusCode::OK,
    )
    .await;
    assert!(list["items"][0]["last_run_at"].is_string(), "{list}");

    let resp = app
        .post("/v1/ops/schedules/nope/run", Some(&admin), &json!({}))
        .await;
    expect_error(resp, StatusCode::NOT_FOUND, "schedule_not_found").await;
}
