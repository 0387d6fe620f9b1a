\ir helpers.inc
SELECT plan(36);

SELECT credits_plan_upsert(plan_id => 'pro', allocation => 100, reset => 'calendar_month');
SELECT credits_account_upsert(account_id => 'acme', plan_id => 'pro');
SELECT credits_account_upsert(account_id => 'beta', plan_id => 'pro');

-- Products: registered on first use, disabled globally or per account.
SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'translations');
SELECT is((SELECT enabled FROM credits.products WHERE product = 'translations'), true, 'a new product is registered, enabled');
SELECT credits_account_product_set(account_id => 'acme', product => 'seo', enabled => false);
SELECT pg_temp.state() AS before \gset
SELECT is(pg_temp.error_fields($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'seo')$$),
          ARRAY['CR009', 'product "seo" is disabled', 'An admin disabled this product for account "acme".',
                'Enable it with credits_product_upsert(enabled => true) or credits_account_product_set().'],
          'a product disabled for an account cannot be reserved for, and the DETAIL says for whom');
SELECT is(pg_temp.state(), :'before', 'and nothing is left behind');
SELECT lives_ok($$SELECT credits_reserve(account_id => 'beta', amount => 1, product => 'seo')$$, 'other accounts still can');
SELECT credits_product_upsert(product => 'translations', enabled => false);
SELECT is(pg_temp.error_fields($$SELECT credits_reserve(account_id => 'beta', amount => 1, product => 'translations')$$),
          ARRAY['CR009', 'product "translations" is disabled', 'An admin disabled this product for every account.',
                'Enable it with credits_product_upsert(enabled => true) or credits_account_product_set().'],
          'a product disabled for everyone cannot be reserved for, and the DETAIL says so');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'translations', idempotency_key => 'k')$$,
                 'CR009', NULL, 'also on the general path');
SELECT credits_account_product_set(account_id => 'beta', product => 'translations', enabled => true);
SELECT throws_ok($$SELECT credits_reserve(account_id => 'beta', amount => 1, product => 'translations')$$, 'CR009', NULL,
                 'an account''s switch on does not override a product disabled for everyone');
SELECT credits_account_product_set(account_id => 'beta', product => 'translations', enabled => NULL);
SELECT credits_product_upsert(product => 'translations', enabled => true);
SELECT credits_account_product_set(account_id => 'acme', product => 'seo', enabled => NULL);
SELECT lives_ok($$SELECT credits_reserve(account_id => 'acme', amount => 1, product => 'seo')$$, 're-enabled products work again');
-- The account row carries a copy of its switched-off products, which the
-- reserve fast path reads on the locked row (concurrency.rs).
SELECT credits_account_product_set(account_id => 'beta', product => 'seo', enabled => false);
SELECT credits_account_product_set(account_id => 'beta', product => 'editor', enabled => false);
SELECT credits_account_product_set(account_id => 'beta', product => 'images', enabled => true);
SELECT is((SELECT products_off FROM credits.accounts WHERE account_id = 'beta'), '{editor,seo}'::text[],
          'the account row names the products switched off for it, sorted');
SELECT credits_account_product_set(account_id => 'beta', product => 'seo', enabled => true);
SELECT credits_account_product_set(account_id => 'beta', product => 'editor', enabled => NULL);
SELECT is((SELECT products_off FROM credits.accounts WHERE account_id = 'beta'), NULL,
          'and none once they are switched on again or their switch is removed');
SELECT credits_account_product_set(account_id => 'beta', product => 'images', enabled => NULL);
-- Removing one switch leaves the account's others and other accounts' switches.
SELECT credits_account_product_set(account_id => a, product => p, enabled => false)
  FROM unnest(ARRAY['acme', 'beta']) a, unnest(ARRAY['seo', 'editor']) p;
SELECT credits_account_product_set(account_id => 'beta', product => 'seo', enabled => NULL);
SELECT results_eq($$SELECT account_id, product FROM credits.account_products ORDER BY 1, 2$$,
                  $$VALUES ('acme', 'editor'), ('acme', 'seo'), ('beta', 'editor')$$,
                  'removing an account''s switch of a product removes that one only');
SELECT credits_account_product_set(account_id => a, product => p, enabled => NULL)
  FROM unnest(ARRAY['acme', 'beta']) a, unnest(ARRAY['seo', 'editor']) p;

-- Zero is a price, a pack's price and an overage rate: free actions, free
-- packs, overage not billed.
SELECT credits_price_upsert(product => 'images', action => 'preview', unit => 'image', price => 0);
SELECT is(credits_quote(product => 'images', action => 'preview', images => 3), 0::numeric, 'a free action quotes 0');
SELECT credits_pack_upsert(pack_id => 'gift', credits => 10, price => 0);
SELECT credits_purchase(account_id => 'beta', pack => 'gift', payment_ref => 'gift-1');
SELECT is((SELECT trim_scale(price) FROM credits.purchases WHERE account_id = 'beta' AND payment_ref = 'gift-1'), 0::numeric,
          'a free pack is bought for 0');
SELECT lives_ok($$SELECT credits_plan_upsert(plan_id => 'unbilled', allocation => 10, limit_mode => 'soft', soft_limit => 5,
                                             overage_rate => 0)$$, 'a soft plan may bill its overage at 0');
-- Prices and cost previews.
SELECT credits_price_upsert(product => 'images', action => 'generate', unit => 'image', price => 25);
SELECT credits_price_upsert(product => 'editor', action => 'rewrite', unit => 'call', price => 0.5);
SELECT credits_price_upsert(product => 'editor', action => 'rewrite', unit => 'input_tokens_1k', price => 1);
SELECT credits_price_upsert(product => 'editor', action => 'rewrite', unit => 'output_tokens_1k', price => 3);
SELECT credits_price_upsert(product => 'editor', action => 'rewrite', unit => 'output_tokens_1k', price => 6, tier => 'premium');
SELECT is(credits_quote(product => 'images', action => 'generate', images => 2), 50::numeric, 'an image costs 25');
SELECT is(credits_quote(product => 'editor', action => 'rewrite', input_tokens => 1500, output_tokens => 700),
          4.1::numeric, 'per call + per 1k tokens: 0.5 + 1.5 + 2.1, exactly');
SELECT is(credits_quote(product => 'editor', action => 'rewrite', tier => 'premium', output_tokens => 1000), 6::numeric,
          'model tiers have their own prices');
SELECT is(credits_quote(product => 'editor', action => 'rewrite', calls => 1, input_tokens => 1, output_tokens => 0),
          0.501::numeric, 'exact numeric, rounded up to the micro-credit only when needed');
SELECT is(credits_quote(product => 'editor', action => 'rewrite', calls => 0, input_tokens => 2000), 2::numeric,
          'calls => 0 quotes the tokens alone');
SELECT throws_ok($$SELECT credits_quote(product => 'editor', action => 'summarize')$$, 'CR015', NULL, 'no price: CR015');
SELECT throws_ok($$SELECT credits_quote(product => 'images', action => 'generate', images => 99999999999999)$$, '22003',
                 'the quote of 2499999999999975 credits is out of range', 'a quote no amount can hold: 22003');
SELECT throws_ok($$SELECT credits_quote(product => 'images', action => 'generate', images => -1)$$, '22023', NULL,
                 'negative quantities are refused');
SELECT is(credits_commit(credits_reserve(account_id => 'acme',
                                         amount => credits_quote(product => 'images', action => 'generate', images => 1),
                                         product => 'images', action => 'generate')), 25::numeric,
          'a reserve can be made from a quote');
SELECT throws_ok($$SELECT credits_price_upsert(product => 'images', action => 'generate', unit => 'pixel', price => 1)$$,
                 '22023', NULL, 'unknown units are refused');

-- Temporary overrides and trials.
SELECT credits_account_upsert(account_id => 'beta', limit_mode => 'soft', soft_limit => 50,
                              override_until => '2026-03-12 00:00+00');
SELECT is(credits_balance('beta') #>> '{summary,limit_mode}', 'soft', 'the override is in force');
SELECT is(credits_balance('beta') #>> '{summary,override_until}', '2026-03-12T00:00:00.000000Z', 'and says until when');
SELECT lives_ok($$SELECT credits_reserve(account_id => 'beta', amount => 120, product => 'editor', ttl => '30 days')$$,
                'overage while it lasts');
SET LOCAL credits.now = '2026-03-12 00:00:00+00';
SELECT is(credits_balance('beta') #>> '{summary,limit_mode}', 'hard', 'at its end the plan''s limit is back');
SELECT is(credits_balance('beta') #>> '{summary,override_until}', NULL, 'and no override is shown');
SELECT throws_ok($$SELECT credits_reserve(account_id => 'beta', amount => 2, product => 'editor')$$, 'CR001', NULL,
                 'and enforced');
SELECT credits_grant(account_id => 'beta', amount => 30, kind => 'promo', expires_at => '2026-03-20 00:00+00');
SELECT lives_ok($$SELECT credits_reserve(account_id => 'beta', amount => 30, product => 'editor')$$, 'a trial credit is usable');
-- An override that has ended is forgotten: a new one given without an end
-- has none, and takes nothing from the old one.
SELECT credits_account_upsert(account_id => 'beta', soft_limit => 40);
SELECT is(credits_balance('beta') #>> '{summary,limit_mode}', 'hard', 'a soft_limit alone does not bring the ended soft mode back');
SELECT credits_account_upsert(account_id => 'beta', limit_mode => 'soft');
SELECT is(credits_balance('beta') #>> '{summary,limit_mode}', 'soft', 'a new override after the old one ended is in force');
SELECT is(credits_balance('beta') #>> '{summary,override_until}', NULL, 'without end');
SELECT is(credits_balance('beta') #>> '{summary,soft_limit}', '40', 'with the soft_limit given since');
SELECT is_empty('SELECT * FROM credits_verify()', 'credits_verify() is empty');

SELECT * FROM finish();
ROLLBACK;
