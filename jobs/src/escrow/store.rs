//! The escrow writes, each in the caller's [`JobTx`] so the jobs and notifications they imply
//! commit with them. Every move takes the escrow's row lock, checks the machine, and then
//! writes the state, a history row, and the move's own effects (ledger transaction, payout
//! legs, follow-up job) in that one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Row, postgres::PgRow};
use uuid::Uuid;

use super::{
    EscrowSettings,
    jobs::{CreatePaymentIntent, Refund, Release},
    machine::{self, Attribution, Leg, Role, State, TransitionError},
};
use crate::{
    notify::{Category, Notification, notify_many},
    outbox::JobTx,
};

#[derive(Clone, Debug, Serialize)]
pub struct Escrow {
    pub id: Uuid,
    pub deal_id: String,
    pub sponsor_id: Uuid,
    pub influencer_id: Uuid,
    pub amount_cents: i64,
    pub currency: String,
    pub state: State,
    pub payment_intent_id: Option<String>,
    pub client_secret: Option<String>,
    pub created_at: DateTime<Utc>,
}

const ESCROW_COLUMNS: &str = "id, deal_id, sponsor_id, influencer_id, amount_cents, currency, \
                              state, payment_intent_id, client_secret, created_at";

impl Escrow {
    fn from_row(row: &PgRow) -> Self {
        let state: String = row.get("state");
        Escrow {
            id: row.get("id"),
            deal_id: row.get("deal_id"),
            sponsor_id: row.get("sponsor_id"),
            influencer_id: row.get("influencer_id"),
            amount_cents: row.get("amount_cents"),
            currency: row.get("currency"),
            state: State::parse(&state).expect("escrows.state holds machine states"),
            payment_intent_id: row.get("payment_intent_id"),
            client_secret: row.get("client_secret"),
            created_at: row.get("created_at"),
        }
    }

    /// The caller's role on this escrow, if any (an admin acts as admin only where no party
    /// role applies).
    pub fn party_role(&self, user_id: Uuid) -> Option<Role> {
        if user_id == self.sponsor_id {
            Some(Role::Sponsor)
        } else if user_id == self.influencer_id {
            Some(Role::Influencer)
        } else {
            None
        }
    }
}

/// Who moved an escrow, for the history.
#[derive(Clone, Copy, Debug)]
pub struct Actor {
    pub role: Role,
    pub user_id: Option<Uuid>,
}

impl Actor {
    pub const SYSTEM: Actor = Actor {
        role: Role::System,
        user_id: None,
    };
    pub const PROVIDER: Actor = Actor {
        role: Role::Provider,
        user_id: None,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("no such escrow")]
    NotFound,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("an escrow for this deal already exists")]
    DuplicateDeal,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub struct NewEscrow<'a> {
    pub deal_id: &'a str,
    pub sponsor_id: Uuid,
    pub influencer_id: Uuid,
    pub amount_cents: i64,
    pub currency: &'a str,
}

/// Records the escrow in `pending_payment` and enqueues the creation of its PaymentIntent.
pub async fn create(tx: &mut JobTx, new: NewEscrow<'_>) -> Result<Escrow, CreateError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO escrows (id, deal_id, sponsor_id, influencer_id, amount_cents, currency)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (deal_id) DO NOTHING
         RETURNING {ESCROW_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(new.deal_id)
    .bind(new.sponsor_id)
    .bind(new.influencer_id)
    .bind(new.amount_cents)
    .bind(new.currency.to_lowercase())
    .fetch_optional(tx.conn())
    .await?
    .ok_or(CreateError::DuplicateDeal)?;
    let escrow = Escrow::from_row(&row);
    tx.enqueue(&CreatePaymentIntent::new(escrow.id)).await?;
    Ok(escrow)
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Escrow>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ESCROW_COLUMNS} FROM escrows WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(Escrow::from_row))
}

/// Takes the escrow's row lock for the rest of the transaction.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Escrow>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ESCROW_COLUMNS} FROM escrows WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(Escrow::from_row))
}

/// Moves escrow `id` to `to` if the machine has the edge and `actor` may take it.
pub async fn transition(
    tx: &mut JobTx,
    settings: &EscrowSettings,
    id: Uuid,
    to: State,
    actor: Actor,
    reason: Option<&str>,
) -> Result<Escrow, MoveError> {
    let escrow = lock(tx.conn(), id).await?.ok_or(MoveError::NotFound)?;
    machine::check(escrow.state, to, actor.role)?;
    let escrow = apply(tx, settings, escrow, to, actor, reason).await?;
    if escrow.state == State::WorkSubmitted {
        // Review starts as soon as work is in: the system's move, recorded as such.
        return Ok(apply(
            tx,
            settings,
            escrow,
            State::UnderReview,
            Actor::SYSTEM,
            None,
        )
        .await?);
    }
    Ok(escrow)
}

/// Writes a move already checked against the machine, under the row lock.
pub(crate) async fn apply(
    tx: &mut JobTx,
    settings: &EscrowSettings,
    mut escrow: Escrow,
    to: State,
    actor: Actor,
    reason: Option<&str>,
) -> Result<Escrow, sqlx::Error> {
    let review_window = (to == State::UnderReview).then_some(settings.review_window.as_secs_f64());
    sqlx::query(
        "UPDATE escrows SET state = $2, updated_at = now(),
             review_deadline = CASE WHEN $3::float8 IS NULL THEN review_deadline
                                    ELSE now() + make_interval(secs => $3::float8) END
         WHERE id = $1",
    )
    .bind(escrow.id)
    .bind(to.as_str())
    .bind(review_window)
    .execute(tx.conn())
    .await?;
    sqlx::query(
        "INSERT INTO escrow_history (escrow_id, from_state, to_state, actor, actor_id, reason)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(escrow.id)
    .bind(escrow.state.as_str())
    .bind(to.as_str())
    .bind(actor.role.as_str())
    .bind(actor.user_id)
    .bind(reason)
    .execute(tx.conn())
    .await?;
    let from = escrow.state;
    escrow.state = to;
    let account = format!("escrow:{}", escrow.id);
    match to {
        State::Locked => {
            book(
                tx.conn(),
                escrow.id,
                "funding",
                &[
                    ("provider:stripe".into(), -escrow.amount_cents),
                    (account, escrow.amount_cents),
                ],
            )
            .await?
        }
        State::Refunded => {
            book(
                tx.conn(),
                escrow.id,
                "refund",
                &[
                    (account, -escrow.amount_cents),
                    ("provider:stripe".into(), escrow.amount_cents),
                ],
            )
            .await?
        }
        State::Releasing => {
            book_release(tx.conn(), &escrow).await?;
            // From approved the release job is the caller and carries on by itself.
            if from != State::Approved {
                tx.enqueue(&Release::new(escrow.id)).await?;
            }
        }
        State::Approved => {
            tx.enqueue(&Release::new(escrow.id)).await?;
        }
        State::Refunding => {
            tx.enqueue(&Refund::new(escrow.id)).await?;
        }
        _ => {}
    }
    notify_parties(tx, &escrow, from).await?;
    Ok(escrow)
}

/// Tells both parties about a move (payments category).
async fn notify_parties(tx: &mut JobTx, escrow: &Escrow, from: State) -> Result<(), sqlx::Error> {
    let title = format!(
        "Deal {}: {}",
        escrow.deal_id,
        escrow.state.as_str().replace('_', " ")
    );
    let body = format!(
        "The escrow for deal {} moved from {} to {}.",
        escrow.deal_id,
        from.as_str(),
        escrow.state.as_str()
    );
    let data = serde_json::json!({
        "escrow_id": escrow.id,
        "from": from.as_str(),
        "to": escrow.state.as_str(),
    });
    notify_many(
        tx,
        [escrow.sponsor_id, escrow.influencer_id]
            .into_iter()
            .map(|user| {
                Notification::new(user, Category::Payments, title.clone(), body.clone())
                    .data(data.clone())
            })
            .collect(),
    )
    .await?;
    Ok(())
}

/// Books one ledger transaction; `(escrow, kind)` is unique, so a repeat fails rather than
/// booking twice, and the database checks at commit that the entries sum to zero.
async fn book(
    conn: &mut PgConnection,
    escrow_id: Uuid,
    kind: &str,
    entries: &[(String, i64)],
) -> Result<(), sqlx::Error> {
    let transaction_id = Uuid::now_v7();
    sqlx::query("INSERT INTO ledger_transactions (id, escrow_id, kind) VALUES ($1, $2, $3)")
        .bind(transaction_id)
        .bind(escrow_id)
        .bind(kind)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, account, amount_cents)
         SELECT $1, * FROM unnest($2::text[], $3::int8[])",
    )
    .bind(transaction_id)
    .bind(entries.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|(_, c)| *c).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The agents who referred each party.
async fn attribution(
    conn: &mut PgConnection,
    escrow: &Escrow,
) -> Result<Attribution<Uuid>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT (SELECT agent_id FROM referrals WHERE user_id = $1) AS sponsor_agent,
                (SELECT agent_id FROM referrals WHERE user_id = $2) AS influencer_agent",
    )
    .bind(escrow.sponsor_id)
    .bind(escrow.influencer_id)
    .fetch_one(conn)
    .await?;
    Ok(Attribution {
        sponsor_agent: row.get("sponsor_agent"),
        influencer_agent: row.get("influencer_agent"),
    })
}

/// The split: a ledger transaction out of the escrow's account and one payout row per leg.
/// Legs to people start `pending` (the release job transfers them); the platform's is `kept`.
async fn book_release(conn: &mut PgConnection, escrow: &Escrow) -> Result<(), sqlx::Error> {
    let legs = machine::split(escrow.amount_cents, attribution(conn, escrow).await?);
    let mut entries = vec![(format!("escrow:{}", escrow.id), -escrow.amount_cents)];
    let (mut ids, mut parties, mut users, mut amounts, mut statuses) =
        (vec![], vec![], vec![], vec![], vec![]);
    for leg in &legs {
        let (party, user, status, account) = match *leg {
            Leg::Influencer(_) => (
                "influencer",
                Some(escrow.influencer_id),
                "pending",
                format!("influencer:{}", escrow.influencer_id),
            ),
            Leg::Agent(agent, _) => ("agent", Some(agent), "pending", format!("agent:{agent}")),
            Leg::Platform(_) => ("platform", None, "kept", "platform:fees".to_owned()),
        };
        entries.push((account, leg.amount()));
        ids.push(Uuid::now_v7());
        parties.push(party);
        users.push(user);
        amounts.push(leg.amount());
        statuses.push(status);
    }
    book(conn, escrow.id, "release", &entries).await?;
    sqlx::query(
        "INSERT INTO escrow_payouts (id, escrow_id, party, user_id, amount_cents, status)
         SELECT id, $1, party, user_id, amount, status
         FROM unnest($2::uuid[], $3::text[], $4::uuid[], $5::int8[], $6::text[])
              AS l(id, party, user_id, amount, status)",
    )
    .bind(escrow.id)
    .bind(&ids)
    .bind(&parties)
    .bind(&users)
    .bind(&amounts)
    .bind(&statuses)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a payment webhook did.
pub async fn apply_payment_event(
    tx: &mut JobTx,
    settings: &EscrowSettings,
    event_type: &str,
    body: &serde_json::Value,
) -> Result<&'static str, MoveError> {
    // Payment states on the way to the event's outcome, in machine order: a `succeeded` that
    // overtakes its `processing` walks through payment_processing to locked, and the late
    // `processing` then finds nothing left to do.
    let path: &[State] = match event_type {
        "payment_intent.processing" => &[State::PaymentProcessing],
        "payment_intent.succeeded" => &[State::PaymentProcessing, State::Locked],
        "payment_intent.payment_failed" => &[State::PaymentProcessing, State::Failed],
        "payment_intent.canceled" => &[State::Cancelled],
        _ => return Ok("ignored"),
    };
    let object = body.pointer("/data/object");
    let intent_id = object.and_then(|o| o.get("id")).and_then(|v| v.as_str());
    // Metadata first: the webhook may beat the job that stores the PaymentIntent's id.
    let by_metadata = object
        .and_then(|o| o.pointer("/metadata/escrow_id"))
        .and_then(|v| v.as_str())
        .and_then(|s| Uuid::parse_str(s).ok());
    let id = match by_metadata {
        Some(id) => Some(id),
        None => {
            sqlx::query_scalar("SELECT id FROM escrows WHERE payment_intent_id = $1")
                .bind(intent_id)
                .fetch_optional(tx.conn())
                .await?
        }
    };
    let Some(mut escrow) = (match id {
        Some(id) => lock(tx.conn(), id).await?,
        None => None,
    }) else {
        return Ok("unknown_escrow");
    };
    if escrow.payment_intent_id.is_none()
        && let Some(intent_id) = intent_id
    {
        sqlx::query("UPDATE escrows SET payment_intent_id = $2 WHERE id = $1")
            .bind(escrow.id)
            .bind(intent_id)
            .execute(tx.conn())
            .await?;
    }
    let mut moved = false;
    for &to in path {
        if machine::check(escrow.state, to, Role::Provider).is_ok() {
            escrow = apply(tx, settings, escrow, to, Actor::PROVIDER, Some(event_type)).await?;
            moved = true;
        }
    }
    Ok(if moved { "applied" } else { "stale" })
}

#[derive(Debug, thiserror::Error)]
pub enum ReferralError {
    #[error("the user already has an agent")]
    AlreadyReferred,
    #[error("no such user")]
    UnknownUser,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Records that `agent_id` referred `user_id`; a user has one agent.
pub async fn refer(
    conn: &mut PgConnection,
    agent_id: Uuid,
    user_id: Uuid,
) -> Result<(), ReferralError> {
    let inserted = sqlx::query(
        "INSERT INTO referrals (user_id, agent_id) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(agent_id)
    .execute(conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => {
            ReferralError::UnknownUser
        }
        _ => ReferralError::Db(e),
    })?;
    if inserted.rows_affected() == 0 {
        return Err(ReferralError::AlreadyReferred);
    }
    Ok(())
}

/// Sets the user's payout account, and wakes the releases whose legs waited for it.
pub async fn set_payout_account(
    tx: &mut JobTx,
    user_id: Uuid,
    provider_account_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payout_accounts (user_id, provider_account_id) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET provider_account_id = $2, updated_at = now()",
    )
    .bind(user_id)
    .bind(provider_account_id)
    .execute(tx.conn())
    .await?;
    let waiting: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT escrow_id FROM escrow_payouts
         WHERE user_id = $1 AND status IN ('pending', 'waiting_account')",
    )
    .bind(user_id)
    .fetch_all(tx.conn())
    .await?;
    let jobs: Vec<Release> = waiting.into_iter().map(Release::new).collect();
    tx.enqueue_many(&jobs).await?;
    Ok(())
}

#[derive(Clone, Debug, Serialize)]
pub struct HistoryRow {
    pub from: String,
    pub to: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub actor_id: Option<Uuid>,
    pub reason: Option<String>,
}

pub async fn history(conn: &mut PgConnection, id: Uuid) -> Result<Vec<HistoryRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT from_state, to_state, at, actor, actor_id, reason FROM escrow_history
         WHERE escrow_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| HistoryRow {
            from: r.get("from_state"),
            to: r.get("to_state"),
            at: r.get("at"),
            actor: r.get("actor"),
            actor_id: r.get("actor_id"),
            reason: r.get("reason"),
        })
        .collect())
}

#[derive(Clone, Debug, Serialize)]
pub struct Payout {
    pub id: Uuid,
    pub party: String,
    pub user_id: Option<Uuid>,
    pub amount_cents: i64,
    pub status: String,
    pub transfer_id: Option<String>,
}

pub async fn payouts(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Payout>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, party, user_id, amount_cents, status, transfer_id FROM escrow_payouts
         WHERE escrow_id = $1 ORDER BY party, id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Payout {
            id: r.get("id"),
            party: r.get("party"),
            user_id: r.get("user_id"),
            amount_cents: r.get("amount_cents"),
            status: r.get("status"),
            transfer_id: r.get("transfer_id"),
        })
        .collect())
}

#[derive(Clone, Debug, Serialize)]
pub struct LedgerTransaction {
    pub id: Uuid,
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub entries: Vec<LedgerEntry>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LedgerEntry {
    pub account: String,
    pub amount_cents: i64,
}

pub async fn ledger(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Vec<LedgerTransaction>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT t.id, t.kind, t.created_at, e.account, e.amount_cents
         FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id
         WHERE t.escrow_id = $1 ORDER BY t.created_at, t.id, e.id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    let mut out: Vec<LedgerTransaction> = Vec::new();
    for r in &rows {
        let tid: Uuid = r.get("id");
        if out.last().map(|t| t.id) != Some(tid) {
            out.push(LedgerTransaction {
                id: tid,
                kind: r.get("kind"),
                created_at: r.get("created_at"),
                entries: Vec::new(),
            });
        }
        out.last_mut()
            .expect("pushed above")
            .entries
            .push(LedgerEntry {
                account: r.get("account"),
                amount_cents: r.get("amount_cents"),
            });
    }
    Ok(out)
}
