-- The adaptive pacer's probes (tenant_pipelines/db/pacing.py, issue 20). While writers are
-- active, every pacer commits a one-row upsert here a few dozen times a second on a
-- connection of its own, synchronous_commit on: the time such a commit takes is the time a
-- tenant's writer would wait for its own commit then. A pacer also records the writers'
-- baseline p99 it measured before it started moving, so that a second mover starting
-- while the first one runs adopts that baseline instead of measuring one the first mover
-- has already slowed. A row is its pacer's probe connection; it is deleted when the pacer
-- ends (a crashed one's row is only read while probed_at is recent).
CREATE TABLE tenant_pipelines.pace_probes (
    pid             integer PRIMARY KEY,
    probed_at       timestamptz NOT NULL,
    baseline_p99_ms double precision CHECK (baseline_p99_ms > 0),
    baseline_at     timestamptz
);
ALTER TABLE tenant_pipelines.pace_probes OWNER TO billing_owner;
REVOKE ALL ON tenant_pipelines.pace_probes FROM PUBLIC;
