//! The answers workload: an event-sourced key → answer store whose writes are
//! decided, race-free, by the one owner of the key's partition.
pub mod key;
pub mod records;
pub mod request;
pub mod rules;
pub mod state;
pub mod wire;
