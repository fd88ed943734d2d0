//! The verification family: provider sessions (Stripe Identity, Persona), the webhook events
//! that settle them, the badge and `age_verified`, and expiry a year later.
//!
//! - [`session`]: the row a route creates and the job that opens the provider session.
//! - [`events`]: provider events applied in the inbox job's transaction (`webhooks::route`).
//! - [`status`]: the forward-only status order; [`age`]: 18+ in the user's time zone.
//! - [`expiry`]: the scheduled reminder and badge removal.

pub mod age;
pub mod events;
pub mod expiry;
pub mod session;
pub mod settings;
pub mod status;

use serde::{Deserialize, Serialize};

use crate::{queue::Queue, webhooks::ProcessEvent};

pub use expiry::SweepExpiry;
pub use session::{CreateSession, start};
pub use settings::VerificationSettings;

crate::queue_jobs! {
    /// Identity-verification sessions and provider events.
    pub enum VerificationJob for Queue::Verification {
        ProcessWebhook(ProcessEvent),
        CreateSession(CreateSession),
        SweepExpiry(SweepExpiry),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    StripeIdentity,
    Persona,
}

impl ProviderKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ProviderKind::StripeIdentity => "stripe_identity",
            ProviderKind::Persona => "persona",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Identity,
    Age,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Identity => "identity",
            Kind::Age => "age",
        }
    }
}
