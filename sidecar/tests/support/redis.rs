//! A real redis-server (Debian's, installed by `scripts/setup.sh`) on a free loopback port in
//! a temp dir, with append-only persistence fsynced on every write; stopped on drop.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::{TempDir, eventually};

/// A running redis-server.
pub struct RedisServer {
    pub port: u16,
    pub dir: TempDir,
    child: Child,
}

fn binary() -> &'static str {
    let path = "/usr/bin/redis-server";
    assert!(
        std::path::Path::new(path).exists(),
        "redis-server is missing: run scripts/setup.sh (Debian package redis-server)"
    );
    path
}

impl RedisServer {
    /// Starts one on a free port.
    pub async fn start() -> RedisServer {
        RedisServer::start_on(TempDir::new(), super::issuer::free_port()).await
    }

    /// Starts one on `port` with its data in `dir` (an earlier server's, to restart it).
    pub async fn start_on(dir: TempDir, port: u16) -> RedisServer {
        let child = Command::new(binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--logfile", "redis.log"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let server = RedisServer { port, dir, child };
        eventually(
            "redis-server to answer PING",
            Duration::from_secs(20),
            || async { server.ping().await.then_some(()) },
        )
        .await;
        server
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether it answers PING.
    pub async fn ping(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        matches!(tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut buf)).await, Ok(Ok(_)) if &buf == b"+PONG\r\n")
    }

    /// Sends one command (as the default user) and returns its reply's first line, e.g.
    /// `+OK`; for changing the server's ACLs under a running issuer.
    pub async fn command(&self, args: &[&str]) -> String {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
                .await
                .expect("redis-server answers")
                .unwrap();
            assert_eq!(read, 1, "redis-server closed the connection");
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }

    /// Kills it (SIGKILL: no shutdown save) and starts it again on the same port and data.
    pub async fn crash_and_restart(mut self) -> RedisServer {
        self.child.kill().await.unwrap();
        let RedisServer { port, dir, .. } = self;
        RedisServer::start_on(dir, port).await
    }
}
