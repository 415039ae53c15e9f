"""psycopg 3: a commit on one connection, a read on another at once, run by tests/it/causal.rs.

Two connections (autocommit, as an application's pool hands them out): the writer inserts a
row and commits, the reader counts it right away, ITERATIONS times; every 100th iteration the
writer creates a table the reader then selects from.

Usage: causal_psycopg.py CONNINFO ITERATIONS BASE
Prints `stale=N missing=M iterations=K`; exit status 0 unless a query failed otherwise.
"""

import sys

import psycopg

conninfo, iterations, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
writer = psycopg.connect(conninfo, autocommit=True)
reader = psycopg.connect(conninfo, autocommit=True)
stale = 0
missing = 0
for n in range(iterations):
    key = base + n
    if n % 100 == 0:
        writer.execute(f"CREATE TABLE causal_py_{key} (x int)")
        try:
            reader.execute(f"SELECT count(*) FROM causal_py_{key}").fetchone()
        except psycopg.errors.UndefinedTable:
            missing += 1
    else:
        writer.execute("INSERT INTO t (id, v) VALUES (%s, 'psycopg')", (key,))
        if reader.execute("SELECT count(*) FROM t WHERE id = %s", (key,)).fetchone()[0] != 1:
            stale += 1
print(f"stale={stale} missing={missing} iterations={iterations}")
