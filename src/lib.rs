//! # shardgate
//!
//! A MySQL-wire-protocol proxy that routes each query to the cluster that owns its
//! workspace. Applications connect to it as if it were MySQL.
//!
//! ## Where things live
//!
//! The data path, in the order a statement takes it:
//!
//! - [`server`]: the listener and graceful shutdown.
//! - [`frontdoor`]: before a socket is a session: the pending-login pool (apart from
//!   the client slots), the login throttle, and escaping client text for the log.
//! - [`protocol`]: the wire codec (framing, handshake, auth, packets), both sides, and
//!   TLS from clients ([`protocol::tls`]) and their compressed protocol
//!   ([`protocol::compress`]).
//! - [`session`]: one client connection: login, the command loop, the session's state
//!   (variables, transaction, *reserved* backend connections and why they are
//!   reserved), and what happens when a backend is lost.
//! - [`planner`]: classifies a statement, finds its workspace(s) from its text, says
//!   what it leaves on its connection ([`planner::Effects`]) and whether only an admin
//!   user may run it ([`planner::Privilege`]); [`planner::PlanCache`] keeps plans by
//!   literal-stripped text so a statement seen before is not planned again.
//! - [`router`]: turns a plan plus the vschema into backend targets.
//! - [`engine`]: execution primitives over several shards (split `INSERT`, parallel
//!   broadcast), behind a [`engine::Cursor`] the session implements.
//! - [`backend`]: connections of our own to MariaDB/MySQL, pooled per cluster; a pool
//!   never hands out a connection that still holds another session's state.
//!
//! Shared state and control:
//!
//! - [`shared`]: the users, and the runtime snapshot (vschema + pools + generation) that a
//!   statement reads once, without a lock.
//! - [`vschema`]: the shard map: clusters, keyspaces, shards, vindexes, pins.
//! - [`ddl`]: what happens to an application's schema change (run now, or queued).
//! - [`admin`]: the SQL control surface for admin users (`SHOW MIGRATIONS`,
//!   `ALTER MIGRATION`), which answers even while a cluster is down, and the bounded,
//!   pooled control connections to the clusters.
//! - [`migrations`]: the durable migration queue on each cluster, its executors (one per
//!   cluster across every proxy), strategies, the copy engine and the throttle.
//! - [`metrics`] and [`metrics_http`]: per-cluster latency and failure windows, and the
//!   Prometheus endpoint.
//! - [`config`]: the proxy's own settings; [`error`]: errors that become ERR packets,
//!   each with who is at fault, whether a retry can help, and the cluster.
//!
//! Not on the serving path: [`demo`] (local MariaDB servers with sample data, for
//! `shardgate demo` and the tests; [`demo::localdb`] starts the servers).

pub mod access;
pub mod admin;
pub mod backend;
pub mod clock;
pub mod config;
pub mod control;
pub mod ddl;
pub mod demo;
pub mod engine;
pub mod error;
pub mod frontdoor;
pub mod health;
pub mod metrics;
pub mod metrics_http;
pub mod migrations;
pub mod name;
pub mod planner;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
pub mod shared;
#[cfg(test)]
mod testing;
pub mod timer;
pub mod topo;
pub mod traffic;
pub mod vschema;
pub mod workers;
