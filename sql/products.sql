-- The catalogue of AI products sharing an account's pool. A product is
-- registered (enabled) the first time it is reserved for; an admin can
-- disable it for everyone or for one account, and reserving for it then
-- fails with CR009.

CREATE TABLE credits.products (
    product     text PRIMARY KEY,
    enabled     boolean NOT NULL DEFAULT true,
    description text,
    created_at  timestamptz NOT NULL
);
CREATE TABLE credits.account_products (
    account_id text NOT NULL REFERENCES credits.accounts (account_id),
    product    text NOT NULL REFERENCES credits.products (product),
    enabled    boolean NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (account_id, product)
);
SELECT pg_catalog.pg_extension_config_dump('credits.products', '');
SELECT pg_catalog.pg_extension_config_dump('credits.account_products', '');
COMMENT ON TABLE credits.products IS 'AI products: registered on first use; enabled unless an admin disabled them.';
COMMENT ON TABLE credits.account_products IS 'Per-account product switches: enabled = false disables a product for one account.';
COMMENT ON COLUMN credits.products.product IS 'The AI product, as given to credits_reserve.';
COMMENT ON COLUMN credits.products.enabled IS 'false: disabled for every account (reserves fail with CR009).';
COMMENT ON COLUMN credits.products.description IS 'What the product is, for people.';
COMMENT ON COLUMN credits.products.created_at IS 'When it was registered.';
COMMENT ON COLUMN credits.account_products.account_id IS 'The account.';
COMMENT ON COLUMN credits.account_products.product IS 'The AI product.';
COMMENT ON COLUMN credits.account_products.enabled IS 'false: disabled for this account (CR009); true does not enable a product disabled for everyone.';
COMMENT ON COLUMN credits.account_products.updated_at IS 'When it was last set.';

-- Checks that a product may be used by an account, registering it on first use.
CREATE FUNCTION credits._product_allowed(p_account text, p_product text, p_now timestamptz) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_global  boolean;
    v_account boolean;
BEGIN
    SELECT p.enabled, ap.enabled INTO v_global, v_account
      FROM credits.products p
      LEFT JOIN credits.account_products ap ON ap.account_id = p_account AND ap.product = p.product
     WHERE p.product = p_product;
    IF NOT FOUND THEN
        INSERT INTO credits.products (product, created_at) VALUES (p_product, p_now) ON CONFLICT DO NOTHING;
    ELSIF NOT v_global OR NOT coalesce(v_account, true) THEN
        RAISE EXCEPTION USING ERRCODE = 'CR009',
            MESSAGE = format('product "%s" is disabled', p_product),
            DETAIL = CASE WHEN NOT v_global THEN 'An admin disabled this product for every account.'
                          ELSE format('An admin disabled this product for account "%s".', p_account) END,
            HINT = 'Enable it with credits_product_upsert(enabled => true) or credits_account_product_set().';
    END IF;
END
$$;

CREATE FUNCTION public.credits_product_upsert(product text, enabled boolean DEFAULT NULL, description text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_product text := credits._ident(credits_product_upsert.product, 'product', 255);
BEGIN
    PERFORM credits._require_unbound('credits_product_upsert');
    INSERT INTO credits.products (product, enabled, description, created_at)
    VALUES (v_product, coalesce(credits_product_upsert.enabled, true), credits_product_upsert.description, credits._now())
    ON CONFLICT (product) DO UPDATE
       SET enabled = coalesce(credits_product_upsert.enabled, credits.products.enabled),
           description = coalesce(credits_product_upsert.description, credits.products.description);
END
$$;

-- The products switched off for the account, sorted (NULL: none): what its
-- row's copy, credits.accounts.products_off, must hold. The reserve fast
-- path reads that copy on the locked row's newest version;
-- credits_account_product_set writes it under the account's lock and
-- credits_verify() checks it.
CREATE FUNCTION credits._products_off(p_account text) RETURNS text[]
LANGUAGE sql STABLE
AS $$
    SELECT array_agg(ap.product ORDER BY ap.product) FROM credits.account_products ap
     WHERE ap.account_id = p_account AND NOT ap.enabled
$$;

-- enabled => NULL removes the account's switch (the global one applies).
CREATE FUNCTION public.credits_account_product_set(account_id text, product text, enabled boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_account text := credits._ident(credits_account_product_set.account_id, 'account_id', 255);
    v_product text := credits._ident(credits_account_product_set.product, 'product', 255);
    v_now     timestamptz := credits._now();
BEGIN
    PERFORM credits._lock_account(v_account);
    INSERT INTO credits.products (product, created_at) VALUES (v_product, v_now) ON CONFLICT DO NOTHING;
    IF credits_account_product_set.enabled IS NULL THEN
        DELETE FROM credits.account_products WHERE account_id = v_account AND product = v_product;
    ELSE
        INSERT INTO credits.account_products (account_id, product, enabled, updated_at)
        VALUES (v_account, v_product, credits_account_product_set.enabled, v_now)
        ON CONFLICT (account_id, product) DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = EXCLUDED.updated_at;
    END IF;
    -- The account row's copy of its switches, which the reserve fast path
    -- reads on the locked row's newest version: a reserve that waited for
    -- this call's lock is judged by what it wrote (credits.accounts).
    UPDATE credits.accounts a SET products_off = credits._products_off(v_account) WHERE a.account_id = v_account;
END
$$;
