//! The promotions workload's record schemas (`schemas/`: begin, row, end,
//! abort on the rows topic; generation on the generations topic): see
//! [`build_support::schema_versions`].

fn main() {
    build_support::schema_versions();
}
