//! Ranges on the sharding column: `C BETWEEN a AND b`, `C >= a`, `C < b`, `a <= C`, as
//! top-level AND-conjuncts with non-negative integer literals.
//!
//! The planner only records the range of workspace ids the conditions allow; whether one
//! shard holds all of them depends on the keyspace's vindex, shards and pins, which the
//! router knows (`Keyspace::placement_of_range`). Only a numeric (order-preserving)
//! vindex keeps a range of ids inside a range of keyspace ids.
//!
//! Bounds must be number literals: a quoted bound compares as a string when the column
//! is a string (`'100'` lies between `'1'` and `'2'`), so it proves nothing about the
//! numeric range. A negative or fractional bound leaves the condition unrecognised,
//! and the statement is refused as before.

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};

use super::tag::parse_workspace_digits;

/// An inclusive range of workspace ids `[low, high]`, empty when `low > high`. Kept in
/// i128 so that `C > 18446744073709551615` and `C < 0` stay exact (and empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdRange {
    low: i128,
    high: i128,
}

/// One side of a comparison, seen from the column: `C > v`, `C >= v`, `C < v`, `C <= v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Above,
    AtLeast,
    Below,
    AtMost,
}

impl IdRange {
    /// Every workspace id.
    pub(crate) fn all() -> IdRange {
        IdRange {
            low: 0,
            high: i128::from(u64::MAX),
        }
    }

    /// The range also limited by `C <cmp> v`.
    pub(crate) fn and(self, cmp: Cmp, v: u64) -> IdRange {
        let v = i128::from(v);
        let mut r = self;
        match cmp {
            Cmp::Above => r.low = r.low.max(v + 1),
            Cmp::AtLeast => r.low = r.low.max(v),
            Cmp::Below => r.high = r.high.min(v - 1),
            Cmp::AtMost => r.high = r.high.min(v),
        }
        r
    }

    /// The range also limited by `C BETWEEN low AND high`.
    pub(crate) fn between(self, low: u64, high: u64) -> IdRange {
        self.and(Cmp::AtLeast, low).and(Cmp::AtMost, high)
    }

    /// Its bounds as workspace ids, `low > high` when the range is empty. An empty
    /// range keeps a low bound that is a workspace id (its shard answers the empty
    /// result as well as any other would).
    pub(crate) fn bounds(self) -> (u64, u64) {
        let max = i128::from(u64::MAX);
        if self.low <= self.high {
            // Both within [0, u64::MAX]: they start there and only narrow.
            let low = u64::try_from(self.low).unwrap_or(0);
            let high = u64::try_from(self.high).unwrap_or(u64::MAX);
            return (low, high);
        }
        let low = u64::try_from(self.low.clamp(1, max)).unwrap_or(u64::MAX);
        (low, low - 1)
    }
}

/// The comparison `left <op> right` as seen from the column, when the column is on the
/// left (`column_left`) or on the right (`5 <= C` is `C >= 5`).
pub(crate) fn comparison(op: &BinaryOperator, column_left: bool) -> Option<Cmp> {
    let cmp = match op {
        BinaryOperator::Gt => Cmp::Above,
        BinaryOperator::GtEq => Cmp::AtLeast,
        BinaryOperator::Lt => Cmp::Below,
        BinaryOperator::LtEq => Cmp::AtMost,
        _ => return None,
    };
    Some(if column_left {
        cmp
    } else {
        match cmp {
            Cmp::Above => Cmp::Below,
            Cmp::AtLeast => Cmp::AtMost,
            Cmp::Below => Cmp::Above,
            Cmp::AtMost => Cmp::AtLeast,
        }
    })
}

/// A range bound: a number literal that is a non-negative integer (`-0` and `+5` too).
pub(crate) fn integer_bound(e: &Expr) -> Option<u64> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => parse_workspace_digits(n),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => (integer_bound(expr)? == 0).then_some(0),
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        }
        | Expr::Nested(expr) => integer_bound(expr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_narrow_and_stay_exact_at_the_edges() {
        let r = IdRange::all().and(Cmp::AtLeast, 10).and(Cmp::Below, 20);
        assert_eq!(r.bounds(), (10, 19));
        let r = IdRange::all().and(Cmp::Above, 10).and(Cmp::AtMost, 20);
        assert_eq!(r.bounds(), (11, 20));
        assert_eq!(IdRange::all().bounds(), (0, u64::MAX));
        assert_eq!(IdRange::all().between(5, 5).bounds(), (5, 5));
        // Empty ranges: low above high, low still a workspace id.
        let (l, h) = IdRange::all().between(9, 3).bounds();
        assert!(l > h && l == 9);
        let (l, h) = IdRange::all().and(Cmp::Below, 0).bounds();
        assert!(l > h);
        let (l, h) = IdRange::all().and(Cmp::Above, u64::MAX).bounds();
        assert!(l > h && l == u64::MAX);
    }

    #[test]
    fn a_column_on_the_right_flips_the_comparison() {
        assert_eq!(comparison(&BinaryOperator::LtEq, false), Some(Cmp::AtLeast));
        assert_eq!(comparison(&BinaryOperator::Gt, false), Some(Cmp::Below));
        assert_eq!(comparison(&BinaryOperator::Gt, true), Some(Cmp::Above));
        assert_eq!(comparison(&BinaryOperator::Eq, true), None);
    }
}
