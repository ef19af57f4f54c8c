//! Websocket endpoints: the serial console and the event stream.
//!
//! Both run over a fresh connection of the client's kind (unix socket or TLS) with the same
//! authentication header. Messages are bounded ([`MAX_MESSAGE_BYTES`]). A refused upgrade
//! whose body is an API error body becomes [`ClientError::Api`], like any other call.

use std::pin::Pin;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Sink, SinkExt, StreamExt};
use hyper::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use vireo_api::events::Event;

use crate::remote::Remote;
use crate::transport::Conn;
use crate::{encode_component, error_from_response, Client, ClientError};

/// Largest websocket message accepted.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Bytes typed into the console (each item is sent as one binary message).
pub type ConsoleSink = Pin<Box<dyn Sink<Bytes, Error = ClientError> + Send>>;
/// Console output as it arrives; ends when the daemon closes the console.
pub type ConsoleStream = BoxStream<'static, Result<Bytes, ClientError>>;
/// Events as they happen; ends when the daemon closes the stream.
pub type EventStream = BoxStream<'static, Result<Event, ClientError>>;

/// The stream's messages up to and excluding the peer's Close frame. After a Close, the
/// only thing left is the closing handshake, whose write may fail harmlessly when the peer
/// has already gone; that must not surface as an error of the stream.
fn until_close<S>(stream: S) -> impl futures::Stream<Item = Result<Message, WsError>>
where
    S: futures::Stream<Item = Result<Message, WsError>>,
{
    stream.take_while(|m| futures::future::ready(!matches!(m, Ok(Message::Close(_)))))
}

fn ws_error(path: &str, source: WsError) -> ClientError {
    ClientError::WebSocket {
        path: path.to_string(),
        source: Box::new(source),
    }
}

impl Client {
    /// Opens a websocket to `path` (with query) on the daemon.
    async fn websocket(&self, path: &str) -> Result<WebSocketStream<Conn>, ClientError> {
        let scheme = match self.remote() {
            Remote::Unix(_) => "ws",
            Remote::Https { .. } => "wss",
        };
        let url = format!("{scheme}://{}{path}", self.remote().host_header());
        let mut request = url.into_client_request().map_err(|e| ws_error(path, e))?;
        if let Some(auth) = &self.auth {
            request.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let handshake = async {
            let conn = self.dialer.connect().await?;
            match tokio_tungstenite::client_async_with_config(request, conn, Some(config)).await {
                Ok((stream, _response)) => Ok(stream),
                Err(WsError::Http(response)) => {
                    let body = response.body().as_deref().unwrap_or_default();
                    Err(error_from_response(
                        "GET",
                        path,
                        response.status().as_u16(),
                        body,
                    ))
                }
                Err(e) => Err(ws_error(path, e)),
            }
        };
        tokio::time::timeout(self.request_timeout, handshake)
            .await
            .map_err(|_| ClientError::Timeout {
                what: format!("websocket {path}"),
                after: self.request_timeout,
            })?
    }

    /// Attaches to a VM's serial console. The daemon first replays up to `history` bytes of
    /// recent output (its default when `None`), then streams live output; bytes sent into the
    /// sink reach the guest's serial port.
    pub async fn console(
        &self,
        name: &str,
        history: Option<u32>,
    ) -> Result<(ConsoleSink, ConsoleStream), ClientError> {
        let mut query = Vec::new();
        if let Some(p) = self.project() {
            query.push(format!("project={}", encode_component(p.as_str())));
        }
        if let Some(h) = history {
            query.push(format!("history={h}"));
        }
        let mut path = format!("/v1/vms/{}/console", encode_component(name));
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let (sink, stream) = self.websocket(&path).await?.split();
        let sink_path = path.clone();
        let sink = sink
            .sink_map_err(move |e| ws_error(&sink_path, e))
            .with(|bytes: Bytes| {
                futures::future::ready(Ok::<_, ClientError>(Message::Binary(bytes)))
            });
        let stream = until_close(stream).filter_map(move |message| {
            let item = match message {
                Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
                // The protocol uses binary messages; accept text as its UTF-8 bytes.
                Ok(Message::Text(text)) => Some(Ok(Bytes::copy_from_slice(text.as_bytes()))),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                    None
                }
                Err(e) => Some(Err(ws_error(&path, e))),
            };
            futures::future::ready(item)
        });
        Ok((Box::pin(sink), stream.boxed()))
    }

    /// Subscribes to the daemon's events; `kinds` is a comma-separated filter (all when
    /// `None`).
    pub async fn events(&self, kinds: Option<&str>) -> Result<EventStream, ClientError> {
        let path = match kinds {
            Some(k) => format!("/v1/events?kinds={}", encode_component(k)),
            None => "/v1/events".to_string(),
        };
        let stream = self.websocket(&path).await?;
        let events = until_close(stream).filter_map(move |message| {
            let item = match message {
                Ok(Message::Text(text)) => Some(
                    serde_json::from_str::<Event>(text.as_str()).map_err(ClientError::DecodeEvent),
                ),
                Ok(Message::Binary(bytes)) => {
                    Some(serde_json::from_slice::<Event>(&bytes).map_err(ClientError::DecodeEvent))
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                    None
                }
                Err(e) => Some(Err(ws_error(&path, e))),
            };
            futures::future::ready(item)
        });
        Ok(events.boxed())
    }
}
