-- The schema of every table, view and internal function (src/lib.rs also
-- declares it, for the Rust functions), and the three roles of the security
-- model. Roles are cluster-wide, so they are created only if missing (also
-- when two databases create the extension at the same moment) and survive
-- DROP EXTENSION.
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
