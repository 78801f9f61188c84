-- Tiering moves a schema tenant's months (tenant_<hex>.usage_events_pYYYYMM) like a dedicated
-- tenant's (issue 17). Month names repeat from schema to schema, so a partition is named by its
-- schema as well: the movers (sql/functions/fn_move_*.sql, fn_move_partition.sql) take
-- p_schema name DEFAULT 'public' last, the plan (fn_tier_plan) and the DBA's apply
-- (fn_tier_usage_data) return partition_schema, and a move in progress records its schema.
-- The old signatures would be overloads that calls with two arguments cannot choose between;
-- the old result types cannot be replaced in place.
ALTER TABLE tenant_pipelines.partition_moves ADD COLUMN partition_schema name NOT NULL DEFAULT 'public';
DROP FUNCTION IF EXISTS fn_tier_plan(uuid, timestamptz);
DROP FUNCTION IF EXISTS fn_tier_usage_data(uuid, timestamptz);
DROP FUNCTION IF EXISTS fn_move_partition(text, name);
DROP FUNCTION IF EXISTS fn_move_begin(text, name);
DROP FUNCTION IF EXISTS fn_move_begin_shadow(text, name);
DROP FUNCTION IF EXISTS fn_move_catch_up(text);
DROP FUNCTION IF EXISTS fn_move_finish(text);
DROP FUNCTION IF EXISTS fn_move_abandon(text);
