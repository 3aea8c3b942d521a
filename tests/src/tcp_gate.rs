//! A loopback TCP forwarder that can be closed and opened, to make a dependency
//! unreachable and then reachable again without touching the real server.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:port` to `target` while open; refuses connections while closed.
pub struct TcpGate {
    pub port: u16,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl TcpGate {
    /// A closed gate on a free port.
    pub fn closed(target: SocketAddr) -> Self {
        Self { port: crate::free_port(), target, task: None }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub async fn open(&mut self) {
        if self.task.is_some() {
            return;
        }
        let listener = TcpListener::bind(self.addr()).await.expect("bind gate port");
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
