//! Posts: text plus the ids of media the author uploaded. Creating one enqueues its fan-out and
//! deleting one its retraction, in the same transaction (or, for a text-only post, the same
//! statement).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    Services,
    outbox::{self, JobTx},
};

use super::{
    cache,
    jobs::{FanoutPost, RetractPost},
};

pub const MAX_TEXT_CHARS: usize = 2000;
pub const MAX_MEDIA: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Post {
    pub id: Uuid,
    pub author_id: Uuid,
    pub text: String,
    pub media_ids: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("no such post")]
    NotFound,
    #[error("only the author may do this")]
    NotAuthor,
    #[error("text must be 1 to {MAX_TEXT_CHARS} characters")]
    BadText,
    #[error("at most {MAX_MEDIA} media ids")]
    TooManyMedia,
    #[error("media {0} is not yours")]
    MediaNotOwned(Uuid),
    #[error("create your profile (PUT /v1/me) first")]
    NoProfile,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Writes a post when its author has a profile: `$1` id, `$2` author, `$3` text, `$4` media ids.
const INSERT_POST: &str = "INSERT INTO posts (id, author_id, text, media_ids)
     SELECT $1, id, $3, $4 FROM users WHERE id = $2
     RETURNING id, author_id, text, media_ids, created_at";

fn check_input(text: &str, media_ids: &[Uuid]) -> Result<(), PostError> {
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_TEXT_CHARS {
        return Err(PostError::BadText);
    }
    if media_ids.len() > MAX_MEDIA {
        return Err(PostError::TooManyMedia);
    }
    Ok(())
}

/// A post in the caller's transaction (media to attach, an idempotency key to record).
pub async fn create_post(
    tx: &mut JobTx,
    author: Uuid,
    text: &str,
    media_ids: &[Uuid],
) -> Result<Post, PostError> {
    check_input(text, media_ids)?;
    check_media_ownership(tx.conn(), author, media_ids).await?;
    let post: Option<Post> = sqlx::query_as(INSERT_POST)
        .bind(Uuid::now_v7())
        .bind(author)
        .bind(text)
        .bind(media_ids)
        .fetch_optional(tx.conn())
        .await?;
    let post = post.ok_or(PostError::NoProfile)?;
    tx.enqueue(&FanoutPost { post_id: post.id }).await?;
    Ok(post)
}

/// A text-only post and its fan-out job in one statement, without a transaction to open: the
/// common `POST /v1/posts`, in one Postgres round trip instead of four.
pub async fn publish_text_post(
    services: &Services,
    author: Uuid,
    text: &str,
    request_id: Option<String>,
) -> Result<Post, PostError> {
    check_input(text, &[])?;
    let id = Uuid::now_v7();
    let written = outbox::write_then_enqueue(
        services,
        INSERT_POST,
        4,
        |query| {
            query
                .bind(id)
                .bind(author)
                .bind(text)
                .bind(Vec::<Uuid>::new())
        },
        &FanoutPost { post_id: id },
        request_id,
    )
    .await?;
    let row = written.ok_or(PostError::NoProfile)?;
    Ok(Post::from_row(&row)?)
}

/// Every media id on a post must be a `media` row the author owns; attaching makes them
/// visible to the post's readers.
pub async fn check_media_ownership(
    conn: &mut PgConnection,
    author: Uuid,
    media_ids: &[Uuid],
) -> Result<(), PostError> {
    match crate::media::access::attach_to_post(conn, author, media_ids).await? {
        None => Ok(()),
        Some(stranger) => Err(PostError::MediaNotOwned(stranger)),
    }
}

/// A post as `viewer` may see it: not deleted, and neither of the two blocks the other.
pub async fn get_post(db: &PgPool, viewer: Uuid, id: Uuid) -> Result<Post, PostError> {
    sqlx::query_as(
        "SELECT p.id, p.author_id, p.text, p.media_ids, p.created_at FROM posts p
         WHERE p.id = $1 AND p.deleted_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM blocks b
                           WHERE (b.blocker_id, b.blocked_id) IN ((p.author_id, $2), ($2, p.author_id)))",
    )
    .bind(id)
    .bind(viewer)
    .fetch_optional(db)
    .await?
    .ok_or(PostError::NotFound)
}

/// Deletes a post (its author only) and retracts it from every feed. Deleting it again is a
/// no-op.
pub async fn delete_post(tx: &mut JobTx, caller: Uuid, id: Uuid) -> Result<(), PostError> {
    let found: Option<(Uuid, bool)> = sqlx::query_as(
        "SELECT author_id, deleted_at IS NOT NULL FROM posts WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(tx.conn())
    .await?;
    match found {
        None => Err(PostError::NotFound),
        Some((author, _)) if author != caller => Err(PostError::NotAuthor),
        Some((_, true)) => Ok(()),
        Some((_, false)) => {
            sqlx::query("UPDATE posts SET deleted_at = now() WHERE id = $1")
                .bind(id)
                .execute(tx.conn())
                .await?;
            cache::post_deleted(tx, id);
            tx.enqueue(&RetractPost { post_id: id }).await?;
            Ok(())
        }
    }
}
