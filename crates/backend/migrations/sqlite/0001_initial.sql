-- The embedded (SQLite) schema. Ids are UUIDs stored as 16-byte blobs, timestamps RFC 3339 text
-- written by the application (never CURRENT_TIMESTAMP, whose format differs), JSON as text.
-- Enumerations are text with CHECK constraints so the Postgres schema can mirror them exactly.

-- Users of the built-in auth provider. In Supabase mode users live in Supabase and this table
-- stays empty, which is why nothing else has a foreign key to it except auth's own tables.
CREATE TABLE users (
    id                 BLOB PRIMARY KEY NOT NULL,
    email              TEXT NOT NULL,
    password_hash      TEXT NOT NULL,
    role               TEXT NOT NULL DEFAULT 'authenticated',
    email_confirmed_at TEXT,
    last_sign_in_at    TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);

-- A login session: what a refresh-token family belongs to and what logout revokes.
CREATE TABLE auth_sessions (
    id           BLOB PRIMARY KEY NOT NULL,
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    refreshed_at TEXT,
    not_after    TEXT NOT NULL,
    revoked_at   TEXT,
    user_agent   TEXT,
    ip           TEXT
);
CREATE INDEX auth_sessions_user_id_idx ON auth_sessions (user_id);

-- Opaque refresh tokens, stored as SHA-256 hashes. Each refresh revokes the presented token and
-- issues a child; presenting a revoked one again means it leaked, and revokes the whole session.
CREATE TABLE refresh_tokens (
    id         BLOB PRIMARY KEY NOT NULL,
    session_id BLOB NOT NULL REFERENCES auth_sessions (id) ON DELETE CASCADE,
    token_hash BLOB NOT NULL,
    revoked    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TEXT NOT NULL,
    CONSTRAINT refresh_tokens_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);

-- A deployment: one Terraform workspace of one provider module, owned by one user. `owner_id`
-- is the auth provider's user id (`sub`), deliberately without a foreign key (see users).
-- `variables` holds the caller's non-sensitive variables, `backend_variables` the non-secret
-- ones the backend fills (ports, ids); `secrets` is a sealed JSON object (agent token, TLS key,
-- sensitive variables) that only the application's encryption key opens.
CREATE TABLE deployments (
    id                BLOB PRIMARY KEY NOT NULL,
    owner_id          BLOB NOT NULL,
    name              TEXT NOT NULL,
    provider          TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN
                          ('pending', 'provisioning', 'ready', 'updating', 'destroying', 'destroyed', 'failed')),
    status_reason     TEXT,
    variables         TEXT NOT NULL DEFAULT '{}',
    backend_variables TEXT NOT NULL DEFAULT '{}',
    secrets           BLOB NOT NULL,
    tls_cert          TEXT NOT NULL,
    idempotency_key   TEXT,
    request_hash      BLOB,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    CONSTRAINT deployments_owner_idempotency_key UNIQUE (owner_id, idempotency_key)
);
CREATE INDEX deployments_owner_id_idx ON deployments (owner_id, id);

-- Machines a deployment's Terraform outputs describe, with what the health checker last saw.
CREATE TABLE machines (
    id           BLOB PRIMARY KEY NOT NULL,
    deployment_id BLOB NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    public_ip    TEXT,
    private_ip   TEXT,
    agent_port   INTEGER,
    status       TEXT NOT NULL DEFAULT 'unknown' CHECK (status IN ('unknown', 'healthy', 'unreachable')),
    last_seen_at TEXT,
    info         TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    CONSTRAINT machines_deployment_name_key UNIQUE (deployment_id, name)
);

-- Terraform runs. At most one queued or running run per deployment, enforced by the index below
-- rather than by a read-then-write check. A worker holds a running run by its lease; a run whose
-- lease lapsed belonged to a worker that died, and is marked interrupted and re-queued once
-- (`attempt` counts those re-queues).
CREATE TABLE runs (
    id                  BLOB PRIMARY KEY NOT NULL,
    deployment_id       BLOB NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    kind                TEXT NOT NULL CHECK (kind IN ('apply', 'destroy')),
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
    finished_at         TEXT
);
CREATE UNIQUE INDEX runs_one_active_per_deployment ON runs (deployment_id)
    WHERE status IN ('queued', 'running');
CREATE INDEX runs_deployment_id_idx ON runs (deployment_id, id);
CREATE INDEX runs_status_idx ON runs (status, created_at);

-- The run's log: Terraform's JSON UI messages and our own steps. `id` orders every event of a
-- deployment across its runs (it is the SSE event id); `seq` numbers them within a run.
CREATE TABLE run_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    deployment_id BLOB NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    at            TEXT NOT NULL,
    kind          TEXT NOT NULL,
    data          TEXT NOT NULL,
    CONSTRAINT run_events_run_seq_key UNIQUE (run_id, seq)
);
CREATE INDEX run_events_deployment_idx ON run_events (deployment_id, id);

-- Commands sent to a deployment's machines, and one result per machine. Both are written before
-- anything is sent; each result is updated as its machine answers, so a backend that dies mid-way
-- leaves what had finished (the next start marks the rest `interrupted`). `request` is the
-- command as accepted, defaults filled in. Ids are UUIDv7, so `ORDER BY id` is creation order.
CREATE TABLE commands (
    id                  BLOB PRIMARY KEY NOT NULL,
    deployment_id       BLOB NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    owner_id            BLOB NOT NULL,
    request             TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN
                            ('running', 'succeeded', 'failed', 'partial', 'timed_out', 'cancelled', 'interrupted')),
    cancel_requested_at TEXT,
    -- The replica running it, and until when its claim holds without renewal.
    runner              TEXT,
    lease_expires_at    TEXT,
    created_at          TEXT NOT NULL,
    finished_at         TEXT
);
CREATE INDEX commands_deployment_id_idx ON commands (deployment_id, id);
CREATE INDEX commands_status_idx ON commands (status);

-- `seq` is the machine's place in the command (the order results are shown in).
CREATE TABLE command_results (
    command_id  BLOB NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    machine     TEXT NOT NULL,
    address     TEXT,
    status      TEXT NOT NULL CHECK (status IN
                    ('pending', 'running', 'succeeded', 'failed', 'timed_out', 'unreachable', 'rejected', 'skipped', 'cancelled', 'interrupted')),
    exit_code   INTEGER,
    signal      INTEGER,
    stdout      TEXT,
    stderr      TEXT,
    truncated   BOOLEAN NOT NULL DEFAULT FALSE,
    duration_ms INTEGER,
    error       TEXT,
    started_at  TEXT,
    finished_at TEXT,
    PRIMARY KEY (command_id, machine)
);
