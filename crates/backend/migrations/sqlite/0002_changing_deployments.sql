-- Deployments that change (issue 18): runs of kind `update` and `replace`, what each applying run
-- applies (`inputs`: its variables with secrets redacted, what changed, the machine replaced), an
-- update's Idempotency-Key, and each machine's Terraform resource address.
--
-- SQLite cannot change a CHECK constraint in place: the runs table is rebuilt the way SQLite's
-- documentation gives (ALTER TABLE, "making other kinds of table schema changes"). The store runs
-- migrations on a connection with foreign keys off (PRAGMA foreign_keys has no effect inside the
-- migration's transaction), so dropping the old table does not cascade into run_events, and
-- checks them with PRAGMA foreign_key_check afterwards.
CREATE TABLE runs_new (
    id                  BLOB PRIMARY KEY NOT NULL,
    deployment_id       BLOB NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    kind                TEXT NOT NULL CHECK (kind IN ('apply', 'update', 'replace', 'destroy')),
    status              TEXT NOT NULL CHECK (status IN
                            ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    attempt             INTEGER NOT NULL DEFAULT 0,
    error               TEXT,
    progress_done       INTEGER NOT NULL DEFAULT 0,
    progress_total      INTEGER NOT NULL DEFAULT 0,
    lease_owner         TEXT,
    lease_expires_at    TEXT,
    cancel_requested_at TEXT,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    finished_at         TEXT,
    inputs              TEXT,
    idempotency_key     TEXT,
    request_hash        BLOB
);
INSERT INTO runs_new (id, deployment_id, kind, status, attempt, error, progress_done,
                      progress_total, lease_owner, lease_expires_at, cancel_requested_at,
                      created_at, started_at, finished_at)
    SELECT id, deployment_id, kind, status, attempt, error, progress_done, progress_total,
           lease_owner, lease_expires_at, cancel_requested_at, created_at, started_at, finished_at
    FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE UNIQUE INDEX runs_one_active_per_deployment ON runs (deployment_id)
    WHERE status IN ('queued', 'running');
CREATE INDEX runs_deployment_id_idx ON runs (deployment_id, id);
CREATE INDEX runs_status_idx ON runs (status, created_at);
CREATE UNIQUE INDEX runs_deployment_idempotency_key ON runs (deployment_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE machines ADD COLUMN resource TEXT;
