//! An [`Exchange`] with the outside state it updates, driven from byte strings without
//! sockets: what the relay does, minus the I/O. The unit tests, the fuzz target
//! ([`fuzz_logic`]) and the micro-benchmarks (`benches/codec.rs`) drive it.

use bytes::BytesMut;

use super::{Env, Exchange, Rules};
use crate::params::{ClientParams, ParamSet};
use crate::prepared::{ClientStatements, ServerState};
use crate::protocol::{self, status};

/// A client, the server connection it holds and their exchange.
pub struct Sim {
    /// Client read buffer.
    pub cbuf: BytesMut,
    /// Server read buffer.
    pub sbuf: BytesMut,
    /// The exchange.
    pub x: Exchange,
    /// The server connection's lasting state.
    pub conn: ServerState,
    /// The client's named prepared statements.
    pub stmts: ClientStatements,
    /// The client's tracked parameters.
    pub params: ClientParams,
    /// The server's ParameterStatus list.
    pub server_params: Vec<(String, String)>,
    /// The parameter set the server was last brought to.
    pub synced: Option<std::sync::Arc<ParamSet>>,
    /// The client's rules.
    pub rules: Rules,
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new(Rules {
            track: true,
            statement_mode: false,
            max_body: 1 << 20,
            session: None,
            statements: Default::default(),
        })
    }
}

impl Sim {
    /// A fresh attachment under `rules`.
    pub fn new(rules: Rules) -> Sim {
        let mut sim = Sim {
            cbuf: BytesMut::new(),
            sbuf: BytesMut::new(),
            x: Exchange::default(),
            conn: ServerState::default(),
            stmts: ClientStatements::default(),
            params: ClientParams::default(),
            server_params: Vec::new(),
            synced: None,
            rules,
        };
        sim.attach();
        sim
    }

    /// Starts a new attachment on the same connection (the client's next transaction).
    pub fn attach(&mut self) {
        self.x.attach(&mut self.conn, status::IDLE, false, 200);
    }

    fn parts(&mut self) -> (&mut Exchange, &mut BytesMut, &mut BytesMut, Env<'_>) {
        let env = Env {
            conn: &mut self.conn,
            server_params: &mut self.server_params,
            synced: &mut self.synced,
            params: &mut self.params,
            stmts: &mut self.stmts,
            rules: &self.rules,
            known: None,
            stats: None,
            client: None,
        };
        (&mut self.x, &mut self.cbuf, &mut self.sbuf, env)
    }

    /// The client sends `bytes`.
    pub fn client(&mut self, bytes: &[u8]) -> Result<(), protocol::Error> {
        self.cbuf.extend_from_slice(bytes);
        let (x, cbuf, sbuf, mut env) = self.parts();
        x.on_client(cbuf, sbuf, &mut env).map(drop)
    }

    /// The server sends `bytes`.
    pub fn server(&mut self, bytes: &[u8]) -> Result<(), protocol::Error> {
        self.sbuf.extend_from_slice(bytes);
        let (x, _, sbuf, mut env) = self.parts();
        x.on_server(sbuf, &mut env)
    }

    /// Everything that would be written to the server now.
    pub fn sent(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        self.drain(true, |b| v.extend_from_slice(b));
        v
    }

    /// Everything that would be written to the client now.
    pub fn received(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        self.drain(false, |b| v.extend_from_slice(b));
        v
    }

    /// Writes everything due toward the server (`to_server`) or the client into `sink`;
    /// returns the byte count.
    pub fn drain(&mut self, to_server: bool, mut sink: impl FnMut(&[u8])) -> usize {
        let mut total = 0;
        loop {
            let out = if to_server { self.x.server_bound(&self.cbuf) } else { self.x.client_bound(&self.sbuf) };
            let n = out.len();
            if n == 0 {
                return total;
            }
            sink(out);
            total += n;
            if to_server {
                self.x.sent_to_server(&mut self.cbuf, n);
            } else {
                self.x.sent_to_client(&mut self.sbuf, n);
            }
        }
    }

    /// Whether the server could go back to its pool now.
    pub fn releasable(&self) -> bool {
        self.x.is_clean(&self.sbuf)
    }
}

/// The fuzz target's body (`fuzz/fuzz_targets/exchange.rs`): both scanners on arbitrary
/// bytes. The first byte picks the rules (bit 0: prepared statements tracked, bit 1:
/// statement mode); then chunks `[header][bytes]`, where the header's high bit says which
/// side sends and its low 7 bits (+1) the chunk length. After each chunk everything due
/// is written out; an invalid message ends the run, as it ends the session. It must never
/// panic, and a clean exchange must owe nothing.
pub fn fuzz_logic(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let rules = Rules {
        track: mode & 1 != 0,
        statement_mode: mode & 2 != 0,
        max_body: 1 << 16,
        session: None,
        statements: crate::prepared::Limits { count: 64, bytes: 1 << 20 },
    };
    let mut sim = Sim::new(rules);
    while let Some((&head, tail)) = rest.split_first() {
        let n = ((head & 0x7f) as usize + 1).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        let r = if head & 0x80 == 0 { sim.client(chunk) } else { sim.server(chunk) };
        if r.is_err() {
            return;
        }
        sim.drain(true, |_| {});
        sim.drain(false, |_| {});
        if sim.releasable() {
            assert_eq!(sim.x.pending(), 0, "a clean exchange owes no answer");
        }
    }
}
