//! The two bodies of a forward, which carry its deadlines: the request's, which says when it has all been
//! sent (the owner answers a write only after its whole body, so the response head's deadline runs from
//! then), and the response's, cut when the owner sends nothing for too long or its lease lapses.
//!
//! Both pass frames through as they come: nothing is buffered, and only time spent waiting for the owner
//! counts towards a stall, never time the browser takes to read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use deskbroker_shared::ids::NodeId;

use super::error::ForwardError;
use super::reads::Listed;

/// A request body that cancels `sent` once it has ended, or has been dropped (hyper drops a body it has
/// written, and an empty one without polling it).
pub struct Sending<B> {
    inner: B,
    sent: CancellationToken,
}

impl<B> Sending<B> {
    pub fn new(inner: B, sent: CancellationToken) -> Self {
        Self { inner, sent }
    }
}

impl<B> Drop for Sending<B> {
    fn drop(&mut self) {
        self.sent.cancel();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Sending<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.sent.cancel();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What ends a forwarded response early: the owner's lease lapsing in the view.
pub type Lapse = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response body from the owner, ended with an error (the browser's response is cut) when the owner
/// sends nothing for `stall_deadline` while it is waited for, or when its lease lapses.
pub struct Watched<B> {
    inner: B,
    peer: NodeId,
    lapsed: Lapse,
    stall_deadline: Duration,
    /// When the owner's silence means it is stuck; one timer for the body's life, set again at each wait.
    stalled: Pin<Box<Sleep>>,
    /// Waiting for the owner since the last frame, and the timer is set for this wait.
    waiting: bool,
    done: bool,
    /// A read's place in the list of reads this node forwards, given up with the body.
    _listed: Option<Listed>,
}

impl<B> Watched<B> {
    pub fn new(inner: B, peer: NodeId, lapsed: Lapse, stall_deadline: Duration) -> Self {
        Self {
            inner,
            peer,
            lapsed,
            stall_deadline,
            stalled: Box::pin(sleep(stall_deadline)),
            waiting: false,
            done: false,
            _listed: None,
        }
    }

    /// Keeps `listed` for as long as the body lives.
    pub fn listed(mut self, listed: Option<Listed>) -> Self {
        self._listed = listed;
        self
    }

    fn cut<T>(&mut self, error: ForwardError) -> Poll<Option<Result<T, ForwardError>>> {
        self.done = true;
        match error.is_unanswered() {
            true => warn!(side = "peer", %error, "forwarded response cut"),
            false => debug!(side = "peer", %error, "forwarded response cut"),
        }
        Poll::Ready(Some(Err(error)))
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Data = Bytes;
    type Error = ForwardError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ForwardError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(source))) => {
                let peer = this.peer.clone();
                let source = Box::new(source);
                return this.cut(ForwardError::Body { peer, source });
            }
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if this.lapsed.as_mut().poll(cx).is_ready() {
            let peer = this.peer.clone();
            return this.cut(ForwardError::Lapsed { peer });
        }
        let deadline = this.stall_deadline;
        if !this.waiting {
            this.waiting = true;
            this.stalled.as_mut().reset(Instant::now() + deadline);
        }
        if this.stalled.as_mut().poll(cx).is_ready() {
            let peer = this.peer.clone();
            return this.cut(ForwardError::Stalled { peer, deadline });
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    use super::*;

    const STALL: Duration = Duration::from_secs(20);

    type Chunks =
        StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>>;

    /// A body fed by hand, as the owner's would come, watched with a lapse that `lapse` triggers.
    fn watched() -> (
        mpsc::Sender<Bytes>,
        tokio::sync::oneshot::Sender<()>,
        Watched<Chunks>,
    ) {
        let (chunks, receiver) = mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let chunk = receiver.recv().await?;
            Some((Ok(Frame::data(chunk)), receiver))
        });
        let (lapse, lapsed) = tokio::sync::oneshot::channel::<()>();
        let lapsed: Lapse = Box::pin(async move {
            let _ = lapsed.await;
        });
        let body = Watched::new(
            StreamBody::new(Box::pin(stream) as _),
            NodeId::new("owner"),
            lapsed,
            STALL,
        );
        (chunks, lapse, body)
    }

    async fn next(body: &mut Watched<Chunks>) -> Option<Result<Bytes, ForwardError>> {
        let frame = body.frame().await?;
        Some(frame.map(|frame| frame.into_data().unwrap_or_default()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_owner_is_waited_for_up_to_the_stall_deadline_then_cut() {
        let (chunks, _lapse, mut body) = watched();
        let feeding = tokio::spawn(async move {
            // Quiet for a little less than the deadline, twice: each byte starts the count again.
            for chunk in ["4.sync,1.1;", "3.nop;"] {
                sleep(STALL - Duration::from_secs(1)).await;
                chunks.send(Bytes::from(chunk)).await.unwrap();
            }
            chunks // kept open, and silent
        });
        assert_eq!(next(&mut body).await.unwrap().unwrap(), "4.sync,1.1;");
        assert_eq!(next(&mut body).await.unwrap().unwrap(), "3.nop;");
        let started = tokio::time::Instant::now();
        let cut = next(&mut body).await.unwrap();
        assert!(matches!(cut, Err(ForwardError::Stalled { .. })), "{cut:?}");
        assert_eq!(started.elapsed(), STALL);
        assert!(next(&mut body).await.is_none(), "a cut body ends");
        drop(feeding);
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_browser_takes_to_read_is_not_a_stall() {
        let (chunks, _lapse, mut body) = watched();
        chunks.send(Bytes::from("3.nop;")).await.unwrap();
        assert_eq!(next(&mut body).await.unwrap().unwrap(), "3.nop;");
        // The browser reads nothing for longer than the deadline; the owner had sent the next bytes.
        chunks.send(Bytes::from("4.sync,1.2;")).await.unwrap();
        sleep(STALL * 2).await;
        assert_eq!(next(&mut body).await.unwrap().unwrap(), "4.sync,1.2;");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lapsed_owner_cuts_the_body_at_once_after_what_it_had_sent() {
        let (chunks, lapse, mut body) = watched();
        chunks.send(Bytes::from("3.nop;")).await.unwrap();
        lapse.send(()).unwrap();
        assert_eq!(next(&mut body).await.unwrap().unwrap(), "3.nop;");
        let started = tokio::time::Instant::now();
        let cut = next(&mut body).await.unwrap();
        assert!(matches!(cut, Err(ForwardError::Lapsed { .. })), "{cut:?}");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_request_body_says_when_it_has_been_sent() {
        let sent = CancellationToken::new();
        let mut body = Sending::new(
            http_body_util::Full::new(Bytes::from("3.nop;")),
            sent.clone(),
        );
        assert!(!sent.is_cancelled());
        assert!(body.frame().await.is_some());
        assert!(body.frame().await.is_none());
        assert!(sent.is_cancelled(), "ended");

        let unpolled = CancellationToken::new();
        drop(Sending::new(
            http_body_util::Empty::<Bytes>::new(),
            unpolled.clone(),
        ));
        assert!(unpolled.is_cancelled(), "dropped");
    }
}
