//! Uploads and their renditions. The body of `POST /v1/media` is streamed into object storage
//! (never held whole), under the media limits rather than the API's JSON body limit; the work
//! behind it is the media family's, in `groundcrew_jobs::media`.

use chrono::{DateTime, Utc};
use groundcrew_jobs::media::{
    MediaStorage, MediaType,
    access::{self, MediaRow, RenditionRow},
    upload::{self, UploadError},
};
use poem::{Body, http::StatusCode, web::Data};
use poem_openapi::{
    ApiRequest, ApiResponse, Object, OpenApi,
    param::{Header, Path},
    payload::{Binary, Json},
};
use uuid::Uuid;

use crate::{ApiState, Tag, auth::BearerAuth, error::ApiError, request_id::RequestId, route_error};

pub struct MediaApi;

/// The file's bytes, with the `Content-Type` it claims to be; the bytes are checked against it.
#[derive(ApiRequest)]
pub enum MediaUpload {
    #[oai(content_type = "image/jpeg")]
    Jpeg(Binary<Body>),
    #[oai(content_type = "image/png")]
    Png(Binary<Body>),
    #[oai(content_type = "image/webp")]
    Webp(Binary<Body>),
    #[oai(content_type = "video/mp4")]
    Mp4(Binary<Body>),
    #[oai(content_type = "video/quicktime")]
    QuickTime(Binary<Body>),
}

impl MediaUpload {
    fn into_parts(self) -> (MediaType, Body) {
        match self {
            MediaUpload::Jpeg(b) => (MediaType::Jpeg, b.0),
            MediaUpload::Png(b) => (MediaType::Png, b.0),
            MediaUpload::Webp(b) => (MediaType::Webp, b.0),
            MediaUpload::Mp4(b) => (MediaType::Mp4, b.0),
            MediaUpload::QuickTime(b) => (MediaType::QuickTime, b.0),
        }
    }
}

#[derive(Debug, Object)]
pub struct MediaAccepted {
    pub id: Uuid,
    /// `image` or `video`.
    pub kind: String,
    /// Always `pending`: renditions are made in the background.
    pub status: String,
}

#[derive(Debug, Object)]
pub struct MediaFailure {
    /// `unsupported_type`, `too_large`, `corrupt`, `too_long` or `timeout`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Object)]
pub struct MediaRendition {
    /// `w320`, `w640`, `w1080` (images); `v360`, `v720`, `poster` (videos).
    pub name: String,
    /// Where to fetch it: this API, which streams it or redirects to a signed URL.
    pub url: String,
    pub content_type: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
}

#[derive(Debug, Object)]
pub struct MediaBody {
    pub id: Uuid,
    pub owner_id: Uuid,
    /// `image` or `video`.
    pub kind: String,
    /// `pending`, `processing`, `ready` or `failed`.
    pub status: String,
    /// Why it failed, when it did.
    pub error: Option<MediaFailure>,
    /// Of the upright picture, once processed.
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// Videos only.
    pub duration_ms: Option<i64>,
    /// Listed once `ready`.
    pub renditions: Vec<MediaRendition>,
    pub created_at: DateTime<Utc>,
}

impl MediaBody {
    fn new(media: MediaRow, renditions: Vec<RenditionRow>) -> Self {
        let id = media.id;
        MediaBody {
            id,
            owner_id: media.owner_id,
            kind: media.kind,
            status: media.status,
            error: media.error_code.map(|code| MediaFailure {
                code,
                message: media.error_message.unwrap_or_default(),
            }),
            width: media.width,
            height: media.height,
            duration_ms: media.duration_ms,
            renditions: renditions
                .into_iter()
                .map(|r| MediaRendition {
                    url: format!("/v1/media/{id}/renditions/{}", r.name),
                    name: r.name,
                    content_type: r.content_type,
                    width: r.width,
                    height: r.height,
                    bytes: r.bytes,
                })
                .collect(),
            created_at: media.created_at,
        }
    }
}

#[derive(ApiResponse)]
enum Accepted {
    /// Stored; renditions are being made.
    #[oai(status = 202)]
    Accepted(Json<MediaAccepted>),
}

#[derive(ApiResponse)]
enum RenditionBytes {
    /// The rendition's bytes (local storage).
    #[oai(status = 200)]
    Bytes(
        Binary<Body>,
        #[oai(header = "Content-Type")] String,
        #[oai(header = "Cache-Control")] String,
    ),
    /// A short-lived signed URL to fetch it from object storage.
    #[oai(status = 307)]
    Redirect(#[oai(header = "Location")] String),
}

route_error!(
    /// Failures of `POST /v1/media`.
    UploadMediaError: 400, 401, 404, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `GET /v1/media/{id}`.
    GetMediaError: 401, 404, 422, 429, 503
);
route_error!(
    /// Failures of `GET /v1/media/{id}/renditions/{name}`.
    GetRenditionError: 401, 404, 422, 429, 503
);

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            UploadError::Unsupported(message) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            ),
            UploadError::NoProfile => {
                ApiError::not_found("profile_not_found", "create it with PUT /v1/me")
            }
            UploadError::Body(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the body could not be read: {e}"),
            ),
            UploadError::Storage(e) => {
                tracing::error!(error = %e, "media storage unavailable");
                ApiError::unavailable("object storage")
            }
            UploadError::Database(e) => e.into(),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::not_found("media_not_found", "no such media, or not yours")
}

#[OpenApi(tag = "Tag::Media")]
impl MediaApi {
    /// Upload a photo or video
    ///
    /// The body is the file itself. Images (JPEG, PNG, WebP) up to
    /// `GROUNDCREW_MEDIA_MAX_IMAGE_BYTES`, videos (MP4, QuickTime) up to
    /// `GROUNDCREW_MEDIA_MAX_VIDEO_BYTES`: 413 past the limit, decided while the body streams in,
    /// with nothing kept. 415 for other types, or bytes that are not what `Content-Type` says.
    /// Renditions are made in the background; poll `GET /v1/media/{id}` (the owner is also
    /// notified). An upload not attached to a post within 24 hours is deleted.
    #[oai(path = "/v1/media", method = "post", operation_id = "upload_media")]
    async fn upload_media(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        /// The body's size, when known: over the limit means 413 before any byte is read.
        #[oai(name = "Content-Length")]
        content_length: Header<Option<u64>>,
        body: MediaUpload,
    ) -> Result<Accepted, UploadMediaError> {
        let (declared, body) = body.into_parts();
        let uploaded = upload::receive(
            &state.services,
            auth.0.id,
            declared,
            content_length.0,
            Some(request_id.0),
            Box::pin(body.into_bytes_stream()),
        )
        .await
        .map_err(ApiError::from)?;
        Ok(Accepted::Accepted(Json(MediaAccepted {
            id: uploaded.id,
            kind: uploaded.kind.as_str().into(),
            status: "pending".into(),
        })))
    }

    /// A photo or video, with its renditions once ready
    ///
    /// The owner's until a post attaches it; then anyone's. 404 otherwise.
    #[oai(path = "/v1/media/:id", method = "get", operation_id = "get_media")]
    async fn get_media(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> Result<Json<MediaBody>, GetMediaError> {
        let (media, renditions) = access::visible_media(&state.services.db, auth.0.id, id.0)
            .await?
            .ok_or_else(not_found)?;
        Ok(Json(MediaBody::new(media, renditions)))
    }

    /// One rendition's bytes
    ///
    /// Streamed by the API from local storage, or a 307 to a signed URL valid for five minutes
    /// on S3. Same visibility as the media item; 404 until the item is ready.
    #[oai(
        path = "/v1/media/:id/renditions/:name",
        method = "get",
        operation_id = "get_media_rendition"
    )]
    async fn get_rendition(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// `w320`, `w640`, `w1080`, `v360`, `v720` or `poster`.
        name: Path<String>,
    ) -> Result<RenditionBytes, GetRenditionError> {
        let (_, renditions) = access::visible_media(&state.services.db, auth.0.id, id.0)
            .await?
            .ok_or_else(not_found)?;
        let rendition = renditions
            .into_iter()
            .find(|r| r.name == name.0)
            .ok_or_else(|| ApiError::not_found("rendition_not_found", "no such rendition (yet)"))?;
        let storage = &state.services.media.storage;
        let key = MediaStorage::rendition_key(id.0, &rendition.name);
        let unavailable = |e: groundcrew_jobs::media::storage::StorageError| {
            tracing::error!(error = %e, "media storage unavailable");
            ApiError::unavailable("object storage")
        };
        if let Some(url) = storage.signed_url(&key).await.map_err(unavailable)? {
            return Ok(RenditionBytes::Redirect(url));
        }
        let stream = storage.get_stream(&key).await.map_err(unavailable)?;
        Ok(RenditionBytes::Bytes(
            Binary(Body::from_bytes_stream(stream)),
            rendition.content_type,
            // The bytes under a rendition's name change only if the item is re-processed.
            "private, max-age=3600".into(),
        ))
    }
}
