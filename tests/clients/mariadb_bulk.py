#!/opt/shardgate-pyenv/bin/python
"""MariaDB Connector/Python's executemany() (COM_STMT_BULK_EXECUTE when the server
offers MARIADB_CLIENT_STMT_BULK_OPERATIONS), printing one line per step.

Usage: mariadb_bulk.py HOST PORT USER PASSWORD DATABASE

Expects table items (id BIGINT AUTO_INCREMENT, workspace_id, name, qty NULL) to exist
and be empty. Run against MariaDB directly and through shardgate, and compare
(tests/prepared_clients.rs does).
"""

import sys

import mariadb

host, port, user, password, database = sys.argv[1:6]
conn = mariadb.connect(host=host, port=int(port), user=user, password=password,
                       database=database, autocommit=True, connect_timeout=10,
                       read_timeout=20, write_timeout=20)


def step(name, *values):
    print(" | ".join([name] + [repr(v) for v in values]), flush=True)


# Bit 2 of the extended capabilities: MARIADB_CLIENT_STMT_BULK_OPERATIONS.
step("bulk_offered", bool(conn.extended_server_capabilities & 4))
cur = conn.cursor()

INSERT = "INSERT INTO items (workspace_id, name, qty) VALUES (?, ?, ?)"
rows = [(ws, f"row {ws}-{n}", ws * 10 + n) for n in range(3) for ws in range(1, 9)]
cur.executemany(INSERT, rows)
step("insert_many", cur.rowcount, cur.lastrowid)

# NULLs, quotes, backslashes, utf8mb4 in one bulk.
tricky = [(2, "it's \"quoted\" \\ back\\slash", None), (5, "🎉 ünïcode", None),
          (7, "", 0)]
cur.executemany(INSERT, tricky)
step("insert_tricky", cur.rowcount)

# An UPDATE bulk: one row per workspace, each on its own shard.
cur.executemany("UPDATE items SET qty = qty + ? WHERE workspace_id = ? AND name LIKE 'row%'",
                [(100, 1), (100, 4), (100, 6)])
step("update_many", cur.rowcount)

# A duplicate name in one workspace: MariaDB's own error comes back.
try:
    cur.executemany(INSERT, [(3, "row 3-0", 1)])
    step("duplicate", "no error")
except mariadb.Error as e:
    step("duplicate", e.errno)

cur.execute("SELECT workspace_id, name, qty FROM items WHERE workspace_id = ? ORDER BY name", (2,))
step("select_ws2", cur.fetchall())
cur.execute("SELECT workspace_id, name, qty FROM items WHERE workspace_id = ? ORDER BY name", (5,))
step("select_ws5", cur.fetchall())

cur.executemany("DELETE FROM items WHERE workspace_id = ? AND qty IS NULL", [(2,), (5,)])
step("delete_many", cur.rowcount)
cur.close()
conn.close()
step("done")
