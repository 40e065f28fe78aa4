# Shared by the bench scripts (sourced): measurements that compare like with like. Each uses
# $secs (seconds per transfer) and, for ticks, the lab's $prefix.

# iperf3 client in namespace $1 to address $2 with $3 streams (from source address $4 if
# given); prints Gbit/s (receiver side).
iperf() {
    ip netns exec "$1" iperf3 -c "$2" -t "$secs" -P "$3" ${4:+-B "$4"} -J 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))'
}
# RTT of 100 pings at 20 a second (a low rate, as RPCs, DNS and health checks see it), from
# namespace $1 to $2 (from source address $3 if given): "min|avg|p99" in microseconds ("-|-|-"
# when none came back).
rtt() {
    { ip netns exec "$1" ping -c 100 -i 0.05 ${3:+-I "$3"} "$2" || true; } | python3 -c '
import re, sys
t = sorted(float(m.group(1)) * 1000 for m in re.finditer(r"time=([0-9.]+) ms", sys.stdin.read()))
print("%.0f|%.0f|%.0f" % (t[0], sum(t) / len(t), t[min(len(t) - 1, int(len(t) * 0.99))]) if t else "-|-|-")'
}
hz=$(getconf CLK_TCK)
# CPU ticks (user + system) of every process in the given namespaces (default: both lab hosts):
# the overlay daemons (meshd, wireguard-go, boringtun-cli); iperf3 and ping in pods are not
# counted.
ticks() {
    local t=0 pid ns nss=("$@")
    [ $# -gt 0 ] || nss=("$prefix-h1" "$prefix-h2")
    for ns in "${nss[@]}"; do
        for pid in $(ip netns pids $ns 2>/dev/null); do
            [ -r /proc/$pid/stat ] && t=$((t + $(awk '{print $14 + $15}' /proc/$pid/stat 2>/dev/null || echo 0)))
        done
    done
    echo $t
}
