//! State a backend connection can hold for one client session that shardgate cannot
//! move to another connection: why a connection is *reserved*.

/// Kinds of state a statement can leave on its connection that shardgate cannot move
/// to another connection. A connection holding any of them stays with its session until
/// the state is gone (`COM_RESET_CONNECTION`, the session ends, or the statement that
/// clears it), and never serves another session before a reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Reserve(u16);

impl Reserve {
    /// None.
    pub const NONE: Reserve = Reserve(0);
    /// `CREATE TEMPORARY TABLE`.
    pub const TEMPORARY_TABLE: Reserve = Reserve(1);
    /// `GET_LOCK()`: a named lock.
    pub const NAMED_LOCK: Reserve = Reserve(1 << 1);
    /// `LOCK TABLES` (cleared by `UNLOCK TABLES`).
    pub const TABLE_LOCK: Reserve = Reserve(1 << 2);
    /// A user variable set inside a query (`@v := ...`, `INTO @v`), which cannot be
    /// replayed (its value is only known to the server).
    pub const USER_VARIABLE: Reserve = Reserve(1 << 3);
    /// A SQL-level `PREPARE`.
    pub const PREPARED_STATEMENT: Reserve = Reserve(1 << 4);
    /// An open `HANDLER`.
    pub const HANDLER: Reserve = Reserve(1 << 5);
    /// State shardgate cannot see or replay: `CALL` of a procedure, `LAST_INSERT_ID(expr)`,
    /// `SET ROLE`, `XA`, `SET` statements inside a multi-statement query that failed.
    pub const UNKNOWN: Reserve = Reserve(1 << 6);
    /// A transaction the client opened (`BEGIN`, or a statement under
    /// `autocommit=0`): reported by the backend's status flags, not by the planner.
    pub const TRANSACTION: Reserve = Reserve(1 << 7);
    /// A cursor a prepared statement's execute opened (`COM_STMT_FETCH` reads it);
    /// gone when its last row is fetched or the statement is reset or closed.
    pub const CURSOR: Reserve = Reserve(1 << 8);

    const NAMES: [(Reserve, &'static str); 9] = [
        (Reserve::TEMPORARY_TABLE, "temporary table"),
        (Reserve::NAMED_LOCK, "GET_LOCK"),
        (Reserve::TABLE_LOCK, "LOCK TABLES"),
        (Reserve::USER_VARIABLE, "user variable"),
        (Reserve::PREPARED_STATEMENT, "PREPARE"),
        (Reserve::HANDLER, "HANDLER"),
        (Reserve::UNKNOWN, "unknown session state"),
        (Reserve::TRANSACTION, "transaction"),
        (Reserve::CURSOR, "cursor"),
    ];

    /// Whether no state is held.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether all of `other` is held.
    pub fn contains(self, other: Reserve) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both.
    pub fn union(self, other: Reserve) -> Reserve {
        Reserve(self.0 | other.0)
    }

    /// This without `other`.
    pub fn without(self, other: Reserve) -> Reserve {
        Reserve(self.0 & !other.0)
    }

    /// Names of the kinds held, for logs and errors (`temporary table, GET_LOCK`).
    pub fn describe(self) -> String {
        let names: Vec<&str> = Reserve::NAMES
            .iter()
            .filter(|(r, _)| self.contains(*r))
            .map(|(_, n)| *n)
            .collect();
        names.join(", ")
    }
}
