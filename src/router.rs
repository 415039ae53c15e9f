//! Read/write routing: which host a request goes to.
//!
//! One [`Router`] value per client owns the routing policy, the read-your-writes bookkeeping
//! and the deferred `BEGIN` of `transaction_routing = "first_statement"`. For each request
//! it classifies the buffered messages ([`crate::sql::classify`]: what a statement may do,
//! whether it opens a transaction, a hint comment) and answers with a [`Decision`]: the
//! primary, or a read. For a read, [`Router::pick`] names the host (least outstanding
//! requests per unit of weight among eligible replicas that have replayed the client's last
//! write, random among equals), or says to wait for replay, fall back to the primary, or
//! fail. The frontend's check-out carries the decision out; the pools know nothing of it.
//!
//! Invariants: routing happens only when a client has no server, i.e. at the start of a
//! transaction (or of a request outside one), so a transaction never moves between servers;
//! a server attached for a read takes one request at a time outside a transaction (the relay
//! holds back the next request until it is routed on its own).

use std::time::Duration;

use std::sync::Arc;

use crate::cluster::{Cluster, Primary, WriteClocks};
use crate::config::{PrimaryReads, ReadYourWrites, ReadYourWritesScope, Route, TransactionRouting};
use crate::exchange::resendable_request;
use crate::params::ClientParams;
use crate::prepared::ClientStatements;
use crate::protocol::{cstr, ftag, Header, HEADER_LEN};
use crate::sql::classify::{Begin, Class, Classifier, Hint};

/// The routing policy of one client, fixed at login.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `route` of the database/user (`auto` classifies).
    pub route: Route,
    /// Whether reads may use the primary.
    pub primary_reads: PrimaryReads,
    /// Plain `BEGIN` routing.
    pub transaction_routing: TransactionRouting,
    /// Read-your-writes mode.
    pub read_your_writes: ReadYourWrites,
    /// `read_your_writes_wait`.
    pub ryw_wait: Duration,
    /// `read_your_writes_scope`.
    pub ryw_scope: ReadYourWritesScope,
}

impl Policy {
    /// Whether requests are classified at all (else everything goes to the primary without
    /// looking, as before routing existed).
    pub fn classifies(&self) -> bool {
        self.route == Route::Auto
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// It writes, may write, or opens a read-write transaction.
    Primary,
    /// It only reads: a replica if one is eligible.
    Read,
}

/// What the request needs, from its class (`None`: no statement text to judge, e.g. a
/// FunctionCall or a Bind of an unknown statement) and the client's
/// `default_transaction_read_only`.
pub fn want(policy: &Policy, class: Option<Class>, client_read_only: bool) -> Want {
    match policy.route {
        Route::Primary => return Want::Primary,
        Route::Replica => return Want::Read,
        Route::Auto => {}
    }
    let Some(class) = class else { return Want::Primary };
    match class.hint {
        Hint::Primary => return Want::Primary,
        Hint::Replica => return Want::Read,
        Hint::None => {}
    }
    if client_read_only {
        // Every transaction of this client is read-only (a write fails on the primary too),
        // so a plain BEGIN opens a read-only one; but what a standby refuses and the primary
        // allows in a read-only transaction (SERIALIZABLE, functions not on the allowlist)
        // stays on the primary.
        return if class.read_only || class.begin == Begin::Plain { Want::Read } else { Want::Primary };
    }
    match class.begin {
        // (`read_only` is false for e.g. SERIALIZABLE, which a hot standby refuses.)
        Begin::ReadOnly if class.read_only => Want::Read,
        Begin::ReadOnly => Want::Primary,
        Begin::ReadWrite => Want::Primary,
        Begin::Plain => match policy.transaction_routing {
            TransactionRouting::Primary => Want::Primary,
            // `BEGIN; SELECT …` in one string: by what follows the BEGIN.
            TransactionRouting::FirstStatement if class.read_only => Want::Read,
            TransactionRouting::FirstStatement => Want::Primary,
        },
        Begin::None if class.read_only => Want::Read,
        Begin::None => Want::Primary,
    }
}

/// Combines the classes of several statements of one request: read-only only if all are;
/// the transaction start and hint of the first that has one.
pub fn combine(acc: Option<Class>, next: Class) -> Class {
    match acc {
        None => next,
        Some(a) => Class {
            read_only: a.read_only && next.read_only,
            begin: if a.begin == Begin::None { next.begin } else { a.begin },
            hint: if a.hint == Hint::None { next.hint } else { a.hint },
        },
    }
}

/// What a read must see (read-your-writes): a primary position to cover, or the time of a
/// write whose position the probes have not measured yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ryw {
    /// Primary WAL position the replica must have replayed (0: none).
    pub lsn: u64,
    /// `Cluster::now_ms` when the client's last write ended, if not yet covered by `lsn`
    /// (0: none).
    pub since: u64,
}

/// The routing decision for one request.
#[derive(Debug)]
pub struct Decision {
    /// What it needs.
    pub want: Want,
    /// It may write (counts for read-your-writes when it runs on the primary).
    pub may_write: bool,
    /// A read the client sent to a replica by hint: its own choice, no read-your-writes wait.
    pub hinted_replica: bool,
    /// Statements are classified for this client (`route = "auto"` over several hosts).
    pub classified: bool,
    /// A `BEGIN` pgsluice answered earlier, to run on the server this request gets.
    pub begin: Option<Box<str>>,
    /// The request is sent again after its server died (see [`Router::take_resend`]): a
    /// bit per host not to send it to. 0 for a first attempt.
    pub exclude: u64,
}

impl Decision {
    /// What a client whose requests are not routed gets: the primary.
    pub const PRIMARY: Decision = Decision {
        want: Want::Primary,
        may_write: true,
        hinted_replica: false,
        classified: false,
        begin: None,
        exclude: 0,
    };
}

/// Where a read goes now ([`Router::pick`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// This host (a replica, or the primary as a read candidate).
    Host(usize),
    /// Only replicas behind the client's last write are eligible: ask for a probe and look
    /// again shortly (until `read_your_writes_wait` runs out).
    WaitForReplay,
    /// No replica will do: the primary (`primary_reads` allows it). `behind`: some
    /// replica would, but none is known to have replayed the writes the read must see.
    Fallback {
        /// Read-your-writes sent it to the primary.
        behind: bool,
    },
    /// No replica will do, and reads may not go to the primary.
    NoReplica,
}

/// Largest buffer a client keeps for its next read's copy between requests.
const KEEP_RESEND_CAPACITY: usize = 1024;

/// One client's routing state; see the module docs.
pub struct Router {
    policy: Policy,
    classifier: Arc<Classifier>,
    /// Read-your-writes: a primary WAL position covering this client's last write (0: none).
    ryw_lsn: u64,
    /// Read-your-writes: when (`Cluster::now_ms`) this client's last write ended, while no
    /// probe that started later has measured the primary yet (0: none pending).
    ryw_since: u64,
    /// The held server is the primary and may have been written to: note the time at release.
    note_write: bool,
    /// `transaction_routing = "first_statement"`: a `BEGIN` answered by pgsluice, to be run
    /// on the server the transaction's first statement is routed to.
    deferred_begin: Option<Box<str>>,
    /// The read the held server is running, kept until it ends in case the server dies
    /// before answering (issue 20); empty when the request may not be sent again.
    resend: bytes::BytesMut,
    /// The host the kept read went to.
    resend_host: usize,
    /// Hosts the next request must avoid: it is a read sent again.
    exclude: u64,
    /// The database's and the user's write clocks, when other clients' reads may need to
    /// see this client's writes (`read_your_writes_scope` other than `client` somewhere in
    /// the database).
    clocks: Option<WriteClocks>,
    /// A write is in flight on the clocks (begun at `attached`, ended at release).
    clock_write: bool,
}

impl Drop for Router {
    fn drop(&mut self) {
        // (A client gone mid-write: the write may have committed.)
        self.end_clock_write();
    }
}

impl Router {
    /// A client's router under `policy`; its writes move `clocks` (see [`Router::clocks`]).
    pub fn new(policy: Policy, classifier: Arc<Classifier>, clocks: Option<WriteClocks>) -> Router {
        Router {
            policy,
            classifier,
            ryw_lsn: 0,
            ryw_since: 0,
            note_write: false,
            deferred_begin: None,
            resend: bytes::BytesMut::new(),
            resend_host: 0,
            exclude: 0,
            clocks,
            clock_write: false,
        }
    }

    /// The write clocks this client's writes move.
    pub fn clocks(&self) -> Option<&WriteClocks> {
        self.clocks.as_ref()
    }

    /// Ends the write in flight on the clocks, now.
    fn end_clock_write(&mut self) {
        if std::mem::take(&mut self.clock_write) {
            if let Some(c) = &self.clocks {
                let now = c.now_ms();
                c.database.end(now);
                c.user.end(now);
            }
        }
    }

    /// The client's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether a `BEGIN` answered by pgsluice waits for the next request (the client
    /// believes it is in a transaction).
    pub fn in_deferred_begin(&self) -> bool {
        self.deferred_begin.is_some()
    }

    /// Decides where the request at the start of `buf` goes. Takes the deferred `BEGIN`
    /// (if the request cannot be served, the client gets an error and `Z I`, and the
    /// deferred transaction is gone with it).
    pub fn decide(&mut self, buf: &[u8], stmts: &ClientStatements, params: &ClientParams, max_body: usize) -> Decision {
        let begin = self.deferred_begin.take();
        self.note_write = false;
        let classifies = self.policy.classifies();
        // A client routed to the primary is judged only to know whether it may have written
        // (its writes hold back other clients' reads: `read_your_writes_scope`).
        let judges = classifies || (self.policy.route == Route::Primary && self.clocks.is_some());
        // The keyword scan assumes standard_conforming_strings: with it off, a backslash in a
        // literal could hide a write from it, so nothing is classified.
        let scs_off = judges && params.get("standard_conforming_strings").is_some_and(|v| v == "off");
        let class = if judges && !scs_off { classify_request(&self.classifier, buf, stmts, max_body) } else { None };
        let want = if classifies && !scs_off {
            let read_only = params.get("default_transaction_read_only").is_some_and(|v| v == "on");
            want(&self.policy, class, read_only)
        } else if classifies {
            Want::Primary
        } else {
            want(&self.policy, None, false)
        };
        Decision {
            want,
            // A read the client sent to the primary (hint) writes nothing.
            may_write: class.is_none_or(|c| !c.read_only),
            hinted_replica: class.is_some_and(|c| c.hint == Hint::Replica),
            classified: classifies,
            begin,
            exclude: std::mem::take(&mut self.exclude),
        }
    }

    /// What a read that arrived at `arrived` (a [`Cluster::now_ms`]; `None`: now, read only
    /// if a shared scope needs it) must see: the client's last write and, by
    /// `read_your_writes_scope`, its scope's, unless read-your-writes is off or the client
    /// chose a replica itself. (Writes released after `arrived` count as made at `arrived`:
    /// the target does not move while the read waits.)
    pub fn ryw(&mut self, d: &Decision, cluster: &Cluster, arrived: Option<u64>) -> Ryw {
        if self.policy.read_your_writes != ReadYourWrites::Lsn || d.hinted_replica {
            return Ryw::default();
        }
        self.resolve_ryw(cluster);
        let own = Ryw { lsn: self.ryw_lsn, since: self.ryw_since };
        let clock = match (&self.clocks, self.policy.ryw_scope) {
            // (A client routed to replicas chose them, like a hint: it never writes there,
            // and other clients' writes do not hold it back either.)
            _ if self.policy.route == Route::Replica => return own,
            (None, _) | (_, ReadYourWritesScope::Client) => return own,
            (Some(c), ReadYourWritesScope::User) => &c.user,
            (Some(c), ReadYourWritesScope::Database) => &c.database,
        };
        let arrived = arrived.unwrap_or_else(|| cluster.now_ms());
        let shared = clock.requirement(arrived).min(arrived);
        if shared == 0 {
            return own;
        }
        // The scope's last write: a position once a later probe measured the primary.
        match clock.resolve(shared, |since| cluster.primary_lsn_after(since)) {
            Some(lsn) => Ryw { lsn: own.lsn.max(lsn), since: own.since },
            None => Ryw { lsn: own.lsn, since: own.since.max(shared) },
        }
    }

    /// Picks the host for a read (see [`Pick`]). `load(i)`: connections in use at host `i`;
    /// `exclude`: a bit per host that failed for this request; `waiting`: the read may still
    /// wait for a replica to replay the client's last write.
    pub fn pick(&self, cluster: &Cluster, load: impl Fn(usize) -> u32, ryw: Ryw, exclude: u64, waiting: bool) -> Pick {
        let p = &self.policy;
        let with_primary = p.primary_reads == PrimaryReads::Always && p.route != Route::Replica;
        // A write not yet covered by a primary measurement: no replica can prove it has it
        // (the caller resolves it again with [`Router::ryw`] before it looks again).
        let min_lsn = if ryw.since != 0 { u64::MAX } else { ryw.lsn };
        if let Some(i) = pick_read(cluster, &load, min_lsn, with_primary, exclude) {
            return Pick::Host(i);
        }
        // None eligible. Behind the client's last write only? Then maybe wait. (A pending
        // write resolves with the next probe of the primary, which the caller asks for.)
        if min_lsn > 0
            && (min_lsn != u64::MAX || ryw.since != 0)
            && waiting
            && pick_read(cluster, &load, 0, false, exclude).is_some()
        {
            return Pick::WaitForReplay;
        }
        if p.route == Route::Replica || p.primary_reads == PrimaryReads::Never {
            Pick::NoReplica
        } else {
            let behind = min_lsn > 0 && pick_read(cluster, &load, 0, false, exclude).is_some();
            Pick::Fallback { behind }
        }
    }

    /// A server of host `host` was attached for `d`, the request at the start of `buf`;
    /// `on_primary`: it is the current primary. Notes whether the client may write there
    /// (read-your-writes, at release), and keeps a copy of a read that may be sent again
    /// should the server die before answering: one classified read-only, outside a
    /// transaction, not itself sent again already, that [`resendable_request`] accepts.
    pub fn attached(&mut self, d: &Decision, on_primary: bool, host: usize, buf: &[u8], max_body: usize) {
        self.note_write = self.policy.read_your_writes == ReadYourWrites::Lsn
            && on_primary
            && ((d.want == Want::Primary && d.may_write) || d.begin.is_some());
        if self.note_write && !self.clock_write {
            if let Some(c) = &self.clocks {
                c.database.begin();
                c.user.begin();
                self.clock_write = true;
            }
        }
        self.resend.clear();
        if d.want == Want::Read && !d.may_write && d.begin.is_none() && d.exclude == 0 {
            if let Some(end) = resendable_request(buf, max_body) {
                self.resend.extend_from_slice(&buf[..end]);
                self.resend_host = host;
            }
        }
    }

    /// The server of the kept read died before a byte of its answer reached the client:
    /// the request to put back in front of the client's buffer, once. Its next routing
    /// avoids the host that died ([`Decision::exclude`]).
    pub fn take_resend(&mut self) -> Option<bytes::BytesMut> {
        if self.resend.is_empty() {
            return None;
        }
        self.exclude = 1 << self.resend_host.min(63);
        Some(self.resend.split())
    }

    /// The server is released (or lost): the client's write is done, whatever happens to
    /// the connection next, so its reads need a primary position measured from now on.
    pub fn released(&mut self, cluster: &Cluster) {
        if std::mem::take(&mut self.note_write) {
            self.ryw_since = cluster.now_ms();
        }
        self.end_clock_write();
        self.forget_resend();
    }

    /// The kept read is answered (or lost): dropped, and its buffer too if large (a small
    /// one is reused by the next read; an idle client keeps no more than that).
    fn forget_resend(&mut self) {
        if self.resend.capacity() > KEEP_RESEND_CAPACITY {
            self.resend = bytes::BytesMut::new();
        } else {
            self.resend.clear();
        }
    }

    /// The client left: nothing of its writes matters any more to itself; to the other
    /// clients of its scope, a write in flight may have committed.
    pub fn forget_write(&mut self) {
        self.note_write = false;
        self.end_clock_write();
        self.forget_resend();
    }

    /// Turns a pending write time into a primary position once a probe that started later
    /// has measured the primary.
    pub fn resolve_ryw(&mut self, cluster: &Cluster) {
        if self.ryw_since != 0 {
            if let Some(lsn) = cluster.primary_lsn_after(self.ryw_since) {
                self.ryw_lsn = lsn;
                self.ryw_since = 0;
            }
        }
    }

    /// `transaction_routing = "first_statement"`: if `buf` starts with a lone simple-query
    /// `BEGIN` (no access mode, nothing else in the string), keeps its text for the next
    /// request's server and returns its length: the caller answers it as PostgreSQL would
    /// (`BEGIN`, ReadyForQuery `T`) without a server.
    pub fn defer_begin(&mut self, buf: &[u8], max_body: usize) -> Option<usize> {
        if self.deferred_begin.is_some()
            || self.policy.transaction_routing != TransactionRouting::FirstStatement
            || !self.policy.classifies()
        {
            return None;
        }
        let hdr = Header::parse(buf, max_body).ok()??;
        let end = hdr.frame_len();
        if hdr.tag != ftag::QUERY || buf.len() < end {
            return None;
        }
        let text = cstr(&buf[HEADER_LEN..end]).and_then(|(q, _)| std::str::from_utf8(q).ok())?;
        let single = !text.trim_end().trim_end_matches(';').contains(';');
        if !single || self.classifier.classify(text).begin != Begin::Plain {
            return None;
        }
        self.deferred_begin = Some(text.into());
        Some(end)
    }
}

/// The class of the first request in the client buffer: its Query, or the statements its
/// Parse and Bind messages name; a request that names no statement at all (e.g. a `Close`
/// and a `Sync`, as tokio-postgres sends after a one-shot query) is harmless and counts as
/// read-only. `None` when it cannot be judged (a FunctionCall, a Bind of an unnamed or
/// unknown statement, an extended batch not ended by a Sync in the buffer): the primary.
fn classify_request(classifier: &Classifier, buf: &[u8], stmts: &ClientStatements, max_body: usize) -> Option<Class> {
    let mut off = 0;
    let mut executes = false;
    let mut acc: Option<Class> = None;
    while let Ok(Some(hdr)) = Header::parse(&buf[off..], max_body) {
        let end = off + hdr.frame_len();
        let body = buf.get(off + HEADER_LEN..end)?;
        match hdr.tag {
            ftag::QUERY => {
                let text = cstr(body).and_then(|(q, _)| std::str::from_utf8(q).ok())?;
                return Some(combine(acc, classifier.classify(text)));
            }
            ftag::PARSE => {
                let (_, rest) = cstr(body)?;
                let text = cstr(rest).and_then(|(q, _)| std::str::from_utf8(q).ok())?;
                acc = Some(combine(acc, classifier.classify(text)));
            }
            ftag::BIND => {
                let (_, rest) = cstr(body)?;
                let (name, _) = cstr(rest)?;
                if !name.is_empty() {
                    match stmts.get(name) {
                        Some(stmt) => {
                            let class = *stmt.class.get_or_init(|| classifier.classify(stmt.query()));
                            acc = Some(combine(acc, class));
                        }
                        // Defined by a Parse of this request (already judged).
                        None if acc.is_some() => {}
                        None => return None,
                    }
                } else if acc.is_none() {
                    // The unnamed statement was parsed by an earlier request.
                    return None;
                }
            }
            // Without an Execute the batch only prepares or describes: harmless anywhere.
            ftag::SYNC if !executes => {
                let hint = acc.map(|c| c.hint).unwrap_or_default();
                return Some(Class { read_only: true, hint, ..Class::default() });
            }
            ftag::SYNC => return Some(acc.unwrap_or(Class { read_only: true, ..Class::default() })),
            ftag::EXECUTE => executes = true,
            ftag::FUNCTION_CALL => return None,
            _ => {}
        }
        off = end;
    }
    // No Sync (yet): a batch ended by Flush, or a prefix of a large one. What follows is
    // unknown and will flow to the same server: the primary.
    None
}

/// Picks a host for a read among the database's eligible replicas (and the primary when
/// `with_primary`): up, within the lag bounds, breaker not open, weight > 0, not in
/// `exclude` (a bit per host index), and, when `min_lsn` > 0, known to have replayed it.
/// Lowest `load(i) / weight` wins; ties are broken at random.
pub fn pick_read(
    cluster: &Cluster,
    load: &impl Fn(usize) -> u32,
    min_lsn: u64,
    with_primary: bool,
    exclude: u64,
) -> Option<usize> {
    let primary = match cluster.primary() {
        Primary::Host(p) => Some(p),
        _ => None,
    };
    let mut best: Option<(usize, u64, u64)> = None; // (host, load, weight)
    let mut ties = 0u32;
    for h in cluster.hosts() {
        let i = h.index;
        if i < 64 && exclude & (1 << i) != 0 || h.weight == 0 {
            continue;
        }
        let is_primary = primary == Some(i);
        if is_primary {
            if !with_primary {
                continue;
            }
        } else if !h.serves_read(min_lsn) {
            continue;
        }
        if h.breaker.is_open() {
            continue;
        }
        let (l, w) = (u64::from(load(i)), u64::from(h.weight));
        match best {
            // l / w < bl / bw
            Some((_, bl, bw)) if l * bw > bl * w => {}
            Some((_, bl, bw)) if l * bw == bl * w => {
                ties += 1;
                if rand::random_range(0..=ties) == 0 {
                    best = Some((i, l, w));
                }
            }
            _ => {
                best = Some((i, l, w));
                ties = 0;
            }
        }
    }
    best.map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(route: Route) -> Policy {
        Policy {
            route,
            primary_reads: PrimaryReads::Fallback,
            transaction_routing: TransactionRouting::Primary,
            read_your_writes: ReadYourWrites::Lsn,
            ryw_wait: Duration::ZERO,
            ryw_scope: ReadYourWritesScope::Client,
        }
    }

    fn class(read_only: bool, begin: Begin, hint: Hint) -> Option<Class> {
        Some(Class { read_only, begin, hint })
    }

    #[test]
    fn wants() {
        let auto = policy(Route::Auto);
        assert_eq!(want(&auto, class(true, Begin::None, Hint::None), false), Want::Read);
        assert_eq!(want(&auto, class(false, Begin::None, Hint::None), false), Want::Primary);
        assert_eq!(want(&auto, None, false), Want::Primary, "nothing to judge: primary");
        assert_eq!(want(&auto, class(true, Begin::ReadOnly, Hint::None), false), Want::Read);
        assert_eq!(want(&auto, class(false, Begin::ReadOnly, Hint::None), false), Want::Primary, "serializable");
        assert_eq!(want(&auto, class(true, Begin::Plain, Hint::None), false), Want::Primary);
        assert_eq!(want(&auto, class(false, Begin::ReadWrite, Hint::None), false), Want::Primary);
        assert_eq!(want(&auto, class(false, Begin::Plain, Hint::None), true), Want::Read, "default read only");
        assert_eq!(want(&auto, class(false, Begin::ReadOnly, Hint::None), true), Want::Primary, "serializable");
        assert_eq!(want(&auto, class(false, Begin::None, Hint::None), true), Want::Primary);
        assert_eq!(want(&auto, class(true, Begin::None, Hint::Primary), false), Want::Primary);
        assert_eq!(want(&auto, class(false, Begin::None, Hint::Replica), false), Want::Read);
        assert_eq!(want(&policy(Route::Primary), class(true, Begin::None, Hint::Replica), false), Want::Primary);
        assert_eq!(want(&policy(Route::Replica), class(false, Begin::None, Hint::None), false), Want::Read);
    }

    #[test]
    fn combining_statements() {
        let r = Class { read_only: true, ..Class::default() };
        let w = Class { read_only: false, ..Class::default() };
        let b = Class { read_only: true, begin: Begin::ReadOnly, hint: Hint::None };
        assert_eq!(combine(None, r), r);
        assert!(!combine(Some(r), w).read_only);
        assert_eq!(combine(Some(b), r).begin, Begin::ReadOnly);
        assert_eq!(combine(Some(r), b).begin, Begin::ReadOnly);
    }
}

#[cfg(test)]
mod resend_tests {
    use super::*;
    use crate::sql::classify::ClassifierSettings;

    fn router() -> Router {
        let policy = Policy {
            route: Route::Auto,
            primary_reads: PrimaryReads::Fallback,
            transaction_routing: TransactionRouting::Primary,
            read_your_writes: ReadYourWrites::Off,
            ryw_wait: Duration::ZERO,
            ryw_scope: ReadYourWritesScope::Client,
        };
        let settings = ClassifierSettings { read_only_functions: Vec::new(), max_parse_length: 4096, cache_size: 0 };
        Router::new(policy, Arc::new(Classifier::new(settings)), None)
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut v = vec![b'Q'];
        v.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        v.extend_from_slice(sql.as_bytes());
        v.push(0);
        v
    }

    fn decide(r: &mut Router, buf: &[u8]) -> Decision {
        r.decide(buf, &ClientStatements::default(), &ClientParams::default(), 1 << 20)
    }

    #[test]
    fn a_read_is_kept_and_sent_again_once_avoiding_its_host() {
        let mut r = router();
        let mut buf = query("select 1");
        buf.extend_from_slice(&query("select 2"));
        let d = decide(&mut r, &buf);
        assert_eq!((d.want, d.may_write, d.exclude), (Want::Read, false, 0));
        r.attached(&d, false, 2, &buf, 1 << 20);
        // Only the first request is kept.
        assert_eq!(r.take_resend().as_deref(), Some(&query("select 1")[..]));
        let again = decide(&mut r, &query("select 1"));
        assert_eq!(again.exclude, 1 << 2, "the next routing avoids host 2");
        // The request sent again is not kept again: a second death is an error.
        r.attached(&again, false, 1, &query("select 1"), 1 << 20);
        assert_eq!(r.take_resend(), None);
        assert_eq!(decide(&mut r, &query("select 1")).exclude, 0, "only the next request avoids the host");
    }

    #[test]
    fn writes_transactions_and_answered_reads_are_not_kept() {
        let mut r = router();
        // (A request that opens a read-only transaction is kept: until a byte of its answer,
        // ReadyForQuery `T` included, reaches the client, no transaction exists for it.)
        for sql in ["insert into t values (1)", "select nextval('s')", "begin; select 1"] {
            let buf = query(sql);
            let d = decide(&mut r, &buf);
            r.attached(&d, true, 0, &buf, 1 << 20);
            assert_eq!(r.take_resend(), None, "{sql}");
        }
        let buf = query("select 1");
        let d = decide(&mut r, &buf);
        r.attached(&d, false, 1, &buf, 1 << 20);
        r.forget_resend();
        assert_eq!(r.take_resend(), None, "released: nothing to send again");
        // A large read's buffer is not kept between requests.
        let big = query(&format!("select '{}'", "x".repeat(4000)));
        let d = decide(&mut r, &big);
        r.attached(&d, false, 1, &big, 1 << 20);
        assert!(r.resend.capacity() >= big.len());
        r.forget_resend();
        assert!(r.resend.capacity() <= KEEP_RESEND_CAPACITY);
    }
}
