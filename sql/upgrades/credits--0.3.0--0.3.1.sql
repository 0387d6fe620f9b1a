-- credits 0.3.0 -> 0.3.1
-- No SQL object changes. The library's reserve and commit fast paths now
-- plan their statements with sequential scans disabled, so that a plan a
-- session keeps never scans the reservation or ledger tables when they were
-- analyzed while empty (issue 5); install the new library, then run this
-- update so that the installed version says which library it expects.
-- Released upgrade scripts are never edited: a fix ships in the next one.
\echo Use "ALTER EXTENSION credits UPDATE TO '0.3.1'" to load this file. \quit
