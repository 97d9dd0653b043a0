//! A TCP proxy between one process and the API server that can stall: while paused it
//! accepts connections and holds every byte in both directions, the way an API server that
//! stopped answering looks to a client (connections open, nothing comes back). Resumed, it
//! forwards again, bytes held included. TLS passes through untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy; stopped on drop.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    paused: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (paused, _) = watch::channel(false);
        let paused = Arc::new(paused);
        let task = {
            let paused = paused.clone();
            tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    connections.spawn(forward(client, target, paused.subscribe()));
                }
            })
        };
        Ok(Self { addr, paused, task })
    }

    /// Stalls every connection, open and new.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Forwards again.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, target: SocketAddr, paused: watch::Receiver<bool>) {
    let mut gate = paused.clone();
    if gate.wait_for(|p| !*p).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = tokio::spawn(pump(client_read, server_write, paused.clone()));
    let down = tokio::spawn(pump(server_read, client_write, paused));
    let _ = tokio::join!(up, down);
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        // Nothing is read while paused: bytes wait in the sender's socket, as on a stalled link.
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
