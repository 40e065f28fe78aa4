"""When things happened in a NAT lab, from the daemons' own logs and status (for `relay` and
`punch`): the lab's `up` returns only once every node holds a lease and its pods exist, by which
time a pair may long be connected, so polling from then on would time nothing.

- `member_up(log, name)`: when this node first held `name` as a member (its record, alive);
- `peer_at(log, name)`: when it first knew `name`'s subnet (the member is a routed peer: links,
  WireGuard sessions, relays and punches start then; with automatic subnets a node claims one
  only after `claim-delay`, so this comes a second or more after the member);
- `ago(secs)`: the wall-clock time `secs` before now (status fields are ages).

All times are Unix seconds (the logs' timestamps are UTC).
"""
import datetime
import re
import time

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


def _first(log, pattern):
    rx = re.compile(pattern)
    with open(log) as f:
        for line in f:
            if rx.search(line):
                m = _STAMP.match(line)
                if m:
                    t = datetime.datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f")
                    return t.replace(tzinfo=datetime.timezone.utc).timestamp()
    return None


def member_up(log, name):
    return _first(log, r"INFO member up member=%s " % re.escape(name))


def peer_at(log, name):
    return _first(log, r"INFO member (up|changed) member=%s subnet=\d" % re.escape(name))


def ago(secs):
    return time.time() - secs
