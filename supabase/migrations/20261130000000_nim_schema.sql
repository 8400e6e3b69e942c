-- nim-backend's Postgres schema, for a Supabase project's database or any Postgres 14+.
--
-- The backend applies this file itself at start (sqlx migrations, under an advisory lock so
-- replicas starting together apply it once); `supabase db push` may apply it too. Every statement
-- is idempotent, so both orders work.
--
-- Tables live in their own schema, `nim`. Row-level security is on for every table. On a Supabase
-- database (where the `authenticated` role and `auth.uid()` exist) the policies at the end let a
-- signed-in user of the frontend READ their own deployments, machines, runs and commands with
-- supabase-js; nobody but the backend (the tables' owner) can write, and no role but the owner can
-- read a secret: deployments' sealed `secrets`, `tls_cert` and backend-filled columns are not
-- granted, and the auth tables of the built-in provider are not granted at all.
--
-- Keep column names, types and constraint names in step with migrations/sqlite in the backend:
-- the store runs the same SQL against both.

CREATE SCHEMA IF NOT EXISTS nim;

CREATE TABLE IF NOT EXISTS nim.users (
    id                 uuid PRIMARY KEY,
    email              text NOT NULL,
    password_hash      text NOT NULL,
    role               text NOT NULL DEFAULT 'authenticated',
    email_confirmed_at timestamptz,
    last_sign_in_at    timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE TABLE IF NOT EXISTS nim.auth_sessions (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES nim.users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL,
    refreshed_at timestamptz,
    not_after    timestamptz NOT NULL,
    revoked_at   timestamptz,
    user_agent   text,
    ip           text
);
CREATE INDEX IF NOT EXISTS auth_sessions_user_id_idx ON nim.auth_sessions (user_id);

CREATE TABLE IF NOT EXISTS nim.refresh_tokens (
    id         uuid PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES nim.auth_sessions (id) ON DELETE CASCADE,
    token_hash bytea NOT NULL,
    revoked    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    CONSTRAINT refresh_tokens_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX IF NOT EXISTS refresh_tokens_session_id_idx ON nim.refresh_tokens (session_id);

CREATE TABLE IF NOT EXISTS nim.deployments (
    id                uuid PRIMARY KEY,
    owner_id          uuid NOT NULL,
    name              text NOT NULL,
    provider          text NOT NULL,
    status            text NOT NULL CHECK (status IN
                          ('pending', 'provisioning', 'ready', 'updating', 'destroying', 'destroyed', 'failed')),
    status_reason     text,
    variables         jsonb NOT NULL DEFAULT '{}',
    backend_variables jsonb NOT NULL DEFAULT '{}',
    secrets           bytea NOT NULL,
    tls_cert          text NOT NULL,
    idempotency_key   text,
    request_hash      bytea,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CONSTRAINT deployments_owner_idempotency_key UNIQUE (owner_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS deployments_owner_id_idx ON nim.deployments (owner_id, id);

CREATE TABLE IF NOT EXISTS nim.machines (
    id            uuid PRIMARY KEY,
    deployment_id uuid NOT NULL REFERENCES nim.deployments (id) ON DELETE CASCADE,
    name          text NOT NULL,
    public_ip     text,
    private_ip    text,
    agent_port    bigint,
    status        text NOT NULL DEFAULT 'unknown' CHECK (status IN ('unknown', 'healthy', 'unreachable')),
    last_seen_at  timestamptz,
    info          jsonb,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT machines_deployment_name_key UNIQUE (deployment_id, name)
);

CREATE TABLE IF NOT EXISTS nim.runs (
    id                  uuid PRIMARY KEY,
    deployment_id       uuid NOT NULL REFERENCES nim.deployments (id) ON DELETE CASCADE,
    kind                text NOT NULL CHECK (kind IN ('apply', 'destroy')),
    status              text NOT NULL CHECK (status IN
                            ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    attempt             bigint NOT NULL DEFAULT 0,
    error               text,
    progress_done       bigint NOT NULL DEFAULT 0,
    progress_total      bigint NOT NULL DEFAULT 0,
    lease_owner         text,
    lease_expires_at    timestamptz,
    cancel_requested_at timestamptz,
    created_at          timestamptz NOT NULL,
    started_at          timestamptz,
    finished_at         timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_one_active_per_deployment ON nim.runs (deployment_id)
    WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS runs_deployment_id_idx ON nim.runs (deployment_id, id);
CREATE INDEX IF NOT EXISTS runs_status_idx ON nim.runs (status, created_at);

CREATE TABLE IF NOT EXISTS nim.run_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        uuid NOT NULL REFERENCES nim.runs (id) ON DELETE CASCADE,
    deployment_id uuid NOT NULL REFERENCES nim.deployments (id) ON DELETE CASCADE,
    seq           bigint NOT NULL,
    at            timestamptz NOT NULL,
    kind          text NOT NULL,
    data          jsonb NOT NULL,
    CONSTRAINT run_events_run_seq_key UNIQUE (run_id, seq)
);
CREATE INDEX IF NOT EXISTS run_events_deployment_idx ON nim.run_events (deployment_id, id);

CREATE TABLE IF NOT EXISTS nim.commands (
    id                  uuid PRIMARY KEY,
    deployment_id       uuid NOT NULL REFERENCES nim.deployments (id) ON DELETE CASCADE,
    owner_id            uuid NOT NULL,
    request             jsonb NOT NULL,
    status              text NOT NULL CHECK (status IN
                            ('running', 'succeeded', 'failed', 'partial', 'timed_out', 'cancelled', 'interrupted')),
    cancel_requested_at timestamptz,
    runner              text,
    lease_expires_at    timestamptz,
    created_at          timestamptz NOT NULL,
    finished_at         timestamptz
);
CREATE INDEX IF NOT EXISTS commands_deployment_id_idx ON nim.commands (deployment_id, id);
CREATE INDEX IF NOT EXISTS commands_status_idx ON nim.commands (status);

CREATE TABLE IF NOT EXISTS nim.command_results (
    command_id  uuid NOT NULL REFERENCES nim.commands (id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    machine     text NOT NULL,
    address     text,
    status      text NOT NULL CHECK (status IN
                    ('pending', 'running', 'succeeded', 'failed', 'timed_out', 'unreachable', 'rejected', 'skipped', 'cancelled', 'interrupted')),
    exit_code   bigint,
    signal      bigint,
    stdout      text,
    stderr      text,
    truncated   boolean NOT NULL DEFAULT false,
    duration_ms bigint,
    error       text,
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (command_id, machine)
);

-- Row-level security everywhere: with no policy, a role other than the owner sees nothing.
ALTER TABLE nim.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE nim.auth_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE nim.refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE nim.deployments ENABLE ROW LEVEL SECURITY;
ALTER TABLE nim.machines ENABLE ROW LEVEL SECURITY;
ALTER TABLE nim.runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE nim.run_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE nim.commands ENABLE ROW LEVEL SECURITY;
ALTER TABLE nim.command_results ENABLE ROW LEVEL SECURITY;

-- Read access for the frontend's signed-in users, on Supabase databases only.
DO $policies$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated')
        OR to_regprocedure('auth.uid()') IS NULL THEN
        RETURN;
    END IF;

    GRANT USAGE ON SCHEMA nim TO authenticated;
    REVOKE ALL ON ALL TABLES IN SCHEMA nim FROM anon, authenticated;
    -- Deployments: everything but the sealed secrets, the pinned certificate, the backend's own
    -- variables and idempotency bookkeeping.
    GRANT SELECT (id, owner_id, name, provider, status, status_reason, variables, created_at, updated_at)
        ON nim.deployments TO authenticated;
    GRANT SELECT ON nim.machines, nim.runs, nim.run_events, nim.commands, nim.command_results
        TO authenticated;

    DROP POLICY IF EXISTS deployments_read_own ON nim.deployments;
    CREATE POLICY deployments_read_own ON nim.deployments
        FOR SELECT TO authenticated USING (owner_id = auth.uid());
    DROP POLICY IF EXISTS commands_read_own ON nim.commands;
    CREATE POLICY commands_read_own ON nim.commands
        FOR SELECT TO authenticated USING (owner_id = auth.uid());
    DROP POLICY IF EXISTS machines_read_own ON nim.machines;
    CREATE POLICY machines_read_own ON nim.machines FOR SELECT TO authenticated USING (
        EXISTS (SELECT 1 FROM nim.deployments d WHERE d.id = deployment_id AND d.owner_id = auth.uid()));
    DROP POLICY IF EXISTS runs_read_own ON nim.runs;
    CREATE POLICY runs_read_own ON nim.runs FOR SELECT TO authenticated USING (
        EXISTS (SELECT 1 FROM nim.deployments d WHERE d.id = deployment_id AND d.owner_id = auth.uid()));
    DROP POLICY IF EXISTS run_events_read_own ON nim.run_events;
    CREATE POLICY run_events_read_own ON nim.run_events FOR SELECT TO authenticated USING (
        EXISTS (SELECT 1 FROM nim.deployments d WHERE d.id = deployment_id AND d.owner_id = auth.uid()));
    DROP POLICY IF EXISTS command_results_read_own ON nim.command_results;
    CREATE POLICY command_results_read_own ON nim.command_results FOR SELECT TO authenticated USING (
        EXISTS (SELECT 1 FROM nim.commands c WHERE c.id = command_id AND c.owner_id = auth.uid()));
END
$policies$;
