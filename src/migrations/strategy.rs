//! Which strategy a DDL statement needs, decided by what the change is (never by table
//! size): `copy` for everything MariaDB 10.11 cannot provably do with
//! `ALGORITHM=INSTANT`.
//!
//! `Instant` is chosen only for clauses MariaDB 10.11 documents as instant for InnoDB
//! whatever the table looks like: adding a column that carries no index, key,
//! auto-increment, generated expression, check or foreign key and whose default is a
//! literal; `ALTER COLUMN ... SET DEFAULT literal | DROP DEFAULT`; `RENAME COLUMN`; the
//! table `COMMENT`. Everything else is `Copy`, in particular every `MODIFY`/`CHANGE`
//! (the spec alone cannot prove a type is unchanged), `DROP COLUMN` (not instant when
//! the column is indexed, which the spec does not show), key and index changes,
//! `ENGINE`, `CONVERT TO CHARACTER SET` and partitioning. A spec with several clauses
//! is `Instant` only if every clause is. The executor runs an `Instant` change with
//! `ALGORITHM=INSTANT`, so a table where InnoDB still refuses (e.g.
//! `ROW_FORMAT=COMPRESSED`, a hidden `FTS_DOC_ID`) fails fast instead of copying.

use super::Strategy;
use crate::planner::lex::{self, Tok, Token};

/// An `ALTER TABLE` split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterTable {
    /// Database qualifier, if the statement has one.
    pub database: Option<String>,
    /// Table name (unquoted).
    pub table: String,
    /// Everything after the table name: the alter specifications, as written.
    pub spec: String,
}

/// Parses `ALTER [ONLINE] [IGNORE] TABLE [db.]t spec` (also `CREATE [UNIQUE] INDEX i ON
/// t (...)` and `DROP INDEX i ON t`, as their ALTER TABLE equivalents).
pub fn parse_alter(sql: &str) -> Option<AlterTable> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let toks = tokens(sql);
    let mut p = Cursor {
        src: sql,
        toks: &toks,
        at: 0,
    };
    if p.eat_word("ALTER") {
        p.eat_word("ONLINE");
        p.eat_word("IGNORE");
        if !p.eat_word("TABLE") {
            return None;
        }
        if p.peek_word("IF") {
            p.at += 1;
            if !p.eat_word("EXISTS") {
                return None;
            }
        }
        let (database, table) = p.table_name()?;
        let start = p.toks.get(p.at).map_or(sql.len(), |t| t.start);
        return Some(AlterTable {
            database,
            table,
            spec: sql[start..].trim().to_string(),
        });
    }
    if p.eat_word("CREATE") {
        return parse_create_index(sql, p);
    }
    if p.eat_word("DROP") {
        p.eat_word("ONLINE");
        p.eat_word("OFFLINE");
        if !p.eat_word("INDEX") {
            return None;
        }
        let if_exists = if p.peek_word("IF") {
            p.at += 1;
            p.eat_word("EXISTS").then_some(())?;
            "IF EXISTS "
        } else {
            ""
        };
        let name = p.next()?;
        if !is_name(name) || !p.eat_word("ON") {
            return None;
        }
        let (database, table) = p.table_name()?;
        return Some(AlterTable {
            database,
            table,
            spec: format!("DROP INDEX {if_exists}{}", name.text(sql)),
        });
    }
    None
}

/// `CREATE [OR REPLACE] [ONLINE|OFFLINE] [UNIQUE|FULLTEXT|SPATIAL] INDEX [IF NOT EXISTS]
/// i [USING t] ON tbl (cols) [options]`, after `CREATE`.
fn parse_create_index(sql: &str, mut p: Cursor<'_>) -> Option<AlterTable> {
    let mut or_replace = false;
    if p.eat_word("OR") {
        p.eat_word("REPLACE").then_some(())?;
        or_replace = true;
    }
    p.eat_word("ONLINE");
    p.eat_word("OFFLINE");
    let kind = ["UNIQUE", "FULLTEXT", "SPATIAL"]
        .into_iter()
        .find(|k| p.eat_word(k))
        .map(|k| format!("{k} "))
        .unwrap_or_default();
    if !p.eat_word("INDEX") {
        return None;
    }
    let mut if_not_exists = "";
    if p.eat_word("IF") {
        (p.eat_word("NOT") && p.eat_word("EXISTS")).then_some(())?;
        if_not_exists = "IF NOT EXISTS ";
    }
    let name_tok = p.next()?;
    if !is_name(name_tok) {
        return None;
    }
    let name = name_tok.text(sql);
    let using_start = p.toks.get(p.at)?.start;
    while !p.peek_word("ON") {
        p.next()?; // USING BTREE|HASH before ON
    }
    let using = sql[using_start..p.toks.get(p.at)?.start].trim();
    p.at += 1;
    let (database, table) = p.table_name()?;
    let body_start = p.toks.get(p.at)?.start;
    // ALGORITHM=/LOCK= of CREATE INDEX are not part of the index definition; the
    // executor picks the algorithm, so they are dropped.
    let mut body_end = sql.len();
    let mut depth = 0i32;
    for t in &p.toks[p.at..] {
        match t.kind {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') => depth -= 1,
            Tok::Word if depth == 0 && (t.is_kw(sql, "ALGORITHM") || t.is_kw(sql, "LOCK")) => {
                body_end = t.start;
                break;
            }
            _ => {}
        }
    }
    let body = sql[body_start..body_end].trim();
    let using = if using.is_empty() {
        String::new()
    } else {
        format!("{using} ")
    };
    let add = format!("ADD {kind}INDEX {if_not_exists}{name} {using}{body}");
    let spec = if or_replace {
        format!("DROP INDEX IF EXISTS {name}, {add}")
    } else {
        add
    };
    Some(AlterTable {
        database,
        table,
        spec,
    })
}

/// The strategy for an ALTER TABLE specification.
pub fn choose(alter: &AlterTable) -> Strategy {
    let clauses = split_clauses(&alter.spec);
    let mut changes = 0;
    for clause in &clauses {
        let toks = tokens(clause);
        match classify_clause(clause, &toks) {
            Clause::Neutral => {}
            Clause::Instant => changes += 1,
            Clause::Copy => return Strategy::Copy,
        }
    }
    if changes == 0 {
        Strategy::Copy
    } else {
        Strategy::Instant
    }
}

/// Splits an alter specification into its top-level, comma-separated clauses
/// (commas inside parentheses, quotes and comments do not split).
pub fn split_clauses(spec: &str) -> Vec<String> {
    let toks = tokens(spec);
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start: Option<usize> = None;
    let mut end = 0;
    for t in &toks {
        match t.kind {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') => depth -= 1,
            Tok::Punct(b',') if depth == 0 => {
                if let Some(s) = start.take() {
                    out.push(spec[s..end].trim().to_string());
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(t.start);
        end = t.end;
    }
    if let Some(s) = start {
        out.push(spec[s..end].trim().to_string());
    }
    out
}

/// The first five tokens of each top-level clause, words upper-cased (e.g. `["ADD",
/// "COLUMN", "C", "INT"]`), for callers that refuse some clauses (the copy engine
/// refuses `RENAME TO` and column renames).
pub fn clause_heads(spec: &str) -> Vec<Vec<String>> {
    split_clauses(spec)
        .iter()
        .map(|c| {
            tokens(c)
                .iter()
                .take(5)
                .map(|t| match t.kind {
                    Tok::Word => t.text(c).to_ascii_uppercase(),
                    _ => t.text(c).to_string(),
                })
                .collect()
        })
        .collect()
}

enum Clause {
    /// `ALGORITHM=...`, `LOCK=...`: says how, changes nothing.
    Neutral,
    Instant,
    Copy,
}

fn classify_clause(src: &str, toks: &[Token]) -> Clause {
    let mut p = Cursor { src, toks, at: 0 };
    if p.peek_word("ALGORITHM") || p.peek_word("LOCK") {
        return Clause::Neutral;
    }
    if p.eat_word("COMMENT") {
        p.eat_punct(b'=');
        return match (p.next(), p.next()) {
            (Some(t), None) if t.kind == Tok::Str => Clause::Instant,
            _ => Clause::Copy,
        };
    }
    if p.eat_word("RENAME") {
        // RENAME COLUMN a TO b (not RENAME TO, RENAME INDEX/KEY).
        let ok = p.eat_word("COLUMN")
            && p.next().is_some_and(is_name)
            && p.eat_word("TO")
            && p.next().is_some_and(is_name)
            && p.next().is_none();
        return if ok { Clause::Instant } else { Clause::Copy };
    }
    if p.eat_word("ALTER") {
        p.eat_word("COLUMN");
        if p.peek_word("IF") {
            p.at += 1;
            if !p.eat_word("EXISTS") {
                return Clause::Copy;
            }
        }
        if !p.next().is_some_and(is_name) {
            return Clause::Copy;
        }
        if p.eat_word("DROP") {
            return if p.eat_word("DEFAULT") && p.next().is_none() {
                Clause::Instant
            } else {
                Clause::Copy
            };
        }
        if p.eat_word("SET") && p.eat_word("DEFAULT") && p.literal() && p.next().is_none() {
            return Clause::Instant;
        }
        return Clause::Copy;
    }
    if p.eat_word("ADD") {
        return classify_add_column(p);
    }
    Clause::Copy
}

/// `ADD [COLUMN] [IF NOT EXISTS] name type attributes`, after `ADD`.
fn classify_add_column(mut p: Cursor<'_>) -> Clause {
    const NOT_A_COLUMN: &[&str] = &[
        "INDEX",
        "KEY",
        "UNIQUE",
        "PRIMARY",
        "CONSTRAINT",
        "FULLTEXT",
        "SPATIAL",
        "FOREIGN",
        "CHECK",
        "PARTITION",
        "PERIOD",
        "SYSTEM",
    ];
    // Attributes that make adding a column rebuild the table (or need data checks).
    const REBUILDS: &[&str] = &[
        "AUTO_INCREMENT",
        "PRIMARY",
        "UNIQUE",
        "KEY",
        "INDEX",
        "REFERENCES",
        "CHECK",
        "CONSTRAINT",
        "AS",
        "GENERATED",
        "PERSISTENT",
        "STORED",
        "VIRTUAL",
        "SYSTEM",
        "WITH",
        "WITHOUT",
        "SERIAL",
    ];
    if !p.eat_word("COLUMN") && NOT_A_COLUMN.iter().any(|w| p.peek_word(w)) {
        return Clause::Copy;
    }
    if p.eat_word("IF") && !(p.eat_word("NOT") && p.eat_word("EXISTS")) {
        return Clause::Copy;
    }
    if !p.next().is_some_and(is_name) {
        return Clause::Copy; // includes `ADD (a INT, b INT)`: copy, conservatively
    }
    // The type: a word (SERIAL is an alias with AUTO_INCREMENT and UNIQUE).
    match p.next() {
        Some(t) if t.kind == Tok::Word && !t.is_kw(p.src, "SERIAL") => {}
        _ => return Clause::Copy,
    }
    while let Some(t) = p.next() {
        if REBUILDS.iter().any(|w| t.is_kw(p.src, w)) {
            return Clause::Copy;
        }
        if t.is_kw(p.src, "DEFAULT") && !p.literal() {
            return Clause::Copy; // an expression default is evaluated per row
        }
    }
    Clause::Instant
}

fn tokens(src: &str) -> Vec<Token> {
    lex::lex(src).tokens
}

fn is_name(t: &Token) -> bool {
    t.is_ident()
}

/// An identifier's name: backquotes removed, doubled backquotes undone.
fn unquote(text: &str) -> String {
    match text.strip_prefix('`').and_then(|t| t.strip_suffix('`')) {
        Some(inner) => inner.replace("``", "`"),
        None => text.to_string(),
    }
}

struct Cursor<'a> {
    src: &'a str,
    toks: &'a [Token],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> Option<&'a Token> {
        let t = self.toks.get(self.at)?;
        self.at += 1;
        Some(t)
    }

    fn peek_word(&self, w: &str) -> bool {
        self.toks.get(self.at).is_some_and(|t| t.is_kw(self.src, w))
    }

    fn eat_word(&mut self, w: &str) -> bool {
        let hit = self.peek_word(w);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn eat_punct(&mut self, c: u8) -> bool {
        let hit = self
            .toks
            .get(self.at)
            .is_some_and(|t| t.kind == Tok::Punct(c));
        if hit {
            self.at += 1;
        }
        hit
    }

    /// A constant: string, number (optionally negative), NULL, TRUE or FALSE.
    fn literal(&mut self) -> bool {
        self.eat_punct(b'-');
        let src = self.src;
        match self.next() {
            Some(t) if matches!(t.kind, Tok::Str | Tok::Num) => true,
            // Hex and bit literals (`0x1F`) lex as words that start with a digit.
            Some(t) if t.kind == Tok::Word => {
                t.text(src)
                    .bytes()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
                    || ["NULL", "TRUE", "FALSE"]
                        .iter()
                        .any(|w| t.text(src).eq_ignore_ascii_case(w))
            }
            _ => false,
        }
    }

    /// `[db.]table`, unquoted.
    fn table_name(&mut self) -> Option<(Option<String>, String)> {
        let first = self.toks.get(self.at)?;
        if !is_name(first) {
            return None;
        }
        self.at += 1;
        if self.eat_punct(b'.') {
            let second = self.toks.get(self.at)?;
            if !is_name(second) {
                return None;
            }
            self.at += 1;
            Some((
                Some(unquote(first.text(self.src))),
                unquote(second.text(self.src)),
            ))
        } else {
            Some((None, unquote(first.text(self.src))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alter(sql: &str) -> AlterTable {
        parse_alter(sql).unwrap_or_else(|| panic!("should parse: {sql}"))
    }

    #[test]
    fn parses_alter_create_index_and_drop_index() {
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            (
                "ALTER TABLE t MODIFY a BIGINT",
                None,
                "t",
                "MODIFY a BIGINT",
            ),
            (
                "alter online ignore table `db`.`my t` add column c int;",
                Some("db"),
                "my t",
                "add column c int",
            ),
            (
                "/* app:1 */ ALTER TABLE IF EXISTS d.t ADD x INT",
                Some("d"),
                "t",
                "ADD x INT",
            ),
            (
                "CREATE UNIQUE INDEX ux ON t (a, b(10)) COMMENT 'x' ALGORITHM=INPLACE",
                None,
                "t",
                "ADD UNIQUE INDEX ux (a, b(10)) COMMENT 'x'",
            ),
            (
                "CREATE INDEX IF NOT EXISTS i USING BTREE ON `s`.`t` (a)",
                Some("s"),
                "t",
                "ADD INDEX IF NOT EXISTS i USING BTREE (a)",
            ),
            (
                "CREATE OR REPLACE INDEX i ON t (a)",
                None,
                "t",
                "DROP INDEX IF EXISTS i, ADD INDEX i (a)",
            ),
            ("DROP INDEX `i` ON t", None, "t", "DROP INDEX `i`"),
            (
                "drop index if exists i on db.t lock=none",
                Some("db"),
                "t",
                "DROP INDEX IF EXISTS i",
            ),
        ];
        for (sql, db, table, spec) in cases {
            let a = alter(sql);
            assert_eq!(a.database.as_deref(), *db, "{sql}");
            assert_eq!(a.table, *table, "{sql}");
            assert_eq!(a.spec, *spec, "{sql}");
        }
        for sql in [
            "SELECT 1",
            "ALTER VIEW v AS SELECT 1",
            "DROP TABLE t",
            "CREATE TABLE t (a INT)",
            "RENAME TABLE a TO b",
        ] {
            assert_eq!(parse_alter(sql), None, "{sql}");
        }
    }

    #[test]
    fn chooses_instant_only_for_guaranteed_instant_changes() {
        use Strategy::{Copy, Instant};
        let cases: &[(&str, Strategy)] = &[
            ("ADD COLUMN c INT", Instant),
            ("ADD c VARCHAR(10) NOT NULL DEFAULT 'x' AFTER a", Instant),
            (
                "ADD COLUMN IF NOT EXISTS c INT NULL DEFAULT -1 COMMENT 'n'",
                Instant,
            ),
            ("ADD COLUMN c INT, ADD COLUMN d TEXT", Instant),
            ("ADD COLUMN c INT, ALGORITHM=INSTANT, LOCK=NONE", Instant),
            ("ALTER COLUMN c SET DEFAULT 5", Instant),
            ("ALTER c DROP DEFAULT", Instant),
            ("RENAME COLUMN a TO b", Instant),
            ("COMMENT = 'orders'", Instant),
            ("COMMENT 'orders', ADD COLUMN z DATE", Instant),
            ("MODIFY a BIGINT", Copy),
            ("MODIFY COLUMN a VARCHAR(200)", Copy),
            ("CHANGE a b INT", Copy),
            ("ADD COLUMN c INT, MODIFY a BIGINT", Copy),
            ("ADD COLUMN id2 INT AUTO_INCREMENT UNIQUE", Copy),
            ("ADD COLUMN c INT PRIMARY KEY", Copy),
            ("ADD COLUMN c INT UNIQUE", Copy),
            ("ADD COLUMN c INT AS (a + 1) STORED", Copy),
            ("ADD COLUMN c INT GENERATED ALWAYS AS (a + 1) VIRTUAL", Copy),
            ("ADD COLUMN c INT REFERENCES p(id)", Copy),
            ("ADD COLUMN c INT CHECK (c > 0)", Copy),
            ("ADD COLUMN c DATETIME DEFAULT NOW()", Copy),
            ("ADD COLUMN c DATETIME DEFAULT CURRENT_TIMESTAMP", Copy),
            ("ADD COLUMN c SERIAL", Copy),
            ("ADD (c INT, d INT)", Copy),
            ("ADD INDEX i (a)", Copy),
            ("ADD UNIQUE KEY u (a)", Copy),
            ("ADD PRIMARY KEY (a)", Copy),
            ("DROP PRIMARY KEY, ADD PRIMARY KEY (a, b)", Copy),
            ("DROP INDEX i", Copy),
            ("DROP COLUMN c", Copy),
            ("ENGINE=InnoDB", Copy),
            ("CONVERT TO CHARACTER SET utf8mb4", Copy),
            ("DEFAULT CHARSET = latin1", Copy),
            ("RENAME TO t2", Copy),
            ("RENAME INDEX a TO b", Copy),
            ("ALTER COLUMN c SET DEFAULT (UUID())", Copy),
            ("FORCE", Copy),
            ("ALGORITHM=INPLACE", Copy),
            ("", Copy),
        ];
        for (spec, want) in cases {
            let a = AlterTable {
                database: None,
                table: "t".into(),
                spec: spec.to_string(),
            };
            assert_eq!(choose(&a), *want, "{spec}");
        }
    }

    #[test]
    fn splits_clauses_at_top_level_commas_only() {
        assert_eq!(
            split_clauses("ADD INDEX i (a, b), COMMENT 'x, y' , MODIFY c ENUM('a','b')"),
            vec![
                "ADD INDEX i (a, b)",
                "COMMENT 'x, y'",
                "MODIFY c ENUM('a','b')"
            ]
        );
        assert_eq!(
            clause_heads("RENAME TO x, add column c int"),
            vec![vec!["RENAME", "TO", "X"], vec!["ADD", "COLUMN", "C", "INT"]]
        );
    }
}
