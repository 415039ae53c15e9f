#!/usr/bin/env python3
"""Checks one scenario of scripts/chaos and prints its summary line.

    scripts/chaos-check.py SCENARIO DIR

DIR holds what scripts/chaos recorded: events.log ("<epoch> <name> [text]"), client-w*.log and
client-r*.log (psql output, each line prefixed with the epoch time it was read), pgbench.out and
pgbench.err, db-ids.txt (chaos_ack ids on the primary afterwards), db-history.txt (pgbench_history
rows). Writes DIR/check.json with the details and exits 1 when the scenario's rules are broken.

Counts:
  acked        writes whose INSERT ... RETURNING row psql printed (committed and acknowledged)
  lost         acknowledged ids missing on the primary afterwards
  unacked_in   ids on the primary that no client saw acknowledged (in flight when a connection
               died: allowed)
  errors       failed statements of the psql clients by SQLSTATE (w: writers, r: readers); a
               statement whose connection was lost without an error message counts as "lost-conn"
  connect      failed connection attempts (psql could not log in)
  pgbench      transactions processed, tpcb-like ones, failed, aborted clients by SQLSTATE (from the
               message text), and history_lost = tpcb-like transactions pgbench counted minus
               pgbench_history rows (must be <= 0)
  recover      seconds from the "heal" event until every kind of statement (w, r) succeeds again
               with no later error of that kind
  max_gap      longest time with no successful statement of a kind, all clients together, while
               the load ran
  max_op       longest time one client waited for any answer (hang detector)
  read_resends reads pgsluice sent again to another host because their server died before
               answering (its log: "read sent again to another host")
"""

import glob
import json
import os
import re
import sys

QUERY_TIMEOUT = 30.0  # scripts/chaos sets query_timeout = "30s"

STDIN_LINE = re.compile(r"^psql:<stdin>:(\d+): (.*)$")
SEVERITY = re.compile(r"^(?:ERROR|FATAL|PANIC):")
LOST = ("server closed the connection unexpectedly", "connection to server was lost", "error: connection to server was lost",
        "could not receive data from server", "error: server closed the connection unexpectedly")
CODE = re.compile(r"\b(?:ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}):")
PGBENCH_ABORT = re.compile(r"client (\d+) script (\d+) aborted in command (\d+) query (\d+): (.*)$")
PGBENCH_ABORT_SEND = re.compile(r"client (\d+) aborted in command (\d+) \(SQL\) of script (\d+); (.*)$")
# pgbench does not print SQLSTATEs: the messages pgsluice and PostgreSQL send in these scenarios
KNOWN_MESSAGES = [
    ("Connection refused", "refused"),
    # pgsluice's own messages when a server connection dies under a request (src/frontend/relay)
    ("server closed the connection (", "08006"),
    ("the transaction or session state on it is lost", "08006"),
    ("terminating connection due to administrator command", "57P01"),
    ("in a read-only transaction", "25006"),
    ("query_wait_timeout", "57014"),
    ("query_timeout", "57014"),
    ("canceling statement", "57014"),
    ("server closed the connection unexpectedly", "lost-conn"),
    ("connection to server was lost", "lost-conn"),
    ("perhaps the backend died while processing", "lost-conn"),
    ("no primary", "08006"),
    ("is eligible for reads", "08006"),
    ("server connection", "08006"),
    ("could not set session parameters on server", "08006"),
    ("could not connect", "08006"),
    ("the database system is", "57P03"),
]


def code_of_message(msg):
    m = CODE.search(msg)
    if m:
        return m.group(1)
    for text, code in KNOWN_MESSAGES:
        if text in msg:
            return code
    return "msg:" + re.sub(r"\s+", " ", msg.strip())[:60]


def read_lines(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def parse_events(path):
    events = []
    for line in read_lines(path):
        parts = line.split(" ", 2)
        if len(parts) >= 2:
            events.append((float(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""))
    return events


def parse_client(path):
    """Successes, failed statements and failed logins of one psql client, with their times.

    psql reading a pipe prints errors without a location prefix: a failed statement starts at an
    ERROR/FATAL/PANIC line (with `-v VERBOSITY=verbose`: `ERROR:  08006: message`); DETAIL, HINT
    and LOCATION lines are ignored. A FATAL closes the connection: the "server closed the
    connection unexpectedly" / "connection to server was lost" that follow it belong to it, even
    when psql prints the result of the statement that had just completed in between (a FATAL sent
    to an idle client, as at a shutdown, fails the *next* statement, which never reaches a
    server). Those lines without a FATAL before them on the same connection start a failure of
    their own, counted as "lost-conn"."""
    kind = os.path.basename(path)[len("client-")]
    ok, acks, failed, connect_errors, stamps = [], [], [], [], []
    fatal = False  # a FATAL was printed on this connection
    for line in read_lines(path):
        ts_text, _, text = line.partition(" ")
        try:
            ts = float(ts_text)
        except ValueError:
            continue
        stamps.append(ts)
        m = STDIN_LINE.match(text)
        if m:
            text = m.group(2)
        if text.startswith("W|"):
            ok.append(ts)
            acks.append(int(text[2:]))
        elif text.startswith("R|"):
            ok.append(ts)
        elif text.startswith("CONNECT ") or text.startswith("EXIT "):
            fatal = False
        elif text.startswith("psql: error:"):
            connect_errors.append((ts, code_of_message(text)))
        elif SEVERITY.match(text):
            c = CODE.search(text)
            failed.append([ts, c.group(1) if c else code_of_message(text)])
            fatal = fatal or not text.startswith("ERROR")
        elif any(text.startswith(t) for t in LOST):
            if not fatal:
                failed.append([ts, "lost-conn"])
                fatal = True
    return kind, ok, acks, sorted((ts, code) for ts, code in failed), connect_errors, stamps


def parse_pgbench(out_path, err_path):
    out = "\n".join(read_lines(out_path))
    res = {"processed": None, "failed": None, "tpcb": None, "aborted": {}, "exit_text": ""}
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    res["processed"] = int(m.group(1)) if m else None
    m = re.search(r"number of failed transactions: (\d+)", out)
    res["failed"] = int(m.group(1)) if m else None
    m = re.search(r"SQL script \d+: <builtin: TPC-B \(sort of\)>\n(?: - .*\n)*? - (\d+) transactions", out + "\n")
    res["tpcb"] = int(m.group(1)) if m else None
    # A connection lost while pgbench was sending ("aborted in command N (SQL) of script S") is
    # reported on two lines: libpq's message (FATAL/ERROR) and then the abort, and with several
    # clients the lines of different clients interleave. So the bare messages are matched with
    # those aborts in order; an abort left without one counts as lost-conn.
    bare = [line for line in read_lines(err_path) if SEVERITY.match(line)]
    for line in read_lines(err_path):
        a = PGBENCH_ABORT.search(line)
        b = PGBENCH_ABORT_SEND.search(line)
        if a or b:
            msg = a.group(5) if a else (bare.pop(0) if bare else b.group(4))
            code = code_of_message(msg)
            res["aborted"][code] = res["aborted"].get(code, 0) + 1
        elif "error" in line and "Run was aborted" not in line and "progress:" not in line:
            res["exit_text"] += line.strip() + "; "
    return res


def recover(ok, errors, heal, end):
    """Seconds from heal until the first success after the last error (both after heal)."""
    if heal is None:
        return None
    last_err = max([ts for ts, _ in errors if ts >= heal] + [heal])
    after = [t for t in ok if t >= last_err and t <= end + 60]
    return round(min(after) - heal, 3) if after else None


def max_gap(ok, start, end):
    pts = sorted([start] + [t for t in ok if start <= t <= end] + [end])
    return round(max((b - a for a, b in zip(pts, pts[1:])), default=0.0), 3)


def fmt_counts(d):
    return "{" + ",".join(f"{k}:{v}" for k, v in sorted(d.items())) + "}"


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    scenario, d = sys.argv[1], sys.argv[2]
    events = parse_events(os.path.join(d, "events.log"))
    names = [e[1] for e in events]
    t = {name: ts for ts, name, _ in events}  # last occurrence of each
    start, stop = t.get("load-start"), t.get("load-stop")
    fault = next((ts for ts, name, _ in events if name == "fault"), None)
    heal = t.get("heal")
    problems = []
    if start is None or stop is None:
        problems.append("load did not run")
        start = start or 0.0
        stop = stop or start

    clients = {}
    ok = {"w": [], "r": []}
    errs = {"w": [], "r": []}
    acked, connect_errors, max_op = set(), [], 0.0
    for path in sorted(glob.glob(os.path.join(d, "client-*.log"))):
        kind, k_ok, k_acks, k_errs, k_conn, stamps = parse_client(path)
        name = os.path.basename(path)[len("client-") : -len(".log")]
        clients[name] = {
            "ok": len(k_ok),
            "errors": len(k_errs),
            "errors_after_fault": len([1 for ts, _ in k_errs if fault is not None and ts >= fault]),
        }
        ok[kind] += k_ok
        errs[kind] += k_errs
        acked.update(k_acks)
        connect_errors += k_conn
        if stamps:
            op = max((b - a for a, b in zip(stamps, stamps[1:])), default=0.0)
            max_op = max(max_op, op)
    for k in ok:
        ok[k].sort()

    ids_path = os.path.join(d, "db-ids.txt")
    if os.path.exists(ids_path):
        present = {int(x) for x in read_lines(ids_path) if x.strip()}
    else:
        present = set()
        problems.append("no primary to check the writes on")
    lost = sorted(acked - present)
    unacked_in = len(present - acked)
    hist_lines = read_lines(os.path.join(d, "db-history.txt"))
    history = int(hist_lines[0]) if hist_lines and hist_lines[0].strip().isdigit() else None

    plog = "\n".join(read_lines(os.path.join(d, "pgsluice.log")))
    resends = plog.count("read sent again to another host")
    pooler_errors = {}
    for code in re.findall(r"pooler error.*? code=([0-9A-Z]{5})", plog):
        pooler_errors[code] = pooler_errors.get(code, 0) + 1
    pgb = parse_pgbench(os.path.join(d, "pgbench.out"), os.path.join(d, "pgbench.err"))
    history_lost = (pgb["tpcb"] - history) if (pgb["tpcb"] is not None and history is not None) else None

    by_code = {}
    for k in ("w", "r"):
        for _, code in errs[k]:
            key = f"{k}:{code}"
            by_code[key] = by_code.get(key, 0) + 1
    conn_codes = {}
    for _, code in connect_errors:
        conn_codes[code] = conn_codes.get(code, 0) + 1
    n_errors = len(errs["w"]) + len(errs["r"])
    pgb_aborted = sum(pgb["aborted"].values())
    # after SIGINT nothing is expected to succeed: pgsluice is gone
    rec = {k: None if scenario == "sigint" else recover(ok[k], errs[k], heal, stop) for k in ("w", "r")}
    gaps = {k: max_gap(ok[k], start + 1.0, stop) for k in ("w", "r")}

    # rules for every scenario
    if lost:
        problems.append(f"{len(lost)} acknowledged writes lost (first: {lost[:5]})")
    if history_lost is None:
        problems.append("pgbench or pgbench_history count missing")
    elif history_lost > 0:
        problems.append(f"{history_lost} tpcb-like transactions counted by pgbench missing from pgbench_history")
    if any(n.startswith("hang") for n in names):
        problems.append("clients hung (still running 40 s after the load was told to stop)")
    if max_op > QUERY_TIMEOUT:
        problems.append(f"a client waited {max_op:.1f} s for an answer (> query_timeout {QUERY_TIMEOUT:.0f} s)")
    if not acked:
        problems.append("no write acknowledged")
    for k in ("w", "r"):
        if heal is not None and rec[k] is None and scenario != "sigint":
            problems.append(f"{k}: no success after the fault")
    if pgb["processed"] is None:
        problems.append("pgbench printed no result")
    # rules per scenario
    if scenario == "replica-kill":
        if errs["w"]:
            problems.append(f"{len(errs['w'])} writes failed")
        many = [n for n, c in clients.items() if c["errors_after_fault"] > 1]
        if many:
            problems.append(f"more than one failed statement per client on {many}")
    elif scenario in ("sigstop", "sigterm", "reload"):
        if n_errors:
            problems.append(f"{n_errors} statements failed")
        if pgb_aborted or pgb["failed"]:
            problems.append(f"pgbench: {pgb_aborted} clients aborted, {pgb['failed']} transactions failed")
        if connect_errors and scenario != "sigterm":
            problems.append(f"{len(connect_errors)} connection attempts failed")
    if scenario == "sigint":
        other = {c: n for c, n in by_code.items() if not c.endswith(":57P01")}
        if other:
            problems.append(f"failures other than 57P01 after the transaction ended: {other}")
        if unacked_in:
            problems.append(f"{unacked_in} writes committed but not acknowledged")
        other = {c: n for c, n in pgb["aborted"].items() if c != "57P01"}
        if other or pgb["failed"]:
            problems.append(f"pgbench: aborted {other}, {pgb['failed']} transactions failed")
        many = [n for n, c in clients.items() if c["errors_after_fault"] > 1]
        if many:
            problems.append(f"more than one failed statement per client on {many}")
    if scenario in ("sigterm", "sigint"):
        exit_events = [x for x in events if x[1] == "pgsluice-exit"]
        if not exit_events:
            problems.append("pgsluice did not exit by itself after the last client left")
        elif exit_events[-1][2] != "0":
            problems.append(f"pgsluice exited with {exit_events[-1][2]}")
        if scenario == "sigterm" and "new-connection" in names and not any(x[1] == "new-connection" and x[2] == "refused" for x in events):
            problems.append("a new connection was accepted after SIGTERM")
        exit_ts = exit_events[-1][0] if exit_events else None
        done = t.get("load-done")
    if scenario == "reload":
        reloads = [x for x in events if x[1] == "reload"]
        failed_reloads = [x for x in reloads if "failed" in x[2]]
        if len(reloads) != 50 or failed_reloads:
            problems.append(f"{len(reloads)} reloads, {len(failed_reloads)} refused")

    verdict = "PASS" if not problems else "FAIL"
    line = (
        f"{scenario:<12} {verdict} acked_writes={len(acked)} lost={len(lost)} unacked_committed={unacked_in} "
        f"reads_ok={len(ok['r'])} errors={fmt_counts(by_code)} connect_errors={fmt_counts(conn_codes)} "
        f"pgbench_tx={pgb['processed']} tpcb={pgb['tpcb']} history_lost={history_lost} "
        f"pgbench_failed={pgb['failed']} pgbench_aborted={fmt_counts(pgb['aborted'])} "
        f"recover_s=w:{rec['w']},r:{rec['r']} max_gap_s=w:{gaps['w']},r:{gaps['r']} max_op_s={max_op:.2f} "
        f"read_resends={resends}"
    )
    if scenario == "sigterm" and exit_ts is not None and done is not None:
        line += f" exit_after_load_s={exit_ts - done:.2f}"
    if scenario == "sigint" and exit_ts is not None and fault is not None:
        line += f" exit_after_signal_s={exit_ts - fault:.2f}"
    print(line + ("" if not problems else "  PROBLEMS: " + "; ".join(problems)))
    details = {
        "scenario": scenario,
        "verdict": verdict,
        "problems": problems,
        "acked_writes": len(acked),
        "lost": lost[:100],
        "lost_count": len(lost),
        "unacked_committed": unacked_in,
        "reads_ok": len(ok["r"]),
        "errors": by_code,
        "connect_errors": conn_codes,
        "clients": clients,
        "pgbench": pgb,
        "history_rows": history,
        "history_lost": history_lost,
        "recover_s": rec,
        "max_gap_s": gaps,
        "max_op_s": round(max_op, 3),
        "gaps_over_1s": {k: [[round(a - start, 3), round(b - a, 3)] for a, b in zip(ok[k], ok[k][1:]) if b - a > 1.0] for k in ok},
        "read_resends": resends,
        "pooler_errors_logged": pooler_errors,
        "events": events,
    }
    with open(os.path.join(d, "check.json"), "w", encoding="utf-8") as f:
        json.dump(details, f, indent=1)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
