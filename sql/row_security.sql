-- Forced row-level security on every table holding account data: readers
-- (and anyone else granted SELECT) see the rows of the accounts they may
-- reach. The owner is a superuser and bypasses it; nobody else may write.
DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['accounts', 'buckets', 'reservations', 'ledger', 'idempotency_keys', 'account_products',
                             'purchases', 'auto_recharge', 'recharge_requests', 'events', 'usage_rollup', 'account_roles']
    LOOP
        EXECUTE format('ALTER TABLE credits.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE credits.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY bound_accounts ON credits.%I FOR SELECT USING ('
                       '(SELECT credits._sees_all()) OR account_id = ANY ((SELECT credits._bound_accounts())::text[]))', t);
    END LOOP;
END
$rls$;
