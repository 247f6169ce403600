//! Helpers shared by the benches that drive real servers.

use std::net::SocketAddr;

use chorus::protocol::native::{decode_server, encode_client, ClientMessage, ServerMessage};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A client WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `/ws` on `addr`, says hello and joins `room` with an empty
/// state vector; returns once `synced` arrived.
pub async fn connect(addr: SocketAddr, room: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect");
    let send = |msg: ClientMessage| Message::Binary(encode_client(&msg).into());
    ws.send(send(ClientMessage::Hello {
        v: 1,
        token: None,
        client: Some("bench".into()),
        rid: None,
    }))
    .await
    .expect("hello");
    ws.send(send(ClientMessage::Join {
        room: room.into(),
        sv: None,
        presence: None,
        rid: Some(1),
    }))
    .await
    .expect("join");
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                if let Ok(ServerMessage::Synced { .. }) = decode_server(&b) {
                    return ws;
                }
            }
            Some(Ok(_)) => {}
            _ => panic!("connection lost before synced"),
        }
    }
}
