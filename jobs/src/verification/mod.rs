//! The verification family: provider sessions, the webhook inbox, badges and expiry.

use crate::{queue::Queue, webhooks::ProcessEvent};

crate::queue_jobs! {
    /// Identity-verification sessions and provider events.
    pub enum VerificationJob for Queue::Verification {
        ProcessWebhook(ProcessEvent),
    }
}
