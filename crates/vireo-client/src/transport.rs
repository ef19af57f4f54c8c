//! Byte streams to the daemon and one-shot HTTP/1.1 exchanges over them.
//!
//! Every request opens its own connection (unix socket, or TCP + TLS) and closes it when the
//! response body has been read: simple, and cheap for a local daemon. Response bodies are read
//! into memory up to a caller-given limit, so a misbehaving server cannot exhaust memory.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::ClientError;
use crate::remote::Remote;

/// An open connection to the daemon.
#[derive(Debug)]
pub enum Conn {
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How to reach the daemon: the remote plus, for `https://`, a ready TLS connector.
#[derive(Clone)]
pub(crate) struct Dialer {
    pub remote: Remote,
    /// Present exactly when `remote` is [`Remote::Https`].
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    pub fn new(
        remote: Remote,
        tls_config: Option<rustls::ClientConfig>,
    ) -> Result<Self, ClientError> {
        let tls = match &remote {
            Remote::Unix(_) => None,
            Remote::Https { host, .. } => {
                let config = tls_config.ok_or(crate::tls::TlsConfigError::NoTrust)?;
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| ClientError::ServerName { host: host.clone() })?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(Dialer { remote, tls })
    }

    /// Opens a new connection.
    pub async fn connect(&self) -> Result<Conn, ClientError> {
        let connect_err = |source| ClientError::Connect {
            remote: self.remote.to_string(),
            source,
        };
        match (&self.remote, &self.tls) {
            (Remote::Unix(path), _) => Ok(Conn::Unix(
                UnixStream::connect(path).await.map_err(connect_err)?,
            )),
            (Remote::Https { host, port }, Some((connector, name))) => {
                let tcp = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect_err)?;
                // Requests are small and latency-bound.
                tcp.set_nodelay(true).map_err(connect_err)?;
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| match crate::tls::pin_mismatch(&source) {
                        Some(presented) => ClientError::PinMismatch {
                            remote: self.remote.to_string(),
                            presented,
                        },
                        None => ClientError::TlsHandshake {
                            remote: self.remote.to_string(),
                            source,
                        },
                    })?;
                Ok(Conn::Tls(Box::new(tls)))
            }
            (Remote::Https { .. }, None) => Err(crate::tls::TlsConfigError::NoTrust.into()),
        }
    }
}

/// A response read completely into memory.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends one request on a fresh connection and reads the whole response (at most
/// `body_limit` bytes of body).
pub(crate) async fn exchange(
    dialer: &Dialer,
    method: Method,
    path: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
    body_limit: usize,
) -> Result<RawResponse, ClientError> {
    let (content_type, body) = match body {
        Some(b) => (
            Some("application/json"),
            Full::new(b).map_err(|never| match never {}).boxed(),
        ),
        None => (
            None,
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        ),
    };
    exchange_body(
        dialer,
        method,
        path,
        headers,
        content_type,
        body,
        body_limit,
    )
    .await
}

/// A request body that may be streamed (uploads).
pub(crate) type StreamingBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A body that streams `file` in 1 MiB chunks.
pub(crate) fn file_body(file: tokio::fs::File) -> StreamingBody {
    use tokio::io::AsyncReadExt;
    let stream = futures::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    http_body_util::StreamBody::new(stream).boxed()
}

/// [`exchange`] with any body and content type.
pub(crate) async fn exchange_body(
    dialer: &Dialer,
    method: Method,
    path: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
    content_type: Option<&str>,
    body: StreamingBody,
    body_limit: usize,
) -> Result<RawResponse, ClientError> {
    let http_err = |source: crate::error::BoxError| ClientError::Http {
        remote: dialer.remote.to_string(),
        method: method.to_string(),
        path: path.to_string(),
        source,
    };
    let conn = dialer.connect().await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .map_err(|e| http_err(Box::new(e)))?;
    // The connection future drives the socket; it ends when the exchange is over.
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "daemon connection ended with an error");
        }
    });

    let mut builder = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(hyper::header::HOST, dialer.remote.host_header());
    if let Some(ct) = content_type {
        builder = builder.header(hyper::header::CONTENT_TYPE, ct);
    }
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let request = builder.body(body).map_err(|e| http_err(Box::new(e)))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http_err(Box::new(e)))?;
    let (parts, incoming) = response.into_parts();
    let collected = Limited::new(incoming, body_limit).collect().await;
    driver.abort();
    let body = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ClientError::TooLarge {
                method: method.to_string(),
                path: path.to_string(),
                limit: body_limit,
            })
        }
        Err(e) => return Err(http_err(e)),
    };
    Ok(RawResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Sends a GET and streams a successful response body into `dest` (created/truncated).
/// Returns `Ok(None)` on success, or the (bounded) error response.
pub(crate) async fn download(
    dialer: &Dialer,
    path: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
    dest: &std::path::Path,
    error_body_limit: usize,
) -> Result<Option<RawResponse>, ClientError> {
    use tokio::io::AsyncWriteExt;
    let http_err = |source: crate::error::BoxError| ClientError::Http {
        remote: dialer.remote.to_string(),
        method: "GET".into(),
        path: path.to_string(),
        source,
    };
    let conn = dialer.connect().await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .map_err(|e| http_err(Box::new(e)))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "daemon connection ended with an error");
        }
    });
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(hyper::header::HOST, dialer.remote.host_header());
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| http_err(Box::new(e)))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http_err(Box::new(e)))?;
    let (parts, mut incoming) = response.into_parts();
    if !parts.status.is_success() {
        let collected = Limited::new(incoming, error_body_limit).collect().await;
        driver.abort();
        let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
        return Ok(Some(RawResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }));
    }
    let write_err = |source: io::Error| ClientError::LocalFile {
        path: dest.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::create(dest).await.map_err(write_err)?;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| http_err(Box::new(e)))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await.map_err(write_err)?;
        }
    }
    file.sync_all().await.map_err(write_err)?;
    driver.abort();
    Ok(None)
}
