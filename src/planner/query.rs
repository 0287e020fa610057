//! Workspace extraction from a parsed SELECT / UPDATE / DELETE.
//!
//! Each SELECT (the statement, every subquery, derived table, CTE and UNION branch) is
//! a scope with its own tables and WHERE. In a scope, a sharded table is pinned by a
//! top-level AND-conjunct `C = lit`, `lit = C`, `C IN (lit, ...)` on its sharding
//! column `C` (bare, or qualified by the table's name or alias), or by `a.C = b.C` to a
//! pinned table of the same scope or of an enclosing one (a correlated subquery).
//! A table no equality pins may still be limited to a range of ids by `C BETWEEN a AND
//! b` or comparisons with literals (see `range`), which the router may place on one shard.

use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, Delete, Expr, FromTable, FunctionArg, FunctionArgExpr,
    FunctionArguments, InTarget, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Query,
    Select, SelectItem, SetExpr, Statement, TableFactor, TableWithJoins, UnaryOperator, Update,
    Value,
};

use std::ops::Range;

use super::range::{self, IdRange};
use super::tag::parse_workspace_digits;
use super::ShardingSchema;

/// One use of a sharded table and the workspaces its conditions allow.
#[derive(Debug, Clone)]
pub(crate) struct ShardedUse {
    pub table: String,
    pub column: String,
    /// None: nothing pins it.
    pub workspaces: Option<Vec<u64>>,
    /// The inclusive range of ids its range conditions allow (`low > high`: none),
    /// when it has any.
    pub range: Option<(u64, u64)>,
}

/// What a statement's tables and conditions say about its route.
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    pub sharded: Vec<ShardedUse>,
    pub reads_reference: bool,
    pub writes_reference: bool,
    /// A literal that cannot be a workspace id (negative, fractional, not a number).
    pub unroutable: Option<String>,
    /// Lower-cased names of the tables the AST showed, once per use (the safety net
    /// compares these against the token scan).
    pub seen: Vec<String>,
    /// Lower-cased CTE names (they are not tables).
    pub ctes: Vec<String>,
}

/// A table of one scope.
#[derive(Debug, Clone)]
struct ScopeTable {
    name: String,
    alias: Option<String>,
    column: Option<String>,
    workspaces: Option<Vec<u64>>,
    range: Option<IdRange>,
}

impl ScopeTable {
    fn answers_to(&self, qualifier: &str) -> bool {
        match &self.alias {
            Some(a) => a.eq_ignore_ascii_case(qualifier),
            None => self.name.eq_ignore_ascii_case(qualifier),
        }
    }
}

/// Which tables of the top-level UPDATE/DELETE are written.
enum Targets {
    All,
    Named(Vec<String>),
}

impl Targets {
    fn includes(&self, t: &ScopeTable) -> bool {
        match self {
            Targets::All => true,
            Targets::Named(names) => names.iter().any(|n| t.answers_to(n)),
        }
    }
}

pub(crate) struct Analyzer<'s> {
    schema: &'s dyn ShardingSchema,
    out: Analysis,
    /// Resolved enclosing scopes, innermost last (for correlated subqueries).
    outer: Vec<Vec<ScopeTable>>,
    targets: Option<Targets>,
}

/// Analyzes a parsed SELECT, UPDATE or DELETE.
pub(crate) fn analyze(stmt: &Statement, schema: &dyn ShardingSchema) -> Analysis {
    let mut a = Analyzer {
        schema,
        out: Analysis::default(),
        outer: Vec::new(),
        targets: None,
    };
    a.statement(stmt);
    a.out
}

fn last_ident(name: &ObjectName) -> Option<&str> {
    match name.0.last()? {
        ObjectNamePart::Identifier(id) => Some(id.value.as_str()),
        ObjectNamePart::Function(_) => None,
    }
}

/// Splits top-level ANDs (through parentheses) into conjuncts.
fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        other => out.push(other),
    }
}

/// A literal's workspace id: None when `e` is not a literal, Err when it is a literal
/// that is not a non-negative integer.
pub(crate) fn literal_workspace(e: &Expr) -> Option<Result<u64, String>> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(
                parse_workspace_digits(n)
                    .ok_or_else(|| format!("workspace id {n} is not a non-negative integer")),
            ),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(
                parse_workspace_digits(s)
                    .ok_or_else(|| format!("workspace id '{s}' is not a non-negative integer")),
            ),
            Value::Null => Some(Err("workspace id is NULL".to_owned())),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal_workspace(expr)? {
            Ok(0) => Some(Ok(0)),
            Ok(n) => Some(Err(format!("workspace id -{n} is negative"))),
            Err(e) => Some(Err(e)),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        }
        | Expr::Nested(expr) => literal_workspace(expr),
        _ => None,
    }
}

fn intersect(current: &mut Option<Vec<u64>>, new: Vec<u64>) {
    *current = Some(match current.take() {
        None => new,
        Some(old) => old.into_iter().filter(|w| new.contains(w)).collect(),
    });
}

impl Analyzer<'_> {
    fn statement(&mut self, stmt: &Statement) {
        match stmt {
            Statement::Query(q) => self.query(q),
            Statement::Update(u) => self.update(u),
            Statement::Delete(d) => self.delete(d),
            _ => {}
        }
    }

    fn update(&mut self, u: &Update) {
        let mut named = Vec::new();
        let mut all = u.table.joins.is_empty();
        for a in &u.assignments {
            let names: Vec<&ObjectName> = match &a.target {
                AssignmentTarget::ColumnName(n) => vec![n],
                AssignmentTarget::Tuple(ns) => ns.iter().collect(),
            };
            for n in names {
                match n.0.len() {
                    0 | 1 => all = true,
                    len => {
                        if let Some(ObjectNamePart::Identifier(q)) = n.0.get(len - 2) {
                            named.push(q.value.clone());
                        }
                    }
                }
            }
        }
        self.targets = Some(if all {
            Targets::All
        } else {
            Targets::Named(named)
        });
        let mut scope = Vec::new();
        let mut conds: Vec<Cond> = Vec::new();
        self.table_with_joins(&u.table, &mut scope, &mut conds);
        self.targets = None;
        let values: Vec<&Expr> = u.assignments.iter().map(|a| &a.value).collect();
        self.finish_scope(scope, conds, u.selection.as_ref(), &values);
    }

    fn delete(&mut self, d: &Delete) {
        self.targets = Some(if d.tables.is_empty() {
            Targets::All
        } else {
            Targets::Named(
                d.tables
                    .iter()
                    .filter_map(last_ident)
                    .map(str::to_owned)
                    .collect(),
            )
        });
        let from = match &d.from {
            FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
        };
        let mut scope = Vec::new();
        let mut conds: Vec<Cond> = Vec::new();
        for twj in from {
            self.table_with_joins(twj, &mut scope, &mut conds);
        }
        self.targets = None;
        for twj in d.using.iter().flatten() {
            self.table_with_joins(twj, &mut scope, &mut conds);
        }
        self.finish_scope(scope, conds, d.selection.as_ref(), &[]);
    }

    fn query(&mut self, q: &Query) {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.out
                    .ctes
                    .push(cte.alias.name.value.to_ascii_lowercase());
            }
            for cte in &with.cte_tables {
                self.query(&cte.query);
            }
        }
        self.set_expr(&q.body);
    }

    fn set_expr(&mut self, s: &SetExpr) {
        match s {
            SetExpr::Select(sel) => self.select(sel),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            SetExpr::Values(v) => {
                for row in &v.rows {
                    for e in &row.content {
                        self.expr(e);
                    }
                }
            }
            SetExpr::Insert(st) | SetExpr::Update(st) | SetExpr::Delete(st) => self.statement(st),
            _ => {}
        }
    }

    fn select(&mut self, sel: &Select) {
        let mut scope = Vec::new();
        let mut conds: Vec<Cond> = Vec::new();
        for twj in &sel.from {
            self.table_with_joins(twj, &mut scope, &mut conds);
        }
        let mut extra: Vec<&Expr> = Vec::new();
        for item in &sel.projection {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    extra.push(e)
                }
                _ => {}
            }
        }
        if let Some(h) = &sel.having {
            extra.push(h);
        }
        self.finish_scope(scope, conds, sel.selection.as_ref(), &extra);
    }

    /// Pins the scope's sharded tables from its conditions, records them, then walks
    /// its expressions for subqueries (which see this scope as an enclosing one).
    fn finish_scope<'e>(
        &mut self,
        mut scope: Vec<ScopeTable>,
        mut conds: Vec<Cond<'e>>,
        selection: Option<&'e Expr>,
        extra: &[&Expr],
    ) {
        let on_conditions = conds.len();
        if let Some(w) = selection {
            let mut parts = Vec::new();
            conjuncts(w, &mut parts);
            conds.extend(parts.into_iter().map(|e| Cond::Expr(e, None)));
        }
        self.pin(&mut scope, &conds);
        for t in &scope {
            if let Some(column) = &t.column {
                self.out.sharded.push(ShardedUse {
                    table: t.name.clone(),
                    column: column.clone(),
                    workspaces: t.workspaces.clone(),
                    range: t.range.map(IdRange::bounds),
                });
            }
        }
        self.outer.push(scope);
        for c in &conds[..on_conditions] {
            if let Cond::Expr(e, _) = c {
                self.expr(e);
            }
        }
        if let Some(w) = selection {
            self.expr(w);
        }
        for e in extra {
            self.expr(e);
        }
        self.outer.pop();
    }

    fn table_with_joins<'e>(
        &mut self,
        twj: &'e TableWithJoins,
        scope: &mut Vec<ScopeTable>,
        conds: &mut Vec<Cond<'e>>,
    ) {
        self.factor(&twj.relation, scope, conds);
        for j in &twj.joins {
            let before = scope.len();
            self.factor(&j.relation, scope, conds);
            let joined = before..scope.len();
            // An inner join's condition filters every table; an outer join's only its
            // nullable side.
            let (constraint, only) = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::StraightJoin(c)
                | JoinOperator::CrossJoin(c) => (c, None),
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (c, Some(joined.clone())),
                JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (c, Some(0..before)),
                _ => continue,
            };
            match constraint {
                JoinConstraint::On(e) => {
                    let mut parts = Vec::new();
                    conjuncts(e, &mut parts);
                    conds.extend(parts.into_iter().map(|p| Cond::Expr(p, only.clone())));
                }
                JoinConstraint::Using(columns) => {
                    for column in columns.iter().filter_map(last_ident) {
                        let has = |t: &ScopeTable| {
                            t.column
                                .as_deref()
                                .is_some_and(|c| c.eq_ignore_ascii_case(column))
                        };
                        for b in joined.clone().filter(|&b| has(&scope[b])) {
                            for a in (0..before).filter(|&a| has(&scope[a])) {
                                conds.push(Cond::Link(a, b, only.clone()));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn factor<'e>(
        &mut self,
        f: &'e TableFactor,
        scope: &mut Vec<ScopeTable>,
        conds: &mut Vec<Cond<'e>>,
    ) {
        match f {
            TableFactor::Table { name, alias, .. } => {
                let Some(table) = last_ident(name) else {
                    return;
                };
                let lower = table.to_ascii_lowercase();
                if name.0.len() == 1 && self.out.ctes.contains(&lower) {
                    return;
                }
                let system = name.0.len() == 2
                    && matches!(&name.0[0], ObjectNamePart::Identifier(s) if super::tables::is_system_schema(&s.value));
                if system {
                    // The server's own tables: neither sharded nor reference.
                    return;
                }
                self.out.seen.push(lower);
                let t = ScopeTable {
                    name: table.to_owned(),
                    alias: alias.as_ref().map(|a| a.name.value.clone()),
                    column: self.schema.sharding_column(table).map(str::to_owned),
                    workspaces: None,
                    range: None,
                };
                if self.schema.is_reference(table) {
                    if self.targets.as_ref().is_some_and(|ts| ts.includes(&t)) {
                        self.out.writes_reference = true;
                    } else {
                        self.out.reads_reference = true;
                    }
                }
                scope.push(t);
            }
            TableFactor::Derived { subquery, .. } => self.query(subquery),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.table_with_joins(table_with_joins, scope, conds),
            _ => {}
        }
    }

    /// The sharded table of `scope` (index) or of an enclosing scope whose sharding
    /// column `e` names.
    fn column_target(&self, scope: &[ScopeTable], e: &Expr) -> Option<Target> {
        let (qualifier, column) = match e {
            Expr::Identifier(id) => (None, id.value.as_str()),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => (
                Some(parts[parts.len() - 2].value.as_str()),
                parts[parts.len() - 1].value.as_str(),
            ),
            Expr::Nested(inner) => return self.column_target(scope, inner),
            _ => return None,
        };
        let matches = |t: &ScopeTable| {
            t.column
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(column))
                && qualifier.is_none_or(|q| t.answers_to(q))
        };
        let local: Vec<usize> = (0..scope.len()).filter(|&i| matches(&scope[i])).collect();
        if local.len() == 1 {
            return Some(Target::Local(local[0]));
        }
        if !local.is_empty() || qualifier.is_none() {
            return None;
        }
        // A correlated reference to an enclosing scope's pinned table.
        self.outer.iter().rev().find_map(|s| {
            s.iter()
                .find(|t| matches(t))
                .map(|t| Target::Outer(t.workspaces.clone()))
        })
    }

    fn pin(&mut self, scope: &mut [ScopeTable], conds: &[Cond]) {
        let mut links: Vec<(usize, usize, Option<Range<usize>>)> = Vec::new();
        for c in conds {
            let (c, only) = match c {
                Cond::Link(a, b, only) => {
                    links.push((*a, *b, only.clone()));
                    continue;
                }
                Cond::Expr(e, only) => (*e, only),
            };
            match c {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                } => {
                    let l = self.column_target(scope, left);
                    let r = self.column_target(scope, right);
                    match (l, r) {
                        (Some(Target::Local(a)), Some(Target::Local(b))) => {
                            links.push((a, b, only.clone()))
                        }
                        (Some(Target::Local(a)), Some(Target::Outer(Some(ws))))
                        | (Some(Target::Outer(Some(ws))), Some(Target::Local(a)))
                            if allowed(only, a) =>
                        {
                            intersect(&mut scope[a].workspaces, ws)
                        }
                        (Some(Target::Local(a)), None) if allowed(only, a) => {
                            self.pin_values(scope, a, &[right])
                        }
                        (None, Some(Target::Local(b))) if allowed(only, b) => {
                            self.pin_values(scope, b, &[left])
                        }
                        _ => {}
                    }
                }
                Expr::BinaryOp { left, op, right } => {
                    let (column, value, column_left) = match self.column_target(scope, left) {
                        Some(t) => (t, right, true),
                        None => match self.column_target(scope, right) {
                            Some(t) => (t, left, false),
                            None => continue,
                        },
                    };
                    if let (Target::Local(a), Some(cmp), Some(v)) = (
                        column,
                        range::comparison(op, column_left),
                        range::integer_bound(value),
                    ) {
                        if allowed(only, a) {
                            let r = scope[a].range.unwrap_or_else(IdRange::all);
                            scope[a].range = Some(r.and(cmp, v));
                        }
                    }
                }
                Expr::Between {
                    expr,
                    negated: false,
                    low,
                    high,
                } => {
                    if let (Some(Target::Local(a)), Some(l), Some(h)) = (
                        self.column_target(scope, expr),
                        range::integer_bound(low),
                        range::integer_bound(high),
                    ) {
                        if allowed(only, a) {
                            let r = scope[a].range.unwrap_or_else(IdRange::all);
                            scope[a].range = Some(r.between(l, h));
                        }
                    }
                }
                Expr::In {
                    expr,
                    target: InTarget::List(list),
                    negated: false,
                    ..
                } => {
                    if let Some(Target::Local(a)) = self.column_target(scope, expr) {
                        if allowed(only, a) {
                            let values: Vec<&Expr> = list.iter().collect();
                            self.pin_values(scope, a, &values);
                        }
                    }
                }
                _ => {}
            }
        }
        // `a.C = b.C`: a pinned table pins the other.
        let mut changed = true;
        while changed {
            changed = false;
            for (a, b, only) in &links {
                let (from, to) = match (&scope[*a].workspaces, &scope[*b].workspaces) {
                    (Some(_), None) => (*a, *b),
                    (None, Some(_)) => (*b, *a),
                    _ => continue,
                };
                if !allowed(only, to) {
                    continue;
                }
                scope[to].workspaces = scope[from].workspaces.clone();
                changed = true;
            }
        }
    }

    fn pin_values(&mut self, scope: &mut [ScopeTable], table: usize, values: &[&Expr]) {
        let mut ids = Vec::with_capacity(values.len());
        for v in values {
            match literal_workspace(v) {
                Some(Ok(id)) => {
                    if !ids.contains(&id) {
                        ids.push(id)
                    }
                }
                Some(Err(msg)) => {
                    if self.out.unroutable.is_none() {
                        self.out.unroutable = Some(msg);
                    }
                    return;
                }
                // Not a literal: this condition pins nothing.
                None => return,
            }
        }
        if !ids.is_empty() {
            intersect(&mut scope[table].workspaces, ids);
        }
    }

    /// Walks an expression for the subqueries inside it.
    fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => self.query(q),
            Expr::In { expr, target, .. } => {
                self.expr(expr);
                match target {
                    InTarget::List(list) => list.iter().for_each(|x| self.expr(x)),
                    InTarget::Subquery(q) => self.query(q),
                    InTarget::Unnest(x) => self.expr(x),
                    _ => {}
                }
            }
            Expr::BinaryOp { left, right, .. }
            | Expr::AnyOp { left, right, .. }
            | Expr::AllOp { left, right, .. }
            | Expr::IsDistinctFrom(left, right)
            | Expr::IsNotDistinctFrom(left, right) => {
                self.expr(left);
                self.expr(right);
            }
            Expr::UnaryOp { expr, .. }
            | Expr::Nested(expr)
            | Expr::IsNull(expr)
            | Expr::IsNotNull(expr)
            | Expr::IsTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsNotFalse(expr)
            | Expr::IsUnknown(expr)
            | Expr::IsNotUnknown(expr)
            | Expr::Collate { expr, .. }
            | Expr::Cast { expr, .. } => self.expr(expr),
            Expr::Between {
                expr, low, high, ..
            } => {
                self.expr(expr);
                self.expr(low);
                self.expr(high);
            }
            Expr::Like { expr, pattern, .. }
            | Expr::ILike { expr, pattern, .. }
            | Expr::RLike { expr, pattern, .. } => {
                self.expr(expr);
                self.expr(pattern);
            }
            Expr::Tuple(items) => items.iter().for_each(|x| self.expr(x)),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                if let Some(o) = operand {
                    self.expr(o);
                }
                for c in conditions {
                    self.expr(&c.condition);
                    self.expr(&c.result);
                }
                if let Some(x) = else_result {
                    self.expr(x);
                }
            }
            Expr::Function(f) => match &f.args {
                FunctionArguments::Subquery(q) => self.query(q),
                FunctionArguments::List(list) => {
                    for a in &list.args {
                        let arg = match a {
                            FunctionArg::Named { arg, .. }
                            | FunctionArg::ExprNamed { arg, .. }
                            | FunctionArg::Unnamed(arg) => arg,
                        };
                        if let FunctionArgExpr::Expr(x) = arg {
                            self.expr(x);
                        }
                    }
                }
                FunctionArguments::None => {}
            },
            _ => {}
        }
    }
}

enum Target {
    Local(usize),
    Outer(Option<Vec<u64>>),
}

/// A condition that may pin tables of a scope. An outer join's condition only
/// restricts its nullable side, so it may only pin the tables in `only`.
enum Cond<'e> {
    Expr(&'e Expr, Option<Range<usize>>),
    /// `JOIN ... USING (C)`: the two tables' sharding columns are equal.
    Link(usize, usize, Option<Range<usize>>),
}

fn allowed(only: &Option<Range<usize>>, table: usize) -> bool {
    only.as_ref().is_none_or(|r| r.contains(&table))
}
