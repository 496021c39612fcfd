//! The answers workload: an event-sourced key → answer store, in every role.
//!
//! STAND-IN (grpc branch): the workload's own lib.rs replaces this file at merge, keeping the
//! `grpc` module below.

pub mod grpc;
