//! A loopback TCP forwarder that can be closed and opened, to make a dependency
//! unreachable and then reachable again without touching the real server.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:port` to `target` while open; while closed it refuses new
/// connections and has cut the ones it carried.
pub struct TcpGate {
    pub port: u16,
    target: SocketAddr,
    task: Option<(JoinHandle<()>, watch::Sender<bool>)>,
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
        let (cut, cut_rx) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut_rx.wait_for(|cut| *cut) => {}
                        }
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
