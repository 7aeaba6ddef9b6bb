#!/bin/sh
# One instance of the demo cluster: initdb on first start, archive WAL with
# cbdr, start PostgreSQL, then run this host's cbdr agent in the foreground.
# $CONTENT_ID is the instance's content id (-1: the coordinator).
set -eu
PGDATA=/data/pg
if [ ! -f "$PGDATA/PG_VERSION" ]; then
  initdb -D "$PGDATA" -U postgres --auth=trust --no-instructions >/dev/null
  cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
archive_mode = on
archive_command = 'cbdr wal-push %p --content-id $CONTENT_ID'
archive_timeout = 60
max_prepared_transactions = 20
CONF
  # A demo network: trust everyone on it. Use scram-sha-256 in production.
  echo "host all all samenet trust" >>"$PGDATA/pg_hba.conf"
  echo "host replication all samenet trust" >>"$PGDATA/pg_hba.conf"
fi
pg_ctl -D "$PGDATA" -l /data/postgres.log -w start
trap 'pg_ctl -D "$PGDATA" -m fast stop; exit 0' TERM INT
cbdr agent &
wait $!
