-- credits 0.3.2 -> 0.3.3
-- No SQL object changes. The library's reserve fast path settles a false
-- alarm (an account whose next_event has come with nothing due) in one
-- guarded UPDATE that takes the hold and moves next_event on, instead of a
-- check, a call of credits._refresh_next_event() and the UPDATE again
-- (issue 5); install the new library, then run this update so that the
-- installed version says which library it expects.
-- Released upgrade scripts are never edited: a fix ships in the next one.
\echo Use "ALTER EXTENSION credits UPDATE TO '0.3.3'" to load this file. \quit
