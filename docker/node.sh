#!/bin/sh
# The entry point of the meshd image.
#
# With arguments, it runs them (the image doubles as a small busybox image for your own
# containers). Without, it is a meshd node: `meshd run` (configured by MESHD_* variables), then,
# once the node holds a subnet, MESHD_PODS demo pods (default 1) attached through meshd-cni as a
# container runtime would: a network namespace each, `/run/netns/podN`, with an HTTP server on
# port 8080 serving /www (the node's name in index.html, 4 MiB of random bytes in blob). A pod's
# address is in /run/meshd/pods/podN.
#
# Look inside a node:  docker-compose exec node1 meshd status
#                      docker-compose exec node1 nsenter --net=/run/netns/pod1 ping 10.244.2.2
set -eu
if [ $# -gt 0 ]; then
    exec "$@"
fi
export MESHD_NODE_NAME="${MESHD_NODE_NAME:-$(hostname)}"
export MESHD_CLUSTER_SECRET_FILE="${MESHD_CLUSTER_SECRET_FILE:-/etc/meshd/cluster.secret}"
pods=${MESHD_PODS:-1}

meshd run &
meshd_pid=$!
# docker stop → SIGTERM: meshd announces that it leaves, so the others withdraw its routes at once.
trap 'kill -TERM $meshd_pid 2>/dev/null || true' TERM INT

# Pods need the node's subnet (from gossip): wait for meshd's network.json.
while [ ! -s /run/meshd/network.json ]; do
    if ! kill -0 $meshd_pid 2>/dev/null; then
        status=0
        wait $meshd_pid || status=$?
        echo "meshd-node: meshd exited ($status) before the node had a subnet" >&2
        exit $status
    fi
    sleep 0.2
done

printf '%s\n' "$MESHD_NODE_NAME" > /www/index.html
head -c 4194304 /dev/urandom > /www/blob
mkdir -p /run/netns /run/meshd/pods
n=1
while [ "$n" -le "$pods" ]; do
    pod=pod$n
    touch /run/netns/$pod
    unshare --net=/run/netns/$pod true
    nsenter --net=/run/netns/$pod ip link set lo up
    conf='{"cniVersion":"1.1.0","name":"meshd","type":"meshd-cni","dataDir":"/run/meshd-cni"}'
    if ! out=$(printf '%s' "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID="$MESHD_NODE_NAME-$pod" \
        CNI_NETNS=/run/netns/$pod CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin meshd-cni); then
        echo "meshd-node: attaching $pod failed: $out" >&2
        n=$((n + 1))
        continue
    fi
    addr=$(printf '%s' "$out" | tr -d ' \n' | sed -n 's/.*"address":"\([0-9.]*\)\/.*/\1/p')
    printf '%s\n' "$addr" > /run/meshd/pods/$pod
    nsenter --net=/run/netns/$pod httpd -p 8080 -h /www
    echo "meshd-node: $pod is $addr (HTTP on port 8080)"
    n=$((n + 1))
done

status=0
wait $meshd_pid || status=$?
# A signal interrupts `wait`; wait again for meshd to finish leaving.
while kill -0 $meshd_pid 2>/dev/null; do
    wait $meshd_pid || status=$?
done
exit $status
