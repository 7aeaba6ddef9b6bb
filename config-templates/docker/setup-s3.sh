#!/bin/sh
# Sets up the demo's one-node Garage: layout, the access key of cbdr.toml,
# the bucket. Idempotent.
set -eu
G="garage -c /etc/cbdr/garage.toml"
for i in $(seq 1 60); do
  $G status >/dev/null 2>&1 && break
  sleep 1
done
NODE=$($G node id -q | cut -d@ -f1)
if ! $G layout show | grep -q "$(echo "$NODE" | cut -c1-16)"; then
  $G layout assign -z dc1 -c 1G "$NODE"
  $G layout apply --version 1
fi
$G key info cbdr >/dev/null 2>&1 || \
  $G key import --yes -n cbdr GK0123456789abcdef01234567 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
$G bucket info cbdr >/dev/null 2>&1 || $G bucket create cbdr
$G bucket allow --read --write --owner cbdr --key cbdr
echo "S3 store ready: bucket cbdr"
