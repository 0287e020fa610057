//! Splits a multi-row `INSERT ... VALUES` whose rows belong to several shards into one
//! `INSERT` per shard, keeping the statement's own bytes (prefix, rows, suffix such as
//! `ON DUPLICATE KEY UPDATE`) unchanged.

use crate::planner::InsertShape;
use crate::protocol::command;
use crate::router::Target;

use super::fanout::ShardWrite;

/// One COM_QUERY payload per target, holding that target's rows in their original order.
/// `sql` is the statement's text (without the command byte); the shape's ranges index it.
/// Ranges that fall outside `sql` (which the planner never produces) yield `None`.
pub fn shard_inserts(
    sql: &[u8],
    shape: &InsertShape,
    parts: &[(Target, Vec<usize>)],
) -> Option<Vec<ShardWrite>> {
    parts
        .iter()
        .map(|(target, rows)| {
            let mut p = Vec::with_capacity(sql.len() + 1);
            p.push(command::QUERY);
            p.extend_from_slice(sql.get(shape.prefix.clone())?);
            for (n, &r) in rows.iter().enumerate() {
                if n > 0 {
                    p.push(b',');
                }
                let (range, _) = shape.rows.get(r)?;
                p.extend_from_slice(sql.get(range.clone())?);
            }
            p.extend_from_slice(sql.get(shape.suffix.clone())?);
            Some(ShardWrite {
                target: target.clone(),
                payload: p,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(label: &str) -> Target {
        Target {
            cluster: format!("c-{label}").into(),
            database: Some("app".into()),
            label: label.into(),
        }
    }

    #[test]
    fn each_shard_gets_its_rows_in_order_with_prefix_and_suffix() {
        let sql =
            b"INSERT INTO t (w, v) VALUES (1,'a'),(2,'b'),(3,'c') ON DUPLICATE KEY UPDATE v=1";
        let text = std::str::from_utf8(sql).expect("utf8");
        let at = |s: &str| {
            let i = text.find(s).expect("in text");
            i..i + s.len()
        };
        let shape = InsertShape {
            prefix: 0..at("(1,'a')").start,
            rows: vec![
                (at("(1,'a')"), Some(1)),
                (at("(2,'b')"), Some(2)),
                (at("(3,'c')"), Some(3)),
            ],
            suffix: at("(3,'c')").end..sql.len(),
        };
        let writes = shard_inserts(
            sql,
            &shape,
            &[(target("x"), vec![0, 2]), (target("y"), vec![1])],
        )
        .expect("valid ranges");
        let text_of = |w: &ShardWrite| String::from_utf8(w.payload[1..].to_vec()).expect("utf8");
        assert_eq!(
            text_of(&writes[0]),
            "INSERT INTO t (w, v) VALUES (1,'a'),(3,'c') ON DUPLICATE KEY UPDATE v=1"
        );
        assert_eq!(
            text_of(&writes[1]),
            "INSERT INTO t (w, v) VALUES (2,'b') ON DUPLICATE KEY UPDATE v=1"
        );
        assert!(writes.iter().all(|w| w.payload[0] == command::QUERY));
    }

    #[test]
    fn out_of_range_spans_are_refused_not_a_panic() {
        let shape = InsertShape {
            prefix: 0..3,
            rows: vec![(5..99, Some(1))],
            suffix: 99..99,
        };
        assert!(shard_inserts(b"INSERT", &shape, &[(target("x"), vec![0])]).is_none());
        assert!(shard_inserts(b"INSERT", &shape, &[(target("x"), vec![7])]).is_none());
    }
}
