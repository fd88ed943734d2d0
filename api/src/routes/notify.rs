//! Notifications: the caller's devices and preferences, and their notifications with the
//! status of each delivery. Delivery itself is the notify family's (`groundcrew_jobs::notify`).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, NaiveTime, Utc};
use groundcrew_jobs::notify::{
    preferences::Categories,
    unsubscribe::{self, Unsubscribed},
};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::{Html, Json},
};
use sqlx::Row;
use uuid::Uuid;

use crate::{
    ApiState, Tag,
    auth::{BearerAuth, Role},
    error::ApiError,
    route_error,
};

pub struct NotifyApi;

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum Platform {
    Apns,
    Fcm,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ApnsEnvironment {
    Production,
    Sandbox,
}

/// A push token's registration.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct DeviceInput {
    pub platform: Platform,
    /// The app's bundle id (APNs topic) when it differs from the configured one.
    #[oai(validator(min_length = 1, max_length = 255))]
    pub app_id: Option<String>,
    /// APNs only: which gateway the token belongs to. Default `production`.
    pub environment: Option<ApnsEnvironment>,
}

/// Which categories may reach the user (every channel).
#[derive(Debug, Clone, Copy, Object)]
#[oai(deny_unknown_fields)]
pub struct CategorySwitches {
    pub social: bool,
    pub picks: bool,
    pub payments: bool,
    pub verification: bool,
    pub marketing: bool,
}

/// Push waits from `start` to `end` (local time in the profile's time zone; may cross
/// midnight) and is sent at `end`.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct QuietHoursWindow {
    #[oai(validator(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    #[oai(validator(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum EmailDigest {
    Weekly,
    Off,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct NotificationPreferences {
    pub categories: CategorySwitches,
    pub quiet_hours: Option<QuietHoursWindow>,
    pub email_digest: EmailDigest,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum Channel {
    Apns,
    Fcm,
    Email,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Sent,
    Failed,
    Skipped,
    Deferred,
}

#[derive(Debug, Object)]
pub struct Delivery {
    pub channel: Channel,
    pub status: DeliveryStatus,
    /// Why it was skipped, deferred or failed.
    pub detail: Option<String>,
    /// When the status was last set.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct NotificationItem {
    pub id: Uuid,
    pub category: String,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Object)]
pub struct NotificationPage {
    pub items: Vec<NotificationItem>,
    pub next_cursor: Option<String>,
}

/// Why an address gets no more email.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum SuppressionReason {
    /// The mail provider reported a hard bounce.
    Bounce,
    /// The recipient marked a message as spam.
    Complaint,
    /// The recipient unsubscribed by a way other than the `List-Unsubscribe` link.
    Unsubscribe,
}

impl SuppressionReason {
    const fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::Bounce => "bounce",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::Unsubscribe => "unsubscribe",
        }
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct SuppressionInput {
    pub reason: SuppressionReason,
}

#[derive(ApiResponse)]
enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

route_error!(
    /// Failures of `PUT /v1/me/devices/{token}`.
    RegisterDeviceError: 400, 401, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `DELETE /v1/me/devices/{token}`.
    RemoveDeviceError: 400, 401, 422, 429, 503
);
route_error!(
    /// Failures of `GET /v1/me/notification-preferences`.
    PreferencesError: 400, 401, 422, 429, 503
);
route_error!(
    /// Failures of `PUT /v1/me/notification-preferences`.
    SavePreferencesError: 400, 401, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `GET /v1/me/notifications`.
    ListNotificationsError: 400, 401, 422, 429, 503
);
route_error!(
    /// Failures of `PUT /v1/ops/email-suppressions/{email}`.
    SuppressError: 400, 401, 403, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `DELETE /v1/ops/email-suppressions/{email}`.
    UnsuppressError: 400, 401, 403, 422, 429, 503
);

route_error!(
    /// Failures of `GET` and `POST /v1/email/unsubscribe`.
    UnsubscribeError: 400, 404, 422, 429, 503
);

/// What a one-click unsubscribe turned off.
#[derive(Debug, Object)]
pub struct UnsubscribeResult {
    /// `digest` (the weekly digest email), or the category the email belonged to (`social`,
    /// `picks`, `payments`, `verification`, `marketing`), now off in the user's preferences.
    pub unsubscribed: String,
}

/// The notification an unsubscribe token names, or 400 when it does not verify (wrong or
/// altered token, or no `GROUNDCREW_JWT_SECRET` to check it with).
fn unsubscribe_token(state: &ApiState, token: &str) -> Result<Uuid, ApiError> {
    state
        .config
        .auth
        .jwt_secret
        .as_deref()
        .and_then(|secret| unsubscribe::verify(secret, token))
        .ok_or_else(|| {
            ApiError::new(
                poem::http::StatusCode::BAD_REQUEST,
                "invalid_token",
                "not an unsubscribe link of this service",
            )
        })
}

/// Who may change the suppression list.
const SUPPRESSION_WRITERS: &[Role] = &[Role::Admin];

fn parse_time(field: &str, hh_mm: &str) -> Result<NaiveTime, ApiError> {
    NaiveTime::parse_from_str(hh_mm, "%H:%M")
        .map_err(|_| ApiError::invalid_field(field, format!("{hh_mm:?} is not HH:MM")))
}

fn channel(name: &str) -> Channel {
    match name {
        "apns" => Channel::Apns,
        "fcm" => Channel::Fcm,
        _ => Channel::Email,
    }
}

fn delivery_status(name: &str) -> DeliveryStatus {
    match name {
        "sent" => DeliveryStatus::Sent,
        "failed" => DeliveryStatus::Failed,
        "skipped" => DeliveryStatus::Skipped,
        "deferred" => DeliveryStatus::Deferred,
        _ => DeliveryStatus::Pending,
    }
}

#[OpenApi(tag = "Tag::Notifications")]
impl NotifyApi {
    /// Register a push token
    ///
    /// Idempotent. A token registered by another user moves to the caller (the device signed
    /// into another account); a token disabled after the provider rejected it is enabled again.
    #[oai(
        path = "/v1/me/devices/:token",
        method = "put",
        operation_id = "put_device"
    )]
    async fn put_device(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        #[oai(validator(min_length = 1, max_length = 4096))] token: Path<String>,
        body: Json<DeviceInput>,
    ) -> Result<NoContent, RegisterDeviceError> {
        let input = body.0;
        let platform = match input.platform {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
        };
        let environment = match input.environment {
            Some(ApnsEnvironment::Sandbox) => "sandbox",
            _ => "production",
        };
        sqlx::query(
            "INSERT INTO devices (id, token, user_id, platform, app_id, environment)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (token) DO UPDATE SET
                 user_id = EXCLUDED.user_id, platform = EXCLUDED.platform,
                 app_id = EXCLUDED.app_id, environment = EXCLUDED.environment,
                 enabled = true, disabled_reason = NULL, updated_at = now()",
        )
        .bind(Uuid::now_v7())
        .bind(&token.0)
        .bind(auth.0.id)
        .bind(platform)
        .bind(&input.app_id)
        .bind(environment)
        .execute(&state.services.db)
        .await?;
        Ok(NoContent::Done)
    }

    /// Unregister a push token
    ///
    /// Idempotent; a token of another user is left alone.
    #[oai(
        path = "/v1/me/devices/:token",
        method = "delete",
        operation_id = "delete_device"
    )]
    async fn delete_device(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        #[oai(validator(min_length = 1, max_length = 4096))] token: Path<String>,
    ) -> Result<NoContent, RemoveDeviceError> {
        sqlx::query("DELETE FROM devices WHERE token = $1 AND user_id = $2")
            .bind(&token.0)
            .bind(auth.0.id)
            .execute(&state.services.db)
            .await?;
        Ok(NoContent::Done)
    }

    /// The caller's notification preferences
    ///
    /// Defaults until first set: every category on except marketing, no quiet hours, weekly
    /// digest.
    #[oai(
        path = "/v1/me/notification-preferences",
        method = "get",
        operation_id = "get_notification_preferences"
    )]
    async fn get_preferences(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
    ) -> Result<Json<NotificationPreferences>, PreferencesError> {
        let row = sqlx::query(
            "SELECT categories, quiet_start, quiet_end, email_digest
             FROM notification_preferences WHERE user_id = $1",
        )
        .bind(auth.0.id)
        .fetch_optional(&state.services.db)
        .await?;
        let categories = Categories::from_json(row.as_ref().map(|r| r.get("categories")));
        let quiet_hours = row.as_ref().and_then(|r| {
            let start: Option<NaiveTime> = r.get("quiet_start");
            let end: Option<NaiveTime> = r.get("quiet_end");
            Some(QuietHoursWindow {
                start: start?.format("%H:%M").to_string(),
                end: end?.format("%H:%M").to_string(),
            })
        });
        let off = row
            .as_ref()
            .is_some_and(|r| r.get::<String, _>("email_digest") == "off");
        Ok(Json(NotificationPreferences {
            categories: CategorySwitches {
                social: categories.social,
                picks: categories.picks,
                payments: categories.payments,
                verification: categories.verification,
                marketing: categories.marketing,
            },
            quiet_hours,
            email_digest: if off {
                EmailDigest::Off
            } else {
                EmailDigest::Weekly
            },
        }))
    }

    /// Replace the caller's notification preferences
    ///
    /// Quiet hours are in the profile's time zone; push arriving inside them is deferred to
    /// their end, never dropped. A category switched off skips its push and email.
    #[oai(
        path = "/v1/me/notification-preferences",
        method = "put",
        operation_id = "put_notification_preferences"
    )]
    async fn put_preferences(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        body: Json<NotificationPreferences>,
    ) -> Result<Json<NotificationPreferences>, SavePreferencesError> {
        let input = body.0;
        let (start, end) = match &input.quiet_hours {
            Some(q) => (
                Some(parse_time("quiet_hours.start", &q.start)?),
                Some(parse_time("quiet_hours.end", &q.end)?),
            ),
            None => (None, None),
        };
        let c = input.categories;
        let categories = Categories {
            social: c.social,
            picks: c.picks,
            payments: c.payments,
            verification: c.verification,
            marketing: c.marketing,
        };
        sqlx::query(
            "INSERT INTO notification_preferences
                 (user_id, categories, quiet_start, quiet_end, email_digest)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id) DO UPDATE SET
                 categories = EXCLUDED.categories, quiet_start = EXCLUDED.quiet_start,
                 quiet_end = EXCLUDED.quiet_end, email_digest = EXCLUDED.email_digest,
                 updated_at = now()",
        )
        .bind(auth.0.id)
        .bind(serde_json::to_value(categories).expect("categories serialize"))
        .bind(start)
        .bind(end)
        .bind(match input.email_digest {
            EmailDigest::Weekly => "weekly",
            EmailDigest::Off => "off",
        })
        .execute(&state.services.db)
        .await?;
        Ok(Json(input))
    }

    /// The caller's notifications, newest first, with each delivery's status
    #[oai(
        path = "/v1/me/notifications",
        method = "get",
        operation_id = "list_notifications"
    )]
    async fn list_notifications(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))] limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<Json<NotificationPage>, ListNotificationsError> {
        let limit = limit.0.unwrap_or(20) as i64;
        let before: Option<Uuid> = match &cursor.0 {
            Some(c) => Some(
                URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| Uuid::from_slice(&b).ok())
                    .ok_or_else(|| {
                        ApiError::invalid_field("cursor", "not a cursor from this API")
                    })?,
            ),
            None => None,
        };
        let rows = sqlx::query(
            "SELECT n.id, n.category, n.title, n.body, n.data, n.created_at,
                    COALESCE(json_agg(json_build_object(
                        'channel', d.channel, 'status', d.status, 'detail', d.detail,
                        'at', d.updated_at) ORDER BY d.channel, d.target)
                        FILTER (WHERE d.notification_id IS NOT NULL), '[]') AS deliveries
             FROM notifications n
             LEFT JOIN notification_deliveries d ON d.notification_id = n.id
             WHERE n.user_id = $1 AND ($2::uuid IS NULL OR n.id < $2)
             GROUP BY n.id
             ORDER BY n.id DESC
             LIMIT $3",
        )
        .bind(auth.0.id)
        .bind(before)
        .bind(limit + 1)
        .fetch_all(&state.services.db)
        .await?;
        let more = rows.len() as i64 > limit;
        let items: Vec<NotificationItem> = rows
            .iter()
            .take(limit as usize)
            .map(|r| {
                let deliveries: Vec<serde_json::Value> =
                    serde_json::from_value(r.get("deliveries")).unwrap_or_default();
                NotificationItem {
                    id: r.get("id"),
                    category: r.get("category"),
                    title: r.get("title"),
                    body: r.get("body"),
                    data: r.get("data"),
                    created_at: r.get("created_at"),
                    deliveries: deliveries
                        .iter()
                        .map(|d| Delivery {
                            channel: channel(d["channel"].as_str().unwrap_or_default()),
                            status: delivery_status(d["status"].as_str().unwrap_or_default()),
                            detail: d["detail"].as_str().map(str::to_owned),
                            at: serde_json::from_value(d["at"].clone()).unwrap_or_default(),
                        })
                        .collect(),
                }
            })
            .collect();
        let next_cursor = more
            .then(|| {
                items
                    .last()
                    .map(|i| URL_SAFE_NO_PAD.encode(i.id.as_bytes()))
            })
            .flatten();
        Ok(Json(NotificationPage { items, next_cursor }))
    }

    /// Unsubscribe in one click (RFC 8058)
    ///
    /// The link every email carries, in its body and its `List-Unsubscribe` header (with
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click`), when `GROUNDCREW_PUBLIC_URL` is set.
    /// No bearer token: the signed `token` is the authority. Turns off what the email was —
    /// the weekly digest, or the email's category — in the user's preferences, where the app
    /// can turn it back on. Idempotent. Mail clients POST `List-Unsubscribe=One-Click` as a
    /// form; the body is not read.
    #[oai(
        path = "/v1/email/unsubscribe",
        method = "post",
        operation_id = "unsubscribe_one_click"
    )]
    async fn unsubscribe_one_click(
        &self,
        state: Data<&ApiState>,
        #[oai(validator(max_length = 128))] token: Query<String>,
    ) -> Result<Json<UnsubscribeResult>, UnsubscribeError> {
        let notification_id = unsubscribe_token(&state, &token.0)?;
        let unsubscribed = unsubscribe::unsubscribe(&state.services.db, notification_id)
            .await?
            .ok_or_else(|| ApiError::not_found("not_found", "the email's notification is gone"))?;
        Ok(Json(UnsubscribeResult {
            unsubscribed: match unsubscribed {
                Unsubscribed::Digest => "digest".into(),
                Unsubscribed::Category(category) => category,
            },
        }))
    }

    /// The unsubscribe page
    ///
    /// What the link in an email's body opens: a page with one button that POSTs to the same
    /// link. Opening it changes nothing, so link scanners cannot unsubscribe anyone.
    #[oai(
        path = "/v1/email/unsubscribe",
        method = "get",
        operation_id = "unsubscribe_page"
    )]
    async fn unsubscribe_page(
        &self,
        state: Data<&ApiState>,
        #[oai(validator(max_length = 128))] token: Query<String>,
    ) -> Result<Html<String>, UnsubscribeError> {
        unsubscribe_token(&state, &token.0)?;
        // The token verified, so it is URL-safe base64: nothing in it needs escaping.
        Ok(Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head>\
             <body><form method=\"post\" action=\"?token={}\">\
             <p>Stop emails like this one?</p><button type=\"submit\">Unsubscribe</button>\
             </form></body></html>",
            token.0
        )))
    }

    /// Stop email to an address (admin)
    ///
    /// For the bounces and complaints a mail provider reports. Idempotent; the address is
    /// matched case-insensitively. Email to it is then `skipped` with detail
    /// `address suppressed`; push is unaffected.
    #[oai(
        path = "/v1/ops/email-suppressions/:email",
        method = "put",
        operation_id = "put_email_suppression"
    )]
    async fn put_email_suppression(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        #[oai(validator(max_length = 254, pattern = r"^[^@\s]+@[^@\s]+$"))] email: Path<String>,
        body: Json<SuppressionInput>,
    ) -> Result<NoContent, SuppressError> {
        auth.0.require_any(SUPPRESSION_WRITERS)?;
        sqlx::query(
            "INSERT INTO email_suppressions (email, reason) VALUES (lower($1), $2)
             ON CONFLICT (email) DO UPDATE SET reason = EXCLUDED.reason",
        )
        .bind(&email.0)
        .bind(body.0.reason.as_str())
        .execute(&state.services.db)
        .await?;
        Ok(NoContent::Done)
    }

    /// Allow email to an address again (admin)
    ///
    /// Idempotent.
    #[oai(
        path = "/v1/ops/email-suppressions/:email",
        method = "delete",
        operation_id = "delete_email_suppression"
    )]
    async fn delete_email_suppression(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        #[oai(validator(max_length = 254, pattern = r"^[^@\s]+@[^@\s]+$"))] email: Path<String>,
    ) -> Result<NoContent, UnsuppressError> {
        auth.0.require_any(SUPPRESSION_WRITERS)?;
        sqlx::query("DELETE FROM email_suppressions WHERE email = lower($1)")
            .bind(&email.0)
            .execute(&state.services.db)
            .await?;
        Ok(NoContent::Done)
    }
}
