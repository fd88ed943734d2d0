//! Escrow: deal money held between a sponsor and an influencer, its moves, its ledger, and the
//! referrals and payout accounts its releases pay to. The machine, the ledger and the split
//! live in `groundcrew_jobs::escrow`; these routes decide who the caller is on the escrow and
//! map the job side's errors once, below.
//!
//! An escrow is visible to its two parties and to admins only. Anyone else gets 404
//! `escrow_not_found`, as for an id that does not exist, so ids cannot be probed.

use chrono::{DateTime, Utc};
use groundcrew_jobs::escrow::{
    State,
    machine::{self, TransitionError},
    store::{self, Actor, CreateError, Escrow, MoveError, NewEscrow, ReferralError},
};
use poem::{http::StatusCode, web::Data};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Header, Path},
    payload::Json,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    ApiState, Tag,
    auth::{BearerAuth, Caller, Role},
    error::{ApiError, IntoApiError},
    idempotency::{self, Begun},
    request_id::RequestId,
    route_error,
};

pub struct EscrowApi;

/// A deal's money, paid by the caller (the sponsor) to the influencer on approval.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct EscrowInput {
    /// The marketplace's deal id; one escrow per deal.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub deal_id: String,
    pub influencer_id: Uuid,
    /// In the currency's minor unit; at least 100.
    #[oai(validator(minimum(value = "100"), maximum(value = "100000000000")))]
    pub amount_cents: i64,
    /// ISO 4217 code, e.g. `usd`.
    #[oai(validator(pattern = "^[A-Za-z]{3}$"))]
    pub currency: String,
}

#[derive(Debug, Object)]
pub struct EscrowView {
    pub id: Uuid,
    pub deal_id: String,
    pub sponsor_id: Uuid,
    pub influencer_id: Uuid,
    pub amount_cents: i64,
    pub currency: String,
    /// A state of the escrow machine, e.g. `pending_payment`, `locked`, `released`.
    pub state: String,
    pub payment: PaymentView,
    pub history: Vec<HistoryItem>,
    pub payouts: Vec<PayoutItem>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct PaymentView {
    pub payment_intent_id: Option<String>,
    /// Shown to the sponsor only: it lets its holder confirm the payment.
    pub client_secret: Option<String>,
}

#[derive(Debug, Object)]
pub struct HistoryItem {
    pub from: String,
    pub to: String,
    pub at: DateTime<Utc>,
    /// `sponsor`, `influencer`, `admin`, `system` or `provider`.
    pub actor: String,
    pub actor_id: Option<Uuid>,
    pub reason: Option<String>,
}

#[derive(Debug, Object)]
pub struct PayoutItem {
    /// `influencer`, `agent` or `platform`.
    pub party: String,
    pub user_id: Option<Uuid>,
    pub amount_cents: i64,
    pub status: String,
    pub transfer_id: Option<String>,
}

/// A move the caller asks for.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct TransitionInput {
    /// The target state, e.g. `work_in_progress`, `approved`, `disputed`.
    pub to: String,
    #[oai(validator(max_length = 2000))]
    pub reason: Option<String>,
}

#[derive(Debug, Object)]
pub struct Ledger {
    pub transactions: Vec<LedgerTransaction>,
}

#[derive(Debug, Object)]
pub struct LedgerTransaction {
    pub id: Uuid,
    pub kind: String,
    pub created_at: DateTime<Utc>,
    /// Signed amounts that sum to 0.
    pub entries: Vec<LedgerEntry>,
}

#[derive(Debug, Object)]
pub struct LedgerEntry {
    /// `provider:stripe`, `escrow:{id}`, `influencer:{user_id}`, `agent:{user_id}` or
    /// `platform:fees`.
    pub account: String,
    pub amount_cents: i64,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct ReferralInput {
    pub agent_id: Uuid,
    pub user_id: Uuid,
}

#[derive(Debug, Object)]
pub struct Referral {
    pub agent_id: Uuid,
    pub user_id: Uuid,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct PayoutAccountInput {
    /// The payment provider's connected-account id, e.g. `acct_…`.
    #[oai(validator(min_length = 1, max_length = 255))]
    pub provider_account_id: String,
}

#[derive(ApiResponse)]
enum EscrowCreated {
    /// The escrow waits for the sponsor's payment (`payment.client_secret` once created).
    #[oai(status = 201)]
    Created(Json<EscrowView>),
}

#[derive(ApiResponse)]
enum ReferralCreated {
    /// The agent now earns a share of the user's deals.
    #[oai(status = 201)]
    Created(Json<Referral>),
}

#[derive(ApiResponse)]
enum PayoutAccountSaved {
    /// Saved; payouts that waited for it are retried.
    #[oai(status = 204)]
    NoContent,
}

route_error!(
    /// Failures of `POST /v1/escrows`.
    CreateEscrowError: 400, 401, 409, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of the escrow reads.
    GetEscrowError: 401, 404, 422, 429, 503
);
route_error!(
    /// Failures of `POST /v1/escrows/{id}/transitions`.
    MoveEscrowError: 400, 401, 403, 404, 409, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `POST /v1/referrals`.
    CreateReferralError: 400, 401, 403, 404, 409, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `PUT /v1/me/payout-account`.
    PayoutAccountError: 400, 401, 404, 413, 415, 422, 429, 503
);

#[OpenApi(tag = "Tag::Escrow")]
impl EscrowApi {
    /// Open an escrow for a deal
    ///
    /// The caller is the sponsor; both parties need a profile. 409 `duplicate_deal` when the
    /// deal has an escrow. Send an `Idempotency-Key` so a retried request opens one escrow.
    #[oai(path = "/v1/escrows", method = "post", operation_id = "create_escrow")]
    async fn create_escrow(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        /// Replays the first response for a repeated key with the same body.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: Json<EscrowInput>,
    ) -> Result<EscrowCreated, CreateEscrowError> {
        let sponsor = auth.0.id;
        let input = body.0;
        if input.influencer_id == sponsor {
            return Err(ApiError::invalid_field(
                "influencer_id",
                "the influencer cannot be the sponsor",
            )
            .into());
        }
        let mut claim = match idempotency::begin(
            &state,
            &request_id,
            sponsor,
            idempotency_key.0,
            "create_escrow",
            &input,
        )
        .await?
        {
            Begun::Replay(first) => return Ok(EscrowCreated::Created(Json(first))),
            Begun::Fresh(claim) => claim,
        };
        let escrow = store::create(
            claim.tx(),
            NewEscrow {
                deal_id: &input.deal_id,
                sponsor_id: sponsor,
                influencer_id: input.influencer_id,
                amount_cents: input.amount_cents,
                currency: &input.currency,
            },
        )
        .await?;
        let view = escrow_view(claim.tx().conn(), escrow, &auth.0).await?;
        claim.commit(StatusCode::CREATED, &view).await?;
        Ok(EscrowCreated::Created(Json(view)))
    }

    /// An escrow, its history and payouts
    #[oai(path = "/v1/escrows/:id", method = "get", operation_id = "get_escrow")]
    async fn get_escrow(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> Result<Json<EscrowView>, GetEscrowError> {
        let mut conn = state.services.db.acquire().await?;
        let escrow = visible(&mut conn, &auth.0, id.0).await?;
        Ok(Json(escrow_view(&mut conn, escrow, &auth.0).await?))
    }

    /// Move an escrow
    ///
    /// The caller acts as the party they are on the escrow (an admin who is not a party acts as
    /// admin). 409 `invalid_transition` when the machine has no such move from the current
    /// state; 403 when it has, but not for the caller's role. Payment states move only by the
    /// payment provider's webhook.
    #[oai(
        path = "/v1/escrows/:id/transitions",
        method = "post",
        operation_id = "transition_escrow"
    )]
    async fn transition(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        id: Path<Uuid>,
        body: Json<TransitionInput>,
    ) -> Result<Json<EscrowView>, MoveEscrowError> {
        let caller = &auth.0;
        let input = body.0;
        let to = State::parse(&input.to).ok_or_else(|| {
            ApiError::invalid_field("to", format!("{:?} is not an escrow state", input.to))
        })?;
        let mut tx = state
            .services
            .begin()
            .await?
            .with_request_id(Some(request_id.0));
        let escrow = visible(tx.conn(), caller, id.0).await?;
        let role = escrow.party_role(caller.id).unwrap_or(machine::Role::Admin);
        let actor = Actor {
            role,
            user_id: Some(caller.id),
        };
        let moved = store::transition(
            &mut tx,
            &state.services.escrow,
            id.0,
            to,
            actor,
            input.reason.as_deref(),
        )
        .await?;
        let view = escrow_view(tx.conn(), moved, caller).await?;
        tx.commit().await?;
        Ok(Json(view))
    }

    /// An escrow's ledger transactions
    #[oai(
        path = "/v1/escrows/:id/ledger",
        method = "get",
        operation_id = "get_escrow_ledger"
    )]
    async fn ledger(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> Result<Json<Ledger>, GetEscrowError> {
        let mut conn = state.services.db.acquire().await?;
        visible(&mut conn, &auth.0, id.0).await?;
        let transactions = store::ledger(&mut conn, id.0)
            .await?
            .into_iter()
            .map(|t| LedgerTransaction {
                id: t.id,
                kind: t.kind,
                created_at: t.created_at,
                entries: t
                    .entries
                    .into_iter()
                    .map(|e| LedgerEntry {
                        account: e.account,
                        amount_cents: e.amount_cents,
                    })
                    .collect(),
            })
            .collect();
        Ok(Json(Ledger { transactions }))
    }

    /// Record that an agent referred a user
    ///
    /// An `agent` refers for themself (`agent_id` = the caller); an `admin` for anyone. A user
    /// has one agent for good: 409 `already_referred` otherwise.
    #[oai(
        path = "/v1/referrals",
        method = "post",
        operation_id = "create_referral"
    )]
    async fn create_referral(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        /// Replays the first response for a repeated key with the same body.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: Json<ReferralInput>,
    ) -> Result<ReferralCreated, CreateReferralError> {
        let caller = &auth.0;
        let input = body.0;
        let for_themself = caller.has(Role::Agent) && input.agent_id == caller.id;
        if !for_themself && !caller.has(Role::Admin) {
            return Err(ApiError::forbidden(
                "an agent records their own referrals; an admin records anyone's",
            )
            .into());
        }
        if input.agent_id == input.user_id {
            return Err(
                ApiError::invalid_field("user_id", "an agent cannot refer themself").into(),
            );
        }
        let mut claim = match idempotency::begin(
            &state,
            &request_id,
            caller.id,
            idempotency_key.0,
            "create_referral",
            &input,
        )
        .await?
        {
            Begun::Replay(first) => return Ok(ReferralCreated::Created(Json(first))),
            Begun::Fresh(claim) => claim,
        };
        store::refer(claim.tx().conn(), input.agent_id, input.user_id).await?;
        let referral = Referral {
            agent_id: input.agent_id,
            user_id: input.user_id,
        };
        claim.commit(StatusCode::CREATED, &referral).await?;
        Ok(ReferralCreated::Created(Json(referral)))
    }

    /// Set the caller's payout account
    ///
    /// Where released money is sent. Needs a profile (404 `profile_not_found` before
    /// `PUT /v1/me`).
    #[oai(
        path = "/v1/me/payout-account",
        method = "put",
        operation_id = "put_payout_account"
    )]
    async fn put_payout_account(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        body: Json<PayoutAccountInput>,
    ) -> Result<PayoutAccountSaved, PayoutAccountError> {
        let mut tx = state
            .services
            .begin()
            .await?
            .with_request_id(Some(request_id.0));
        store::set_payout_account(&mut tx, auth.0.id, &body.0.provider_account_id)
            .await
            .map_err(|e| {
                if is_missing_user(&e) {
                    ApiError::not_found("profile_not_found", "create it with PUT /v1/me")
                } else {
                    e.into()
                }
            })?;
        tx.commit().await?;
        Ok(PayoutAccountSaved::NoContent)
    }
}

/// The escrow, if the caller may see it: a party or an admin. Others get the same 404 as for a
/// missing id.
async fn visible(conn: &mut PgConnection, caller: &Caller, id: Uuid) -> Result<Escrow, ApiError> {
    store::get(conn, id)
        .await?
        .filter(|e| e.party_role(caller.id).is_some() || caller.has(Role::Admin))
        .ok_or_else(escrow_not_found)
}

async fn escrow_view(
    conn: &mut PgConnection,
    escrow: Escrow,
    caller: &Caller,
) -> Result<EscrowView, sqlx::Error> {
    let history = store::history(conn, escrow.id).await?;
    let payouts = store::payouts(conn, escrow.id).await?;
    let is_sponsor = caller.id == escrow.sponsor_id;
    Ok(EscrowView {
        id: escrow.id,
        deal_id: escrow.deal_id,
        sponsor_id: escrow.sponsor_id,
        influencer_id: escrow.influencer_id,
        amount_cents: escrow.amount_cents,
        currency: escrow.currency,
        state: escrow.state.as_str().into(),
        payment: PaymentView {
            payment_intent_id: escrow.payment_intent_id,
            client_secret: escrow.client_secret.filter(|_| is_sponsor),
        },
        history: history
            .into_iter()
            .map(|h| HistoryItem {
                from: h.from,
                to: h.to,
                at: h.at,
                actor: h.actor,
                actor_id: h.actor_id,
                reason: h.reason,
            })
            .collect(),
        payouts: payouts
            .into_iter()
            .map(|p| PayoutItem {
                party: p.party,
                user_id: p.user_id,
                amount_cents: p.amount_cents,
                status: p.status,
                transfer_id: p.transfer_id,
            })
            .collect(),
        created_at: escrow.created_at,
    })
}

// The family's one mapping from the job side's errors to the API's: `?` in any route above
// goes through these.

fn escrow_not_found() -> ApiError {
    ApiError::not_found(
        "escrow_not_found",
        "no escrow with this id is visible to you",
    )
}

/// A foreign-key violation on `users`: the named user has no profile yet.
fn is_missing_user(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_foreign_key_violation())
}

impl IntoApiError for CreateError {
    fn into_api_error(self) -> ApiError {
        match self {
            CreateError::DuplicateDeal => {
                ApiError::conflict("duplicate_deal", "an escrow for this deal_id exists")
            }
            CreateError::Db(e) if is_missing_user(&e) => ApiError::invalid_field(
                "influencer_id",
                "the sponsor (the caller) and the influencer both need a profile",
            ),
            CreateError::Db(e) => e.into(),
        }
    }
}

impl IntoApiError for MoveError {
    fn into_api_error(self) -> ApiError {
        match self {
            MoveError::NotFound => escrow_not_found(),
            MoveError::Transition(e @ TransitionError::Invalid { .. }) => {
                ApiError::conflict("invalid_transition", e.to_string())
            }
            MoveError::Transition(e @ TransitionError::Forbidden { .. }) => {
                ApiError::forbidden(e.to_string())
            }
            MoveError::Db(e) => e.into(),
        }
    }
}

impl IntoApiError for ReferralError {
    fn into_api_error(self) -> ApiError {
        match self {
            ReferralError::AlreadyReferred => {
                ApiError::conflict("already_referred", "the user already has an agent")
            }
            ReferralError::UnknownUser => ApiError::not_found(
                "user_not_found",
                "the agent and the user both need a profile",
            ),
            ReferralError::Db(e) => e.into(),
        }
    }
}
