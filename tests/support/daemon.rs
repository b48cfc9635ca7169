//! The voxgate binary run as a daemon by a test: started on an ephemeral port, its log
//! (text or JSON) read as it comes, stopped with SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// The daemon, killed when dropped: a failed assertion leaves no process behind.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Starts the daemon `command` runs on `config` with an ephemeral port; returns it, its
/// address, the rest of its log as it comes, and the lines read so far.
pub fn start_with(
    mut command: Command,
    config: &Path,
) -> (Daemon, String, Receiver<String>, Vec<String>) {
    let mut child = Daemon(
        command
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Read the log on a thread, so a missing line fails the test instead of hanging it.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let address = loop {
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                panic!("voxgate logged no address within 10 s: {seen:?} {stderr}");
            }
        };
        seen.push(line.clone());
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        // `[log] format = "json"`: the address is a field of the line's object.
        let json = serde_json::from_str::<serde_json::Value>(&line).ok();
        if let Some(address) = json.as_ref().and_then(|v| v.get("address")?.as_str()) {
            break address.to_string();
        }
    };
    (child, address, rx, seen)
}

/// Sends SIGTERM and waits (10 s at most) for a clean exit.
pub fn stop_with_sigterm(child: &mut Daemon) {
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("voxgate did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
