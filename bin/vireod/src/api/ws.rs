//! Websocket endpoints: the interactive serial console and the event stream.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use vireo_api::events::EventsQuery;
use vireo_api::vms::ConsoleQuery;
use vireo_api::ErrorBody;
use vireo_api::ErrorCode;
use vireo_engine::console::Console;

use super::{path_name, ApiError, ApiQuery, AppState, Requestor};

const DEFAULT_HISTORY: u32 = 4096;
const MAX_HISTORY: u32 = 65536;

/// Interactive serial console: binary frames both ways carry raw serial bytes. On connect the
/// server sends up to `history` bytes of recent output first.
#[utoipa::path(get, path = "/v1/vms/{name}/console", tag = "vms", params(("name" = String, Path), ConsoleQuery),
    responses((status = 101, description = "websocket upgrade"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn console(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ConsoleQuery>,
    Requestor(who): Requestor,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let name = path_name(&name, "VM")?;
    let history = q.history.unwrap_or(DEFAULT_HISTORY);
    if history > MAX_HISTORY {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("history must be at most {MAX_HISTORY}"),
        ));
    }
    let console = s.engine.console(q.project.as_ref(), name.as_str()).await?;
    tracing::info!(target: "vireo::audit", vm = %name, requestor = %who, "console attached");
    Ok(ws
        .protocols([crate::listen::WS_PROTOCOL])
        .on_upgrade(move |socket| run_console(socket, console, history as usize)))
}

async fn run_console(socket: WebSocket, console: Console, history: usize) {
    let (mut tx, mut rx) = socket.split();
    let (past, mut live) = console.attach(history);
    if !past.is_empty() && tx.send(Message::Binary(past.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            out = live.recv() => match out {
                Ok(bytes) => {
                    if tx.send(Message::Binary(bytes)).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("\r\n[vireo: {n} console chunks dropped: viewer too slow]\r\n");
                    if tx.send(Message::Binary(note.into_bytes().into())).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            },
            inp = rx.next() => match inp {
                Some(Ok(Message::Binary(b))) => {
                    if !console.send_input(b).await {
                        break;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if !console.send_input(bytes::Bytes::copy_from_slice(t.as_bytes())).await {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = console.closed() => {
                let _ = tx.send(Message::Binary(b"\r\n[vireo: the VM stopped]\r\n".to_vec().into())).await;
                break;
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
}

/// Event stream: one JSON [`vireo_api::events::Event`] per text frame.
#[utoipa::path(get, path = "/v1/events", tag = "host", params(EventsQuery),
    responses((status = 101, description = "websocket upgrade")))]
pub async fn events(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let kinds: Option<Vec<String>> = q.kinds.map(|k| {
        k.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let mut rx = s.engine.events().subscribe();
    // Browsers offer the `vireo` subprotocol (plus the token, see listen.rs): answer with it.
    let ws = ws.protocols([crate::listen::WS_PROTOCOL]);
    ws.on_upgrade(move |socket| async move {
        let (mut tx, mut incoming) = socket.split();
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if kinds.as_ref().is_some_and(|k| !k.contains(&ev.kind)) {
                            continue;
                        }
                        let Ok(text) = serde_json::to_string(&ev) else { continue };
                        if tx.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                },
                msg = incoming.next() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    _ => {}
                }
            }
        }
    })
}
