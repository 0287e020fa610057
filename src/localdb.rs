//! Local MariaDB servers started from the system's `mariadbd`, for `shardgate demo`
//! and the integration tests.
