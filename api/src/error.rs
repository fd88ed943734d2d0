//! The one error shape, `{"error": {"code", "message", "details"}}`, for every failure: the
//! routes' own, the auth checker's, and the framework's (bad JSON, wrong content type, unknown
//! path, body too large), which `shape_framework_errors` rewrites at the edge.
//!
//! Each route names the statuses it can fail with through `route_error!`, so the spec lists
//! exactly those and the handler still returns a plain `ApiError` with `?`.

use std::borrow::Cow;

use poem::{
    Endpoint, IntoResponse, Request, Response, error::ResponseError, http::StatusCode,
    web::headers::HeaderValue,
};
use poem_openapi::{
    Object, OperationId,
    error::{
        AuthorizationError, ContentTypeError, ParseParamError, ParsePathError,
        ParseRequestPayloadError,
    },
    payload::Json,
    registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::Type,
};
use serde_json::Value;

/// A failure as clients see it. `code` is stable and machine-readable; `message` is for people.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    pub details: Value,
    /// Seconds, sent as `Retry-After` (429 and some 503s).
    pub retry_after: Option<u64>,
}

/// The body of every error response.
#[derive(Debug, Object)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Object)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `handle_taken`, `validation_failed`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Extra facts about the failure (which field, which dependency); `{}` when none.
    pub details: Value,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            details: Value::Object(Default::default()),
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn malformed_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }

    /// A field that passed the schema but not the rules the schema cannot express.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(message).with_details(serde_json::json!({ "field": field }))
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry after {retry_after_secs} s"),
        );
        e.retry_after = Some(retry_after_secs);
        e
    }

    pub fn unavailable(dependency: &'static str) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dependency_unavailable",
            format!("{dependency} is unavailable"),
        )
        .with_details(serde_json::json!({ "dependency": dependency }));
        e.retry_after = Some(1);
        e
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected failure; the request id in X-Request-Id helps operators find it",
        )
    }

    /// Rewrites an error raised by poem or poem-openapi (not by a route) into the shape.
    pub fn from_framework(err: &poem::Error) -> Self {
        let reason = err.to_string();
        if let Some(payload) = err.downcast_ref::<ParseRequestPayloadError>() {
            // serde_json's syntax errors end with "at line L column C"; poem-openapi's schema
            // errors ("failed to parse", "Expected input type") never do.
            return if payload.reason.contains(" at line ") {
                Self::malformed_json(format!("the body is not valid JSON: {}", payload.reason))
            } else {
                Self::validation(payload.reason.clone())
            };
        }
        if let Some(param) = err.downcast_ref::<ParseParamError>() {
            return Self::invalid_field(param.name, reason);
        }
        if let Some(path) = err.downcast_ref::<ParsePathError>() {
            return Self::invalid_field(path.name, reason);
        }
        if err.is::<ContentTypeError>() {
            return Self::new(err.status(), "unsupported_media_type", reason);
        }
        if err.is::<AuthorizationError>() {
            return Self::unauthorized("a bearer token is required");
        }
        let status = err.status();
        match status {
            StatusCode::NOT_FOUND => Self::not_found("not_found", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => Self::new(status, "method_not_allowed", reason),
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(status, "payload_too_large", reason),
            s if s.is_server_error() => {
                tracing::error!(error = %reason, "unhandled server error");
                Self::internal()
            }
            s => Self::new(s, snake_case_reason(s), reason),
        }
    }
}

fn snake_case_reason(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase()
        .replace([' ', '-'], "_")
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                details: self.details.clone(),
            },
        };
        let mut resp = Json(body).into_response();
        resp.set_status(self.status);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                tracing::warn!(error = %e, "Postgres unavailable");
                Self::unavailable("postgres")
            }
            e => {
                tracing::error!(error = %e, "Postgres query failed");
                Self::internal()
            }
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        tracing::warn!(error = %e, "Redis unavailable");
        Self::unavailable("redis")
    }
}

/// What each documented status means, for the spec.
fn describe(status: u16) -> &'static str {
    match status {
        400 => "The body is not valid JSON.",
        401 => "The bearer token is missing, expired or invalid.",
        403 => "The token lacks a role this route needs.",
        404 => "The resource does not exist.",
        409 => "The request conflicts with the current state.",
        413 => "The body is larger than the limit.",
        415 => "The body is not `application/json`.",
        422 => "The request is well-formed but invalid (`validation_failed` or a specific code).",
        429 => "Rate limited; retry after `Retry-After` seconds.",
        503 => "A dependency (Postgres or Redis) is unavailable.",
        _ => "Error.",
    }
}

/// The spec entries of a route's error statuses, all carrying `ErrorBody`.
pub fn error_responses(statuses: &[u16]) -> MetaResponses {
    MetaResponses {
        responses: statuses
            .iter()
            .map(|&status| MetaResponse {
                description: describe(status),
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "application/json; charset=utf-8",
                    schema: ErrorBody::schema_ref(),
                }],
                headers: if status == 429 {
                    vec![MetaHeader {
                        name: "Retry-After".into(),
                        description: Some("Seconds to wait before retrying.".into()),
                        required: true,
                        deprecated: false,
                        schema: u64::schema_ref(),
                    }]
                } else {
                    vec![]
                },
            })
            .collect(),
    }
}

pub fn register_error_body(registry: &mut Registry) {
    ErrorBody::register(registry);
}

/// Declares a route's error type: a wrapper of [`ApiError`] whose spec lists exactly the given
/// statuses. `?` converts `ApiError`, `sqlx::Error` and `redis::RedisError` into it.
///
/// ```ignore
/// route_error!(
///     /// Failures of `PUT /v1/me`.
///     PutMeError: 400, 401, 409, 413, 415, 422, 429, 503
/// );
/// ```
#[macro_export]
macro_rules! route_error {
    ($(#[$doc:meta])* $name:ident: $($status:literal),+ $(,)?) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub $crate::error::ApiError);

        impl ::poem_openapi::ApiResponse for $name {
            fn meta() -> ::poem_openapi::registry::MetaResponses {
                $crate::error::error_responses(&[$($status),+])
            }

            fn register(registry: &mut ::poem_openapi::registry::Registry) {
                $crate::error::register_error_body(registry);
            }
        }

        impl<E> ::std::convert::From<E> for $name
        where
            E: $crate::error::IntoApiError,
        {
            fn from(e: E) -> Self {
                $name(e.into_api_error())
            }
        }

        impl ::std::convert::From<$name> for ::poem::Error {
            fn from(e: $name) -> Self {
                ::poem::Error::from(e.0)
            }
        }

        impl ::poem::IntoResponse for $name {
            fn into_response(self) -> ::poem::Response {
                ::poem::error::ResponseError::as_response(&self.0)
            }
        }
    };
}

/// What `?` may turn into a route error. A trait of our own (rather than `Into<ApiError>`) so
/// the route error types' blanket `From` cannot overlap with `From<T> for T`.
pub trait IntoApiError {
    fn into_api_error(self) -> ApiError;
}

impl IntoApiError for ApiError {
    fn into_api_error(self) -> ApiError {
        self
    }
}

impl IntoApiError for sqlx::Error {
    fn into_api_error(self) -> ApiError {
        self.into()
    }
}

impl IntoApiError for redis::RedisError {
    fn into_api_error(self) -> ApiError {
        self.into()
    }
}

/// Rewrites every error that reaches the edge into the shape, keeping the operation id so the
/// request metrics can still name the route.
pub async fn shape_errors<E: Endpoint>(ep: E, req: Request) -> poem::Result<Response> {
    match ep.call(req).await {
        Ok(resp) => Ok(resp.into_response()),
        Err(err) => {
            let operation = err.data::<OperationId>().copied();
            let mut resp = match err.downcast_ref::<ApiError>() {
                Some(api) => api.as_response(),
                None => ApiError::from_framework(&err).as_response(),
            };
            if let Some(operation) = operation {
                resp.set_data(operation);
            }
            Ok(resp)
        }
    }
}
