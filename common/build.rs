//! The engine's own record schemas (`schemas/`, the progress record): see
//! [`build_support::schema_versions`].

fn main() {
    build_support::schema_versions();
}
