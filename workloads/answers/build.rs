//! The answers workload's record schemas (`schemas/`: command, change, reply): see
//! [`build_support::schema_versions`].

fn main() {
    build_support::schema_versions();
}
