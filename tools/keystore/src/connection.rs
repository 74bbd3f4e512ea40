//! Deadlines of one client connection, enforced on its socket.
//!
//! hyper's own `header_read_timeout` starts when the connection begins waiting for a
//! request, so it would also close idle keep-alive connections after the same short
//! time. The key store keeps two: a connection with no request in progress may stay
//! idle for `idle` (Envoy keeps its upstream connections open between lookups), but
//! once the first byte of a request arrives its whole head must follow within
//! `header_read` (a client trickling a byte at a time is closed then: slowloris).
//! While a request is being answered, the request timeout applies instead (server.rs).
//!
//! [`TimedStream`] wraps the socket: a read that would wait past the deadline fails
//! with `TimedOut` instead, and hyper closes the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// Which deadline closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    HeaderRead,
    Idle,
}

impl Expired {
    pub fn name(self) -> &'static str {
        match self {
            Self::HeaderRead => "header_read",
            Self::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in progress since `since`.
    Idle,
    /// The first bytes of a request arrived at `since`.
    ReadingHead,
    /// A request is being answered.
    Answering,
}

/// What a connection is doing, shared by its socket and its request handler.
#[derive(Debug)]
pub struct Activity {
    phase: Phase,
    since: Instant,
    expired: Option<Expired>,
}

impl Activity {
    pub fn new(now: Instant) -> Self {
        Self {
            phase: Phase::Idle,
            since: now,
            expired: None,
        }
    }

    fn bytes_read(&mut self, now: Instant) {
        if self.phase == Phase::Idle {
            self.phase = Phase::ReadingHead;
            self.since = now;
        }
    }

    pub fn request_started(&mut self) {
        self.phase = Phase::Answering;
    }

    pub fn request_finished(&mut self, now: Instant) {
        self.phase = Phase::Idle;
        self.since = now;
    }

    /// When the connection must be closed unless it makes progress, and why.
    fn deadline(&self, timeouts: &Timeouts) -> Option<(Instant, Expired)> {
        match self.phase {
            Phase::Idle => Some((self.since + timeouts.idle, Expired::Idle)),
            Phase::ReadingHead => Some((self.since + timeouts.header_read, Expired::HeaderRead)),
            Phase::Answering => None,
        }
    }

    /// Which deadline closed the connection, if one did.
    pub fn expired(&self) -> Option<Expired> {
        self.expired
    }
}

pub type SharedActivity = Arc<Mutex<Activity>>;

pub fn lock(activity: &SharedActivity) -> std::sync::MutexGuard<'_, Activity> {
    activity.lock().unwrap_or_else(|e| e.into_inner())
}

/// A socket whose reads (and writes that cannot proceed) fail once the connection's
/// deadline passes.
pub struct TimedStream<S> {
    inner: S,
    activity: SharedActivity,
    timeouts: Timeouts,
    timer: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
}

impl<S> TimedStream<S> {
    pub fn new(inner: S, activity: SharedActivity, timeouts: Timeouts) -> Self {
        Self {
            inner,
            activity,
            timeouts,
            timer: Box::pin(tokio::time::sleep(timeouts.idle)),
            armed_for: None,
        }
    }

    /// Called when the socket would wait: `Ready(Err)` if the deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some((deadline, reason)) = lock(&self.activity).deadline(&self.timeouts) else {
            return Poll::Pending;
        };
        if self.armed_for != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed_for = Some(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                lock(&self.activity).expired = Some(reason);
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} timeout", reason.name()),
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn on_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        self.poll_deadline(cx).map(Err)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    lock(&this.activity).bytes_read(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.on_pending(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.on_pending(cx),
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.on_pending(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.on_pending(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header_read: Duration::from_secs(5),
        idle: Duration::from_secs(60),
    };

    #[test]
    fn deadlines_follow_the_request_cycle() {
        let start = Instant::now();
        let mut activity = Activity::new(start);
        assert_eq!(
            activity.deadline(&TIMEOUTS),
            Some((start + TIMEOUTS.idle, Expired::Idle))
        );

        // The first byte starts the head's deadline; more bytes do not extend it.
        let first_byte = start + Duration::from_secs(30);
        activity.bytes_read(first_byte);
        activity.bytes_read(first_byte + Duration::from_secs(4));
        assert_eq!(
            activity.deadline(&TIMEOUTS),
            Some((first_byte + TIMEOUTS.header_read, Expired::HeaderRead))
        );

        activity.request_started();
        assert_eq!(
            activity.deadline(&TIMEOUTS),
            None,
            "the request timeout applies"
        );

        let answered = first_byte + Duration::from_secs(6);
        activity.request_finished(answered);
        assert_eq!(
            activity.deadline(&TIMEOUTS),
            Some((answered + TIMEOUTS.idle, Expired::Idle))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_client_is_cut_at_the_header_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Mutex::new(Activity::new(Instant::now())));
        let mut stream = TimedStream::new(server, activity.clone(), TIMEOUTS);
        let trickle = tokio::spawn(async move {
            let mut client = client;
            for byte in b"GET / HTTP/1.1\r\n" {
                if client.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            client
        });
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let err = loop {
            match stream.read(&mut buf).await {
                Ok(0) => panic!("closed"),
                Ok(_) => continue,
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(lock(&activity).expired(), Some(Expired::HeaderRead));
        assert_eq!(started.elapsed(), TIMEOUTS.header_read);
        drop(stream);
        let _ = trickle.await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_cut_at_the_idle_deadline() {
        use tokio::io::AsyncReadExt;
        let (_client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Mutex::new(Activity::new(Instant::now())));
        let mut stream = TimedStream::new(server, activity.clone(), TIMEOUTS);
        let started = Instant::now();
        let err = stream.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(lock(&activity).expired(), Some(Expired::Idle));
        assert_eq!(started.elapsed(), TIMEOUTS.idle);
    }
}
