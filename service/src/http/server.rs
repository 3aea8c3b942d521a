//! The HTTP server loop, with the limits a public endpoint needs: a slow client that never
//! finishes its headers is cut after `header_read_timeout`, a request that takes longer than
//! `request_timeout` is answered 408, and SIGTERM stops accepting and lets requests in flight
//! finish.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::timeout::TimeoutLayer;

/// Time limits of the server.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// A client must send its complete request headers within this time, also between
    /// requests on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Longest time from request to response.
    pub request_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, app: Router, limits: ServerLimits, shutdown: watch::Receiver<bool>) {
    let app = app.layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, limits.request_timeout));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Headers of at most 64 KiB (hyper's default allows about 400 KiB): a bearer token is
    // refused above 8 KiB anyway.
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true).max_buf_size(64 * 1024);
    let stopped = coupon_core::telemetry::wait_for(shutdown);
    tokio::pin!(stopped);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after the drain timeout");
    }
}
