"""psycopg 3 LISTEN/NOTIFY through pgsluice in transaction mode, run by tests/it/notify.rs.

CLIENTS connections each LISTEN on one channel (autocommit, as LISTEN is used), then a separate
connection sends COUNT notifications; every listener must receive every one of them, in order,
through `conn.notifies()`. While listening, each connection also runs a query (a pool smaller
than the number of listeners must still serve it: LISTEN does not pin).

Usage: notify_psycopg.py CONNINFO CLIENTS COUNT
Exit status 0 with one summary line when everything matched; otherwise failures go to stderr.
"""

import sys
import threading

import psycopg

conninfo, clients, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
CHANNEL = "psy_jobs"

listeners = []
for _ in range(clients):
    c = psycopg.connect(conninfo, autocommit=True)
    c.execute(f"LISTEN {CHANNEL}")
    assert c.execute("select 1").fetchone()[0] == 1
    listeners.append(c)

received = [[] for _ in listeners]
errors = []


def collect(i, conn):
    try:
        for n in conn.notifies(timeout=60, stop_after=count):
            if n.channel != CHANNEL:
                errors.append(f"listener {i}: channel {n.channel!r}")
            received[i].append(n.payload)
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(f"listener {i}: {e!r}")


threads = [threading.Thread(target=collect, args=(i, c)) for i, c in enumerate(listeners)]
for t in threads:
    t.start()

with psycopg.connect(conninfo, autocommit=True) as sender:
    for k in range(count):
        sender.execute("select pg_notify(%s, %s)", (CHANNEL, str(k)))

for t in threads:
    t.join(90)

want = [str(k) for k in range(count)]
for i, got in enumerate(received):
    if got != want:
        errors.append(f"listener {i}: got {got[:5]}... ({len(got)}), want {count} in order")
for c in listeners:
    c.close()
if errors:
    print("\n".join(errors[:20]), file=sys.stderr)
    sys.exit(1)
print(f"listeners={clients} notifications={count} errors=0")
