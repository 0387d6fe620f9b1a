-- The schema of every table, view and internal function (src/lib.rs also
-- declares it, for the Rust functions), and the three roles of the security
-- model. Roles are cluster-wide, so they are created only if missing and
-- survive DROP EXTENSION.
CREATE SCHEMA credits;

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'credits_admin') THEN
        CREATE ROLE credits_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'credits_app') THEN
        CREATE ROLE credits_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'credits_reader') THEN
        CREATE ROLE credits_reader NOLOGIN;
    END IF;
END
$roles$;
