//! The social graph (follows, blocks), posts and the home feed. The work behind them (fan-out,
//! retraction, backfill) is the feed family's, in `groundcrew_jobs::feed`.

use chrono::{DateTime, Utc};
use groundcrew_jobs::feed::{self, GraphError, PostError, graph, posts, read};
use poem::{http::StatusCode, web::Data};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
};
use uuid::Uuid;

use crate::{
    ApiState, Tag,
    auth::BearerAuth,
    error::{ApiError, IntoApiError},
    idempotency::{self, Begun},
    request_id::RequestId,
    route_error,
};

pub struct FeedApi;

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct PostInput {
    #[oai(validator(min_length = 1, max_length = 2000))]
    pub text: String,
    /// Media the caller uploaded (`POST /v1/media`), at most 10.
    #[oai(default, validator(max_items = 10))]
    pub media_ids: Vec<Uuid>,
}

#[derive(Debug, Clone, Object)]
pub struct PostBody {
    pub id: Uuid,
    pub author_id: Uuid,
    pub text: String,
    pub media_ids: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl From<feed::Post> for PostBody {
    fn from(p: feed::Post) -> Self {
        PostBody {
            id: p.id,
            author_id: p.author_id,
            text: p.text,
            media_ids: p.media_ids,
            created_at: p.created_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct Author {
    pub id: Uuid,
    pub handle: String,
}

#[derive(Debug, Object)]
pub struct FeedItemBody {
    pub id: Uuid,
    pub author: Author,
    pub text: String,
    pub media_ids: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct FeedPageBody {
    /// Newest first; the caller's own posts included.
    pub items: Vec<FeedItemBody>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
enum Done {
    #[oai(status = 204)]
    NoContent,
}

#[derive(ApiResponse)]
enum PostCreated {
    #[oai(status = 201)]
    Created(Json<PostBody>),
}

route_error!(
    /// Failures of follow and block changes.
    GraphChangeError: 401, 403, 404, 409, 422, 429, 503
);
route_error!(
    /// Failures of `POST /v1/posts`.
    CreatePostError: 400, 401, 409, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `GET /v1/posts/{id}`.
    GetPostError: 401, 404, 422, 429, 503
);
route_error!(
    /// Failures of `DELETE /v1/posts/{id}`.
    DeletePostError: 401, 403, 404, 422, 429, 503
);
route_error!(
    /// Failures of `GET /v1/feed`.
    ReadFeedError: 401, 422, 429, 503
);

#[OpenApi(tag = "Tag::Feed")]
impl FeedApi {
    /// Follow a user
    ///
    /// Idempotent. Their recent posts join the caller's feed shortly after; they are notified
    /// of a new follower. 404 `user_not_found`, 422 when following oneself, 403 `blocked`
    /// when either blocks the other, 409 `profile_required` before the caller's `PUT /v1/me`.
    #[oai(
        path = "/v1/me/following/:user_id",
        method = "put",
        operation_id = "follow_user"
    )]
    async fn follow(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        user_id: Path<Uuid>,
    ) -> Result<Done, GraphChangeError> {
        let mut tx = state
            .services
            .begin()
            .await?
            .with_request_id(Some(request_id.0));
        graph::follow(&mut tx, auth.0.id, user_id.0).await?;
        tx.commit().await?;
        Ok(Done::NoContent)
    }

    /// Stop following a user
    ///
    /// Idempotent; their posts leave the caller's feed at once.
    #[oai(
        path = "/v1/me/following/:user_id",
        method = "delete",
        operation_id = "unfollow_user"
    )]
    async fn unfollow(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        user_id: Path<Uuid>,
    ) -> Result<Done, GraphChangeError> {
        let mut tx = state
            .services
            .begin()
            .await?
            .with_request_id(Some(request_id.0));
        graph::unfollow(&mut tx, auth.0.id, user_id.0).await?;
        tx.commit().await?;
        Ok(Done::NoContent)
    }

    /// Block a user
    ///
    /// Idempotent. Ends follows both ways and removes each one's posts from the other's feed.
    #[oai(
        path = "/v1/me/blocks/:user_id",
        method = "put",
        operation_id = "block_user"
    )]
    async fn block(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        user_id: Path<Uuid>,
    ) -> Result<Done, GraphChangeError> {
        let mut tx = state
            .services
            .begin()
            .await?
            .with_request_id(Some(request_id.0));
        graph::block(&mut tx, auth.0.id, user_id.0).await?;
        tx.commit().await?;
        Ok(Done::NoContent)
    }

    /// Unblock a user
    ///
    /// Idempotent. Follows the block ended stay ended.
    #[oai(
        path = "/v1/me/blocks/:user_id",
        method = "delete",
        operation_id = "unblock_user"
    )]
    async fn unblock(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        user_id: Path<Uuid>,
    ) -> Result<Done, GraphChangeError> {
        let mut tx = state
            .services
            .begin()
            .await?
            .with_request_id(Some(request_id.0));
        graph::unblock(&mut tx, auth.0.id, user_id.0).await?;
        tx.commit().await?;
        Ok(Done::NoContent)
    }

    /// Publish a post
    ///
    /// It appears in the caller's feed and their followers' shortly after. Send an
    /// `Idempotency-Key` so a retried request posts once.
    #[oai(path = "/v1/posts", method = "post", operation_id = "create_post")]
    async fn create_post(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        /// Replays the first response for a repeated key with the same body.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: Json<PostInput>,
    ) -> Result<PostCreated, CreatePostError> {
        let input = body.0;
        if idempotency_key.0.is_none() && input.media_ids.is_empty() {
            let post = posts::publish_text_post(
                &state.services,
                auth.0.id,
                &input.text,
                Some(request_id.0),
            )
            .await?;
            return Ok(PostCreated::Created(Json(post.into())));
        }
        let mut claim = match idempotency::begin(
            &state,
            &request_id,
            auth.0.id,
            idempotency_key.0,
            "create_post",
            &input,
        )
        .await?
        {
            Begun::Replay(first) => return Ok(PostCreated::Created(Json(first))),
            Begun::Fresh(claim) => claim,
        };
        let post: PostBody =
            posts::create_post(claim.tx(), auth.0.id, &input.text, &input.media_ids)
                .await?
                .into();
        claim.commit(StatusCode::CREATED, &post).await?;
        Ok(PostCreated::Created(Json(post)))
    }

    /// A post
    ///
    /// 404 when it is deleted, or when its author and the caller block one another.
    #[oai(path = "/v1/posts/:id", method = "get", operation_id = "get_post")]
    async fn get_post(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> Result<Json<PostBody>, GetPostError> {
        let post = posts::get_post(&state.services.db, auth.0.id, id.0).await?;
        Ok(Json(post.into()))
    }

    /// Delete a post
    ///
    /// Author only (others 403); it leaves every feed.
    #[oai(
        path = "/v1/posts/:id",
        method = "delete",
        operation_id = "delete_post"
    )]
    async fn delete_post(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        id: Path<Uuid>,
    ) -> Result<Done, DeletePostError> {
        let mut tx = state
            .services
            .begin()
            .await?
            .with_request_id(Some(request_id.0));
        posts::delete_post(&mut tx, auth.0.id, id.0).await?;
        tx.commit().await?;
        Ok(Done::NoContent)
    }

    /// The caller's home feed
    ///
    /// Posts by the caller and everyone they follow, newest first.
    #[oai(path = "/v1/feed", method = "get", operation_id = "read_feed")]
    async fn read_feed(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        /// 1–100, default 20.
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<Json<FeedPageBody>, ReadFeedError> {
        let limit = limit.0.unwrap_or(20) as usize;
        let page = read::read_feed(&state.services, auth.0.id, limit, cursor.0.as_deref()).await?;
        Ok(Json(FeedPageBody {
            items: page
                .items
                .into_iter()
                .map(|i| FeedItemBody {
                    id: i.id,
                    author: Author {
                        id: i.author_id,
                        handle: i.author_handle,
                    },
                    text: i.text,
                    media_ids: i.media_ids,
                    created_at: i.created_at,
                })
                .collect(),
            next_cursor: page.next_cursor,
        }))
    }
}

impl IntoApiError for GraphError {
    fn into_api_error(self) -> ApiError {
        match self {
            GraphError::UnknownUser(_) => ApiError::not_found("user_not_found", self.to_string()),
            GraphError::OwnUser => ApiError::invalid_field("user_id", self.to_string()),
            GraphError::Blocked => {
                ApiError::new(StatusCode::FORBIDDEN, "blocked", self.to_string())
            }
            GraphError::NoProfile => ApiError::conflict("profile_required", self.to_string()),
            GraphError::Database(e) => e.into(),
        }
    }
}

impl IntoApiError for PostError {
    fn into_api_error(self) -> ApiError {
        match self {
            PostError::NotFound => ApiError::not_found("post_not_found", self.to_string()),
            PostError::NotAuthor => ApiError::forbidden(self.to_string()),
            PostError::BadText => ApiError::invalid_field("text", self.to_string()),
            PostError::TooManyMedia | PostError::MediaNotOwned(_) => {
                ApiError::invalid_field("media_ids", self.to_string())
            }
            PostError::NoProfile => ApiError::conflict("profile_required", self.to_string()),
            PostError::Database(e) => e.into(),
        }
    }
}

impl IntoApiError for read::ReadError {
    fn into_api_error(self) -> ApiError {
        match self {
            read::ReadError::BadCursor => ApiError::invalid_field("cursor", self.to_string()),
            read::ReadError::Database(e) => e.into(),
            read::ReadError::Redis(e) => e.into(),
        }
    }
}
