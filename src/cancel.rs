//! Query cancellation. Every client gets its own (pid, secret) from pgsluice at login; the
//! registry maps it to the client's [`ClientInfo`], whose link names the server connection
//! it holds right now (set when it checks one out, cleared when it goes idle). A
//! CancelRequest is forwarded (with that server's own key) only while the client holds a
//! server, so a cancel for an idle client does nothing, and the hot path pays nothing for
//! cancellation beyond the link it keeps for the console anyway.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
    let gone = || std::io::Error::other("the server moved on before the cancel could be sent");
    let send = async {
        match &t.addr {
            crate::stats::CancelAddr::Unix(path) => {
                let mut s = tokio::net::UnixStream::connect(&**path).await?;
                if !still() {
                    return Err(gone());
                }
                s.write_all(&buf).await?;
                s.shutdown().await
            }
            crate::stats::CancelAddr::Tcp(addr) => {
                let mut s = TcpStream::connect(addr).await?;
                if !still() {
                    return Err(gone());
                }
                s.write_all(&buf).await?;
                s.shutdown().await
            }
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), send).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(server = %t.addr, error = %e, "could not forward cancel request");
            false
        }
        Err(_) => false,
    }
}

/// The (pid, secret) pairs handed to clients, and whose they are (a key is reserved at login,
/// before its session and `ClientInfo` exist).
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), Owner>>,
}

/// Whose a key is (`None` between the login reply and the start of the session).
type Owner = Option<Arc<ClientInfo>>;

/// A reserved cancel key; removes itself from the registry on drop.
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    /// The client's (pid, secret).
    pub key: (i32, i32),
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.map.lock().remove(&self.key);
    }
}

impl CancelHandle {
    /// The key now belongs to `info` (its session has started).
    pub fn attach(&self, info: &Arc<ClientInfo>) {
        if let Some(slot) = self.registry.map.lock().get_mut(&self.key) {
            *slot = Some(info.clone());
        }
    }
}

impl CancelRegistry {
    /// Reserves a fresh random (pid, secret).
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let mut map = self.map.lock();
        let key = loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let key = (pid, rand::random::<i32>());
            if pid != 0 && !map.contains_key(&key) {
                break key;
            }
        };
        map.insert(key, None);
        CancelHandle { registry: self.clone(), key }
    }

    /// The client a CancelRequest's key names, if any.
    pub fn find(&self, pid: i32, secret: &[u8]) -> Option<Arc<ClientInfo>> {
        let secret = <[u8; 4]>::try_from(secret).ok()?;
        self.map.lock().get(&(pid, i32::from_be_bytes(secret))).cloned().flatten()
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
