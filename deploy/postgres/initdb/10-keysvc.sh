#!/bin/sh
# Run once by the postgres image, when it initialises an empty data volume.
#
# keysvc connects as the owner of its own database and never as a superuser:
# its migrations create nothing that needs more. The role's password comes from
# POSTGRES_KEYSVC_PASSWORD (compose.env); psql quotes it as a literal.
set -eu

psql --no-psqlrc --set=ON_ERROR_STOP=1 \
    --username="$POSTGRES_USER" --dbname=postgres \
    --set=keysvc_password="$POSTGRES_KEYSVC_PASSWORD" <<'SQL'
CREATE ROLE keysvc LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    PASSWORD :'keysvc_password';
CREATE DATABASE keysvc OWNER keysvc;
REVOKE ALL ON DATABASE keysvc FROM PUBLIC;
SQL
