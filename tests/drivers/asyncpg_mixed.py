"""asyncpg driver-fidelity check, run by tests/it/drivers.rs through pgsluice.

asyncpg runs every query as a named prepared statement (its per-connection statement cache), so
a transaction-mode pooler has to make those names work on whichever server connection a later
transaction lands on. TASKS concurrent tasks, one connection each, run ROUNDS rounds of a mix of
parameterised fetch/fetchrow/fetchval over many types, executemany, explicit transactions with
reads of their own writes, savepoints, a cursor, COPY, and deliberate errors (inside and outside
transactions) after which the connection must go on working. Every answer is checked.

Usage: asyncpg_mixed.py DSN [TASKS [ROUNDS]]   (DSN: a postgresql:// URI; defaults 100 and 5)

Exit status 0 with one summary line on stdout when everything matched; otherwise the failures go
to stderr and the exit status is 1. Tasks still running after DEADLINE_S count as failures, with
the statement each was waiting for.
"""

import asyncio
import collections
import datetime
import decimal
import json
import os
import sys
import traceback
import uuid

import asyncpg

from checks import Mismatch, check, one_line

# The tasks must be done by then; tests/it/drivers.rs kills the script 30 s later.
DEADLINE_S = 90

TYPES_SQL = (
    "select $1::int as i, $2::text as s, $3::numeric * 2 as n,"
    " $4::timestamptz + interval '1 day' as ts, $5::jsonb as j, $6::int[] as a,"
    " null::text as nul, $7::bytea as b, $8::bigint as big, $9::bool as flag,"
    " $10::float8 / 2 as f"
)


class Session:
    """One task's asyncpg connection: counts the statements it runs and remembers the current
    one (`step`), which is reported if the task is still running at the deadline."""

    def __init__(self):
        self.conn = None
        self.queries = 0
        self.expected_errors = 0
        self.step = "connect"

    def mark(self, step, queries=1):
        self.step = step
        self.queries += queries

    async def val(self, sql, *args):
        self.mark(f"fetchval {sql}")
        return await self.conn.fetchval(sql, *args)

    async def row(self, sql, *args):
        self.mark(f"fetchrow {sql}")
        return await self.conn.fetchrow(sql, *args)

    async def rows(self, sql, *args):
        self.mark(f"fetch {sql}")
        return await self.conn.fetch(sql, *args)

    async def execute(self, sql, *args):
        self.mark(f"execute {sql}")
        return await self.conn.execute(sql, *args)

    async def many(self, sql, args):
        self.mark(f"executemany {sql}", len(args))
        return await self.conn.executemany(sql, args)

    async def fails(self, what, exc_type, coro):
        """Awaits `coro` (a counted query), which must raise `exc_type`."""
        try:
            await coro
        except exc_type:
            self.expected_errors += 1
            return
        raise Mismatch(f"{what}: expected {exc_type.__name__}, got success")


async def run_task(dsn, table, t, rounds, s):
    conn = s.conn = await asyncpg.connect(dsn, timeout=60, command_timeout=60)
    try:
        ins = f"insert into {table} (task, round, seq, note, amount) values ($1, $2, $3, $4, $5)"
        count_round = f"select count(*) from {table} where task = $1 and round = $2"
        # An explicit prepared statement, reused in every round and transaction below.
        s.mark("prepare select $1::int * $2::int")
        mul = await conn.prepare("select $1::int * $2::int")
        for r in range(rounds):
            k = t * 1000 + r
            check("int sum", await s.val("select $1::int + $2::int", t, r), t + r)
            check("text", await s.val("select 'task ' || $1::text", str(t)), f"task {t}")
            check("null param", await s.val("select $1::text is null", None), True)

            when = datetime.datetime(2024, 1, 1 + t % 28, r, 30, tzinfo=datetime.timezone.utc)
            doc = {"task": t, "round": r, "tags": ["a", "b"], "nested": {"k": k}}
            amount = decimal.Decimal(f"{t}.{r:02d}")
            blob = b"\x00\xff" + bytes([t % 256, r])
            row = await s.row(TYPES_SQL, k, f"t{t}", amount, when, json.dumps(doc), [t, r, k], blob,
                              k * 10**10, t % 2 == 0, 1.5 * k)
            check("types.i", row["i"], k)
            check("types.s", row["s"], f"t{t}")
            check("types.n", row["n"], amount * 2)
            check("types.ts", row["ts"], when + datetime.timedelta(days=1))
            check("types.j", json.loads(row["j"]), doc)
            check("types.a", row["a"], [t, r, k])
            check("types.nul", row["nul"], None)
            check("types.b", row["b"], blob)
            check("types.big", row["big"], k * 10**10)
            check("types.flag", row["flag"], t % 2 == 0)
            check("types.f", row["f"], 0.75 * k)

            n = 20 + t % 7
            rows = await s.rows(
                "select g, g * $2::int as m, repeat('x', g) as s from generate_series(1, $1::int) g", n, t)
            check("fetch rows", [(x["g"], x["m"], x["s"]) for x in rows],
                  [(g, g * t, "x" * g) for g in range(1, n + 1)])
            check("fetch no rows", await s.rows("select 1 where $1::int < 0", t), [])

            await s.many(ins, [(t, r, i, f"n{t}-{r}-{i}", decimal.Decimal(i) / 4) for i in range(10)])
            check("executemany count", await s.val(count_round, t, r), 10)
            s.mark("prepared statement fetchval")
            check("prepared mul", await mul.fetchval(t, r), t * r)

            s.mark("begin")
            async with conn.transaction():
                await s.execute(ins, t, r, 100, "tx", decimal.Decimal("1.25"))
                check("own write", await s.val(
                    f"select note from {table} where task = $1 and round = $2 and seq = 100", t, r), "tx")
                check("own count", await s.val(count_round, t, r), 11)
                pid = await s.val("select pg_backend_pid()")
                await s.execute(
                    f"update {table} set amount = amount + $3 where task = $1 and round = $2 and seq = 100",
                    t, r, decimal.Decimal("0.5"))
                check("own update", await s.val(
                    f"select amount from {table} where task = $1 and round = $2 and seq = 100", t, r),
                    decimal.Decimal("1.75"))
                check("same server in transaction", await s.val("select pg_backend_pid()"), pid)
                s.mark("prepared statement fetchval in transaction")
                check("prepared mul in tx", await mul.fetchval(r, 3), r * 3)
                # A failing savepoint rolls back only its own work.
                try:
                    s.mark("savepoint")
                    async with conn.transaction():
                        await s.execute(ins, t, r, 101, "savepoint", 0)
                        await s.val("select 1 / $1::int", 0)
                except asyncpg.DivisionByZeroError:
                    s.expected_errors += 1
                else:
                    raise Mismatch("division by zero in a savepoint did not fail")
                check("savepoint rolled back", await s.val(count_round, t, r), 11)
                total = 0
                s.mark("cursor")
                async for rec in conn.cursor("select g from generate_series(1, $1::int) g", 300 + t, prefetch=50):
                    total += rec["g"]
                check("cursor sum", total, (300 + t) * (301 + t) // 2)

            # An error inside a transaction rolls all of it back; the connection goes on.
            try:
                s.mark("begin")
                async with conn.transaction():
                    await s.execute(ins, t, r, 200, "dup", 0)
                    await s.execute(ins, t, r, 200, "dup", 0)
            except asyncpg.UniqueViolationError:
                s.expected_errors += 1
            else:
                raise Mismatch("duplicate key did not fail")
            check("failed transaction rolled back", await s.val(count_round, t, r), 11)

            # Manual transaction: error, then the aborted-transaction error, then ROLLBACK.
            tr = conn.transaction()
            s.mark("begin")
            await tr.start()
            await s.execute(ins, t, r, 300, "lost", 0)
            await s.fails("div by zero", asyncpg.DivisionByZeroError, s.val("select $1::int / 0", k))
            await s.fails("in failed tx", asyncpg.InFailedSQLTransactionError, s.val("select $1::int", k))
            s.mark("rollback")
            await tr.rollback()
            check("after rollback", await s.val(count_round, t, r), 11)

            # An error outside any transaction, from a named statement.
            await s.fails("bad int", asyncpg.InvalidTextRepresentationError,
                          s.val("select ($1::text)::int", f"not a number {t}"))
            check("after error", await s.val("select $1::int + $2::int", k, 1), k + 1)

        records = [(t, -1, i, f"copy{i}", decimal.Decimal(i)) for i in range(5)]
        s.mark("copy_records_to_table")
        await conn.copy_records_to_table(table, records=records,
                                         columns=["task", "round", "seq", "note", "amount"])
        check("copy count", await s.val(count_round, t, -1), 5)
        check("rows of task", await s.val(f"select count(*) from {table} where task = $1", t), rounds * 11 + 5)
        expected_sum = rounds * (sum(decimal.Decimal(i) / 4 for i in range(10)) + decimal.Decimal("1.75")) + 10
        check("sum of task", await s.val(f"select sum(amount) from {table} where task = $1", t), expected_sum)
        s.step = "done"
    finally:
        await conn.close(timeout=10)


async def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    dsn = sys.argv[1]
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    table = f"asyncpg_mixed_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    setup = await asyncpg.connect(dsn, timeout=60, command_timeout=60)
    await setup.execute(
        f"create table if not exists {table} (task int, round int, seq int, note text, amount numeric,"
        " primary key (task, round, seq))")

    sessions = [Session() for _ in range(tasks)]
    running = [asyncio.create_task(run_task(dsn, table, t, rounds, sessions[t])) for t in range(tasks)]
    _, pending = await asyncio.wait(running, timeout=DEADLINE_S)
    if pending:
        stuck = [t for t, task in enumerate(running) if task in pending]
        print(f"asyncpg_mixed: {len(stuck)} of {tasks} tasks still running after {DEADLINE_S} s; "
              "what they were doing:", file=sys.stderr)
        for step, count in collections.Counter(sessions[t].step for t in stuck).most_common(20):
            print(f"  {count} tasks at: {step}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)  # not asyncio.run's cleanup, which would wait for the stuck tasks

    failures = [(t, task.exception()) for t, task in enumerate(running) if task.exception()]
    for t, exc in failures[:5]:
        print(f"task {t} failed at {sessions[t].step!r}:", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
    if failures:
        kinds = sorted({one_line(e) for _, e in failures})
        print(f"asyncpg_mixed: {len(failures)} of {tasks} tasks failed; "
              f"distinct errors (first 20 of {len(kinds)}):", file=sys.stderr)
        for kind in kinds[:20]:
            print(f"  {kind}", file=sys.stderr)
        await setup.close(timeout=10)
        sys.exit(1)

    total = await setup.fetchval(f"select count(*) from {table}")
    check("table rows", total, tasks * (rounds * 11 + 5))
    await setup.execute(f"drop table {table}")
    await setup.close(timeout=10)
    queries = sum(x.queries for x in sessions)
    expected_errors = sum(x.expected_errors for x in sessions)
    print(f"asyncpg_mixed: tasks={tasks} rounds={rounds} queries={queries} "
          f"expected_errors={expected_errors} errors=0")

if __name__ == "__main__":
    asyncio.run(main())
