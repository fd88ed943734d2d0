//! One-click unsubscribe (RFC 8058). Each email carries a link to the API,
//! `<GROUNDCREW_PUBLIC_URL>/v1/email/unsubscribe?token=…`, in its body and in
//! `List-Unsubscribe`, with `List-Unsubscribe-Post: List-Unsubscribe=One-Click` so mail clients
//! offer their own button. The token names the notification the email came with and is signed
//! with `GROUNDCREW_JWT_SECRET` (HMAC-SHA256, compared in constant time by `hmac`), so the API
//! checks it without a lookup and nobody can unsubscribe someone else.
//!
//! Unsubscribing turns off what the email was: the weekly digest turns `email_digest` off,
//! any other email its notification's category. Both are the user's own preferences, which the
//! app shows and the user can turn back on; the suppression list stays for bounces and
//! complaints.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// Where links point and what signs them.
#[derive(Clone)]
pub struct OneClick {
    /// The API's public base URL, e.g. `https://api.example.com`.
    pub public_url: String,
    pub secret: String,
}

impl std::fmt::Debug for OneClick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneClick")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Bytes of the MAC kept in a token: 128 bits, far beyond guessing.
const MAC_BYTES: usize = 16;

fn mac(secret: &str, notification_id: Uuid) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(b"groundcrew unsubscribe ");
    mac.update(notification_id.as_bytes());
    mac
}

impl OneClick {
    pub fn token(&self, notification_id: Uuid) -> String {
        let mut bytes = notification_id.as_bytes().to_vec();
        bytes.extend_from_slice(
            &mac(&self.secret, notification_id).finalize().into_bytes()[..MAC_BYTES],
        );
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn url(&self, notification_id: Uuid) -> String {
        format!(
            "{}/v1/email/unsubscribe?token={}",
            self.public_url.trim_end_matches('/'),
            self.token(notification_id)
        )
    }
}

/// The notification a token names, when `secret` signed it.
pub fn verify(secret: &str, token: &str) -> Option<Uuid> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    if bytes.len() != 16 + MAC_BYTES {
        return None;
    }
    let notification_id = Uuid::from_slice(&bytes[..16]).ok()?;
    mac(secret, notification_id)
        .verify_truncated_left(&bytes[16..])
        .ok()?;
    Some(notification_id)
}

/// What an unsubscribe turned off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unsubscribed {
    Digest,
    Category(String),
}

/// Turns off what the notification's email was; `None` when the notification is gone.
/// Repeating it changes nothing.
pub async fn unsubscribe(
    db: &PgPool,
    notification_id: Uuid,
) -> Result<Option<Unsubscribed>, sqlx::Error> {
    let found: Option<(Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT user_id, category, email->>'template' FROM notifications WHERE id = $1",
    )
    .bind(notification_id)
    .fetch_optional(db)
    .await?;
    let Some((user_id, category, template)) = found else {
        return Ok(None);
    };
    let what = match template.as_deref() {
        Some("weekly_digest") => Unsubscribed::Digest,
        _ => Unsubscribed::Category(category),
    };
    let (categories, digest) = match &what {
        Unsubscribed::Digest => (serde_json::json!({}), Some("off")),
        Unsubscribed::Category(c) => (serde_json::json!({ c.as_str(): false }), None),
    };
    sqlx::query(
        "INSERT INTO notification_preferences (user_id, categories, email_digest)
         VALUES ($1, $2, COALESCE($3, 'weekly'))
         ON CONFLICT (user_id) DO UPDATE
         SET categories = notification_preferences.categories || EXCLUDED.categories,
             email_digest = COALESCE($3, notification_preferences.email_digest),
             updated_at = now()",
    )
    .bind(user_id)
    .bind(categories)
    .bind(digest)
    .execute(db)
    .await?;
    Ok(Some(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_with_its_secret_only_and_not_when_altered() {
        let one_click = OneClick {
            public_url: "https://api.example.test/".into(),
            secret: "s3cret".into(),
        };
        let id = Uuid::now_v7();
        let token = one_click.token(id);
        assert_eq!(verify("s3cret", &token), Some(id));
        assert_eq!(verify("other", &token), None);
        let mut altered = token.into_bytes();
        altered[3] = if altered[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(verify("s3cret", &String::from_utf8(altered).unwrap()), None);
        assert_eq!(verify("s3cret", "short"), None);
        assert!(
            one_click
                .url(id)
                .starts_with("https://api.example.test/v1/email/unsubscribe?token=")
        );
    }
}
