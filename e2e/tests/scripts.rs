//! The stack script's contract about data: `make up` never deletes anything;
//! only `make reset` does, and only with the stack stopped. Checked on the
//! script's own text (running `up` here would start a second stack).

fn function_body<'a>(script: &'a str, name: &str) -> &'a str {
    let start = script.find(&format!("\n{name}() {{")).unwrap_or_else(|| panic!("{name}() in stack.sh"));
    let rest = &script[start + 1..];
    let end = rest.find("\n}\n").expect("end of the function");
    &rest[..end]
}

#[test]
fn up_never_resets_data_and_reset_is_explicit() {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/stack.sh")).unwrap();
    let destructive = ["DROP SCHEMA", " del ", "rm -rf", "FLUSH"];
    for name in ["up", "deps"] {
        let body = function_body(&script, name);
        for word in destructive {
            assert!(!body.contains(word), "{name}() must not delete data, but contains `{word}`:\n{body}");
        }
    }
    let reset = function_body(&script, "reset");
    for word in ["DROP SCHEMA", "rm -rf"] {
        assert!(reset.contains(word), "reset() drops the read models and the broker log");
    }
    assert!(reset.contains("stop the stack first"), "reset() refuses while services run");
    let makefile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Makefile")).unwrap();
    assert!(makefile.contains("reset:") && makefile.contains("scripts/stack.sh reset"), "`make reset` exists");
}
