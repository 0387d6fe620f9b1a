-- Tamper evidence for the ledger: a per-account sequence number and a hash
-- chained over each row's content and the previous row's hash (SHA-256, in
-- Rust: credits._ledger_hash). The trigger fills both only when they are
-- NULL, so rows reloaded by pg_restore keep theirs, and the commit fast
-- path (src/fast_commit.rs), which chains its row in its own statement,
-- does not call it; credits_verify() recomputes the chain.

-- The canonical content of a ledger row, as hashed.
CREATE FUNCTION credits._ledger_content(l credits.ledger) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s',
                  l.account_id, l.seq, l.kind, trim_scale(l.amount), coalesce(l.bucket_id::text, '-'),
                  coalesce(l.reservation_id::text, '-'), coalesce(l.product, '-'), coalesce(l.action, '-'),
                  coalesce(trim_scale(l.rate)::text, '-'), l.actor, coalesce(l.idempotency_key, '-'), l.metadata::text,
                  (extract(epoch FROM l.created_at) * 1000000)::bigint)
$$;

CREATE FUNCTION credits._ledger_chain() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev record;
BEGIN
    IF NEW.seq IS NULL OR NEW.hash IS NULL THEN
        SELECT l.seq, l.hash INTO prev FROM credits.ledger l
         WHERE l.account_id = NEW.account_id ORDER BY l.entry_id DESC LIMIT 1;
        NEW.seq := coalesce(prev.seq, 0) + 1;
        NEW.hash := credits._ledger_hash(coalesce(prev.hash, ''), credits._ledger_content(NEW));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER ledger_chain
    BEFORE INSERT ON credits.ledger
    FOR EACH ROW
    WHEN (NEW.seq IS NULL OR NEW.hash IS NULL)
    EXECUTE FUNCTION credits._ledger_chain();
