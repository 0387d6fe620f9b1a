-- Reserve, the app's own INSERT and commit in one transaction.
\set id random(1, :rows)
BEGIN;
SELECT credits_reserve(account_id => 'acct' || :id, amount => 10, product => 'editor') AS r \gset
INSERT INTO app_events (account_id, reservation_id, payload) VALUES ('acct' || :id, :r, 'generated text');
SELECT credits_commit(reservation_id => :r, amount => 7);
END;
