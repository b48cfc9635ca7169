//! The Kubernetes manifests as shipped (`packaging/kubernetes`, README "Running it as a
//! service" → Kubernetes): three unprivileged replicas on a read-only root, probed on the
//! ports `voxgate.toml` listens on, its config from a ConfigMap that a kubelet update reaches
//! without a restart, its key from a Secret, and a Redis without persistence for `[shared]`.
//!
//! Three tools, none of them a cluster:
//! - kubernetes-validate (PyPI, in `target/sdk-venv`: `scripts/install-test-deps.sh`) checks
//!   every manifest against the JSON schemas of the Kubernetes API it ships (no network),
//!   strictly — an unknown field is an error — for Kubernetes 1.28 and 1.37;
//! - PyYAML (same venv) reads the manifests as JSON, and the tests below check the fields
//!   voxgate relies on against `voxgate.toml` and the Dockerfile;
//! - `kubectl kustomize`, when kubectl is installed, renders the kustomization, which is
//!   then validated and checked too (skipped, saying so on stderr, without kubectl).
//!
//! The config itself passes the real `voxgate check`, and the real binary, with
//! `watch_config`, reloads a config updated the way the kubelet updates a mounted ConfigMap.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{start_with, stop_with_sigterm};
use support::{check_with, full_body, repo, send, voxgate_bin, Reply, Scripted};

mod support;

const INSTALL_HINT: &str =
    "run `bash scripts/install-test-deps.sh` to install kubernetes-validate and PyYAML";

const DIR: &str = "packaging/kubernetes";
const CONFIG: &str = "packaging/kubernetes/voxgate.toml";
const KUSTOMIZATION: &str = "packaging/kubernetes/kustomization.yaml";
const DOCKERFILE: &str = "packaging/docker/Dockerfile";

/// The oldest and the newest Kubernetes the manifests are validated for (both schemas ship
/// with kubernetes-validate 1.37.0).
const KUBERNETES_VERSIONS: [&str; 2] = ["1.28.0", "1.37.0"];

/// Where the image and the Deployment expect the config.
const CONFIG_DIR: &str = "/etc/voxgate";
const INSTALLED_CONFIG: &str = "/etc/voxgate/voxgate.toml";

/// The pods' labels, and what the Services, the PDB and the spread constraints select.
const GATEWAY: &str = "gateway";
const REDIS: &str = "redis";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A program of `target/sdk-venv`.
fn venv(program: &str) -> PathBuf {
    let path = repo("target/sdk-venv/bin").join(program);
    assert!(
        path.exists(),
        "{} is missing: {INSTALL_HINT}",
        path.display()
    );
    path
}

/// The manifests `kubectl apply -k` applies: every `*.yaml` of the folder but the
/// kustomization itself, sorted.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(DIR))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

/// Every YAML document of a file, as JSON, through PyYAML.
fn documents(file: &Path) -> Vec<Value> {
    let out = Command::new(venv("python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        text(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(documents) => documents,
        other => panic!("{}: {other}", file.display()),
    }
}

/// Every resource of every manifest.
fn resources() -> Vec<Value> {
    manifests().iter().flat_map(|f| documents(f)).collect()
}

fn find<'a>(resources: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = resources
        .iter()
        .filter(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name}");
    found[0]
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    containers
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("container {name}: {containers:?}"))
}

fn labels_of(component: &str) -> Value {
    serde_json::json!({
        "app.kubernetes.io/name": "voxgate",
        "app.kubernetes.io/component": component,
    })
}

/// Whether a label selector (`matchLabels` or a Service's plain map) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().unwrap();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// What kubernetes-validate finds wrong with `files` for one Kubernetes version: its errors
/// and warnings, and each document it did not say it passed. Empty when all is well.
fn validation_problems(files: &[PathBuf], version: &str) -> Vec<String> {
    let out = Command::new(venv("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let mut problems: Vec<String> = stdout
        .lines()
        .chain(text(&out.stderr).lines())
        .filter(|l| !l.starts_with("INFO "))
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    if !out.status.success() {
        problems.push(format!("kubernetes-validate exited with {}", out.status));
    }
    // A kind it has no schema for is only a warning, and exits 0: each document must have
    // passed, by name.
    let short = &version[..version.rfind('.').unwrap()];
    for file in files {
        for document in documents(file) {
            let resource = format!(
                "{}/{}",
                document["kind"].as_str().unwrap_or("?").to_lowercase(),
                document["metadata"]["name"].as_str().unwrap_or("?")
            );
            let passed = format!(
                "INFO {} passed for resource {resource} against version {short}",
                file.display()
            );
            if !stdout.lines().any(|l| l == passed) {
                problems.push(format!("{}: {resource} did not pass", file.display()));
            }
        }
    }
    problems
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    let files = manifests();
    assert!(files.len() >= 4, "{files:?}");
    for version in KUBERNETES_VERSIONS {
        let problems = validation_problems(&files, version);
        assert!(problems.is_empty(), "Kubernetes {version}: {problems:#?}");
    }
}

/// The validation above can fail: a misspelt field, a wrong type and a kind without a
/// schema are each caught, in copies of the Deployment.
#[test]
fn the_validator_rejects_a_misspelt_field_a_wrong_type_and_an_unknown_kind() {
    let deployment = read(&format!("{DIR}/deployment.yaml"));
    let dir = tempfile::tempdir().unwrap();
    let broken = [
        ("readinessProbe:", "readinesProbe:", "readinesProbe"),
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
            "readOnlyRootFileSystem",
        ),
        ("replicas: 3", "replicas: \"3\"", "spec.replicas"),
        ("kind: Deployment", "kind: Deploymnet", "did not pass"),
    ];
    for (n, (from, to, named)) in broken.into_iter().enumerate() {
        assert_eq!(deployment.matches(from).count(), 1, "{from}");
        let copy = dir.path().join(format!("{n}.yaml"));
        std::fs::write(&copy, deployment.replace(from, to)).unwrap();
        let problems = validation_problems(&[copy], KUBERNETES_VERSIONS[0]);
        assert!(
            problems.iter().any(|p| p.contains(named)),
            "{to}: {problems:#?}"
        );
    }
}

#[test]
fn the_kustomization_applies_every_manifest_and_makes_the_config_map_from_voxgate_toml() {
    let kustomization = documents(&repo(KUSTOMIZATION)).remove(0);
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let files = manifests();
    let present: BTreeSet<&str> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(listed, present, "{KUSTOMIZATION}: resources");

    // voxgate.toml, under the name the Deployment mounts; hashed, so that a change rolls
    // the replicas out.
    let generators = kustomization["configMapGenerator"].as_array().unwrap();
    assert_eq!(generators.len(), 1);
    let generator = &generators[0];
    assert_eq!(generator["name"], "voxgate-config");
    assert_eq!(generator["files"], serde_json::json!(["voxgate.toml"]));
    assert_ne!(generator["options"]["disableNameSuffixHash"], true);
    assert_ne!(
        kustomization["generatorOptions"]["disableNameSuffixHash"],
        true
    );
    let resources = resources();
    let deployment = find(&resources, "Deployment", "voxgate");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == generator["name"]),
        "{volumes:?}"
    );
    // The image, by registry and tag, is set in one place.
    let images = kustomization["images"].as_array().unwrap();
    let image = images
        .iter()
        .find(|i| i["name"] == container(deployment, "voxgate")["image"])
        .unwrap_or_else(|| panic!("{KUSTOMIZATION}: the voxgate image in {images:?}"));
    let tagged = format!(
        "{}:{}",
        image["newName"].as_str().unwrap(),
        image["newTag"].as_str().unwrap()
    );

    // kubectl's own kustomize: what `kubectl apply -k` would send, validated like the rest.
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    if !kubectl.is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: `kubectl kustomize` (kubectl is not installed)");
        return;
    }
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo(DIR))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, &out.stdout).unwrap();
    for version in KUBERNETES_VERSIONS {
        let problems = validation_problems(std::slice::from_ref(&rendered), version);
        assert!(problems.is_empty(), "kustomized, {version}: {problems:#?}");
    }
    let built = documents(&rendered);
    let config_maps: Vec<&Value> = built.iter().filter(|r| r["kind"] == "ConfigMap").collect();
    assert_eq!(config_maps.len(), 1);
    let name = config_maps[0]["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("voxgate-config-"), "hashed: {name}");
    assert_eq!(config_maps[0]["data"]["voxgate.toml"], read(CONFIG));
    let deployment = find(&built, "Deployment", "voxgate");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes.iter().any(|v| v["configMap"]["name"] == name),
        "the Deployment mounts {name}: {volumes:?}"
    );
    assert_eq!(container(deployment, "voxgate")["image"], tagged);
    assert_eq!(
        built.len(),
        resources.len() + 1,
        "the manifests and the ConfigMap"
    );
}

/// The Dockerfile's runtime user, `USER uid:gid`.
fn image_user() -> (u64, u64) {
    let dockerfile = read(DOCKERFILE);
    let user = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("USER in the Dockerfile");
    let (uid, gid) = user.trim().split_once(':').unwrap();
    (uid.parse().unwrap(), gid.parse().unwrap())
}

/// A pod and container locked down: non-root by number, no privilege escalation, no
/// capabilities, the runtime's seccomp profile, a read-only root, no service account token.
fn assert_locked_down(deployment: &Value, container: &Value, uid: u64) {
    let name = deployment["metadata"]["name"].as_str().unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
    for context in [&pod["securityContext"], &container["securityContext"]] {
        assert_eq!(context["runAsNonRoot"], true, "{name}: {context}");
        assert_eq!(context["runAsUser"], uid, "{name}: {context}");
        assert_eq!(
            context["seccompProfile"]["type"], "RuntimeDefault",
            "{name}: {context}"
        );
    }
    let context = &container["securityContext"];
    assert_eq!(context["allowPrivilegeEscalation"], false, "{name}");
    assert_eq!(context["readOnlyRootFilesystem"], true, "{name}");
    assert_eq!(
        context["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{name}"
    );
    assert!(context["capabilities"].get("add").is_none(), "{name}");
    assert!(
        context.get("privileged").is_none_or(|p| p == false),
        "{name}"
    );
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].is_string(),
                "{name}: resources.{kind}.{resource}"
            );
        }
    }
}

/// A container's mount at `path` and the pod volume behind it.
fn mount<'a>(deployment: &'a Value, container: &'a Value, path: &str) -> (&'a Value, &'a Value) {
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("a mount at {path}: {mounts:?}"));
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let volume = volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("volume {}: {volumes:?}", mount["name"]));
    (mount, volume)
}

/// With a read-only root, the only writable places are mounts, and those must be scratch
/// (emptyDir): every other mount is read-only.
fn assert_only_empty_dirs_are_writable(deployment: &Value, container: &Value) {
    for m in container["volumeMounts"].as_array().unwrap() {
        let (_, volume) = mount(deployment, container, m["mountPath"].as_str().unwrap());
        assert!(
            m["readOnly"] == true || volume.get("emptyDir").is_some(),
            "{m} is writable and not an emptyDir: {volume}"
        );
    }
}

#[test]
fn three_replicas_run_unprivileged_on_a_read_only_root_one_at_a_time() {
    let resources = resources();
    let deployment = find(&resources, "Deployment", "voxgate");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 3);
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(labels, &labels_of(GATEWAY));
    assert!(selects(&spec["selector"]["matchLabels"], labels));

    let voxgate = container(deployment, "voxgate");
    let (uid, gid) = image_user();
    assert_locked_down(deployment, voxgate, uid);
    assert_eq!(voxgate["securityContext"]["runAsGroup"], gid);
    assert_only_empty_dirs_are_writable(deployment, voxgate);

    // Rollouts and drains keep two of three serving.
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let budget = find(&resources, "PodDisruptionBudget", "voxgate");
    assert_eq!(budget["spec"]["minAvailable"], 2);
    assert!(selects(&budget["spec"]["selector"]["matchLabels"], labels));
    let spread = spec["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .unwrap();
    let keys: BTreeSet<&str> = spread
        .iter()
        .map(|c| {
            assert!(selects(&c["labelSelector"]["matchLabels"], labels), "{c}");
            c["topologyKey"].as_str().unwrap()
        })
        .collect();
    assert!(keys.contains("kubernetes.io/hostname"), "{keys:?}");
}

fn config() -> toml::Table {
    read(CONFIG)
        .parse()
        .unwrap_or_else(|e| panic!("{CONFIG}: {e}"))
}

fn server_key<'a>(config: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    config.get("server")?.get(key)
}

fn server_str<'a>(config: &'a toml::Table, key: &str) -> &'a str {
    server_key(config, key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{CONFIG}: server.{key}"))
}

fn port_of(address: &str) -> u64 {
    let (host, port) = address.rsplit_once(':').unwrap();
    assert_eq!(host, "0.0.0.0", "{address}: every interface of the pod");
    port.parse().unwrap()
}

#[test]
fn the_config_map_is_mounted_at_etc_voxgate_and_bodies_spill_to_an_empty_dir() {
    let resources = resources();
    let deployment = find(&resources, "Deployment", "voxgate");
    let voxgate = container(deployment, "voxgate");
    // The image's entrypoint is voxgate; the Deployment names the config it mounts.
    assert!(voxgate.get("command").is_none());
    assert_eq!(
        voxgate["args"],
        serde_json::json!(["--config", INSTALLED_CONFIG])
    );

    // The whole directory: a subPath mount never sees an update.
    let (config_mount, config_volume) = mount(deployment, voxgate, CONFIG_DIR);
    assert_eq!(config_mount["readOnly"], true);
    assert!(config_mount.get("subPath").is_none(), "{config_mount}");
    assert!(config_mount.get("subPathExpr").is_none(), "{config_mount}");
    assert!(
        config_volume["configMap"]["name"].is_string(),
        "{config_volume}"
    );
    assert!(config_volume["configMap"]
        .get("items")
        .is_none_or(|items| items
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["path"] == "voxgate.toml")));

    let config = config();
    let spill_dir = server_str(&config, "spill_dir");
    let (spill_mount, spill_volume) = mount(deployment, voxgate, spill_dir);
    assert_ne!(spill_mount["readOnly"], true);
    assert!(spill_volume["emptyDir"].is_object(), "{spill_volume}");
    // The TTS cache stays in memory: a disk tier would need a volume of its own.
    assert!(
        config["cache"].get("dir").is_none(),
        "{CONFIG}: [cache] dir"
    );

    // An update is reloaded in place (a_config_map_update_reaches_voxgate_…).
    assert_eq!(
        server_key(&config, "watch_config"),
        Some(&toml::Value::Boolean(true))
    );
}

#[test]
fn probes_and_the_service_use_the_named_ports_the_config_listens_on() {
    let resources = resources();
    let deployment = find(&resources, "Deployment", "voxgate");
    let voxgate = container(deployment, "voxgate");
    let config = config();
    let ports: Vec<(&str, u64)> = voxgate["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["protocol"], "TCP");
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    // admin_listen set: /ready is served there only (404 on the API listener).
    let api = port_of(server_str(&config, "listen"));
    let admin = port_of(server_str(&config, "admin_listen"));
    assert_eq!(ports, [("http", api), ("admin", admin)]);

    let probe = |name: &str| -> (&str, &str) {
        let get = &voxgate[name]["httpGet"];
        (get["path"].as_str().unwrap(), get["port"].as_str().unwrap())
    };
    assert_eq!(probe("readinessProbe"), ("/ready", "admin"));
    assert_eq!(probe("livenessProbe"), ("/health", "http"));

    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], admin.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // The Service selects the pods and forwards to the API port by name; the admin port
    // (POST /reload) is not offered to clients.
    let service = find(&resources, "Service", "voxgate");
    assert!(selects(
        &service["spec"]["selector"],
        &deployment["spec"]["template"]["metadata"]["labels"]
    ));
    let service_ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(service_ports.len(), 1, "{service_ports:?}");
    assert_eq!(service_ports[0]["name"], "http");
    assert_eq!(service_ports[0]["targetPort"], "http");
    assert_eq!(service_ports[0]["port"], api);
}

/// The `${NAME}` and `${NAME:-…}` a config's values use, comments left out.
fn variables(config: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in config.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find("${") {
            rest = &rest[at + 2..];
            let end = rest.find(['}', ':']).unwrap();
            names.insert(rest[..end].to_string());
        }
    }
    names
}

#[test]
fn the_openai_key_comes_from_a_secret_that_is_not_shipped() {
    let resources = resources();
    let deployment = find(&resources, "Deployment", "voxgate");
    let env = container(deployment, "voxgate")["env"].as_array().unwrap();
    let from_secret = |name: &str| -> &Value {
        let var = env
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("env {name}: {env:?}"));
        assert!(var.get("value").is_none(), "{name} is not written here");
        &var["valueFrom"]["secretKeyRef"]
    };
    let key = from_secret("OPENAI_API_KEY");
    assert_eq!(key["name"], "voxgate-secrets");
    assert_eq!(key["key"], "OPENAI_API_KEY");
    // Optional as `${OPENAI_API_KEY:-}` is: without it, clients' own keys go to OpenAI.
    assert_eq!(key["optional"], true);
    let config = config();
    assert_eq!(
        config["upstreams"]["openai"]["api_key"].as_str(),
        Some("${OPENAI_API_KEY:-}")
    );

    // Every variable the config uses is set by the container, and each comes from the
    // Secret (a missing one is a load error).
    for name in variables(&read(CONFIG)) {
        assert_eq!(from_secret(&name)["name"], "voxgate-secrets", "{name}");
    }
    assert!(
        resources.iter().all(|r| r["kind"] != "Secret"),
        "no Secret is shipped: it is created by hand"
    );
}

fn seconds(text: &str) -> u64 {
    humantime::parse_duration(text)
        .unwrap_or_else(|e| panic!("`{text}`: {e}"))
        .as_secs()
}

#[test]
fn the_pod_outlives_the_prestop_sleep_and_the_shutdown_grace() {
    let resources = resources();
    let deployment = find(&resources, "Deployment", "voxgate");
    let voxgate = container(deployment, "voxgate");
    let sleep = &voxgate["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(sleep[0], "sleep", "{sleep}");
    let sleep: u64 = sleep[1].as_str().unwrap().parse().unwrap();
    assert!((1..=15).contains(&sleep), "preStop sleep {sleep}");
    let grace = seconds(
        server_key(&config(), "shutdown_grace")
            .and_then(toml::Value::as_str)
            .unwrap_or("30s"),
    );
    let termination = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        termination > sleep + grace,
        "terminationGracePeriodSeconds {termination} <= preStop {sleep} s + shutdown_grace {grace} s"
    );
}

/// A size written as Redis and Kubernetes write it, in bytes.
fn bytes(size: &str) -> u64 {
    let split = size
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(size.len());
    let (n, unit) = size.split_at(split);
    let unit = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "mb" | "m" => 1000 * 1000,
        "gb" | "g" => 1000 * 1000 * 1000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        other => panic!("{size}: unit {other}"),
    };
    n.parse::<u64>().unwrap() * unit
}

#[test]
fn redis_keeps_nothing_on_disk_evicts_least_recently_used_and_is_where_shared_points() {
    let resources = resources();
    let deployment = find(&resources, "Deployment", "voxgate-redis");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels, &labels_of(REDIS));
    let redis = container(deployment, "redis");
    assert_locked_down(deployment, redis, 999);
    assert_only_empty_dirs_are_writable(deployment, redis);

    let args: Vec<&str> = redis["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |name: &str| -> &str {
        let at = args
            .iter()
            .position(|a| *a == name)
            .unwrap_or_else(|| panic!("{name} in {args:?}"));
        args[at + 1]
    };
    assert_eq!(args[0], "redis-server");
    assert_eq!(flag("--save"), "", "no snapshots");
    assert_eq!(flag("--appendonly"), "no", "no append-only file");
    assert_eq!(flag("--maxmemory-policy"), "allkeys-lru");
    let maxmemory = bytes(flag("--maxmemory"));
    let limit = bytes(redis["resources"]["limits"]["memory"].as_str().unwrap());
    assert!(
        maxmemory + (32 << 20) <= limit,
        "maxmemory {maxmemory} leaves room under the memory limit {limit}"
    );

    // [shared] redis names the Service, on its port, and the Service reaches the pod.
    let service = find(&resources, "Service", "voxgate-redis");
    assert!(selects(&service["spec"]["selector"], labels));
    let port = &service["spec"]["ports"][0];
    let container_ports = redis["ports"].as_array().unwrap();
    assert!(container_ports
        .iter()
        .any(|p| p["name"] == port["targetPort"] && p["containerPort"] == 6379));
    let config = config();
    let url = config["shared"]["redis"].as_str().unwrap();
    assert_eq!(url, format!("redis://voxgate-redis:{}/0", port["port"]));

    // Only voxgate's pods may connect (where the network plugin enforces policies).
    let policy = find(&resources, "NetworkPolicy", "voxgate-redis");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        labels
    ));
    let from = &policy["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().unwrap().len(), 1);
    assert!(selects(
        &from[0]["podSelector"]["matchLabels"],
        &labels_of(GATEWAY)
    ));
}

/// The shipped config passes the real `voxgate check`. Its `spill_dir` is the pod's
/// emptyDir, usually missing here: the copy checked spills to a temporary directory.
#[test]
fn the_config_passes_voxgate_check() {
    let source = read(CONFIG);
    let config = config();
    let spill_dir = format!("\"{}\"", server_str(&config, "spill_dir"));
    assert_eq!(source.matches(&spill_dir).count(), 1, "{spill_dir}");
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("voxgate.toml");
    let here = format!("\"{}\"", scratch.path().display());
    std::fs::write(&copy, source.replace(&spill_dir, &here)).unwrap();

    let mut voxgate = voxgate_bin();
    voxgate
        .env("OPENAI_API_KEY", "dummy-key-for-check")
        .env_remove("REDIS_PASSWORD");
    let out: Output = check_with(voxgate, &copy);
    assert!(
        out.status.success(),
        "{}",
        text(&out.stderr).replace(&*copy.to_string_lossy(), CONFIG)
    );
    assert!(text(&out.stdout).starts_with("ok: "));
}

/// The kubelet's update of a mounted ConfigMap (its "atomic writer"): the files are
/// written into a new hidden directory, `..data` is switched to it by renaming a new
/// symlink over it, and the old directory is removed. `voxgate.toml` itself is a symlink
/// to `..data/voxgate.toml`, and never changes.
struct ConfigMapVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl ConfigMapVolume {
    fn new(config: &str) -> ConfigMapVolume {
        let mut volume = ConfigMapVolume {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        volume.update(config);
        std::os::unix::fs::symlink("..data/voxgate.toml", volume.file()).unwrap();
        volume
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("voxgate.toml")
    }

    fn update(&mut self, config: &str) {
        let root = self.dir.path();
        let old = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation, self.generation
        );
        self.generation += 1;
        let new = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation, self.generation
        );
        std::fs::create_dir(root.join(&new)).unwrap();
        std::fs::write(root.join(&new).join("voxgate.toml"), config).unwrap();
        std::os::unix::fs::symlink(&new, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        if self.generation > 1 {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}

async fn status(base: &str) -> Value {
    send(
        http::Request::get(format!("{base}/status"))
            .body(full_body(""))
            .unwrap(),
    )
    .await
    .json()
}

/// `/status`, once `done` holds for it (10 s at most).
async fn status_when(base: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(base).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "not reloaded: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_map_update_reaches_voxgate_through_the_kubelets_symlink_swap() {
    let upstream = Scripted::always(Reply::ok("audio/pcm", "x")).await;
    let routed = |name: &str| {
        format!(
            "[server]\nwatch_config = true\n[upstreams.a]\nurl = \"{}\"\n[[routes]]\nname = \"{name}\"\nto = [\"a\"]\n",
            upstream.url()
        )
    };
    let mut volume = ConfigMapVolume::new(&routed("before"));
    let (mut daemon, address, _log, _) = start_with(voxgate_bin(), &volume.file());
    let base = format!("http://{address}");
    let s = status(&base).await;
    assert_eq!(s["routes"][0]["name"], "before", "{s}");

    volume.update(&routed("after"));
    let s = status_when(&base, |s| s["routes"][0]["name"] == "after").await;
    assert_eq!(s["config"]["reloads"]["succeeded"], 1, "{s}");
    assert_eq!(s["config"]["reloads"]["failed"], 0, "{s}");

    // And the next update too: the watch outlives the directory it first read from.
    volume.update(&routed("again"));
    let s = status_when(&base, |s| s["routes"][0]["name"] == "again").await;
    assert_eq!(s["config"]["reloads"]["succeeded"], 2, "{s}");
    stop_with_sigterm(&mut daemon);
}
