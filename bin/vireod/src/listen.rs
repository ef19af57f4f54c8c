//! Listeners: the root-only unix socket (local CLI) and the optional TCP listener, which
//! requires TLS and an API token on every request.
//!
//! Invariants: the unix socket is created with mode 0600 in a 0700 directory and only peers
//! with uid 0 or the daemon's own uid are served; every TCP request without a valid bearer
//! token gets `401` before it reaches a handler, except the UI's static files (`/ui`), which
//! hold no data. Browsers cannot set headers on websockets, so an upgrade may present the
//! token as the subprotocol `vireo.token.<token>`; it is stripped before the handler runs.

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

/// Subprotocol a browser offers on websockets (browsers cannot set `Authorization` there);
/// the upgrade answers with it.
pub const WS_PROTOCOL: &str = "vireo";
/// Prefix of the websocket subprotocol value that carries the token:
/// `Sec-WebSocket-Protocol: vireo, vireo.token.<secret>`.
const WS_TOKEN_PREFIX: &str = "vireo.token.";

/// The API token a request presents, removed from the request: `Authorization: Bearer T`, or
/// for websocket upgrades the subprotocol `vireo.token.T`. The subprotocol entry is taken out
/// of `Sec-WebSocket-Protocol` (leaving e.g. `vireo`) so handlers never see the secret and the
/// server never echoes it back.
fn take_presented_token(headers: &mut axum::http::HeaderMap) -> Option<String> {
    use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
    if let Some(bearer) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_string());
    }
    let offered = headers
        .get(SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?
        .to_string();
    let mut token = None;
    let mut rest = vec![];
    for p in offered.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match p.strip_prefix(WS_TOKEN_PREFIX) {
            Some(t) if token.is_none() => token = Some(t.to_string()),
            Some(_) => {}
            None => rest.push(p),
        }
    }
    let token = token?;
    match axum::http::HeaderValue::from_str(&rest.join(", ")) {
        Ok(v) if !rest.is_empty() => {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, v);
        }
        _ => {
            headers.remove(SEC_WEBSOCKET_PROTOCOL);
        }
    }
    Some(token)
}

/// Serves `app` over TLS on TCP; every request must carry `Authorization: Bearer <token>`
/// (websocket upgrades may carry it as the subprotocol `vireo.token.<token>` instead), except
/// the browser UI's static files under `/ui`.
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
                    // The browser UI's static files carry no secrets; its API calls do.
                    if crate::ui::is_public_path(req.uri().path()) {
                        return app.oneshot(req).await;
                    }
                    let Some(presented) = take_presented_token(req.headers_mut()) else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
    use axum::http::HeaderMap;

    #[test]
    fn bearer_header_wins_and_stays() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer vireo_abc ".parse().unwrap());
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            "vireo, vireo.token.other".parse().unwrap(),
        );
        assert_eq!(take_presented_token(&mut h).as_deref(), Some("vireo_abc"));
    }

    #[test]
    fn websocket_subprotocol_token_is_taken_out_of_the_header() {
        let mut h = HeaderMap::new();
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            "vireo, vireo.token.vireo_a-b_c".parse().unwrap(),
        );
        assert_eq!(take_presented_token(&mut h).as_deref(), Some("vireo_a-b_c"));
        assert_eq!(h[SEC_WEBSOCKET_PROTOCOL], "vireo");

        let mut h = HeaderMap::new();
        h.insert(SEC_WEBSOCKET_PROTOCOL, "vireo.token.t1".parse().unwrap());
        assert_eq!(take_presented_token(&mut h).as_deref(), Some("t1"));
        assert!(h.get(SEC_WEBSOCKET_PROTOCOL).is_none());
    }

    #[test]
    fn no_token_without_either() {
        let mut h = HeaderMap::new();
        assert_eq!(take_presented_token(&mut h), None);
        h.insert(SEC_WEBSOCKET_PROTOCOL, "vireo, chat".parse().unwrap());
        assert_eq!(take_presented_token(&mut h), None);
        assert_eq!(h[SEC_WEBSOCKET_PROTOCOL], "vireo, chat");
        h.insert(AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(take_presented_token(&mut h), None);
    }
}
