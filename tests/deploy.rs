//! `deploy/` checked offline (issue 16): every Kubernetes overlay renders
//! with `kubectl kustomize` and passes schema validation
//! (`kubernetes-validate --strict`, installed by scripts/test.sh), and the
//! manifests, the compose file and the Dockerfile agree with the code:
//! every binary they run exists, every `LEAKSCAN_*` variable is one the
//! binary reads, probes ask for the paths the binaries serve on the ports
//! they listen on, the workers' grace period exceeds their drain timeout,
//! selectors match the labels of what they select, and the autoscalers
//! point at the worker Deployment and the coordinator's `/scaling`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use leakscan_tests::bin;
use serde::Deserialize as _;
use serde_yaml_ng::Value;

const OVERLAYS: &[&str] = &["dev", "prod", "prod-hpa"];
const BINARIES: &[&str] = &[
    "leakscan",
    "leakscan-gateway",
    "leakscan-coordinator",
    "leakscan-worker",
];

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The variables and flags a binary knows, from its `--help`.
struct Flags {
    env: BTreeSet<String>,
    flags: BTreeSet<String>,
}

fn flags_of(binary: &str) -> Flags {
    let output = Command::new(bin(binary))
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{binary} --help");
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    let words = |prefix: &str| -> BTreeSet<String> {
        help.split(|c: char| c.is_whitespace() || matches!(c, '[' | ']' | ',' | '='))
            .filter(|word| word.starts_with(prefix))
            .map(str::to_string)
            .collect()
    };
    let mut env = words("LEAKSCAN_");
    // Read by every binary's logging set-up, not flags.
    let logging = include_str!("../service/src/lib.rs");
    for name in ["LEAKSCAN_LOG", "LEAKSCAN_LOG_FORMAT"] {
        assert!(logging.contains(&format!("\"{name}\"")), "{name} is read");
        env.insert(name.to_string());
    }
    Flags {
        env,
        flags: words("--"),
    }
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| {
            let mut value = Value::deserialize(document).expect("YAML");
            value.apply_merge().expect("YAML merge keys");
            value
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn render(overlay: &str) -> (PathBuf, String) {
    let dir = project().join("deploy/k8s/overlays").join(overlay);
    let output = Command::new("kubectl")
        .args(["kustomize"])
        .arg(&dir)
        .output()
        .expect("kubectl runs (scripts/test.sh needs it: see deploy/README.md)");
    assert!(
        output.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (dir, String::from_utf8(output.stdout).unwrap())
}

fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    let mut at = value;
    for key in path {
        at = &at[*key];
    }
    at.as_str()
        .unwrap_or_else(|| panic!("{} is no string in {value:?}", path.join(".")))
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|mapping| {
            mapping
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap().to_string(),
                        v.as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port of a `host:port` listen address.
fn port_of(address: &str) -> i64 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{address:?} names no port"))
}

#[test]
fn every_overlay_renders_and_passes_schema_validation() {
    let validator = std::env::var("LEAKSCAN_K8S_VALIDATE")
        .unwrap_or_else(|_| "kubernetes-validate".to_string());
    for overlay in OVERLAYS {
        let (_, rendered) = render(overlay);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &rendered).unwrap();
        let output = Command::new(&validator)
            .args(["--strict", "--quiet"])
            .arg(file.path())
            .output()
            .unwrap_or_else(|error| {
                panic!("{validator} does not run ({error}): scripts/test.sh installs it")
            });
        let report = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{overlay}: {report}");
        // Only KEDA's custom resource has no schema here; it is checked below.
        for line in report
            .lines()
            .filter(|line| line.contains("Couldn't find schema"))
        {
            assert!(line.contains("kind ScaledObject"), "{overlay}: {line}");
        }
    }
}

#[test]
fn the_manifests_agree_with_the_code() {
    let known: BTreeMap<&str, Flags> = BINARIES.iter().map(|b| (*b, flags_of(b))).collect();
    for overlay in OVERLAYS {
        let (_, rendered) = render(overlay);
        let objects = documents(&rendered);
        let kind_of = |object: &Value| text(object, &["kind"]).to_string();
        let name_of = |object: &Value| text(object, &["metadata", "name"]).to_string();
        let deployments: Vec<&Value> = objects
            .iter()
            .filter(|o| kind_of(o) == "Deployment")
            .collect();
        let pod_labels: Vec<(String, BTreeMap<String, String>)> = deployments
            .iter()
            .map(|d| {
                (
                    name_of(d),
                    labels(&d["spec"]["template"]["metadata"]["labels"]),
                )
            })
            .collect();
        let mut ours = 0;
        for deployment in &deployments {
            let name = name_of(deployment);
            let template = &deployment["spec"]["template"];
            let selector = labels(&deployment["spec"]["selector"]["matchLabels"]);
            assert!(
                selects(&selector, &labels(&template["metadata"]["labels"])),
                "{overlay}: {name}'s selector does not select its pods"
            );
            for container in template["spec"]["containers"].as_sequence().unwrap() {
                let binary = container["command"][0].as_str().unwrap_or_default();
                let Some(flags) = known.get(binary) else {
                    assert!(
                        !container["image"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("leakscan"),
                        "{overlay}: {name} runs {binary:?}, no binary of ours"
                    );
                    continue;
                };
                ours += 1;
                let mut env: BTreeMap<String, String> = BTreeMap::new();
                for variable in container["env"].as_sequence().into_iter().flatten() {
                    let variable_name = text(variable, &["name"]).to_string();
                    env.insert(
                        variable_name,
                        variable["value"].as_str().unwrap_or_default().to_string(),
                    );
                }
                for source in container["envFrom"].as_sequence().into_iter().flatten() {
                    let map = text(source, &["configMapRef", "name"]);
                    let config = objects
                        .iter()
                        .find(|o| kind_of(o) == "ConfigMap" && name_of(o) == map)
                        .unwrap_or_else(|| panic!("{overlay}: no ConfigMap {map}"));
                    for (key, value) in labels(&config["data"]) {
                        env.insert(key, value);
                    }
                }
                for variable in env.keys().filter(|v| v.starts_with("LEAKSCAN_")) {
                    assert!(
                        flags.env.contains(variable),
                        "{overlay}: {name} sets {variable}, which {binary} does not read"
                    );
                }
                for arg in container["args"].as_sequence().into_iter().flatten() {
                    let arg = arg.as_str().unwrap();
                    if let Some(flag) = arg.strip_prefix("--").map(|f| f.split('=').next().unwrap())
                    {
                        assert!(
                            flags.flags.contains(&format!("--{flag}")),
                            "{overlay}: {binary} has no --{flag}"
                        );
                    }
                }
                // Probes: the served paths, on the port the binary listens on.
                let listen = match binary {
                    "leakscan-gateway" => "LEAKSCAN_LISTEN",
                    _ => "LEAKSCAN_OPS_LISTEN",
                };
                let listen_port = port_of(
                    env.get(listen)
                        .unwrap_or_else(|| panic!("{overlay}: {name} sets no {listen}")),
                );
                let ports: BTreeMap<String, i64> = container["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap_or_default().to_string(),
                            p["containerPort"].as_i64().unwrap(),
                        )
                    })
                    .collect();
                for (probe, path) in [
                    ("livenessProbe", "/health/live"),
                    ("readinessProbe", "/health/ready"),
                ] {
                    let get = &container[probe]["httpGet"];
                    assert_eq!(
                        get["path"].as_str(),
                        Some(path),
                        "{overlay}: {name} {probe}"
                    );
                    let port = match &get["port"] {
                        Value::Number(n) => n.as_i64().unwrap(),
                        Value::String(port_name) => *ports
                            .get(port_name)
                            .unwrap_or_else(|| panic!("{overlay}: {name} has no port {port_name}")),
                        other => panic!("{overlay}: {name} {probe} port {other:?}"),
                    };
                    assert_eq!(
                        port, listen_port,
                        "{overlay}: {name} {probe} asks another port"
                    );
                }
                if binary == "leakscan-worker" {
                    let drain: i64 = env
                        .get("LEAKSCAN_DRAIN_TIMEOUT")
                        .map_or(100, |value| value.trim_end_matches('s').parse().unwrap());
                    let grace = template["spec"]["terminationGracePeriodSeconds"]
                        .as_i64()
                        .unwrap_or(30);
                    assert!(
                        grace > drain,
                        "{overlay}: grace period {grace} s is not above the drain timeout {drain} s"
                    );
                }
                if binary == "leakscan-coordinator" {
                    let grpc = port_of(&env["LEAKSCAN_COORDINATOR_LISTEN"]);
                    assert!(
                        ports.values().any(|&p| p == grpc),
                        "{overlay}: gRPC port not exposed"
                    );
                }
            }
        }
        assert_eq!(ours, 3, "{overlay}: gateway, coordinator and worker");
        // Services, budgets and policies select pods that exist.
        for object in &objects {
            let kind = kind_of(object);
            let selector = match kind.as_str() {
                "Service" => labels(&object["spec"]["selector"]),
                "PodDisruptionBudget" => labels(&object["spec"]["selector"]["matchLabels"]),
                "NetworkPolicy" => labels(&object["spec"]["podSelector"]["matchLabels"]),
                _ => continue,
            };
            assert!(
                pod_labels.iter().any(|(_, pod)| selects(&selector, pod)),
                "{overlay}: {kind} {} selects no pods",
                name_of(object)
            );
        }
        // Workers reach the coordinator's gRPC Service; the autoscaler
        // targets the worker Deployment and reads /scaling.
        let service = |name: &str| {
            objects
                .iter()
                .find(|o| kind_of(o) == "Service" && name_of(o) == name)
                .unwrap_or_else(|| panic!("{overlay}: no Service {name}"))
        };
        let coordinator = service("leakscan-coordinator");
        let service_ports: Vec<i64> = coordinator["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_i64().unwrap())
            .collect();
        for object in &objects {
            match kind_of(object).as_str() {
                "ScaledObject" => {
                    assert_eq!(
                        text(object, &["spec", "scaleTargetRef", "name"]),
                        "leakscan-worker"
                    );
                    let trigger = &object["spec"]["triggers"][0];
                    assert_eq!(text(trigger, &["type"]), "metrics-api");
                    let url = text(trigger, &["metadata", "url"]);
                    let rest = url
                        .strip_prefix("http://leakscan-coordinator:")
                        .unwrap_or_else(|| {
                            panic!(
                                "{overlay}: the trigger reads {url}, not the coordinator Service"
                            )
                        });
                    let (port, path) = rest.split_once('/').unwrap();
                    assert_eq!(path, "scaling");
                    assert!(
                        service_ports.contains(&port.parse().unwrap()),
                        "{overlay}: {url}"
                    );
                    assert!(
                        ["tasksPending", "tasksLeased"]
                            .contains(&text(trigger, &["metadata", "valueLocation"])),
                        "{overlay}: the trigger reads a figure /scaling does not give"
                    );
                    assert!(object["spec"]["fallback"]["replicas"].as_i64().unwrap() >= 1);
                }
                "HorizontalPodAutoscaler" => {
                    assert_eq!(
                        text(object, &["spec", "scaleTargetRef", "name"]),
                        "leakscan-worker"
                    );
                    assert_eq!(
                        text(object, &["spec", "scaleTargetRef", "kind"]),
                        "Deployment"
                    );
                }
                _ => {}
            }
        }
        let worker = deployments
            .iter()
            .find(|d| name_of(d) == "leakscan-worker")
            .unwrap();
        let coordinator_url = worker["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "LEAKSCAN_COORDINATOR_URL")
            .and_then(|v| v["value"].as_str())
            .unwrap();
        let port = coordinator_url
            .strip_prefix("http://leakscan-coordinator:")
            .and_then(|port| port.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("{overlay}: workers call {coordinator_url}"));
        assert!(
            service_ports.contains(&port),
            "{overlay}: {coordinator_url}"
        );
        let autoscaled = objects
            .iter()
            .filter(|o| ["ScaledObject", "HorizontalPodAutoscaler"].contains(&kind_of(o).as_str()))
            .count();
        assert_eq!(autoscaled, usize::from(*overlay != "dev"), "{overlay}");
    }
}

#[test]
fn the_compose_file_and_the_dockerfile_agree_with_the_code() {
    let known: BTreeMap<&str, Flags> = BINARIES.iter().map(|b| (*b, flags_of(b))).collect();
    let compose = std::fs::read_to_string(project().join("deploy/compose.yaml")).unwrap();
    let compose = documents(&compose).remove(0);
    let services = compose["services"].as_mapping().unwrap();
    let mut run: BTreeMap<String, usize> = BTreeMap::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let Some(binary) = service["command"][0].as_str() else {
            continue;
        };
        let flags = known
            .get(binary)
            .unwrap_or_else(|| panic!("compose service {name} runs {binary:?}"));
        *run.entry(binary.to_string()).or_default() +=
            service["deploy"]["replicas"].as_u64().unwrap_or(1) as usize;
        for (variable, _) in service["environment"].as_mapping().unwrap() {
            let variable = variable.as_str().unwrap();
            if variable.starts_with("LEAKSCAN_") {
                assert!(
                    flags.env.contains(variable),
                    "compose {name}: {binary} does not read {variable}"
                );
            }
        }
        if binary == "leakscan-worker" {
            let grace = service["stop_grace_period"].as_str().unwrap();
            let drain: u64 = service["environment"]["LEAKSCAN_DRAIN_TIMEOUT"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(grace.trim_end_matches('s').parse::<u64>().unwrap() > drain);
        }
    }
    let expected: BTreeMap<String, usize> = [
        ("leakscan-gateway", 1),
        ("leakscan-coordinator", 2),
        ("leakscan-worker", 2),
    ]
    .into_iter()
    .map(|(b, n)| (b.to_string(), n))
    .collect();
    assert_eq!(run, expected);
    for data in ["postgres", "redis"] {
        assert!(services.contains_key(data), "compose runs {data}");
    }
    // The image holds every binary, git and ssh, and runs as a user.
    let dockerfile = std::fs::read_to_string(project().join("deploy/Dockerfile")).unwrap();
    let words: BTreeSet<&str> = dockerfile.split_whitespace().collect();
    for binary in BINARIES {
        assert!(
            words.contains(format!("target/release/{binary}").as_str()),
            "the image lacks {binary}"
        );
    }
    for package in ["git", "openssh-client", "ca-certificates"] {
        assert!(dockerfile.contains(package), "the image lacks {package}");
    }
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "USER {user}"
    );
    // The build installs what Vectorscan needs, as deploy/local does.
    for package in ["cmake", "g++", "libboost-dev"] {
        assert!(dockerfile.contains(package), "the build lacks {package}");
    }
}
