-- credits_verify(): one row per violated invariant, nothing on a healthy
-- database. Stored balances must equal what their ledger rows add up to,
-- holds must equal the pending reservations' draws, and no stored row may be
-- past its limit. A caller bound to accounts sees the rows of its accounts.
CREATE FUNCTION public.credits_verify()
RETURNS TABLE (invariant text, account_id text, detail text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH ledger_by_bucket AS (
        SELECT l.account_id, l.bucket_id, sum(l.amount) AS amount
          FROM credits.ledger l WHERE l.bucket_id IS NOT NULL
         GROUP BY 1, 2
    ), pending_draws AS (
        SELECT r.account_id, u.bucket_id, sum(u.amount) AS amount
          FROM credits.reservations r, unnest(r.draw_buckets, r.draw_amounts) AS u(bucket_id, amount)
         WHERE r.status = 'pending'
         GROUP BY 1, 2
    ), by_account AS (
        SELECT b.account_id, sum(b.balance) AS balance, sum(b.held) AS held
          FROM credits.buckets b GROUP BY 1
    ), pending_overage AS (
        SELECT r.account_id, sum(r.overage) AS overage
          FROM credits.reservations r WHERE r.status = 'pending' GROUP BY 1
    ), debt_ledger AS (
        SELECT l.account_id,
               sum(CASE l.kind WHEN 'debt' THEN -l.amount WHEN 'debt_refund' THEN -l.amount
                               WHEN 'debt_payment' THEN l.amount END) AS debt
          FROM credits.ledger l WHERE l.kind IN ('debt', 'debt_refund', 'debt_payment')
         GROUP BY 1
    ), reservation_ledger AS (
        -- What each reservation's ledger rows add up to, in one pass over
        -- the ledger: it has no index by reservation, so a look-up per
        -- reservation would read all of the account's ledger rows each time.
        SELECT l.account_id, l.reservation_id, -sum(l.amount) AS amount
          FROM credits.ledger l
         WHERE l.reservation_id IS NOT NULL
           AND l.kind IN ('charge', 'overage', 'debt', 'refund', 'overage_refund', 'debt_refund')
         GROUP BY 1, 2
    ), period_usage AS (
        SELECT a.account_id,
               coalesce(-sum(l.amount) FILTER (WHERE l.kind IN ('charge', 'refund', 'debt', 'debt_refund')), 0) AS used,
               coalesce(-sum(l.amount) FILTER (WHERE l.kind IN ('overage', 'overage_refund')), 0) AS overage
          FROM credits.accounts a
          JOIN credits.reservations r ON r.account_id = a.account_id AND r.period_start = a.period_start
                                      AND r.status = 'committed'
          JOIN credits.ledger l ON l.account_id = r.account_id AND l.reservation_id = r.reservation_id
         GROUP BY 1
    ), violations (invariant, account_id, detail) AS (
    SELECT 'bucket balance equals its ledger rows', b.account_id,
           format('bucket %s: stored %s, ledger %s', b.bucket_id, b.balance, coalesce(lb.amount, 0))
      FROM credits.buckets b
      LEFT JOIN ledger_by_bucket lb ON lb.account_id = b.account_id AND lb.bucket_id = b.bucket_id
     WHERE b.balance <> coalesce(lb.amount, 0)
    UNION ALL
    SELECT 'ledger rows belong to a bucket of their account', lb.account_id,
           format('bucket %s has ledger rows but no row in credits.buckets', lb.bucket_id)
      FROM ledger_by_bucket lb
     WHERE NOT EXISTS (SELECT 1 FROM credits.buckets b WHERE b.account_id = lb.account_id AND b.bucket_id = lb.bucket_id)
    UNION ALL
    SELECT 'bucket held equals its pending draws', b.account_id,
           format('bucket %s: held %s, pending draws %s', b.bucket_id, b.held, coalesce(pd.amount, 0))
      FROM credits.buckets b
      LEFT JOIN pending_draws pd ON pd.account_id = b.account_id AND pd.bucket_id = b.bucket_id
     WHERE b.held <> coalesce(pd.amount, 0)
    UNION ALL
    SELECT 'account balance and holds equal its buckets', a.account_id,
           format('stored balance %s held %s, buckets balance %s held %s',
                  a.balance, a.held, coalesce(ba.balance, 0), coalesce(ba.held, 0))
      FROM credits.accounts a
      LEFT JOIN by_account ba ON ba.account_id = a.account_id
     WHERE a.balance <> coalesce(ba.balance, 0) OR a.held <> coalesce(ba.held, 0)
    UNION ALL
    SELECT 'account overage hold equals its pending reservations', a.account_id,
           format('stored %s, pending reservations %s', a.overage_held, coalesce(po.overage, 0))
      FROM credits.accounts a
      LEFT JOIN pending_overage po ON po.account_id = a.account_id
     WHERE a.overage_held <> coalesce(po.overage, 0)
    UNION ALL
    SELECT 'account debt equals its ledger rows', a.account_id,
           format('stored %s, ledger %s', a.debt, coalesce(dl.debt, 0))
      FROM credits.accounts a
      LEFT JOIN debt_ledger dl ON dl.account_id = a.account_id
     WHERE a.debt <> coalesce(dl.debt, 0)
    UNION ALL
    SELECT 'period usage equals the ledger rows of the period', a.account_id,
           format('stored used %s overage %s, ledger used %s overage %s',
                  a.period_used, a.period_overage, coalesce(pu.used, 0), coalesce(pu.overage, 0))
      FROM credits.accounts a
      LEFT JOIN period_usage pu ON pu.account_id = a.account_id
     WHERE (a.period_used <> coalesce(pu.used, 0) OR a.period_overage <> coalesce(pu.overage, 0))
       AND NOT a.byok
    UNION ALL
    SELECT 'account is within its limits', a.account_id,
           format('held %s of balance %s, overage %s + held %s, allowance %s',
                  a.held, a.balance, a.period_overage, a.overage_held,
                  CASE WHEN coalesce(a.limit_mode, p.limit_mode) = 'soft' THEN coalesce(a.soft_limit, p.soft_limit) ELSE 0 END)
      FROM credits.accounts a LEFT JOIN credits.plans p ON p.plan_id = a.plan_id
     WHERE a.held > a.balance OR a.held < 0 OR a.period_overage < 0
    UNION ALL
    SELECT 'account plan exists', a.account_id, format('plan "%s" is not in credits.plans', a.plan_id)
      FROM credits.accounts a
     WHERE NOT EXISTS (SELECT 1 FROM credits.plans p WHERE p.plan_id = a.plan_id)
    UNION ALL
    SELECT 'stored values are valid', x.account_id, x.detail
      FROM (SELECT a.account_id, format('account: overage %s, overage held %s, debt %s, limit_mode %s, soft_limit %s, period %s - %s',
                   a.period_overage, a.overage_held, a.debt, a.limit_mode, a.soft_limit, a.period_start, a.period_end) AS detail
              FROM credits.accounts a
             WHERE a.period_overage < 0 OR a.overage_held < 0 OR a.debt < 0 OR a.soft_limit < 0
                OR a.limit_mode NOT IN ('hard', 'soft') OR a.period_end <= a.period_start
            UNION ALL
            SELECT b.account_id, format('bucket %s: kind %s, priority %s, amount %s', b.bucket_id, b.kind, b.priority, b.amount)
              FROM credits.buckets b
             WHERE b.amount < 0 OR (b.kind, b.priority) NOT IN (('allocation', 0), ('rollover', 0), ('topup', 1),
                                                             ('promo', 1), ('pack', 2), ('adjustment', 2))
            UNION ALL
            SELECT r.account_id, format('reservation %s: status %s, amount %s, refunded %s of %s',
                                        r.reservation_id, r.status, r.amount, r.refunded, r.charged)
              FROM credits.reservations r
             WHERE r.status NOT IN ('pending', 'committed', 'released', 'expired') OR r.amount <= 0
                OR r.overage < 0 OR r.debt < 0 OR r.refunded < 0 OR r.refunded > coalesce(r.charged, 0)
                OR cardinality(r.draw_buckets) <> cardinality(r.draw_amounts)
            UNION ALL
            SELECT l.account_id, format('ledger row %s: kind %s', l.entry_id, l.kind)
              FROM credits.ledger l
             WHERE l.kind NOT IN ('allocation', 'rollover', 'topup', 'promo', 'pack', 'adjustment', 'plan_change', 'purchase',
                                  'charge', 'overage', 'debt', 'refund', 'overage_refund', 'debt_refund',
                                  'debt_payment', 'expire', 'hold_expired')) x
    UNION ALL
    SELECT 'account next_event is not after anything due', a.account_id,
           format('next_event %s, earliest due %s', a.next_event,
                  least(a.period_end, b.first_expiry, r.first_expiry))
      FROM credits.accounts a
      LEFT JOIN LATERAL (SELECT min(expires_at) AS first_expiry FROM credits.buckets b
                          WHERE b.account_id = a.account_id AND b.balance > b.held AND b.expires_at IS NOT NULL) b ON true
      LEFT JOIN LATERAL (SELECT min(expires_at) AS first_expiry FROM credits.reservations r
                          WHERE r.account_id = a.account_id AND r.status = 'pending') r ON true
     WHERE a.next_event > least(a.period_end, b.first_expiry, r.first_expiry)
    UNION ALL
    SELECT 'reservation state is consistent', r.account_id,
           format('reservation %s (%s): amount %s, draws %s, overage %s, debt %s, charged %s, refunded %s',
                  r.reservation_id, r.status, r.amount,
                  (SELECT coalesce(sum(x), 0) FROM unnest(r.draw_amounts) x), r.overage, r.debt, r.charged, r.refunded)
      FROM credits.reservations r
     WHERE NOT r.byok AND CASE
        WHEN r.status IN ('pending', 'released', 'expired') THEN
             r.charged IS NOT NULL OR r.refunded <> 0 OR r.debt <> 0
             OR r.amount <> (SELECT coalesce(sum(x), 0) FROM unnest(r.draw_amounts) x) + r.overage
        ELSE r.charged IS NULL
             OR r.charged <> (SELECT coalesce(sum(x), 0) FROM unnest(r.draw_amounts) x) + r.overage + r.debt
        END
    UNION ALL
    SELECT 'usage roll-up equals the ledger', coalesce(x.account_id, y.account_id),
           format('%s %s: roll-up used %s overage %s refunded %s, ledger used %s overage %s refunded %s',
                  coalesce(x.day, y.day), coalesce(x.product, y.product), x.used, x.overage, x.refunded,
                  y.used, y.overage, y.refunded)
      FROM credits.usage_rollup x
      FULL JOIN (
            SELECT l.account_id, (l.created_at AT TIME ZONE 'UTC')::date AS day, r.product,
                   coalesce(-sum(l.amount) FILTER (WHERE l.kind IN ('charge', 'debt')), 0) AS used,
                   coalesce(-sum(l.amount) FILTER (WHERE l.kind = 'overage'), 0) AS overage,
                   coalesce(sum(l.amount) FILTER (WHERE l.kind IN ('refund', 'debt_refund', 'overage_refund')), 0) AS refunded,
                   coalesce(sum(l.amount) FILTER (WHERE l.kind = 'overage_refund'), 0) AS overage_refunded
              FROM credits.ledger l
              JOIN credits.reservations r ON r.reservation_id = l.reservation_id AND r.account_id = l.account_id
             WHERE l.kind IN ('charge', 'debt', 'overage', 'refund', 'debt_refund', 'overage_refund')
             GROUP BY 1, 2, 3) y
        ON x.account_id = y.account_id AND x.day = y.day AND x.product = y.product
     WHERE coalesce(x.used, 0) <> coalesce(y.used, 0) OR coalesce(x.overage, 0) <> coalesce(y.overage, 0)
        OR coalesce(x.refunded, 0) <> coalesce(y.refunded, 0)
        OR coalesce(x.overage_refunded, 0) <> coalesce(y.overage_refunded, 0)
    UNION ALL
    SELECT 'usage roll-up counts every commit', coalesce(x.account_id, y.account_id),
           format('%s %s: roll-up %s actions, %s BYOK; reservations %s, %s',
                  coalesce(x.product, y.product), coalesce(x.day::text, 'any day'), x.actions, x.byok_used,
                  y.actions, y.byok_used)
      FROM (SELECT account_id, product, day, actions, NULL::numeric AS byok_used FROM credits.usage_rollup
            UNION ALL
            SELECT account_id, product, NULL, NULL, sum(byok_used) FROM credits.usage_rollup GROUP BY 1, 2) x
      FULL JOIN (SELECT account_id, product, (resolved_at AT TIME ZONE 'UTC')::date AS day, count(*) AS actions,
                        NULL::numeric AS byok_used
                   FROM credits.reservations WHERE status = 'committed' GROUP BY 1, 2, 3
                 UNION ALL
                 SELECT account_id, product, NULL, NULL, sum(charged - refunded)
                   FROM credits.reservations WHERE status = 'committed' AND byok GROUP BY 1, 2) y
        ON x.account_id = y.account_id AND x.product = y.product AND x.day IS NOT DISTINCT FROM y.day
       AND (x.actions IS NULL) = (y.actions IS NULL)
     WHERE coalesce(x.actions, 0) <> coalesce(y.actions, 0) OR coalesce(x.byok_used, 0) <> coalesce(y.byok_used, 0)
    UNION ALL
    SELECT 'ledger hash chain is intact', x.account_id,
           format('entry %s: seq %s (expected %s), hash %s', x.entry_id, x.seq, x.n,
                  CASE WHEN x.hash = x.expected THEN 'ok' ELSE 'does not match its content and predecessor' END)
      FROM (SELECT (c.l).account_id, (c.l).entry_id, (c.l).seq, (c.l).hash, c.n,
                   credits._ledger_hash(coalesce(c.prev, ''), credits._ledger_content(c.l)) AS expected
              FROM (SELECT l, lag(l.hash) OVER w AS prev, row_number() OVER w AS n
                      FROM credits.ledger l
                    WINDOW w AS (PARTITION BY l.account_id ORDER BY l.entry_id)) c) x
     WHERE x.seq <> x.n OR x.hash <> x.expected
    UNION ALL
    SELECT 'committed charges equal their ledger rows', r.account_id,
           format('reservation %s: charged %s, refunded %s, ledger %s', r.reservation_id, r.charged, r.refunded,
                  coalesce(lr.amount, 0))
      FROM credits.reservations r
      LEFT JOIN reservation_ledger lr ON lr.account_id = r.account_id AND lr.reservation_id = r.reservation_id
     WHERE r.status = 'committed' AND NOT r.byok AND r.charged - r.refunded <> coalesce(lr.amount, 0)
    UNION ALL
    SELECT 'account products_off copies its switched-off products', a.account_id,
           format('products_off %s, switched off %s', coalesce(a.products_off::text, 'NULL'), coalesce(o.off::text, 'NULL'))
      FROM credits.accounts a
      CROSS JOIN LATERAL (SELECT credits._products_off(a.account_id) AS off) o
     WHERE a.products_off IS DISTINCT FROM o.off
    UNION ALL
    -- Postgres does not track bindings as dependencies of a role: a role
    -- dropped without credits_account_unbind leaves its OID behind, which
    -- a role made later could be given.
    SELECT 'bindings name existing roles', ar.account_id,
           format('role OID %s is bound to the account but names no role', ar.role_id::oid)
      FROM credits.account_roles ar
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = ar.role_id::oid)
    )
    -- A caller bound to accounts is told about its accounts only.
    SELECT v.invariant, v.account_id, v.detail FROM violations v WHERE credits._may_touch(v.account_id)
$$;
