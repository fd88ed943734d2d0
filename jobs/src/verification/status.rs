//! The status order every transition respects: pending < requires_input < processing <
//! verified | failed | canceled. Providers deliver webhooks late and out of order, so an update
//! only ever moves a verification forward; a late `processing` never overwrites `verified`.

use uuid::Uuid;

use crate::outbox::JobTx;

pub const STATUSES: [&str; 6] = [
    "pending",
    "requires_input",
    "processing",
    "verified",
    "failed",
    "canceled",
];

/// Position in the order; the three outcomes share the last place, so none replaces another.
pub fn rank(status: &str) -> u8 {
    match status {
        "pending" => 0,
        "requires_input" => 1,
        "processing" => 2,
        _ => 3,
    }
}

/// The statuses `to` may replace.
pub fn replaceable_by(to: &str) -> Vec<&'static str> {
    STATUSES
        .into_iter()
        .filter(|s| rank(s) < rank(to))
        .collect()
}

/// Moves the verification to `to` when that is forward; returns whether it moved.
pub async fn advance(
    tx: &mut JobTx,
    id: Uuid,
    to: &str,
    detail: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        "UPDATE verifications SET status = $2, detail = COALESCE($3, detail), updated_at = now()
         WHERE id = $1 AND status = ANY($4)",
    )
    .bind(id)
    .bind(to)
    .bind(detail)
    .bind(replaceable_by(to))
    .execute(tx.conn())
    .await?
    .rows_affected();
    Ok(moved == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forward_moves_are_allowed() {
        assert!(replaceable_by("processing").contains(&"requires_input"));
        assert!(!replaceable_by("processing").contains(&"verified"));
        assert!(!replaceable_by("verified").contains(&"failed"));
        assert!(replaceable_by("canceled").contains(&"pending"));
        assert!(replaceable_by("pending").is_empty());
    }
}
