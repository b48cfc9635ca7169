//! The command line as scripts and docs rely on it: `check`, `print-config`, and serving
//! until SIGTERM. Also loads every shipped config so the examples cannot rot.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use voxgate::config::{Config, DEFAULT_TOML};

mod support;

use support::daemon::{start_with, stop_with_sigterm, Daemon};
use support::repo;

fn voxgate() -> Command {
    support::voxgate_bin()
}

/// The command without the environment variables voxgate reads.
fn without_our_env(mut c: Command) -> Command {
    c.env_remove("VOXGATE_CONFIG").env_remove("RUST_LOG");
    c
}

/// `voxgate check --config FILE`.
fn check(file: &Path) -> std::process::Output {
    support::check_with(voxgate(), file)
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("voxgate-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// The shipped configs `voxgate check` must pass as they are (packaging/'s name deployed
/// directories: tests/packaging.rs checks them).
fn shipped_configs() -> Vec<PathBuf> {
    support::tomls_in(&["config", "examples"])
}

/// Starts the daemon on `config` with an ephemeral port; returns it, its address, the rest
/// of its log as it comes, and the lines read so far.
fn start(config: &Path) -> (Daemon, String, Receiver<String>, Vec<String>) {
    start_with(voxgate(), config)
}

fn assert_healthy(address: &str) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn every_shipped_config_passes_check() {
    let files = shipped_configs();
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let out = check(&file);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
    }
}

#[test]
fn print_config_prints_the_builtin_default_which_round_trips() {
    let out = voxgate().arg("print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, DEFAULT_TOML);
    assert_eq!(
        text,
        std::fs::read_to_string(repo("config/default.toml")).unwrap()
    );
    let file = temp_file("printed.toml", &text);
    let out = check(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = voxgate().arg("check").output().unwrap();
    assert!(
        out.status.success(),
        "check without --config checks the built-in default"
    );
}

#[test]
fn check_prints_every_error_with_its_location_and_no_secret() {
    let text = "[server]\nlisten = \"localhost\"\n\n[upstreams.kokoro]\nurl = \"http://127.0.0.1:8880\"\napi_key = \"sk-do-not-print\"\nconnect_timeout = \"fast\"\n\n[[routes]]\nto = [\"kokoro\", \"opnai\"]\n";
    let file = temp_file("bad.toml", text);
    let out = check(&file);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let shown = file.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].starts_with(&format!("{shown}:2:10: ")), "{stderr}");
    assert!(lines[1].starts_with(&format!("{shown}:7:19: ")), "{stderr}");
    assert!(
        lines[2].starts_with(&format!("{shown}:10:17: unknown upstream `opnai`")),
        "{stderr}"
    );
    assert!(!stderr.contains("sk-do-not-print"));

    let syntax = temp_file(
        "syntax.toml",
        "[upstreams.a]\nurl = \"http://x\"\napi_key = \"sk-do-not-print\" junk\n",
    );
    let out = check(&syntax);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr.starts_with(&format!("{}:3:", syntax.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("sk-do-not-print"), "{stderr}");
}

#[test]
fn the_config_file_can_come_from_voxgate_config() {
    let file = temp_file(
        "env.toml",
        "[upstreams.a]\nurl = \"http://x\"\n[[routes]]\nto = [\"b\"]\n",
    );
    let out = voxgate()
        .arg("check")
        .env("VOXGATE_CONFIG", &file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown upstream `b`"));
}

#[test]
fn the_daemon_serves_and_stops_cleanly_on_sigterm() {
    let config = temp_file(
        "serve.toml",
        "[upstreams.a]\nurl = \"http://127.0.0.1:9\"\napi_key = \"sk-never-logged\"\n\
         [upstreams.insecure]\nurl = \"https://127.0.0.1:9\"\ntls_verify = false\n\
         [[routes]]\nto = [\"a\", \"insecure\"]\n",
    );
    let started = Instant::now();
    let (mut child, address, rx, mut seen) = start(&config);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_healthy(&address);

    stop_with_sigterm(&mut child);
    seen.extend(rx.iter());
    let log = seen.join("\n");
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        log.contains("verification is OFF") && log.contains("insecure"),
        "turning TLS verification off is logged at start: {log}"
    );
    assert!(!log.contains("sk-never-logged"), "{log}");
}

#[test]
fn an_api_key_from_an_unset_variable_is_warned_about_once_at_start() {
    let config = temp_file(
        "unset-key.toml",
        "[upstreams.openai]\nurl = \"http://127.0.0.1:9\"\napi_key = \"${VOXGATE_TEST_UNSET_KEY:-}\"\n\
         pass_client_key = true\n[[routes]]\nto = [\"openai\"]\n",
    );
    let warning = "VOXGATE_TEST_UNSET_KEY is not set, so upstream `openai` has no api_key: \
                   it gets the client's own Authorization header";
    for (value, warned) in [(None, 1), (Some("sk-from-env"), 0)] {
        let mut command = voxgate();
        match value {
            Some(v) => command.env("VOXGATE_TEST_UNSET_KEY", v),
            None => command.env_remove("VOXGATE_TEST_UNSET_KEY"),
        };
        let (mut child, address, log, mut seen) = start_with(command, &config);
        assert_healthy(&address);
        stop_with_sigterm(&mut child);
        seen.extend(log.iter());
        let count = seen.iter().filter(|l| l.contains(warning)).count();
        assert_eq!(count, warned, "{value:?}: {seen:#?}");
        assert!(!seen.iter().any(|l| l.contains("sk-from-env")), "{seen:?}");
    }
}

/// `server.threads = 1` runs everything on the main thread (tokio's current-thread
/// scheduler); `threads = 3` gives three workers beside it; unset, it follows the CPU
/// affinity. Counted in /proc. Both schedulers stop cleanly on SIGTERM.
#[cfg(target_os = "linux")]
#[test]
fn server_threads_sets_the_threads_that_serve() {
    // Unset, it is the number of cores voxgate may run on: one under `taskset -c 0`.
    for (threads, expected) in [(Some(1), 1), (Some(3), 4), (None, 1)] {
        let setting = threads
            .map(|n| format!("threads = {n}\n"))
            .unwrap_or_default();
        let config = temp_file(
            &format!("threads-{threads:?}.toml"),
            &format!(
                "[server]\n{setting}[upstreams.a]\nurl = \"http://127.0.0.1:9\"\n\
                 [[routes]]\nto = [\"a\"]\n"
            ),
        );
        let command = if threads.is_some() {
            voxgate()
        } else {
            let mut c = without_our_env(Command::new("taskset"));
            c.args(["-c", "0", env!("CARGO_BIN_EXE_voxgate")]);
            c
        };
        let threads = threads.unwrap_or(1);
        let (mut child, address, log, mut seen) = start_with(command, &config);
        assert_healthy(&address);
        let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .unwrap()
            .count();
        // Either scheduler stops cleanly on a signal.
        stop_with_sigterm(&mut child);
        seen.extend(log.iter());
        assert_eq!(tasks, expected, "threads = {threads}");
        assert!(
            seen.iter()
                .any(|l| l.contains(&format!("threads={threads}"))),
            "{seen:?}"
        );
        assert!(seen.iter().any(|l| l.contains("shutting down")), "{seen:?}");
    }
}

#[test]
fn client_keys_passed_on_to_an_upstream_are_warned_about_at_start() {
    let upstream = "[upstreams.openai]\nurl = \"http://127.0.0.1:9\"\npass_client_key = true\n[[routes]]\nto = [\"openai\"]\n";
    let warning = "clients' voxgate keys will be sent to it";
    let clients = "[[clients]]\nname = \"a\"\nkey = \"k-a\"\n";
    for (name, text, warned) in [
        ("pass-with-clients.toml", format!("{upstream}{clients}"), 1),
        ("pass-without-clients.toml", upstream.to_string(), 0),
    ] {
        let config = temp_file(name, &text);
        let (mut child, address, log, mut seen) = start_with(voxgate(), &config);
        assert_healthy(&address);
        stop_with_sigterm(&mut child);
        seen.extend(log.iter());
        let count = seen.iter().filter(|l| l.contains(warning)).count();
        assert_eq!(count, warned, "{name}: {seen:#?}");
    }
}
