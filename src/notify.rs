//! LISTEN/NOTIFY in transaction mode (issue 17): one listening server connection per
//! (database, user), the *hub*, shared by every client of that pair.
//!
//! A client's `LISTEN` / `UNLISTEN` (a request made only of such statements, answered by the
//! session without a pooled server, see `crate::sql::listen`) changes its [`Subscriber`]'s
//! channels in the [`Hub`]. The hub's task keeps its server connection `LISTEN`ing on the
//! union of its clients' channels, and copies each NotificationResponse it receives into the
//! queue of every subscriber of that channel; the session writes its queue to the client
//! whenever the client is between transactions (idle, or holding a server whose last
//! ReadyForQuery said `I` with nothing in flight).
//!
//! Invariants:
//! - A pooled server connection never `LISTEN`s for a hub client: the hub's connection is
//!   opened by [`crate::pool::Pool::connect_unpooled`], outside the pool's count, on the
//!   current primary (NOTIFY only happens there), and closed when its last channel is gone.
//! - Per channel, notifications reach each subscriber in the order the server sent them (one
//!   reader, queues in FIFO order).
//! - A subscriber's queue is bounded (`max_client_notification_bytes`): past it the queue is
//!   marked overflowed and the session closes the client with FATAL 53400, so nothing is
//!   dropped silently.
//! - A `LISTEN` is acknowledged to the client only once the hub's server is listening on the
//!   channel ([`Hub::wait_listening`]): a NOTIFY committed after the client's `LISTEN`
//!   completed is delivered, as in PostgreSQL.
//! - When the hub's connection is lost, every subscriber gets a NOTICE (notifications sent
//!   until the hub is back are lost, as they are for a PostgreSQL client that reconnects),
//!   and the hub reconnects with backoff and listens again.

mod hub;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use crate::pool::PoolSet;
use crate::stats::ClientInfo;

pub use hub::Hub;

/// Why a `LISTEN` could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The client would listen on more channels than `max_client_listen_channels`.
    #[error("too many LISTEN channels: this connection would listen on {0} (max_client_listen_channels)")]
    TooManyChannels(usize),
    /// The hub's server did not confirm the `LISTEN` in time.
    #[error("could not LISTEN: the listening server connection is not available ({0})")]
    Unavailable(String),
}

/// (database, user) as the client named them.
type HubKey = (Arc<str>, Arc<str>);

/// All hubs of the process, by (database, user) as the client named them. Hubs are made on
/// the first `LISTEN` of a pair and kept (a hub without channels holds no connection and no
/// task), so their number is bounded by the configured databases and users.
#[derive(Default)]
pub struct Hubs {
    hubs: Mutex<HashMap<HubKey, Arc<Hub>>>,
}

/// One hub as the admin console and metrics see it.
#[derive(Debug, Clone)]
pub struct HubRow {
    /// Client-visible database.
    pub database: Arc<str>,
    /// Client-visible user.
    pub user: Arc<str>,
    /// Channels listened on.
    pub channels: usize,
    /// Clients subscribed.
    pub subscribers: usize,
    /// The backend pid of its server connection, if connected.
    pub server_pid: Option<i32>,
    /// Notifications received from the server.
    pub received: u64,
    /// Times the connection was lost.
    pub lost: u64,
}

impl Hubs {
    /// After a reload: each hub takes the current pools of its (database, user) from `find`
    /// (a hub on retired pools would not follow the new topology).
    pub fn rebind_all(&self, find: impl Fn(&str, &str) -> Option<PoolSet>) {
        let hubs: Vec<(HubKey, Arc<Hub>)> = self.hubs.lock().iter().map(|(k, h)| (k.clone(), h.clone())).collect();
        for ((db, user), hub) in hubs {
            if let Some(set) = find(&db, &user) {
                hub.rebind(&set);
            }
        }
    }

    /// The hub of (`database`, `user`), made if needed; `pools` is where it connects.
    pub fn hub(&self, database: &Arc<str>, user: &Arc<str>, pools: &PoolSet) -> Arc<Hub> {
        let mut hubs = self.hubs.lock();
        let hub = hubs
            .entry((database.clone(), user.clone()))
            .or_insert_with(|| Hub::new(database.clone(), user.clone(), pools.clone()));
        hub.rebind(pools);
        hub.clone()
    }

    /// Every hub that has channels or a connection.
    pub fn snapshot(&self) -> Vec<HubRow> {
        let hubs: Vec<Arc<Hub>> = self.hubs.lock().values().cloned().collect();
        hubs.iter().filter_map(|h| h.row()).collect()
    }
}

// === impl Subscriber ===

/// One client's side of its hub: its channels and its queue of messages to deliver. Shared
/// by the client's session and the hub's task.
pub struct Subscriber {
    /// The client: woken when something is queued.
    info: Arc<ClientInfo>,
    q: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Whole NotificationResponse (and NoticeResponse) frames, oldest first.
    msgs: VecDeque<Bytes>,
    bytes: usize,
    limit: usize,
    /// The queue went past `limit`: the client is closed, nothing more is queued.
    overflowed: bool,
    /// Channels this client listens on.
    channels: Vec<Box<str>>,
}

impl Subscriber {
    /// A subscriber for `info`'s client whose queue holds at most `limit` bytes.
    pub fn new(info: Arc<ClientInfo>, limit: usize) -> Arc<Subscriber> {
        Arc::new(Subscriber { info, q: Mutex::new(Queue { limit, ..Queue::default() }) })
    }

    /// Queues a frame and wakes the client; past the limit the queue is marked overflowed.
    fn push(&self, frame: &Bytes) {
        {
            let mut q = self.q.lock();
            if q.overflowed {
                return;
            }
            if q.bytes + frame.len() > q.limit {
                q.overflowed = true;
                q.msgs.clear();
                q.bytes = 0;
            } else {
                q.bytes += frame.len();
                q.msgs.push_back(frame.clone());
            }
        }
        self.info.wake();
    }

    /// Moves queued frames (up to about `max` bytes, at least one) to `out`. `Err` if the
    /// queue overflowed.
    pub fn drain_into(&self, out: &mut BytesMut, max: usize) -> Result<(), Overflow> {
        let mut q = self.q.lock();
        if q.overflowed {
            return Err(Overflow(q.limit));
        }
        while let Some(m) = q.msgs.front() {
            if !out.is_empty() && out.len() + m.len() > max {
                break;
            }
            out.extend_from_slice(m);
            q.bytes -= m.len();
            q.msgs.pop_front();
        }
        Ok(())
    }

    /// Whether something waits to be delivered (or the queue overflowed).
    pub fn has_pending(&self) -> bool {
        let q = self.q.lock();
        q.overflowed || !q.msgs.is_empty()
    }

    /// Channels this client listens on.
    pub fn channel_count(&self) -> usize {
        self.q.lock().channels.len()
    }
}

/// A subscriber's queue went past `max_client_notification_bytes` (the limit, in bytes).
#[derive(Debug, Clone, Copy)]
pub struct Overflow(pub usize);
