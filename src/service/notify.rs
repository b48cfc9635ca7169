//! systemd's notification protocol (sd_notify(3)), without libsystemd: one datagram of
//! `KEY=value` lines to the unix socket named by `$NOTIFY_SOCKET`, a path or, with a
//! leading `@`, a name in the abstract namespace.
//!
//! voxgate sends `READY=1` once its listeners are bound, `RELOADING=1` with
//! `MONOTONIC_USEC=` when a reload starts and `READY=1` when it is over, `STOPPING=1` on
//! shutdown, `WATCHDOG=1` every half `$WATCHDOG_USEC`, and `STATUS=` with a one-line
//! summary. Without `$NOTIFY_SOCKET` (not started by systemd with `Type=notify`) every
//! call does nothing.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go; does nothing when voxgate was not started with a socket.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// A notifier to `$NOTIFY_SOCKET`, or one that does nothing when it is unset or empty.
    pub fn from_env() -> io::Result<Notifier> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(name) if !name.is_empty() => Notifier::to(&name.to_string_lossy()),
            _ => Ok(Notifier { socket: None }),
        }
    }

    /// A notifier to `name`: a socket path, or `@name` in the abstract namespace.
    pub fn to(name: &str) -> io::Result<Notifier> {
        let address = match name.strip_prefix('@') {
            Some(abstract_name) => abstract_address(abstract_name)?,
            None => std::os::unix::net::SocketAddr::from_pathname(name)?,
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier {
            socket: Some((socket, address)),
        })
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state`, newline-separated `KEY=value` assignments, as one datagram.
    pub fn send(&self, state: &str) -> io::Result<()> {
        match &self.socket {
            Some((socket, address)) => socket.send_to_addr(state.as_bytes(), address).map(drop),
            None => Ok(()),
        }
    }

    /// Sends `state` and logs (at debug) a failure instead of returning it: a manager
    /// that went away must not stop the proxy.
    pub fn tell(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::debug!(error = %e, "cannot notify the service manager");
        }
    }

    pub fn ready(&self, status: &str) {
        self.tell(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn reloading(&self) {
        let usec = monotonic_usec();
        self.tell(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration"
        ));
    }

    pub fn stopping(&self) {
        self.tell("STOPPING=1\nSTATUS=shutting down: finishing requests in flight");
    }

    pub fn watchdog(&self) {
        self.tell("WATCHDOG=1");
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}

/// `STATUS=` takes one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it.
pub fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds * 1_000_000 + nanos / 1_000
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, if it is set for this process
/// (`$WATCHDOG_PID`, when set, must be ours).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, ours: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(ours) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&n| n > 0)?;
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_one_datagram_per_message_to_a_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let manager = UnixDatagram::bind(&path).expect("bind");
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let notifier = Notifier::to(path.to_str().expect("utf-8 path")).expect("notifier");
        assert!(notifier.enabled());
        notifier.ready("serving 2 routes\nover 3 upstreams");
        notifier.reloading();
        notifier.ready("again");
        notifier.watchdog();
        notifier.stopping();
        assert_eq!(
            receive(&manager),
            "READY=1\nSTATUS=serving 2 routes over 3 upstreams"
        );
        let reloading = receive(&manager);
        let mut lines = reloading.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .expect("MONOTONIC_USEC=<number>");
        assert!(usec > 0 && usec <= monotonic_usec());
        assert_eq!(receive(&manager), "READY=1\nSTATUS=again");
        assert_eq!(receive(&manager), "WATCHDOG=1");
        assert!(receive(&manager).starts_with("STOPPING=1\n"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("voxgate-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let manager = UnixDatagram::bind_addr(&address).expect("bind abstract");
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let notifier = Notifier::to(&format!("@{name}")).expect("notifier");
        notifier.ready("up");
        assert_eq!(receive(&manager), "READY=1\nSTATUS=up");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier { socket: None };
        assert!(!notifier.enabled());
        assert!(notifier.send("READY=1").is_ok());
    }

    #[test]
    fn a_missing_socket_is_an_error_to_send_not_a_panic() {
        let notifier = Notifier::to("/nonexistent/voxgate/notify.sock").expect("notifier");
        assert!(notifier.send("READY=1").is_err());
        notifier.ready("still fine");
    }

    #[test]
    fn watchdog_is_half_the_interval_and_only_for_our_pid() {
        let half = Some(Duration::from_millis(500));
        assert_eq!(watchdog_interval_from(Some("1000000"), None, 7), half);
        assert_eq!(watchdog_interval_from(Some("1000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval_from(Some("1000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
    }
}
