//! The durable queue: `_shardgate.schema_migrations` on each cluster.
