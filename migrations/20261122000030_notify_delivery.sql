-- The notify family: devices, preferences, per-target delivery rows, the email suppression list.

-- A push token belongs to one user at a time: registering it again (the device signed into
-- another account) moves it. Invalid tokens are disabled, not deleted, so the reason stays.
CREATE TABLE devices (
    id              uuid PRIMARY KEY,
    token           text NOT NULL UNIQUE,
    user_id         uuid NOT NULL,
    platform        text NOT NULL CHECK (platform IN ('apns', 'fcm')),
    app_id          text,
    environment     text NOT NULL DEFAULT 'production'
                    CHECK (environment IN ('production', 'sandbox')),
    enabled         boolean NOT NULL DEFAULT true,
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_user ON devices (user_id) WHERE enabled;

-- No row means the defaults: every category on but marketing, no quiet hours, weekly digest.
CREATE TABLE notification_preferences (
    user_id      uuid PRIMARY KEY,
    categories   jsonb NOT NULL DEFAULT '{}',
    quiet_start  time,
    quiet_end    time,
    email_digest text NOT NULL DEFAULT 'weekly' CHECK (email_digest IN ('weekly', 'off')),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per (notification, channel, target): a device token or an email address. A re-run
-- of delivery skips rows that reached a final status; `send_id` is the stable id every send of
-- the row carries (apns-collapse-id / apns-id, FCM collapse key and tag, the email's
-- Message-ID), so a repeat after a crash is collapsed by the provider or the mail client.
CREATE TABLE notification_deliveries (
    id              uuid PRIMARY KEY,
    notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('apns', 'fcm', 'email')),
    target          text NOT NULL,
    send_id         text NOT NULL,
    status          text NOT NULL
                    CHECK (status IN ('pending', 'sent', 'failed', 'skipped', 'deferred')),
    detail          text,
    deferred_until  timestamptz,
    attempts        int NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (notification_id, channel, target)
);

-- Addresses that bounced, complained or unsubscribed; email to them is skipped. Stored
-- lower-cased.
CREATE TABLE email_suppressions (
    email      text PRIMARY KEY,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
