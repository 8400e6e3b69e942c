-- Deployments that change (issue 18): runs of kind `update` and `replace`, what each applying run
-- applies (`inputs`: its variables with secrets redacted, what changed, the machine replaced), an
-- update's Idempotency-Key, and each machine's Terraform resource address.
ALTER TABLE nim.runs DROP CONSTRAINT IF EXISTS runs_kind_check;
ALTER TABLE nim.runs ADD CONSTRAINT runs_kind_check
    CHECK (kind IN ('apply', 'update', 'replace', 'destroy'));
ALTER TABLE nim.runs
    ADD COLUMN IF NOT EXISTS inputs jsonb,
    ADD COLUMN IF NOT EXISTS idempotency_key text,
    ADD COLUMN IF NOT EXISTS request_hash bytea;
CREATE UNIQUE INDEX IF NOT EXISTS runs_deployment_idempotency_key
    ON nim.runs (deployment_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

ALTER TABLE nim.machines ADD COLUMN IF NOT EXISTS resource text;
