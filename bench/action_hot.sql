-- One AI action on the one hot account shared by every client.
SELECT credits_reserve(account_id => 'hot', amount => 10, product => 'editor') AS r \gset
SELECT credits_commit(reservation_id => :r, amount => 7);
