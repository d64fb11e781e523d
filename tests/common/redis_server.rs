//! A real `redis-server` (Debian's package; `bash scripts/setup.sh --test` installs it) on 127.0.0.1 for the tests:
//! a free port, no persistence, killed when dropped (also when a test panics), restartable on the same port.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("port").port()
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts a server on `port` (e.g. one a client was pointed at before the server existed).
    pub fn start_on(port: u16) -> RedisServer {
        let mut server = RedisServer { port, child: None };
        server.restart();
        server
    }

    /// Sends a signal to the server; SIGSTOP / SIGCONT make a Redis that keeps its connections and stops answering.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        // SAFETY: kill(2) on a child process we own; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0, "signal {signal} to redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}): run `bash scripts/setup.sh --test` (installs Debian's redis-server)"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING within 10 s", self.port);
    }

    /// Kills the server (SIGKILL: an outage, not a clean shutdown) and waits until the port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Keys in the database (DBSIZE), or `None` when the server does not answer.
    pub fn dbsize(&self) -> Option<u64> {
        let reply = self.command(b"DBSIZE\r\n")?;
        reply.strip_prefix(':')?.trim().parse().ok()
    }

    fn command(&self, command: &[u8]) -> Option<String> {
        use std::io::{BufRead, BufReader, Write};
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        conn.write_all(command).ok()?;
        let mut line = String::new();
        BufReader::new(conn).read_line(&mut line).ok()?;
        Some(line)
    }

    pub fn ping(&self) -> bool {
        self.command(b"PING\r\n").is_some_and(|r| r.starts_with("+PONG"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
