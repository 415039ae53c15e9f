"""psycopg 3 driver-fidelity check, run by tests/it/drivers.rs through pgsluice.

With prepare_threshold=0 psycopg prepares every statement as a named prepared statement on first
use and reuses the name afterwards. It closes the least recently used ones beyond prepared_max
(protocol-level Close) and sends DEALLOCATE ALL after a ROLLBACK or DROP. THREADS threads, each
with an autocommit connection, a transactional connection and a connection with prepared_max=4,
run ROUNDS rounds of parameterised queries repeated across autocommit statements and
transactions, deliberate errors followed by rollback, a pipeline-mode block with many statements,
and COPY in and out (text and binary). Every answer is checked.

Usage: psycopg_prepared.py DSN [THREADS [ROUNDS]]   (DSN: libpq URI or key=value string;
defaults 8 and 10)

Exit status 0 with one summary line on stdout when everything matched; otherwise the failures go
to stderr and the exit status is 1. Threads still running after DEADLINE_S count as failures, with
the statement each was waiting for and all Python stacks.
"""

import collections
import datetime
import decimal
import faulthandler
import os
import sys
import threading
import time
import traceback
import uuid

import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb

from checks import Mismatch, check, one_line


# The threads must be done by then; tests/it/drivers.rs kills the script 30 s later.
DEADLINE_S = 90


class Rollback(Exception):
    """Raised on purpose to roll a `with conn.transaction()` block back."""


class Counter:
    """One thread's statement runner: counts the statements and remembers the current one
    (`step`), which is reported if the thread is still running at the deadline."""

    def __init__(self):
        self.queries = 0
        self.expected_errors = 0
        self.step = "connect"

    def mark(self, step, queries=1):
        self.step = step
        self.queries += queries

    def one(self, conn, sql, params=None):
        self.mark(sql)
        return conn.execute(sql, params).fetchone()

    def val(self, conn, sql, params=None):
        return self.one(conn, sql, params)[0]

    def all(self, conn, sql, params=None):
        self.mark(sql)
        return conn.execute(sql, params).fetchall()

    def execute(self, conn, sql, params=None):
        self.mark(sql)
        conn.execute(sql, params)

    def commit(self, conn):
        self.mark("commit", 0)
        conn.commit()

    def rollback(self, conn):
        self.mark("rollback", 0)
        conn.rollback()

    def fails(self, what, exc_type, fn):
        """Calls `fn` (which runs one counted statement); it must raise `exc_type`."""
        try:
            fn()
        except exc_type:
            self.expected_errors += 1
            return
        raise Mismatch(f"{what}: expected {exc_type.__name__}, got success")


def connect(dsn, **kwargs):
    return psycopg.connect(dsn, prepare_threshold=0, connect_timeout=30, **kwargs)


def run_thread(dsn, table, t, rounds, c):
    ins = f"insert into {table} (thread, round, seq, note) values (%s, %s, %s, %s)"
    count_round = f"select count(*) from {table} where thread = %s and round = %s"
    with connect(dsn, autocommit=True) as ac, connect(dsn) as tx, connect(dsn, autocommit=True) as churn:
        churn.prepared_max = 4
        for r in range(rounds):
            k = t * 1000 + r

            # Autocommit statements: prepared on first use, the same names reused every round.
            check("sum", c.val(ac, "select %s::int + %s::int", (t, r)), t + r)
            check("text", c.val(ac, "select 'thread ' || %s::text", (str(t),)), f"thread {t}")
            when = datetime.datetime(2024, 2, 1 + t % 28, r % 24, 15, tzinfo=datetime.timezone.utc)
            doc = {"thread": t, "round": r, "list": [1, 2, 3]}
            amount = decimal.Decimal(f"{k}.25")
            blob = bytes([0, 255, t % 256, r % 256])
            row = c.one(ac, "select %s::int, %s::text, %s::numeric * 2, %s::timestamptz + interval '1 hour',"
                            " %s::jsonb, %s::int[], null::int, %s::bytea, %s::bool",
                        (k, f"t{t}", amount, when, Jsonb(doc), [t, r], blob, r % 2 == 1))
            check("types", row, (k, f"t{t}", amount * 2, when + datetime.timedelta(hours=1), doc, [t, r], None,
                                 blob, r % 2 == 1))
            rows = c.all(ac, "select g, g * %s::int from generate_series(1, %s::int) g", (k, 10 + t))
            check("rows", rows, [(g, g * k) for g in range(1, 11 + t)])
            c.execute(ac, ins, (t, r, 0, "autocommit"))
            check("autocommit insert visible", c.val(tx, count_round, (t, r)), 1)
            c.commit(tx)  # the read above opened a transaction on tx

            # Explicit transaction: reads of its own writes, same server throughout. (No statement
            # on another connection of this thread meanwhile: in transaction mode that waits for a
            # server while this transaction holds one, a deadlock once all threads do it.)
            with tx.transaction():
                pid = c.val(tx, "select pg_backend_pid()")
                for i in range(1, 6):
                    c.execute(tx, ins, (t, r, i, f"tx{i}"))
                check("own writes", c.val(tx, count_round, (t, r)), 6)
                check("own note", c.val(tx, f"select note from {table} where thread = %s and round = %s and seq = %s",
                                        (t, r, 3)), "tx3")
                check("same server", c.val(tx, "select pg_backend_pid()"), pid)
            check("committed", c.val(ac, count_round, (t, r)), 6)

            # Implicit transaction (autocommit off) committed by hand.
            c.execute(tx, ins, (t, r, 10, "implicit"))
            check("implicit own write", c.val(tx, count_round, (t, r)), 7)
            c.commit(tx)

            # Errors inside transactions roll back; the connection goes on (psycopg then sends
            # DEALLOCATE ALL and prepares again).
            try:
                with tx.transaction():
                    c.execute(tx, ins, (t, r, 20, "dup"))
                    c.execute(tx, ins, (t, r, 20, "dup"))
            except errors.UniqueViolation:
                c.expected_errors += 1
            else:
                raise Mismatch("duplicate key did not fail")
            c.execute(tx, ins, (t, r, 21, "lost"))
            c.fails("div by zero", errors.DivisionByZero, lambda: c.val(tx, "select 1 / %s::int", (0,)))
            c.fails("in failed tx", errors.InFailedSqlTransaction, lambda: c.val(tx, "select %s::int", (k,)))
            c.rollback(tx)
            check("rolled back", c.val(ac, count_round, (t, r)), 7)
            check("after rollback", c.val(tx, "select %s::int + %s::int", (t, r)), t + r)
            c.commit(tx)
            # An error in autocommit mode.
            c.fails("bad int", errors.InvalidTextRepresentation, lambda: c.val(ac, "select %s::text::int", ("x",)))
            check("after error", c.val(ac, "select %s::int + %s::int", (k, 1)), k + 1)

            # More distinct statements than prepared_max: psycopg closes the oldest ones.
            for j in range(10):
                check("churn", c.val(churn, f"select %s::int + {j}", (k,)), k + j)

            # Pipeline mode: many statements sent before any result is read.
            c.mark("pipeline on the autocommit connection", 71)
            with ac.pipeline():
                curs = []
                for i in range(40):
                    cur = ac.cursor()
                    cur.execute("select %s::int * %s::int", (i, k))
                    curs.append((i, cur))
                with ac.cursor() as cur:
                    cur.executemany(ins, [(t, r, 100 + i, f"pipe{i}") for i in range(30)])
                cnt = ac.cursor()
                cnt.execute(count_round, (t, r))
            for i, cur in curs:
                check("pipelined answer", cur.fetchone(), (i * k,))
            check("pipelined count", cnt.fetchone(), (37,))
            # A pipeline inside a transaction on the transactional connection.
            c.mark("pipeline in a transaction", 11)
            with tx.pipeline(), tx.transaction():
                for i in range(10):
                    tx.execute(ins, (t, r, 200 + i, f"txpipe{i}"))
                cnt = tx.execute(count_round, (t, r))
            check("pipelined tx count", cnt.fetchone(), (47,))

            # COPY in and out, text and binary.
            with ac.cursor() as cur:
                c.mark("copy from stdin")
                with cur.copy(f"copy {table} (thread, round, seq, note) from stdin") as cp:
                    for i in range(100):
                        cp.write_row((t, r, 1000 + i, f"copy\t{i}"))
                c.mark("copy from stdin (format binary)")
                with cur.copy(f"copy {table} (thread, round, seq, note) from stdin (format binary)") as cp:
                    cp.set_types(["int4", "int4", "int4", "text"])
                    for i in range(100):
                        cp.write_row((t, r, 2000 + i, f"bin {i}"))
                check("copied count", c.val(ac, count_round, (t, r)), 247)
                out_sql = (f"copy (select seq, note from {table} where thread = {t} and round = {r}"
                           " and seq >= 1000 order by seq) to stdout")
                c.mark("copy to stdout")
                with cur.copy(out_sql) as cp:
                    got = list(cp.rows())
                check("copy out text", got, [(str(1000 + i), f"copy\t{i}") for i in range(100)]
                      + [(str(2000 + i), f"bin {i}") for i in range(100)])
                c.mark("copy to stdout (format binary)")
                with cur.copy(out_sql + " with (format binary)") as cp:
                    cp.set_types(["int4", "text"])
                    got = list(cp.rows())
                check("copy out binary", got[:2] + got[-1:], [(1000, "copy\t0"), (1001, "copy\t1"), (2099, "bin 99")])
            # COPY in a transaction that is then rolled back.
            try:
                c.mark("copy from stdin in a transaction")
                with tx.transaction():
                    with tx.cursor() as cur, cur.copy(f"copy {table} (thread, round, seq) from stdin") as cp:
                        for i in range(10):
                            cp.write_row((t, r, 3000 + i))
                    check("copy in tx", c.val(tx, count_round, (t, r)), 257)
                    raise Rollback
            except Rollback:
                pass
            check("copy rolled back", c.val(ac, count_round, (t, r)), 247)

        check("rows of thread", c.val(tx, f"select count(*) from {table} where thread = %s", (t,)), rounds * 247)
        c.commit(tx)
        # psycopg really did prepare (private API, pinned version): names known per connection.
        for name, conn in (("autocommit", ac), ("transactional", tx), ("churn", churn)):
            prepared = len(conn._prepared._names)
            if not 0 < prepared <= conn.prepared_max:
                raise Mismatch(f"{name} connection has {prepared} prepared statements")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    dsn = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    table = f"psycopg_prepared_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with connect(dsn, autocommit=True) as setup:
        setup.execute(f"create table if not exists {table} (thread int, round int, seq int, note text,"
                      " primary key (thread, round, seq))")

    counters = [Counter() for _ in range(threads)]
    failures = {}

    def worker(t):
        try:
            run_thread(dsn, table, t, rounds, counters[t])
        except BaseException as exc:  # reported below, with its traceback
            failures[t] = exc

    workers = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + DEADLINE_S
    for w in workers:
        w.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [t for t, w in enumerate(workers) if w.is_alive()]
    if stuck:
        print(f"psycopg_prepared: {len(stuck)} of {threads} threads still running after {DEADLINE_S} s; "
              "what they were doing:", file=sys.stderr)
        for step, count in collections.Counter(counters[t].step for t in stuck).most_common(20):
            print(f"  {count} threads at: {step}", file=sys.stderr)
        print("Python stacks:", file=sys.stderr)
        sys.stderr.flush()
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)  # the stuck threads would keep the interpreter from exiting

    for t, exc in sorted(failures.items())[:5]:
        print(f"thread {t} failed at {counters[t].step!r}:", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
    if failures:
        kinds = sorted({one_line(e) for e in failures.values()})
        print(f"psycopg_prepared: {len(failures)} of {threads} threads failed; "
              f"distinct errors (first 20 of {len(kinds)}):", file=sys.stderr)
        for kind in kinds[:20]:
            print(f"  {kind}", file=sys.stderr)
        sys.exit(1)

    with connect(dsn, autocommit=True) as setup:
        check("table rows", setup.execute(f"select count(*) from {table}").fetchone()[0], threads * rounds * 247)
        setup.execute(f"drop table {table}")
    queries = sum(c.queries for c in counters)
    expected_errors = sum(c.expected_errors for c in counters)
    print(f"psycopg_prepared: threads={threads} rounds={rounds} queries={queries} "
          f"expected_errors={expected_errors} errors=0")


if __name__ == "__main__":
    main()
