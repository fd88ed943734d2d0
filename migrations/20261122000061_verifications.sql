-- Identity and age verifications. A row is created by POST /v1/me/verifications; a job creates
-- the session at the provider and stores its id and what the app needs to open it; provider
-- webhooks move `status` forward only (pending < requires_input < processing < terminal).
CREATE TABLE verifications (
    id                  uuid PRIMARY KEY,
    user_id             uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider            text NOT NULL CHECK (provider IN ('stripe_identity', 'persona')),
    kind                text NOT NULL CHECK (kind IN ('identity', 'age')),
    status              text NOT NULL DEFAULT 'pending' CHECK (status IN
                            ('pending', 'requires_input', 'processing', 'verified', 'failed', 'canceled')),
    detail              text,
    provider_session_id text,
    session_url         text,
    client_secret       text,
    -- Age checks: whether the provider-reported birth date was 18+ years ago on the day
    -- verified (the birth date itself is not kept).
    adult               boolean,
    verified_at         timestamptz,
    expires_at          timestamptz,
    reminder_sent_at    timestamptz,
    -- Set when the expiry sweep took the badge away; the row stays `verified` in history.
    expired_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX verifications_provider_session ON verifications (provider, provider_session_id);
CREATE INDEX verifications_user ON verifications (user_id, created_at DESC);
CREATE INDEX verifications_live ON verifications (expires_at)
    WHERE status = 'verified' AND expired_at IS NULL;
