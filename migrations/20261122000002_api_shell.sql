-- Profiles. `id` is the `sub` of the user's tokens: the platform verifies tokens, it does not
-- issue accounts.
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    handle        text NOT NULL UNIQUE,
    display_name  text,
    email         text,
    timezone      text NOT NULL DEFAULT 'UTC',
    locale        text,
    birthdate     date,
    verified      boolean NOT NULL DEFAULT false,
    age_verified  boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Idempotency-Key on creating POSTs. The row is inserted in the request's own transaction, so
-- an uncommitted row is the in-progress marker (a duplicate's insert waits on it) and the
-- stored response commits together with the effect it describes.
CREATE TABLE idempotency_keys (
    user_id       uuid NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    status        int,
    body          jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- Announcements operators send to users; the notify family delivers them.
CREATE TABLE ops_announcements (
    id          uuid PRIMARY KEY,
    created_by  uuid NOT NULL,
    user_ids    uuid[] NOT NULL,
    category    text NOT NULL,
    title       text NOT NULL,
    body        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}',
    request_id  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
