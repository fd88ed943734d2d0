//! Follows and blocks. Each change commits with the feed work it implies (backfill, retraction)
//! and, for a new follow, the followee's notification.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    notify::{self, Category, Notification},
    outbox::JobTx,
};

use super::{
    cache,
    jobs::{Backfill, RetractAuthor},
};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("no user {0}")]
    UnknownUser(Uuid),
    #[error("users cannot follow or block themselves")]
    OwnUser,
    #[error("one of the two users blocks the other")]
    Blocked,
    #[error("create your profile (PUT /v1/me) first")]
    NoProfile,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// `follower` follows `followee`. Idempotent: returns whether the follow is new, and only a new
/// one backfills the follower's feed and notifies the followee.
pub async fn follow(tx: &mut JobTx, follower: Uuid, followee: Uuid) -> Result<bool, GraphError> {
    let follower_handle = lock_pair(tx.conn(), follower, followee).await?;
    let blocked: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM blocks WHERE (blocker_id, blocked_id) IN (($1, $2), ($2, $1)))",
    )
    .bind(follower)
    .bind(followee)
    .fetch_one(tx.conn())
    .await?;
    if blocked {
        return Err(GraphError::Blocked);
    }
    let inserted = sqlx::query(
        "INSERT INTO follows (follower_id, followee_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(follower)
    .bind(followee)
    .execute(tx.conn())
    .await?
    .rows_affected()
        == 1;
    if inserted {
        cache::follows_changed(tx, &[follower]);
        tx.enqueue(&Backfill { follower, followee }).await?;
        notify::notify(
            tx,
            Notification::new(
                followee,
                Category::Social,
                "New follower",
                format!("@{follower_handle} followed you"),
            )
            .data(serde_json::json!({"type": "new_follower", "follower_id": follower})),
        )
        .await?;
    }
    Ok(inserted)
}

/// Idempotent; a removed follow retracts the followee's posts from the follower's feed.
pub async fn unfollow(tx: &mut JobTx, follower: Uuid, followee: Uuid) -> Result<(), GraphError> {
    let removed = sqlx::query("DELETE FROM follows WHERE follower_id = $1 AND followee_id = $2")
        .bind(follower)
        .bind(followee)
        .execute(tx.conn())
        .await?
        .rows_affected();
    if removed > 0 {
        cache::follows_changed(tx, &[follower]);
        tx.enqueue(&RetractAuthor {
            reader: follower,
            author: followee,
        })
        .await?;
    }
    Ok(())
}

/// `blocker` blocks `blocked`: follows both ways end and each one's posts leave the other's
/// feed. Idempotent.
pub async fn block(tx: &mut JobTx, blocker: Uuid, blocked: Uuid) -> Result<(), GraphError> {
    lock_pair(tx.conn(), blocker, blocked).await?;
    sqlx::query(
        "INSERT INTO blocks (blocker_id, blocked_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(blocker)
    .bind(blocked)
    .execute(tx.conn())
    .await?;
    let removed = sqlx::query(
        "DELETE FROM follows WHERE (follower_id, followee_id) IN (($1, $2), ($2, $1))
         RETURNING follower_id, followee_id",
    )
    .bind(blocker)
    .bind(blocked)
    .fetch_all(tx.conn())
    .await?;
    let retractions: Vec<RetractAuthor> = removed
        .iter()
        .map(|row| {
            use sqlx::Row;
            RetractAuthor {
                reader: row.get("follower_id"),
                author: row.get("followee_id"),
            }
        })
        .collect();
    let readers: Vec<Uuid> = retractions.iter().map(|r| r.reader).collect();
    cache::follows_changed(tx, &readers);
    tx.enqueue_many(&retractions).await?;
    Ok(())
}

/// Idempotent. Follows ended by the block stay ended.
pub async fn unblock(tx: &mut JobTx, blocker: Uuid, blocked: Uuid) -> Result<(), GraphError> {
    sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
        .bind(blocker)
        .bind(blocked)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// `(followers, following)` of a user, for profiles.
pub async fn follow_counts(db: &PgPool, user: Uuid) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM follows WHERE followee_id = $1),
                (SELECT count(*) FROM follows WHERE follower_id = $1)",
    )
    .bind(user)
    .fetch_one(db)
    .await
}

/// Checks both users exist and serialises every follow and block between the two, so a follow
/// racing a block cannot survive it. Returns the actor's handle.
async fn lock_pair(
    conn: &mut PgConnection,
    actor: Uuid,
    other: Uuid,
) -> Result<String, GraphError> {
    if actor == other {
        return Err(GraphError::OwnUser);
    }
    let (low, high) = if actor < other {
        (actor, other)
    } else {
        (other, actor)
    };
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text || $2::text, 0))")
        .bind(low)
        .bind(high)
        .execute(&mut *conn)
        .await?;
    let handles: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, handle FROM users WHERE id IN ($1, $2)")
            .bind(actor)
            .bind(other)
            .fetch_all(&mut *conn)
            .await?;
    let handle_of = |id| {
        handles
            .iter()
            .find(|(u, _)| *u == id)
            .map(|(_, h)| h.clone())
    };
    if handle_of(other).is_none() {
        return Err(GraphError::UnknownUser(other));
    }
    handle_of(actor).ok_or(GraphError::NoProfile)
}
