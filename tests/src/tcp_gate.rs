//! A loopback TCP forwarder that can be closed and opened, to make a dependency
//! unreachable and then reachable again without touching the real server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:port` to `target` while open; while closed it refuses new
/// connections and has cut the ones it carried.
pub struct TcpGate {
    pub port: u16,
    target: SocketAddr,
    /// Added to everything a client sends (each chunk held this long before it goes on):
    /// a control plane that answers slowly.
    latency: Duration,
    task: Option<(JoinHandle<()>, watch::Sender<bool>)>,
}

impl TcpGate {
    /// A closed gate on a free port.
    pub fn closed(target: SocketAddr) -> Self {
        Self { port: crate::free_port(), target, latency: Duration::ZERO, task: None }
    }

    /// A closed gate that delays every chunk a client sends by `latency`.
    pub fn closed_with_latency(target: SocketAddr, latency: Duration) -> Self {
        Self { port: crate::free_port(), target, latency, task: None }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub async fn open(&mut self) {
        if self.task.is_some() {
            return;
        }
        let listener = TcpListener::bind(self.addr()).await.expect("bind gate port");
        let (target, latency) = (self.target, self.latency);
        let (cut, cut_rx) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    if latency.is_zero() {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut_rx.wait_for(|cut| *cut) => {}
                        }
                        return;
                    }
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let requests = async move {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let read = match client_read.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => read,
                            };
                            tokio::time::sleep(latency).await;
                            if server_write.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        () = requests => {}
                        _ = tokio::io::copy(&mut server_read, &mut client_write) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        self.task = Some((accept, cut));
    }

    /// Stops accepting and cuts every carried connection.
    pub fn close(&mut self) {
        if let Some((accept, cut)) = self.task.take() {
            accept.abort();
            let _ = cut.send(true);
        }
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.close();
    }
}
