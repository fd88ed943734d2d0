-- The feed family's truth: the social graph and posts. Redis home feeds are a cache of this
-- and are rebuilt from it whenever they are missing.

CREATE TABLE follows (
    follower_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    followee_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower_id, followee_id),
    CHECK (follower_id <> followee_id)
);
-- Fan-out pages over a followee's followers by keyset on this index; follower counts use it too.
CREATE INDEX follows_by_followee ON follows (followee_id, follower_id);

CREATE TABLE blocks (
    blocker_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    blocked_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker_id, blocked_id),
    CHECK (blocker_id <> blocked_id)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked_id, blocker_id);

CREATE TABLE posts (
    id          uuid PRIMARY KEY,
    author_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    text        text NOT NULL CHECK (char_length(text) BETWEEN 1 AND 2000),
    -- Owned by the media family's `media` table; ownership is checked when the post is made.
    media_ids   uuid[] NOT NULL DEFAULT '{}' CHECK (cardinality(media_ids) <= 10),
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    -- How the post reaches followers, decided once by its fan-out job: 'push' (written into
    -- their Redis feeds) or 'merge' (author above the fan-out threshold: merged in at read
    -- time). NULL until the job has run.
    delivery    text CHECK (delivery IN ('push', 'merge'))
);
-- An author's recent posts: backfill on follow, rebuilds, the author's own listing.
CREATE INDEX posts_by_author ON posts (author_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
-- Read-time merge: only the posts of authors above the threshold, so it stays small.
CREATE INDEX posts_merged_by_author ON posts (author_id, created_at DESC, id DESC)
    WHERE delivery = 'merge' AND deleted_at IS NULL;
