-- Sports picks: events, picks, per-user stats. Amounts are exact numerics (never floats):
-- stakes have 2 decimals, profits 4 (a win at -110 pays stake × 100/110, rounded half away
-- from zero to 4 decimals once, when graded; stats are exact sums of the stored profits).
--
-- user_id columns carry no foreign key: a pick is kept for its statistics even when the
-- profile behind the token is gone, and the platform verifies tokens without issuing accounts.

CREATE TABLE sports_events (
    id           uuid PRIMARY KEY,
    external_id  text NOT NULL UNIQUE,
    sport        text NOT NULL,
    home_team    text NOT NULL,
    away_team    text NOT NULL,
    starts_at    timestamptz NOT NULL,
    status       text NOT NULL DEFAULT 'scheduled'
                 CHECK (status IN ('scheduled', 'live', 'final', 'canceled')),
    home_score   int CHECK (home_score >= 0),
    away_score   int CHECK (away_score >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'final' OR (home_score IS NOT NULL AND away_score IS NOT NULL))
);

CREATE TABLE picks (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    event_id      uuid NOT NULL REFERENCES sports_events (id),
    market        text NOT NULL CHECK (market IN ('moneyline', 'spread', 'total')),
    selection     text NOT NULL CHECK (selection IN ('home', 'away', 'over', 'under')),
    line          numeric(6, 1) CHECK (line % 0.5 = 0),
    odds          int NOT NULL CHECK (odds <= -100 OR odds >= 100),
    stake_units   numeric(10, 2) NOT NULL CHECK (stake_units > 0),
    status        text NOT NULL DEFAULT 'open'
                  CHECK (status IN ('open', 'locked', 'won', 'lost', 'push', 'void')),
    profit_units  numeric(16, 4),
    locked_at     timestamptz,
    settled_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, event_id, market),
    CHECK ((market = 'total') = (selection IN ('over', 'under'))),
    CHECK ((market = 'moneyline') = (line IS NULL))
);
CREATE INDEX picks_event ON picks (event_id);
-- The sweeper's scan: only picks still waiting for their game's lock.
CREATE INDEX picks_open ON picks (event_id) WHERE status = 'open';
-- The leaderboard's window scan over graded picks.
CREATE INDEX picks_graded_at ON picks (settled_at)
    INCLUDE (user_id, stake_units, profit_units)
    WHERE status IN ('won', 'lost', 'push');

-- Each user's stats: the sum of every pick's contribution by its current status. Settlement
-- adds (new contribution − old contribution) for the picks it changes, in its transaction,
-- so a re-settlement leaves exactly what grading the corrected result first would have.
-- picks_settled counts graded non-void picks (won, lost, push); voids are counted apart.
CREATE TABLE pick_stats (
    user_id       uuid PRIMARY KEY,
    picks_settled bigint NOT NULL DEFAULT 0,
    wins          bigint NOT NULL DEFAULT 0,
    losses        bigint NOT NULL DEFAULT 0,
    pushes        bigint NOT NULL DEFAULT 0,
    voids         bigint NOT NULL DEFAULT 0,
    units_staked  numeric(20, 2) NOT NULL DEFAULT 0,
    units_profit  numeric(22, 4) NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
