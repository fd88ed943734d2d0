//! Provider events applied to verifications, inside the inbox job's transaction (so the change,
//! the badge and the notification commit with the event's processed mark).
//!
//! The verification is found by the id we gave the provider (Stripe `metadata.verification_id`,
//! Persona `reference-id`), so an event that overtakes our own storing of the session id still
//! lands; the provider's session id is the fallback.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use super::{age, status::rank};
use crate::{
    job::JobError,
    notify::{Category, Notification, notify},
    outbox::JobTx,
    webhooks::InboxEvent,
};

/// What one event reports about one verification.
struct Report<'a> {
    verification_id: Option<Uuid>,
    provider: &'static str,
    session_id: Option<&'a str>,
    status: &'static str,
    detail: Option<String>,
    birthdate: Option<NaiveDate>,
}

/// `identity.verification_session.*`.
pub async fn apply_stripe(tx: &mut JobTx, event: &InboxEvent) -> Result<&'static str, JobError> {
    let status = match event
        .event_type
        .trim_start_matches("identity.verification_session.")
    {
        "requires_input" => "requires_input",
        "processing" => "processing",
        "verified" => "verified",
        "canceled" => "canceled",
        _ => return Ok("ignored"),
    };
    let session = &event.body["data"]["object"];
    let dob = &session["verified_outputs"]["dob"];
    let birthdate = match (
        dob["year"].as_i64(),
        dob["month"].as_u64(),
        dob["day"].as_u64(),
    ) {
        (Some(y), Some(m), Some(d)) => NaiveDate::from_ymd_opt(y as i32, m as u32, d as u32),
        _ => None,
    };
    apply(
        tx,
        Report {
            verification_id: uuid_at(&session["metadata"]["verification_id"]),
            provider: "stripe_identity",
            session_id: session["id"].as_str(),
            status,
            detail: session["last_error"]["reason"].as_str().map(str::to_owned),
            birthdate,
        },
    )
    .await
}

/// `inquiry.*`.
pub async fn apply_persona(tx: &mut JobTx, event: &InboxEvent) -> Result<&'static str, JobError> {
    let status = match event.event_type.trim_start_matches("inquiry.") {
        "created" | "started" => "requires_input",
        "completed" | "marked-for-review" => "processing",
        "approved" => "verified",
        "declined" | "failed" => "failed",
        "expired" => "canceled",
        _ => return Ok("ignored"),
    };
    let inquiry = &event.body["data"]["attributes"]["payload"]["data"];
    let attributes = &inquiry["attributes"];
    apply(
        tx,
        Report {
            verification_id: uuid_at(&attributes["reference-id"]),
            provider: "persona",
            session_id: inquiry["id"].as_str(),
            status,
            detail: (status == "failed").then(|| format!("persona: {}", event.event_type)),
            birthdate: attributes["birthdate"]
                .as_str()
                .and_then(|d| d.parse::<NaiveDate>().ok()),
        },
    )
    .await
}

fn uuid_at(value: &Value) -> Option<Uuid> {
    value.as_str().and_then(|s| s.parse().ok())
}

async fn apply(tx: &mut JobTx, report: Report<'_>) -> Result<&'static str, JobError> {
    let row = sqlx::query(
        "SELECT v.id, v.user_id, v.kind, v.status, u.timezone, now() AS now
         FROM verifications v JOIN users u ON u.id = v.user_id
         WHERE v.id = $1 OR (v.provider = $2 AND v.provider_session_id = $3)
         ORDER BY v.id = $1 DESC LIMIT 1
         FOR UPDATE OF v",
    )
    .bind(report.verification_id)
    .bind(report.provider)
    .bind(report.session_id)
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row else {
        return Ok("unknown_verification");
    };
    let id: Uuid = row.get("id");
    let user_id: Uuid = row.get("user_id");
    let kind: String = row.get("kind");
    if rank(report.status) <= rank(&row.get::<String, _>("status")) {
        return Ok("stale");
    }
    if report.status != "verified" {
        sqlx::query(
            "UPDATE verifications SET status = $2, detail = COALESCE($3, detail), updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(report.status)
        .bind(&report.detail)
        .execute(tx.conn())
        .await?;
        if rank(report.status) == rank("verified") {
            notify_result(tx, user_id, &kind, report.status, None).await?;
        }
        return Ok(report.status);
    }
    let now: DateTime<Utc> = row.get("now");
    let adult = (kind == "age").then(|| {
        report.birthdate.is_some_and(|b| {
            age::is_adult(b, age::local_date(now, &row.get::<String, _>("timezone")))
        })
    });
    let detail = match (adult, report.birthdate) {
        (Some(false), None) => Some("the provider reported no birth date"),
        (Some(false), Some(_)) => Some("under 18"),
        _ => None,
    };
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE verifications SET status = 'verified', detail = $2, adult = $3,
                verified_at = now(), expires_at = now() + interval '1 year', updated_at = now()
         WHERE id = $1 RETURNING expires_at",
    )
    .bind(id)
    .bind(detail)
    .bind(adult)
    .fetch_one(tx.conn())
    .await?;
    sqlx::query(
        "UPDATE users SET verified = true, age_verified = age_verified OR $2, updated_at = now()
         WHERE id = $1",
    )
    .bind(user_id)
    .bind(adult == Some(true))
    .execute(tx.conn())
    .await?;
    notify_result(tx, user_id, &kind, "verified", Some(expires_at)).await?;
    Ok("verified")
}

async fn notify_result(
    tx: &mut JobTx,
    user_id: Uuid,
    kind: &str,
    status: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    let (title, body) = if status == "verified" {
        ("You are verified", "Your badge is on your profile.")
    } else {
        (
            "Your verification did not go through",
            "You can start a new one from the app.",
        )
    };
    let vars = serde_json::json!({
        "status": status,
        "kind": kind,
        "expires_on": expires_at.map(|t| t.date_naive().to_string()),
    });
    notify(
        tx,
        Notification::new(user_id, Category::Verification, title, body)
            .data(vars.clone())
            .email("verification_result", vars),
    )
    .await?;
    Ok(())
}
