-- Reference, not ours: the lean PL/pgSQL reserve + commit on one hot account.
SELECT lean_reserve(0, 10) AS r \gset
SELECT lean_commit(:r, 7);
