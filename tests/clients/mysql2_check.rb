#!/usr/bin/ruby
# frozen_string_literal: true

# A scripted mysql2 (libmariadb) session printing a canonical transcript, one line
# per step.
#
# Usage: mysql2_check.rb HOST PORT USER PASSWORD DATABASE
#
# Run it against a MariaDB server and against shardgate with the same tables and
# data, and compare the transcripts (tests/clients.rs does). Workspace 1 gets every
# row except step `other_workspace`, which writes workspace 3; the two must live on
# different shards. Only Client#query is used (text protocol; Client#prepare is
# tested by mysql2_prepared.rb). Kept step for step in line with pymysql_check.py.

require 'mysql2'

WS = 1
OTHER_WS = 3
TRICKY = "it's \"quoted\" \\ back\\slash\nnew line\r\0nul \x1a sub 🎉 end"

CREATE_ITEMS = <<~SQL
  CREATE TABLE items (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    workspace_id BIGINT NOT NULL,
    name VARCHAR(100) CHARACTER SET utf8mb4 NOT NULL,
    qty INT NOT NULL,
    UNIQUE KEY ws_name (workspace_id, name))
SQL

CREATE_KINDS = <<~SQL
  CREATE TABLE kinds (
    id INT PRIMARY KEY, workspace_id BIGINT NOT NULL,
    i INT, bu BIGINT UNSIGNED, dc DECIMAL(14,4), d DOUBLE, flag TINYINT(1),
    vc VARCHAR(64) CHARACTER SET utf8mb4, tx TEXT CHARACTER SET utf8mb4, bl BLOB,
    dt DATE, dtm DATETIME(6), tm TIME, js JSON, nul VARCHAR(5) NULL)
SQL

INSERT_KINDS = <<~SQL
  INSERT INTO kinds (id, workspace_id, i, bu, dc, d, flag, vc, tx, bl, dt, dtm, tm, js, nul) VALUES
   (1, 1, -2147483648, 18446744073709551615, -1234567890.1234, -1.5e300, 1,
    'héllo ✓ 🎉', 'a text\\nwith lines', X'00FF10DEADBEEF', '2024-02-29',
    '2024-02-29 23:59:59.123456', '-838:59:59', '{"a": [1, 2, {"b": null}], "e": "🎉"}', NULL),
   (2, 1, 0, 0, 0.0001, 0, 0, '', '', '', '1000-01-01', '1000-01-01 00:00:00', '12:34:56', '[]', 'x'),
   (3, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
SQL

def out(step, *parts)
  puts([step, *parts].join(' | '))
  $stdout.flush
end

# A value with its Ruby class and, for strings, the encoding mysql2 chose from the
# column's charset (binary columns come back as ASCII-8BIT).
def describe(value)
  case value
  when String then "#{value.inspect}:#{value.encoding}"
  when Time then "#{value.strftime('%Y-%m-%d %H:%M:%S.%6N')}:Time"
  when BigDecimal then "#{value.to_s('F')}:BigDecimal"
  else "#{value.inspect}:#{value.class}"
  end
end

# Runs `sql` and prints everything mysql2 reports about the result or error.
def run(client, step, sql, **opts)
  result = client.query(sql, **opts)
  rows = result&.map { |row| row.map { |v| describe(v) } }
  out(step,
      "affected=#{client.affected_rows.inspect}",
      "last_id=#{client.last_id.inspect}",
      "warnings=#{client.warning_count.inspect}",
      "info=#{client.query_info_string.inspect}",
      "server_flags=#{result&.server_flags.inspect}",
      "fields=#{result&.fields.inspect}",
      "rows=#{rows.inspect}")
  result&.to_a
rescue Mysql2::Error => e
  out(step, 'error', e.error_number.inspect, e.sql_state.inspect, e.message.inspect)
  nil
end

host, port, user, password, database = ARGV
client = Mysql2::Client.new(
  host: host, port: Integer(port), username: user, password: password,
  database: database, encoding: 'utf8mb4',
  connect_timeout: 10, read_timeout: 20, write_timeout: 20
)
# Rows as arrays, with the casts mysql2 does by column type (TINYINT(1) as boolean).
client.query_options.merge!(as: :array, cast_booleans: true)
out('connect', "server_info=#{client.server_info[:version].inspect}",
    "encoding=#{client.encoding}")
run(client, 'charset_vars',
    'SELECT @@character_set_client, @@character_set_connection, ' \
    '@@character_set_results, @@collation_connection')
run(client, 'create_items', CREATE_ITEMS)
run(client, 'create_kinds', CREATE_KINDS)
run(client, 'insert_one', "INSERT INTO items (workspace_id, name, qty) VALUES (#{WS}, 'first', 1)")
run(client, 'last_insert_id', 'SELECT LAST_INSERT_ID()')
run(client, 'insert_multi',
    'INSERT INTO items (workspace_id, name, qty) VALUES ' \
    "(#{WS}, 'second', 2), (#{WS}, 'third', 3), (#{WS}, 'fourth', 4)")
run(client, 'insert_kinds', INSERT_KINDS)
run(client, 'select_kinds', "SELECT * FROM kinds WHERE workspace_id = #{WS} ORDER BY id")
run(client, 'select_kinds_uncast', "SELECT * FROM kinds WHERE workspace_id = #{WS} ORDER BY id",
    cast: false)
run(client, 'select_items', "SELECT * FROM items WHERE workspace_id = #{WS} ORDER BY id")
run(client, 'update', "UPDATE items SET qty = qty + 10 WHERE workspace_id = #{WS} AND qty >= 3")
# Matches one row, changes none: 1 with CLIENT_FOUND_ROWS (mysql2's default), else 0.
run(client, 'update_unchanged', "UPDATE items SET qty = 1 WHERE workspace_id = #{WS} AND name = 'first'")
run(client, 'row_count', 'SELECT ROW_COUNT()')
run(client, 'delete', "DELETE FROM items WHERE workspace_id = #{WS} AND name = 'fourth'")

run(client, 'tx_begin', 'BEGIN')
run(client, 'tx_insert', "INSERT INTO items (workspace_id, name, qty) VALUES (#{WS}, 'committed', 5)")
run(client, 'tx_commit', 'COMMIT')
run(client, 'tx_start', 'START TRANSACTION')
run(client, 'tx_insert_2', "INSERT INTO items (workspace_id, name, qty) VALUES (#{WS}, 'rolled back', 6)")
run(client, 'tx_rollback', 'ROLLBACK')
run(client, 'tx_result', "SELECT id, name, qty FROM items WHERE workspace_id = #{WS} ORDER BY id")

run(client, 'insert_ignore_dup', "INSERT IGNORE INTO items (workspace_id, name, qty) VALUES (#{WS}, 'first', 9)")
run(client, 'show_warnings', 'SHOW WARNINGS')
run(client, 'insert_ignore_dup_2', "INSERT IGNORE INTO items (workspace_id, name, qty) VALUES (#{WS}, 'first', 9)")
run(client, 'warning_count', 'SELECT @@warning_count')
run(client, 'dup_key', "INSERT INTO items (workspace_id, name, qty) VALUES (#{WS}, 'first', 9)")
run(client, 'after_dup_key', "SELECT COUNT(*) FROM items WHERE workspace_id = #{WS}")
run(client, 'syntax_error', 'SELEC 1')
run(client, 'after_syntax_error', 'SELECT 1')
run(client, 'unknown_table', "SELECT * FROM no_such_table WHERE workspace_id = #{WS}")
run(client, 'after_unknown_table', "SELECT name FROM items WHERE workspace_id = #{WS} AND qty = 1")

run(client, 'version', 'SELECT @@version')
run(client, 'database', 'SELECT DATABASE()')

# mysql_real_escape_string: depends on the connection charset and on the server's
# NO_BACKSLASH_ESCAPES status flag, both of which the proxy must pass on.
literal = "'#{client.escape(TRICKY)}'"
out('escape', "literal=#{literal.inspect}")
rows = run(client, 'escape_select', "SELECT #{literal} AS s")
out('escape_roundtrip', (!rows.nil? && rows[0][0] == TRICKY).inspect)
run(client, 'escape_insert', "INSERT INTO items (workspace_id, name, qty) VALUES (#{WS}, #{literal}, 10)")
rows = run(client, 'escape_read', "SELECT name FROM items WHERE workspace_id = #{WS} AND qty = 10")
out('escape_read_roundtrip', (!rows.nil? && rows[0][0] == TRICKY).inspect)

run(client, 'other_workspace',
    "INSERT INTO items (id, workspace_id, name, qty) VALUES (1000, #{OTHER_WS}, 'elsewhere', 1)")
run(client, 'other_workspace_read', "SELECT * FROM items WHERE workspace_id = #{OTHER_WS}")

out('ping', client.ping.inspect)
client.close
out('close', client.closed?.inspect)
