//! Backend connections of our own to MariaDB/MySQL, pooled per cluster.

pub mod conn;
mod idle;
pub mod pool;
pub mod reserve;
pub mod sql;
pub mod stmts;
pub mod tls;
mod waiters;

pub use conn::{BackendConn, BackendError, Collected, ConnKey, ConnectError};
pub use pool::{ClusterPool, Lease, Wanted};
pub use reserve::Reserve;
pub use sql::{quote_ident, quote_literal, Rows, SqlConn, SqlError};
pub use tls::{BackendStream, BackendTls, BackendTlsMode};
