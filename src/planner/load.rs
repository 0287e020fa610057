//! `LOAD DATA [LOCAL] INFILE ... INTO TABLE t` and `LOAD XML ...` in a sharded keyspace.
//!
//! shardgate relays the file to one backend as it comes (it never reads the rows), so
//! the statement must go to one workspace's shard: a `/* workspace_id=N */` tag, or a
//! session in a workspace database (the router sends everything there before it looks
//! at this route). Into a sharded table without either, it is refused before the
//! client is asked for any file; into a reference table too (the file would have to
//! reach every shard).

use super::lex::Token;
use super::{conflicting_tags, Route, ShardingSchema, TagScan};

/// Whether `toks` is a `LOAD DATA` or `LOAD XML` statement.
pub(super) fn is_load(sql: &str, toks: &[Token]) -> bool {
    toks.first().is_some_and(|t| t.is_kw(sql, "LOAD"))
        && toks
            .get(1)
            .is_some_and(|t| t.is_kw(sql, "DATA") || t.is_kw(sql, "XML"))
}

/// The table after `INTO TABLE` (without its schema), if the statement names one.
pub(super) fn target_table(sql: &str, toks: &[Token]) -> Option<String> {
    let at = toks
        .windows(2)
        .position(|w| w[0].is_kw(sql, "INTO") && w[1].is_kw(sql, "TABLE"))?;
    let first = toks.get(at + 2).filter(|t| t.is_ident())?;
    match (toks.get(at + 3), toks.get(at + 4)) {
        (Some(dot), Some(name)) if dot.is_punct(b'.') && name.is_ident() => {
            Some(name.ident(sql).into_owned())
        }
        _ => Some(first.ident(sql).into_owned()),
    }
}

/// Where a LOAD statement goes in a sharded keyspace.
pub(super) fn route(sql: &str, toks: &[Token], schema: &dyn ShardingSchema, tag: TagScan) -> Route {
    let Some(table) = target_table(sql, toks) else {
        return Route::AnyShard;
    };
    if schema.is_reference(&table) {
        return Route::Unroutable(format!(
            "LOAD DATA into reference table '{table}' is not supported: a reference table \
             has a copy on every shard, and shardgate sends a file to one; load it with \
             INSERT statements instead"
        ));
    }
    if schema.sharding_column(&table).is_none() {
        return Route::AnyShard;
    }
    match tag {
        TagScan::One(id) => Route::Workspaces(smallvec::smallvec![id]),
        TagScan::Conflicting => conflicting_tags(),
        TagScan::None => Route::LoadDataUnpinned { table },
    }
}

#[cfg(test)]
mod tests {
    use crate::planner::{plan, Route, ShardingSchema};

    struct Schema(bool);

    impl ShardingSchema for Schema {
        fn is_sharded(&self) -> bool {
            self.0
        }
        fn sharding_column(&self, table: &str) -> Option<&str> {
            (table == "messages").then_some("workspace_id")
        }
        fn is_reference(&self, table: &str) -> bool {
            table == "plans"
        }
    }

    fn route(sql: &str, sharded: bool) -> Route {
        plan(sql, &Schema(sharded)).statements.remove(0).route
    }

    #[test]
    fn load_data_goes_to_the_tagged_workspace_or_is_refused() {
        let load = "LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE messages (workspace_id, body)";
        assert_eq!(
            route(load, true),
            Route::LoadDataUnpinned {
                table: "messages".into()
            }
        );
        assert_eq!(
            route(&format!("/*workspace_id:42*/ {load}"), true),
            Route::Workspaces(smallvec::smallvec![42])
        );
        assert_eq!(
            route(
                "load data local infile 'x' replace into table `app`.`messages`",
                true
            ),
            Route::LoadDataUnpinned {
                table: "messages".into()
            }
        );
        assert_eq!(
            route("LOAD XML LOCAL INFILE 'x' INTO TABLE messages", true),
            Route::LoadDataUnpinned {
                table: "messages".into()
            }
        );
        assert!(matches!(
            route("LOAD DATA LOCAL INFILE 'x' INTO TABLE plans", true),
            Route::Unroutable(m) if m.contains("reference table 'plans'")
        ));
        // Tables the keyspace does not shard, and unsharded keyspaces, go anywhere.
        assert_eq!(
            route("LOAD DATA LOCAL INFILE 'x' INTO TABLE notes", true),
            Route::AnyShard
        );
        assert_eq!(route(load, false), Route::AnyShard);
    }
}
