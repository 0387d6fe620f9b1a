-- credits 0.2.0 -> 0.3.0
-- A faster reserve/commit hot path (issue 5).
-- Released upgrade scripts are never edited: a fix ships in the next one.
\echo Use "ALTER EXTENSION credits UPDATE TO '0.3.0'" to load this file. \quit
