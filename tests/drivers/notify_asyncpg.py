"""asyncpg LISTEN/NOTIFY through pgsluice in transaction mode, run by tests/it/notify.rs.

asyncpg's add_listener prepares and executes `LISTEN` in the extended protocol. CLIENTS
connections add a listener on one channel, a separate connection sends COUNT notifications,
and every listener must receive every one of them in order. Each listener also runs a query
while listening (LISTEN does not pin), and one removes its listener half-way to check that
UNLISTEN stops delivery to it.

Usage: notify_asyncpg.py DSN CLIENTS COUNT
Exit status 0 with one summary line when everything matched; otherwise failures go to stderr.
"""

import asyncio
import sys

import asyncpg

CHANNEL = "apg_jobs"


async def main(dsn, clients, count):
    conns = [await asyncpg.connect(dsn, statement_cache_size=100) for _ in range(clients)]
    received = [[] for _ in conns]
    done = asyncio.Event()

    def callback_for(i):
        def cb(_conn, _pid, channel, payload):
            if channel == CHANNEL:
                received[i].append(payload)
            if all(len(r) >= count for r in received[1:]):
                done.set()

        return cb

    callbacks = [callback_for(i) for i in range(len(conns))]
    for i, c in enumerate(conns):
        await asyncio.wait_for(c.add_listener(CHANNEL, callbacks[i]), 20)
        assert await asyncio.wait_for(c.fetchval("select $1::int + 1", i), 20) == i + 1
    print(f"{len(conns)} listening", file=sys.stderr, flush=True)
    sender = await asyncpg.connect(dsn)
    half = count // 2
    for k in range(count):
        if k == half:
            # Once it has the first half (asyncpg drops what arrives after the callback is
            # removed): its last callback goes, and asyncpg sends UNLISTEN.
            for _ in range(600):
                if len(received[0]) >= half:
                    break
                await asyncio.sleep(0.05)
            await conns[0].remove_listener(CHANNEL, callbacks[0])
        await sender.execute("select pg_notify($1, $2)", CHANNEL, str(k))
    try:
        await asyncio.wait_for(done.wait(), 60)
    except asyncio.TimeoutError:
        pass
    await asyncio.sleep(0.3)
    errors = []
    want = [str(k) for k in range(count)]
    for i, got in enumerate(received):
        expected = want[:half] if i == 0 else want
        if got != expected:
            errors.append(f"listener {i}: got {got[:5]}... ({len(got)}), want {len(expected)} in order")
    for c in conns + [sender]:
        await c.close()
    if errors:
        print("\n".join(errors[:20]), file=sys.stderr)
        sys.exit(1)
    print(f"listeners={clients} notifications={count} errors=0")


asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
