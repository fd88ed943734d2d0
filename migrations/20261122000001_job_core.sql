-- The transactional outbox: jobs committed with the writes that imply them, until pushed to Redis.
CREATE TABLE job_outbox (
    id           uuid PRIMARY KEY,
    queue        text NOT NULL,
    kind         text NOT NULL,
    args         jsonb NOT NULL,
    max_attempts int NOT NULL,
    run_at       timestamptz,
    meta         jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_outbox_created_at ON job_outbox (created_at);

-- One row per schedule tick: the primary key makes each tick enqueue once across replicas.
CREATE TABLE schedule_runs (
    name       text NOT NULL,
    tick       timestamptz NOT NULL,
    job_id     uuid NOT NULL,
    manual     boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, tick)
);

-- What maintenance.canary jobs did: every attempt, and one effect row per job.
CREATE TABLE canary_attempts (
    job_id     uuid NOT NULL,
    attempt    int NOT NULL,
    worker_id  text NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX canary_attempts_job ON canary_attempts (job_id);

CREATE TABLE canary_effects (
    job_id     uuid PRIMARY KEY,
    worker_id  text NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
