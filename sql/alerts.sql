-- What a commit may set off, checked only when the commit crossed a line
-- (credits_commit compares cheap stored figures first): usage alerts at
-- the account's percentages of its period allocation, once per period
-- each, and an auto-recharge request when the available balance fell below
-- the threshold, once per crossing and within the monthly cap (in the
-- pack's currency: what auto-recharge requested or bought this calendar
-- month in that currency counts against it). The balance
-- compared is what the live buckets hold (pending holds included): what
-- a commit takes away. Both are
-- events in the outbox, written in the commit's own transaction.
CREATE FUNCTION credits._after_usage(p_account text, p_balance_before numeric, p_now timestamptz) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    a        credits.accounts;
    v_alloc  numeric;
    v_usage  numeric;
    v_raised numeric[];
    v_pct    numeric;
    v_spent  numeric;
    cfg      record;
    v_req    uuid;
BEGIN
    SELECT * INTO a FROM credits.accounts WHERE account_id = p_account;
    v_usage := a.period_used + a.period_overage;
    IF a.next_alert_at IS NOT NULL AND v_usage >= a.next_alert_at THEN
        v_alloc := credits._period_allocation(p_account, a.period_end, a.byok,
                                              (SELECT p.allocation FROM credits.plans p WHERE p.plan_id = a.plan_id));
        v_raised := a.alerts_raised;
        FOR v_pct IN
            SELECT x FROM unnest(a.alert_percents) x
             WHERE NOT x = ANY (v_raised) AND v_usage >= x * v_alloc / 100
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
        SELECT ar.*, pk.credits, pk.price, pk.currency INTO cfg
          FROM credits.auto_recharge ar JOIN credits.packs pk ON pk.pack_id = ar.pack_id
         WHERE ar.account_id = p_account AND ar.enabled AND pk.active
           AND (SELECT pl.purchases_allowed FROM credits.plans pl WHERE pl.plan_id = a.plan_id);
        IF FOUND THEN
            SELECT coalesce(sum(r.price), 0) INTO v_spent
              FROM credits.recharge_requests r
             WHERE r.account_id = p_account AND r.status IN ('pending', 'completed')
               AND upper(r.currency) = upper(cfg.currency)
               AND r.created_at >= date_trunc('month', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
            IF v_spent + cfg.price <= cfg.monthly_cap THEN
                INSERT INTO credits.recharge_requests (account_id, pack_id, credits, price, currency, status, created_at)
                VALUES (p_account, cfg.pack_id, cfg.credits, cfg.price, cfg.currency, 'pending', p_now)
                RETURNING request_id INTO v_req;
                PERFORM credits._emit(p_account, 'recharge_requested', jsonb_build_object(
                    'account_id', p_account, 'request_id', v_req, 'pack', cfg.pack_id, 'credits', cfg.credits,
                    'price', cfg.price, 'currency', cfg.currency, 'payment_ref', v_req), p_now);
            END IF;
        END IF;
    END IF;
END
$$;
