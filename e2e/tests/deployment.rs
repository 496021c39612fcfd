// tier: unit
//! The Docker Compose deployment cannot run here (no Docker engine), so this
//! checks what can go wrong without running it: the files parse, the services
//! exist, every environment variable given to a service is one its binary
//! really reads (per `--help`), ports agree between the services, Prometheus
//! and the gateway, each of the three Kafka nodes keeps its log on its volume
//! with the native cluster's broker settings, the build context is small, the services' image is built
//! once, and each service waits for exactly the backends it uses.

use std::collections::{BTreeMap, BTreeSet};
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

/// docker/compose.yaml with YAML merge keys (`<<:`) resolved, as Compose reads it.
fn compose() -> Value {
    let text = std::fs::read_to_string(repo().join("docker/compose.yaml")).expect("docker/compose.yaml");
    let mut value: Value = serde_yaml::from_str(&text).expect("compose.yaml is YAML");
    value.apply_merge().expect("compose.yaml merge keys resolve");
    value
}

/// The four services built from this repository.
const SERVICES: [&str; 4] = ["command", "processor", "materializer", "query"];
/// The Kafka cluster's nodes, whose node ids are 1, 2, 3 in this order.
const KAFKA_NODES: [&str; 3] = ["kafka-1", "kafka-2", "kafka-3"];
/// The image the four services run.
const IMAGE: &str = "analytics:latest";

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
        "kafka-1",
        "kafka-2",
        "kafka-3",
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
    for node in KAFKA_NODES {
        assert!(c["services"][node]["image"].as_str().unwrap().starts_with("apache/kafka"), "{node}");
    }
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
fn each_help_lists_only_the_kafka_settings_its_service_uses() {
    // (variable, services that read it): the broker and topics a service touches, leases where it shares partitions.
    let kafka: [(&str, &[&str]); 8] = [
        ("KAFKA_BROKERS", &["command", "processor", "materializer"]),
        ("KAFKA_CREATE_TOPICS", &["command", "processor", "materializer"]),
        ("EVENTS_TOPIC", &["command", "processor"]),
        ("EVENTS_PARTITIONS", &["command", "processor"]),
        ("AGGREGATES_TOPIC", &["processor", "materializer"]),
        ("AGGREGATES_PARTITIONS", &["processor", "materializer"]),
        ("MEMBER_LEASE", &["processor", "materializer"]),
        ("MEMBER_HEARTBEAT", &["processor", "materializer"]),
    ];
    for service in SERVICES {
        let help = help(service);
        for (var, readers) in kafka {
            assert_eq!(help.contains(&format!("[env: {var}=")), readers.contains(&service), "{service} and {var}");
        }
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
    let brokers: Vec<String> = KAFKA_NODES.iter().map(|n| format!("{n}:9092")).collect();
    assert_eq!(environment(&c["services"]["command"])["KAFKA_BROKERS"], brokers.join(","), "every node bootstraps");
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
        "common/src/engine/http.rs",
        "command/src/metrics.rs",
        "processor/src/engine/metrics.rs",
        "workloads/analytics/src/processor.rs",
        "workloads/increments/src/processor.rs",
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

#[test]
fn kafka_keeps_its_log_on_its_volume() {
    let c = compose();
    let mut volumes = BTreeSet::new();
    let mut cluster_ids = BTreeSet::new();
    for node in KAFKA_NODES {
        let kafka = &c["services"][node];
        let image = kafka["image"].as_str().unwrap();
        let major: u32 = image
            .strip_prefix("apache/kafka:")
            .and_then(|tag| tag.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("{node} image is apache/kafka:<version>: {image}"));
        assert!(major >= 4, "Apache Kafka 4.x, like the native stack: {image}");

        // The log directory is the mount point of a named volume declared at the top level.
        let env = environment(kafka);
        let log_dirs = env.get("KAFKA_LOG_DIRS").expect("KAFKA_LOG_DIRS is set (the image's default is under /tmp)");
        let mounts: Vec<&str> = kafka["volumes"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let (volume, target) = mounts
            .iter()
            .filter_map(|m| m.split_once(':'))
            .map(|(source, rest)| (source, rest.split(':').next().unwrap()))
            .find(|(_, target)| target == log_dirs)
            .unwrap_or_else(|| panic!("{node}: KAFKA_LOG_DIRS={log_dirs} is the mount point of a volume: {mounts:?}"));
        assert_eq!(target, "/var/lib/kafka/data", "the directory the image creates for its user");
        assert!(!volume.contains('/') && !volume.starts_with('.'), "a named volume, not a bind mount: {volume}");
        assert!(c["volumes"].get(volume).is_some(), "volume {volume} is declared");
        assert!(volumes.insert(volume.to_owned()), "each node has a volume of its own: {volume}");
        let id = env.get("CLUSTER_ID").filter(|id| !id.is_empty());
        cluster_ids.insert(id.expect("the log is formatted with a fixed cluster id").clone());

        // Healthy means the broker answers requests, not that a port is open.
        let check = serde_yaml::to_string(&kafka["healthcheck"]["test"]).unwrap();
        assert!(check.contains("--bootstrap-server"), "the healthcheck asks the broker: {check}");
    }
    assert_eq!(cluster_ids.len(), 1, "one cluster: {cluster_ids:?}");
}

/// `key=value` lines of a properties file (comments and blank lines left out).
fn properties(path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once('=').expect("key=value"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn kafka_mirrors_the_native_cluster_settings() {
    // What scripts/kafka.sh gives each node of a cluster (BROKERS=3): server.properties with the
    // keys of cluster.properties replaced, and node.id its own.
    let mut settings: BTreeMap<String, String> = properties("scripts/kafka/server.properties").into_iter().collect();
    assert!(settings.len() > 10, "server.properties parsed: {settings:?}");
    let cluster = properties("scripts/kafka/cluster.properties");
    assert!(cluster.iter().any(|(k, v)| k == "min.insync.replicas" && v == "2"), "{cluster:?}");
    settings.extend(cluster);
    for (n, node) in KAFKA_NODES.iter().enumerate() {
        let env = environment(&compose()["services"][node]);
        settings.insert("node.id".into(), (n + 1).to_string());
        for (key, value) in &settings {
            // The image's rule: KAFKA_ + upper case, '.' -> '_', '_' -> "__", '-' -> "___".
            let var = format!("KAFKA_{}", key.replace('_', "__").replace('-', "___").replace('.', "_").to_uppercase());
            assert_eq!(env.get(&var), Some(value), "{node}: compose sets {var} like {key}={value}");
        }
        for (var, value) in [
            ("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false"),
            ("KAFKA_DEFAULT_REPLICATION_FACTOR", "3"),
            ("KAFKA_MIN_INSYNC_REPLICAS", "2"),
            ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "3"),
            ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "3"),
            ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "2"),
            ("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"),
            ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
            ("KAFKA_LOG_CLEANER_ENABLE", "true"),
        ] {
            assert_eq!(env.get(var).map(String::as_str), Some(value), "{node}: {var}");
        }
        let advertised = format!("PLAINTEXT://{node}:9092");
        assert_eq!(env.get("KAFKA_ADVERTISED_LISTENERS"), Some(&advertised), "{node}");
    }
}

/// Whether a `.dockerignore` pattern excludes `path` (enough of the syntax for
/// this file: `**/` prefixes, `*` within one path component, directories).
fn ignores(pattern: &str, path: &str) -> bool {
    fn glob(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                name.starts_with(head)
                    && (head.len()..=name.len()).any(|i| name.is_char_boundary(i) && glob(tail, &name[i..]))
            }
        }
    }
    fn matches(pattern: &[&str], path: &[&str]) -> bool {
        // A pattern matching a directory excludes everything below it.
        pattern.len() <= path.len() && pattern.iter().zip(path).all(|(p, n)| !n.contains('/') && glob(p, n))
    }
    let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
    let path: Vec<&str> = path.split('/').collect();
    match pattern.strip_prefix("**/") {
        Some(rest) => {
            let rest: Vec<&str> = rest.split('/').collect();
            (0..path.len()).any(|start| matches(&rest, &path[start..]))
        }
        None => matches(&pattern.split('/').collect::<Vec<_>>(), &path),
    }
}

#[test]
fn dockerignore_keeps_the_build_context_small() {
    let c = compose();
    let builds: Vec<&Value> = c["services"].as_mapping().unwrap().values().filter_map(|s| s.get("build")).collect();
    for build in &builds {
        assert_eq!(build["context"].as_str(), Some(".."), "the build context is the repository root");
        let dockerfile = build["dockerfile"].as_str().unwrap();
        // BuildKit would read <Dockerfile>.dockerignore instead of the root one.
        assert!(!repo().join(format!("{dockerfile}.dockerignore")).exists(), "no {dockerfile}.dockerignore");
    }
    let text = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore at the repository root");
    let patterns: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert!(!patterns.iter().any(|p| p.starts_with('!')), "no re-inclusions (this test does not model them)");
    let excluded = |path: &str| patterns.iter().any(|p| ignores(p, path));
    for path in ["target", "target/release/query", "bench/target", "run", ".git", "node_modules", "docs"] {
        assert!(excluded(path), ".dockerignore excludes {path}");
    }
    // What `cargo build --release --locked --bins` needs stays in the context.
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let members: Vec<&str> = manifest
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list.split(',').map(|m| m.trim().trim_matches('"')).filter(|m| !m.is_empty()).collect())
        .expect("workspace members");
    assert!(members.contains(&"query"), "members parsed: {members:?}");
    let needed = [
        "Cargo.toml",
        "Cargo.lock",
        "common/schemas/progress.v1.avsc",
        "common/migrations",
        "workloads/analytics/schemas/event.v2.avsc",
        "workloads/analytics/migrations",
    ];
    for member in &members {
        for path in [format!("{member}/Cargo.toml"), format!("{member}/src")] {
            assert!(!excluded(&path), ".dockerignore keeps {path} (the build needs it)");
        }
    }
    for path in needed {
        assert!(!excluded(path), ".dockerignore keeps {path} (the build needs it)");
    }
    // The matcher itself.
    assert!(ignores("**/target", "a/b/target/x") && ignores("perf.data*", "perf.data.old"));
    assert!(!ignores("target", "bench/target") && !ignores("run", "runner") && !ignores("**/*.log", "a/log"));
}

#[test]
fn the_four_services_share_one_image_built_once() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let builders: Vec<&str> =
        services.iter().filter(|(_, s)| s.get("build").is_some()).map(|(name, _)| name.as_str().unwrap()).collect();
    assert_eq!(builders.len(), 1, "exactly one service builds an image: {builders:?}");
    let builder = &c["services"][builders[0]];
    assert!(SERVICES.contains(&builders[0]), "the builder is one of the four services: {builders:?}");
    assert_eq!(builder["image"].as_str(), Some(IMAGE), "the build is tagged {IMAGE}");
    let dockerfile = builder["build"]["dockerfile"].as_str().unwrap();
    assert!(repo().join(dockerfile).is_file(), "{dockerfile} exists (relative to the repository root)");
    for service in SERVICES {
        let s = &c["services"][service];
        assert_eq!(s["image"].as_str(), Some(IMAGE), "{service} runs {IMAGE}");
        if service != builders[0] {
            // Never pulled from a registry: it is the image built above.
            assert_eq!(s["pull_policy"].as_str(), Some("never"), "{service} pull_policy");
        }
    }
}

#[test]
fn each_service_waits_for_exactly_what_it_uses() {
    let c = compose();
    // What each service uses, per its configuration (<service>/src/config.rs).
    let uses: [(&str, &[&str]); 4] = [
        ("command", &["kafka", "postgres"]),
        ("processor", &["kafka", "postgres"]),
        ("materializer", &["kafka", "postgres", "redis"]),
        ("query", &["postgres", "redis"]),
    ];
    // The variable through which a service reaches each backend.
    let backends = [("kafka", "KAFKA_BROKERS"), ("postgres", "PG_URL"), ("redis", "REDIS_URL")];
    for (service, expected) in uses {
        let expected: BTreeSet<&str> = expected.iter().copied().collect();
        let help = help(service);
        let reads: BTreeSet<&str> =
            backends.iter().filter(|(_, var)| help.contains(&format!("[env: {var}="))).map(|(b, _)| *b).collect();
        assert_eq!(reads, expected, "{service}'s --help names the backends it uses");

        let s = &c["services"][service];
        let depends = s["depends_on"].as_mapping().unwrap_or_else(|| panic!("{service} depends_on is a mapping"));
        let waits: BTreeSet<&str> = depends.keys().map(|k| k.as_str().unwrap()).collect();
        // Kafka is three nodes: a service that uses it waits for each (a topic of three replicas
        // cannot be created before three brokers have registered).
        let expected_services: BTreeSet<&str> =
            expected.iter().flat_map(|b| if *b == "kafka" { KAFKA_NODES.to_vec() } else { vec![*b] }).collect();
        assert_eq!(waits, expected_services, "{service} waits for exactly what it uses");
        for (backend, condition) in depends {
            let backend = backend.as_str().unwrap();
            assert_eq!(condition["condition"].as_str(), Some("service_healthy"), "{service} waits for {backend}");
            assert!(c["services"][backend]["healthcheck"]["test"].is_sequence(), "{backend} has a healthcheck");
        }
        let env = environment(s);
        for (backend, var) in backends {
            assert_eq!(
                env.contains_key(var),
                expected.contains(backend),
                "{service}: {var} given iff it uses {backend}"
            );
        }
    }
}
