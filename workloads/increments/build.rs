//! The increments workload's record schemas (`schemas/`: increment, increment_sum): see
//! [`build_support::schema_versions`].

fn main() {
    build_support::schema_versions();
}
