-- Who may do what. Nothing is executable by PUBLIC; the DBA grants the
-- roles below to login roles. Only the extension owner writes the tables:
-- every write goes through the SECURITY DEFINER API functions.

COMMENT ON SCHEMA credits IS 'AI credits ledger: plans, accounts, buckets, reservations and the append-only ledger';
REVOKE ALL ON SCHEMA credits FROM PUBLIC;
GRANT USAGE ON SCHEMA credits TO credits_admin, credits_app, credits_reader;

REVOKE ALL ON ALL TABLES IN SCHEMA credits FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA credits FROM PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA credits TO credits_admin, credits_reader;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA credits FROM PUBLIC;
REVOKE ALL ON FUNCTION
    public.credits_plan_upsert(text, numeric, text, text, numeric, numeric, numeric, boolean),
    public.credits_account_upsert(text, text, timestamptz, boolean, text, numeric, timestamptz, numeric[]),
    public.credits_grant(text, numeric, text, timestamptz, text, jsonb),
    public.credits_reserve(text, numeric, text, text, text, interval, jsonb),
    public.credits_commit(uuid, numeric, boolean, text),
    public.credits_refund(uuid, numeric, text, text, text),
    public.credits_balance(text),
    public.credits_verify(),
    public.credits_reset(text, timestamptz),
    public.credits_product_upsert(text, boolean, text),
    public.credits_account_product_set(text, text, boolean),
    public.credits_price_upsert(text, text, text, numeric, text),
    public.credits_quote(text, text, text, numeric, numeric, numeric, numeric, numeric),
    public.credits_pack_upsert(text, numeric, numeric, text, boolean),
    public.credits_purchase(text, text, text),
    public.credits_auto_recharge_set(text, boolean, text, numeric, numeric),
    public.credits_recharge_fail(uuid, text),
    public.credits_events_claim(text, integer, interval, text[]),
    public.credits_events_ack(bigint[]),
    public.credits_events_purge(interval, boolean, text[]),
    public.credits_account_bind(text, regrole),
    public.credits_account_unbind(text, regrole, boolean)
FROM PUBLIC;
REVOKE ALL ON PROCEDURE public.credits_maintenance(integer) FROM PUBLIC;

-- Admins configure plans and accounts and grant credits.
GRANT EXECUTE ON FUNCTION
    public.credits_plan_upsert(text, numeric, text, text, numeric, numeric, numeric, boolean),
    public.credits_account_upsert(text, text, timestamptz, boolean, text, numeric, timestamptz, numeric[]),
    public.credits_grant(text, numeric, text, timestamptz, text, jsonb),
    public.credits_verify(),
    public.credits_reset(text, timestamptz),
    public.credits_product_upsert(text, boolean, text),
    public.credits_account_product_set(text, text, boolean),
    public.credits_price_upsert(text, text, text, numeric, text),
    public.credits_pack_upsert(text, numeric, numeric, text, boolean),
    public.credits_purchase(text, text, text),
    public.credits_auto_recharge_set(text, boolean, text, numeric, numeric),
    public.credits_recharge_fail(uuid, text),
    public.credits_events_purge(interval, boolean, text[]),
    public.credits_account_bind(text, regrole),
    public.credits_account_unbind(text, regrole, boolean),
    credits._maintenance_batch(integer, text[]),
    credits._maintenance_one(text[]),
    credits._in_transaction_block()
TO credits_admin;
GRANT EXECUTE ON PROCEDURE public.credits_maintenance(integer) TO credits_admin;

-- Applications reserve, commit and refund; admins may too.
GRANT EXECUTE ON FUNCTION
    public.credits_reserve(text, numeric, text, text, text, interval, jsonb),
    public.credits_commit(uuid, numeric, boolean, text),
    public.credits_refund(uuid, numeric, text, text, text),
    public.credits_quote(text, text, text, numeric, numeric, numeric, numeric, numeric),
    public.credits_events_claim(text, integer, interval, text[]),
    public.credits_events_ack(bigint[]),
    -- What credits_reserve and credits_commit call (they are inlined into
    -- the caller's query, so the caller needs EXECUTE on these too).
    credits._reserve_fast(text, numeric, text, text, text, interval, jsonb),
    credits._reserve(text, numeric, text, text, text, interval, jsonb),
    credits._commit_fast(uuid, numeric, boolean, text),
    credits._commit(uuid, numeric, boolean, text)
TO credits_app, credits_admin;

GRANT EXECUTE ON FUNCTION public.credits_balance(text) TO credits_app, credits_admin, credits_reader;

-- The usage views are security_invoker: whoever reads them runs the
-- read-side functions underneath as themselves, under row-level security.
REVOKE ALL ON FUNCTION public.credits_usage_daily(text, date, date), public.credits_usage_by_tag(text, text, date, date)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    public.credits_usage_daily(text, date, date),
    public.credits_usage_by_tag(text, text, date, date),
    credits._account_state(text, timestamptz),
    credits._roll_input(text, timestamptz),
    credits._roll_plan(jsonb),
    credits._limit(credits.accounts, timestamptz),
    credits._now(),
    credits._now_stable(),
    credits._required(boolean, text),
    credits._unknown_account(text),
    credits._sees_all(),
    credits._bound_accounts()
TO credits_reader, credits_app, credits_admin;

COMMENT ON FUNCTION public.credits_plan_upsert(text, numeric, text, text, numeric, numeric, numeric, boolean) IS
    'Creates or updates a plan: monthly allocation, reset rule, hard/soft limit, rollover cap, overage rate, purchases.';
COMMENT ON FUNCTION public.credits_account_upsert(text, text, timestamptz, boolean, text, numeric, timestamptz, numeric[]) IS
    'Creates an account on a plan (full first-period allocation) or changes its plan, anchor, BYOK flag or limit override.';
COMMENT ON FUNCTION public.credits_grant(text, numeric, text, timestamptz, text, jsonb) IS
    'Adds a credit bucket: topup (expires at the next reset), pack, promo or adjustment. Returns the bucket id.';
COMMENT ON FUNCTION public.credits_reserve(text, numeric, text, text, text, interval, jsonb) IS
    'Holds credits before an AI action; fails with CR001 when the limit does not allow it. Returns the reservation id.';
COMMENT ON FUNCTION public.credits_commit(uuid, numeric, boolean, text) IS
    'Charges a reservation (the reserved amount, less, or more if it fits or force => true). Returns the amount charged.';
COMMENT ON FUNCTION public.credits_refund(uuid, numeric, text, text, text) IS
    'Releases a pending reservation or returns credits of a committed one. Returns the amount returned.';
COMMENT ON FUNCTION public.credits_balance(text) IS
    'Balance and history of one account as jsonb: summary (usage ring), live buckets, recent transactions.';
COMMENT ON FUNCTION public.credits_reset(text, timestamptz) IS
    'Rolls due billing periods (rollover, expiry, new allocation) of one account or all, up to as_of. Returns periods rolled.';
COMMENT ON PROCEDURE public.credits_maintenance(integer) IS
    'For pg_cron: brings every due account up to date in committed batches (resets, expired holds and buckets).';
COMMENT ON FUNCTION public.credits_product_upsert(text, boolean, text) IS
    'Registers a product, or enables/disables it for every account.';
COMMENT ON FUNCTION public.credits_account_product_set(text, text, boolean) IS
    'Enables or disables a product for one account (NULL: back to the global switch).';
COMMENT ON FUNCTION public.credits_price_upsert(text, text, text, numeric, text) IS
    'Sets the price in credits of one unit (call, 1k input/output tokens, image, second) of a product action and tier.';
COMMENT ON FUNCTION public.credits_quote(text, text, text, numeric, numeric, numeric, numeric, numeric) IS
    'Cost preview: the credits a planned action costs by the price catalogue, without changing anything.';
COMMENT ON FUNCTION public.credits_pack_upsert(text, numeric, numeric, text, boolean) IS
    'Creates or updates a credit pack for sale (credits, price, currency).';
COMMENT ON FUNCTION public.credits_purchase(text, text, text) IS
    'Records a purchased pack as a never-expiring pack bucket, idempotent on payment_ref. Returns the bucket id.';
COMMENT ON FUNCTION public.credits_auto_recharge_set(text, boolean, text, numeric, numeric) IS
    'Configures auto-recharge: buy a pack when a commit takes the available balance below threshold, within a monthly cap.';
COMMENT ON FUNCTION public.credits_recharge_fail(uuid, text) IS
    'Marks a pending recharge request as failed (the payment did not go through).';
COMMENT ON FUNCTION public.credits_events_claim(text, integer, interval, text[]) IS
    'Claims up to max_events events for visibility (SKIP LOCKED); unacknowledged events come back afterwards.';
COMMENT ON FUNCTION public.credits_events_ack(bigint[]) IS
    'Acknowledges handled events. Returns how many were newly acknowledged.';
COMMENT ON FUNCTION public.credits_events_purge(interval, boolean, text[]) IS
    'Deletes events acknowledged more than older_than ago (and unacknowledged ones created before then, if asked). Returns how many.';
COMMENT ON FUNCTION public.credits_account_bind(text, regrole) IS
    'Binds an account to a role: members of bound roles see and touch only their accounts.';
COMMENT ON FUNCTION public.credits_account_unbind(text, regrole, boolean) IS
    'Removes a binding of an account to a role; a role''s last binding only with last_binding => true (a role bound to no account reaches every account).';
COMMENT ON FUNCTION public.credits_verify() IS
    'One row per violated invariant of the stored balances, holds, limits and ledger; empty when healthy.';
