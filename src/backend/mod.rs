//! Backend connections and pools.
