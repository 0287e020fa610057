#!/usr/bin/python3
"""A scripted PyMySQL session printing a canonical transcript, one line per step.

Usage: pymysql_check.py HOST PORT USER PASSWORD DATABASE

Run it against a MariaDB server and against shardgate with the same tables and data,
and compare the transcripts (tests/clients.rs does). Workspace 1 gets every row except
step `other_workspace`, which writes workspace 3; the two must live on different shards.
Only text-protocol queries are used: PyMySQL interpolates parameters client-side.
The script is kept step for step in line with mysql2_check.rb.
"""

import sys

import pymysql

WS = 1
OTHER_WS = 3
TRICKY = "it's \"quoted\" \\ back\\slash\nnew line\r\x00nul \x1a sub 🎉 end"

CREATE_ITEMS = """CREATE TABLE items (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  workspace_id BIGINT NOT NULL,
  name VARCHAR(100) CHARACTER SET utf8mb4 NOT NULL,
  qty INT NOT NULL,
  UNIQUE KEY ws_name (workspace_id, name))"""

CREATE_KINDS = """CREATE TABLE kinds (
  id INT PRIMARY KEY, workspace_id BIGINT NOT NULL,
  i INT, bu BIGINT UNSIGNED, dc DECIMAL(14,4), d DOUBLE, flag TINYINT(1),
  vc VARCHAR(64) CHARACTER SET utf8mb4, tx TEXT CHARACTER SET utf8mb4, bl BLOB,
  dt DATE, dtm DATETIME(6), tm TIME, js JSON, nul VARCHAR(5) NULL)"""

INSERT_KINDS = """INSERT INTO kinds (id, workspace_id, i, bu, dc, d, flag, vc, tx, bl, dt, dtm, tm, js, nul) VALUES
 (1, 1, -2147483648, 18446744073709551615, -1234567890.1234, -1.5e300, 1,
  'héllo ✓ 🎉', 'a text\nwith lines', X'00FF10DEADBEEF', '2024-02-29',
  '2024-02-29 23:59:59.123456', '-838:59:59', '{"a": [1, 2, {"b": null}], "e": "🎉"}', NULL),
 (2, 1, 0, 0, 0.0001, 0, 0, '', '', '', '1000-01-01', '1000-01-01 00:00:00', '12:34:56', '[]', 'x'),
 (3, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"""


def out(step, *parts):
    print(step, *parts, sep=" | ", flush=True)


def fields(result):
    """Every column-definition field PyMySQL parses, including flags and charset."""
    if result is None or not getattr(result, "fields", None):
        return None
    return [
        (
            f.catalog,
            f.db,
            f.table_name,
            f.org_table,
            f.name,
            f.org_name,
            f.charsetnr,
            f.length,
            f.type_code,
            f.flags,
            f.scale,
        )
        for f in result.fields
    ]


def run(conn, step, sql):
    """Runs `sql` and prints everything PyMySQL reports about the result or error."""
    cur = conn.cursor()
    try:
        cur.execute(sql)
    except pymysql.err.MySQLError as e:
        # PyMySQL keeps the code and message but drops the SQLSTATE.
        out(step, "error", repr(e.__class__.__name__), repr(e.args))
        return None
    result = cur._result
    rows = cur.fetchall()
    out(
        step,
        "rowcount=%r" % cur.rowcount,
        "lastrowid=%r" % cur.lastrowid,
        "warnings=%r" % result.warning_count,
        "status=%#06x" % conn.server_status,
        "message=%r" % result.message,
        "fields=%r" % (fields(result),),
        "description=%r" % (cur.description,),
        "rows=%r" % (rows,),
    )
    cur.close()
    return rows


def main():
    host, port, user, password, database = sys.argv[1:6]
    conn = pymysql.connect(
        host=host,
        port=int(port),
        user=user,
        password=password,
        database=database,
        charset="utf8mb4",
        connect_timeout=10,
        read_timeout=20,
        write_timeout=20,
        autocommit=True,
    )
    out("connect", "server_info=%r" % conn.get_server_info(), "charset=%r" % conn.charset)
    run(
        conn,
        "charset_vars",
        "SELECT @@character_set_client, @@character_set_connection, "
        "@@character_set_results, @@collation_connection",
    )
    run(conn, "create_items", CREATE_ITEMS)
    run(conn, "create_kinds", CREATE_KINDS)
    run(conn, "insert_one", "INSERT INTO items (workspace_id, name, qty) VALUES (%d, 'first', 1)" % WS)
    run(
        conn,
        "insert_multi",
        "INSERT INTO items (workspace_id, name, qty) VALUES "
        "(%d, 'second', 2), (%d, 'third', 3), (%d, 'fourth', 4)" % (WS, WS, WS),
    )
    run(conn, "insert_kinds", INSERT_KINDS)
    run(conn, "select_kinds", "SELECT * FROM kinds WHERE workspace_id = %d ORDER BY id" % WS)
    run(conn, "select_items", "SELECT * FROM items WHERE workspace_id = %d ORDER BY id" % WS)
    run(conn, "update", "UPDATE items SET qty = qty + 10 WHERE workspace_id = %d AND qty >= 3" % WS)
    # Matches one row, changes none: 1 with CLIENT_FOUND_ROWS (the driver's default), else 0.
    run(conn, "update_unchanged", "UPDATE items SET qty = 1 WHERE workspace_id = %d AND name = 'first'" % WS)
    run(conn, "row_count", "SELECT ROW_COUNT()")
    run(conn, "delete", "DELETE FROM items WHERE workspace_id = %d AND name = 'fourth'" % WS)

    run(conn, "tx_begin", "BEGIN")
    run(conn, "tx_insert", "INSERT INTO items (workspace_id, name, qty) VALUES (%d, 'committed', 5)" % WS)
    run(conn, "tx_commit", "COMMIT")
    run(conn, "tx_start", "START TRANSACTION")
    run(conn, "tx_insert_2", "INSERT INTO items (workspace_id, name, qty) VALUES (%d, 'rolled back', 6)" % WS)
    run(conn, "tx_rollback", "ROLLBACK")
    run(conn, "tx_result", "SELECT id, name, qty FROM items WHERE workspace_id = %d ORDER BY id" % WS)
    # The driver's own begin/commit/rollback calls.
    conn.begin()
    run(conn, "api_tx_insert", "INSERT INTO items (workspace_id, name, qty) VALUES (%d, 'api rolled back', 7)" % WS)
    conn.rollback()
    out("api_rollback", "status=%#06x" % conn.server_status)
    conn.begin()
    run(conn, "api_tx_insert_2", "INSERT INTO items (workspace_id, name, qty) VALUES (%d, 'api committed', 8)" % WS)
    conn.commit()
    out("api_commit", "status=%#06x" % conn.server_status)

    run(conn, "insert_ignore_dup", "INSERT IGNORE INTO items (workspace_id, name, qty) VALUES (%d, 'first', 9)" % WS)
    run(conn, "show_warnings", "SHOW WARNINGS")
    run(conn, "insert_ignore_dup_2", "INSERT IGNORE INTO items (workspace_id, name, qty) VALUES (%d, 'first', 9)" % WS)
    run(conn, "warning_count", "SELECT @@warning_count")
    run(conn, "dup_key", "INSERT INTO items (workspace_id, name, qty) VALUES (%d, 'first', 9)" % WS)
    run(conn, "after_dup_key", "SELECT COUNT(*) FROM items WHERE workspace_id = %d" % WS)
    run(conn, "syntax_error", "SELEC 1")
    run(conn, "after_syntax_error", "SELECT 1")
    run(conn, "unknown_table", "SELECT * FROM no_such_table WHERE workspace_id = %d" % WS)
    run(conn, "after_unknown_table", "SELECT name FROM items WHERE workspace_id = %d AND qty = 1" % WS)

    run(conn, "version", "SELECT @@version")
    run(conn, "database", "SELECT DATABASE()")

    literal = conn.escape(TRICKY)
    out("escape", "literal=%r" % literal)
    rows = run(conn, "escape_select", "SELECT %s AS s" % literal)
    out("escape_roundtrip", repr(rows is not None and rows[0][0] == TRICKY))
    run(
        conn,
        "escape_insert",
        "INSERT INTO items (workspace_id, name, qty) VALUES (%d, %s, 10)" % (WS, literal),
    )
    rows = run(conn, "escape_read", "SELECT name FROM items WHERE workspace_id = %d AND qty = 10" % WS)
    out("escape_read_roundtrip", repr(rows is not None and rows[0][0] == TRICKY))

    run(
        conn,
        "other_workspace",
        "INSERT INTO items (id, workspace_id, name, qty) VALUES (1000, %d, 'elsewhere', 1)" % OTHER_WS,
    )
    run(conn, "other_workspace_read", "SELECT * FROM items WHERE workspace_id = %d" % OTHER_WS)

    conn.ping(reconnect=False)
    out("ping", "ok")
    conn.close()
    out("close", "ok")


if __name__ == "__main__":
    main()
