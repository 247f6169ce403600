//! WebSocket connections after the handshake, without actix-http's
//! per-connection buffers.
//!
//! actix-http's HTTP/1 dispatcher gives every connection a read and a write
//! buffer of 8 KiB (a private constant) for its whole life, and a WebSocket
//! served as a streaming response stays inside that dispatcher: two 8 KiB
//! allocations, about one page of each touched, ≈ 8 KB of RSS per idle
//! connection — most of what an idle connection cost (benches/BENCHMARKS.md).
//!
//! So upgrade requests take actix-http's `upgrade` path instead: the
//! dispatcher hands this module the request and the connection
//! ([`Framed`]) before its application sees the request. [`serve`] still
//! routes the request through the same actix-web application (the same
//! routes, extractors, admission checks and session start as any request),
//! with a request payload fed by this module ([`Inbound`]). A refusal is
//! written as an ordinary response and the connection closed. A `101`
//! response is written, the connection is taken apart and its buffers
//! dropped, and a [`Pump`], a task of its own, moves bytes between the
//! socket and the session:
//!
//! - **reading**: into a buffer on the stack, copied out exactly sized
//!   into the payload's queue, and only while the queue holds less than
//!   [`INBOUND_HIGH_WATER`] (the session's decoder takes it from there; its
//!   gate stops taking when the session is over its rate, and TCP pushes
//!   back);
//! - **writing**: the response body's chunks (the session's [`Outbox`]
//!   frames, shared `Bytes`) go to the socket as they are, without a copy
//!   into a write buffer; the body is polled only as the socket takes what
//!   it gave, so a client that stops reading stops its session as before
//!   (the watchdog still closes it, `crate::session::watchdog`).
//!
//! An idle connection then holds no buffer at all.
//!
//! [`Outbox`]: crate::outbox::Outbox

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use actix_codec::{AsyncRead, AsyncWrite, Framed, FramedParts, ReadBuf};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::error::PayloadError;
use actix_http::h1;
use actix_http::header;
use actix_http::{ConnectionType, Method, Payload, Request, Response, StatusCode};
use actix_service::Service;
use actix_web::rt::net::TcpStream;
use bytes::{Buf, Bytes};
use futures_util::{SinkExt, Stream};

use crate::session::watchdog::Abort;

/// The payload queue stops taking from the socket at this many bytes, as
/// actix-http's own request payload does (32 KiB).
pub const INBOUND_HIGH_WATER: usize = 32 * 1024;

/// What one queued chunk costs besides its bytes (its `Bytes` in the queue
/// and its allocation), counted against [`INBOUND_HIGH_WATER`]: a client
/// sending one byte per segment would otherwise queue 32 768 chunks, about
/// 2 MiB, before reading stops.
const CHUNK_COST: usize = 64;

/// Largest read from the socket at once (the stack buffer it goes to).
const READ_CHUNK: usize = 8 * 1024;

/// How long a closed connection waits for its client to close too (as
/// actix-http's `client_disconnect_timeout`).
const LINGER: Duration = Duration::from_secs(1);

/// Chunks written (or reads taken) in one turn before the pump lets the
/// worker's other connections run.
const TURN_BUDGET: usize = 64;

/// Serves one upgrade request on `framed`: routes it through `app`, writes
/// the response, and pumps a switched connection until either side ends.
async fn serve<T, S>(app: Rc<S>, req: Request, mut framed: Framed<T, h1::Codec>) -> io::Result<()>
where
    T: Socket,
    S: AppService,
{
    let inbound = Inbound::default();
    // actix-http sends every request with `Upgrade: websocket` here, whatever
    // its method and whether or not it says `Connection: upgrade`; only a GET
    // can switch (RFC 6455 §4.1). Any other is an ordinary request whose
    // body is its `Content-Length` bytes (actix-http's decoder took the rest
    // of the stream as its body): they are fed to its payload while it runs,
    // or a handler reading the body would wait for ever.
    let body_len = (req.method() != Method::GET).then(|| {
        req.head()
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    });
    let payload: actix_http::BoxedPayloadStream = Box::pin(InboundStream(inbound.0.clone()));
    let (req, _) = req.replace_payload(Payload::Stream { payload });
    let call = app.call(req);
    let answer = match body_len {
        None => call.await,
        Some(len) => {
            let mut parts = framed.into_parts();
            let answer = {
                let mut call = std::pin::pin!(call);
                let mut feeding = std::pin::pin!(feed_body(&mut parts, &inbound, len));
                let mut fed = false;
                std::future::poll_fn(|cx| {
                    if !fed && feeding.as_mut().poll(cx).is_ready() {
                        fed = true;
                    }
                    call.as_mut().poll(cx)
                })
                .await
            };
            framed = Framed::from_parts(parts);
            answer
        }
    };
    let response: Response<BoxBody> = match answer {
        Ok(response) => response.into(),
        Err(e) => e.error_response().into(),
    };
    let abort = response
        .extensions()
        .get::<std::sync::Arc<Abort>>()
        .cloned();
    let (mut head, mut body) = response.into_parts();
    if head.status() != StatusCode::SWITCHING_PROTOCOLS {
        // A refusal (or a route that does not upgrade): an ordinary
        // response, then the connection closes. The body is written as it
        // comes (an event stream never ends: collected first, it would
        // grow in memory for ever and never reach the client).
        head.head_mut().set_connection_type(ConnectionType::Close);
        let size = match body.size() {
            BodySize::None => BodySize::Sized(0),
            size => size,
        };
        framed.send(h1::Message::Item((head, size))).await?;
        while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await {
            let chunk = chunk.map_err(|_| io::Error::other("response body failed"))?;
            if !chunk.is_empty() {
                framed.send(h1::Message::Chunk(Some(chunk))).await?;
            }
        }
        framed.send(h1::Message::Chunk(None)).await?;
        return framed.close().await;
    }
    framed
        .send(h1::Message::Item((head, BodySize::None)))
        .await?;
    let io = {
        let parts = framed.into_parts();
        // What the connection read past the request head is the stream's.
        if !parts.read_buf.is_empty() {
            inbound.feed(Bytes::copy_from_slice(&parts.read_buf));
        }
        parts.io
        // The codec and both buffers are dropped here, before the pump
        // runs for the connection's life.
    };
    // The pump is a task of its own: the connection's task (actix-server's,
    // holding actix-http's dispatcher and this function's state, ~3 KB)
    // ends here, and an idle connection is left with the pump's few words.
    actix_web::rt::spawn(Pump::new(io, inbound, body, abort));
    Ok(())
}

/// The actix-web application as a service of requests (what `serve`
/// routes an upgrade request through).
pub trait AppService:
    Service<Request, Response = actix_web::dev::ServiceResponse<BoxBody>, Error = actix_web::Error>
{
}

impl<S> AppService for S where
    S: Service<
        Request,
        Response = actix_web::dev::ServiceResponse<BoxBody>,
        Error = actix_web::Error,
    >
{
}

/// A connection's stream (plain or TLS) and the TCP socket under it.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + 'static {
    /// The TCP socket.
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for actix_tls::accept::rustls_0_23::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Feeds the payload of a request that cannot switch with its body: the
/// first `len` bytes after its head (some already read with the head, in
/// `parts.read_buf`), at the pace the handler takes them; then ends it.
async fn feed_body<T: AsyncRead + Unpin>(
    parts: &mut FramedParts<T, h1::Codec>,
    inbound: &Inbound,
    mut left: u64,
) {
    let buffered = parts
        .read_buf
        .len()
        .min(usize::try_from(left).unwrap_or(usize::MAX));
    if buffered > 0 {
        inbound.feed(parts.read_buf.split_to(buffered).freeze());
        left -= buffered as u64;
    }
    std::future::poll_fn(|cx| loop {
        if left == 0 {
            inbound.end(None);
            return Poll::Ready(());
        }
        if !inbound.wants(cx) {
            return Poll::Pending;
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX);
        match std::task::ready!(poll_read_chunk(&mut parts.io, cx, want)) {
            Ok(None) => {
                inbound.end(Some(io::ErrorKind::UnexpectedEof.into()));
                return Poll::Ready(());
            }
            Ok(Some(bytes)) => {
                left -= bytes.len() as u64;
                inbound.feed(bytes);
            }
            Err(e) => {
                inbound.end(Some(e));
                return Poll::Ready(());
            }
        }
    })
    .await
}

/// Reads at most `max` (and [`READ_CHUNK`]) bytes from `io` into a buffer
/// on the stack (an idle connection holds no read buffer) and returns them
/// exactly sized; `None` at the end of the stream.
fn poll_read_chunk<T: AsyncRead + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    max: usize,
) -> Poll<io::Result<Option<Bytes>>> {
    let mut space = [0u8; READ_CHUNK];
    let mut buf = ReadBuf::new(&mut space[..max.min(READ_CHUNK)]);
    std::task::ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    let filled = buf.filled();
    Poll::Ready(Ok(
        (!filled.is_empty()).then(|| Bytes::copy_from_slice(filled))
    ))
}

/// True for the ways a peer ends a connection: not worth an error.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::WriteZero
            | io::ErrorKind::NotConnected
    )
}

/// [`serve`], with a peer that went away during the handshake counted as
/// an ordinary end (actix-http logs the errors of an upgrade as errors).
pub async fn serve_quietly<T, S>(
    app: Rc<S>,
    req: Request,
    framed: Framed<T, h1::Codec>,
) -> io::Result<()>
where
    T: Socket,
    S: AppService,
{
    match serve(app, req, framed).await {
        Err(e) if is_disconnect(&e) => {
            tracing::debug!("connection closed during the upgrade: {e}");
            Ok(())
        }
        other => other,
    }
}

/// The bytes read from the socket and not yet taken by the session's
/// decoder: the queue between the [`Pump`] and the request payload.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<Bytes>,
    len: usize,
    eof: bool,
    error: Option<io::Error>,
    /// The payload's reader, waiting for bytes.
    reader: Option<Waker>,
    /// The pump, waiting for room in the queue.
    pump: Option<Waker>,
    /// The payload was dropped (its session is gone).
    reader_gone: bool,
}

/// The pump's side of the queue.
#[derive(Default)]
struct Inbound(Rc<RefCell<Queue>>);

impl Inbound {
    fn feed(&self, bytes: Bytes) {
        let mut queue = self.0.borrow_mut();
        if queue.reader_gone {
            return;
        }
        queue.len += bytes.len() + CHUNK_COST;
        queue.chunks.push_back(bytes);
        if let Some(reader) = queue.reader.take() {
            reader.wake();
        }
    }

    fn end(&self, error: Option<io::Error>) {
        let mut queue = self.0.borrow_mut();
        queue.eof = true;
        queue.error = error;
        if let Some(reader) = queue.reader.take() {
            reader.wake();
        }
    }

    /// True when the queue takes more now; otherwise the pump is woken
    /// when it does.
    fn wants(&self, cx: &Context<'_>) -> bool {
        let mut queue = self.0.borrow_mut();
        if queue.reader_gone || queue.len < INBOUND_HIGH_WATER {
            return true;
        }
        queue.pump = Some(cx.waker().clone());
        false
    }
}

/// The request payload's side of the queue.
struct InboundStream(Rc<RefCell<Queue>>);

impl Stream for InboundStream {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut queue = self.0.borrow_mut();
        if let Some(bytes) = queue.chunks.pop_front() {
            queue.len -= bytes.len() + CHUNK_COST;
            if queue.chunks.is_empty() {
                // Nothing is kept for an idle connection (a read is rare
                // next to the allocation it costs).
                queue.chunks = VecDeque::new();
            }
            if queue.len < INBOUND_HIGH_WATER {
                if let Some(pump) = queue.pump.take() {
                    pump.wake();
                }
            }
            return Poll::Ready(Some(Ok(bytes)));
        }
        if let Some(e) = queue.error.take() {
            return Poll::Ready(Some(Err(PayloadError::Io(e))));
        }
        if queue.eof {
            return Poll::Ready(None);
        }
        queue.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for InboundStream {
    fn drop(&mut self) {
        let mut queue = self.0.borrow_mut();
        queue.reader_gone = true;
        queue.chunks = VecDeque::new();
        queue.len = 0;
        if let Some(pump) = queue.pump.take() {
            pump.wake();
        }
    }
}

/// Moves bytes between a switched connection's socket and its session
/// until the session's body ends (then the socket is flushed and shut) or
/// the socket fails.
struct Pump<T> {
    io: T,
    inbound: Inbound,
    body: BoxBody,
    /// The rest of the body chunk being written.
    writing: Bytes,
    /// The body ended: finish writing, then close.
    body_done: bool,
    /// The socket's read side ended (or failed).
    read_done: bool,
    /// Bytes were written since the last flush (TLS keeps them otherwise).
    unflushed: bool,
    /// After the last byte was written and the write side shut: reading
    /// and discarding until the client closes too, or this timer fires.
    lingering: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Fired by the watchdog when the session is stuck: reset the socket.
    abort: Option<std::sync::Arc<Abort>>,
}

impl<T> Pump<T> {
    fn new(io: T, inbound: Inbound, body: BoxBody, abort: Option<std::sync::Arc<Abort>>) -> Self {
        Pump {
            io,
            inbound,
            body,
            writing: Bytes::new(),
            body_done: false,
            read_done: false,
            unflushed: false,
            lingering: None,
            abort,
        }
    }
}

impl<T: Socket> Pump<T> {
    /// Reads while the queue wants more and the socket has it. `Ok(true)`:
    /// the turn's budget ran out with more to read.
    fn read(&mut self, cx: &mut Context<'_>) -> bool {
        for _ in 0..TURN_BUDGET {
            if self.read_done || !self.inbound.wants(cx) {
                return false;
            }
            match poll_read_chunk(&mut self.io, cx, READ_CHUNK) {
                Poll::Ready(Ok(Some(bytes))) => self.inbound.feed(bytes),
                Poll::Ready(end) => {
                    self.read_done = true;
                    self.inbound.end(end.err());
                }
                Poll::Pending => return false,
            }
        }
        true
    }

    /// Writes body chunks while the socket takes them. `Ok(true)`: the
    /// turn's budget ran out with more to write.
    fn write(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        for _ in 0..TURN_BUDGET {
            if self.writing.is_empty() {
                if self.body_done {
                    return Ok(false);
                }
                match Pin::new(&mut self.body).poll_next(cx) {
                    Poll::Ready(Some(Ok(chunk))) => self.writing = chunk,
                    Poll::Ready(Some(Err(e))) => return Err(io::Error::other(e.to_string())),
                    Poll::Ready(None) => {
                        self.body_done = true;
                        return Ok(false);
                    }
                    Poll::Pending => return Ok(false),
                }
                continue;
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.writing) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.writing.advance(n);
                    self.unflushed = true;
                    if self.writing.is_empty() {
                        // Dropped as soon as written: the chunk may carry
                        // a flight token (`crate::outbox::Flight`).
                        self.writing = Bytes::new();
                    }
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(false),
            }
        }
        Ok(true)
    }
}

impl<T: Socket> Pump<T> {
    /// One turn: `Ready` when the connection is over (ended or failed).
    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.abort.as_ref().is_some_and(|a| a.poll_fired(cx)) {
            // What waits in the kernel for a client that stopped reading is
            // discarded (linger 0: the close resets the connection).
            let _ = socket2::SockRef::from(self.io.tcp()).set_linger(Some(Duration::ZERO));
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let more_to_read = self.read(cx);
        let more_to_write = self.write(cx)?;
        if self.unflushed {
            if let Poll::Ready(done) = Pin::new(&mut self.io).poll_flush(cx) {
                done?;
                self.unflushed = false;
            }
        }
        if self.body_done && self.writing.is_empty() && !self.unflushed {
            return self.linger(cx);
        }
        if more_to_read || more_to_write {
            // Budget spent: let the thread's other connections run first.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<T: Socket> Pump<T> {
    /// The session is over and everything it wrote is out: shut the write
    /// side, then read (and discard) until the client closes its side or
    /// [`LINGER`] passes. Closing a socket with unread input makes the
    /// kernel reset the connection, and a reset can discard the close frame
    /// the client has not read yet.
    fn linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.lingering.is_none() {
            std::task::ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
            if self.read_done {
                return Poll::Ready(Ok(()));
            }
            self.lingering = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        for _ in 0..TURN_BUDGET {
            match poll_read_chunk(&mut self.io, cx, READ_CHUNK) {
                Poll::Ready(Ok(Some(_))) => {}
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        match self.lingering.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }
}

impl<T: Socket> Future for Pump<T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut().turn(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(e)) => {
                if is_disconnect(&e) {
                    tracing::debug!("connection closed: {e}");
                } else {
                    tracing::info!("connection failed: {e}");
                }
                // Dropping the pump drops the body, which stops the
                // session the ordinary way (it leaves its rooms).
                Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn the_queue_takes_until_its_high_water_and_wakes_the_pump_below_it() {
        let inbound = Inbound::default();
        let mut stream = InboundStream(inbound.0.clone());
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waker = waker_flag(woken.clone());
        let cx = Context::from_waker(&waker);
        assert!(inbound.wants(&cx));
        inbound.feed(Bytes::from(vec![0u8; INBOUND_HIGH_WATER]));
        assert!(!inbound.wants(&cx), "a full queue takes no more");
        let chunk = futures::executor::block_on(stream.next()).unwrap().unwrap();
        assert_eq!(chunk.len(), INBOUND_HIGH_WATER);
        assert!(woken.load(std::sync::atomic::Ordering::SeqCst));
        assert!(inbound.wants(&cx));
    }

    #[test]
    fn one_byte_chunks_count_what_they_cost() {
        let inbound = Inbound::default();
        let waker = waker_flag(Default::default());
        let cx = Context::from_waker(&waker);
        let mut chunks = 0;
        while inbound.wants(&cx) {
            inbound.feed(Bytes::from_static(b"x"));
            chunks += 1;
        }
        assert!(
            chunks * 64 <= 2 * INBOUND_HIGH_WATER,
            "{chunks} one-byte chunks queued (~{} KiB)",
            chunks * 64 / 1024
        );
    }

    #[test]
    fn the_end_of_the_socket_ends_the_payload_after_its_bytes() {
        let inbound = Inbound::default();
        let mut stream = InboundStream(inbound.0.clone());
        inbound.feed(Bytes::from_static(b"ab"));
        inbound.end(Some(io::ErrorKind::ConnectionReset.into()));
        futures::executor::block_on(async {
            assert_eq!(
                stream.next().await.unwrap().unwrap(),
                Bytes::from_static(b"ab")
            );
            assert!(matches!(
                stream.next().await,
                Some(Err(PayloadError::Io(_)))
            ));
            assert!(stream.next().await.is_none());
        });
    }

    fn waker_flag(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Waker {
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Waker::from(std::sync::Arc::new(Flag(flag)))
    }
}
