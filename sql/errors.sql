-- The extension's errors: the function that refuses a call raises the
-- error itself, RAISE EXCEPTION USING ERRCODE, MESSAGE, DETAIL and HINT (a
-- code of the class CR for a domain error, the standard one for bad input:
-- see the README's Errors), not through a helper: a helper called by
-- PERFORM adds its own frame and the whole text of the call, format()
-- arguments and all, to the error's CONTEXT. The helpers below are for the
-- checks that many functions share.

-- Validates an enumerated argument: 22004 for NULL, 22023 for an unknown value.
CREATE FUNCTION credits._choice(value text, name text, allowed text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004',
            MESSAGE = format('%s must not be NULL', name),
            DETAIL = format('%s is required.', name),
            HINT = format('Use one of: %s.', array_to_string(allowed, ', '));
    END IF;
    IF NOT value = ANY (allowed) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('unknown %s "%s"', name, value),
            DETAIL = format('%s must be one of: %s.', name, array_to_string(allowed, ', ')),
            HINT = format('Use one of: %s.', array_to_string(allowed, ', '));
    END IF;
    RETURN value;
END
$$;

-- Raises 22004 when a required argument is NULL.
CREATE FUNCTION credits._required(is_null boolean, name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF is_null THEN
        RAISE EXCEPTION USING ERRCODE = '22004',
            MESSAGE = format('%s must not be NULL', name),
            DETAIL = format('%s is required.', name),
            HINT = format('Pass a value for %s, or leave it out to use its default.', name);
    END IF;
END
$$;

-- Validates a metadata argument: NULL is taken as '{}', anything but a JSON
-- object is refused with 22023.
CREATE FUNCTION credits._metadata(value jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF value IS NULL THEN
        RETURN '{}';
    END IF;
    IF jsonb_typeof(value) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'metadata must be a JSON object',
            DETAIL = format('metadata is a JSON %s.', jsonb_typeof(value)),
            HINT = 'Pass an object such as {"project": "p1", "session": "s9"}.';
    END IF;
    RETURN value;
END
$$;

-- CR002, for every path that meets an account_id it does not know.
CREATE FUNCTION credits._unknown_account(p_account text) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'CR002',
        MESSAGE = format('unknown account "%s"', p_account),
        DETAIL = 'No credits account has this account_id.',
        HINT = 'Create it first with credits_account_upsert(account_id => ..., plan_id => ...).';
END
$$;
