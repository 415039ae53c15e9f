//! Named prepared statements in transaction mode: the client's names are its own, the
//! server's names are pgsluice's.
//!
//! A client's `Parse` of statement `s1` is recorded per client ([`ClientStatements`]:
//! name → [`Stmt`]) and sent to the server under a name derived from the statement itself
//! (`pgsluice_` + 128 bits of SHA-256 over query text and parameter types, see [`Key`]), so
//! identical statements from many clients share one server-side prepare. Each server
//! connection remembers which keys it has prepared ([`ServerStatements`], LRU-bounded by
//! `max_prepared_statements`); the relay prepares a statement on a server that lacks it just
//! before the `Bind`/`Describe` that needs it. Design notes: `docs/prepared-statements.md`.
//!
//! Invariants:
//! - A [`Key`] identifies a statement's text and parameter types exactly (cryptographic hash:
//!   two different statements never share a server-side name).
//! - [`ServerStatements`] holds exactly the pgsluice statements prepared on that server, once
//!   every request sent to it has been answered (the relay undoes optimistic entries whose
//!   `Parse`/`Close` failed or was skipped).
//! - Eviction never closes a statement used in the server's current transaction (a portal
//!   bound from it may still be executed).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Length of a server-side statement name: `pgsluice_` + 32 hex digits.
pub const SERVER_NAME_LEN: usize = 9 + 32;

/// Identity of a statement: 128 bits of SHA-256 over the Parse body after its name (query
/// text, parameter count and type OIDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 16]);

impl Key {
    /// The key of a Parse body with the statement name already stripped.
    pub fn of(parse_rest: &[u8]) -> Key {
        let digest = Sha256::digest(parse_rest);
        let mut k = [0u8; 16];
        k.copy_from_slice(&digest[..16]);
        Key(k)
    }

    /// The server-side statement name for this key.
    pub fn server_name(&self) -> [u8; SERVER_NAME_LEN] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut name = [0u8; SERVER_NAME_LEN];
        name[..9].copy_from_slice(b"pgsluice_");
        for (i, b) in self.0.iter().enumerate() {
            name[9 + 2 * i] = HEX[(b >> 4) as usize];
            name[10 + 2 * i] = HEX[(b & 15) as usize];
        }
        name
    }
}

/// One prepared statement as a client defined it.
#[derive(Debug)]
pub struct Stmt {
    /// Server-side identity.
    pub key: Key,
    /// Server-side name (`Key::server_name`), kept so a Bind does not re-encode it.
    pub name: [u8; SERVER_NAME_LEN],
    /// The Parse body after the statement name: query text, NUL, parameter types. Enough to
    /// prepare the statement on any server.
    pub rest: Box<[u8]>,
    /// Its routing class, computed on first use (a prepared statement is classified once).
    pub class: std::sync::OnceLock<crate::sql::classify::Class>,
    /// Whether its text sets or undoes session state (`sql::session_state`), computed on
    /// first use.
    pub session_effect: std::sync::OnceLock<bool>,
    /// The row description the client was given when it described the statement
    /// (`exchange::retry::shape_of`; 0: never described).
    pub shape: std::sync::atomic::AtomicU64,
}

impl Stmt {
    /// A statement from the part of a Parse body after its name.
    pub fn new(parse_rest: &[u8]) -> Arc<Stmt> {
        Stmt::with_key(Key::of(parse_rest), parse_rest)
    }

    /// A statement whose key the caller has already computed from `parse_rest`.
    pub fn with_key(key: Key, parse_rest: &[u8]) -> Arc<Stmt> {
        Arc::new(Stmt {
            key,
            name: key.server_name(),
            rest: parse_rest.into(),
            class: Default::default(),
            session_effect: Default::default(),
            shape: Default::default(),
        })
    }

    /// The query text (empty if not UTF-8).
    pub fn query(&self) -> &str {
        crate::protocol::cstr(&self.rest).and_then(|(q, _)| std::str::from_utf8(q).ok()).unwrap_or("")
    }
}

/// A client's named prepared statements (protocol-level `Parse`), by the client's name.
/// Allocated at the first one: a client that never names a statement pays one word.
///
/// Invariant: `bytes` is the sum of the names and texts held ([`Stmt::size`]), so a bound on
/// it ([`Limits`]) bounds the client's memory, whatever the statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: Option<Box<Statements>>,
}

#[derive(Debug, Default)]
struct Statements {
    /// Client statement name → statement.
    map: HashMap<Box<[u8]>, Arc<Stmt>>,
    /// Names and texts held, in bytes.
    bytes: usize,
}

/// Bounds on one client's named statements (`max_client_prepared_statements`,
/// `max_client_prepared_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Statements.
    pub count: u32,
    /// Bytes of names and texts.
    pub bytes: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { count: 5000, bytes: 8 << 20 }
    }
}

/// The memory a statement named `name` with Parse body `rest` holds, as counted.
fn size_of_stmt(name: &[u8], rest: &[u8]) -> usize {
    name.len() + rest.len()
}

impl ClientStatements {
    /// The statement the client named `name`.
    #[inline]
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Stmt>> {
        self.map.as_ref()?.map.get(name)
    }

    /// Defines `name` (replacing any previous definition).
    pub fn insert(&mut self, name: &[u8], stmt: Arc<Stmt>) {
        let m = self.map.get_or_insert_default();
        m.bytes += size_of_stmt(name, &stmt.rest);
        if let Some(old) = m.map.insert(name.into(), stmt) {
            m.bytes -= size_of_stmt(name, &old.rest);
        }
    }

    /// Forgets `name`, returning its statement.
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Stmt>> {
        let m = self.map.as_mut()?;
        let old = m.map.remove(name)?;
        m.bytes -= size_of_stmt(name, &old.rest);
        Some(old)
    }

    /// Forgets `name` only if it still names `stmt` (undo of an optimistic insert).
    pub fn remove_if(&mut self, name: &[u8], stmt: &Arc<Stmt>) {
        if self.get(name).is_some_and(|s| Arc::ptr_eq(s, stmt)) {
            self.remove(name);
        }
    }

    /// Forgets every statement (`DISCARD ALL`, `DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.map = None;
    }

    /// Number of statements.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.map.len())
    }

    /// Whether the client has no named statement.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of names and texts held.
    pub fn bytes(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.bytes)
    }

    /// Why `more` new statements of `size` bytes in all (names and Parse bodies after the
    /// name) would break `limits`, as PostgreSQL's error message for a limit reads; `None`
    /// if they fit.
    pub fn refusal(&self, more: usize, size: usize, limits: Limits) -> Option<String> {
        if self.len() + more > limits.count as usize {
            return Some(format!(
                "too many prepared statements: this connection already has {} (max_client_prepared_statements = {})",
                self.len(),
                limits.count
            ));
        }
        if self.bytes() + size > limits.bytes as usize {
            return Some(format!(
                "prepared statements too large: this connection's take {} bytes, {} more would pass max_client_prepared_bytes = {}",
                self.bytes(),
                size,
                limits.bytes
            ));
        }
        None
    }
}

/// Hasher for [`Key`]s, which are already uniformly distributed.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

/// The pgsluice statements prepared on one server connection, with least-recently-used
/// eviction beyond a capacity.
#[derive(Debug)]
pub struct ServerStatements {
    /// Key → number of the client batch (request up to a Sync/Query) that last used it.
    used: HashMap<Key, u64, BuildHasherDefault<KeyHasher>>,
    /// Number of the batch being scanned (advances at each Sync/Query as the client's
    /// messages are scanned, which may be ahead of the server).
    tick: u64,
    /// First batch of the server's current transaction: statements used since may have
    /// portals open and are never evicted.
    txn_start: u64,
    capacity: usize,
    /// Requests ending with ReadyForQuery (one per client batch) that are done (answered,
    /// skipped or abandoned) since the connection opened; compared with the batch numbers.
    completed: u64,
}

impl Default for ServerStatements {
    fn default() -> Self {
        ServerStatements { used: HashMap::default(), tick: 0, txn_start: 0, capacity: 200, completed: 0 }
    }
}

impl ServerStatements {
    /// Sets the capacity (`max_prepared_statements`); takes effect at the next insert.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
    }

    /// Whether `key` is prepared; marks it used.
    #[inline]
    pub fn touch(&mut self, key: &Key) -> bool {
        match self.used.get_mut(key) {
            Some(e) => {
                *e = self.tick;
                true
            }
            None => false,
        }
    }

    /// Whether `key` is prepared (no side effect).
    pub fn contains(&self, key: &Key) -> bool {
        self.used.contains_key(key)
    }

    /// Records `key` as prepared. Returns the key to close first when at capacity: the least
    /// recently used one not used in the current transaction (none if all are).
    pub fn insert(&mut self, key: Key) -> Option<Key> {
        let mut evict = None;
        if self.used.len() >= self.capacity {
            evict = self.used.iter().filter(|(_, &e)| e < self.txn_start).min_by_key(|(_, &e)| e).map(|(k, _)| *k);
            if let Some(k) = &evict {
                self.used.remove(k);
            }
        }
        self.used.insert(key, self.tick);
        evict
    }

    /// Removes and returns the least recently used statement not used in the current
    /// transaction while the set is at or over capacity (to be closed on the server).
    pub fn evict_one(&mut self) -> Option<Key> {
        self.evict_above(self.capacity - 1)
    }

    /// Removes and returns the least recently used statement not used in the current
    /// transaction while more than `keep` are prepared.
    pub fn evict_above(&mut self, keep: usize) -> Option<Key> {
        if self.used.len() <= keep {
            return None;
        }
        let k = self.used.iter().filter(|(_, &e)| e < self.txn_start).min_by_key(|(_, &e)| e).map(|(k, _)| *k)?;
        self.used.remove(&k);
        Some(k)
    }

    /// Whether more statements are prepared than the capacity (after a transaction that
    /// used more).
    #[inline]
    pub fn over_capacity(&self) -> bool {
        self.used.len() > self.capacity
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records `key` as no longer prepared.
    pub fn remove(&mut self, key: &Key) {
        self.used.remove(key);
    }

    /// Re-records `key` (undo of a skipped Close); it counts as used now.
    pub fn restore(&mut self, key: Key) {
        self.used.insert(key, self.tick);
    }

    /// The server deallocated everything (`DISCARD ALL`, `DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// The server left its transaction: statements used so far become evictable.
    #[inline]
    pub fn end_transaction(&mut self) {
        self.next_batch();
        self.txn_start = self.tick;
    }

    /// The client's next batch starts (scan side).
    #[inline]
    pub fn next_batch(&mut self) {
        self.tick += 1;
    }

    /// A batch (request ending with ReadyForQuery) is done: answered, skipped or abandoned.
    #[inline]
    pub fn batch_done(&mut self) {
        self.completed += 1;
    }

    /// The server answered the last completed batch with ReadyForQuery `I`: a new
    /// transaction starts at the next one.
    #[inline]
    pub fn transaction_ended(&mut self) {
        self.txn_start = self.completed;
    }

    /// Number of statements prepared.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether none is prepared.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// Row descriptions of a connection's statement copies, by key (`exchange::retry::shape_of`).
pub type Shapes = HashMap<Key, u64, BuildHasherDefault<KeyHasher>>;

/// What one server connection carries from one client to the next (`ServerConn::state`):
/// the pgsluice statements prepared on it, the row descriptions of those copies, and whether
/// it must be reset or closed before another client gets it. The exchange updates it while a
/// client holds the connection; the session reads the two flags at release.
#[derive(Debug, Default)]
pub struct ServerState {
    /// pgsluice statements prepared on this connection.
    pub statements: ServerStatements,
    /// Row descriptions of this connection's copies of statements, where seen (a client's
    /// Describe, a retry): a client whose own description differs gets PostgreSQL's `0A000`
    /// instead of rows of a shape it does not expect.
    pub shapes: Shapes,
    /// Bookkeeping may no longer match the server (a client ran SQL `PREPARE`/`DEALLOCATE`,
    /// or `DEALLOCATE ALL` with more pipelined behind it): close the connection at release.
    pub poisoned: bool,
    /// A client pinned this connection by setting session state: it is reset
    /// (`server_reset_query`) before another client gets it.
    pub session_dirty: bool,
}

impl ServerState {
    /// `server_reset_query` ran (after a pinned client): `DISCARD ALL` also dropped every
    /// prepared statement.
    pub fn was_reset(&mut self) {
        self.session_dirty = false;
        self.statements.clear();
        self.shapes.clear();
    }
}

/// Statements that some server of a pool has accepted (`ParseComplete`), so that a client's
/// `Parse` + `Sync` of one of them can be answered without a server (libpq's `PQprepare`,
/// pgbench `-M prepared`): the statement is prepared on a server when first used. Bounded:
/// forgotten wholesale when full (it is only an optimisation). With each, the row
/// description a server last gave for it, when seen (schema changes, `exchange::retry`).
#[derive(Debug, Default)]
pub struct KnownStatements(parking_lot::Mutex<HashMap<Key, u64, BuildHasherDefault<KeyHasher>>>);

impl KnownStatements {
    const MAX: usize = 4096;

    /// Records that a server accepted `key`.
    pub fn insert(&self, key: Key) {
        let mut map = self.0.lock();
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.entry(key).or_insert(0);
    }

    /// Whether a server accepted `key`.
    pub fn contains(&self, key: &Key) -> bool {
        self.0.lock().contains_key(key)
    }

    /// Records the row description (`exchange::retry::shape_of`) a server just gave for `key`.
    pub fn set_shape(&self, key: Key, shape: u64) {
        let mut map = self.0.lock();
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(key, shape);
    }

    /// The row description last seen for `key`, if any.
    pub fn shape(&self, key: &Key) -> Option<u64> {
        self.0.lock().get(key).copied().filter(|&s| s != 0)
    }
}

/// What a `CommandComplete` tag means for prepared statements: `DISCARD ALL` and
/// `DEALLOCATE ALL` drop every statement of the session.
pub fn tag_deallocates_all(tag: &[u8]) -> bool {
    tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL"
}

/// A simple query that is exactly `DEALLOCATE [PREPARE] name` (case-insensitive keywords,
/// optional double quotes, optional trailing `;`): returns the statement name. `ALL` is not
/// matched (it goes to the server, and its `CommandComplete` clears the statements).
pub fn parse_deallocate(sql: &[u8]) -> Option<Vec<u8>> {
    let mut s = trim(sql);
    if !s.first().is_some_and(|c| c.eq_ignore_ascii_case(&b'd')) {
        return None;
    }
    if let Some(stripped) = s.strip_suffix(b";") {
        s = trim(stripped);
    }
    s = keyword(s, b"deallocate")?;
    if let Some(rest) = keyword(s, b"prepare") {
        s = rest;
    }
    let name = if let Some(q) = s.strip_prefix(b"\"") {
        // Quoted identifier: "" is an escaped quote.
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match q.get(i) {
                Some(b'"') if q.get(i + 1) == Some(&b'"') => {
                    out.push(b'"');
                    i += 2;
                }
                Some(b'"') => {
                    if !trim(&q[i + 1..]).is_empty() {
                        return None;
                    }
                    break out;
                }
                Some(&c) => {
                    out.push(c);
                    i += 1;
                }
                None => return None,
            }
        }
    } else {
        if s.is_empty() || !s.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80) {
            return None;
        }
        if s.eq_ignore_ascii_case(b"all") {
            return None;
        }
        // Unquoted identifiers fold to lower case.
        s.to_ascii_lowercase()
    };
    (!name.is_empty()).then_some(name)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

/// Strips `kw` (case-insensitive) plus the whitespace after it; requires a word boundary.
fn keyword<'a>(s: &'a [u8], kw: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    let rest = &s[kw.len()..];
    match rest.first() {
        None => Some(rest),
        Some(c) if c.is_ascii_whitespace() => Some(trim(rest)),
        Some(b'"') => Some(rest),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_statements_exactly() {
        let a = Key::of(b"select 1\0\0\0");
        let b = Key::of(b"select 1\0\0\x01\0\0\0\x17");
        assert_ne!(a, b, "parameter types are part of the identity");
        assert_eq!(a, Key::of(b"select 1\0\0\0"));
        let name = a.server_name();
        assert!(name.starts_with(b"pgsluice_"));
        assert!(name[9..].iter().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn client_statements_undo_only_their_own_insert() {
        let mut c = ClientStatements::default();
        let s1 = Stmt::new(b"select 1\0\0\0");
        let s2 = Stmt::new(b"select 2\0\0\0");
        c.insert(b"a", s1.clone());
        c.remove_if(b"a", &s2);
        assert!(c.get(b"a").is_some());
        c.remove_if(b"a", &s1);
        assert!(c.get(b"a").is_none());
    }

    #[test]
    fn lru_spares_statements_of_the_current_transaction() {
        let mut s = ServerStatements::default();
        s.set_capacity(2);
        let (k1, k2, k3, k4) = (Key([1; 16]), Key([2; 16]), Key([3; 16]), Key([4; 16]));
        assert_eq!(s.insert(k1), None);
        assert_eq!(s.insert(k2), None);
        // All used in the current transaction: over capacity rather than closing one.
        assert_eq!(s.insert(k3), None);
        assert_eq!(s.len(), 3);
        s.end_transaction();
        assert!(s.touch(&k1));
        s.end_transaction();
        // k2 and k3 are older than k1.
        let evicted = s.insert(k4).expect("evicts");
        assert!(evicted == k2 || evicted == k3);
        assert!(s.contains(&k1) && s.contains(&k4) && !s.contains(&evicted));
    }

    #[test]
    fn deallocate_forms() {
        assert_eq!(parse_deallocate(b"DEALLOCATE s1"), Some(b"s1".to_vec()));
        assert_eq!(parse_deallocate(b"  deallocate prepare S1 ; "), Some(b"s1".to_vec()));
        assert_eq!(parse_deallocate(b"DEALLOCATE \"My\"\"S\""), Some(b"My\"S".to_vec()));
        assert_eq!(parse_deallocate(b"DEALLOCATE \"_pg3_0\";"), Some(b"_pg3_0".to_vec()));
        assert_eq!(parse_deallocate(b"DEALLOCATE ALL"), None);
        assert_eq!(parse_deallocate(b"DEALLOCATE a; select 1"), None);
        assert_eq!(parse_deallocate(b"DEALLOCATEx"), None);
        assert_eq!(parse_deallocate(b"DEALLOCATE \"unterminated"), None);
        assert_eq!(parse_deallocate(b"DEALLOCATE"), None);
        assert_eq!(parse_deallocate(b""), None);
        assert_eq!(parse_deallocate(b"select 1"), None);
        assert_eq!(parse_deallocate(b"DEALLOCATE \"a\" b"), None);
    }
}
