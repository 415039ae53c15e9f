//! Query cancellation. Every client gets its own cancel key from pgsluice at login; the
//! registry maps it to the client's [`ClientInfo`], whose link names the server connection
//! it holds right now (set when it checks one out, cleared when it goes idle). A
//! CancelRequest is forwarded (with that server's own key) only while the client holds a
//! server, so a cancel for an idle client does nothing, and the hot path pays nothing for
//! cancellation beyond the link it keeps for the console anyway.
//!
//! # Keys
//!
//! A key is a pid (4 bytes) and a secret: 4 random bytes for a protocol 3.0 client, 32 for
//! a 3.2 client (PostgreSQL 18's length). The registry is keyed by the first 8 bytes (pid
//! and the secret's first 4 bytes), which are unique among registered keys; the other 28
//! bytes of a long secret are stored once, beside the owner, and compared in constant time.
//! A session keeps only those 8 bytes ([`CancelHandle`]).
//!
//! # Peering
//!
//! With `peer_id` set (PgBouncer's peering), bytes 1 and 2 of the key (the pid's middle
//! bytes, low byte first, as in PgBouncer) carry the instance's id, and the low two bits of
//! the secret's last byte a hop count (TTL) that starts at 3. A CancelRequest whose id is
//! another instance's is sent on to that `[peers.N]` with the TTL lowered by one; one whose
//! TTL is 0 is dropped, so a misconfigured group cannot pass a request around for ever. At
//! the owning instance the TTL bits are set back to 3 before the lookup. The id and TTL take
//! 18 of the key's bits: a 3.0 key keeps 45 random bits (as PgBouncer's), a 3.2 key 269.
//! The id is fixed when the registry is built: `peer_id` changes need a restart.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::Peer;
use crate::protocol::write;
use crate::stats::{CancelTarget, ClientInfo};

/// Sends a CancelRequest to a server. Returns whether it was delivered.
pub async fn send_cancel(t: CancelTarget) -> bool {
    send_cancel_if(t, || true).await
}

/// Sends a CancelRequest to a server if `still()` holds once the connection to it is made
/// (the cancel is for what the server runs for one client: if the server went back to its
/// pool, and maybe to another client, while pgsluice was connecting, nothing is sent).
/// Returns whether it was delivered.
pub async fn send_cancel_if(t: CancelTarget, still: impl Fn() -> bool) -> bool {
    let mut buf = BytesMut::with_capacity(16 + t.secret.len());
    write::cancel_request(&mut buf, t.pid, &t.secret);
    let send = async {
        match &t.addr {
            crate::stats::CancelAddr::Unix(path) => {
                deliver(tokio::net::UnixStream::connect(&**path).await?, &buf, &still).await
            }
            crate::stats::CancelAddr::Tcp(addr) => deliver(TcpStream::connect(addr).await?, &buf, &still).await,
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), send).await {
        Ok(Ok(())) => {
            tracing::debug!(server = %t.addr, pid = t.pid, "cancel request sent to the server");
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(server = %t.addr, error = %e, "could not forward cancel request");
            false
        }
        Err(_) => false,
    }
}

/// Length of the secret a protocol 3.2 client gets (PostgreSQL 18's `MAX_CANCEL_KEY_LENGTH`).
pub const LONG_SECRET: usize = 32;

/// Low bits of a key's last byte that count the hops left (PgBouncer's
/// `CANCELLATION_TTL_MASK`).
const TTL_MASK: u8 = 0b11;

/// Which secret a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLength {
    /// 4 bytes (protocol 3.0 and 3.1).
    Short,
    /// [`LONG_SECRET`] bytes (protocol 3.2).
    Long,
}

/// The first 8 bytes of a key: the pid and the secret's first 4 bytes.
pub type KeyHead = (i32, u32);

/// A key as handed to a client in its BackendKeyData.
pub struct IssuedKey {
    /// The pid word.
    pub pid: i32,
    secret: [u8; LONG_SECRET],
    len: usize,
}

impl IssuedKey {
    /// The secret bytes (4 or [`LONG_SECRET`]).
    pub fn secret(&self) -> &[u8] {
        &self.secret[..self.len]
    }
}

/// The peer id a key's pid carries (PgBouncer's layout: bytes 1 and 2, low byte first).
pub fn peer_of(pid: i32) -> u16 {
    let b = pid.to_be_bytes();
    u16::from_le_bytes([b[1], b[2]])
}

/// `pid` with peer id `peer` in its bytes 1 and 2.
fn with_peer(pid: i32, peer: u16) -> i32 {
    let mut b = pid.to_be_bytes();
    [b[1], b[2]] = peer.to_le_bytes();
    i32::from_be_bytes(b)
}

/// Where a CancelRequest goes.
#[derive(Debug)]
pub enum Routed {
    /// To this instance's client.
    Client(Arc<ClientInfo>),
    /// To another instance of the peered group.
    Forward(Forward),
    /// Nowhere: no such client, an idle key, an exhausted TTL.
    Nobody,
}

/// A CancelRequest to pass on to peer `peer`, its TTL already lowered.
#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    /// The peer id the key names.
    pub peer: u16,
    /// The key's pid word.
    pub pid: i32,
    /// The key's secret, TTL lowered by one.
    pub secret: Vec<u8>,
}

/// The cancel keys handed to clients, and whose they are (a key is reserved at login,
/// before its session and `ClientInfo` exist).
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<KeyHead, Entry>>,
    /// This instance's peer id (0: peering off). Fixed for the registry's life.
    peer_id: u16,
    /// Forwards in flight per peer: the peer's `pool_size` and its permits.
    peer_limits: Mutex<HashMap<u16, (u32, Arc<Semaphore>)>>,
}

/// A registered key's owner (`None` between the login reply and the start of the session)
/// and, for a long key, the secret's last 28 bytes.
struct Entry {
    owner: Option<Arc<ClientInfo>>,
    tail: Option<Box<[u8; LONG_SECRET - 4]>>,
}

/// A reserved cancel key; removes itself from the registry on drop.
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    head: KeyHead,
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.map.lock().remove(&self.head);
    }
}

impl CancelHandle {
    /// The key now belongs to `info` (its session has started).
    pub fn attach(&self, info: &Arc<ClientInfo>) {
        if let Some(e) = self.registry.map.lock().get_mut(&self.head) {
            e.owner = Some(info.clone());
        }
    }
}

impl CancelRegistry {
    /// A registry for an instance with peer id `peer_id` (0: peering off).
    pub fn new(peer_id: u16) -> CancelRegistry {
        CancelRegistry { peer_id, ..CancelRegistry::default() }
    }

    /// This instance's peer id (0: peering off).
    pub fn peer_id(&self) -> u16 {
        self.peer_id
    }

    /// Reserves a fresh random 3.0 key.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        self.register_with(KeyLength::Short).0
    }

    /// Reserves a fresh random key of `len`; the key to send the client.
    pub fn register_with(self: &Arc<Self>, len: KeyLength) -> (CancelHandle, IssuedKey) {
        let len = match len {
            KeyLength::Short => 4,
            KeyLength::Long => LONG_SECRET,
        };
        let mut map = self.map.lock();
        let key = loop {
            // (PgBouncer clears the sign bit: some clients take the pid for a real one.)
            let mut pid = rand::random::<i32>() & 0x7fff_ffff;
            let mut secret: [u8; LONG_SECRET] = rand::random();
            if self.peer_id != 0 {
                pid = with_peer(pid, self.peer_id);
                secret[len - 1] |= TTL_MASK;
            }
            let head = (pid, u32::from_be_bytes([secret[0], secret[1], secret[2], secret[3]]));
            if pid != 0 && !map.contains_key(&head) {
                break IssuedKey { pid, secret, len };
            }
        };
        let head = (key.pid, u32::from_be_bytes([key.secret[0], key.secret[1], key.secret[2], key.secret[3]]));
        let tail = (len == LONG_SECRET).then(|| {
            let mut t = Box::new([0u8; LONG_SECRET - 4]);
            t.copy_from_slice(&key.secret[4..]);
            t
        });
        map.insert(head, Entry { owner: None, tail });
        (CancelHandle { registry: self.clone(), head }, key)
    }

    /// Where a CancelRequest for (pid, secret) goes: this instance's client, another peer
    /// (peering on and the key names another id), or nowhere.
    pub fn route(&self, pid: i32, secret: &[u8]) -> Routed {
        if self.peer_id == 0 {
            return self.find(pid, secret).map_or(Routed::Nobody, Routed::Client);
        }
        let mut key = secret.to_vec();
        let Some(last) = key.last_mut() else { return Routed::Nobody };
        let peer = peer_of(pid);
        if peer == self.peer_id {
            *last |= TTL_MASK;
            return self.find(pid, &key).map_or(Routed::Nobody, Routed::Client);
        }
        if *last & TTL_MASK == 0 {
            tracing::info!(peer, "cancel request dropped: forwarded too often (its TTL is exhausted)");
            return Routed::Nobody;
        }
        *last -= 1;
        Routed::Forward(Forward { peer, pid, secret: key })
    }

    /// The client whose key is exactly (pid, secret), if it has a session.
    pub fn find(&self, pid: i32, secret: &[u8]) -> Option<Arc<ClientInfo>> {
        use subtle::ConstantTimeEq;
        let head = (pid, u32::from_be_bytes(secret.get(..4)?.try_into().ok()?));
        let map = self.map.lock();
        let e = map.get(&head)?;
        let matches = match (&e.tail, secret.len()) {
            (None, 4) => true,
            (Some(tail), LONG_SECRET) => tail[..].ct_eq(&secret[4..]).into(),
            _ => false,
        };
        if matches {
            e.owner.clone()
        } else {
            None
        }
    }

    /// Sends `f` on to its peer (one of `peers`, the configured group). Returns whether it
    /// was delivered. At most the peer's `pool_size` forwards are in flight at once; the
    /// others wait their turn, all within 5 s.
    pub async fn forward(&self, peers: &HashMap<u16, Peer>, f: Forward) -> bool {
        let Some(peer) = peers.get(&f.peer) else {
            tracing::warn!(peer = f.peer, "cancel request dropped: its key names a peer_id not in [peers]");
            return false;
        };
        let permits = {
            let mut limits = self.peer_limits.lock();
            let e = limits.entry(f.peer).or_insert_with(|| (0, Arc::new(Semaphore::new(0))));
            if e.0 != peer.pool_size {
                // (A reload changed it: forwards from now on share the new limit.)
                *e = (peer.pool_size, Arc::new(Semaphore::new(peer.pool_size as usize)));
            }
            e.1.clone()
        };
        let mut buf = BytesMut::with_capacity(12 + f.secret.len());
        write::cancel_request(&mut buf, f.pid, &f.secret);
        let send = async {
            let _permit = permits.acquire_owned().await.map_err(std::io::Error::other)?;
            if peer.addr.is_unix_socket() {
                deliver(tokio::net::UnixStream::connect(peer.addr.unix_socket_path()).await?, &buf, || true).await
            } else {
                deliver(TcpStream::connect((peer.addr.host.as_str(), peer.addr.port)).await?, &buf, || true).await
            }
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), send).await {
            Ok(Ok(())) => {
                tracing::debug!(peer = f.peer, addr = %peer.addr, "cancel request forwarded to its peer");
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(peer = f.peer, addr = %peer.addr, error = %e, "could not forward cancel request to peer");
                false
            }
            Err(_) => {
                tracing::warn!(peer = f.peer, addr = %peer.addr, "could not forward cancel request to peer in 5 s");
                false
            }
        }
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether no client is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes a CancelRequest `buf` on a fresh connection `s` if `still()` holds, then waits
/// for the other end to close it. PostgreSQL closes a cancel connection once it has
/// signalled the backend (twice: the process and its group), and a pgsluice peer once its
/// own cancel is through, so "delivered" means done, as libpq's `PQcancel` waits for:
/// a signal still in flight when the query has already ended can cancel the next one.
async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    buf: &[u8],
    still: impl Fn() -> bool,
) -> std::io::Result<()> {
    if !still() {
        return Err(std::io::Error::other("the server moved on before the cancel could be sent"));
    }
    s.write_all(buf).await?;
    s.shutdown().await?;
    let mut sink = [0u8; 64];
    while s.read(&mut sink).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A stand-in server: how many bytes each connection sent before closing.
    async fn listener() -> (tokio::net::TcpListener, CancelTarget) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = crate::stats::CancelAddr::Tcp(l.local_addr().unwrap());
        (l, CancelTarget { addr, pid: 42, secret: Arc::from(&b"key1"[..]) })
    }

    async fn received(l: &tokio::net::TcpListener) -> Vec<u8> {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        got
    }

    fn client(id: u64) -> Arc<ClientInfo> {
        let a: Arc<str> = Arc::from("app");
        let addr = "127.0.0.1:1".parse().unwrap();
        Arc::new(ClientInfo::new(id, a.clone(), a.clone(), a, addr, None, false, "", 0, false))
    }

    fn routed_to(r: Routed) -> Option<u64> {
        match r {
            Routed::Client(c) => Some(c.id),
            _ => None,
        }
    }

    #[test]
    fn keys_are_found_only_whole_and_of_the_length_issued() {
        let reg = Arc::new(CancelRegistry::new(0));
        let (short, k4) = reg.register_with(KeyLength::Short);
        let (long, k32) = reg.register_with(KeyLength::Long);
        assert_eq!((k4.secret().len(), k32.secret().len()), (4, LONG_SECRET));
        assert!(k4.pid > 0 && k32.pid > 0);
        short.attach(&client(1));
        long.attach(&client(2));
        assert_eq!(routed_to(reg.route(k4.pid, k4.secret())), Some(1));
        assert_eq!(routed_to(reg.route(k32.pid, k32.secret())), Some(2));
        // A wrong last byte, a truncated long key, a long key padded out from a short one.
        let mut wrong = k32.secret().to_vec();
        wrong[LONG_SECRET - 1] ^= 0x80;
        assert_eq!(routed_to(reg.route(k32.pid, &wrong)), None);
        assert_eq!(routed_to(reg.route(k32.pid, &k32.secret()[..4])), None);
        let mut padded = k4.secret().to_vec();
        padded.resize(LONG_SECRET, 0);
        assert_eq!(routed_to(reg.route(k4.pid, &padded)), None);
        assert_eq!(routed_to(reg.route(k4.pid ^ 1, k4.secret())), None);
        assert_eq!(reg.len(), 2);
        drop((short, long));
        assert!(reg.is_empty(), "a dropped handle takes its key (and the stored tail) away");
        assert_eq!(routed_to(reg.route(k32.pid, k32.secret())), None);
    }

    #[test]
    fn peered_keys_carry_the_peer_id_and_a_full_ttl() {
        for id in [1, 2, 255, 256, 4242, crate::config::MAX_PEER_ID] {
            let reg = Arc::new(CancelRegistry::new(id));
            for len in [KeyLength::Short, KeyLength::Long] {
                let (_h, k) = reg.register_with(len);
                assert_eq!(peer_of(k.pid), id, "{len:?}");
                assert!(k.pid > 0, "the sign bit stays clear: {}", k.pid);
                assert_eq!(k.secret().last().unwrap() & TTL_MASK, TTL_MASK, "{len:?}");
            }
        }
        // PgBouncer's bytes: key[1] is the low byte, key[2] the high byte.
        let pid = with_peer(0x7f00_00ff, 0x1234);
        assert_eq!(pid.to_be_bytes(), [0x7f, 0x34, 0x12, 0xff]);
        assert_eq!(peer_of(pid), 0x1234);
        // Without peering the key is all random.
        let reg = Arc::new(CancelRegistry::new(0));
        let ids: std::collections::HashSet<u16> =
            (0..64).map(|_| peer_of(reg.register_with(KeyLength::Short).1.pid)).collect();
        assert!(ids.len() > 1, "random pids: {ids:?}");
    }

    #[test]
    fn the_hop_guard_stops_a_request_after_three_forwards() {
        // Instance 1 holds a key of instance 2; every "wrong" instance lowers the TTL.
        let reg2 = Arc::new(CancelRegistry::new(2));
        let (h, k) = reg2.register_with(KeyLength::Long);
        h.attach(&client(9));
        let reg1 = CancelRegistry::new(1);
        let mut secret = k.secret().to_vec();
        for hop in 1..=3u8 {
            let Routed::Forward(f) = reg1.route(k.pid, &secret) else { panic!("hop {hop} is forwarded") };
            assert_eq!((f.peer, f.pid), (2, k.pid));
            assert_eq!(f.secret.last().unwrap() & TTL_MASK, TTL_MASK - hop);
            assert_eq!(f.secret[..LONG_SECRET - 1], secret[..LONG_SECRET - 1], "only the TTL bits change");
            // The owner takes it whatever its TTL.
            assert_eq!(routed_to(reg2.route(f.pid, &f.secret)), Some(9), "hop {hop}");
            secret = f.secret;
        }
        assert!(matches!(reg1.route(k.pid, &secret), Routed::Nobody), "a fourth forward is refused");
        // The same for a short key.
        let (_h, k) = reg2.register_with(KeyLength::Short);
        let mut secret = k.secret().to_vec();
        for _ in 0..3 {
            let Routed::Forward(f) = reg1.route(k.pid, &secret) else { panic!("forwarded") };
            secret = f.secret;
        }
        assert!(matches!(reg1.route(k.pid, &secret), Routed::Nobody));
    }

    #[tokio::test]
    async fn a_forward_goes_to_the_named_peer_and_an_unknown_peer_gets_nothing() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = crate::config::BackendAddr { host: "127.0.0.1".into(), port: l.local_addr().unwrap().port() };
        let peers: HashMap<u16, Peer> = [(2, Peer { addr, pool_size: 1 })].into();
        let reg = CancelRegistry::new(1);
        let f = Forward { peer: 2, pid: 0x0102_0304, secret: vec![9; LONG_SECRET] };
        let (sent, got) = tokio::join!(reg.forward(&peers, f), received(&l));
        assert!(sent);
        assert_eq!(got.len(), 12 + LONG_SECRET);
        assert_eq!(&got[4..8], &crate::protocol::frontend::CANCEL_REQUEST_CODE.to_be_bytes());
        assert_eq!(&got[8..12], &0x0102_0304i32.to_be_bytes());
        assert_eq!(&got[12..], &[9; LONG_SECRET]);
        let unknown = Forward { peer: 3, pid: 1, secret: vec![0; 4] };
        assert!(!reg.forward(&peers, unknown).await, "peer 3 is not configured");
    }

    #[tokio::test]
    async fn a_cancel_is_not_sent_to_a_server_that_moved_on_during_the_connect() {
        let (l, t) = listener().await;
        let (sent, got) = tokio::join!(send_cancel_if(t.clone(), || false), received(&l));
        assert!(!sent);
        assert!(got.is_empty(), "nothing reaches a server that is no longer the client's: {got:?}");
        let (sent, got) = tokio::join!(send_cancel_if(t, || true), received(&l));
        assert!(sent);
        assert_eq!(got.len(), 16, "the CancelRequest: {got:?}");
    }
}
