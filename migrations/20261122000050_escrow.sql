-- The escrow family: deals' money held between sponsor and influencer, its history, the
-- double-entry ledger, referrals and payout accounts. Amounts are integer cents.

CREATE TABLE escrows (
    id                 uuid PRIMARY KEY,
    deal_id            text NOT NULL UNIQUE,
    sponsor_id         uuid NOT NULL REFERENCES users (id),
    influencer_id      uuid NOT NULL REFERENCES users (id),
    amount_cents       bigint NOT NULL CHECK (amount_cents >= 100),
    currency           text NOT NULL,
    state              text NOT NULL DEFAULT 'pending_payment',
    payment_intent_id  text UNIQUE,
    client_secret      text,
    -- Set when work goes under review (Postgres' clock): auto-approval happens after it.
    review_deadline    timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX escrows_by_state ON escrows (state, review_deadline);
CREATE INDEX escrows_by_sponsor ON escrows (sponsor_id);
CREATE INDEX escrows_by_influencer ON escrows (influencer_id);

CREATE TABLE escrow_history (
    id          bigserial PRIMARY KEY,
    escrow_id   uuid NOT NULL REFERENCES escrows (id),
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    -- `sponsor`, `influencer`, `admin`, `system` or `provider`; the user when one acted.
    actor       text NOT NULL,
    actor_id    uuid,
    reason      text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX escrow_history_by_escrow ON escrow_history (escrow_id, id);

-- One agent per user, ever (a change of agent is an admin's correction, not an API call).
CREATE TABLE referrals (
    user_id     uuid PRIMARY KEY REFERENCES users (id),
    agent_id    uuid NOT NULL REFERENCES users (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payout_accounts (
    user_id              uuid PRIMARY KEY REFERENCES users (id),
    provider_account_id  text NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- The legs of a release. A leg's id is the provider idempotency key of its transfer, so a
-- transfer repeated after a crash is the same transfer.
CREATE TABLE escrow_payouts (
    id            uuid PRIMARY KEY,
    escrow_id     uuid NOT NULL REFERENCES escrows (id),
    party         text NOT NULL CHECK (party IN ('influencer', 'agent', 'platform')),
    user_id       uuid,
    amount_cents  bigint NOT NULL CHECK (amount_cents >= 0),
    -- waiting_account → paid; a platform leg is `kept` (no transfer).
    status        text NOT NULL,
    transfer_id   text,
    paid_at       timestamptz,
    UNIQUE (escrow_id, party, user_id)
);
CREATE INDEX escrow_payouts_waiting ON escrow_payouts (user_id) WHERE status = 'waiting_account';

-- The ledger: one transaction per movement (unique per escrow and kind, so a re-run cannot
-- book twice), entries that sum to zero per transaction, and nothing ever updated or deleted.
CREATE TABLE ledger_transactions (
    id          uuid PRIMARY KEY,
    escrow_id   uuid NOT NULL REFERENCES escrows (id),
    kind        text NOT NULL CHECK (kind IN ('funding', 'release', 'refund')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (escrow_id, kind)
);

CREATE TABLE ledger_entries (
    id              bigserial PRIMARY KEY,
    transaction_id  uuid NOT NULL REFERENCES ledger_transactions (id),
    account         text NOT NULL,
    amount_cents    bigint NOT NULL
);
CREATE INDEX ledger_entries_by_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_by_account ON ledger_entries (account);

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER ledger_transactions_append_only
    BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_transactions_no_truncate
    BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- Checked at commit, once all of a transaction's entries are in.
CREATE FUNCTION ledger_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
BEGIN
    SELECT coalesce(sum(amount_cents), 0) INTO total
    FROM ledger_entries WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance (sum %)', NEW.transaction_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_entries_balanced
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_balanced();
