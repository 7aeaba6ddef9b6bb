#!/bin/sh
# The cluster demo, run on the coordinator container:
#   docker compose run --rm demo
# A bank table on both segments, a cluster backup, a consistent restore
# point, an accident, a restore of the whole cluster into new directories
# (in each container, on port 6432), and a check that the data came back.
set -eu
q() { psql -X -qAt -h "$1" -U postgres -p "${2:-5432}" -c "$3"; }
for h in seg0 seg1; do
  q $h 5432 "drop table if exists accounts; create table accounts(id int primary key, balance bigint); insert into accounts select g, 1000 from generate_series(1, 1000) g;"
done
echo "== cbdr backup-push (every instance at once, through the agents)"
cbdr backup-push
echo "== cbdr create-restore-point before_accident"
cbdr create-restore-point before_accident
echo "== the accident: seg1's accounts deleted"
q seg1 5432 "delete from accounts"
echo "== cbdr list"
cbdr list
echo "== cbdr restore (into /data/restored on port 6432 of each container)"
cbdr restore-config | sed -e 's#data_dir = "/data/pg"#data_dir = "/data/restored"#' -e 's/port = 5432/port = 6432/' > /tmp/restore.toml
cbdr restore --restore-config /tmp/restore.toml --restore-point before_accident --start --rollback-prepared --force --archive-mode off
total=0
for h in seg0 seg1; do
  n=$(q $h 6432 "select sum(balance) from accounts")
  echo "$h (restored): balance $n"
  total=$((total + n))
done
if [ "$total" -eq 2000000 ]; then
  echo "OK: the restored cluster holds all 2000000"
else
  echo "FAILED: the restored cluster holds $total, not 2000000"; exit 1
fi
