//! Accepting connections within limits: at most `max_connections` open at once (beyond it
//! the listener stops accepting and the kernel's backlog holds the rest), a connection from
//! which nothing arrives for `idle_timeout` is closed (a client that never finishes its
//! handshake included), and accept errors such as EMFILE back off instead of spinning.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::warn;

/// How long accepting pauses after an error that is not the peer's (EMFILE, ENFILE, ENOMEM).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepted connections, each holding one of `max_connections` permits until it closes.
pub fn incoming(
    listener: TcpListener,
    max_connections: usize,
    idle_timeout: Duration,
) -> impl Stream<Item = io::Result<LimitedConnection>> {
    let permits = Arc::new(Semaphore::new(max_connections));
    futures::stream::unfold((listener, permits), move |(listener, permits)| async move {
        let permit = permits.clone().acquire_owned().await.ok()?;
        let stream = accept(&listener).await;
        let connection = LimitedConnection::new(stream, permit, idle_timeout);
        Some((Ok(connection), (listener, permits)))
    })
}

/// Waits for the next connection; errors are logged (at most once per backoff) and retried.
async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Without it, Nagle and delayed ACKs stall small gRPC frames ~40 ms.
                let _ = stream.set_nodelay(true);
                return stream;
            }
            // The peer gave up before we accepted: nothing to wait for.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => {
                warn!(error = %err, "cannot accept a connection; pausing accepts");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// A TCP connection that frees its permit when dropped and fails its reads once nothing
/// has arrived for the idle timeout.
pub struct LimitedConnection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_read: Instant,
    idle: Pin<Box<Sleep>>,
}

impl LimitedConnection {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            stream,
            _permit: permit,
            idle_timeout,
            last_read: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }
}

impl Connected for LimitedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                // The timer is moved only when it fires, not on every read.
                while this.idle.as_mut().poll(cx).is_ready() {
                    let deadline = this.last_read + this.idle_timeout;
                    if deadline <= Instant::now() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connection idle for too long",
                        )));
                    }
                    this.idle.as_mut().reset(deadline);
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    /// `false`, though the socket could: h2 then copies a DATA frame of up to 1 KiB into
    /// its write buffer instead of chaining it (it chains anything over 256 bytes on a
    /// vectored writer, and must flush before it can buffer the next frame). An ext_authz
    /// allow's answer is several hundred bytes, so with vectored writes each one cost a
    /// `writev` of its own (two per Check under load); now answers share writes as the
    /// floor's do (BENCHMARKS.md, "Issue 11, third step"). Answers over 1 KiB still chain.
    /// With TLS, h2 writes to the TLS stream instead, which reports vectored writes and
    /// buffers records itself, so this applies to plaintext listeners.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_do_not_offer_vectored_writes_so_h2_batches_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("an address");
        let client = tokio::spawn(async move { TcpStream::connect(address).await });
        let mut accepted = Box::pin(incoming(listener, 1, Duration::from_secs(5)));
        let connection = futures::StreamExt::next(&mut accepted)
            .await
            .expect("a connection")
            .expect("accepted");
        let _client = client.await.expect("joins").expect("connects");
        assert!(connection.stream.is_write_vectored(), "the socket could");
        assert!(!connection.is_write_vectored());
    }
}
