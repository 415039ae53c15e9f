//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, sans-IO, both sides.
//!
//! * [`ScramServer`] authenticates a client against a stored [`Verifier`]. A successful login
//!   yields [`ClientKeys`], which is enough to log in to a PostgreSQL server holding the same
//!   verifier (PgBouncer-style SCRAM passthrough) without knowing the password.
//! * [`ScramClient`] logs pgsluice in to PostgreSQL with a password or with passthrough keys.
//!
//! Invariants:
//! * Channel binding is never offered: gs2 flags `n` and `y` are accepted, `p=` is refused. If
//!   pgsluice ever advertises `SCRAM-SHA-256-PLUS`, the `y` flag must be refused (downgrade attack).
//! * The SCRAM username is ignored (PostgreSQL uses the startup packet's user) and we send `n=`.
//! * Messages larger than `MAX_MESSAGE_LEN` are refused before parsing (1 KiB); no input can panic.
//! * A login against a stored verifier costs two HMACs and one SHA-256, never PBKDF2.
//! * Passwords are used as their raw UTF-8 bytes, without SASLprep. This matches PostgreSQL for
//!   every password that SASLprep leaves unchanged (all ASCII passwords, NFKC-normalized text).
//! * Any error ends the exchange; every later call returns [`Error::OutOfOrder`].

use std::{fmt, mem};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Error, Secret};

/// The only SASL mechanism we implement.
const MECHANISM: &str = "SCRAM-SHA-256";
/// Largest SASL payload we parse; real ones are well under 200 bytes.
const MAX_MESSAGE_LEN: usize = 1024;
/// PBKDF2 iterations for verifiers derived from cleartext passwords (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// A `pg_authid`-style SCRAM-SHA-256 verifier: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone)]
pub struct Verifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// PBKDF2 salt (raw bytes, not base64).
    pub salt: Vec<u8>,
    /// `SHA256(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

/// Keys recovered from a client's successful login, enough to log in to a Postgres server that has
/// the same verifier (PgBouncer-style SCRAM passthrough).
#[derive(Clone)]
pub struct ClientKeys {
    /// `HMAC(SaltedPassword, "Client Key")`, recovered from the client's proof.
    pub client_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`, from the verifier.
    pub server_key: [u8; 32],
    /// Salt of the verifier the keys belong to; the server's must be equal.
    pub salt: Vec<u8>,
    /// Iteration count of the verifier the keys belong to; the server's must be equal.
    pub iterations: u32,
}

/// Derive a verifier for a cleartext password with a fresh random 16-byte salt and 4096
/// iterations. This runs PBKDF2 (~1-2 ms): call it once at config load and cache the result
/// in a [`Secret::Scram`] rather than building a [`ScramServer`] from [`Secret::Plain`] per login.
pub fn verifier_for_plain(password: &str) -> Verifier {
    Verifier::from_password(password, &rand::random::<[u8; 16]>(), DEFAULT_ITERATIONS)
}

// === impl Verifier ===

impl Verifier {
    /// Parse `SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(Error::BadVerifier("missing SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest.split_once('$').ok_or(Error::BadVerifier("missing keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(Error::BadVerifier("missing salt"))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(Error::BadVerifier("missing ServerKey"))?;
        Ok(Verifier {
            iterations: parse_iterations(iterations).ok_or(Error::BadVerifier("invalid iteration count"))?,
            salt: decode_salt(salt).ok_or(Error::BadVerifier("invalid salt"))?,
            stored_key: decode_key(stored_key).ok_or(Error::BadVerifier("invalid StoredKey"))?,
            server_key: decode_key(server_key).ok_or(Error::BadVerifier("invalid ServerKey"))?,
        })
    }

    /// Derive a verifier from a password (runs PBKDF2 with `iterations` rounds).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let (client_key, server_key) = derive_keys(password, salt, iterations);
        Verifier { iterations, salt: salt.to_vec(), stored_key: sha256(&client_key), server_key }
    }

    /// The `pg_authid` text form, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn to_string_form(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").field("iterations", &self.iterations).finish_non_exhaustive()
    }
}

impl fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKeys(<redacted>)")
    }
}

/// Server side: pgsluice authenticating a client.
pub struct ScramServer {
    verifier: Verifier,
    state: ServerState,
    /// `tls-server-end-point` data of pgsluice's certificate on this connection (TLS only):
    /// `SCRAM-SHA-256-PLUS` is then offered and accepted.
    binding: Option<Vec<u8>>,
}

enum ServerState {
    Initial,
    SentFirst {
        /// What `c=` must decode to: the gs2 header the client sent, plus the channel-binding
        /// data when it bound the exchange.
        cbind: Vec<u8>,
        client_first_bare: String,
        server_first: String,
        /// Client nonce followed by server nonce.
        nonce: String,
    },
    Done,
}

// === impl ScramServer ===

impl ScramServer {
    /// From a `Secret::Plain` (derives a verifier with a random 16-byte salt and 4096 iterations,
    /// i.e. runs PBKDF2 on every call: prefer caching [`verifier_for_plain`] and using
    /// [`ScramServer::from_verifier`]) or `Secret::Scram`. Returns `None` for `Secret::Md5`, from
    /// which SCRAM is impossible. Keys recovered from a `Plain`-derived verifier cannot be used for
    /// passthrough (the salt is ours, not the server's).
    pub fn new(secret: &Secret) -> Option<Self> {
        match secret {
            Secret::Plain(password) => Some(Self::from_verifier(verifier_for_plain(password))),
            Secret::Scram(verifier) => Some(Self::from_verifier(verifier.clone())),
            Secret::Md5(_) => None,
        }
    }

    /// Authenticate against a stored verifier; no PBKDF2 is run.
    pub fn from_verifier(v: Verifier) -> Self {
        ScramServer { verifier: v, state: ServerState::Initial, binding: None }
    }

    /// Accepts `SCRAM-SHA-256-PLUS` bound to `end_point` (the hash of the certificate pgsluice
    /// presented on this TLS connection), and refuses a client that says it could bind but
    /// thinks the server cannot (`y`): the PLUS offer was stripped on the way.
    pub fn with_channel_binding(mut self, end_point: Option<Vec<u8>>) -> Self {
        self.binding = end_point;
        self
    }

    /// The mechanisms to offer (AuthenticationSASL).
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.binding.is_some() {
            &["SCRAM-SHA-256-PLUS", MECHANISM]
        } else {
            &[MECHANISM]
        }
    }

    /// `mechanism` is the SASLInitialResponse mechanism name, `data` its payload. Returns the
    /// server-first-message bytes (payload of AuthenticationSASLContinue).
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, Error> {
        let server_nonce = STANDARD.encode(rand::random::<[u8; 18]>());
        self.client_first_with_nonce(mechanism, data, &server_nonce)
    }

    pub(super) fn client_first_with_nonce(
        &mut self,
        mechanism: &str,
        data: &[u8],
        server_nonce: &str,
    ) -> Result<Vec<u8>, Error> {
        if !matches!(mem::replace(&mut self.state, ServerState::Done), ServerState::Initial) {
            return Err(Error::OutOfOrder);
        }
        let plus = match mechanism {
            MECHANISM => false,
            "SCRAM-SHA-256-PLUS" if self.binding.is_some() => true,
            "SCRAM-SHA-256-PLUS" => return Err(Error::ChannelBindingNotSupported),
            _ => return Err(Error::UnsupportedMechanism),
        };
        let msg = message_str(data)?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = msg.split_once(',').ok_or(Error::MalformedMessage("missing gs2 header"))?;
        let cbind = match (flag, plus, &self.binding) {
            ("n", false, _) => b"n,,".to_vec(),
            // The client could bind and believes the server cannot: it was offered PLUS, so
            // something in between removed it.
            ("y", false, Some(_)) => return Err(Error::MalformedMessage("channel binding downgrade detected")),
            ("y", false, None) => b"y,,".to_vec(),
            ("p=tls-server-end-point", true, Some(data)) => [b"p=tls-server-end-point,,".as_slice(), data].concat(),
            (f, _, None) if f.starts_with("p=") => return Err(Error::ChannelBindingNotSupported),
            (f, false, Some(_)) if f.starts_with("p=") => {
                return Err(Error::MalformedMessage("channel binding requested without SCRAM-SHA-256-PLUS"))
            }
            (f, _, _) if f.starts_with("p=") => return Err(Error::ChannelBindingNotSupported),
            (_, true, _) => return Err(Error::MalformedMessage("SCRAM-SHA-256-PLUS without channel binding")),
            _ => return Err(Error::MalformedMessage("invalid channel-binding flag")),
        };
        let (authzid, bare) = rest.split_once(',').ok_or(Error::MalformedMessage("missing gs2 header"))?;
        if !authzid.is_empty() {
            return Err(Error::MalformedMessage("authorization identity not supported"));
        }
        let mut attrs = bare.split(',');
        let user = attrs.next();
        if user.is_some_and(|u| u.starts_with("m=")) {
            return Err(Error::MalformedMessage("mandatory extension not supported"));
        }
        attr(user, "n=", "missing username")?; // value ignored, as PostgreSQL does
        let client_nonce = attr(attrs.next(), "r=", "missing nonce")?;
        check_nonce(client_nonce)?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first =
            format!("r={nonce},s={},i={}", STANDARD.encode(&self.verifier.salt), self.verifier.iterations);
        let out = server_first.clone().into_bytes();
        self.state = ServerState::SentFirst { cbind, client_first_bare: bare.to_owned(), server_first, nonce };
        Ok(out)
    }

    /// `data` = client-final-message. On success returns the server-final-message bytes
    /// (`v=...`, payload of AuthenticationSASLFinal) and the recovered [`ClientKeys`].
    pub fn client_final(&mut self, data: &[u8]) -> Result<(Vec<u8>, ClientKeys), Error> {
        let ServerState::SentFirst { cbind: expected, client_first_bare, server_first, nonce } =
            mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(Error::OutOfOrder);
        };
        let msg = message_str(data)?;
        // The proof is always the last attribute; base64 has no ',' so rsplit is exact.
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(Error::MalformedMessage("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attr(attrs.next(), "c=", "missing channel binding")?;
        if STANDARD.decode(cbind).ok().as_deref() != Some(expected.as_slice()) {
            return Err(Error::MalformedMessage("channel-binding data mismatch"));
        }
        if attr(attrs.next(), "r=", "missing nonce")? != nonce {
            return Err(Error::NonceMismatch);
        }
        let proof = decode_key(proof).ok_or(Error::MalformedMessage("invalid proof"))?;
        let auth = auth_message(&client_first_bare, &server_first, without_proof);
        let v = &self.verifier;
        let client_key = xor(proof, hmac(&v.stored_key, &auth));
        if !bool::from(sha256(&client_key).ct_eq(&v.stored_key)) {
            return Err(Error::InvalidProof);
        }
        let server_final = format!("v={}", STANDARD.encode(hmac(&v.server_key, &auth)));
        let keys = ClientKeys { client_key, server_key: v.server_key, salt: v.salt.clone(), iterations: v.iterations };
        Ok((server_final.into_bytes(), keys))
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer").finish_non_exhaustive()
    }
}

/// What pgsluice uses to answer a server's SCRAM challenge.
#[derive(Clone)]
pub enum ClientCredential {
    /// The cleartext password (PBKDF2 runs once per login).
    Password(String),
    /// Passthrough keys recovered by [`ScramServer::client_final`].
    Keys(ClientKeys),
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientCredential::Password(_) => "ClientCredential::Password(<redacted>)",
            ClientCredential::Keys(_) => "ClientCredential::Keys(<redacted>)",
        })
    }
}

/// Most PBKDF2 iterations pgsluice computes for a server (PostgreSQL's default is 4096).
pub const MAX_SERVER_ITERATIONS: u32 = 1_000_000;

/// The channel binding of a client exchange (RFC 5802 `gs2-cbind-flag`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    /// `n`: no TLS, nothing to bind.
    #[default]
    None,
    /// `y`: pgsluice could bind, but the server did not offer `SCRAM-SHA-256-PLUS` (a server
    /// that did offer it will see a downgrade and refuse).
    Unused,
    /// `p=tls-server-end-point`: bound to the server certificate's hash.
    TlsServerEndPoint(Vec<u8>),
}

impl ChannelBinding {
    fn gs2_header(&self) -> &'static str {
        match self {
            ChannelBinding::None => "n,,",
            ChannelBinding::Unused => "y,,",
            ChannelBinding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }
}

/// Client side: pgsluice logging in to Postgres.
pub struct ScramClient {
    cred: ClientCredential,
    client_first_bare: String,
    nonce: String,
    state: ClientState,
    binding: ChannelBinding,
}

enum ClientState {
    Initial,
    SentFirst,
    SentFinal { server_signature: [u8; 32] },
    Done,
}

// === impl ScramClient ===

impl ScramClient {
    /// A client with a fresh random nonce.
    pub fn new(cred: ClientCredential) -> Self {
        Self::with_nonce(cred, "", &STANDARD.encode(rand::random::<[u8; 18]>()))
    }

    pub(super) fn with_nonce(cred: ClientCredential, user: &str, nonce: &str) -> Self {
        ScramClient {
            cred,
            client_first_bare: format!("n={user},r={nonce}"),
            nonce: nonce.to_owned(),
            state: ClientState::Initial,
            binding: ChannelBinding::None,
        }
    }

    /// The same exchange with channel binding `binding`.
    pub fn with_channel_binding(mut self, binding: ChannelBinding) -> Self {
        self.binding = binding;
        self
    }

    /// The SASL mechanism to name in SASLInitialResponse.
    pub fn mechanism(&self) -> &'static str {
        match self.binding {
            ChannelBinding::TlsServerEndPoint(_) => "SCRAM-SHA-256-PLUS",
            _ => "SCRAM-SHA-256",
        }
    }

    /// Whether answering the server-first-message runs PBKDF2 (a password, not passthrough
    /// keys): the caller runs it off the async worker threads.
    pub fn derives_keys(&self) -> bool {
        matches!(self.cred, ClientCredential::Password(_))
    }

    /// The client-first-message `<gs2 header>n=,r=<nonce>`, payload of SASLInitialResponse.
    pub fn client_first(&mut self) -> Vec<u8> {
        if matches!(self.state, ClientState::Initial) {
            self.state = ClientState::SentFirst;
        }
        format!("{}{}", self.binding.gs2_header(), self.client_first_bare).into_bytes()
    }

    /// Answer the server-first-message with the client-final-message. With
    /// [`ClientCredential::Keys`] the server's salt and iterations must equal the keys' ones,
    /// else [`Error::MismatchedSaltOrIterations`].
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, Error> {
        if !matches!(mem::replace(&mut self.state, ClientState::Done), ClientState::SentFirst) {
            return Err(Error::OutOfOrder);
        }
        let msg = message_str(data)?;
        let mut attrs = msg.split(',');
        let first = attrs.next();
        if first.is_some_and(|a| a.starts_with("m=")) {
            return Err(Error::MalformedMessage("mandatory extension not supported"));
        }
        let nonce = attr(first, "r=", "missing nonce")?;
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(Error::NonceMismatch);
        }
        check_nonce(nonce)?;
        let salt =
            decode_salt(attr(attrs.next(), "s=", "missing salt")?).ok_or(Error::MalformedMessage("invalid salt"))?;
        let iterations = parse_iterations(attr(attrs.next(), "i=", "missing iterations")?)
            .ok_or(Error::MalformedMessage("invalid iteration count"))?;
        if iterations > MAX_SERVER_ITERATIONS {
            return Err(Error::TooManyIterations(iterations));
        }
        let (client_key, server_key) = match &self.cred {
            ClientCredential::Password(password) => derive_keys(password, &salt, iterations),
            ClientCredential::Keys(k) if k.salt == salt && k.iterations == iterations => (k.client_key, k.server_key),
            ClientCredential::Keys(_) => return Err(Error::MismatchedSaltOrIterations),
        };
        // c = base64(gs2 header + binding data): "biws" without channel binding.
        let mut cbind = self.binding.gs2_header().as_bytes().to_vec();
        if let ChannelBinding::TlsServerEndPoint(data) = &self.binding {
            cbind.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(&cbind));
        let auth = auth_message(&self.client_first_bare, msg, &without_proof);
        let proof = xor(client_key, hmac(&sha256(&client_key), &auth));
        self.state = ClientState::SentFinal { server_signature: hmac(&server_key, &auth) };
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Verify the server-final-message `v=<ServerSignature>` (constant time). `e=...` is
    /// [`Error::ServerRejected`].
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), Error> {
        let ClientState::SentFinal { server_signature } = mem::replace(&mut self.state, ClientState::Done) else {
            return Err(Error::OutOfOrder);
        };
        let msg = message_str(data)?;
        if msg.starts_with("e=") {
            return Err(Error::ServerRejected);
        }
        let sig = attr(msg.split(',').next(), "v=", "missing server signature")?;
        match decode_key(sig) {
            Some(sig) if bool::from(sig.ct_eq(&server_signature)) => Ok(()),
            _ => Err(Error::InvalidServerSignature),
        }
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient").finish_non_exhaustive()
    }
}

// === helpers ===

fn message_str(data: &[u8]) -> Result<&str, Error> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err(Error::MalformedMessage("message too long"));
    }
    std::str::from_utf8(data).map_err(|_| Error::MalformedMessage("not UTF-8"))
}

/// The value of attribute `prefix` (`"r="`), which must be `part`.
fn attr<'a>(part: Option<&'a str>, prefix: &str, missing: &'static str) -> Result<&'a str, Error> {
    part.and_then(|p| p.strip_prefix(prefix)).ok_or(Error::MalformedMessage(missing))
}

/// RFC 5802: `printable = %x21-2B / %x2D-7E` (no ',').
fn check_nonce(nonce: &str) -> Result<(), Error> {
    let printable = |b: u8| (0x21..=0x7e).contains(&b) && b != b',';
    if nonce.is_empty() || !nonce.bytes().all(printable) {
        return Err(Error::MalformedMessage("invalid nonce"));
    }
    Ok(())
}

fn parse_iterations(s: &str) -> Option<u32> {
    s.parse().ok().filter(|&i| i > 0)
}

fn decode_salt(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).ok().filter(|salt| !salt.is_empty())
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    STANDARD.decode(s).ok()?.try_into().ok()
}

/// `(ClientKey, ServerKey)` from a password; runs PBKDF2.
fn derive_keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    (hmac(&salted, &[b"Client Key"]), hmac(&salted, &[b"Server Key"]))
}

/// `AuthMessage = client-first-bare "," server-first "," client-final-without-proof`, as parts.
fn auth_message<'a>(bare: &'a str, server_first: &'a str, without_proof: &'a str) -> [&'a [u8]; 5] {
    let parts = [bare, ",", server_first, ",", without_proof];
    parts.map(str::as_bytes)
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(mut a: [u8; 32], b: [u8; 32]) -> [u8; 32] {
    a.iter_mut().zip(b).for_each(|(x, y)| *x ^= y);
    a
}

/// Mock SCRAM verifier for unknown users: a salt stable per user name, keyed by a per-process
/// secret so it cannot be told apart from a real one, and the iteration count real users
/// have (see [`super::MockSecret`]).
pub fn mock_verifier(key: &[u8; 32], user: &str, iterations: u32) -> Verifier {
    let mut h = Sha256::new();
    h.update(key);
    h.update(user.as_bytes());
    let d = h.finalize();
    Verifier { iterations, salt: d[..16].to_vec(), stored_key: rand::random(), server_key: rand::random() }
}
