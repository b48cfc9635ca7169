//! A real `redis-server` for a test: on a free loopback port, persisting nothing, in its
//! own temporary directory; killed (SIGKILL) and restarted on the same port at will, and
//! killed when dropped. `scripts/install-test-deps.sh` installs it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    /// Certificate and key: the port then speaks TLS only.
    tls: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::launch(None, None)
    }

    /// A server that wants `AUTH password` (`--requirepass`).
    pub fn with_password(password: &str) -> RedisServer {
        RedisServer::launch(Some(password.to_owned()), None)
    }

    /// A server speaking TLS only, with this certificate chain and key (PEM files).
    pub fn with_tls(cert: PathBuf, key: PathBuf) -> RedisServer {
        RedisServer::launch(None, Some((cert, key)))
    }

    fn launch(password: Option<String>, tls: Option<(PathBuf, PathBuf)>) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            password,
            tls,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        // A free port can be taken by someone else between our look and redis binding it:
        // try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn().is_ok() {
                return server;
            }
        }
        panic!("redis-server did not start:\n{}", server.log());
    }

    /// `redis://` (or `rediss://`) URL of this server, with its password if it has one.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("{scheme}://127.0.0.1:{}/0", self.port),
        }
    }

    /// SIGKILL: no goodbye to connected clients, as when a host dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (nothing was persisted).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        // The port is ours again as soon as the old process is gone, barring TIME_WAIT.
        while self.spawn().is_err() {
            assert!(Instant::now() < deadline, "no restart:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs one command on a connection of its own (blocking; wrap in `spawn_blocking`
    /// for a command that takes a while, like `DEBUG SLEEP`) and returns the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        if let Some(password) = &self.password {
            let reply = roundtrip(&mut stream, &["AUTH", password]);
            assert!(reply.starts_with("+OK"), "AUTH: {reply}");
        }
        roundtrip(&mut stream, args)
    }

    fn spawn(&mut self) -> Result<(), ()> {
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        match &self.tls {
            Some((cert, key)) => {
                command
                    .args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                command.args(["--port", &port]);
            }
        }
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // `DEBUG SLEEP`, for tests of a slow Redis; from loopback only.
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server is not installed: run scripts/install-test-deps.sh")
            }
            Err(error) => panic!("redis-server: {error}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                // Exited: most likely the port was taken.
                return Err(());
            }
            if self.answers() {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not answer within 10 s:\n{}", self.log());
    }

    /// Whether it answers `PING` (`-NOAUTH` counts: it is up, just wants a password). A
    /// TLS port is up once it accepts connections.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls.is_some() {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let reply = roundtrip(&mut stream, &["PING"]);
        reply.starts_with("+PONG") || reply.starts_with("-NOAUTH")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one command in RESP and reads whatever the first read returns (enough for the
/// short replies tests look at).
fn roundtrip(stream: &mut TcpStream, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut reply = [0u8; 4096];
    match stream.read(&mut reply) {
        Ok(n) => String::from_utf8_lossy(&reply[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
