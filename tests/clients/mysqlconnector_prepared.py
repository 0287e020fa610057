#!/opt/shardgate-pyenv/bin/python
"""Oracle's mysql-connector-python (pure Python) with server-side prepared statements
(cursor(prepared=True)) and a compressed connection, printing one line per step.

Usage: mysqlconnector_prepared.py HOST PORT USER PASSWORD DATABASE

Expects table items (id BIGINT AUTO_INCREMENT, workspace_id, name, qty NULL) to exist
and be empty. Run against MariaDB directly and through shardgate, and compare
(tests/prepared_clients.rs does).
"""

import sys

import mysql.connector

host, port, user, password, database = sys.argv[1:6]


def connect(**extra):
    return mysql.connector.connect(host=host, port=int(port), user=user,
                                   password=password, database=database,
                                   use_pure=True, autocommit=True,
                                   connection_timeout=10, **extra)


def step(name, *values):
    print(" | ".join([name] + [repr(v) for v in values]), flush=True)


def norm(rows):
    return [tuple(v.decode() if isinstance(v, (bytes, bytearray)) else v for v in r)
            for r in rows]


conn = connect()
cur = conn.cursor(prepared=True)
INSERT = "INSERT INTO items (workspace_id, name, qty) VALUES (%s, %s, %s)"
TRICKY = "it's \"quoted\" \\ back\\slash\nnew line 🎉"
for ws, name, qty in [(1, "plain", 1), (4, TRICKY, None), (6, "o'neil", 6), (8, None, 8)]:
    try:
        cur.execute(INSERT, (ws, name, qty))
        step(f"insert_{ws}", cur.rowcount, cur.lastrowid is not None)
    except mysql.connector.Error as e:
        step(f"insert_{ws}", "error", e.errno)

SELECT = "SELECT workspace_id, name, qty FROM items WHERE workspace_id = %s ORDER BY id"
for ws in (1, 4, 6, 8):
    cur.execute(SELECT, (ws,))
    step(f"select_{ws}", norm(cur.fetchall()))

cur.execute("SELECT name FROM items WHERE workspace_id = %s AND name = %s", (4, TRICKY))
step("select_tricky_roundtrip", norm(cur.fetchall()) == [(TRICKY,)])
cur.execute("SELECT COUNT(*) FROM items WHERE workspace_id = %s AND qty IS NULL", (4,))
step("null_count", norm(cur.fetchall()))
cur.execute("UPDATE items SET qty = %s WHERE workspace_id = %s AND qty IS NULL", (44, 4))
step("update", cur.rowcount)
try:
    cur.execute("SELECT * FROM no_such_table WHERE workspace_id = %s", (1,))
    step("unknown_table", "no error")
except mysql.connector.Error as e:
    step("unknown_table", e.errno)
# The same statement again after an error, on the same cursor.
cur.execute(SELECT, (6,))
step("select_after_error", norm(cur.fetchall()))
cur.close()
conn.close()

# A compressed connection (CLIENT_COMPRESS), text and prepared statements.
comp = connect(compress=True)
tc = comp.cursor()
tc.execute("SELECT REPEAT('abc', 20000), 42")
row = tc.fetchall()[0]
step("compressed_big_text", len(row[0]), row[1])
tc.execute("SELECT name FROM items WHERE workspace_id = 6")
step("compressed_routed_text", norm(tc.fetchall()))
tc.close()
pc = comp.cursor(prepared=True)
pc.execute(INSERT, (3, "compressed " + "x" * 5000, 3))
step("compressed_prepared_insert", pc.rowcount)
pc.execute("SELECT LENGTH(name) FROM items WHERE workspace_id = %s", (3,))
step("compressed_prepared_select", norm(pc.fetchall()))
pc.close()
comp.close()
step("done")
