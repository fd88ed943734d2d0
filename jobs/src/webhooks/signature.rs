//! Webhook signature schemes, written on `hmac` (whose `verify_slice` compares in constant
//! time) rather than taken from a crate: the Rust `standardwebhooks` crate has had a
//! prefix-compare bypass, and Stripe's and Persona's schemes have no well-kept Rust crate.
//!
//! Every scheme signs `timestamp` + body with HMAC-SHA256; a request passes when its timestamp
//! is within the tolerance of our clock (both ways) and any one of its signatures matches
//! exactly (full length: a truncated or empty signature never matches).

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Stripe, Persona and Standard Webhooks all allow five minutes.
pub const TOLERANCE_SECONDS: i64 = 300;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    MissingHeader,
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the timestamp is outside the {TOLERANCE_SECONDS} s tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
    #[error("the signing secret is not configured")]
    NotConfigured,
}

/// Checks `signature` (raw bytes) against HMAC-SHA256(key, parts...) in constant time.
fn matches(key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(signature).is_ok()
}

fn within_tolerance(timestamp: i64, now: i64) -> Result<(), SignatureError> {
    if (now - timestamp).abs() > TOLERANCE_SECONDS {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// `Stripe-Signature: t=1492774577,v1=5257a8…,v1=…` (several `v1` during secret rotation).
/// Also Persona's `Persona-Signature`, which repeats whole `t=…,v1=…` groups separated by
/// spaces during rotation; each group is checked with its own timestamp.
pub fn verify_timestamped_hex(
    header: Option<&str>,
    secret: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::MissingHeader)?;
    let secret = secret.ok_or(SignatureError::NotConfigured)?;
    let mut outcome = Err(SignatureError::Malformed);
    for group in header.split_whitespace() {
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for pair in group.split(',') {
            match pair.split_once('=') {
                Some(("t", t)) => timestamp = t.trim().parse::<i64>().ok(),
                Some(("v1", sig)) => signatures.push(sig.trim()),
                _ => {}
            }
        }
        let Some(timestamp) = timestamp else { continue };
        if signatures.is_empty() {
            continue;
        }
        if let Err(e) = within_tolerance(timestamp, now) {
            outcome = Err(e);
            continue;
        }
        let t = timestamp.to_string();
        let signed: [&[u8]; 3] = [t.as_bytes(), b".", body];
        let valid = signatures
            .iter()
            .filter_map(|s| hex::decode(s).ok())
            .any(|sig| matches(secret.as_bytes(), &signed, &sig));
        if valid {
            return Ok(timestamp);
        }
        outcome = Err(SignatureError::Mismatch);
    }
    outcome
}

/// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> …`,
/// signed content `{id}.{timestamp}.{body}`, key = base64 of the secret after `whsec_`.
pub fn verify_standard(
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    secret: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<i64, SignatureError> {
    let (Some(id), Some(timestamp), Some(signature)) = (id, timestamp, signature) else {
        return Err(SignatureError::MissingHeader);
    };
    let secret = secret.ok_or(SignatureError::NotConfigured)?;
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| SignatureError::NotConfigured)?;
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    within_tolerance(ts, now)?;
    let signed: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.trim().as_bytes(), b".", body];
    let mut saw_any = false;
    for entry in signature.split_whitespace() {
        let Some(("v1", sig)) = entry.split_once(',') else {
            continue;
        };
        saw_any = true;
        if let Ok(sig) = BASE64.decode(sig)
            && matches(&key, &signed, &sig)
        {
            return Ok(ts);
        }
    }
    Err(if saw_any {
        SignatureError::Mismatch
    } else {
        SignatureError::Malformed
    })
}

/// Signs like Stripe and Persona do (`t=…,v1=…`): for tests and for local tools that post
/// webhooks to a development instance.
pub fn sign_timestamped_hex(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Signs like a Standard Webhooks sender: returns the `webhook-signature` value.
pub fn sign_standard(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .expect("whsec_ secret is base64");
    let mut mac = HmacSha256::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published test vector of the Standard Webhooks specification.
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: &str = "1614265330";
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const SW_NOW: i64 = 1614265330;

    fn standard(sig: &str, ts: &str, now: i64, body: &[u8]) -> Result<i64, SignatureError> {
        verify_standard(Some(SW_ID), Some(ts), Some(sig), Some(SW_SECRET), body, now)
    }

    #[test]
    fn standard_webhooks_published_vector_verifies() {
        assert_eq!(standard(SW_SIG, SW_TS, SW_NOW, SW_BODY), Ok(SW_NOW));
        assert_eq!(sign_standard(SW_SECRET, SW_ID, SW_NOW, SW_BODY), SW_SIG);
    }

    #[test]
    fn standard_webhooks_rejects_every_malformed_or_wrong_signature() {
        let truncated = &SW_SIG[..SW_SIG.len() - 8];
        let wrong_length = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=AAAA";
        let cases = [
            ("v1,", SignatureError::Mismatch),
            (truncated, SignatureError::Mismatch),
            (wrong_length, SignatureError::Mismatch),
            ("v1,g0hM9S", SignatureError::Mismatch),
            (
                "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                SignatureError::Malformed,
            ),
            ("", SignatureError::Malformed),
        ];
        for (sig, expected) in cases {
            assert_eq!(
                standard(sig, SW_TS, SW_NOW, SW_BODY),
                Err(expected),
                "{sig:?}"
            );
        }
        let reserialized = br#"{"test":2432232314}"#;
        assert_eq!(
            standard(SW_SIG, SW_TS, SW_NOW, reserialized),
            Err(SignatureError::Mismatch)
        );
        let other_secret = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldA==";
        assert_eq!(
            verify_standard(
                Some(SW_ID),
                Some(SW_TS),
                Some(SW_SIG),
                Some(other_secret),
                SW_BODY,
                SW_NOW
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_standard(
                None,
                Some(SW_TS),
                Some(SW_SIG),
                Some(SW_SECRET),
                SW_BODY,
                SW_NOW
            ),
            Err(SignatureError::MissingHeader)
        );
    }

    #[test]
    fn standard_webhooks_timestamp_tolerance_is_300_seconds_both_ways() {
        for (now, ok) in [
            (SW_NOW + 300, true),
            (SW_NOW - 300, true),
            (SW_NOW + 301, false),
            (SW_NOW - 301, false),
        ] {
            let result = standard(SW_SIG, SW_TS, now, SW_BODY);
            assert_eq!(result.is_ok(), ok, "now = ts {:+}", now - SW_NOW);
        }
    }

    #[test]
    fn standard_webhooks_accepts_when_any_of_several_signatures_is_valid() {
        let several = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {SW_SIG}");
        assert_eq!(standard(&several, SW_TS, SW_NOW, SW_BODY), Ok(SW_NOW));
    }

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
    const NOW: i64 = 1_800_000_000;

    #[test]
    fn stripe_scheme_verifies_and_rejects() {
        let good = sign_timestamped_hex(SECRET, NOW, BODY);
        let check = |h: &str, now| verify_timestamped_hex(Some(h), Some(SECRET), BODY, now);
        assert_eq!(check(&good, NOW), Ok(NOW));
        assert_eq!(check(&good, NOW + 301), Err(SignatureError::Stale));
        assert_eq!(check(&good, NOW - 301), Err(SignatureError::Stale));
        assert_eq!(
            check(&good.replace("v1=", "v1=00"), NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&format!("t={NOW},v1="), NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&good[..good.len() - 2], NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(check("garbage", NOW), Err(SignatureError::Malformed));
        let other = sign_timestamped_hex("whsec_other", NOW, BODY);
        assert_eq!(check(&other, NOW), Err(SignatureError::Mismatch));
        assert_eq!(
            verify_timestamped_hex(None, Some(SECRET), BODY, NOW),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            verify_timestamped_hex(Some(&good), None, BODY, NOW),
            Err(SignatureError::NotConfigured)
        );
        let body_changed = br#"{"id":"evt_1", "type":"payment_intent.succeeded"}"#;
        assert_eq!(
            verify_timestamped_hex(Some(&good), Some(SECRET), body_changed, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stripe_scheme_accepts_any_of_several_v1() {
        let good = sign_timestamped_hex(SECRET, NOW, BODY);
        let sig = good.split_once(",v1=").unwrap().1;
        let header = format!("t={NOW},v1={},v1={sig},v0=abc", "ab".repeat(32));
        assert_eq!(
            verify_timestamped_hex(Some(&header), Some(SECRET), BODY, NOW),
            Ok(NOW)
        );
    }

    #[test]
    fn persona_rotation_groups_are_checked_one_by_one() {
        let old = sign_timestamped_hex("old_secret", NOW, BODY);
        let new = sign_timestamped_hex(SECRET, NOW, BODY);
        let header = format!("{old} {new}");
        assert_eq!(
            verify_timestamped_hex(Some(&header), Some(SECRET), BODY, NOW),
            Ok(NOW)
        );
        assert_eq!(
            verify_timestamped_hex(Some(&old), Some(SECRET), BODY, NOW),
            Err(SignatureError::Mismatch)
        );
    }
}
