-- Usage events outside the premade months (older than the first month, or beyond the last:
-- back-filled history, a clock far ahead) are kept, never refused, as the single-node pool's
-- open-ended ranges keep them: a DEFAULT partition of usage_events_mt, distributed with it and
-- secured like every partition. Citus's create_time_partitions still adds months beside it
-- (PostgreSQL checks that the DEFAULT holds no row of a new month: premake runs ahead of time).
CREATE TABLE usage_events_mt_outside PARTITION OF usage_events_mt DEFAULT;
SELECT fn_secure_partition('usage_events_mt_outside');
