-- credits_commit alone, of holds made beforehand (each commit takes the next one).
SELECT credits_commit(reservation_id => h.reservation_id, amount => 7)
  FROM bench_holds h WHERE h.i = (SELECT nextval('bench_hold_seq'));
