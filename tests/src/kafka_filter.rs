//! A TCP proxy in front of a Kafka broker that reads the request framing (size, API key) and
//! refuses chosen APIs by closing the connection: a broker whose principal lacks a right
//! (CreateTopics without the Create ACL), which tansu cannot be configured to be. Every
//! request's API key is counted, so a test can assert what a client never sent. The broker
//! must advertise the proxy's address (`OwnTansu::start_advertised`), or clients go around it
//! after bootstrapping.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Kafka's API key of CreateTopics.
pub const CREATE_TOPICS: i16 = 19;
/// Kafka's API key of DeleteTopics.
pub const DELETE_TOPICS: i16 = 20;

pub struct KafkaFilter {
    pub port: u16,
    /// Requests seen, by API key (refused ones included).
    seen: Arc<Mutex<BTreeMap<i16, usize>>>,
    refused: Arc<Mutex<BTreeSet<i16>>>,
    accept: JoinHandle<()>,
}

impl KafkaFilter {
    /// Listens on a free port and forwards to `broker`, refusing nothing yet.
    pub async fn start(broker: SocketAddr) -> Self {
        let port = crate::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the Kafka filter");
        let seen: Arc<Mutex<BTreeMap<i16, usize>>> = Default::default();
        let refused: Arc<Mutex<BTreeSet<i16>>> = Default::default();
        let (counts, refusing) = (seen.clone(), refused.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (counts, refused) = (counts.clone(), refusing.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(broker).await else { return };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut broker_read, mut broker_write) = outbound.into_split();
                    let answers = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut broker_read, &mut client_write).await;
                    });
                    // Requests: a 4-byte size, then the API key (2 bytes), version, ...
                    loop {
                        let mut size = [0u8; 4];
                        if client_read.read_exact(&mut size).await.is_err() {
                            break;
                        }
                        let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
                        if client_read.read_exact(&mut body).await.is_err() || body.len() < 2 {
                            break;
                        }
                        let api_key = i16::from_be_bytes([body[0], body[1]]);
                        *counts.lock().unwrap().entry(api_key).or_default() += 1;
                        if refused.lock().unwrap().contains(&api_key) {
                            break;
                        }
                        if broker_write.write_all(&size).await.is_err() || broker_write.write_all(&body).await.is_err() {
                            break;
                        }
                    }
                    answers.abort();
                });
            }
        });
        Self { port, seen, refused, accept }
    }

    /// From now on, requests with this API key close their connection unanswered.
    pub fn refuse(&self, api_key: i16) {
        self.refused.lock().unwrap().insert(api_key);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many requests with this API key clients sent.
    pub fn seen(&self, api_key: i16) -> usize {
        self.seen.lock().unwrap().get(&api_key).copied().unwrap_or(0)
    }
}

impl Drop for KafkaFilter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
