//! HTTP/1.1 wire helpers shared by the data plane's own HTTP/1.1 lane (`server::lane`) and the upstream client
//! (`backend::remote::h1`), which both write a head and a body held in separate buffers.

use std::io::{self, IoSlice};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes `head` then `body` with as few writes as the socket allows (one vectored write, normally: no copy of the
/// body into the head's buffer, and one segment on the wire for a small message), then flushes (TLS streams buffer).
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(io: &mut W, head: &[u8], body: &[u8]) -> io::Result<()> {
    let total = head.len() + body.len();
    let mut written = 0;
    while written < total {
        let n = if written < head.len() {
            io.write_vectored(&[IoSlice::new(&head[written..]), IoSlice::new(body)]).await?
        } else {
            io.write(&body[written - head.len()..]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::write_all_vectored;
    use std::io::IoSlice;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::AsyncWrite;

    /// A writer that takes at most `step` bytes a call, and only the first of several buffers.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.step);
            this.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
            self.poll_write(cx, first)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_still_send_head_then_body_whole() {
        for step in [1, 3, 7, 64, 4096] {
            let mut writer = Trickle { got: Vec::new(), step };
            write_all_vectored(&mut writer, b"HEAD:", b"the body bytes").await.expect("written");
            assert_eq!(writer.got, b"HEAD:the body bytes", "step {step}");
        }
        let mut writer = Trickle { got: Vec::new(), step: 5 };
        write_all_vectored(&mut writer, b"", b"").await.expect("nothing to write");
        assert!(writer.got.is_empty());
    }
}
