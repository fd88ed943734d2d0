//! Who may see a media item, and attaching items to posts. An item is its owner's alone until a
//! post attaches it; from then on anyone who can see posts can fetch it. Attaching is limited to
//! the author's own items.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A media row as `GET /v1/media/{id}` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MediaRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub kind: String,
    pub content_type: String,
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub duration_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RenditionRow {
    pub name: String,
    pub content_type: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
}

/// The item if `viewer` may see it: theirs, or attached to a post.
pub async fn visible_media(
    db: &PgPool,
    viewer: Uuid,
    id: Uuid,
) -> Result<Option<(MediaRow, Vec<RenditionRow>)>, sqlx::Error> {
    let Some(media) = sqlx::query_as::<_, MediaRow>(
        "SELECT id, owner_id, kind, content_type, status, error_code, error_message, width,
                height, duration_ms, created_at
         FROM media WHERE id = $1 AND (owner_id = $2 OR attached_at IS NOT NULL)",
    )
    .bind(id)
    .bind(viewer)
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    // Renditions are listed once the item is ready; a re-run in progress may be rewriting them.
    let renditions = if media.status == "ready" {
        sqlx::query_as(
            "SELECT name, content_type, width, height, bytes FROM media_renditions
             WHERE media_id = $1 ORDER BY width, name",
        )
        .bind(id)
        .fetch_all(db)
        .await?
    } else {
        Vec::new()
    };
    Ok(Some((media, renditions)))
}

/// Marks `media_ids` attached to a post of `author`. Returns the first id that is missing or
/// someone else's, if any; the caller then rolls back its transaction, undoing the rest.
pub async fn attach_to_post(
    conn: &mut PgConnection,
    author: Uuid,
    media_ids: &[Uuid],
) -> Result<Option<Uuid>, sqlx::Error> {
    if media_ids.is_empty() {
        return Ok(None);
    }
    let attached: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE media SET attached_at = coalesce(attached_at, now())
         WHERE id = ANY($1) AND owner_id = $2
         RETURNING id",
    )
    .bind(media_ids)
    .bind(author)
    .fetch_all(conn)
    .await?;
    Ok(media_ids.iter().copied().find(|id| !attached.contains(id)))
}
