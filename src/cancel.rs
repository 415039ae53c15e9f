//! Query cancellation. Every client gets its own (pid, secret) from pgsluice; the registry
//! maps it to a slot the client's session fills with the cancel key of the server
//! connection it currently holds, and clears when it releases that server. A CancelRequest
//! is forwarded (with the server's own key) only while the slot is filled, so a cancel never
//! reaches a server that is running another client's query, and a cancel for an idle
//! client does nothing.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::conn::CancelTarget;
use crate::protocol::write;

/// The server a client is using right now, if any.
#[derive(Default)]
pub struct CancelSlot(Mutex<Option<CancelTarget>>);

impl CancelSlot {
    /// Called when the session takes a server connection.
    pub fn set(&self, t: &CancelTarget) {
        *self.0.lock() = Some(t.clone());
    }

    /// Called before the session releases it.
    pub fn clear(&self) {
        *self.0.lock() = None;
    }
}

/// Sends a CancelRequest to a server. Returns whether it was delivered.
pub async fn send_cancel(t: CancelTarget) -> bool {
    let mut buf = BytesMut::with_capacity(16 + t.secret.len());
    write::cancel_request(&mut buf, t.pid, &t.secret);
    let send = async {
        let mut s = TcpStream::connect(t.addr).await?;
        s.write_all(&buf).await?;
        s.shutdown().await
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

/// The (pid, secret) pairs handed to clients.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), Arc<CancelSlot>>>,
}

/// A registration; removes itself from the registry on drop.
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    /// The client's (pid, secret).
    pub key: (i32, i32),
    /// The slot this client's session fills.
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.map.lock().remove(&self.key);
    }
}

impl CancelRegistry {
    /// Registers a new client with a fresh random (pid, secret).
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let slot = Arc::new(CancelSlot::default());
        let mut map = self.map.lock();
        let key = loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let key = (pid, rand::random::<i32>());
            if pid != 0 && !map.contains_key(&key) {
                break key;
            }
        };
        map.insert(key, slot.clone());
        CancelHandle { registry: self.clone(), key, slot }
    }

    /// Handles a client's CancelRequest: forwards it to the server the client is using.
    /// Returns whether a cancel was sent.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) -> bool {
        let Ok(secret) = <[u8; 4]>::try_from(secret) else { return false };
        let target = {
            let map = self.map.lock();
            match map.get(&(pid, i32::from_be_bytes(secret))) {
                Some(slot) => slot.0.lock().clone(),
                None => None,
            }
        };
        match target {
            Some(t) => send_cancel(t).await,
            None => false,
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
