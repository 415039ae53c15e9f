"""asyncpg across a schema change, run by tests/it/drivers.rs through pgsluice (issue 8).

CONNS asyncpg connections share a small pool. Each runs `select * from sc` a few times (asyncpg
keeps it as a named prepared statement per connection, and pgsluice shares the server copies by
text), then one connection runs `ALTER TABLE sc ADD COLUMN`, and every connection runs the same
query again, ROUNDS times. PostgreSQL answers stale copies with 0A000 "cached plan must not
change result type"; asyncpg re-prepares once by itself, so every query must succeed and return
the new column. Any exception or a row of the old shape is a failure.

Usage: asyncpg_schema_change.py DSN [CONNS [ROUNDS]]   (defaults 6 and 5)

Exit status 0 with one summary line on stdout when everything matched; else failures on stderr
and exit status 1.
"""

import asyncio
import sys

import asyncpg


async def main():
    dsn = sys.argv[1]
    conns_n = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    conns = [await asyncpg.connect(dsn) for _ in range(conns_n)]
    failures = []
    await conns[0].execute("drop table if exists sc; create table sc(a int); insert into sc values (1)")
    for c in conns:
        for _ in range(3):
            rows = await c.fetch("select * from sc")
            if list(rows[0].keys()) != ["a"]:
                failures.append(f"before: {list(rows[0].keys())}")
    await conns[0].execute("alter table sc add column b int default 2")

    async def run(i, c):
        for r in range(rounds):
            try:
                rows = await c.fetch("select * from sc")
                if list(rows[0].keys()) != ["a", "b"] or rows[0]["b"] != 2:
                    failures.append(f"conn {i} round {r}: {dict(rows[0])}")
            except Exception as e:  # noqa: BLE001 - every error is a failure here
                failures.append(f"conn {i} round {r}: {type(e).__name__}: {e}")

    await asyncio.gather(*(run(i, c) for i, c in enumerate(conns)))
    for c in conns:
        await c.close()
    if failures:
        for f in failures:
            print(f, file=sys.stderr)
        sys.exit(1)
    print(f"conns={conns_n} rounds={rounds} errors=0")


asyncio.run(main())
