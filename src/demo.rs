//! `shardgate demo`: local clusters, the demo shard map, sample data, and the proxy.
