-- What a commit may set off, checked only when the commit crossed a line
-- (credits_commit compares cheap stored figures first): usage alerts at
-- the account's percentages of its period allocation, once per period
-- each, and an auto-recharge request (credits._auto_recharge,
-- sql/purchases.sql) when the commit took the balance below the threshold.
-- The balance compared is what the live buckets hold (pending holds
-- included): what a commit takes away. Both are events in the outbox,
-- written in the commit's own transaction.
CREATE FUNCTION credits._after_usage(p_account text, p_balance_before numeric, p_now timestamptz) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    a        credits.accounts;
    v_alloc  numeric;
    v_usage  numeric;
    v_raised numeric[];
    v_pct    numeric;
BEGIN
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    v_usage := a.period_used + a.period_overage;
    IF a.next_alert_at IS NOT NULL AND v_usage >= a.next_alert_at THEN
        v_alloc := credits._period_allocation(p_account, a.period_end, a.byok,
                                              (SELECT p.allocation FROM credits.plans p WHERE p.plan_id = a.plan_id));
        v_raised := a.alerts_raised;
        FOR v_pct IN
            SELECT x FROM unnest(a.alert_percents) x
             WHERE NOT x = ANY (v_raised) AND 100 * v_usage >= x * v_alloc
             ORDER BY x
        LOOP
            PERFORM credits._emit(p_account, 'usage_alert', jsonb_build_object(
                'account_id', p_account, 'percent', v_pct, 'used', v_usage, 'allocation', v_alloc,
                'period_end', a.period_end), p_now);
            v_raised := v_raised || v_pct;
        END LOOP;
        UPDATE credits.accounts
           SET alerts_raised = v_raised, next_alert_at = credits._next_alert_at(alert_percents, v_raised, v_alloc)
         WHERE account_id = p_account;
    END IF;

    IF a.recharge_below IS NOT NULL AND a.balance < a.recharge_below AND p_balance_before >= a.recharge_below THEN
        PERFORM credits._auto_recharge(p_account, p_now);
    END IF;
END
$$;
