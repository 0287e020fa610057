//! `SHOW VSCHEMA`, `SHOW VSCHEMA HISTORY`, `ALTER VSCHEMA ...` and `ROLLBACK VSCHEMA`:
//! the shard map read and edited live over SQL (`docs/control-plane.md`).
//!
//! An `ALTER VSCHEMA` edits the current document and hands the whole new document to
//! the control plane, which validates, versions and applies it like any other change.

use std::collections::BTreeMap;

use crate::error::ProxyError;
use crate::vschema::Document;

/// A vschema statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VschemaStatement {
    /// `SHOW VSCHEMA [KEYSPACE k]`
    Show(Option<String>),
    /// `SHOW VSCHEMA HISTORY [LIMIT n]`
    History(usize),
    /// `ALTER VSCHEMA <edit> [ALLOW DATA MOVEMENT]`
    Alter {
        /// The edit.
        edit: Edit,
        /// The statement says it may move existing rows.
        allow_movement: bool,
    },
    /// `ROLLBACK VSCHEMA TO VERSION n [ALLOW DATA MOVEMENT]`
    Rollback {
        /// The version whose document becomes current again.
        to: u64,
        /// The statement says it may move existing rows.
        allow_movement: bool,
    },
}

impl VschemaStatement {
    /// Whether it changes the shard map (admin users only); reading needs role `dba`.
    pub fn changes(&self) -> bool {
        matches!(
            self,
            VschemaStatement::Alter { .. } | VschemaStatement::Rollback { .. }
        )
    }
}

/// One edit of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `ADD CLUSTER c PRIMARY 'h:p' USER 'u' [PASSWORD 'p'] [STANDBYS ('h:p', ...)]`
    AddCluster {
        /// Name.
        name: String,
        /// `host:port` of the primary.
        primary: String,
        /// User.
        user: String,
        /// Password.
        password: Option<String>,
        /// Standbys.
        standbys: Vec<String>,
    },
    /// `DROP CLUSTER c`
    DropCluster(String),
    /// `ADD KEYSPACE k ON CLUSTER c [DATABASE 'd'] [DEFAULT]`
    AddUnsharded {
        /// Name.
        name: String,
        /// Cluster.
        cluster: String,
        /// Database (default: the keyspace's name).
        database: Option<String>,
        /// The default keyspace.
        default: bool,
    },
    /// `ADD KEYSPACE k SHARDED VINDEX v SHARDS ('-80' ON c [DATABASE 'd'], ...)
    /// [DEFAULT COLUMN col]`
    AddSharded {
        /// Name.
        name: String,
        /// `xxhash` or `numeric`.
        vindex: String,
        /// (shard name, cluster, database).
        shards: Vec<(String, String, Option<String>)>,
        /// The sharding column of tables not listed.
        default_column: Option<String>,
    },
    /// `DROP KEYSPACE k`
    DropKeyspace(String),
    /// `ADD TABLE k.t SHARDED BY col`
    AddTable {
        /// Keyspace.
        keyspace: String,
        /// Table.
        table: String,
        /// Sharding column.
        column: String,
    },
    /// `ADD REFERENCE TABLE k.t`
    AddReference {
        /// Keyspace.
        keyspace: String,
        /// Table.
        table: String,
    },
    /// `DROP TABLE k.t`
    DropTable {
        /// Keyspace.
        keyspace: String,
        /// Table.
        table: String,
    },
    /// `ADD PIN WORKSPACE n IN KEYSPACE k TO SHARD 's'` (a pin in the document)
    AddPin {
        /// Keyspace.
        keyspace: String,
        /// Workspace id.
        workspace: u64,
        /// Shard name.
        shard: String,
    },
    /// `DROP PIN WORKSPACE n IN KEYSPACE k`
    DropPin {
        /// Keyspace.
        keyspace: String,
        /// Workspace id.
        workspace: u64,
    },
}

const USAGE: &str = "usage: ALTER VSCHEMA ADD CLUSTER c PRIMARY 'host:port' USER 'u' [PASSWORD 'p'] [STANDBYS ('host:port', ...)] \
| DROP CLUSTER c | ADD KEYSPACE k ON CLUSTER c [DATABASE 'd'] [DEFAULT] \
| ADD KEYSPACE k SHARDED VINDEX xxhash|numeric SHARDS ('-80' ON c [DATABASE 'd'], ...) [DEFAULT COLUMN col] \
| DROP KEYSPACE k | ADD TABLE k.t SHARDED BY col | ADD REFERENCE TABLE k.t | DROP TABLE k.t \
| ADD PIN WORKSPACE n IN KEYSPACE k TO SHARD 's' | DROP PIN WORKSPACE n IN KEYSPACE k; \
then optionally ALLOW DATA MOVEMENT";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String),
    Sym(char),
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' || c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("a quoted string is not closed".into()),
                    Some(q) if q == c => {
                        if chars.peek() == Some(&c) {
                            chars.next();
                            s.push(c);
                        } else {
                            break;
                        }
                    }
                    Some('\\') => match chars.next() {
                        Some(e) => s.push(e),
                        None => return Err("a quoted string is not closed".into()),
                    },
                    Some(x) => s.push(x),
                }
            }
            out.push(Tok::Str(s));
        } else if c == '`' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("a `quoted` name is not closed".into()),
                    Some('`') => {
                        if chars.peek() == Some(&'`') {
                            chars.next();
                            s.push('`');
                        } else {
                            break;
                        }
                    }
                    Some(x) => s.push(x),
                }
            }
            out.push(Tok::Word(s));
        } else if "(),.;".contains(c) {
            chars.next();
            out.push(Tok::Sym(c));
        } else {
            let mut s = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() || "(),.;'\"`".contains(x) {
                    break;
                }
                s.push(x);
                chars.next();
            }
            out.push(Tok::Word(s));
        }
    }
    while out.last() == Some(&Tok::Sym(';')) {
        out.pop();
    }
    Ok(out)
}

struct P {
    toks: Vec<Tok>,
    at: usize,
}

impl P {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.at), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn kw(&mut self, kw: &str) -> bool {
        let yes = self.peek_kw(kw);
        if yes {
            self.at += 1;
        }
        yes
    }
    fn expect(&mut self, kw: &str) -> Result<(), String> {
        if self.kw(kw) {
            Ok(())
        } else {
            Err(format!("expected {kw}"))
        }
    }
    fn sym(&mut self, c: char) -> bool {
        let yes = self.toks.get(self.at) == Some(&Tok::Sym(c));
        if yes {
            self.at += 1;
        }
        yes
    }
    /// A name: a word or a quoted string.
    fn name(&mut self, what: &str) -> Result<String, String> {
        match self.toks.get(self.at) {
            Some(Tok::Word(w)) | Some(Tok::Str(w)) if !w.is_empty() => {
                self.at += 1;
                Ok(w.clone())
            }
            _ => Err(format!("expected {what}")),
        }
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        match self.toks.get(self.at) {
            Some(Tok::Str(s)) => {
                self.at += 1;
                Ok(s.clone())
            }
            _ => Err(format!("expected {what} as a quoted string")),
        }
    }
    fn number(&mut self, what: &str) -> Result<u64, String> {
        match self.toks.get(self.at) {
            Some(Tok::Word(w)) => {
                let n = w
                    .parse()
                    .map_err(|_| format!("expected {what}, a number"))?;
                self.at += 1;
                Ok(n)
            }
            _ => Err(format!("expected {what}")),
        }
    }
    fn qualified(&mut self) -> Result<(String, String), String> {
        let ks = self.name("keyspace.table")?;
        if !self.sym('.') {
            return Err("expected keyspace.table".into());
        }
        let t = self.name("keyspace.table")?;
        Ok((ks, t))
    }
    fn done(&self) -> bool {
        self.at >= self.toks.len()
    }
}

/// Recognizes the vschema statements (None: not one of them).
pub fn parse(sql: &str) -> Option<Result<VschemaStatement, ProxyError>> {
    let text = sql.trim();
    let mut words = text.split_ascii_whitespace();
    let (verb, noun) = (words.next()?, words.next()?);
    let noun = noun.trim_end_matches(';');
    let ours = noun.eq_ignore_ascii_case("VSCHEMA")
        && (verb.eq_ignore_ascii_case("SHOW")
            || verb.eq_ignore_ascii_case("ALTER")
            || verb.eq_ignore_ascii_case("ROLLBACK"));
    if !ours {
        return None;
    }
    Some(parse_ours(text).map_err(|m| ProxyError::unroutable(format!("shardgate: {m}"))))
}

fn parse_ours(text: &str) -> Result<VschemaStatement, String> {
    let mut p = P {
        toks: tokenize(text)?,
        at: 0,
    };
    if p.kw("SHOW") {
        p.expect("VSCHEMA")?;
        if p.kw("HISTORY") {
            let limit = if p.kw("LIMIT") {
                p.number("the number of versions")? as usize
            } else {
                50
            };
            if !p.done() {
                return Err("usage: SHOW VSCHEMA HISTORY [LIMIT n]".into());
            }
            return Ok(VschemaStatement::History(limit.clamp(1, 1000)));
        }
        let ks = if p.kw("KEYSPACE") {
            Some(p.name("a keyspace")?)
        } else {
            None
        };
        if !p.done() {
            return Err("usage: SHOW VSCHEMA [KEYSPACE k] | SHOW VSCHEMA HISTORY [LIMIT n]".into());
        }
        return Ok(VschemaStatement::Show(ks));
    }
    if p.kw("ROLLBACK") {
        p.expect("VSCHEMA")?;
        let usage = "usage: ROLLBACK VSCHEMA TO VERSION n [ALLOW DATA MOVEMENT]";
        if !(p.kw("TO") && p.kw("VERSION")) {
            return Err(usage.into());
        }
        let to = p.number("the version")?;
        let allow_movement = allow(&mut p)?;
        if !p.done() {
            return Err(usage.into());
        }
        return Ok(VschemaStatement::Rollback { to, allow_movement });
    }
    p.expect("ALTER")?;
    p.expect("VSCHEMA")?;
    let edit = edit(&mut p).map_err(|e| format!("{e}; {USAGE}"))?;
    let allow_movement = allow(&mut p)?;
    if !p.done() {
        return Err(format!("unexpected words at the end; {USAGE}"));
    }
    Ok(VschemaStatement::Alter {
        edit,
        allow_movement,
    })
}

fn allow(p: &mut P) -> Result<bool, String> {
    if p.kw("ALLOW") {
        if p.kw("DATA") && p.kw("MOVEMENT") {
            return Ok(true);
        }
        return Err("expected ALLOW DATA MOVEMENT".into());
    }
    Ok(false)
}

/// `WORKSPACE n IN KEYSPACE k` of `ADD PIN` and `DROP PIN`.
fn pin_target(p: &mut P) -> Result<(u64, String), String> {
    p.expect("WORKSPACE")?;
    let workspace = p.number("the workspace id")?;
    p.expect("IN")?;
    p.expect("KEYSPACE")?;
    Ok((workspace, p.name("the keyspace")?))
}

fn edit(p: &mut P) -> Result<Edit, String> {
    if p.kw("ADD") {
        if p.kw("CLUSTER") {
            let name = p.name("the cluster's name")?;
            let (mut primary, mut user, mut password, mut standbys) =
                (None, None, None, Vec::new());
            loop {
                if p.kw("PRIMARY") {
                    primary = Some(p.string("the primary's 'host:port'")?);
                } else if p.kw("USER") {
                    user = Some(p.string("the user")?);
                } else if p.kw("PASSWORD") {
                    password = Some(p.string("the password")?);
                } else if p.kw("STANDBYS") {
                    let paren = p.sym('(');
                    loop {
                        standbys.push(p.string("a standby's 'host:port'")?);
                        if !p.sym(',') {
                            break;
                        }
                    }
                    if paren && !p.sym(')') {
                        return Err("expected ) after the standbys".into());
                    }
                } else {
                    break;
                }
            }
            return Ok(Edit::AddCluster {
                name,
                primary: primary.ok_or("ADD CLUSTER needs PRIMARY 'host:port'")?,
                user: user.ok_or("ADD CLUSTER needs USER 'name'")?,
                password,
                standbys,
            });
        }
        if p.kw("KEYSPACE") {
            let name = p.name("the keyspace's name")?;
            if p.kw("ON") {
                p.expect("CLUSTER")?;
                let cluster = p.name("the cluster")?;
                let database = if p.kw("DATABASE") {
                    Some(p.name("the database")?)
                } else {
                    None
                };
                let default = p.kw("DEFAULT");
                return Ok(Edit::AddUnsharded {
                    name,
                    cluster,
                    database,
                    default,
                });
            }
            p.expect("SHARDED")?;
            p.expect("VINDEX")?;
            let vindex = p
                .name("the vindex (xxhash or numeric)")?
                .to_ascii_lowercase();
            p.expect("SHARDS")?;
            if !p.sym('(') {
                return Err("expected ( after SHARDS".into());
            }
            let mut shards = Vec::new();
            loop {
                let shard = p.name("a shard's name, such as '-80'")?;
                p.expect("ON")?;
                let cluster = p.name("the shard's cluster")?;
                let database = if p.kw("DATABASE") {
                    Some(p.name("the database")?)
                } else {
                    None
                };
                shards.push((shard, cluster, database));
                if !p.sym(',') {
                    break;
                }
            }
            if !p.sym(')') {
                return Err("expected ) after the shards".into());
            }
            let default_column = if p.kw("DEFAULT") {
                p.expect("COLUMN")?;
                Some(p.name("the default column")?)
            } else {
                None
            };
            return Ok(Edit::AddSharded {
                name,
                vindex,
                shards,
                default_column,
            });
        }
        if p.kw("TABLE") {
            let (keyspace, table) = p.qualified()?;
            p.expect("SHARDED")?;
            p.expect("BY")?;
            let column = p.name("the sharding column")?;
            return Ok(Edit::AddTable {
                keyspace,
                table,
                column,
            });
        }
        if p.kw("REFERENCE") {
            p.expect("TABLE")?;
            let (keyspace, table) = p.qualified()?;
            return Ok(Edit::AddReference { keyspace, table });
        }
        if p.kw("PIN") {
            let (workspace, keyspace) = pin_target(p)?;
            p.expect("TO")?;
            p.expect("SHARD")?;
            let shard = p.name("the shard")?;
            return Ok(Edit::AddPin {
                keyspace,
                workspace,
                shard,
            });
        }
        return Err("ADD what?".into());
    }
    if p.kw("DROP") {
        if p.kw("CLUSTER") {
            return Ok(Edit::DropCluster(p.name("the cluster")?));
        }
        if p.kw("KEYSPACE") {
            return Ok(Edit::DropKeyspace(p.name("the keyspace")?));
        }
        if p.kw("TABLE") {
            let (keyspace, table) = p.qualified()?;
            return Ok(Edit::DropTable { keyspace, table });
        }
        if p.kw("PIN") {
            let (workspace, keyspace) = pin_target(p)?;
            return Ok(Edit::DropPin {
                keyspace,
                workspace,
            });
        }
        return Err("DROP what?".into());
    }
    Err("expected ADD or DROP".into())
}

/// Applies `edit` to `doc`; an edit of something that is not there (or already is)
/// is an error naming it. The control plane validates the result as a whole.
pub fn apply_edit(doc: &mut Document, edit: &Edit) -> Result<(), String> {
    use crate::vschema::parse_types::{RawCluster, RawKeyspace, RawShard, RawTable};
    let raw = &mut doc.0;
    match edit {
        Edit::AddCluster {
            name,
            primary,
            user,
            password,
            standbys,
        } => {
            insert_new(
                &mut raw.clusters,
                name,
                "cluster",
                RawCluster {
                    primary: Some(primary.clone()),
                    standbys: standbys.clone(),
                    user: Some(user.clone()),
                    password: password.clone(),
                },
            )?;
        }
        Edit::DropCluster(name) => {
            if raw.clusters.remove(name).is_none() {
                return Err(format!("there is no cluster {name}"));
            }
        }
        Edit::AddUnsharded {
            name,
            cluster,
            database,
            default,
        } => {
            insert_new(
                &mut raw.keyspaces,
                name,
                "keyspace",
                RawKeyspace {
                    cluster: Some(cluster.clone()),
                    database: database.clone(),
                    default: *default,
                    ..RawKeyspace::default()
                },
            )?;
        }
        Edit::AddSharded {
            name,
            vindex,
            shards,
            default_column,
        } => {
            insert_new(
                &mut raw.keyspaces,
                name,
                "keyspace",
                RawKeyspace {
                    sharded: true,
                    vindex: Some(vindex.clone()),
                    default_column: default_column.clone(),
                    shards: Some(
                        shards
                            .iter()
                            .map(|(n, c, d)| RawShard {
                                name: Some(n.clone()),
                                cluster: Some(c.clone()),
                                database: d.clone(),
                            })
                            .collect(),
                    ),
                    ..RawKeyspace::default()
                },
            )?;
        }
        Edit::DropKeyspace(name) => {
            if raw.keyspaces.remove(name).is_none() {
                return Err(format!("there is no keyspace {name}"));
            }
        }
        Edit::AddTable {
            keyspace, table, ..
        }
        | Edit::AddReference { keyspace, table } => {
            let t = tables(raw, keyspace)?;
            if t.contains_key(table) {
                return Err(format!("table {keyspace}.{table} is already listed"));
            }
            let entry = match edit {
                Edit::AddTable { column, .. } => RawTable {
                    column: Some(column.clone()),
                    kind: None,
                },
                _ => RawTable {
                    column: None,
                    kind: Some("reference".to_string()),
                },
            };
            t.insert(table.clone(), entry);
        }
        Edit::DropTable { keyspace, table } => {
            let t = tables(raw, keyspace)?;
            if t.remove(table).is_none() {
                return Err(format!("table {keyspace}.{table} is not listed"));
            }
        }
        Edit::AddPin {
            keyspace,
            workspace,
            shard,
        } => {
            let ks = keyspace_mut(raw, keyspace)?;
            let pins = ks.pins.get_or_insert_with(BTreeMap::new);
            if let Some(s) = pins.get(&workspace.to_string()) {
                return Err(format!(
                    "workspace {workspace} is already pinned to {s} in {keyspace}; DROP PIN first"
                ));
            }
            pins.insert(workspace.to_string(), shard.clone());
        }
        Edit::DropPin {
            keyspace,
            workspace,
        } => {
            let ks = keyspace_mut(raw, keyspace)?;
            let removed = ks
                .pins
                .as_mut()
                .and_then(|p| p.remove(&workspace.to_string()));
            if removed.is_none() {
                return Err(format!(
                    "workspace {workspace} has no pin in {keyspace}'s vschema document"
                ));
            }
            if ks.pins.as_ref().is_some_and(|p| p.is_empty()) {
                ks.pins = None;
            }
        }
    }
    Ok(())
}

/// Inserts `value` as `name` unless there is one already (an error naming the `what`).
fn insert_new<T>(
    map: &mut BTreeMap<String, T>,
    name: &str,
    what: &str,
    value: T,
) -> Result<(), String> {
    if map.contains_key(name) {
        return Err(format!("{what} {name} already exists"));
    }
    map.insert(name.to_string(), value);
    Ok(())
}

fn keyspace_mut<'a>(
    raw: &'a mut crate::vschema::parse_types::RawVSchema,
    keyspace: &str,
) -> Result<&'a mut crate::vschema::parse_types::RawKeyspace, String> {
    raw.keyspaces
        .get_mut(keyspace)
        .ok_or_else(|| format!("there is no keyspace {keyspace}"))
}

fn tables<'a>(
    raw: &'a mut crate::vschema::parse_types::RawVSchema,
    keyspace: &str,
) -> Result<&'a mut BTreeMap<String, crate::vschema::parse_types::RawTable>, String> {
    Ok(keyspace_mut(raw, keyspace)?
        .tables
        .get_or_insert_with(BTreeMap::new))
}

/// The document of one keyspace (`SHOW VSCHEMA KEYSPACE k`), or None if it has none.
pub fn keyspace_text(doc: &Document, keyspace: &str) -> Option<String> {
    let ks = doc.0.keyspaces.get(keyspace)?;
    let mut one = crate::vschema::parse_types::RawVSchema::default();
    one.keyspaces.insert(keyspace.to_string(), ks.clone());
    Some(Document(one).to_text())
}

#[cfg(test)]
#[path = "vschema_tests.rs"]
mod tests;
