#!/usr/bin/ruby
# frozen_string_literal: true

# Ruby mysql2 (libmariadb) prepared statements through shardgate: Client#prepare and
# Statement#execute (COM_STMT_PREPARE / COM_STMT_EXECUTE, binary protocol) over
# keyspace `app`, table `items` sharded by `workspace_id` (tests/prepared.rs checks
# on the shards where each row landed).
#
# Usage: mysql2_prepared.rb HOST PORT

require 'bigdecimal'
require 'date'
require 'mysql2'

host, port = ARGV
client = Mysql2::Client.new(host: host, port: port.to_i, username: 'app',
                            password: 'app', database: 'app')
insert = client.prepare(
  'INSERT INTO items (id, workspace_id, name, d, amount, note) VALUES (?, ?, ?, ?, ?, ?)'
)
(1..10).each do |w|
  insert.execute(100 + w, w, "ruby '#{w}'", Date.new(2025, 3, w), BigDecimal("#{w}.5"), nil)
end
puts 'inserted 10 rows'
select = client.prepare('SELECT id, name, d, amount, note FROM items WHERE workspace_id = ?')
rows = (1..10).flat_map { |w| select.execute(w).to_a }
rows.each do |r|
  w = r['id'] - 100
  raise "bad row #{r.inspect}" unless r['name'] == "ruby '#{w}'" && r['d'] == Date.new(2025, 3, w) &&
                                       r['amount'] == BigDecimal("#{w}.5") && r['note'].nil?
end
puts "read #{rows.size} rows back"
begin
  client.prepare('SELECT id FROM items WHERE workspace_id IN (?, ?)').execute(1, 2)
  puts 'several shards: answered'
rescue Mysql2::Error => e
  puts "several shards: #{e.error_number}"
end
select.close
insert.close
