-- credits_refund: give credits back for a failed or cheaper action.
-- A pending reservation is released whole. A committed one returns up to
-- what was charged and not yet refunded, undoing the charge in reverse:
-- debt first, then overage, then the buckets, last charged first. A share
-- whose bucket has expired since is written off at once, never resurrected.
CREATE FUNCTION public.credits_refund(
    reservation_id  uuid,
    amount          numeric DEFAULT NULL,
    reason          text DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    account_id      text DEFAULT NULL)
RETURNS numeric
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_id       uuid    := credits_refund.reservation_id;
    v_amount   numeric := CASE WHEN credits_refund.amount IS NULL THEN NULL
                               ELSE credits._amount(credits_refund.amount, 'amount', false) END;
    v_reason   text    := CASE WHEN credits_refund.reason IS NULL THEN NULL
                               ELSE credits._ident(credits_refund.reason, 'reason', 1000) END;
    v_key      text    := CASE WHEN credits_refund.idempotency_key IS NULL THEN NULL
                               ELSE credits._ident(credits_refund.idempotency_key, 'idempotency_key', 255) END;
    v_meta     jsonb;
    v_account  text;
    v_request  jsonb;
    v_result   text;
    v_now      timestamptz;
    v_return   numeric;
    v_pos      numeric := 0;
    v_take     numeric;
    v_debt     numeric := 0;   -- taken off the account's debt
    v_credit   numeric := 0;   -- returned to bucket balances
    v_written  numeric := 0;
    v_overage  numeric := 0;
    v_usage    numeric := 0;
    v_same     boolean;
    a          credits.accounts;
    r          credits.reservations;
    rel        record;
    nb         record;
    d          record;
BEGIN
    v_account := credits._reservation_account(v_id,
        CASE WHEN credits_refund.account_id IS NULL THEN NULL
             ELSE credits._ident(credits_refund.account_id, 'account_id', 255) END);
    v_meta := CASE WHEN v_reason IS NULL THEN '{}' ELSE jsonb_build_object('reason', v_reason) END;
    a := credits._lock_account(v_account);
    v_now := credits._now();
    v_request := jsonb_build_object('reservation_id', v_id, 'amount', v_amount, 'reason', v_reason);
    v_result := credits._idempotent_result(v_account, 'refund', v_key, v_request);
    IF v_result IS NOT NULL THEN
        RETURN trim_scale(v_result::numeric);
    END IF;
    SELECT * INTO r FROM credits.reservations WHERE reservation_id = v_id AND account_id = v_account;

    IF r.status = 'pending' THEN
        SELECT * INTO rel FROM credits._release_draws(v_account, v_id, r.draw_buckets, r.draw_amounts, v_now);
        UPDATE credits.accounts
           SET held = held - rel.released, balance = balance - rel.written_off,
               overage_held = overage_held - r.overage
         WHERE account_id = v_account;
        UPDATE credits.reservations SET status = 'released', resolved_at = v_now, metadata = metadata || v_meta
         WHERE reservation_id = v_id AND account_id = v_account;
        v_return := r.amount;
    ELSIF r.status = 'committed' THEN
        IF v_amount > r.charged - r.refunded THEN
            RAISE EXCEPTION USING ERRCODE = 'CR012',
                MESSAGE = format('refund of %s exceeds what reservation %s has left to refund', trim_scale(v_amount), v_id),
                DETAIL = format('It was charged %s, of which %s is already refunded; %s is left to refund.',
                                trim_scale(r.charged), trim_scale(r.refunded), trim_scale(r.charged - r.refunded)),
                HINT = 'Refund at most the refundable amount, or leave amount out to refund all that is left.';
        END IF;
        v_return := coalesce(v_amount, r.charged - r.refunded);
        v_same := r.period_start = a.period_start;
        IF v_return > 0 AND NOT r.byok THEN
            -- Parts of the charge in reverse order; the first r.refunded of
            -- them were returned by earlier refunds.
            FOR d IN
                SELECT part, bucket_id, size
                  FROM (SELECT 'debt' AS part, NULL::uuid AS bucket_id, r.debt AS size, 0 AS n
                        UNION ALL SELECT 'overage', NULL, r.overage, 1
                        UNION ALL SELECT 'bucket', u.bucket_id, u.amount, 1 + cardinality(r.draw_buckets) + 1 - u.n
                          FROM unnest(r.draw_buckets, r.draw_amounts) WITH ORDINALITY AS u(bucket_id, amount, n)) parts
                 ORDER BY n
            LOOP
                v_take := greatest(least(r.refunded + v_return, v_pos + d.size) - greatest(r.refunded, v_pos), 0);
                v_pos := v_pos + d.size;
                CONTINUE WHEN v_take = 0;
                IF d.part = 'debt' THEN
                    v_usage := v_usage + v_take;
                    IF least(v_take, a.debt) > 0 THEN
                        INSERT INTO credits.ledger (account_id, kind, amount, reservation_id, product, action, actor, idempotency_key, metadata, created_at)
                        VALUES (v_account, 'debt_refund', least(v_take, a.debt), v_id, r.product, r.action, credits._actor(), v_key, v_meta, v_now);
                        v_debt := least(v_take, a.debt);
                    END IF;
                    IF v_take > v_debt THEN
                        -- The debt was paid off since: return that part as credit.
                        SELECT * INTO nb FROM credits._new_bucket(v_account, 'adjustment', v_take - v_debt, NULL, v_now, 0,
                                                                  v_key, v_meta, 'refund', v_id);
                        v_credit := v_credit + v_take - v_debt;
                    END IF;
                ELSIF d.part = 'overage' THEN
                    INSERT INTO credits.ledger (account_id, kind, amount, reservation_id, product, action, rate, actor, idempotency_key, metadata, created_at)
                    VALUES (v_account, 'overage_refund', v_take, v_id, r.product, r.action, r.overage_rate, credits._actor(), v_key, v_meta, v_now);
                    v_overage := v_overage + v_take;
                ELSE
                    v_usage := v_usage + v_take;
                    INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, product, action, actor, idempotency_key, metadata, created_at)
                    VALUES (v_account, 'refund', v_take, d.bucket_id, v_id, r.product, r.action, credits._actor(), v_key, v_meta, v_now);
                    IF EXISTS (SELECT 1 FROM credits.buckets
                                WHERE account_id = v_account AND bucket_id = d.bucket_id AND expires_at <= v_now) THEN
                        INSERT INTO credits.ledger (account_id, kind, amount, bucket_id, reservation_id, actor, created_at)
                        VALUES (v_account, 'expire', -v_take, d.bucket_id, v_id, credits._actor(), v_now);
                        v_written := v_written + v_take;
                    ELSE
                        UPDATE credits.buckets SET balance = balance + v_take
                         WHERE account_id = v_account AND bucket_id = d.bucket_id;
                    END IF;
                    v_credit := v_credit + v_take;
                END IF;
            END LOOP;
            PERFORM credits._rollup(v_account, v_now, r.product, 0, 0, v_usage + v_overage, v_overage,
                                    -v_overage * coalesce(r.overage_rate, 0), 0, 0);
            UPDATE credits.accounts
               SET balance = balance + v_credit - v_written, debt = debt - v_debt,
                   period_used = period_used - CASE WHEN v_same THEN v_usage ELSE 0 END,
                   period_overage = period_overage - CASE WHEN v_same THEN v_overage ELSE 0 END
             WHERE account_id = v_account;
        END IF;
        IF v_return > 0 AND r.byok THEN
            PERFORM credits._rollup(v_account, v_now, r.product, 0, 0, 0, 0, 0, 0, -v_return);
        END IF;
        UPDATE credits.reservations
           SET refunded = refunded + v_return, metadata = metadata || v_meta
         WHERE reservation_id = v_id AND account_id = v_account;
    ELSE
        RAISE EXCEPTION USING ERRCODE = 'CR005',
            MESSAGE = format('reservation %s is not pending', v_id),
            DETAIL = format('It is %s: its hold was already given back.', r.status),
            HINT = 'Nothing is left to refund.';
    END IF;

    PERFORM credits._idempotent_store(v_account, 'refund', v_key, v_request, trim_scale(v_return)::text, v_now);
    RETURN trim_scale(v_return);
END
$$;
