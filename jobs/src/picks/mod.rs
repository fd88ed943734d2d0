//! The picks family: lock at game start, settle on result, stats, leaderboards.
//!
//! - [`events`]: the writes routes and webhooks make (events, picks, results), each in the
//!   caller's [`JobTx`](crate::JobTx) so the jobs they imply commit with them.
//! - [`grading`]: the set-based SQL that grades a game's picks and moves each user's stats by
//!   the difference the grading made.
//! - [`jobs`]: the job kinds (lock at start, sweep missed locks, settle, rebuild leaderboard).
//! - [`stats`] and [`leaderboard`]: what users read.
//!
//! Every decision that depends on time uses Postgres' clock, never the worker's.

pub mod events;
pub mod grading;
pub mod jobs;
pub mod leaderboard;
pub mod stats;

use crate::{queue::Queue, settings::ConfigError};

pub use events::{EventRef, RecordError, RecordOutcome, record_result};
pub use jobs::{LockEvent, RebuildLeaderboard, SettleEvent, SweepLocks};

crate::queue_jobs! {
    /// Pick locking and settlement.
    pub enum PicksJob for Queue::Picks {
        LockEvent(LockEvent),
        SweepLocks(SweepLocks),
        SettleEvent(SettleEvent),
        RebuildLeaderboard(RebuildLeaderboard),
    }
}

/// The picks family's configuration.
#[derive(Clone, Debug)]
pub struct PicksSettings {
    /// Graded picks in the window a user needs to appear on the leaderboard.
    pub leaderboard_min_picks: u32,
}

impl Default for PicksSettings {
    fn default() -> Self {
        PicksSettings {
            leaderboard_min_picks: 10,
        }
    }
}

impl PicksSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(PicksSettings {
            leaderboard_min_picks: crate::settings::env_parse(
                "GROUNDCREW_LEADERBOARD_MIN_PICKS",
                PicksSettings::default().leaderboard_min_picks,
            )?,
        })
    }
}
