//! The HTTP server loop, with the limits a public endpoint needs: a slow client that never
//! finishes its headers is cut after `header_read_timeout` (also an idle kept-alive one),
//! one that does not finish its body within `body_read_timeout` is answered 408, as is a
//! request that takes longer than `request_timeout`; connections beyond `max_connections`
//! and requests beyond `max_requests_in_flight` are answered 503 with `Retry-After` at once
//! instead of queueing, and counted (`Shedding`); SIGTERM stops accepting and lets requests
//! in flight finish. A connection holds at most `MAX_HEADER_BYTES` of read buffer, so the
//! api's memory stays below `max_connections` × about 20 KiB whatever clients send.

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
use prometheus_client::metrics::counter::Counter;
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
    /// A request's body must arrive within this time of its headers (before the request
    /// counts as in flight: a body trickled in cannot hold a place).
    pub body_read_timeout: Duration,
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
            body_read_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
            max_connections: 2048,
            max_requests_in_flight: 1024,
        }
    }
}

/// Requests and connections the server answered 503 for being beyond its limits (counters of
/// the process's metrics, or unregistered ones).
#[derive(Clone, Default)]
pub struct Shedding {
    pub connections: Counter,
    pub requests: Counter,
}

/// Headers (request line included) of at most this many bytes: a bearer token is refused
/// above 8 KiB anyway, and each connection's read buffer is bounded by it.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A body of at most this many bytes is read before a request counts as in flight; a larger
/// one is answered 413 (the api takes 1 KiB).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, app: Router, limits: ServerLimits, shedding: Shedding, shutdown: watch::Receiver<bool>) {
    let in_flight = Arc::new(Semaphore::new(limits.max_requests_in_flight));
    let shed_requests = shedding.requests.clone();
    let app = app
        .layer(axum::middleware::from_fn(move |request: Request, next: Next| {
            shed_beyond(in_flight.clone(), shed_requests.clone(), limits.body_read_timeout, request, next)
        }))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    // Refusals being written: bounded too, past it a connection is closed without a word.
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // (hyper's default buffer allows about 400 KiB of headers.)
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true).max_buf_size(MAX_HEADER_BYTES);
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
            shedding.connections.inc();
            warn_now_and_then("connections beyond MAX_CONNECTIONS answered 503");
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
pub(crate) const OVERLOADED_BODY: &str = r#"{"status":"unavailable","reason":"overloaded"}"#;
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
/// answers 503 at once. Its body is read first (within `body_read_timeout`, at most
/// `MAX_BODY_BYTES`): a client trickling a body in holds its connection, never a place among
/// the requests in flight. Probes always pass: an api busy answering its crowd is alive and
/// ready, and should be seen to be.
async fn shed_beyond(in_flight: Arc<Semaphore>, shed: Counter, body_read_timeout: Duration, request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(body_read_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return refusal(StatusCode::PAYLOAD_TOO_LARGE, r#"{"status":"bad_request","error":"request body too large"}"#),
        Err(_) => return refusal(StatusCode::REQUEST_TIMEOUT, r#"{"status":"bad_request","error":"request body not received in time"}"#),
    };
    let Ok(_permit) = in_flight.try_acquire_owned() else {
        shed.inc();
        warn_now_and_then("requests beyond MAX_REQUESTS_IN_FLIGHT answered 503");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json"), (header::RETRY_AFTER, RETRY_AFTER_SECS)],
            OVERLOADED_BODY,
        )
            .into_response();
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(body))).await
}

fn refusal(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Logs `message` at most once every ten seconds (per process): shedding under a flood is
/// worth a line, not one per request.
fn warn_now_and_then(message: &'static str) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    if now >= last + 10
        && LAST.compare_exchange(last, now, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed).is_ok()
    {
        tracing::warn!("{message} (see coupon_api_shed_*_total)");
    }
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
        tokio::spawn(serve(listener, app, limits, Shedding::default(), shutdown));
        (addr, stop)
    }

    /// Requests beyond the cap are answered 503 with `Retry-After` at once, not queued; the
    /// probes pass while the cap is full.
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
        let in_flight = futures::future::join_all((0..2).map(|_| client.get(&url).send()));
        let probe = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let health = client.get(format!("http://{addr}/healthz")).send().await.unwrap().status().as_u16();
            let another = client.get(&url).send().await.unwrap().status().as_u16();
            (health, another)
        };
        let (done, (health, another)) = tokio::join!(in_flight, probe);
        assert_eq!((health, another), (200, 503), "the cap full: probes pass, requests do not");
        assert!(done.iter().all(|answer| answer.as_ref().unwrap().status() == 200));
    }

    /// A body trickled in holds its connection, not a place among the requests in flight,
    /// and is answered 408 once its deadline passes.
    #[tokio::test]
    async fn a_trickled_body_holds_no_place_in_flight() {
        use tokio::io::AsyncWriteExt;
        let limits = ServerLimits { max_requests_in_flight: 1, body_read_timeout: Duration::from_millis(500), ..ServerLimits::default() };
        let (addr, _stop) = start(limits).await;
        let mut trickling = tokio::net::TcpStream::connect(addr).await.unwrap();
        trickling.write_all(b"POST /slow HTTP/1.1\r\nhost: api\r\ncontent-length: 100\r\n\r\n{").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let served = reqwest::get(format!("http://{addr}/slow")).await.unwrap().status().as_u16();
        assert_eq!(served, 200, "the only place in flight was free");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(2), trickling.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
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
