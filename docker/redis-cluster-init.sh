#!/bin/sh
# Makes the compose file's six Redis nodes one Redis Cluster (three masters,
# three replicas); run by the `redis-cluster-init` service of the `cluster`
# profile at every `up`. Idempotent: when the cluster is already ok it does
# nothing. When the nodes were joined before but came back with other
# addresses (new containers), it tells every node where the others are now.
set -eu

nodes="${REDIS_CLUSTER_NODES:-redis-1:6379 redis-2:6379 redis-3:6379 redis-4:6379 redis-5:6379 redis-6:6379}"

field() { # field NODE NAME: NAME's value in NODE's CLUSTER INFO
  redis-cli -h "${1%:*}" -p "${1##*:}" cluster info | tr -d '\r' | sed -n "s/^$2://p"
}

all_ok() {
  for node in $nodes; do
    [ "$(field "$node" cluster_state)" = ok ] || return 1
  done
}

for node in $nodes; do
  tries=0
  until [ "$(redis-cli -h "${node%:*}" -p "${node##*:}" ping 2>/dev/null)" = PONG ]; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
      echo "redis-cluster-init: $node does not answer PING" >&2
      exit 1
    fi
    sleep 1
  done
done

if all_ok; then
  echo "redis-cluster-init: the Redis Cluster is ok already"
  exit 0
fi

# CLUSTER MEET (and so redis-cli --cluster create) takes IP addresses.
addrs=""
for node in $nodes; do
  # shellcheck disable=SC2046 # the first word is the address
  set -- $(getent hosts "${node%:*}")
  if [ "$#" -eq 0 ]; then
    echo "redis-cluster-init: cannot resolve ${node%:*}" >&2
    exit 1
  fi
  addrs="$addrs $1:${node##*:}"
done

first=${nodes%% *}
if [ "$(field "$first" cluster_slots_assigned)" = 0 ]; then
  echo "redis-cluster-init: creating the Redis Cluster on$addrs"
  # shellcheck disable=SC2086 # one argument per node
  redis-cli --cluster create $addrs --cluster-replicas 1 --cluster-yes
else
  echo "redis-cluster-init: joining the nodes again at$addrs"
  for node in $nodes; do
    for addr in $addrs; do
      redis-cli -h "${node%:*}" -p "${node##*:}" cluster meet "${addr%:*}" "${addr##*:}" >/dev/null
    done
  done
fi

tries=0
until all_ok; do
  tries=$((tries + 1))
  if [ "$tries" -ge 120 ]; then
    echo "redis-cluster-init: the Redis Cluster is not ok after 120 s" >&2
    for node in $nodes; do
      echo "$node: cluster_state:$(field "$node" cluster_state)" >&2
    done
    exit 1
  fi
  sleep 1
done
echo "redis-cluster-init: the Redis Cluster is ok"
