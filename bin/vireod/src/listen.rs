//! Listeners: the root-only unix socket (local CLI) and the optional TCP listener, which
//! requires TLS and an API token on every request.
//!
//! Invariants: the unix socket is created with mode 0600 in a 0700 directory and only peers
//! with uid 0 or the daemon's own uid are served; every TCP request without a valid bearer
//! token gets `401` before it reaches a handler.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt;
use vireo_api::{ErrorBody, ErrorCode};

use crate::api::Requestor;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("preparing socket directory {path}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("binding {what}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the unix socket, replacing a stale socket file left by a previous run.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ListenError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ListenError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if path.exists() {
        // Refuse to steal the socket of a live daemon.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::Bind {
                what: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another vireod is listening on this socket",
                ),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    // Create the socket with no permissions for group/others from the first instant.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let res = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = res.map_err(|source| ListenError::Bind {
        what: path.display().to_string(),
        source,
    })?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(l)
}

async fn serve_conn<I, S>(io: I, svc: S, peer: String)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let hyper_svc = hyper_util::service::TowerToHyperService::new(svc);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), hyper_svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(peer, error = %e, "connection ended with an error");
    }
}

/// Serves `app` on the unix socket until the task is dropped.
pub async fn serve_unix(listener: UnixListener, app: Router) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept on unix socket failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        if uid != 0 && uid != me {
            tracing::warn!(
                uid,
                "refusing unix-socket client that is neither root nor the daemon's user"
            );
            continue;
        }
        let requestor = Requestor(format!("unix:uid={uid}"));
        let app = app.clone();
        let svc = tower::service_fn(move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(requestor.clone());
            app.clone().oneshot(req)
        });
        tokio::spawn(serve_conn(stream, svc, format!("uid {uid}")));
    }
}

fn unauthorized(msg: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(ErrorBody::new(ErrorCode::Unauthorized, msg)),
    )
        .into_response()
}

/// Serves `app` over TLS on TCP; every request must carry `Authorization: Bearer <token>`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    store: Arc<dyn vireo_store::Store>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept on TCP listener failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let svc = tower::service_fn(move |mut req: axum::http::Request<Incoming>| {
                let app = app.clone();
                let store = store.clone();
                async move {
                    let presented = req
                        .headers()
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .map(str::trim)
                        .map(str::to_string);
                    let Some(presented) = presented else {
                        return Ok(unauthorized(
                            "an API token is required (Authorization: Bearer <token>)",
                        ));
                    };
                    match crate::tokens::verify(&*store, &presented).await {
                        Ok(Some(tok)) => {
                            req.extensions_mut()
                                .insert(Requestor(format!("token:{}", tok.name)));
                            app.oneshot(req).await
                        }
                        Ok(None) => Ok(unauthorized("the API token is not valid")),
                        Err(e) => {
                            tracing::error!(error = %vireo_engine::error::chain(&e), "verifying a token failed");
                            Ok(unauthorized("the API token could not be verified"))
                        }
                    }
                }
            });
            serve_conn(stream, svc, peer.to_string()).await;
        });
    }
}
