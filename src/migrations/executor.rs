//! One executor per cluster.
