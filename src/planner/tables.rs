//! Finding table names in a token stream, without parsing.
//!
//! A table name follows `FROM`, `JOIN`, `UPDATE`, `INTO`, `TABLE(S)`, `TRUNCATE`,
//! `DESCRIBE` (and `ON`/`TO` in DDL), possibly with an alias, possibly followed by
//! `, next_table`. This catches tables in subqueries too, which is what the safety net
//! and the fallback need; it is also how `qualified_schema` is found for every
//! statement, parsed or not.

use std::borrow::Cow;

use super::lex::{Tok, Token};

/// A table named in the text.
#[derive(Debug, Clone)]
pub(crate) struct TableName<'a> {
    /// `app` in `app.messages`.
    pub schema: Option<Cow<'a, str>>,
    /// The table name without qualifier or quotes.
    pub name: Cow<'a, str>,
    /// Its alias, if one follows.
    pub alias: Option<Cow<'a, str>>,
}

const TRIGGERS: &[&str] = &[
    "INSERT",
    "FROM",
    "JOIN",
    "STRAIGHT_JOIN",
    "UPDATE",
    "INTO",
    "TABLE",
    "TABLES",
    "TRUNCATE",
    "DESCRIBE",
    "DESC",
    "REPLACE",
];
const DDL_TRIGGERS: &[&str] = &["ON", "TO"];
const SKIP: &[&str] = &[
    "IF",
    "NOT",
    "EXISTS",
    "LOW_PRIORITY",
    "HIGH_PRIORITY",
    "DELAYED",
    "IGNORE",
    "QUICK",
    "ONLY",
    "INTO",
];
/// Words that end a table reference rather than alias it.
const NOT_ALIAS: &[&str] = &[
    "WHERE",
    "JOIN",
    "INNER",
    "LEFT",
    "RIGHT",
    "CROSS",
    "NATURAL",
    "STRAIGHT_JOIN",
    "FULL",
    "OUTER",
    "ON",
    "USING",
    "SET",
    "ORDER",
    "GROUP",
    "LIMIT",
    "HAVING",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "FOR",
    "LOCK",
    "WINDOW",
    "VALUES",
    "VALUE",
    "SELECT",
    "PARTITION",
    "USE",
    "IGNORE",
    "FORCE",
    "INTO",
    "READ",
    "WRITE",
    "LOW_PRIORITY",
    "TO",
    "ADD",
    "DROP",
    "MODIFY",
    "CHANGE",
    "ALTER",
    "RENAME",
    "ENGINE",
    "CHARACTER",
    "CHARSET",
    "DEFAULT",
    "COLLATE",
    "COMMENT",
    "LIKE",
    "AS",
    "WITH",
    "RETURNING",
    "OFFSET",
    "FETCH",
    "PROCEDURE",
    "INTO",
    "CONVERT",
    "AUTO_INCREMENT",
    "ROW_FORMAT",
    "ALGORITHM",
    "LOCK",
    "WAIT",
    "NOWAIT",
    "CASCADE",
    "RESTRICT",
    "FORMAT",
    "IN",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "AND",
    "OR",
];

fn is_any(t: &Token, sql: &str, words: &[&str]) -> bool {
    words.iter().any(|w| t.is_kw(sql, w))
}

/// The first table `sql` names (without its schema), for labels and logs: read again
/// from the text, so only rare paths (a deadlock's victim) should ask.
pub fn first_table(sql: &str) -> Option<String> {
    let toks = super::lex::lex(sql).tokens;
    table_names(sql, &toks, false)
        .into_iter()
        .next()
        .map(|t| t.name.into_owned())
}

/// The tables `toks` names after a table-introducing keyword.
pub(crate) fn table_names<'a>(sql: &'a str, toks: &[Token], ddl: bool) -> Vec<TableName<'a>> {
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        // Every trigger is a word: the values of a long INSERT cost one test each.
        if t.kind != Tok::Word {
            continue;
        }
        let trigger = is_any(t, sql, TRIGGERS) || (ddl && is_any(t, sql, DDL_TRIGGERS));
        // `REPLACE(` is a function; `FROM (` a derived table handled by its own FROM.
        let on_duplicate_key_update =
            t.is_kw(sql, "UPDATE") && i > 0 && toks.get(i - 1).is_some_and(|k| k.is_kw(sql, "KEY"));
        // `ORDER BY x DESC` is not `DESC table`.
        let sort_order = i > 0 && (t.is_kw(sql, "DESC") || t.is_kw(sql, "DESCRIBE"));
        if trigger && !on_duplicate_key_update && !sort_order {
            read_list(sql, toks, i + 1, &mut out);
        }
    }
    out
}

fn read_list<'a>(sql: &'a str, toks: &[Token], mut j: usize, out: &mut Vec<TableName<'a>>) {
    loop {
        while toks.get(j).is_some_and(|t| is_any(t, sql, SKIP)) {
            j += 1;
        }
        let Some(first) = toks
            .get(j)
            .filter(|t| t.is_ident() && !is_any(t, sql, NOT_ALIAS))
        else {
            return;
        };
        let mut schema = None;
        let mut name = first.ident(sql);
        j += 1;
        if toks.get(j).is_some_and(|t| t.is_punct(b'.')) {
            match toks.get(j + 1).filter(|t| t.is_ident()) {
                Some(second) => {
                    schema = Some(name);
                    name = second.ident(sql);
                    j += 2;
                }
                None => return,
            }
        }
        // A function call (`REPLACE(...)`, `VALUES(...)`) is not a table.
        if schema.is_none() && toks.get(j).is_some_and(|t| t.is_punct(b'(')) {
            let after_into = j >= 2
                && toks.get(j - 2).is_some_and(|t| {
                    is_any(
                        t,
                        sql,
                        &[
                            "INTO",
                            "TABLE",
                            "REPLACE",
                            "INSERT",
                            "IGNORE",
                            "DELAYED",
                            "LOW_PRIORITY",
                            "HIGH_PRIORITY",
                        ],
                    )
                });
            if !after_into {
                return;
            }
        }
        let mut alias = None;
        if toks.get(j).is_some_and(|t| t.is_kw(sql, "AS")) {
            j += 1;
        }
        if let Some(a) = toks
            .get(j)
            .filter(|t| t.is_ident() && !is_any(t, sql, NOT_ALIAS))
        {
            alias = Some(a.ident(sql));
            j += 1;
        }
        out.push(TableName {
            schema,
            name,
            alias,
        });
        if toks.get(j).is_some_and(|t| t.is_punct(b',')) {
            j += 1;
        } else {
            return;
        }
    }
}

/// Whether `schema` is one of the server's own schemas, whose tables are never the
/// keyspace's (`information_schema.TABLES` is not a sharded table named `TABLES`).
pub(crate) fn is_system_schema(schema: &str) -> bool {
    ["information_schema", "performance_schema", "mysql", "sys"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(schema))
}

impl TableName<'_> {
    /// Qualified with one of the server's own schemas.
    pub(crate) fn is_system(&self) -> bool {
        self.schema.as_deref().is_some_and(is_system_schema)
    }
}

/// The schema every qualified table names, when they all name the same one.
pub(crate) fn common_schema(tables: &[TableName<'_>]) -> Option<String> {
    let mut schemas = tables.iter().filter_map(|t| t.schema.as_deref());
    let first = schemas.next()?;
    schemas
        .all(|s| s.eq_ignore_ascii_case(first))
        .then(|| first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::first_table;

    #[test]
    fn first_table_is_the_first_one_named_without_schema_or_quotes() {
        let cases = [
            ("UPDATE t SET v = v + 1 WHERE id = 1", Some("t")),
            (
                "/*workspace_id:4*/ INSERT INTO `app`.`messages` (a) VALUES (1)",
                Some("messages"),
            ),
            (
                "DELETE FROM ws_3.notes WHERE id IN (SELECT id FROM old)",
                Some("notes"),
            ),
            (
                "SELECT a FROM orders o JOIN items i ON i.o = o.id FOR UPDATE",
                Some("orders"),
            ),
            ("SELECT 1", None),
        ];
        for (sql, table) in cases {
            assert_eq!(first_table(sql).as_deref(), table, "{sql}");
        }
    }
}
