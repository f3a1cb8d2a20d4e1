//! `docker-compose.yml` and the `Dockerfile`, checked where no Docker engine runs: the compose file
//! against the Compose Specification's JSON schema (vendored in `ci/compose/`, from
//! compose-spec/compose-spec `schema/compose-spec.json`, commit 170098b, Apache-2.0), and the wiring a
//! Docker user relies on: the service waits for its dependencies, reaches them by their compose names,
//! and its image is built by the command CI runs.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repository().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// `docker-compose.yml`, as JSON.
fn compose_file() -> Value {
    serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML")
}

/// What the schema finds wrong with `document`: one line per error, empty when it is valid.
fn schema_errors(document: &Value) -> Vec<String> {
    let schema: Value =
        serde_json::from_str(&read("ci/compose/compose-spec.json")).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    validator
        .iter_errors(document)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let errors = schema_errors(&compose_file());
    assert!(errors.is_empty(), "{errors:#?}");
}

/// The schema test could pass by accepting anything: the same file with a misspelt key and a port of
/// the wrong type is refused, each error named.
#[test]
fn the_schema_refuses_a_compose_file_that_breaks_the_specification() {
    let mut broken = compose_file();
    let service = &mut broken["services"]["orders-service"];
    service["depends_onn"] = json!(["postgres"]);
    service["ports"] = json!({"grpc": 50051});
    let errors = schema_errors(&broken);
    assert!(
        errors.iter().any(|e| e.contains("depends_onn")),
        "the misspelt key: {errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("/services/orders-service/ports")),
        "the ports: {errors:#?}"
    );
}

#[test]
fn the_service_starts_after_its_dependencies_and_reaches_them_by_their_compose_names() {
    let compose = compose_file();
    let services = compose["services"].as_object().expect("services");
    let service = &services["orders-service"];
    for (dependency, condition) in [
        ("postgres", "service_healthy"),
        ("redis", "service_healthy"),
        ("kafka-init", "service_completed_successfully"),
    ] {
        assert_eq!(
            service["depends_on"][dependency]["condition"], condition,
            "orders-service waits for {dependency}"
        );
        assert!(services.contains_key(dependency), "{dependency} is a service");
    }
    let environment = &service["environment"];
    for (variable, host) in [
        ("DATABASE_URL", "@postgres:5432/"),
        ("REDIS_URL", "//redis:6379/"),
        ("KAFKA_BROKERS", "kafka:19092"),
    ] {
        let value = environment[variable].as_str().unwrap_or_default();
        assert!(value.contains(host), "{variable}={value} names {host}");
    }
    // The broker's listener for containers is the one KAFKA_BROKERS names.
    let advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap_or_default();
    assert!(advertised.contains("INTERNAL://kafka:19092"), "{advertised}");
}

/// The `redis-cluster` profile: six cluster nodes announcing their compose names, a one-shot that
/// forms the cluster, and a service that waits for it and names cluster nodes in REDIS_URL (the
/// comma-separated form `service::cache::RedisTarget` reads as a cluster).
#[test]
fn the_cluster_profile_forms_a_cluster_before_the_service_on_it_starts() {
    let compose = compose_file();
    let services = compose["services"].as_object().expect("services");
    let in_profile = |name: &str| {
        services[name]["profiles"]
            .as_array()
            .is_some_and(|profiles| profiles.iter().any(|p| p == "redis-cluster"))
    };
    let nodes: Vec<&String> = services
        .keys()
        .filter(|name| name.starts_with("redis-node-"))
        .collect();
    assert_eq!(nodes.len(), 6, "three masters and three replicas: {nodes:?}");
    for node in &nodes {
        assert!(in_profile(node), "{node} runs only in the redis-cluster profile");
        let command: Vec<&str> = services[node.as_str()]["command"]
            .as_array()
            .expect("a command")
            .iter()
            .filter_map(|arg| arg.as_str())
            .collect();
        assert!(
            command.windows(2).any(|w| w == ["--cluster-enabled", "yes"]),
            "{node}: {command:?}"
        );
        assert!(
            command
                .windows(2)
                .any(|w| w == ["--cluster-announce-hostname", node.as_str()]),
            "{node} announces its compose name: {command:?}"
        );
        assert_eq!(
            services["redis-cluster-init"]["depends_on"][node.as_str()]["condition"],
            "service_healthy"
        );
    }
    let service = &services["orders-service-cluster"];
    assert!(in_profile("orders-service-cluster") && in_profile("redis-cluster-init"));
    assert_eq!(
        service["depends_on"]["redis-cluster-init"]["condition"],
        "service_completed_successfully"
    );
    let redis_url = service["environment"]["REDIS_URL"].as_str().unwrap_or_default();
    let target = service::cache::RedisTarget::parse(redis_url).expect("a valid REDIS_URL");
    assert!(
        matches!(&target, service::cache::RedisTarget::Cluster(seeds) if seeds.iter().all(|url| url.contains("//redis-node-"))),
        "REDIS_URL names cluster nodes: {target:?}"
    );
    assert_eq!(
        services["orders-service"]["profiles"],
        serde_json::Value::Null,
        "the default service stays outside any profile"
    );
}

#[test]
fn the_image_is_built_by_the_command_ci_runs_and_checks_its_own_health() {
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("RUN bash ci/build-release.sh"),
        "the Dockerfile builds with ci/build-release.sh"
    );
    assert!(
        read(".ci/run").contains("bash ci/build-release.sh"),
        "CI runs ci/build-release.sh"
    );
    assert!(
        dockerfile.contains(r#"CMD ["orders-service", "health-check"]"#),
        "the HEALTHCHECK asks grpc.health.v1 (tested in service/tests/api/health_check.rs)"
    );
    let runtime = dockerfile.rsplit("FROM ").next().unwrap_or_default();
    assert!(
        runtime.contains("\nUSER orders\n"),
        "the runtime stage is not root"
    );
}
