-- Uploaded photos and videos and their renditions. The original and every rendition live in
-- object storage under `{id}/`; these rows say what is there. A media row is its owner's alone
-- until a post attaches it (`attached_at`); uploads never attached are swept after 24 h.
CREATE TABLE media (
    id             uuid PRIMARY KEY,
    owner_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('image', 'video')),
    -- The type sniffed from the bytes (it agreed with the request's Content-Type).
    content_type   text NOT NULL,
    bytes          bigint NOT NULL,
    status         text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'processing', 'ready', 'failed')),
    error_code     text CHECK (error_code IN
                       ('unsupported_type', 'too_large', 'corrupt', 'too_long', 'timeout')),
    error_message  text,
    -- Of the displayed picture (after EXIF orientation / video rotation).
    width          integer,
    height         integer,
    duration_ms    bigint,
    attached_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX media_unattached ON media (created_at) WHERE attached_at IS NULL;
CREATE INDEX media_owner ON media (owner_id, created_at DESC);

-- One row per rendition written; a re-run of the transcode overwrites the same object keys and
-- upserts these.
CREATE TABLE media_renditions (
    media_id      uuid NOT NULL REFERENCES media (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (name IN ('w320', 'w640', 'w1080', 'v360', 'v720', 'poster')),
    content_type  text NOT NULL,
    width         integer NOT NULL,
    height        integer NOT NULL,
    bytes         bigint NOT NULL,
    PRIMARY KEY (media_id, name)
);
