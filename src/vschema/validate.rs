//! Turns the document as written into a [`VSchema`], collecting every problem.
//!
//! Validation never stops at the first error: an operator fixing a vschema wants the
//! whole list at once, each entry naming the path it is about, e.g.
//! `keyspaces.app.shards[2] ("40-90"): overlaps shard "80-c0" on keyspace ids 80 to 90`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use super::keyrange::{cmp_bounds, cmp_ends, cmp_start_end, describe_end, describe_start};
use super::parse::{RawCluster, RawKeyspace, RawShard, RawTable, RawVSchema};
use super::{
    Cluster, DdlPolicy, KeyRange, Keyspace, PinDirectory, PinMap, Shard, TableKind, Tenancy,
    VSchema, VSchemaError, VSchemaErrors, Vindex,
};

/// MySQL's limit on a database name, in characters.
const MAX_DATABASE_NAME: usize = 64;

/// Errors found so far.
#[derive(Default)]
struct Problems(Vec<VSchemaError>);

impl Problems {
    fn add(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(VSchemaError {
            at: at.into(),
            message: message.into(),
        });
    }
}

/// Validates a parsed document and builds the shard map.
pub(crate) fn build(raw: RawVSchema) -> Result<VSchema, VSchemaErrors> {
    let mut problems = Problems::default();

    let mut clusters = BTreeMap::new();
    for (name, raw_cluster) in &raw.clusters {
        clusters.insert(
            name.clone(),
            build_cluster(name, raw_cluster, &mut problems),
        );
    }

    let mut keyspaces = BTreeMap::new();
    let mut uses = Vec::new();
    for (name, raw_keyspace) in &raw.keyspaces {
        let keyspace = if raw_keyspace.sharded {
            build_sharded(name, raw_keyspace, &clusters, &mut uses, &mut problems)
        } else {
            build_unsharded(name, raw_keyspace, &clusters, &mut uses, &mut problems)
        };
        keyspaces.insert(name.clone(), keyspace);
    }

    let default_keyspace = choose_default(&keyspaces, &mut problems);
    check_databases_unique(&uses, &mut problems);

    if problems.0.is_empty() {
        Ok(VSchema {
            clusters,
            keyspaces,
            default_keyspace,
        })
    } else {
        Err(VSchemaErrors(problems.0))
    }
}

/// A TOML key as it would be written in a path: bare when it can be, quoted otherwise.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

fn build_cluster(name: &str, raw: &RawCluster, problems: &mut Problems) -> Cluster {
    let at = format!("clusters.{}", key(name));
    if name.is_empty() {
        problems.add(&at, "cluster name is empty");
    }
    match raw.primary.as_deref() {
        None => problems.add(&at, "missing `primary` (host:port of the primary)"),
        Some(primary) => {
            if let Err(message) = check_host_port(primary) {
                problems.add(format!("{at}.primary"), message);
            }
        }
    }
    for (i, standby) in raw.standbys.iter().enumerate() {
        let here = format!("{at}.standbys[{i}]");
        if let Err(message) = check_host_port(standby) {
            problems.add(&here, message);
        } else if raw.primary.as_deref() == Some(standby.as_str()) {
            problems.add(
                &here,
                format!("{standby} is the primary too; a standby is another server"),
            );
        } else if raw.standbys[..i].contains(standby) {
            problems.add(&here, format!("{standby} is listed twice"));
        }
    }
    match raw.user.as_deref() {
        None => problems.add(&at, "missing `user` (the MySQL user shardgate logs in as)"),
        Some("") => problems.add(format!("{at}.user"), "user is empty"),
        Some(_) => {}
    }
    Cluster {
        name: name.to_string(),
        primary: raw.primary.clone().unwrap_or_default(),
        standbys: raw.standbys.clone(),
        user: raw.user.clone().unwrap_or_default(),
        password: raw.password.clone().unwrap_or_default(),
        tls: None,
    }
}

/// Checks `host:port` (`[v6]:port` for IPv6) without resolving the host.
fn check_host_port(text: &str) -> Result<(), String> {
    let wanted = "expected host:port, like \"10.0.0.5:3306\" or \"[::1]:3306\"";
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        match rest.split_once("]:") {
            Some(parts) => parts,
            None => return Err(format!("{text:?} is not host:port: {wanted}")),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                "{text:?} is not host:port: an IPv6 address goes in brackets, like \"[::1]:3306\""
            ))
            }
            Some(parts) => parts,
            None => return Err(format!("{text:?} has no port: {wanted}")),
        }
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!("{text:?} has no valid host: {wanted}"));
    }
    let valid_port = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && matches!(port.parse::<u16>(), Ok(p) if p != 0);
    if !valid_port {
        return Err(format!(
            "{text:?} has an invalid port {port:?}: a port is a number from 1 to 65535"
        ));
    }
    Ok(())
}

/// Checks a database name; `at` is the entry the name came from.
fn check_database(database: &str, at: &str, problems: &mut Problems) {
    if database.is_empty() {
        problems.add(at, "database name is empty");
    } else if database.chars().count() > MAX_DATABASE_NAME {
        problems.add(
            at,
            format!(
                "database name {database:?} is longer than MySQL's {MAX_DATABASE_NAME} characters"
            ),
        );
    }
}

/// Checks that `cluster` names a cluster of the document.
fn check_cluster_ref(
    cluster: &str,
    at: &str,
    clusters: &BTreeMap<String, Cluster>,
    problems: &mut Problems,
) {
    if cluster.is_empty() {
        problems.add(at, "cluster name is empty");
    } else if !clusters.contains_key(cluster) {
        let known: Vec<&str> = clusters.keys().map(String::as_str).collect();
        let known = if known.is_empty() {
            "no clusters are defined".to_string()
        } else {
            format!("defined clusters: {}", known.join(", "))
        };
        problems.add(at, format!("unknown cluster {cluster:?} ({known})"));
    }
}

fn keyspace_name_check(name: &str, at: &str, problems: &mut Problems) {
    if name.is_empty() {
        problems.add(at, "keyspace name is empty");
    }
}

fn build_tables(
    at: &str,
    raw: &Option<BTreeMap<String, RawTable>>,
    problems: &mut Problems,
) -> HashMap<String, TableKind> {
    let mut tables = HashMap::new();
    // Lookups fall back to a case-insensitive match, so names equal but for case
    // would make the answer depend on hash order: refuse them.
    let mut by_lowercase: HashMap<String, &str> = HashMap::new();
    for (name, table) in raw.iter().flatten() {
        let table_at = format!("{at}.tables.{}", key(name));
        if name.is_empty() {
            problems.add(&table_at, "table name is empty");
        }
        if let Some(other) = by_lowercase.insert(name.to_ascii_lowercase(), name) {
            problems.add(
                &table_at,
                format!("table {name:?} differs from table {other:?} only by case; table names are matched case-insensitively"),
            );
        }
        let kind = match (table.column.as_deref(), table.kind.as_deref()) {
            (Some(""), _) => {
                problems.add(&table_at, "sharding column is empty");
                continue;
            }
            (Some(column), None | Some("sharded")) => TableKind::Sharded {
                column: column.to_string(),
            },
            (None, Some("reference")) => TableKind::Reference,
            (Some(_), Some("reference")) => {
                problems.add(
                    &table_at,
                    "a reference table has no sharding column: remove `column` or `type = \"reference\"`",
                );
                continue;
            }
            (None, Some("sharded")) => {
                problems.add(&table_at, "a sharded table needs `column = \"...\"`");
                continue;
            }
            (_, Some(other)) => {
                problems.add(
                    &table_at,
                    format!("unknown table type {other:?}: expected \"reference\" (or a sharding `column`)"),
                );
                continue;
            }
            (None, None) => {
                problems.add(
                    &table_at,
                    "needs a sharding `column = \"...\"` or `type = \"reference\"`",
                );
                continue;
            }
        };
        tables.insert(name.clone(), kind);
    }
    tables
}

fn build_unsharded(
    name: &str,
    raw: &RawKeyspace,
    clusters: &BTreeMap<String, Cluster>,
    uses: &mut Vec<DatabaseUse>,
    problems: &mut Problems,
) -> Keyspace {
    let at = format!("keyspaces.{}", key(name));
    keyspace_name_check(name, &at, problems);
    let how_to_shard = "set `sharded = true` to split the keyspace into shards";
    if raw.shards.is_some() {
        problems.add(
            format!("{at}.shards"),
            format!("an unsharded keyspace lives on one cluster: give `cluster` (and optionally `database`) instead of `shards`, or {how_to_shard}"),
        );
    }
    if raw.vindex.is_some() {
        problems.add(
            format!("{at}.vindex"),
            format!("only a sharded keyspace has a vindex: remove `vindex`, or {how_to_shard}"),
        );
    }
    if raw.default_column.is_some() {
        problems.add(
            format!("{at}.default_column"),
            format!("an unsharded keyspace has no sharding column: remove `default_column`, or {how_to_shard}"),
        );
    }
    if raw.pins.as_ref().is_some_and(|pins| !pins.is_empty()) {
        problems.add(
            format!("{at}.pins"),
            format!("an unsharded keyspace has a single shard, so there is nothing to pin to: remove `pins`, or {how_to_shard}"),
        );
    }
    if raw.tenancy.as_deref().is_some_and(|t| t != "shared_tables")
        || raw.database_template.is_some()
    {
        problems.add(
            format!("{at}.tenancy"),
            format!("database_per_workspace needs a sharded keyspace: {how_to_shard}"),
        );
    }
    let ddl = build_ddl_policy(&at, raw, problems);
    let tables = build_tables(&at, &raw.tables, problems);
    for (table, kind) in &tables {
        if matches!(kind, TableKind::Sharded { .. }) {
            problems.add(
                format!("{at}.tables.{}", key(table)),
                format!("an unsharded keyspace has no sharding column: every table lives on its one cluster; remove `column`, or {how_to_shard}"),
            );
        }
    }

    let cluster = match raw.cluster.as_deref() {
        None => {
            problems.add(
                &at,
                "an unsharded keyspace needs `cluster` (the cluster that holds it)",
            );
            String::new()
        }
        Some(cluster) => {
            check_cluster_ref(cluster, &format!("{at}.cluster"), clusters, problems);
            cluster.to_string()
        }
    };
    let database = raw.database.clone().unwrap_or_else(|| name.to_string());
    check_database(&database, &format!("{at}.database"), problems);
    uses.push(DatabaseUse {
        cluster: cluster.clone(),
        database: database.clone(),
        at: at.clone(),
    });

    Keyspace {
        name: name.to_string(),
        sharded: false,
        vindex: Vindex::Xxhash,
        shards: vec![Shard {
            name: "-".to_string(),
            range: KeyRange::full(),
            cluster,
            database,
        }],
        tables,
        default_column: None,
        pins: PinMap::new(),
        directory: PinDirectory::new(),
        default: raw.default,
        tenancy: Tenancy::SharedTables,
        ddl,
        targets: Vec::new(),
        starts: Vec::new(),
    }
    .with_targets()
}

fn build_ddl_policy(at: &str, raw: &RawKeyspace, problems: &mut Problems) -> DdlPolicy {
    match raw.ddl.as_deref() {
        None | Some("queued") => DdlPolicy::Queued,
        Some("direct") => DdlPolicy::Direct,
        Some(other) => {
            problems.add(
                format!("{at}.ddl"),
                format!(
                    "unknown ddl policy {other:?}: expected \"queued\" (the default) or \"direct\""
                ),
            );
            DdlPolicy::Queued
        }
    }
}

fn build_tenancy(at: &str, raw: &RawKeyspace, problems: &mut Problems) -> Tenancy {
    match raw.tenancy.as_deref() {
        None | Some("shared_tables") => {
            if raw.database_template.is_some() {
                problems.add(
                    format!("{at}.database_template"),
                    "database_template needs `tenancy = \"database_per_workspace\"`",
                );
            }
            Tenancy::SharedTables
        }
        Some("database_per_workspace") => {
            let Some(template) = raw.database_template.as_deref() else {
                problems.add(
                    at,
                    "database_per_workspace needs `database_template`, e.g. \"ws_{id}\"",
                );
                return Tenancy::SharedTables;
            };
            let parts: Vec<&str> = template.split("{id}").collect();
            let [prefix, suffix] = parts.as_slice() else {
                problems.add(
                    format!("{at}.database_template"),
                    format!("{template:?} must contain `{{id}}` exactly once"),
                );
                return Tenancy::SharedTables;
            };
            let sample = format!("{prefix}{}{suffix}", u64::MAX);
            check_database(&sample, &format!("{at}.database_template"), problems);
            if prefix.is_empty() && suffix.is_empty() {
                problems.add(
                    format!("{at}.database_template"),
                    "a template of only `{id}` would claim every numeric database name; add a prefix such as \"ws_\"",
                );
            }
            Tenancy::DatabasePerWorkspace {
                prefix: prefix.to_string(),
                suffix: suffix.to_string(),
            }
        }
        Some(other) => {
            problems.add(
                format!("{at}.tenancy"),
                format!("unknown tenancy {other:?}: expected \"shared_tables\" or \"database_per_workspace\""),
            );
            Tenancy::SharedTables
        }
    }
}

/// A shard entry that parsed well enough to take part in the coverage check.
struct Placed {
    /// Its path, e.g. `keyspaces.app.shards[2] ("40-90")`.
    at: String,
    shard: Shard,
}

fn shard_path(at: &str, index: usize, raw: &RawShard) -> String {
    match raw.name.as_deref() {
        Some(name) => format!("{at}.shards[{index}] ({name:?})"),
        None => format!("{at}.shards[{index}]"),
    }
}

fn build_sharded(
    name: &str,
    raw: &RawKeyspace,
    clusters: &BTreeMap<String, Cluster>,
    uses: &mut Vec<DatabaseUse>,
    problems: &mut Problems,
) -> Keyspace {
    let at = format!("keyspaces.{}", key(name));
    keyspace_name_check(name, &at, problems);
    if raw.cluster.is_some() {
        problems.add(
            format!("{at}.cluster"),
            "a sharded keyspace places each shard on its own cluster: set `cluster` in each entry of `shards`, not on the keyspace",
        );
    }
    if raw.database.is_some() {
        problems.add(
            format!("{at}.database"),
            "a sharded keyspace names databases per shard: set `database` in each entry of `shards`, not on the keyspace",
        );
    }
    let vindex = match raw.vindex.as_deref() {
        None => {
            problems.add(
                &at,
                "a sharded keyspace needs `vindex` (\"xxhash\" or \"numeric\")",
            );
            Vindex::Xxhash
        }
        Some(text) => Vindex::from_name(text).unwrap_or_else(|| {
            problems.add(
                format!("{at}.vindex"),
                format!("unknown vindex {text:?}: expected \"xxhash\" or \"numeric\""),
            );
            Vindex::Xxhash
        }),
    };
    if raw.default_column.as_deref() == Some("") {
        problems.add(format!("{at}.default_column"), "default_column is empty");
    }
    let tables = build_tables(&at, &raw.tables, problems);
    let tenancy = build_tenancy(&at, raw, problems);
    let per_workspace = tenancy != Tenancy::SharedTables;
    let ddl = build_ddl_policy(&at, raw, problems);

    let raw_shards = raw.shards.as_deref().unwrap_or_default();
    if raw_shards.is_empty() {
        problems.add(
            &at,
            "a sharded keyspace needs at least one entry in `shards` (e.g. { name = \"-\", cluster = \"c1\" })",
        );
    }

    // Every name written, valid or not, so a pin to a malformed shard is not reported twice.
    let mut declared: HashMap<String, usize> = HashMap::new();
    let mut placed: Vec<Placed> = Vec::new();
    for (index, raw_shard) in raw_shards.iter().enumerate() {
        let shard_at = shard_path(&at, index, raw_shard);
        let range_and_name = match raw_shard.name.as_deref() {
            None => {
                problems.add(&shard_at, "missing `name` (its key range, like \"40-80\")");
                None
            }
            Some("") => {
                problems.add(&shard_at, "shard name is empty");
                None
            }
            Some(shard_name) => {
                let normalized = shard_name.to_ascii_lowercase();
                let duplicate = declared.insert(normalized.clone(), index);
                if let Some(first) = duplicate {
                    problems.add(
                        &shard_at,
                        format!("duplicate shard name: shards[{first}] has the same name"),
                    );
                    None
                } else {
                    match KeyRange::parse(shard_name) {
                        Ok(range) => Some((range, normalized)),
                        Err(message) => {
                            problems.add(&shard_at, message);
                            None
                        }
                    }
                }
            }
        };
        let cluster = match raw_shard.cluster.as_deref() {
            None => {
                problems.add(
                    &shard_at,
                    "missing `cluster` (the cluster that holds this shard)",
                );
                String::new()
            }
            Some(cluster) => {
                check_cluster_ref(cluster, &shard_at, clusters, problems);
                cluster.to_string()
            }
        };
        let database = if per_workspace {
            // Each workspace has its own database; the shard only places them.
            if raw_shard.database.is_some() {
                problems.add(
                    &shard_at,
                    "a database_per_workspace keyspace names databases by its `database_template`; remove `database`",
                );
            }
            String::new()
        } else {
            let database = raw_shard
                .database
                .clone()
                .unwrap_or_else(|| name.to_string());
            check_database(&database, &shard_at, problems);
            uses.push(DatabaseUse {
                cluster: cluster.clone(),
                database: database.clone(),
                at: shard_at.clone(),
            });
            database
        };

        if let Some((range, shard_name)) = range_and_name {
            placed.push(Placed {
                at: shard_at,
                shard: Shard {
                    name: shard_name,
                    range,
                    cluster,
                    database,
                },
            });
        }
    }

    placed.sort_by(|a, b| {
        cmp_bounds(&a.shard.range.start, &b.shard.range.start)
            .then_with(|| cmp_ends(&a.shard.range.end, &b.shard.range.end))
    });
    // When an entry could not be read, the gap it leaves is a consequence of that error,
    // not news: check coverage once every entry has a key range.
    if !placed.is_empty() && placed.len() == raw_shards.len() {
        check_coverage(&placed, problems);
    }

    let shards: Vec<Shard> = placed.into_iter().map(|p| p.shard).collect();
    let pins = build_pins(&at, &raw.pins, &declared, &shards, problems);

    Keyspace {
        name: name.to_string(),
        sharded: true,
        vindex,
        shards,
        tables,
        default_column: raw.default_column.clone(),
        pins,
        directory: PinDirectory::new(),
        default: raw.default,
        tenancy,
        ddl,
        targets: Vec::new(),
        starts: Vec::new(),
    }
    .with_targets()
}

/// Sorted shards must tile the keyspace-id space: start at the beginning, meet end to
/// start with no gap or overlap, and run to the end.
fn check_coverage(sorted: &[Placed], problems: &mut Problems) {
    let Some(first) = sorted.first() else {
        return;
    };
    let start = &first.shard.range.start;
    if cmp_bounds(start, &[]) != Ordering::Equal {
        problems.add(
            &first.at,
            format!(
                "no shard covers keyspace ids from the start up to {}: the first shard must start at the beginning (like \"-{}\")",
                describe_start(start),
                super::keyrange::hex(start),
            ),
        );
    }
    // The shard that reaches furthest so far, and how far (its end).
    let mut furthest = first;
    for shard in &sorted[1..] {
        let covered_to = &furthest.shard.range.end;
        let range = &shard.shard.range;
        match cmp_start_end(&range.start, covered_to) {
            Ordering::Equal => {}
            Ordering::Greater => problems.add(
                &shard.at,
                format!(
                    "gap: no shard covers keyspace ids from {} up to {} (between shards {:?} and {:?})",
                    describe_end(covered_to),
                    describe_start(&range.start),
                    furthest.shard.name,
                    shard.shard.name,
                ),
            ),
            Ordering::Less => {
                let overlap_end = if cmp_ends(&range.end, covered_to) == Ordering::Less {
                    &range.end
                } else {
                    covered_to
                };
                problems.add(
                    &shard.at,
                    format!(
                        "overlaps shard {:?} on keyspace ids from {} up to {}",
                        furthest.shard.name,
                        describe_start(&range.start),
                        describe_end(overlap_end),
                    ),
                );
            }
        }
        if cmp_ends(&range.end, covered_to) == Ordering::Greater {
            furthest = shard;
        }
    }
    let covered_to = &furthest.shard.range.end;
    if !covered_to.is_empty() {
        problems.add(
            &furthest.at,
            format!(
                "no shard covers keyspace ids from {} to the end: the last shard must run to the end (like \"{}-\")",
                describe_end(covered_to),
                super::keyrange::hex(covered_to),
            ),
        );
    }
}

fn build_pins(
    at: &str,
    raw: &Option<BTreeMap<String, String>>,
    declared: &HashMap<String, usize>,
    shards: &[Shard],
    problems: &mut Problems,
) -> PinMap {
    let mut pins = PinMap::new();
    let mut written_as: HashMap<u64, &str> = HashMap::new();
    for (workspace, shard_name) in raw.iter().flatten() {
        let pin_at = format!("{at}.pins.{}", key(workspace));
        let id = if workspace.is_empty() || !workspace.bytes().all(|b| b.is_ascii_digit()) {
            problems.add(
                &pin_at,
                format!("pin key {workspace:?} is not a workspace id (a non-negative integer)"),
            );
            None
        } else {
            match workspace.parse::<u64>() {
                Ok(id) => Some(id),
                Err(_) => {
                    problems.add(
                        &pin_at,
                        format!(
                            "pin key {workspace:?} is larger than the largest workspace id ({})",
                            u64::MAX
                        ),
                    );
                    None
                }
            }
        };
        let normalized = shard_name.to_ascii_lowercase();
        let index = shards.iter().position(|s| s.name == normalized);
        if index.is_none() && !declared.contains_key(&normalized) {
            let names: Vec<&str> = shards.iter().map(|s| s.name.as_str()).collect();
            problems.add(
                &pin_at,
                format!(
                    "pins workspace to unknown shard {shard_name:?} (shards: {})",
                    names.join(", ")
                ),
            );
        }
        if let Some(id) = id {
            if let Some(other) = written_as.insert(id, workspace) {
                problems.add(
                    &pin_at,
                    format!("workspace {id} is pinned twice (also as {other:?})"),
                );
            }
            if let Some(index) = index {
                pins.insert(id, index);
            }
        }
    }
    pins
}

fn choose_default(
    keyspaces: &BTreeMap<String, Keyspace>,
    problems: &mut Problems,
) -> Option<String> {
    let mut chosen: Option<String> = None;
    for keyspace in keyspaces.values().filter(|k| k.default) {
        let at = format!("keyspaces.{}.default", key(&keyspace.name));
        if keyspace.sharded {
            problems.add(
                &at,
                "the default keyspace must be unsharded: it passes through sessions with no known database to its one cluster",
            );
        }
        match &chosen {
            Some(first) => problems.add(
                &at,
                format!("keyspace {first:?} is already the default; at most one keyspace may have `default = true`"),
            ),
            None => chosen = Some(keyspace.name.clone()),
        }
    }
    chosen
}

/// Where a shard's tables live, and the entry that put them there.
struct DatabaseUse {
    cluster: String,
    database: String,
    at: String,
}

/// Two shards (of one keyspace or of two) in the same database of the same cluster would
/// mix their rows: refuse it.
fn check_databases_unique(uses: &[DatabaseUse], problems: &mut Problems) {
    let mut owners: HashMap<(&str, &str), &str> = HashMap::new();
    for using in uses {
        if using.cluster.is_empty() || using.database.is_empty() {
            continue;
        }
        let place = (using.cluster.as_str(), using.database.as_str());
        match owners.get(&place) {
            Some(first) => problems.add(
                &using.at,
                format!(
                    "database {:?} on cluster {:?} is already used by {first}: each shard needs its own database",
                    using.database, using.cluster
                ),
            ),
            None => {
                owners.insert(place, &using.at);
            }
        }
    }
}
