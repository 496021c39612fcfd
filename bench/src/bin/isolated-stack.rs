//! An isolated stack of the four release services (`e2e::Stack`: its own
//! ports, topics, PostgreSQL schema and Redis prefix, on the shared broker,
//! PostgreSQL and Redis), for measuring by hand or from a script beside
//! whatever else runs on the fixed ports of `make up`.
//!
//! Prints one JSON line: the services' addresses (`command`, `query`, and the
//! processor's and materializer's ops listeners, which serve `/metrics`), the
//! processor's pid and the environment that points a bench tool at this
//! stack's analytics topics (`env`: `KAFKA_BROKERS`, `EVENTS_TOPIC`). Then
//! reads commands, one a line, on stdin: `stop-processor`, `start-processor`
//! (prints `{"processor_pid": …, "processor": <its ops address>}`). At the end of stdin (or Ctrl-C) it stops
//! the services and removes the topics, schema and keys.

use std::io::Write;

use e2e::Service;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() {
    // The release binaries next to this one (e2e::Stack looks next to a test executable otherwise).
    if std::env::var_os("ANALYTICS_BIN_DIR").is_none() {
        let exe = std::env::current_exe().expect("the path of this executable");
        std::env::set_var("ANALYTICS_BIN_DIR", exe.parent().expect("a folder"));
    }
    let mut stack = e2e::Stack::new();
    let stop = common::engine::shutdown::on_signals();
    let result = tokio::select! {
        r = serve(&mut stack) => r,
        _ = stop.cancelled() => Ok(()),
    };
    stack.cleanup().await;
    if let Err(e) = result {
        eprintln!("[isolated-stack] {e:#}");
        std::process::exit(1);
    }
    // Not a return: the runtime would wait for its thread blocked reading stdin, which may stay open.
    std::process::exit(0);
}

async fn serve(stack: &mut e2e::Stack) -> anyhow::Result<()> {
    stack.start_all().await;
    let out = json!({
        "command": stack.addr("command").to_string(),
        "query": stack.addr("query").to_string(),
        "processor": stack.addr("processor").to_string(),
        "materializer": stack.addr("materializer").to_string(),
        "processor_pid": stack.pid("processor"),
        "env": {"KAFKA_BROKERS": stack.kafka.brokers, "EVENTS_TOPIC": stack.kafka.events_topic},
    });
    println!("{out}");
    std::io::stdout().flush()?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "stop-processor" => {
                stack.terminate("processor");
            }
            "start-processor" => {
                let ops = stack.start("processor", Service::Processor).await;
                println!("{}", json!({"processor_pid": stack.pid("processor"), "processor": ops.to_string()}));
                std::io::stdout().flush()?;
            }
            other => eprintln!("[isolated-stack] unknown command `{other}`"),
        }
    }
    Ok(())
}
