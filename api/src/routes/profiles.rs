//! Profiles: the caller's own (`/v1/me`) and other users' public ones.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use groundcrew_jobs::{
    JobTx,
    feed::{self, graph},
    notify::{self, Category, Notification},
};
use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};
use uuid::Uuid;

use crate::{ApiState, Tag, auth::BearerAuth, error::ApiError, request_id::RequestId, route_error};

pub struct ProfilesApi;

/// The fields a user sets on their profile. Anything else is refused (422).
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct ProfileInput {
    /// 3–30 characters of `a-z`, `0-9` and `_`; unique.
    #[oai(validator(pattern = "^[a-z0-9_]{3,30}$"))]
    pub handle: String,
    #[oai(validator(min_length = 1, max_length = 100))]
    pub display_name: Option<String>,
    #[oai(validator(max_length = 254, pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub email: Option<String>,
    /// An IANA time-zone name such as `Europe/Paris`; `UTC` when absent.
    #[oai(validator(max_length = 64))]
    pub timezone: Option<String>,
    /// A BCP 47 language tag such as `en-GB`.
    #[oai(validator(min_length = 2, max_length = 35))]
    pub locale: Option<String>,
    pub birthdate: Option<NaiveDate>,
}

/// The caller's own profile.
#[derive(Debug, Object, sqlx::FromRow)]
pub struct Profile {
    pub id: Uuid,
    pub handle: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub timezone: String,
    pub locale: Option<String>,
    pub verified: bool,
    pub age_verified: bool,
    pub created_at: DateTime<Utc>,
}

/// What anyone may see of a user.
#[derive(Debug, Object)]
pub struct PublicProfile {
    pub id: Uuid,
    pub handle: String,
    pub display_name: Option<String>,
    pub verified: bool,
    pub followers_count: i64,
    pub following_count: i64,
}

#[derive(ApiResponse)]
enum ProfileSaved {
    /// The profile as saved (created on the first call).
    #[oai(status = 200)]
    Ok(Json<Profile>),
}

route_error!(
    /// Failures of `PUT /v1/me`.
    PutProfileError: 400, 401, 409, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `GET /v1/me`.
    GetProfileError: 401, 404, 429, 503
);
route_error!(
    /// Failures of `GET /v1/users/{id}`.
    GetUserError: 401, 404, 422, 429, 503
);

const PROFILE_COLUMNS: &str =
    "id, handle, display_name, email, timezone, locale, verified, age_verified, created_at";

#[OpenApi(tag = "Tag::Profiles")]
impl ProfilesApi {
    /// Create or replace the caller's profile
    ///
    /// The first call creates the profile (and sends the welcome email when an email is given).
    /// Fields left out are cleared; `timezone` defaults to `UTC`.
    /// 409 `handle_taken` when another user has the handle.
    #[oai(path = "/v1/me", method = "put", operation_id = "put_profile")]
    async fn put_profile(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        body: Json<ProfileInput>,
    ) -> Result<ProfileSaved, PutProfileError> {
        let input = body.0;
        let timezone = input.timezone.as_deref().unwrap_or("UTC");
        if chrono_tz::Tz::from_str(timezone).is_err() {
            return Err(ApiError::invalid_field(
                "timezone",
                format!("{timezone:?} is not an IANA time-zone name"),
            )
            .into());
        }
        if input.birthdate.is_some_and(|d| d > Utc::now().date_naive()) {
            return Err(ApiError::invalid_field("birthdate", "birthdate is in the future").into());
        }
        let mut tx = state
            .services
            .begin()
            .await?
            .with_request_id(Some(request_id.0));
        let saved: Result<(Profile, bool), sqlx::Error> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO users (id, handle, display_name, email, timezone, locale, birthdate)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET
                 handle = EXCLUDED.handle, display_name = EXCLUDED.display_name,
                 email = EXCLUDED.email, timezone = EXCLUDED.timezone, locale = EXCLUDED.locale,
                 birthdate = EXCLUDED.birthdate, updated_at = now()
             RETURNING {PROFILE_COLUMNS}, (xmax = 0) AS created"
            )))
            .bind(auth.0.id)
            .bind(&input.handle)
            .bind(&input.display_name)
            .bind(&input.email)
            .bind(timezone)
            .bind(&input.locale)
            .bind(input.birthdate)
            .fetch_one(tx.conn())
            .await
            .map(|row: ProfileRow| (row.profile, row.created));
        let (profile, created) = match saved {
            Err(e) if is_unique_violation(&e, "users_handle_key") => {
                return Err(ApiError::conflict(
                    "handle_taken",
                    format!("the handle {:?} is taken", input.handle),
                )
                .into());
            }
            other => other?,
        };
        if created {
            on_profile_created(&mut tx, &profile).await?;
        } else {
            feed::cache::handle_changed(&mut tx, profile.id);
        }
        tx.commit().await?;
        Ok(ProfileSaved::Ok(Json(profile)))
    }

    /// The caller's profile
    ///
    /// 404 `profile_not_found` until the first `PUT /v1/me`.
    #[oai(path = "/v1/me", method = "get", operation_id = "get_profile")]
    async fn get_profile(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
    ) -> Result<Json<Profile>, GetProfileError> {
        let profile: Option<Profile> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {PROFILE_COLUMNS} FROM users WHERE id = $1"
        )))
        .bind(auth.0.id)
        .fetch_optional(&state.services.db)
        .await?;
        profile.map(Json).ok_or_else(|| {
            ApiError::not_found("profile_not_found", "create it with PUT /v1/me").into()
        })
    }

    /// A user's public profile
    #[oai(path = "/v1/users/:id", method = "get", operation_id = "get_user")]
    async fn get_user(
        &self,
        state: Data<&ApiState>,
        _auth: BearerAuth,
        id: Path<Uuid>,
    ) -> Result<Json<PublicProfile>, GetUserError> {
        let user: Option<(Uuid, String, Option<String>, bool)> =
            sqlx::query_as("SELECT id, handle, display_name, verified FROM users WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&state.services.db)
                .await?;
        let (id, handle, display_name, verified) =
            user.ok_or_else(|| ApiError::not_found("user_not_found", "no user with this id"))?;
        let (followers_count, following_count) =
            graph::follow_counts(&state.services.db, id).await?;
        Ok(Json(PublicProfile {
            id,
            handle,
            display_name,
            verified,
            followers_count,
            following_count,
        }))
    }
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    #[sqlx(flatten)]
    profile: Profile,
    created: bool,
}

/// Runs in the transaction that created the profile, so the welcome email is sent exactly
/// when the profile commits. Email only: a new user has no devices yet.
pub async fn on_profile_created(tx: &mut JobTx, profile: &Profile) -> Result<(), ApiError> {
    if profile.email.is_none() {
        return Ok(());
    }
    let welcome = Notification::new(
        profile.id,
        Category::Social,
        "Welcome",
        format!("Welcome, @{}", profile.handle),
    )
    // The delivery job adds the handle, address and unsubscribe link as they are at sending.
    .email("welcome", serde_json::json!({}))
    .without_push();
    notify::notify(tx, welcome).await?;
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation() && d.constraint() == Some(constraint))
}
