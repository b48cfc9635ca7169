//! The packaging files as shipped (README, "Running it as a service"): every config under
//! `packaging/` passes `voxgate check`; the systemd unit passes `systemd-analyze verify` and
//! keeps its notify type, reload command and hardening; the compose file and the Dockerfile
//! run the tested config, unprivileged, published on loopback only.
//!
//! No container engine is needed: the Dockerfile is read line by line and compose.yaml is
//! parsed with PyYAML from `target/sdk-venv` (`scripts/install-test-deps.sh` installs it).
//! `docker compose config` and `systemd-analyze` run too when they are installed; each check
//! that cannot run says so on stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::{check_with, repo, voxgate_bin};

mod support;

const INSTALL_HINT: &str = "run `bash scripts/install-test-deps.sh` to install PyYAML";

const UNIT: &str = "packaging/systemd/voxgate.service";
const SYSTEMD_CONFIG: &str = "packaging/systemd/voxgate.toml";
const ENV_EXAMPLE: &str = "packaging/systemd/voxgate.env.example";
const DOCKERFILE: &str = "packaging/docker/Dockerfile";
const COMPOSE: &str = "packaging/docker/compose.yaml";
const DOCKER_CONFIG: &str = "packaging/docker/voxgate.toml";

/// Where both the unit and the image expect the config.
const INSTALLED_CONFIG: &str = "/etc/voxgate/voxgate.toml";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The built binary, without the environment variables voxgate reads, and with a dummy key
/// for configs that require `${OPENAI_API_KEY}`.
fn voxgate() -> Command {
    let mut c = voxgate_bin();
    c.env("OPENAI_API_KEY", "dummy-key-for-check");
    c
}

fn check(file: &Path) -> Output {
    check_with(voxgate(), file)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every `*.toml` under `packaging/`, sorted.
fn packaging_configs() -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo("packaging"), &mut files);
    files.sort();
    files
}

fn toml_table(path: &str) -> toml::Table {
    read(path).parse().unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn server_key<'a>(config: &'a toml::Table, key: &str) -> Option<&'a str> {
    config.get("server")?.get(key)?.as_str()
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("`{text}`: {e}"))
}

/// The port of a config's `server.listen`.
fn listen_port(config: &toml::Table) -> u16 {
    let listen = server_key(config, "listen").expect("server.listen is set");
    listen.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// A file's `[section]`, `Key=Value` lines, in order, comments left out.
fn unit_directives(unit: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            out.push((section.clone(), key.to_string(), value.to_string()));
        }
    }
    out
}

fn unit_values<'a>(
    directives: &'a [(String, String, String)],
    section: &str,
    key: &str,
) -> Vec<&'a str> {
    directives
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

#[test]
fn every_packaging_config_passes_check() {
    let files = packaging_configs();
    for shipped in [SYSTEMD_CONFIG, DOCKER_CONFIG] {
        assert!(files.contains(&repo(shipped)), "{shipped} in {files:?}");
    }
    let scratch = tempfile::tempdir().unwrap();
    for (n, file) in files.iter().enumerate() {
        let shown = file.display().to_string();
        let source = std::fs::read_to_string(file).unwrap();
        let config: toml::Table = source.parse().unwrap_or_else(|e| panic!("{shown}: {e}"));
        // `spill_dir` is checked at load by creating a file in it. The directories these
        // configs name exist where they are deployed (the unit's CacheDirectory, the image's
        // volume), usually not on the machine that runs the tests: there, the original must
        // fail on that key alone, and a copy spilling to a temporary directory must pass.
        let missing_spill_dir =
            server_key(&config, "spill_dir").filter(|dir| !Path::new(dir).is_dir());
        let checked = match missing_spill_dir {
            None => file.clone(),
            Some(dir) => {
                let quoted = format!("\"{dir}\"");
                assert_eq!(source.matches(&quoted).count(), 1, "{shown}");
                let line = 1 + source.lines().position(|l| l.contains(&quoted)).unwrap();
                let out = check(file);
                let stderr = text(&out.stderr);
                assert!(!out.status.success(), "{shown}: {dir} does not exist here");
                assert!(
                    stderr
                        .lines()
                        .all(|l| l.starts_with(&format!("{shown}:{line}:"))),
                    "{shown}: only spill_dir (line {line}) may fail here:\n{stderr}"
                );
                let here = format!("\"{}\"", scratch.path().display());
                let copy = scratch.path().join(format!("{n}.toml"));
                std::fs::write(&copy, source.replace(&quoted, &here)).unwrap();
                copy
            }
        };
        let out = check(&checked);
        assert!(out.status.success(), "{shown}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("ok: "), "{shown}");
    }
}

#[test]
fn packaging_files_hold_no_key_and_take_it_from_the_environment() {
    for file in packaging_configs() {
        let shown = file.display().to_string();
        let config: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
        let upstreams = config["upstreams"].as_table().unwrap();
        for (name, upstream) in upstreams {
            if let Some(key) = upstream.get("api_key") {
                let key = key.as_str().unwrap();
                assert!(
                    key.starts_with("${OPENAI_API_KEY") && key.ends_with('}'),
                    "{shown}: upstream {name}'s api_key must come from the environment"
                );
            }
        }
    }
    let env: Vec<String> = read(ENV_EXAMPLE)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(String::from)
        .collect();
    assert_eq!(
        env,
        ["OPENAI_API_KEY="],
        "{ENV_EXAMPLE} ships without a key"
    );
}

#[test]
fn the_systemd_unit_keeps_notify_reload_and_hardening() {
    let directives = unit_directives(&read(UNIT));
    let required = [
        ("Service", "Type", "notify"),
        (
            "Service",
            "ExecStart",
            "/usr/local/bin/voxgate --config /etc/voxgate/voxgate.toml",
        ),
        ("Service", "ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Service", "Restart", "on-failure"),
        ("Service", "WatchdogSec", "30s"),
        ("Service", "EnvironmentFile", "-/etc/voxgate/voxgate.env"),
        ("Service", "DynamicUser", "yes"),
        ("Service", "CacheDirectory", "voxgate"),
        ("Service", "CapabilityBoundingSet", ""),
        ("Service", "AmbientCapabilities", ""),
        ("Service", "NoNewPrivileges", "yes"),
        ("Service", "ProtectSystem", "strict"),
        ("Service", "ProtectHome", "yes"),
        ("Service", "PrivateTmp", "yes"),
        ("Service", "PrivateDevices", "yes"),
        ("Service", "ProtectKernelTunables", "yes"),
        ("Service", "ProtectKernelModules", "yes"),
        ("Service", "ProtectKernelLogs", "yes"),
        ("Service", "ProtectControlGroups", "yes"),
        (
            "Service",
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_UNIX",
        ),
        ("Service", "RestrictNamespaces", "yes"),
        ("Service", "LockPersonality", "yes"),
        ("Service", "MemoryDenyWriteExecute", "yes"),
        ("Service", "SystemCallArchitectures", "native"),
        ("Service", "SystemCallFilter", "@system-service"),
        ("Install", "WantedBy", "multi-user.target"),
    ];
    // A key may be given more than once (SystemCallFilter= adds, a later Type= wins):
    // the required value must be there and nothing after it may undo it.
    for (section, key, value) in required {
        let values = unit_values(&directives, section, key);
        assert!(
            values.contains(&value),
            "{UNIT}: [{section}] {key}={value} is missing: {values:?}"
        );
        if key != "SystemCallFilter" {
            assert_eq!(values.len(), 1, "{UNIT}: [{section}] {key}: {values:?}");
        }
    }
    let nofile: u64 = unit_values(&directives, "Service", "LimitNOFILE")[0]
        .parse()
        .unwrap();
    assert!(nofile >= 8192, "LimitNOFILE={nofile}");

    // The unit and the config it starts agree: systemd waits longer than voxgate's own
    // grace before it kills, and spilled bodies go to the unit's cache directory.
    assert!(read(UNIT).contains(INSTALLED_CONFIG));
    let config = toml_table(SYSTEMD_CONFIG);
    let grace = duration(server_key(&config, "shutdown_grace").unwrap_or("30s"));
    let stop = duration(unit_values(&directives, "Service", "TimeoutStopSec")[0]);
    assert!(
        stop > grace,
        "TimeoutStopSec {stop:?} <= shutdown_grace {grace:?}"
    );
    assert_eq!(server_key(&config, "spill_dir"), Some("/var/cache/voxgate"));
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(_) | Err(_) => {
            eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
            return;
        }
    }
    // verify insists that ExecStart's binary exists: the unit's copy starts the binary
    // under test on the shipped config instead of /usr/local/bin/voxgate.
    let original = format!("ExecStart=/usr/local/bin/voxgate --config {INSTALLED_CONFIG}");
    let unit = read(UNIT);
    assert_eq!(unit.matches(&original).count(), 1, "{UNIT}: {original}");
    let exec_start = format!(
        "ExecStart={} --config {}",
        env!("CARGO_BIN_EXE_voxgate"),
        repo(SYSTEMD_CONFIG).display()
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("voxgate.service");
    std::fs::write(&copy, unit.replace(&original, &exec_start)).unwrap();

    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    eprint!("{stderr}");
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // verify exits 0 on a misspelt key and only warns: every line about this unit counts.
    let about_the_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("voxgate.service") || l.contains(&*copy.to_string_lossy()))
        .collect();
    assert!(about_the_unit.is_empty(), "{about_the_unit:#?}");

    // The exposure score of `systemd-analyze security` (0 is locked down, 10 is root with
    // everything), offline since systemd 252: 2.0 at most.
    let help = Command::new("systemd-analyze")
        .args(["security", "--help"])
        .output()
        .unwrap();
    if !text(&help.stdout).contains("--offline") {
        eprintln!("skipped: this systemd-analyze has no `security --offline`");
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let overall = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_default();
    eprintln!("{overall}");
    assert!(
        out.status.success(),
        "exposure over 2.0: {stdout}{}",
        text(&out.stderr)
    );
}

/// compose.yaml as JSON, through PyYAML in target/sdk-venv.
fn compose_file() -> Value {
    let python = repo("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: {INSTALL_HINT}",
        python.display()
    );
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(repo(COMPOSE))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {INSTALL_HINT}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn same_file(a: &Path, b: &Path) -> bool {
    a.canonicalize().unwrap() == b.canonicalize().unwrap()
}

#[test]
fn compose_runs_the_tested_config_after_kokoro_is_healthy_on_loopback_only() {
    let compose = compose_file();
    let compose_dir = repo(COMPOSE).parent().unwrap().to_path_buf();
    let services = compose["services"].as_object().unwrap();
    let voxgate = &services["voxgate"];

    assert_eq!(
        services["kokoro"]["image"],
        "ghcr.io/remsky/kokoro-fastapi-cpu:latest"
    );
    let kokoro_check = services["kokoro"]["healthcheck"]["test"].to_string();
    assert!(
        kokoro_check.contains(":8880/health"),
        "kokoro's healthcheck: {kokoro_check}"
    );
    assert_eq!(
        voxgate["depends_on"]["kokoro"]["condition"], "service_healthy",
        "voxgate waits for a healthy Kokoro"
    );

    // Built from this repository with this Dockerfile.
    let context = compose_dir.join(voxgate["build"]["context"].as_str().unwrap());
    assert!(same_file(&context, &repo(".")));
    let dockerfile = context.join(voxgate["build"]["dockerfile"].as_str().unwrap());
    assert!(same_file(&dockerfile, &repo(DOCKERFILE)));

    // The config it mounts, read-only, is the one every_packaging_config_passes_check checks.
    let volumes: Vec<&str> = voxgate["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let target = format!(":{INSTALLED_CONFIG}:ro");
    let mounts: Vec<&str> = volumes
        .iter()
        .filter(|v| v.ends_with(&target))
        .copied()
        .collect();
    assert_eq!(mounts.len(), 1, "config mounted read-only: {volumes:?}");
    let source = compose_dir.join(mounts[0].strip_suffix(&target).unwrap());
    assert!(same_file(&source, &repo(DOCKER_CONFIG)), "{source:?}");
    assert!(packaging_configs().contains(&repo(DOCKER_CONFIG)));

    // Published on the host's loopback only, on the port the config listens on.
    let config = toml_table(DOCKER_CONFIG);
    let port = listen_port(&config);
    assert_eq!(
        voxgate["ports"],
        serde_json::json!([format!("127.0.0.1:{port}:{port}")])
    );
    for (name, service) in services {
        if name != "voxgate" {
            assert!(service.get("ports").is_none(), "{name} is not published");
        }
    }

    assert_eq!(
        voxgate["environment"]["OPENAI_API_KEY"], "${OPENAI_API_KEY:-}",
        "the key comes from the host's environment"
    );
    let grace = duration(server_key(&config, "shutdown_grace").unwrap_or("30s"));
    let stop = duration(voxgate["stop_grace_period"].as_str().unwrap());
    assert!(stop > grace, "stop_grace_period {stop:?} <= {grace:?}");

    // Local upstreams are addressed by service name.
    for (name, upstream) in config["upstreams"].as_table().unwrap() {
        let url = upstream["url"].as_str().unwrap();
        if let Some(rest) = url.strip_prefix("http://") {
            let host = rest.split(':').next().unwrap();
            assert!(services.contains_key(host), "upstream {name}: {url}");
        }
    }

    // With the compose plugin, compose itself must accept the file.
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if !plugin.is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: `docker compose config` (the docker compose plugin is not installed)");
        return;
    }
    let out = Command::new("docker")
        .args(["compose", "-f"])
        .arg(repo(COMPOSE))
        .args(["config", "--quiet"])
        .env("OPENAI_API_KEY", "dummy-key-for-check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The Dockerfile's instructions: continuation lines joined, comments left out.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read(DOCKERFILE).lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                pending.push_str(part);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                let (keyword, rest) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((keyword.to_uppercase(), rest.trim().to_string()));
                pending.clear();
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let instructions = dockerfile_instructions();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "multi-stage: {instructions:#?}");
    assert_eq!(instructions[stages[0]].1, "rust:1-bookworm AS build");
    assert_eq!(instructions[stages[1]].1, "debian:bookworm-slim");
    let (build, runtime) = instructions.split_at(stages[1]);
    let in_runtime = |keyword: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, v)| v.as_str())
            .collect()
    };

    // The build stage builds the binary and the runtime stage copies only that.
    assert!(build
        .iter()
        .any(|(k, v)| k == "RUN" && v.contains("cargo build --release --locked")));
    assert!(
        in_runtime("COPY").contains(&"--from=build /usr/local/bin/voxgate /usr/local/bin/voxgate")
    );

    let user = in_runtime("USER");
    let user = user.last().expect("USER in the runtime stage");
    let name = user.split(':').next().unwrap();
    assert!(name != "root" && name != "0", "USER {user}");

    let config = toml_table(DOCKER_CONFIG);
    let port = listen_port(&config);
    assert!(
        server_key(&config, "listen")
            .unwrap()
            .starts_with("0.0.0.0:"),
        "inside the container, every interface"
    );
    assert_eq!(in_runtime("EXPOSE"), [port.to_string()]);
    assert_eq!(in_runtime("STOPSIGNAL"), ["SIGTERM"]);
    let health = in_runtime("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    assert!(
        health[0].contains(&format!("http://127.0.0.1:{port}/health")),
        "{}",
        health[0]
    );
    if health[0].contains("\"curl\"") {
        assert!(
            in_runtime("RUN")
                .iter()
                .any(|r| r.contains("apt-get install") && r.contains(" curl")),
            "the health check's curl is installed"
        );
    }

    // The shipped container config, at the path the unit uses too.
    assert!(in_runtime("COPY").contains(&format!("{DOCKER_CONFIG} {INSTALLED_CONFIG}").as_str()));
    assert_eq!(in_runtime("ENTRYPOINT"), ["[\"/usr/local/bin/voxgate\"]"]);
    assert_eq!(
        in_runtime("CMD"),
        [format!("[\"--config\", \"{INSTALLED_CONFIG}\"]")]
    );

    // Whatever the build copies from the context exists and is not in .dockerignore.
    let ignored: Vec<String> = std::fs::read_to_string(repo(".dockerignore"))
        .expect(".dockerignore at the root of the build context")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    for excluded in ["target/", "**/node_modules/", ".git/"] {
        assert!(
            ignored.iter().any(|l| l == excluded),
            ".dockerignore: {excluded}"
        );
    }
    for (keyword, args) in &instructions {
        if keyword != "COPY" || args.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(repo(source).exists(), "COPY {source}");
            assert!(
                !ignored
                    .iter()
                    .any(|l| source.starts_with(l.trim_end_matches('/'))),
                "COPY {source} is excluded by .dockerignore"
            );
        }
    }
}
