// tier: unit
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

/// Runs `alive` of scripts/lib.sh on a PID file naming `pid`: true if the
/// scripts treat the process as running.
fn lib_sh_alive(pid: u32) -> bool {
    let dir = std::env::temp_dir().join(format!("alive-{}-{pid}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("service.pid");
    std::fs::write(&pidfile, format!("{pid}\n")).unwrap();
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lib.sh");
    let status = std::process::Command::new("bash")
        .args(["-c", "LOG_TAG=test; source \"$1\"; alive \"$2\"", "bash", lib])
        .arg(&pidfile)
        .status()
        .expect("bash runs");
    std::fs::remove_dir_all(&dir).unwrap();
    status.success()
}

/// `make up` right after a service was killed must not see the dying process
/// as running: a PID that is gone, or a zombie not reaped yet, is stopped.
#[test]
fn a_pid_that_is_gone_or_a_zombie_is_not_running() {
    let mut running = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
    assert!(lib_sh_alive(running.id()), "a running process is alive");
    // Killed but not reaped (we do not wait for it yet): a zombie, as a killed
    // service is until its parent collects it.
    running.kill().expect("kill");
    let zombie = running.id();
    let stat = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    for _ in 0..100 {
        if stat(zombie).rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(stat(zombie).rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')), "a zombie now");
    assert!(!lib_sh_alive(zombie), "a zombie is stopped");
    running.wait().expect("reaped");
    assert!(!lib_sh_alive(zombie), "a process that is gone is stopped");
    assert!(!lib_sh_alive(u32::MAX / 2), "a PID nothing has is stopped");
}
