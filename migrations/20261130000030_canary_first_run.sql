-- Whether each canary attempt was its job's first run (`JobContext::first_run`): the crash
-- tests check that a run handed back at shutdown gives its attempt back but not that flag.
ALTER TABLE canary_attempts ADD COLUMN first_run boolean;
