//! A loopback TCP proxy in front of a broker whose connections a test can cut: all of them at
//! once ([`Proxy::cut`]), or one at the worst moment for a producer
//! ([`Proxy::lose_produce_answers`]: a Produce request reaches the broker, which stores its
//! records, and its answer is dropped with the connection, so that the producer cannot know and
//! sends the batch again).
//!
//! Owns: [`Proxy`]. Its tasks live in a supervisor of their own (the tools follow the rule the
//! library keeps): `proxy/accept` and one `proxy/connections/forward` per connection, all
//! stopped by [`Proxy::shutdown`]. Shared by the integration tests and leakcheck's broker-fault
//! scenario.
//!
//! Invariants:
//! - Bytes are forwarded as Kafka frames (a size prefix and its body, at most
//!   [`MAX_FRAME_BYTES`]), whole and in order, each way; the API key of every request is noted
//!   so that its answer (Kafka answers a connection's requests in order) is known by API. A
//!   frame larger than the bound, or a request whose answer is not expected (acks = 0 Produce
//!   is not supported), ends the connection.
//! - A lost answer costs exactly its connection: nothing of the answer reaches the client, and
//!   every other connection carries on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus_supervisor::{Scope, Supervisor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The largest frame forwarded (requests and responses).
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// The API key of Produce.
const PRODUCE: i16 = 0;

/// A loopback TCP proxy whose connections can be cut (see the module documentation).
pub struct Proxy {
    supervisor: Supervisor,
    connections: Mutex<Scope>,
    port: u16,
    /// Answers to Produce requests still to be lost.
    to_lose: AtomicUsize,
    /// Answers to Produce requests lost so far.
    lost: AtomicUsize,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    ///
    /// # Errors
    ///
    /// When it cannot listen.
    pub async fn start(upstream: SocketAddr) -> Result<Arc<Proxy>, String> {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let supervisor = Supervisor::new("proxy");
        let connections = supervisor.root().child("connections");
        let proxy = Arc::new(Proxy {
            supervisor,
            connections: Mutex::new(connections),
            port,
            to_lose: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
        });
        let token = proxy.supervisor.root().token();
        let accepting = Arc::clone(&proxy);
        proxy
            .supervisor
            .root()
            .spawn("accept", async move {
                loop {
                    let accepted = tokio::select! {
                        () = token.cancelled() => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((inbound, _)) = accepted else { continue };
                    let scope = accepting.scope();
                    let token = scope.token();
                    let proxy = Arc::clone(&accepting);
                    let _ = scope.spawn("forward", async move {
                        let Ok(outbound) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        tokio::select! {
                            () = token.cancelled() => {}
                            () = proxy.forward(inbound, outbound) => {}
                        }
                    });
                }
            })
            .map_err(|e| e.to_string())?
            .detach();
        Ok(proxy)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The scope of the current connections.
    fn scope(&self) -> Scope {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Cuts every open connection (new ones are accepted again at once); returns how many
    /// there were.
    pub async fn cut(&self) -> usize {
        let old = {
            let mut current = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
            let fresh = self.supervisor.root().child("connections");
            std::mem::replace(&mut *current, fresh)
        };
        let live = old.live();
        let _ = old.shutdown(Duration::from_secs(5)).await;
        live
    }

    /// Loses the answers to the next `count` Produce requests, whichever connections carry
    /// them: each request reaches the broker, its answer is dropped and its connection cut.
    pub fn lose_produce_answers(&self, count: usize) {
        self.to_lose.fetch_add(count, Ordering::AcqRel);
    }

    /// How many Produce answers were lost so far.
    pub fn produce_answers_lost(&self) -> usize {
        self.lost.load(Ordering::Acquire)
    }

    /// Stops every task of the proxy.
    ///
    /// # Errors
    ///
    /// When a task did not stop within 5 s.
    pub async fn shutdown(&self) -> Result<(), String> {
        self.supervisor
            .shutdown(Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Forwards one connection, frame by frame, until either side closes, a frame is out of
    /// bounds, or an answer is to be lost.
    async fn forward(&self, inbound: TcpStream, outbound: TcpStream) {
        let (mut client_read, mut client_write) = inbound.into_split();
        let (mut broker_read, mut broker_write) = outbound.into_split();
        let asked: Mutex<VecDeque<i16>> = Mutex::new(VecDeque::new());
        let requests = async {
            while let Some(frame) = read_frame(&mut client_read).await {
                let key = frame.get(4..6).map_or(-1, |k| i16::from_be_bytes([k[0], k[1]]));
                asked.lock().unwrap_or_else(PoisonError::into_inner).push_back(key);
                if broker_write.write_all(&frame).await.is_err() {
                    return;
                }
            }
        };
        let answers = async {
            while let Some(frame) = read_frame(&mut broker_read).await {
                let key = asked.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
                let Some(key) = key else { return };
                if key == PRODUCE && self.take_one_to_lose() {
                    self.lost.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                if write_frame(&mut client_write, &frame).await.is_err() {
                    return;
                }
            }
        };
        // Either direction ending ends the connection (both halves are dropped).
        tokio::select! {
            () = requests => {}
            () = answers => {}
        }
    }

    fn take_one_to_lose(&self) -> bool {
        self.to_lose.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }
}

/// One frame (its size prefix included), or None when the stream ends or the frame is out of
/// bounds.
async fn read_frame(stream: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let size = stream.read_i32().await.ok()?;
    let size = usize::try_from(size).ok().filter(|s| *s <= MAX_FRAME_BYTES)?;
    let mut frame = vec![0u8; 4 + size];
    frame[..4].copy_from_slice(&i32::try_from(size).ok()?.to_be_bytes());
    stream.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

async fn write_frame(stream: &mut OwnedWriteHalf, frame: &[u8]) -> std::io::Result<()> {
    stream.write_all(frame).await
}
