-- The schema of every table, view and internal function (src/lib.rs also
-- declares it, for the Rust functions), and the three roles of the security
-- model. Roles are cluster-wide, so they are created only if missing (also
-- when two databases create the extension at the same moment) and survive
-- DROP EXTENSION.

-- The library handles names (account ids, products, keys, metadata) as
-- UTF-8 text; in a database of another encoding the first name beyond
-- ASCII failed with XX000. Refused here, before anything is made.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = 'the credits extension needs a database with UTF8 encoding',
            DETAIL = pg_catalog.format('This database''s encoding is %s; credits handles names as UTF-8 text.',
                                       pg_catalog.getdatabaseencoding()),
            HINT = 'Create the database with ENCODING ''UTF8'' (for example from template0) and install credits there.';
    END IF;
END
$encoding$;

CREATE SCHEMA credits;

DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['credits_admin', 'credits_app', 'credits_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                -- Another database created it at the same moment.
                NULL;
            END;
        END IF;
    END LOOP;
END
$roles$;
