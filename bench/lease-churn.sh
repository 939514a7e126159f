#!/bin/bash
# Three dingd nodes of 64 partitions on their own redis-server, idle for
# SECONDS, then what each says of its Redis pool and how many leases it
# lost (bench/RESULTS.md, "Leases lost to a starved Redis pool").
# Loopback only; leaves its files in OUTDIR.
# usage: bench/lease-churn.sh DINGD SECONDS OUTDIR
BIN=$1; SECS=$2; OUT=$3
rm -rf $OUT; mkdir -p $OUT
PORT=$((20000 + RANDOM % 10000))
redis-server --port $PORT --bind 127.0.0.1 --save "" --appendonly no --dir $OUT --logfile $OUT/redis.log --daemonize no &
RPID=$!
sleep 0.5
export DING_CLUSTER_SECRET=churn
i=0; PIDS=""
for id in a b c; do
  s=$((PORT+10+i*3)); h=$((s+1)); w=$((s+2))
  $BIN --data $OUT/$id --listen 127.0.0.1:$s --http 127.0.0.1:$h --node-id $id --cluster redis://127.0.0.1:$PORT --advertise http://127.0.0.1:$h --partitions 64 --log-level warn 2> $OUT/$id.log &
  PIDS="$PIDS $!"
  i=$((i+1))
  if [ $id = a ]; then sleep 12; fi
done
sleep $SECS
i=0
for id in a b c; do
  h=$((PORT+10+i*3+1)); i=$((i+1))
  m=$(curl -s http://127.0.0.1:$h/metrics)
  echo "$id: pool_timeouts $(echo "$m" | awk '/^ding_redis_pool_timeouts_total/ {print $2}') pool_wait_s $(echo "$m" | awk '/^ding_redis_pool_wait_seconds_total/ {print $2}') conns $(echo "$m" | awk '/^ding_redis_pool_connections\{state="total"\}/ {print $2}') owners $(echo "$m" | grep -c 'ding_cluster_member_state{partition="[0-9a-z]*",state="owner"} 1')"
done
for p in $PIDS; do kill -TERM $p; done
sleep 5
for p in $PIDS; do kill -9 $p 2>/dev/null; done
kill $RPID
for id in a b c; do
  echo "$id: renew-failed $(grep -c 'renewing the lease failed' $OUT/$id.log) lost $(grep -c "lost the partition's lease" $OUT/$id.log) gone $(grep -c 'the lease is gone' $OUT/$id.log)"
done
