//! The receiver's HTTP/1.1 listener: slow or idle clients cannot starve real events.
//!
//! - A client has [`ServeLimits::header_timeout`] to send a request's headers (this also ends
//!   idle keep-alive connections) and [`ServeLimits::body_timeout`] to send its body.
//! - At most [`ServeLimits::max_connections`] connections are kept. When a new one arrives at
//!   the cap, the oldest connection with no request in flight (one still sending headers, or
//!   idle) is closed to make room: a flood of slow connections costs the attacker their own
//!   connections, not a genuine sender's. Only when every connection has a request in flight
//!   is the new one refused (and those requests are bounded by the timeouts).
//!
//! `axum::serve` has none of these settings, hence this small accept loop over hyper.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Listener bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// On shutdown, how long requests in flight may take to finish.
    pub drain: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(10),
        }
    }
}

struct Conn {
    /// Requests being handled on this connection.
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

type Registry = Arc<Mutex<BTreeMap<u64, Conn>>>;

fn lock(r: &Registry) -> std::sync::MutexGuard<'_, BTreeMap<u64, Conn>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decrements a connection's in-flight count when its request is done (or dropped).
struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Close the oldest connection with no request in flight; false if every one is busy.
fn evict_oldest_idle(r: &mut BTreeMap<u64, Conn>) -> bool {
    let idle = r
        .iter()
        .find(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
        .map(|(id, _)| *id);
    match idle.and_then(|id| r.remove(&id)) {
        Some(old) => {
            old.evict.cancel();
            true
        }
        None => false,
    }
}

fn evict_idle(reg: &Registry) {
    evict_oldest_idle(&mut lock(reg));
}

/// Serve `app` on `listener` until `shutdown` is cancelled, then drain.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    lim: ServeLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        lim.body_timeout,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(lim.header_timeout)
        .keep_alive(true);
    let reg: Registry = Arc::new(Mutex::new(BTreeMap::new()));
    let mut next_id = 0u64;
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors or a reset before accept: free the oldest idle
                    // connection's descriptor, wait a little, keep going.
                    tracing::warn!(error = %e, "accept failed");
                    evict_idle(&reg);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let busy = Arc::new(AtomicUsize::new(0));
        let evict = CancellationToken::new();
        let id = next_id;
        next_id += 1;
        {
            let mut r = lock(&reg);
            if r.len() >= lim.max_connections.max(1) && !evict_oldest_idle(&mut r) {
                drop(r);
                drop(stream);
                continue;
            }
            r.insert(
                id,
                Conn {
                    busy: busy.clone(),
                    evict: evict.clone(),
                },
            );
        }
        let _ = stream.set_nodelay(true);
        let (app, http, reg, stop) = (app.clone(), http.clone(), reg.clone(), shutdown.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                busy.fetch_add(1, Ordering::SeqCst);
                let guard = Busy(busy.clone());
                let app = app.clone();
                async move {
                    let r = app.oneshot(req).await;
                    drop(guard);
                    r
                }
            });
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // Dropping the connection closes the socket.
                _ = evict.cancelled() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            lock(&reg).remove(&id);
        });
    }
    let deadline = tokio::time::Instant::now() + lim.drain;
    while !lock(&reg).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
