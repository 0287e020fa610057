//! # shardgate
//!
//! A MySQL-wire-protocol proxy that routes each query to the cluster that owns its
//! workspace. Applications connect to it as if it were MySQL.
//!
//! Where things live:
//!
//! - [`protocol`]: the wire codec (framing, handshake, auth, packets), both sides.
//! - [`backend`]: connections of our own to MariaDB/MySQL, pooled per cluster.
//! - [`vschema`]: the shard map: clusters, keyspaces, shards, vindexes, pins.
//! - [`planner`]: classifies a statement and finds its workspace(s) from its text.
//! - [`router`]: turns a plan plus the vschema into backend targets.
//! - [`session`]: one client connection: its state, transaction, and command loop.
//! - [`server`]: the listener, connection limits and graceful shutdown.
//! - [`config`]: the proxy's own settings; [`error`]: errors that become ERR packets.
//! - [`demo`]: `shardgate demo`, and [`demo::localdb`], the local MariaDB servers it and
//!   the tests start. Test and demo support only: no serving module imports them.

pub mod backend;
pub mod config;
pub mod ddl;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod metrics_http;
pub mod migrations;
pub mod planner;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
pub mod vschema;
