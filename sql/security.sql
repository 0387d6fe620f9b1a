-- Account binding and row-level security. An admin binds accounts to roles
-- (a role may be bound to several accounts). A role that is a member of a
-- bound role sees and touches only the accounts bound to it; a role bound
-- to nothing (through none of its memberships) and superusers see every
-- account, which keeps a single-tenant setup free of bookkeeping. The API
-- functions run as the owner, which bypasses row-level security, so they
-- check the binding themselves; readers go through forced row-level
-- security on the tables under the security_invoker views. A session
-- setting is not a binding: membership is checked with pg_has_role.

CREATE TABLE credits.account_roles (
    account_id text NOT NULL REFERENCES credits.accounts (account_id),
    -- regrole, not oid (0.3.5): pg_dump writes the role's name, so a
    -- restore into another cluster, where the role has another OID, binds
    -- the same role (or fails if it does not exist) instead of an OID that
    -- names no role there, which left the role bound to nothing, seeing
    -- every account. Within a cluster it is the OID, so a rename keeps it.
    role_id    regrole NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (account_id, role_id)
);
-- The bindings of a role: credits._bindings_of.
CREATE INDEX account_roles_by_role ON credits.account_roles (role_id);
SELECT pg_catalog.pg_extension_config_dump('credits.account_roles', '');
COMMENT ON TABLE credits.account_roles IS 'Accounts bound to roles: members of a bound role see and touch only their accounts.';
COMMENT ON COLUMN credits.account_roles.account_id IS 'The account.';
COMMENT ON COLUMN credits.account_roles.role_id IS 'The role bound to it: its members see and touch only their bound accounts.';
COMMENT ON COLUMN credits.account_roles.created_at IS 'When the binding was made.';

-- The roles whose bindings apply to p_role: p_role and every role it is a
-- member of, directly or through other roles (as pg_has_role(..., 'MEMBER')
-- counts, NOINHERIT or not), found upward through pg_auth_members. The
-- binding functions below then find bindings by role (the index
-- account_roles_by_role) or by account and role (the primary key): a few
-- index probes, whatever the number of bindings and roles. They are
-- PL/pgSQL (since 0.3.5), so that their plans are kept for the session,
-- and run with sequential scans disabled: bindings are skewed (one role
-- bound to thousands of accounts, another to one), and the generic plan
-- of "is any binding one of these roles'" scanned the table, which read
-- every row for a role bound once (0.47 ms per check with 10,000
-- bindings).
-- Until 0.3.5 they were SQL functions, planned again on every call, and
-- asked pg_has_role about the role of every binding: with 10,000 bindings
-- a bound role's reserve + commit took 7.1 ms instead of 1.6 ms, and one
-- bound to all 10,000 accounts, which built the list of its accounts for
-- each check, 13-16 ms.
CREATE FUNCTION credits._roles_of(p_role text) RETURNS regrole[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN ARRAY(
        WITH RECURSIVE member_of(oid) AS (
            SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = p_role
            UNION
            SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN member_of ON m.member = member_of.oid
        )
        SELECT member_of.oid::regrole FROM member_of);
END
$$;

-- The accounts bound to p_role or to a role it is a member of.
CREATE FUNCTION credits._bindings_of(p_role text)
RETURNS TABLE (account_id text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    SELECT ar.account_id FROM credits.account_roles ar WHERE ar.role_id = ANY (credits._roles_of(p_role));
END
$$;

-- Whether the caller (credits._actor(): the session's role, or the one it
-- SET ROLE to) sees every account: superusers, and roles bound to nothing
-- (the first binding of one of its roles settles it).
-- SECURITY DEFINER: the row-level security policies call it, and it reads
-- credits.account_roles, which has a policy of its own.
CREATE FUNCTION credits._sees_all() RETURNS boolean
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
AS $$
DECLARE
    v_actor text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM credits.account_roles) THEN
        RETURN true;
    END IF;
    v_actor := credits._actor();
    RETURN coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = v_actor), false)
        OR NOT EXISTS (SELECT 1 FROM credits.account_roles ar WHERE ar.role_id = ANY (credits._roles_of(v_actor)));
END
$$;

-- The accounts bound to the caller's roles: the row-level security
-- policies compare each row with it, once per query.
CREATE FUNCTION credits._bound_accounts() RETURNS text[]
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT coalesce(array_agg(DISTINCT b.account_id), '{}') FROM credits._bindings_of(credits._actor()) b);
END
$$;

-- Whether the caller of an API function may touch p_account: no account is
-- bound at all (one probe of an empty table), or p_account is bound to one
-- of the caller's roles (asked first: a bound application's usual case,
-- which then finds the caller's roles once), or the caller sees every
-- account (credits._sees_all(): a superuser, a role bound to nothing). Every write path and
-- the fast paths ask it (src/fast_path.rs, may_touch!) about one account,
-- so it probes that account's bindings by key instead of listing the
-- caller's accounts (until 0.3.5 it did, with credits._bound_accounts(): a
-- role bound to 10,000 accounts paid 13 ms per reserve + commit). Only the
-- SECURITY DEFINER API functions call it, as the owner.
CREATE FUNCTION credits._may_touch(p_account text) RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN NOT EXISTS (SELECT 1 FROM credits.account_roles)
        OR EXISTS (SELECT 1 FROM credits.account_roles ar
                    WHERE ar.account_id = p_account AND ar.role_id = ANY (credits._roles_of(credits._actor())))
        OR credits._sees_all();
END
$$;

-- Refuses (42501) a caller bound to accounts: a tenant's role works on its
-- accounts only, and what every account shares (plans, packs, products,
-- prices) or decides who reaches which (bindings, new accounts) needs a
-- role that sees every account: a superuser or a role bound to nothing.
-- Without it, a credits_admin bound to one account could unbind itself,
-- see every account, and grant credits to all of them.
CREATE FUNCTION credits._require_unbound(p_function text) RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF NOT credits._sees_all() THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('%s needs a role bound to no account', p_function),
            DETAIL = format('Role "%s" is bound to accounts: it works on those accounts only, and %s changes what every account shares or who reaches which.',
                            credits._actor(), p_function),
            HINT = 'Call it as a credits_admin role bound to no account, or as a superuser.';
    END IF;
END
$$;

CREATE FUNCTION public.credits_account_bind(account_id text, role regrole) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_account_bind.account_id, 'account_id', 255);
BEGIN
    PERFORM credits._required(credits_account_bind.role IS NULL, 'role');
    PERFORM credits._require_unbound('credits_account_bind');
    -- A regrole can hold an OID that names no role ('-' is 0, and any
    -- number casts): such a binding would bind nothing, and credits_verify()
    -- reports it. (Unbinding takes any OID, to remove what a dropped role
    -- left behind.)
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = credits_account_bind.role::oid) THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('role with OID %s does not exist', credits_account_bind.role::oid),
            DETAIL = 'Only an existing role can be bound to an account.',
            HINT = 'Pass the role''s name, such as ''app_acme''.';
    END IF;
    PERFORM credits._lock_account(v_account);
    INSERT INTO credits.account_roles (account_id, role_id, created_at)
    VALUES (v_account, credits_account_bind.role, credits._now())
    ON CONFLICT DO NOTHING;
END
$$;

CREATE FUNCTION public.credits_account_unbind(account_id text, role regrole, last_binding boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_account_unbind.account_id, 'account_id', 255);
    v_role    name;
    v_reach   regrole[];
BEGIN
    PERFORM credits._required(credits_account_unbind.role IS NULL, 'role');
    PERFORM credits._required(credits_account_unbind.last_binding IS NULL, 'last_binding');
    PERFORM credits._require_unbound('credits_account_unbind');
    PERFORM credits._lock_account(v_account);
    -- The roles whose bindings keep the role bound: itself and the roles
    -- it is a member of (none but itself for a dropped role's OID). Their
    -- bindings are locked, after the account, in one order: two
    -- unbindings from two accounts take turns, so that the second sees
    -- the first's and both cannot remove the last.
    SELECT r.rolname INTO v_role FROM pg_catalog.pg_roles r WHERE r.oid = credits_account_unbind.role::oid;
    v_reach := credits._roles_of(v_role) || credits_account_unbind.role;
    PERFORM 1 FROM credits.account_roles ar WHERE ar.role_id = ANY (v_reach)
     ORDER BY ar.account_id, ar.role_id FOR UPDATE;
    DELETE FROM credits.account_roles WHERE account_id = v_account AND role_id = credits_account_unbind.role;
    -- A role bound to no account (itself or through a role it is a member
    -- of) sees and touches every account: removing an existing role's last
    -- binding would widen what it reaches, not narrow it, so it takes
    -- last_binding => true. (A dropped role's leftover binding goes
    -- without it.)
    IF FOUND AND NOT credits_account_unbind.last_binding AND v_role IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM credits.account_roles ar WHERE ar.role_id = ANY (v_reach)) THEN
        RAISE EXCEPTION USING ERRCODE = 'CR019',
            MESSAGE = format('account "%s" is the last one bound to role "%s"', v_account, credits_account_unbind.role),
            DETAIL = 'A role bound to no account sees and touches every account: without this binding the role would reach them all.',
            HINT = 'Bind the role to its next account first. To retire the role, revoke credits_app, credits_reader and '
                   || 'credits_admin from it, then pass last_binding => true (as to let it reach every account).';
    END IF;
END
$$;
