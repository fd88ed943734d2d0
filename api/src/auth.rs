//! Bearer JWT verification. The platform verifies tokens; it never logs anyone in.
//!
//! The algorithm allow-list is tied to the keys: HS256 tokens are checked only against the
//! shared secret and RS256/EdDSA tokens only against public keys of their own family, so a
//! token "signed" HS256 with a public key as the secret (algorithm confusion) never verifies,
//! and `alg: none` is not an algorithm jsonwebtoken can even parse.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    ApiState,
    config::AuthConfig,
    error::ApiError,
    rate_limit::{Class, Verified},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    OpsRead,
    Feeds,
    Agent,
}

/// The verified caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub id: Uuid,
    pub roles: Vec<Role>,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Passes when the caller holds any of `roles`.
    pub fn require_any(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.iter().any(|r| self.has(*r)) {
            Ok(())
        } else {
            Err(
                ApiError::forbidden(format!("this route needs one of the roles {roles:?}"))
                    .with_details(serde_json::json!({ "required_roles": roles })),
            )
        }
    }
}

/// The claims we read; `exp`, `iss` and `aud` are checked by jsonwebtoken's validation.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
    /// Unknown role names are ignored, so issuers may add roles before we know them.
    #[serde(default)]
    pub roles: Vec<String>,
}

pub struct Verifier {
    hs256: Vec<DecodingKey>,
    rs256: Vec<DecodingKey>,
    eddsa: Vec<DecodingKey>,
    issuer: String,
    audience: String,
}

impl Verifier {
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let mut verifier = Verifier {
            hs256: config
                .jwt_secret
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
            rs256: Vec::new(),
            eddsa: Vec::new(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        };
        for block in pem_blocks(config.public_keys_pem.as_deref().unwrap_or("")) {
            if let Ok(key) = DecodingKey::from_rsa_pem(block.as_bytes()) {
                verifier.rs256.push(key);
            } else if let Ok(key) = DecodingKey::from_ed_pem(block.as_bytes()) {
                verifier.eddsa.push(key);
            } else {
                return Err("a PEM block is neither an RSA nor an Ed25519 public key".into());
            }
        }
        Ok(verifier)
    }

    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::unauthorized(format!("malformed token: {e}")))?;
        let keys = match header.alg {
            Algorithm::HS256 => &self.hs256,
            Algorithm::RS256 => &self.rs256,
            Algorithm::EdDSA => &self.eddsa,
            _ => &Vec::new(),
        };
        if keys.is_empty() {
            return Err(ApiError::unauthorized(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let mut last = ErrorKind::InvalidSignature;
        for key in keys {
            match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
                Ok(data) => return caller(data.claims),
                // Another key of the family may have signed it (key rotation).
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
                Err(e) => {
                    last = e.into_kind();
                    break;
                }
            }
        }
        Err(ApiError::unauthorized(rejection(&last)))
    }
}

fn caller(claims: serde_json::Value) -> Result<Caller, ApiError> {
    let claims: Claims = serde_json::from_value(claims)
        .map_err(|e| ApiError::unauthorized(format!("unexpected claims: {e}")))?;
    let id = claims
        .sub
        .parse()
        .map_err(|_| ApiError::unauthorized("`sub` is not a user UUID"))?;
    let roles = claims
        .roles
        .iter()
        .filter_map(|r| serde_json::from_value(serde_json::Value::String(r.clone())).ok())
        .collect();
    Ok(Caller { id, roles })
}

fn rejection(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::InvalidAudience => "token is for another audience".into(),
        ErrorKind::InvalidIssuer => "token is from another issuer".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token lacks the `{claim}` claim"),
        ErrorKind::InvalidSignature => "bad token signature".into(),
        other => format!("invalid token: {other:?}"),
    }
}

/// Splits PEM text into its `-----BEGIN …-----`/`-----END …-----` blocks.
fn pem_blocks(pem: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END ") {
            blocks.extend(current.take());
        }
    }
    blocks
}

/// Signs an HS256 token (the `api token` subcommand, dev mode, tests).
pub fn issue_token(
    config: &AuthConfig,
    secret: &str,
    sub: Uuid,
    roles: &[Role],
    ttl: Duration,
) -> String {
    let exp = chrono::Utc::now().timestamp().max(0) as u64 + ttl.as_secs();
    let claims = Claims {
        sub: sub.to_string(),
        exp,
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        roles: roles
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// `Authorization: Bearer <JWT>`, verified, and counted against the caller's rate limit.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "authenticate")]
pub struct BearerAuth(pub Caller);

async fn authenticate(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    // `rate_limit::limit_requests` verified the token and counted the caller's requests.
    if let Some(Verified(caller)) = req.data::<Verified>() {
        return Ok(caller.clone());
    }
    // It could not verify it: say why (or, outside that middleware, verify and count here).
    let state = req
        .data::<ApiState>()
        .expect("build_app attaches the state");
    let caller = state.verifier.verify(&bearer.token)?;
    state
        .limiter
        .check(Class::User, &caller.id.to_string())
        .await?;
    Ok(caller)
}
