//! Build-time code of the widgets workload: its record schemas (`schemas/`:
//! command, change, reply; see [`build_support::schema_versions`]).

fn main() {
    build_support::schema_versions();
}
