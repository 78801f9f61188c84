-- An online mover for month partitions: copy-and-swap instead of ALTER TABLE ... SET TABLESPACE.
--
-- SET TABLESPACE copies a partition's files at full disk speed and WAL-logs every page in one
-- go; it takes no lock that live writers of other partitions wait for, yet their commits queue
-- behind that burst of I/O (docs/benchmarks/tiering.md: p99 insert latency 15x). Here a move is
-- split so that the pipelines can pace it:
--
--   fn_move_begin    a shadow copy of the partition (same columns, checks and indexes) in the
--                    target tablespace, in the work schema tenant_pipelines; a change log; and a
--                    row trigger on the partition that records the key of every row written
--                    from then on. Short transaction, lock_timeout.
--   (copy)           the caller copies the partition's blocks into the shadow in small batches,
--                    one transaction each, sleeping between them (core/tiering.py).
--   fn_move_catch_up re-copies the rows whose keys the log holds, then forgets those keys.
--   fn_move_finish   under lock: the last catch-up, DETACH the partition, ATTACH the shadow in
--                    its place, drop the old table, give the shadow the old names. Milliseconds:
--                    the data is already there.
--   fn_move_abandon  drops a move's shadow, log and trigger (a crashed or cancelled move), or,
--                    after the swap, the replaced table (parked in tenant_pipelines by the swap).
--
-- A crash at any point leaves the partition itself untouched and complete: the next run
-- abandons the leftovers and starts that partition's copy again.
--
-- The functions: sql/functions/fn_move_*.sql (fn_move_begin_shadow.sql is this migration's
-- fn_move_begin, which sql/0015 renamed and wrapped).

CREATE TABLE tenant_pipelines.partition_moves (
    partition_oid    oid PRIMARY KEY,
    partition_name   text NOT NULL,
    partition_filenode oid NOT NULL,  -- a rewrite (TRUNCATE, VACUUM FULL, CLUSTER) changes it
    shadow_name      text NOT NULL,
    log_name         text NOT NULL,
    old_name         text NOT NULL,   -- the replaced table, parked here after the swap
    target_tablespace name NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    swapped_at       timestamptz      -- set by the swap; the row goes when the old table does
);
ALTER TABLE tenant_pipelines.partition_moves OWNER TO billing_owner;
GRANT USAGE ON SCHEMA tenant_pipelines TO billing_owner;
REVOKE ALL ON tenant_pipelines.partition_moves FROM PUBLIC;
