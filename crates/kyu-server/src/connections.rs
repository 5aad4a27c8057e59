//! Accepting and serving connections so that no client can starve the
//! server: headers must arrive within a time limit (which also closes idle
//! keep-alive connections), the number of open connections is capped below
//! the process's file-descriptor limit, and when the cap is reached the
//! connection idle the longest is closed to make room, so `/healthz` and
//! real clients still get in while slow or idle sockets pile up.
//!
//! A connection is *busy* while one of its requests is being answered (a
//! long poll included, until its response body is sent) and *idle*
//! otherwise; only idle ones are ever evicted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How connections are limited.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this, and an idle keep-alive
    /// connection is closed after it.
    pub header_timeout: Duration,
    /// A connection idle at least this long may be closed to admit a new
    /// one when the cap is reached.
    pub evict_idle_after: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            evict_idle_after: Duration::from_millis(50),
        }
    }
}

/// One open connection, as the registry sees it.
struct Conn {
    /// Requests being answered (their response bodies not yet sent).
    in_flight: AtomicUsize,
    /// When it last became idle, in ms since the registry started.
    idle_since: AtomicU64,
    /// Cancelled to close it.
    evict: CancellationToken,
}

impl Conn {
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self, now_ms: u64) {
        self.idle_since.store(now_ms, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks its request done when dropped: with the response body, once it is
/// sent (or the client went away).
struct RequestGuard {
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.end(self.registry.now_ms());
    }
}

struct Registry {
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn add(&self) -> (u64, Arc<Conn>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            evict: CancellationToken::new(),
        });
        self.open.lock().expect("registry").insert(id, conn.clone());
        (id, conn)
    }

    fn remove(&self, id: u64) {
        self.open.lock().expect("registry").remove(&id);
    }

    /// Closes the connection idle the longest, if one has been idle at
    /// least `min_idle`; true if one was closed.
    fn evict_oldest_idle(&self, min_idle: Duration) -> bool {
        let now = self.now_ms();
        let open = self.open.lock().expect("registry");
        let oldest = open
            .values()
            .filter(|c| c.in_flight.load(Ordering::SeqCst) == 0 && !c.evict.is_cancelled())
            .map(|c| (c.idle_since.load(Ordering::SeqCst), c))
            .filter(|(since, _)| now.saturating_sub(*since) >= min_idle.as_millis() as u64)
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, c)) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Serves `app` on connections from `listener` (over TLS when `tls` is set)
/// until `shutdown`, then finishes in-flight requests (long polls answer at
/// once, as they watch the same token) and returns.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let registry = Arc::new(Registry { started: Instant::now(), next_id: AtomicU64::new(0), open: Mutex::new(HashMap::new()) });
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tasks = TaskTracker::new();
    let mut at_cap_logged = false;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                at_cap_logged = false;
                p
            }
            Err(_) => {
                if !at_cap_logged {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: closing the longest-idle connections to admit new ones \
                         (raise --max-connections and the file-descriptor limit if this is real load)"
                    );
                    at_cap_logged = true;
                }
                // Make room: close an idle connection, else wait for one to end.
                if !registry.evict_oldest_idle(limits.evict_idle_after) {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => p.expect("never closed"),
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let io = tokio::select! {
            io = listener.accept() => io,
            _ = shutdown.cancelled() => break,
        };
        let io = match io {
            Ok((io, _)) => {
                let _ = io.set_nodelay(true);
                io
            }
            Err(e) => {
                // Out of file descriptors or a failed handshake: log, pause
                // briefly (an fd shortage clears as connections close), go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let (id, conn) = registry.add();
        let app = app.clone();
        let reg = registry.clone();
        let stop = shutdown.clone();
        let tls = tls.as_ref().map(|t| t.current());
        tasks.spawn(async move {
            match tls {
                None => serve_one(io, app, conn.clone(), reg.clone(), limits, stop).await,
                // The handshake has the header timeout too: a client that
                // opens a socket and says nothing holds a slot no longer.
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => serve_one(stream, app, conn.clone(), reg.clone(), limits, stop).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
            reg.remove(id);
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn serve_one<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    app: Router,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let tracked = conn.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        tracked.begin();
        let guard = RequestGuard { conn: tracked.clone(), registry: registry.clone() };
        let app = app.clone();
        async move {
            let resp = app.oneshot(req.map(Body::new)).await.unwrap_or_else(|e| match e {});
            // The guard travels with the body: the request is done when
            // the body has been sent, which for a stream may be much later.
            Ok::<_, std::convert::Infallible>(resp.map(|b| {
                Body::new(b.map_frame(move |f| {
                    let _ = &guard;
                    f
                }))
            }))
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    tokio::select! {
        _ = served.as_mut() => {}
        _ = conn.evict.cancelled() => {}
        _ = shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(30), served).await;
        }
    }
}

/// The most connections this process can hold open: below the soft limit
/// on file descriptors, leaving room for the database, files and logs.
pub fn fd_budget() -> Option<usize> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    Some((lim.rlim_cur as usize).saturating_sub(64).max(16))
}

/// Raises the soft file-descriptor limit to the hard one (as most servers
/// do at start), so the default cap is not the 1,024 a shell gives.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
