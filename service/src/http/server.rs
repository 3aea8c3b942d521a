//! The HTTP server loop, with the limits a public endpoint needs: a slow client that never
//! finishes its headers is cut after `header_read_timeout` (also an idle kept-alive one), a
//! request that takes longer than `request_timeout` is answered 408, connections beyond
//! `max_connections` and requests beyond `max_requests_in_flight` are answered 503 with
//! `Retry-After` at once instead of queueing (memory stays bounded whatever a crowd or an
//! attacker opens), and SIGTERM stops accepting and lets requests in flight finish.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::sync::Semaphore;
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
    /// Open connections at most; one more is answered 503 and closed at once.
    pub max_connections: usize,
    /// Requests being answered at most (probes and metrics aside); one more is answered 503.
    pub max_requests_in_flight: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(20),
            max_connections: 4096,
            max_requests_in_flight: 1024,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, app: Router, limits: ServerLimits, shutdown: watch::Receiver<bool>) {
    let in_flight = Arc::new(Semaphore::new(limits.max_requests_in_flight));
    let app = app
        .layer(axum::middleware::from_fn(move |request: Request, next: Next| shed_beyond(in_flight.clone(), request, next)))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    // Refusals being written: bounded too, past it a connection is closed without a word.
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
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
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // A new socket's send buffer is empty: the answer goes out without waiting.
            let _ = stream.try_write(OVERLOADED_RESPONSE.as_bytes());
            if let Ok(closing) = refusals.clone().try_acquire_owned() {
                tokio::spawn(close_gently(stream, closing));
            }
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after the drain timeout");
    }
}

/// What an overloaded api answers: come back in a second.
const OVERLOADED_BODY: &str = r#"{"status":"unavailable","reason":"overloaded"}"#;
const RETRY_AFTER_SECS: &str = "1";
/// Refused connections being closed gently at once (`close_gently`).
const REFUSALS_AT_ONCE: usize = 1024;

/// The whole answer to a connection beyond `max_connections`, written without reading its
/// request.
static OVERLOADED_RESPONSE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECS}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{OVERLOADED_BODY}",
        OVERLOADED_BODY.len()
    )
});

/// Closes a refused connection so that its client reads the answer: our side first, then
/// what the client sent is read and dropped for a moment (closing with unread bytes would
/// reset the connection, and the client could lose the answer). Past `REFUSALS_AT_ONCE` of
/// these, a refused connection is simply dropped after its answer.
async fn close_gently(mut stream: tokio::net::TcpStream, _closing: tokio::sync::OwnedSemaphorePermit) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ =
        tokio::time::timeout(Duration::from_millis(50), async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} }).await;
}

/// Lets a request through while fewer than `max_requests_in_flight` are being answered, else
/// answers 503 at once. Probes and metrics always pass: an api busy answering its crowd is
/// alive and ready, and should be seen to be.
async fn shed_beyond(in_flight: Arc<Semaphore>, request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(request).await;
    }
    let Ok(_permit) = in_flight.try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json"), (header::RETRY_AFTER, RETRY_AFTER_SECS)],
            OVERLOADED_BODY,
        )
            .into_response();
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::AsyncReadExt;

    async fn start(limits: ServerLimits) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    "done"
                }),
            )
            .route("/healthz", get(|| async { "ok" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(serve(listener, app, limits, shutdown));
        (addr, stop)
    }

    /// Requests beyond the cap are answered 503 with `Retry-After` at once, not queued;
    /// probes still pass.
    #[tokio::test]
    async fn requests_beyond_the_cap_are_answered_at_once() {
        let (addr, _stop) = start(ServerLimits { max_requests_in_flight: 2, ..ServerLimits::default() }).await;
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/slow");
        let started = std::time::Instant::now();
        let answers = futures::future::join_all((0..6).map(|_| client.get(&url).send())).await;
        let mut statuses: Vec<u16> = answers.iter().map(|a| a.as_ref().unwrap().status().as_u16()).collect();
        statuses.sort();
        assert_eq!(statuses, [200, 200, 503, 503, 503, 503]);
        let refused = answers.into_iter().map(Result::unwrap).find(|a| a.status() == 503).unwrap();
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        assert!(started.elapsed() < Duration::from_secs(2), "nothing queued behind the slow ones");
        let (health, slow) = tokio::join!(client.get(format!("http://{addr}/healthz")).send(), client.get(&url).send());
        assert_eq!((health.unwrap().status().as_u16(), slow.unwrap().status().as_u16()), (200, 200));
    }

    /// Connections beyond the cap get a 503 and are closed, without the server reading them.
    #[tokio::test]
    async fn connections_beyond_the_cap_are_refused_with_a_503() {
        let (addr, _stop) = start(ServerLimits { max_connections: 3, ..ServerLimits::default() }).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(2), extra.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("retry-after: 1"), "{answer}");
        drop(held);
        let status = wait_for_200(&format!("http://{addr}/healthz")).await;
        assert_eq!(status, 200, "served again once the held connections closed");
    }

    async fn wait_for_200(url: &str) -> u16 {
        for _ in 0..50 {
            if let Ok(response) = reqwest::get(url).await {
                if response.status() == 200 {
                    return 200;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        0
    }
}
