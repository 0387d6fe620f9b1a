-- Drawing from buckets in consumption order: the period allocation, then its
-- rollover, then top-ups and promotional credits (soonest expiry
-- first), then packs and adjustments (oldest first). The caller holds the
-- account lock, so buckets are only ever locked after their account and in
-- this one order. p_hold: take as a hold (held += x) or charge outright
-- (balance -= x). Returns the draws and their total, which is less than
-- p_amount when the live buckets run out.
CREATE FUNCTION credits._draw(
    p_account text, p_amount numeric, p_now timestamptz, p_hold boolean,
    OUT buckets uuid[], OUT amounts numeric[], OUT total numeric)
LANGUAGE plpgsql
AS $$
DECLARE
    b    record;
    take numeric;
BEGIN
    buckets := '{}';
    amounts := '{}';
    total := 0;
    FOR b IN
        SELECT bucket_id, balance - held AS free
          FROM credits.buckets
         WHERE account_id = p_account AND balance > held
           AND (expires_at IS NULL OR expires_at > p_now)
         ORDER BY priority, expires_at, created_at, kind, bucket_id
    LOOP
        take := least(b.free, p_amount - total);
        IF p_hold THEN
            UPDATE credits.buckets SET held = held + take
             WHERE account_id = p_account AND bucket_id = b.bucket_id;
        ELSE
            UPDATE credits.buckets SET balance = balance - take
             WHERE account_id = p_account AND bucket_id = b.bucket_id;
        END IF;
        buckets := buckets || b.bucket_id;
        amounts := amounts || take;
        total := total + take;
        EXIT WHEN total = p_amount;
    END LOOP;
END
$$;
