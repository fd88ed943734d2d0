-- Every provider's webhooks, stored once per (provider, event id) with the raw body, then
-- processed by a job. processed_at is set in the transaction that applies the event.
CREATE TABLE webhook_inbox (
    id           uuid PRIMARY KEY,
    provider     text NOT NULL,
    event_id     text NOT NULL,
    event_type   text NOT NULL,
    body         text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    outcome      text,
    UNIQUE (provider, event_id)
);
CREATE INDEX webhook_inbox_unprocessed ON webhook_inbox (received_at) WHERE processed_at IS NULL;
