#!/bin/sh
# Sets up the roles PulmoScreen connects as; runs as the PostgreSQL superuser. The postgres image
# runs it once, when it initialises an empty data volume (docker-entrypoint-initdb.d). It may run
# again at any time (it changes nothing twice), e.g. on a volume created before it existed:
#   docker compose exec postgres sh /docker-entrypoint-initdb.d/10-app-role.sh
#
# APP_DB_USER (the services' login) may log in, create tables in schema public and own what its
# migrations create; it is no superuser and may not create databases or roles. pulmo_reader is
# the group role of staff who query the result views (docs/staff-sql.md); it is
# created here because the app role may not create roles.
: "${APP_DB_USER:?set APP_DB_USER}" "${APP_DB_PASSWORD:?set APP_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v app_user="$APP_DB_USER" -v app_password="$APP_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I', :'app_user')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
ALTER ROLE :"app_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE :"app_user" WITH PASSWORD :'app_password';
SELECT 'CREATE ROLE pulmo_reader NOLOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pulmo_reader') \gexec

-- PostgreSQL <= 14 lets every role create objects in schema public; 15 and later do not.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CREATE ON SCHEMA public TO :"app_user";
-- The grant options let the migration give pulmo_reader CONNECT and USAGE without a warning.
GRANT USAGE ON SCHEMA public TO :"app_user" WITH GRANT OPTION;
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I WITH GRANT OPTION',
              current_database(), :'app_user') \gexec

-- A database migrated before this script existed: its tables and views belong to the superuser;
-- hand them to the app role so the next migration may alter them.
SELECT format('ALTER %s %I.%I OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
              n.nspname, c.relname, :'app_user')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v')
  AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) \gexec
SQL
