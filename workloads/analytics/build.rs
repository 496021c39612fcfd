//! The analytics workload's record schemas (`schemas/`: event, hour_aggregate): see
//! [`build_support::schema_versions`].

fn main() {
    build_support::schema_versions();
}
