-- credits 0.3.3 -> 0.3.4
-- The fast paths' planner settings move from the library into the functions'
-- SET clauses, with one more: plan_cache_mode = force_generic_plan, so each
-- kept statement is planned once per session instead of with a custom plan
-- on each of its first five executions (issue 5: a new connection's first
-- actions). The 0.3.4 library no longer sets enable_seqscan itself: install
-- it, then run this update.
-- Released upgrade scripts are never edited: a fix ships in the next one.
\echo Use "ALTER EXTENSION credits UPDATE TO '0.3.4'" to load this file. \quit

ALTER FUNCTION credits._reserve_fast(text, numeric, text, text, text, interval, jsonb)
    SET enable_seqscan = off;
ALTER FUNCTION credits._reserve_fast(text, numeric, text, text, text, interval, jsonb)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION credits._commit_fast(uuid, numeric, boolean, text)
    SET enable_seqscan = off;
ALTER FUNCTION credits._commit_fast(uuid, numeric, boolean, text)
    SET plan_cache_mode = force_generic_plan;
