//! The HTTP/1.1 server of the endpoint (hyper 1 over Tokio): `GET` or `HEAD` on
//! [`super::PATH`] answers the scrape, another method there is a 405, any other path a 404.
//!
//! Invariants: the server holds only a `Weak` reference to the pooler's state, so it never
//! keeps a stopped pooler alive (a request after that is a 503, and the accept loop ends
//! at its next connection); a scrape is rendered synchronously between two awaits, so no
//! lock is held across one; a connection that does not send its request head within
//! [`HEADER_TIMEOUT`] is closed, and none lives longer than [`CONNECTION_LIFETIME`] (a
//! client that reads its answer slowly included); at most [`MAX_CONNECTIONS`] are open: a
//! new one beyond closes the oldest, so idle sockets cannot lock a scraper out.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::shared::Shared;

/// How long a connection may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest life of one connection (keep-alive scrapers reconnect).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Connections open at once; a new one beyond closes the oldest.
const MAX_CONNECTIONS: usize = 64;

/// Pause after a failed `accept` (e.g. out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr`, spawns the server task and returns the bound address (the real port when
/// `addr`'s is 0). Must run inside a Tokio runtime.
pub async fn serve(shared: Arc<Shared>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    // With so_reuseport, a second pgsluice started for an online restart can bind it too.
    let listener = crate::net::bind(addr, shared.config.load().general().so_reuseport)?;
    serve_on(shared, listener)
}

/// Serves on a listener bound elsewhere (socket activation); returns its address.
pub fn serve_on(shared: Arc<Shared>, listener: TcpListener) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, Arc::downgrade(&shared)));
    Ok(bound)
}

/// The open connections, oldest first: id and the task serving it.
#[derive(Default)]
struct Open {
    conns: parking_lot::Mutex<VecDeque<(u64, tokio::task::AbortHandle)>>,
}

impl Open {
    /// Makes room for one more connection: closes the oldest while `max` are open.
    fn make_room(&self, max: usize) {
        let mut q = self.conns.lock();
        while q.len() >= max {
            if let Some((_, oldest)) = q.pop_front() {
                tracing::debug!("metrics endpoint: closing the oldest connection to make room");
                oldest.abort();
            }
        }
    }

    fn closed(&self, id: u64) {
        let mut q = self.conns.lock();
        if let Some(i) = q.iter().position(|(c, _)| *c == id) {
            q.remove(i);
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Weak<Shared>) {
    let open = Arc::new(Open::default());
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // This connection still gets its answer (a 503), then the listener closes.
        let stopped = shared.strong_count() == 0;
        let shared = shared.clone();
        open.make_room(MAX_CONNECTIONS);
        next_id += 1;
        let (id, open_now) = (next_id, open.clone());
        // (Held while the task is being spawned: it cannot remove itself before it is added.)
        let mut q = open.conns.lock();
        let task = tokio::spawn(async move {
            let service = service_fn(move |req| {
                let res = respond(&shared, &req);
                async move { Ok::<_, Infallible>(res) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics endpoint: connection ended with an error"),
                Err(_) => tracing::debug!("metrics endpoint: connection closed after its lifetime"),
                Ok(Ok(())) => {}
            }
            open_now.closed(id);
        });
        q.push_back((id, task.abort_handle()));
        drop(q);
        if stopped {
            tracing::debug!("metrics endpoint: the pooler has stopped, closing the listener");
            return;
        }
    }
}

/// The response to one request.
fn respond(shared: &Weak<Shared>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != super::PATH {
        return plain(StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        res.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    let Some(shared) = shared.upgrade() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "the pooler has stopped\n");
    };
    // (hyper sends no body for HEAD, with the GET's Content-Length.)
    let body = super::render(&shared);
    let mut res = Response::new(Full::new(Bytes::from(body)));
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
    res
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}
