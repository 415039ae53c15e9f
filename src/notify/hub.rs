//! The hub of one (database, user): its subscribers by channel, and the task that keeps one
//! server connection listening on their union and fans notifications out.
//!
//! The task exists while the hub has channels (plus a short linger after the last one goes,
//! so a client that reconnects does not cost a new server connection), and runs
//! connect → [`Hub::serve`] → (lost: NOTICE, backoff) → connect… Channel changes reach it
//! through `changed`; it sends one query with the `LISTEN`/`UNLISTEN`s that bring the server
//! to the union, and publishes the generation it covered in `done` once the server answered.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::{Error, HubRow, Subscriber};
use crate::backend::ServerConn;
use crate::cluster::Primary;
use crate::pool::PoolSet;
use crate::protocol::{self, write};
use crate::sql::listen::{quote_channel, Op};

/// `application_name` of hub connections (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "pgsluice listen hub";
/// First and longest wait between reconnection attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a hub without channels keeps its connection.
const LINGER: Duration = Duration::from_secs(10);
/// Largest message accepted from the hub's server (a notification payload is at most
/// 8000 bytes).
const MAX_BODY: usize = 1 << 20;

/// One (database, user)'s listening connection and subscribers; see the module docs.
pub struct Hub {
    database: Arc<str>,
    user: Arc<str>,
    st: Mutex<State>,
    /// Channels changed (or the task should look again).
    changed: Notify,
    /// The latest channel generation the server listens on.
    done: watch::Sender<u64>,
    received: AtomicU64,
    lost: AtomicU64,
}

struct State {
    pools: PoolSet,
    channels: HashMap<Box<str>, Vec<Arc<Subscriber>>>,
    /// Bumped at each change of the channel union.
    gen: u64,
    /// The task runs.
    running: bool,
    pid: Option<i32>,
}

/// What a `LISTEN` request changed: wait for `gen`; on failure undo `added`.
#[derive(Debug, Default)]
pub struct Listened {
    /// The generation the server must reach before the client is told "LISTEN".
    pub gen: u64,
    /// Channels this request added to the client.
    pub added: Vec<Box<str>>,
}

/// How a connection's service ended.
enum End {
    /// No channels for [`LINGER`]: the task stops.
    Idle,
    /// The connection is gone (or on a host that is no longer the primary).
    Lost(String),
}

impl Hub {
    pub(super) fn new(database: Arc<str>, user: Arc<str>, pools: PoolSet) -> Arc<Hub> {
        Arc::new(Hub {
            database,
            user,
            st: Mutex::new(State { pools, channels: HashMap::new(), gen: 0, running: false, pid: None }),
            changed: Notify::new(),
            done: watch::channel(0).0,
            received: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        })
    }

    /// Takes `pools` if the hub's were replaced by a reload.
    pub(super) fn rebind(&self, pools: &PoolSet) {
        let mut st = self.st.lock();
        if st.pools.is_retired() && !pools.is_retired() {
            st.pools = pools.clone();
        }
    }

    pub(super) fn row(&self) -> Option<HubRow> {
        let st = self.st.lock();
        if st.channels.is_empty() && st.pid.is_none() {
            return None;
        }
        let mut subs: Vec<*const Subscriber> = st.channels.values().flatten().map(Arc::as_ptr).collect::<Vec<_>>();
        subs.sort_unstable();
        subs.dedup();
        Some(HubRow {
            database: self.database.clone(),
            user: self.user.clone(),
            channels: st.channels.len(),
            subscribers: subs.len(),
            server_pid: st.pid,
            received: self.received.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        })
    }

    /// Applies a client's `LISTEN`/`UNLISTEN` statements in order, all or nothing: past
    /// `max_channels` for the client nothing changes and the error says how many it wanted.
    pub fn apply(self: &Arc<Self>, sub: &Arc<Subscriber>, ops: &[Op], max_channels: usize) -> Result<Listened, Error> {
        // A request is linear in its statements under the locks below: a client cannot make
        // everyone's hub wait with a huge one (more statements than four times its channel
        // limit is refused as too many).
        if ops.len() > max_channels.saturating_mul(4).max(1024) {
            return Err(Error::TooManyChannels(ops.len()));
        }
        let mut st = self.st.lock();
        let mut q = sub.q.lock();
        // The client's channels after the request, checked before anything changes.
        let mut after: std::collections::HashSet<&str> = q.channels.iter().map(|c| &**c).collect();
        for op in ops {
            match op {
                Op::Listen(c) => {
                    after.insert(c);
                    if after.len() > max_channels {
                        return Err(Error::TooManyChannels(after.len()));
                    }
                }
                Op::Unlisten(c) => {
                    after.remove(&**c);
                }
                Op::UnlistenAll => after.clear(),
            }
        }
        let mut out = Listened::default();
        let mut union_changed = false;
        for op in ops {
            match op {
                Op::Listen(c) => {
                    if q.channels.contains(c) {
                        continue;
                    }
                    q.channels.push(c.clone());
                    out.added.push(c.clone());
                    let subs = st.channels.entry(c.clone()).or_default();
                    union_changed |= subs.is_empty();
                    subs.push(sub.clone());
                }
                Op::Unlisten(c) => {
                    q.channels.retain(|x| x != c);
                    out.added.retain(|x| x != c);
                    union_changed |= remove(&mut st.channels, c, sub);
                }
                Op::UnlistenAll => {
                    for c in std::mem::take(&mut q.channels) {
                        union_changed |= remove(&mut st.channels, &c, sub);
                    }
                    out.added.clear();
                }
            }
        }
        drop(q);
        if union_changed {
            st.gen += 1;
            if st.running {
                self.changed.notify_one();
            } else if !st.channels.is_empty() {
                st.running = true;
                tokio::spawn(run(self.clone()));
            }
        }
        out.gen = st.gen;
        Ok(out)
    }

    /// Removes every channel of `sub` (disconnect, `DISCARD ALL`, a failed `LISTEN`'s undo
    /// with its `added` channels).
    pub fn unlisten(self: &Arc<Self>, sub: &Arc<Subscriber>, only: Option<&[Box<str>]>) {
        let ops: Vec<Op> = match only {
            Some(cs) => cs.iter().map(|c| Op::Unlisten(c.clone())).collect(),
            None => vec![Op::UnlistenAll],
        };
        // (Removing never exceeds a limit.)
        let _ = self.apply(sub, &ops, usize::MAX);
    }

    /// Waits until the server listens on generation `gen` (or newer), at most `limit`.
    pub async fn wait_listening(&self, gen: u64, limit: Duration) -> Result<(), Error> {
        let mut rx = self.done.subscribe();
        let waited = tokio::time::timeout(limit, rx.wait_for(|&d| d >= gen)).await.map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Unavailable("hub stopped".into())),
            Err(_) => Err(Error::Unavailable(format!("no confirmation within {limit:?}"))),
        }
    }

    /// Ends the task if there are no channels (under the lock, so a concurrent `apply`
    /// starts a new one).
    fn stop_if_idle(&self) -> bool {
        let mut st = self.st.lock();
        if st.channels.is_empty() {
            st.running = false;
            st.pid = None;
            return true;
        }
        false
    }

    /// The connection was lost: every subscriber is told with a NOTICE.
    fn lost(&self, why: &str) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        // Nothing is listened on until the next connection catches up: a `LISTEN` made
        // meanwhile waits for it (even on a channel others listen on already).
        self.done.send_replace(0);
        let mut notice = BytesMut::new();
        write::notice(
            &mut notice,
            &format!(
                "pgsluice: the server connection listening for notifications of database \"{}\" was lost ({why}); notifications sent until it is re-established are lost",
                self.database
            ),
        );
        let notice = notice.freeze();
        let mut st = self.st.lock();
        st.pid = None;
        let mut told: HashSet<*const Subscriber> = HashSet::new();
        for s in st.channels.values().flatten() {
            if told.insert(Arc::as_ptr(s)) {
                s.push(&notice);
            }
        }
    }

    /// Keeps `conn` listening on the channel union and fans its notifications out, until
    /// it is lost, the primary moves, or the hub has had no channels for [`LINGER`].
    async fn serve(&self, mut conn: ServerConn, pools: &PoolSet, host: usize) -> End {
        self.st.lock().pid = Some(conn.cancel.pid);
        let mut listening: HashSet<Box<str>> = HashSet::new();
        let mut inflight: Option<(u64, HashSet<Box<str>>)> = None;
        let mut idle_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut out = BytesMut::new();
        loop {
            if inflight.is_none() {
                let (gen, want) = {
                    let st = self.st.lock();
                    (st.gen, st.channels.keys().cloned().collect::<HashSet<_>>())
                };
                let sql = diff_sql(&listening, &want);
                if sql.is_empty() {
                    self.done.send_if_modified(|d| std::mem::replace(d, (*d).max(gen)) < gen);
                    if !want.is_empty() {
                        idle_since = None;
                    } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= LINGER && self.stop_if_idle() {
                        conn.terminate().await;
                        return End::Idle;
                    }
                } else {
                    out.clear();
                    write::query(&mut out, &sql);
                    // (Flushed: a TLS stream may keep the tail in rustls's buffer.)
                    let sent = async {
                        conn.stream.write_all(&out).await?;
                        conn.stream.flush().await
                    };
                    if let Err(e) = sent.await {
                        return End::Lost(e.to_string());
                    }
                    inflight = Some((gen, want));
                }
            }
            tokio::select! {
                r = conn.stream.read_buf(&mut conn.buf) => match r {
                    Ok(0) => return End::Lost("the server closed the connection".into()),
                    Err(e) => return End::Lost(e.to_string()),
                    Ok(_) => {
                        if let Err(e) = self.on_messages(&mut conn.buf, &mut inflight, &mut listening) {
                            return End::Lost(e);
                        }
                    }
                },
                _ = self.changed.notified() => {}
                _ = tick.tick() => {
                    if pools.cluster().primary() != Primary::Host(host) {
                        return End::Lost("the primary changed".into());
                    }
                    // A reload replaced the pools (and maybe the topology): follow them.
                    if !self.st.lock().pools.same(pools) {
                        return End::Lost("the pools were replaced by a reload".into());
                    }
                }
            }
        }
    }

    /// Handles the whole messages in `buf`: notifications fan out; the ReadyForQuery that
    /// ends the channel query makes its channels the listened ones. `Err`: the connection
    /// must be dropped.
    fn on_messages(
        &self,
        buf: &mut BytesMut,
        inflight: &mut Option<(u64, HashSet<Box<str>>)>,
        listening: &mut HashSet<Box<str>>,
    ) -> Result<(), String> {
        loop {
            let (tag, len, channel_end) = match protocol::split_frame(buf, MAX_BODY) {
                Ok(Some((tag, body, _))) => {
                    let channel_end = (tag == protocol::btag::NOTIFICATION_RESPONSE)
                        .then(|| body.get(4..).and_then(|b| b.iter().position(|&c| c == 0)))
                        .flatten();
                    (tag, protocol::HEADER_LEN + body.len(), channel_end)
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("invalid message from server: {e}")),
            };
            match tag {
                protocol::btag::NOTIFICATION_RESPONSE => {
                    let Some(end) = channel_end else { return Err("malformed NotificationResponse".into()) };
                    let frame: Bytes = buf.split_to(len).freeze();
                    let start = protocol::HEADER_LEN + 4;
                    let channel = std::str::from_utf8(&frame[start..start + end]).unwrap_or("");
                    self.received.fetch_add(1, Ordering::Relaxed);
                    let st = self.st.lock();
                    for s in st.channels.get(channel).into_iter().flatten() {
                        s.push(&frame);
                    }
                    continue;
                }
                protocol::btag::READY_FOR_QUERY => {
                    if let Some((gen, want)) = inflight.take() {
                        *listening = want;
                        self.done.send_if_modified(|d| std::mem::replace(d, (*d).max(gen)) < gen);
                    }
                }
                protocol::btag::ERROR_RESPONSE => {
                    let f = protocol::backend::parse_error_fields(&buf[protocol::HEADER_LEN..len]);
                    return Err(format!("{}: {}", f.code, f.message));
                }
                // CommandComplete, ParameterStatus, NoticeResponse and the like.
                _ => {}
            }
            buf.advance(len);
        }
    }
}

/// Removes `sub` from `channel`; true if the channel has no subscriber left (and is gone).
fn remove(channels: &mut HashMap<Box<str>, Vec<Arc<Subscriber>>>, channel: &str, sub: &Arc<Subscriber>) -> bool {
    let Some(subs) = channels.get_mut(channel) else { return false };
    subs.retain(|s| !Arc::ptr_eq(s, sub));
    if subs.is_empty() {
        channels.remove(channel);
        return true;
    }
    false
}

/// The query that brings the server from `have` to `want` (empty if nothing changes).
fn diff_sql(have: &HashSet<Box<str>>, want: &HashSet<Box<str>>) -> String {
    let mut sql = String::new();
    if want.is_empty() && !have.is_empty() {
        return "UNLISTEN *".into();
    }
    for (kw, c) in have.difference(want).map(|c| ("UNLISTEN ", c)).chain(want.difference(have).map(|c| ("LISTEN ", c)))
    {
        sql.push_str(kw);
        quote_channel(c, &mut sql);
        sql.push(';');
    }
    sql
}

/// The hub's task: connect to the primary, serve, and after a loss tell the subscribers and
/// connect again with backoff, until the hub has no channels.
async fn run(hub: Arc<Hub>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if hub.stop_if_idle() {
            return;
        }
        let pools = hub.st.lock().pools.clone();
        let primary = pools.current_primary().map(|p| (p.clone(), p.settings().host.index));
        if let Some((pool, host)) = primary {
            match pool.connect_unpooled(APPLICATION_NAME).await {
                Ok(conn) => {
                    let served = tokio::time::Instant::now();
                    let end = hub.serve(conn, &pools, host).await;
                    // (Only a connection that served a while resets the backoff: one that
                    // fails at once, e.g. a LISTEN refused by a standby, must not loop fast.)
                    if served.elapsed() >= MAX_BACKOFF {
                        backoff = MIN_BACKOFF;
                    }
                    match end {
                        End::Idle => return,
                        End::Lost(why) => {
                            tracing::warn!(db = %hub.database, user = %hub.user, error = %why, "LISTEN hub connection lost; reconnecting");
                            hub.lost(&why);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(db = %hub.database, user = %hub.user, error = %e, "LISTEN hub could not connect");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<Box<str>> {
        names.iter().map(|&n| n.into()).collect()
    }

    #[test]
    fn the_channel_query_moves_the_server_to_the_union() {
        assert_eq!(diff_sql(&set(&["a"]), &set(&["a"])), "");
        assert_eq!(diff_sql(&set(&[]), &set(&["Foo"])), "LISTEN \"Foo\";");
        assert_eq!(diff_sql(&set(&["a"]), &set(&["b"])), "UNLISTEN \"a\";LISTEN \"b\";");
        assert_eq!(diff_sql(&set(&["a", "b"]), &set(&[])), "UNLISTEN *");
    }
}
