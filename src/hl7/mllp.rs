//! The Minimal Lower Layer Protocol (HL7 v2.5.1 Appendix C.4): each message is sent as
//! `<VT>` (0x0B), its bytes, `<FS><CR>` (0x1C 0x0D). Bytes outside a frame are
//! skipped; a message longer than the limit ends the connection (its peer is told
//! nothing: it will see the connection close and resend elsewhere or later).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const START: u8 = 0x0B;
const END: [u8; 2] = [0x1C, 0x0D];

#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error("a message longer than {0} bytes")]
    TooLong(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads frames from a stream, keeping what follows a frame for the next.
pub struct Reader {
    buffer: Vec<u8>,
    limit: usize,
    /// How far into the buffered frame the end block has been looked for already: a
    /// message trickling in byte by byte is scanned once, not once per read.
    scanned: usize,
}

impl Reader {
    pub fn new(limit: usize) -> Reader {
        Reader {
            buffer: Vec::new(),
            limit,
            scanned: 0,
        }
    }

    /// The next message's bytes (without the framing), or `None` at the end of the
    /// stream.
    pub async fn next<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Option<Vec<u8>>, MllpError> {
        loop {
            match self.buffer.iter().position(|&b| b == START) {
                // nothing framed yet: what came is noise between frames
                None => {
                    self.buffer.clear();
                    self.scanned = 0;
                }
                Some(start) => {
                    if start > 0 {
                        // the frame starts the buffer from now on
                        self.buffer.drain(..start);
                        self.scanned = 0;
                    }
                    let from = self.scanned.max(1);
                    if let Some(at) = self.buffer[from..].windows(2).position(|w| w == END) {
                        let end = from + at;
                        let message = self.buffer[1..end].to_vec();
                        self.buffer.drain(..end + 2);
                        self.scanned = 0;
                        return Ok(Some(message));
                    }
                    // the last byte may be the first half of the end block
                    self.scanned = self.buffer.len().saturating_sub(1).max(1);
                    if self.buffer.len() > self.limit {
                        return Err(MllpError::TooLong(self.limit));
                    }
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Writes `message` as one frame.
pub async fn write<S: AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(message.len() + 3);
    frame.push(START);
    frame.extend_from_slice(message);
    frame.extend_from_slice(&END);
    stream.write_all(&frame).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_found_between_noise_and_across_reads() {
        let mut bytes = b"noise".to_vec();
        bytes.push(START);
        bytes.extend_from_slice(b"MSH|one\r");
        bytes.extend_from_slice(&END);
        bytes.push(START);
        bytes.extend_from_slice(b"MSH|two\r");
        bytes.extend_from_slice(&END);
        let mut stream = &bytes[..];
        let mut reader = Reader::new(1024);
        assert_eq!(
            reader.next(&mut stream).await.unwrap().unwrap(),
            b"MSH|one\r"
        );
        assert_eq!(
            reader.next(&mut stream).await.unwrap().unwrap(),
            b"MSH|two\r"
        );
        assert!(reader.next(&mut stream).await.unwrap().is_none());
        // a frame arriving a byte at a time, the end block split across reads
        let mut frame = vec![START];
        frame.extend_from_slice(b"MSH|three\r");
        frame.extend_from_slice(&END);
        let mut trickle = tokio_test_trickle(&frame);
        assert_eq!(
            Reader::new(1024).next(&mut trickle).await.unwrap().unwrap(),
            b"MSH|three\r"
        );
        let mut long = vec![START];
        long.extend(std::iter::repeat_n(b'x', 2048));
        let mut stream = &long[..];
        assert!(matches!(
            Reader::new(1024).next(&mut stream).await,
            Err(MllpError::TooLong(1024))
        ));
    }

    /// A reader handing out one byte per read.
    fn tokio_test_trickle(bytes: &[u8]) -> Trickle {
        Trickle(bytes.to_vec(), 0)
    }

    struct Trickle(Vec<u8>, usize);

    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.1 < self.0.len() {
                let b = self.0[self.1];
                buf.put_slice(&[b]);
                self.1 += 1;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }
}
