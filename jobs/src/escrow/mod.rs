//! The escrow family: state machine, double-entry ledger, commission split, payouts, refunds.

use crate::queue::Queue;

crate::queue_jobs! {
    /// Escrow payments, releases and refunds.
    pub enum EscrowJob for Queue::Escrow {}
}
