//! The escrow family: state machine, double-entry ledger, commission split, payouts, refunds.
//!
//! - [`machine`]: the states, who may make each move, and the release split (pure).
//! - [`store`]: the writes (create, move, payment webhooks, referrals, payout accounts) and the
//!   reads the API serves, each move with its history row, ledger transaction and jobs.
//! - [`jobs`]: PaymentIntent creation, release, refund, auto-approval and the payout sweeper.
//! - [`stripe`]: the Stripe-compatible HTTP client.
//!
//! Money is integer cents throughout. The ledger is append-only and balanced, both enforced by
//! the database (see the migration).

pub mod jobs;
pub mod machine;
pub mod store;
pub mod stripe;

use std::time::Duration;

use crate::{
    queue::Queue,
    settings::{ConfigError, env_duration, env_string},
};

pub use jobs::{AutoApprove, CreatePaymentIntent, Refund, Release, SweepPayouts};
pub use machine::{Role, State};

crate::queue_jobs! {
    /// Escrow payments, releases and refunds.
    pub enum EscrowJob for Queue::Escrow {
        CreatePaymentIntent(CreatePaymentIntent),
        Release(Release),
        Refund(Refund),
        AutoApprove(AutoApprove),
        SweepPayouts(SweepPayouts),
    }
}

/// The escrow family's configuration.
#[derive(Clone, Debug)]
pub struct EscrowSettings {
    /// Submitted work is approved automatically this long after review starts.
    pub review_window: Duration,
    pub stripe: stripe::StripeClient,
    /// Signs Stripe's webhooks (`POST /v1/webhooks/stripe` answers 400 while unset).
    pub stripe_webhook_secret: Option<String>,
}

impl EscrowSettings {
    pub const DEFAULT_REVIEW_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(EscrowSettings {
            review_window: env_duration(
                "GROUNDCREW_ESCROW_REVIEW_WINDOW",
                Self::DEFAULT_REVIEW_WINDOW,
            )?,
            stripe: stripe::StripeClient::new(
                env_string("GROUNDCREW_STRIPE_API_BASE", "https://api.stripe.com"),
                std::env::var("GROUNDCREW_STRIPE_SECRET_KEY")
                    .ok()
                    .filter(|k| !k.trim().is_empty()),
            ),
            stripe_webhook_secret: std::env::var("GROUNDCREW_STRIPE_WEBHOOK_SECRET")
                .ok()
                .filter(|k| !k.trim().is_empty()),
        })
    }
}
