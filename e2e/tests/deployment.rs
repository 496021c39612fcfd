//! The Docker Compose deployment cannot run here (no Docker engine), so this
//! checks what can go wrong without running it: the files parse, the services
//! exist, every environment variable given to a service is one its binary
//! really reads (per `--help`), and ports agree between the services,
//! Prometheus and the gateway.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use e2e::bin_dir;
use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn help(bin: &str) -> String {
    let out = Command::new(bin_dir().join(bin)).arg("--help").env_clear().output().expect("running --help");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("docker/compose.yaml")).expect("docker/compose.yaml");
    serde_yaml::from_str(&text).expect("compose.yaml is YAML")
}

/// A service's environment with YAML merge keys (`<<:`) resolved.
fn environment(service: &Value) -> BTreeMap<String, String> {
    fn collect(v: &Value, out: &mut BTreeMap<String, String>) {
        if let Value::Sequence(items) = v {
            items.iter().for_each(|item| collect(item, out));
        }
        if let Value::Mapping(m) = v {
            for (k, v) in m {
                match (k.as_str(), v) {
                    (Some("<<"), merged) => collect(merged, out),
                    (Some(k), Value::String(s)) => {
                        out.insert(k.to_owned(), s.clone());
                    }
                    (Some(k), other) => {
                        out.insert(k.to_owned(), serde_yaml::to_string(other).unwrap().trim().to_owned());
                    }
                    _ => {}
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    collect(&service["environment"], &mut out);
    out
}

#[test]
fn compose_names_every_part_of_the_deployment() {
    let c = compose();
    for name in [
        "kafka",
        "redis",
        "postgres",
        "command",
        "processor",
        "materializer",
        "query",
        "gateway",
        "prometheus",
        "grafana",
    ] {
        assert!(c["services"][name].is_mapping(), "service {name} missing");
    }
    assert!(c["services"]["kafka"]["image"].as_str().unwrap().starts_with("apache/kafka"));
    let gateway_ports = serde_yaml::to_string(&c["services"]["gateway"]["ports"]).unwrap();
    assert!(gateway_ports.contains("8080:8080"), "one public port: {gateway_ports}");
}

#[test]
fn every_variable_given_to_a_service_is_one_it_reads() {
    let c = compose();
    // Variables the process environment gives to the runtime, not to our flags.
    let runtime = ["RUST_LOG"];
    for service in ["command", "processor", "materializer", "query"] {
        let help = help(service);
        let env = environment(&c["services"][service]);
        assert!(!env.is_empty(), "{service} has an environment");
        for key in env.keys().filter(|k| !runtime.contains(&k.as_str())) {
            assert!(help.contains(&format!("[env: {key}=")), "{service} does not read {key} (see its --help)");
        }
        let cmd = serde_yaml::to_string(&c["services"][service]["command"]).unwrap();
        assert!(cmd.contains(service), "{service} runs its own binary: {cmd}");
    }
}

#[test]
fn ports_agree_between_services_prometheus_and_the_gateway() {
    let c = compose();
    let listen =
        |service: &str, var: &str| environment(&c["services"][service])[var].rsplit(':').next().unwrap().to_owned();
    let ports = [
        ("command", listen("command", "COMMAND_LISTEN")),
        ("query", listen("query", "QUERY_LISTEN")),
        ("processor", listen("processor", "PROCESSOR_OPS_LISTEN")),
        ("materializer", listen("materializer", "MATERIALIZER_OPS_LISTEN")),
    ];
    let prometheus: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("docker/prometheus/prometheus.yml")).unwrap())
            .unwrap();
    let targets = serde_yaml::to_string(&prometheus["scrape_configs"][0]["static_configs"][0]["targets"]).unwrap();
    for (service, port) in &ports {
        assert!(targets.contains(&format!("{service}:{port}")), "Prometheus scrapes {service}:{port}: {targets}");
    }
    let nginx = std::fs::read_to_string(repo().join("docker/nginx/nginx.conf")).unwrap();
    assert!(nginx.contains(&format!("server command:{};", ports[0].1)), "gateway proxies to command");
    assert!(nginx.contains(&format!("server query:{};", ports[1].1)), "gateway proxies to query");
    assert!(nginx.contains("POST command;"), "POST goes to the command service");
    assert!(nginx.contains("default query;"), "GET goes to the query service");
    // Every service that reaches PostgreSQL or Kafka names the compose services.
    for service in ["processor", "materializer", "query"] {
        let env = environment(&c["services"][service]);
        assert!(env["PG_URL"].contains("@postgres:5432/"), "{service} PG_URL");
    }
    assert!(environment(&c["services"]["command"])["KAFKA_BROKERS"].starts_with("kafka:"));
}

#[test]
fn the_grafana_dashboard_is_provisioned_and_queries_real_metrics() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docker/grafana/dashboards/analytics.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    // Each metric the dashboard uses is one the code defines.
    let sources: String = [
        "common/src/http.rs",
        "command/src/metrics.rs",
        "processor/src/metrics.rs",
        "materializer/src/metrics.rs",
        "query/src/metrics.rs",
    ]
    .iter()
    .map(|p| std::fs::read_to_string(repo().join(p)).unwrap())
    .collect();
    for expr in &exprs {
        for word in
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("analytics_"))
        {
            let base = word.trim_end_matches("_bucket");
            assert!(sources.contains(&format!("\"{base}\"")), "dashboard uses unknown metric {base}");
        }
    }
    for needle in ["freshness", "lag", "analytics_http_request_duration_seconds", "analytics_http_requests_total"] {
        assert!(exprs.iter().any(|e| e.contains(needle)), "dashboard shows {needle}");
    }
}
