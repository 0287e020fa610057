//! The MySQL wire codec.
