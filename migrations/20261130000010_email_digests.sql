-- One weekly digest per user and week: the digest job claims (user, week) here in the
-- transaction that records the digest notification, so a re-run after a crash, or a second
-- tick, sends nobody a second digest for the same week.
CREATE TABLE email_digests (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    week_of    date NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, week_of)
);
