"""Runs the fleet sink's DDL, inserts and queries in chdb (an embedded current ClickHouse).

Reads a JSON object on stdin: {"ddl": [sql, ...], "inserts": [[table, jsonl], ...],
"queries": [sql, ...]}; prints {"version": ..., "results": [tsv, ...]}. Exits 77, saying why
on stderr, when chdb cannot be imported (the Rust test then skips).
"""

import json
import sys
import tempfile

try:
    from chdb import session
except Exception as error:  # ImportError, or a wheel that does not load on this machine
    print(f"chdb is not importable: {error}", file=sys.stderr)
    sys.exit(77)

spec = json.load(sys.stdin)
with tempfile.TemporaryDirectory(prefix="jsonl-shipper-chdb-") as path:
    s = session.Session(path)
    for sql in spec["ddl"]:
        s.query(sql)
    for table, rows in spec["inserts"]:
        s.query(f"INSERT INTO {table} FORMAT JSONEachRow\n{rows}")
    results = [str(s.query(sql, "TSV")) for sql in spec["queries"]]
    version = str(s.query("SELECT version()", "TSV")).strip()
    s.close()
print(json.dumps({"version": version, "results": results}))
