//! Receiving an upload: the body streams into object storage while its size is counted, after
//! its first bytes have shown what it really is. Only then is the media row recorded, with its
//! transcode job, in one transaction.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use uuid::Uuid;

use super::{
    MediaKind, MediaType, Transcode,
    sniff::SNIFF_LEN,
    storage::{MediaStorage, StorageError},
};
use crate::Services;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("the user has no profile")]
    NoProfile,
    #[error("reading the request body: {0}")]
    Body(std::io::Error),
    #[error("object storage: {0}")]
    Storage(#[from] StorageError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The media row as the upload left it.
#[derive(Debug, Clone, Copy)]
pub struct Uploaded {
    pub id: Uuid,
    pub kind: MediaKind,
}

/// Stores `body` as a new media item of `owner`, declared by the client as `declared` and
/// `declared_len` bytes long (when it said), and enqueues its transcode.
pub async fn receive(
    services: &Services,
    owner: Uuid,
    declared: MediaType,
    declared_len: Option<u64>,
    request_id: Option<String>,
    mut body: impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
) -> Result<Uploaded, UploadError> {
    let limits = &services.media.limits;
    let limit = match declared.kind() {
        MediaKind::Image => limits.max_image_bytes,
        MediaKind::Video => limits.max_video_bytes,
    };
    if declared_len.is_some_and(|len| len > limit) {
        return Err(UploadError::TooLarge { limit });
    }
    let head = read_head(&mut body).await?;
    match MediaType::sniff(&head) {
        Some(real) if real.agrees_with(declared) => {}
        Some(real) => {
            return Err(UploadError::Unsupported(format!(
                "the bytes are {}, not {}",
                real.content_type(),
                declared.content_type()
            )));
        }
        None => {
            return Err(UploadError::Unsupported(format!(
                "the bytes are not {}",
                declared.content_type()
            )));
        }
    }
    let has_profile: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(owner)
        .fetch_one(&services.db)
        .await?;
    if !has_profile {
        return Err(UploadError::NoProfile);
    }

    let id = Uuid::now_v7();
    let storage = &services.media.storage;
    let bytes = store(storage, id, head, body, limit).await?;
    let recorded = record(services, request_id, id, owner, declared, bytes).await;
    if recorded.is_err() {
        // The row is what makes the object reachable (and sweepable); without it, remove it.
        let _ = storage.delete_all(id).await;
    }
    recorded?;
    Ok(Uploaded {
        id,
        kind: declared.kind(),
    })
}

/// Reads until the sniffing window is full or the body ends.
async fn read_head(
    body: &mut (impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin),
) -> Result<Bytes, UploadError> {
    let mut head = BytesMut::new();
    while head.len() < SNIFF_LEN {
        match body.next().await {
            Some(chunk) => head.extend_from_slice(&chunk.map_err(UploadError::Body)?),
            None => break,
        }
    }
    Ok(head.freeze())
}

/// Streams the body into `{id}/original`, aborting (nothing left stored) past `limit` bytes or
/// on a broken body. Returns the size.
async fn store(
    storage: &MediaStorage,
    id: Uuid,
    head: Bytes,
    mut body: impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
    limit: u64,
) -> Result<u64, UploadError> {
    let mut upload = storage
        .start_upload(&MediaStorage::original_key(id))
        .await?;
    let mut written = 0u64;
    let mut next = Some(Ok(head));
    while let Some(chunk) = next {
        let failed = match chunk {
            Ok(chunk) => {
                written += chunk.len() as u64;
                if written > limit {
                    Some(UploadError::TooLarge { limit })
                } else {
                    upload.write(&chunk).await.err().map(UploadError::Storage)
                }
            }
            Err(e) => Some(UploadError::Body(e)),
        };
        if let Some(error) = failed {
            let _ = upload.abort().await;
            return Err(error);
        }
        next = body.next().await;
    }
    upload.finish().await?;
    Ok(written)
}

/// Records an item whose original is stored under `{id}/original`, with its transcode job.
pub async fn record(
    services: &Services,
    request_id: Option<String>,
    id: Uuid,
    owner: Uuid,
    media_type: MediaType,
    bytes: u64,
) -> Result<(), UploadError> {
    let mut tx = services.begin().await?.with_request_id(request_id);
    sqlx::query(
        "INSERT INTO media (id, owner_id, kind, content_type, bytes) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(owner)
    .bind(media_type.kind().as_str())
    .bind(media_type.content_type())
    .bind(bytes as i64)
    .execute(tx.conn())
    .await?;
    tx.enqueue(&Transcode { media_id: id }).await?;
    tx.commit().await?;
    Ok(())
}
