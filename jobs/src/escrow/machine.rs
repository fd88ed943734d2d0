//! The escrow state machine, who may make each move, and the release split. Pure functions:
//! the SQL in `store` applies them under a row lock.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    PendingPayment,
    PaymentProcessing,
    Cancelled,
    Failed,
    Locked,
    WorkInProgress,
    WorkSubmitted,
    UnderReview,
    Approved,
    Rejected,
    Disputed,
    Releasing,
    Released,
    Refunding,
    Refunded,
}

impl State {
    pub const ALL: [State; 15] = [
        State::PendingPayment,
        State::PaymentProcessing,
        State::Cancelled,
        State::Failed,
        State::Locked,
        State::WorkInProgress,
        State::WorkSubmitted,
        State::UnderReview,
        State::Approved,
        State::Rejected,
        State::Disputed,
        State::Releasing,
        State::Released,
        State::Refunding,
        State::Refunded,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            State::PendingPayment => "pending_payment",
            State::PaymentProcessing => "payment_processing",
            State::Cancelled => "cancelled",
            State::Failed => "failed",
            State::Locked => "locked",
            State::WorkInProgress => "work_in_progress",
            State::WorkSubmitted => "work_submitted",
            State::UnderReview => "under_review",
            State::Approved => "approved",
            State::Rejected => "rejected",
            State::Disputed => "disputed",
            State::Releasing => "releasing",
            State::Released => "released",
            State::Refunding => "refunding",
            State::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

/// Who is asking for a move. `System` is our own jobs (review, release, refund, auto-approve);
/// `Provider` is the payment provider's webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Sponsor,
    Influencer,
    Admin,
    System,
    Provider,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Sponsor,
        Role::Influencer,
        Role::Admin,
        Role::System,
        Role::Provider,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Sponsor => "sponsor",
            Role::Influencer => "influencer",
            Role::Admin => "admin",
            Role::System => "system",
            Role::Provider => "provider",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The machine has no such edge (409 `invalid_transition`).
    #[error("{from} → {to} is not a transition of the escrow state machine", from = .from.as_str(), to = .to.as_str())]
    Invalid { from: State, to: State },
    /// The edge exists but this role may not take it (403).
    #[error("a {role} may not move an escrow from {from} to {to}", role = .role.as_str(), from = .from.as_str(), to = .to.as_str())]
    Forbidden { from: State, to: State, role: Role },
}

/// The roles that may take the edge `from → to`, or `None` when the machine (DESIGN.md §
/// escrow) has no such edge. Payment states move only by the provider; the rejected →
/// disputed edge exists so no money is stranded, so either party may take it.
pub fn allowed_roles(from: State, to: State) -> Option<&'static [Role]> {
    use State::*;
    const PROVIDER: &[Role] = &[Role::Provider];
    const INFLUENCER: &[Role] = &[Role::Influencer];
    const SPONSOR: &[Role] = &[Role::Sponsor];
    const SYSTEM: &[Role] = &[Role::System];
    const ADMIN: &[Role] = &[Role::Admin];
    Some(match (from, to) {
        (PendingPayment, PaymentProcessing | Cancelled) => PROVIDER,
        (PaymentProcessing, Locked | Failed) => PROVIDER,
        (Locked, WorkInProgress) => INFLUENCER,
        (WorkInProgress, WorkSubmitted) => INFLUENCER,
        (WorkInProgress, Disputed | Refunding) => SPONSOR,
        (WorkSubmitted, UnderReview) => SYSTEM,
        // The system approves when the review window has passed.
        (UnderReview, Approved) => &[Role::Sponsor, Role::System],
        (UnderReview, Rejected | Disputed) => SPONSOR,
        (Rejected, WorkInProgress) => INFLUENCER,
        (Rejected, Disputed) => &[Role::Sponsor, Role::Influencer],
        (Approved, Releasing) => SYSTEM,
        (Releasing, Released) => SYSTEM,
        (Refunding, Refunded) => SYSTEM,
        (Disputed, Releasing | Refunding) => ADMIN,
        _ => return None,
    })
}

/// Whether `role` may move an escrow from `from` to `to`.
pub fn check(from: State, to: State, role: Role) -> Result<(), TransitionError> {
    let roles = allowed_roles(from, to).ok_or(TransitionError::Invalid { from, to })?;
    if roles.contains(&role) {
        Ok(())
    } else {
        Err(TransitionError::Forbidden { from, to, role })
    }
}

/// Who brought each party to the platform, as far as it matters for the fee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribution<Id> {
    pub sponsor_agent: Option<Id>,
    pub influencer_agent: Option<Id>,
}

/// One leg of a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg<Id> {
    Influencer(i64),
    Agent(Id, i64),
    Platform(i64),
}

impl<Id> Leg<Id> {
    pub fn amount(&self) -> i64 {
        match *self {
            Leg::Influencer(a) | Leg::Agent(_, a) | Leg::Platform(a) => a,
        }
    }
}

/// The platform fee taken out of the total: floor(amount × 10 / 110).
pub fn fee(amount_cents: i64) -> i64 {
    amount_cents * 10 / 110
}

/// API.md's split in cents: the influencer gets amount − fee; the fee goes to one agent when
/// one agent referred either or both parties, halves (the sponsor's agent floor(fee / 2), the
/// influencer's agent the rest) with two agents, and to the platform with none. Zero-amount
/// legs are left out; the legs always sum to the amount.
pub fn split<Id: Copy + PartialEq>(amount_cents: i64, who: Attribution<Id>) -> Vec<Leg<Id>> {
    let fee = fee(amount_cents);
    let mut legs = vec![Leg::Influencer(amount_cents - fee)];
    match (who.sponsor_agent, who.influencer_agent) {
        (Some(s), Some(i)) if s != i => {
            legs.push(Leg::Agent(s, fee / 2));
            legs.push(Leg::Agent(i, fee - fee / 2));
        }
        (Some(agent), _) | (None, Some(agent)) => legs.push(Leg::Agent(agent, fee)),
        (None, None) => legs.push(Leg::Platform(fee)),
    }
    legs.retain(|leg| leg.amount() > 0);
    legs
}
