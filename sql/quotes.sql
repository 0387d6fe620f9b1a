-- The price catalogue and cost previews. A price is a number of credits per
-- unit for a (product, action, model tier); credits_quote() adds up the
-- planned quantities exactly, without changing anything, and a reserve can
-- be made from it: credits_reserve(..., amount => credits_quote(...)).

CREATE TABLE credits.prices (
    product    text NOT NULL,
    action     text NOT NULL,
    tier       text NOT NULL,
    unit       text NOT NULL CHECK (unit IN ('call', 'input_tokens_1k', 'output_tokens_1k', 'image', 'second')),
    price      numeric(20,6) NOT NULL CHECK (price >= 0),
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (product, action, tier, unit)
);
SELECT pg_catalog.pg_extension_config_dump('credits.prices', '');
COMMENT ON TABLE credits.prices IS 'Price catalogue: credits per unit (call, 1k input/output tokens, image, second) per product, action and model tier.';
COMMENT ON COLUMN credits.prices.product IS 'The AI product.';
COMMENT ON COLUMN credits.prices.action IS 'The action.';
COMMENT ON COLUMN credits.prices.tier IS 'The model tier (default standard).';
COMMENT ON COLUMN credits.prices.unit IS 'call, input_tokens_1k, output_tokens_1k, image or second.';
COMMENT ON COLUMN credits.prices.price IS 'Credits per unit.';
COMMENT ON COLUMN credits.prices.updated_at IS 'When it was last set.';

CREATE FUNCTION public.credits_price_upsert(product text, action text, unit text, price numeric,
                                            tier text DEFAULT 'standard')
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_product text := credits._ident(credits_price_upsert.product, 'product', 255);
    v_action  text := credits._ident(credits_price_upsert.action, 'action', 255);
    v_tier    text := credits._ident(credits_price_upsert.tier, 'tier', 255);
    v_unit    text := credits._choice(credits_price_upsert.unit, 'unit',
                                      '{call,input_tokens_1k,output_tokens_1k,image,second}');
    v_price   numeric := credits._amount(credits_price_upsert.price, 'price', true);
BEGIN
    PERFORM credits._require_unbound('credits_price_upsert');
    INSERT INTO credits.prices (product, action, tier, unit, price, updated_at)
    VALUES (v_product, v_action, v_tier, v_unit, v_price, credits._now())
    ON CONFLICT (product, action, tier, unit) DO UPDATE SET price = EXCLUDED.price, updated_at = EXCLUDED.updated_at;
END
$$;

-- The credit cost of a planned action: the sum of price x quantity over the
-- units priced for (product, action, tier), tokens counted per thousand,
-- rounded up to the micro-credit so that a reserve never falls short.
CREATE FUNCTION public.credits_quote(product text, action text, tier text DEFAULT 'standard',
                                     calls numeric DEFAULT 1, input_tokens numeric DEFAULT 0,
                                     output_tokens numeric DEFAULT 0, images numeric DEFAULT 0,
                                     seconds numeric DEFAULT 0)
RETURNS numeric
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_product text := credits._ident(credits_quote.product, 'product', 255);
    v_action  text := credits._ident(credits_quote.action, 'action', 255);
    v_tier    text := credits._ident(credits_quote.tier, 'tier', 255);
    v_qty     jsonb;
    v_cost    numeric;
    v_priced  integer;
BEGIN
    v_qty := jsonb_build_object(
        'call', credits._amount(credits_quote.calls, 'calls', true),
        'input_tokens_1k', credits._amount(credits_quote.input_tokens, 'input_tokens', true) * 0.001,
        'output_tokens_1k', credits._amount(credits_quote.output_tokens, 'output_tokens', true) * 0.001,
        'image', credits._amount(credits_quote.images, 'images', true),
        'second', credits._amount(credits_quote.seconds, 'seconds', true));
    SELECT count(*), sum(p.price * (v_qty ->> p.unit)::numeric) INTO v_priced, v_cost
      FROM credits.prices p
     WHERE p.product = v_product AND p.action = v_action AND p.tier = v_tier;
    IF v_priced = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'CR015',
            MESSAGE = format('no price for product "%s", action "%s", tier "%s"', v_product, v_action, v_tier),
            DETAIL = 'The price catalogue has no entry for this action.',
            HINT = 'Add one with credits_price_upsert(product => ..., action => ..., unit => ..., price => ...).';
    END IF;
    v_cost := ceil(v_cost * 1000000) * 0.000001;
    -- No account holds more (numeric(20,6)): a reserve of it would fail
    -- with 22003 anyway.
    IF v_cost > 99999999999999.999999 THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('the quote of %s credits is out of range', trim_scale(v_cost)),
            DETAIL = 'No amount may exceed 99999999999999.999999 (numeric(20,6)).',
            HINT = 'Check the quantities and the prices of the action.';
    END IF;
    RETURN trim_scale(v_cost);
END
$$;
