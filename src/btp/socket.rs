//! A link's WebSocket after the opening handshake: frames in and out over one byte stream,
//! with our own buffers (tungstenite only does the handshake, see [`super::upgrade`]).
//!
//! Reading: one read takes whatever arrived (often a batch of frames) straight into the
//! read buffer's free space; each complete binary message is split off as `Bytes` sharing
//! that buffer, unmasked in place: no copy. The buffer is reused in place once its messages
//! are dropped; a new block (zero-filled once, so reads need no zeroing) only when one is
//! still held. Pings are answered (the pong goes out with the next
//! flush), pongs dropped, text ignored (BTP is binary), fragments reassembled; a close is
//! answered and reported.
//! Writing: frames are encoded (masked when we are the client) into one write buffer, which
//! [`Socket::flush`] writes out with as few system calls as the socket allows.
//!
//! Invariants: a peer cannot grow the read buffer past one message ([`MAX_MESSAGE_SIZE`]) plus
//! one read, nor the write buffer by pinging: only the pong to the latest ping waits for the
//! next flush (RFC 6455 §5.5.3 allows that), however many pings arrive meanwhile; a frame that breaks RFC 6455 (reserved bits, unknown opcode, bad control frame,
//! wrong masking for its direction, stray continuation) is an error, after which the owner
//! only closes the socket; the write buffer holds what the owner queued since its last flush.

use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::MAX_MESSAGE_SIZE;
use crate::codec::websocket::{apply_mask, encode_frame, parse_header, FrameError, Opcode};

/// Which side of the handshake we were: a client masks what it sends, a server must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// What [`Socket::next`] hands over.
#[derive(Debug)]
pub enum Incoming {
    /// A whole binary message.
    Binary(Bytes),
    /// The peer closed the WebSocket (our close is queued in answer).
    Close,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("websocket: {0}")]
    Frame(#[from] FrameError),
    #[error("websocket: {0}")]
    Protocol(&'static str),
    #[error("connection closed by the peer")]
    Eof,
}

/// Free space made in the read buffer before a read (see [`Socket::make_room`]); a read
/// takes all the free space there is, which is more while a long message is coming in.
const READ_SIZE: usize = 16 * 1024;

/// A write buffer grown past this (a burst of big frames) is given back after its flush.
const MAX_IDLE_WRITE_BUF: usize = 256 * 1024;

/// A new read buffer holding `partial` with `room` bytes free, all of it initialized (see
/// [`Socket::fill`]): zero-filled once per block, instead of before every read.
fn read_block(partial: &[u8], room: usize) -> BytesMut {
    let mut block = BytesMut::zeroed(partial.len() + room);
    block.clear();
    block.extend_from_slice(partial);
    block
}

/// A WebSocket in its data phase over `S`.
pub struct Socket<S> {
    io: S,
    role: Role,
    rbuf: BytesMut,
    /// A fragmented message being reassembled: whether it is binary, and its bytes so far.
    partial: Option<(bool, BytesMut)>,
    wbuf: Vec<u8>,
    /// How much of `wbuf` is already written.
    written: usize,
    /// The latest ping's payload, to be answered by the next flush.
    pong: Option<BytesMut>,
    close_sent: bool,
}

impl<S> std::fmt::Debug for Socket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("role", &self.role)
            .field("buffered_in", &self.rbuf.len())
            .field("queued_out", &(self.wbuf.len() - self.written))
            .field("pong_due", &self.pong.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Takes over `io` after the handshake; `already_read` are bytes read past it.
    pub fn new(io: S, role: Role, already_read: &[u8]) -> Self {
        Socket {
            io,
            role,
            rbuf: read_block(already_read, READ_SIZE),
            partial: None,
            wbuf: Vec::new(),
            written: 0,
            pong: None,
            close_sent: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The next message, reading the socket when none is buffered. Cancel-safe: what was
    /// read stays buffered.
    pub async fn next(&mut self) -> Result<Incoming, SocketError> {
        loop {
            if let Some(m) = self.next_buffered()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// The next message already in the read buffer, without reading the socket.
    pub fn next_buffered(&mut self) -> Result<Option<Incoming>, SocketError> {
        loop {
            let Some(h) = parse_header(&self.rbuf, MAX_MESSAGE_SIZE)? else {
                return Ok(None);
            };
            let end = h.header_len + h.payload_len;
            if self.rbuf.len() < end {
                return Ok(None);
            }
            match (self.role, h.mask) {
                (Role::Server, None) => return Err(SocketError::Protocol("unmasked client frame")),
                (Role::Client, Some(_)) => {
                    return Err(SocketError::Protocol("masked server frame"))
                }
                (_, Some(key)) => apply_mask(&mut self.rbuf[h.header_len..end], key),
                (_, None) => {}
            }
            self.rbuf.advance(h.header_len);
            let payload = self.rbuf.split_to(h.payload_len);
            let starts = matches!(h.opcode, Opcode::Binary | Opcode::Text);
            if starts && self.partial.is_some() {
                return Err(SocketError::Protocol("new message inside a fragmented one"));
            }
            match h.opcode {
                Opcode::Binary if h.fin => return Ok(Some(Incoming::Binary(payload.freeze()))),
                Opcode::Text if h.fin => {}
                Opcode::Binary | Opcode::Text => {
                    self.partial = Some((h.opcode == Opcode::Binary, payload));
                }
                Opcode::Continuation => {
                    let Some((binary, mut message)) = self.partial.take() else {
                        return Err(SocketError::Protocol("continuation without a message"));
                    };
                    let len = message.len() + payload.len();
                    if len > MAX_MESSAGE_SIZE {
                        return Err(FrameError::TooLong {
                            len: len as u64,
                            max: MAX_MESSAGE_SIZE,
                        }
                        .into());
                    }
                    message.extend_from_slice(&payload);
                    if !h.fin {
                        self.partial = Some((binary, message));
                    } else if binary {
                        return Ok(Some(Incoming::Binary(message.freeze())));
                    }
                }
                Opcode::Ping => self.pong = Some(payload),
                Opcode::Pong => {}
                Opcode::Close => {
                    // Echo the status code, as RFC 6455 §5.5.1 suggests.
                    self.queue_close(payload.get(..2).unwrap_or(&[]));
                    return Ok(Some(Incoming::Close));
                }
            }
        }
    }

    /// Reads once from the socket into the read buffer, straight into its free space.
    async fn fill(&mut self) -> Result<(), SocketError> {
        self.make_room();
        let n = std::future::poll_fn(|cx| {
            let spare = self.rbuf.spare_capacity_mut();
            let room = spare.len();
            // SAFETY: `rbuf` is always a block from `read_block`, every byte of which was
            // initialized (zeroed) when it was allocated; it is only ever advanced, split
            // or reclaimed in place (`make_room`), never reallocated by `bytes`, so its
            // free space is initialized memory, and nothing else refers to it (split-off
            // messages end before `rbuf` starts).
            let free = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast(), room) };
            let read = Pin::new(&mut self.io).poll_read(cx, free);
            if let Poll::Ready(Ok(n)) = read {
                // SAFETY: the `n.min(room)` bytes after the end are initialized (see above)
                // and now hold what was read.
                unsafe { self.rbuf.set_len(self.rbuf.len() + n.min(room)) };
            }
            read
        })
        .await?;
        if n == 0 {
            return Err(SocketError::Eof);
        }
        Ok(())
    }

    /// Makes free space in the read buffer for the next read: at least [`READ_SIZE`], or
    /// the rest of a message whose header is in and that is bigger. In place when the
    /// messages split off earlier are gone (the steady state: no allocation); otherwise a
    /// fresh block, unless a quarter read still fits and the message in progress does too.
    fn make_room(&mut self) {
        let len = self.rbuf.len();
        let spare = self.rbuf.capacity() - len;
        if spare >= READ_SIZE {
            return;
        }
        let message = match parse_header(&self.rbuf, MAX_MESSAGE_SIZE) {
            Ok(Some(h)) => h.header_len + h.payload_len,
            _ => 0, // Not in yet, or an error `next_buffered` reports.
        };
        let rest = message.saturating_sub(len);
        let need = READ_SIZE.max(rest);
        if self.rbuf.try_reclaim(need) || (spare >= READ_SIZE / 4 && spare >= rest) {
            return;
        }
        self.rbuf = read_block(&self.rbuf, need);
    }

    fn queue(&mut self, opcode: Opcode, payload: &[u8]) {
        let mask = match self.role {
            // The key must be unpredictable (RFC 6455 §10.3): a sender chooses the data
            // bytes we forward. One word from the thread's CSPRNG (`random::<[u8; 4]>()`
            // would draw a word per byte).
            Role::Client => Some(rand::Rng::next_u32(&mut rand::rng()).to_ne_bytes()),
            Role::Server => None,
        };
        encode_frame(&mut self.wbuf, opcode, payload, mask);
    }

    /// Queues the pong that is due, then our close frame (once).
    fn queue_close(&mut self, payload: &[u8]) {
        if self.close_sent {
            return;
        }
        if let Some(ping) = self.pong.take() {
            self.queue(Opcode::Pong, &ping);
        }
        self.queue(Opcode::Close, payload);
        self.close_sent = true;
    }

    /// Queues a binary message (written by the next [`flush`](Self::flush)).
    pub fn send_binary(&mut self, payload: &[u8]) {
        self.queue(Opcode::Binary, payload);
    }

    /// Queues a ping.
    pub fn send_ping(&mut self) {
        self.queue(Opcode::Ping, &[]);
    }

    /// Something is queued and not yet written.
    pub fn unflushed(&self) -> bool {
        self.written < self.wbuf.len() || self.pong.is_some()
    }

    /// Writes everything queued. Cancel-safe: what was written is not written again.
    pub async fn flush(&mut self) -> Result<(), SocketError> {
        if let Some(payload) = self.pong.take() {
            self.queue(Opcode::Pong, &payload);
        }
        while self.written < self.wbuf.len() {
            let n = self.io.write(&self.wbuf[self.written..]).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            self.written += n;
        }
        self.wbuf.clear();
        self.written = 0;
        if self.wbuf.capacity() > MAX_IDLE_WRITE_BUF {
            self.wbuf = Vec::new();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Sends a close (unless one was sent), writes what is queued and shuts the stream down.
    pub async fn close(&mut self) -> Result<(), SocketError> {
        self.queue_close(&1000u16.to_be_bytes());
        self.flush().await?;
        self.io.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::websocket::encode_frame;
    use futures_lite::io::Cursor;

    /// A stream that yields `input` in reads of at most `chunk` bytes and keeps what is written.
    struct Scripted {
        input: Cursor<Vec<u8>>,
        chunk: usize,
        output: Vec<u8>,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            Pin::new(&mut self.input).poll_read(cx, &mut buf[..n])
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            // Short writes: at most 7 bytes at a time.
            let n = buf.len().min(7);
            self.output.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn socket(role: Role, input: Vec<u8>, chunk: usize, already: &[u8]) -> Socket<Scripted> {
        Socket::new(
            Scripted {
                input: Cursor::new(input),
                chunk,
                output: Vec::new(),
            },
            role,
            already,
        )
    }

    fn frame(out: &mut Vec<u8>, fin: bool, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) {
        let start = out.len();
        encode_frame(out, opcode, payload, mask);
        if !fin {
            out[start] &= 0x7f;
        }
    }

    /// Every message of `s` until it ends, as (binary payload) or "close" / error text.
    fn drain(s: &mut Socket<Scripted>) -> Vec<String> {
        futures_lite::future::block_on(async {
            let mut seen = Vec::new();
            loop {
                match s.next().await {
                    Ok(Incoming::Binary(b)) => seen.push(String::from_utf8_lossy(&b).into_owned()),
                    Ok(Incoming::Close) => {
                        seen.push("close".into());
                        return seen;
                    }
                    Err(e) => {
                        seen.push(format!("error: {e}"));
                        return seen;
                    }
                }
            }
        })
    }

    #[test]
    fn reads_across_any_read_boundary_and_answers_control_frames() {
        let key = Some([1, 2, 3, 4]);
        let mut input = Vec::new();
        frame(&mut input, true, Opcode::Binary, b"one", key);
        frame(&mut input, true, Opcode::Ping, b"p", key);
        frame(&mut input, false, Opcode::Binary, b"fr", key);
        frame(&mut input, true, Opcode::Pong, b"", key);
        frame(&mut input, false, Opcode::Continuation, b"ag", key);
        frame(&mut input, true, Opcode::Continuation, b"ments", key);
        frame(&mut input, true, Opcode::Text, b"ignored", key);
        frame(&mut input, true, Opcode::Binary, &[b'x'; 300], key);
        frame(&mut input, true, Opcode::Close, &1001u16.to_be_bytes(), key);
        let long = "x".repeat(300);
        for chunk in [1, 2, 3, 5, 64, 100_000] {
            // The first bytes as if tungstenite had read them past the handshake.
            let mut s = socket(Role::Server, input[3..].to_vec(), chunk, &input[..3]);
            assert_eq!(
                drain(&mut s),
                ["one", "fragments", long.as_str(), "close"],
                "chunk {chunk}"
            );
            futures_lite::future::block_on(s.flush()).unwrap();
            let mut expected = Vec::new();
            frame(&mut expected, true, Opcode::Pong, b"p", None);
            frame(
                &mut expected,
                true,
                Opcode::Close,
                &1001u16.to_be_bytes(),
                None,
            );
            assert_eq!(s.get_ref().output, expected);
        }
    }

    /// Messages kept while later ones are read (so the buffer cannot be reused in place and
    /// fresh blocks are taken), of every size up to the largest allowed, in reads of many
    /// sizes: each comes out intact, and the read buffer never holds more than one message
    /// plus one read.
    #[test]
    fn held_messages_stay_intact_and_the_read_buffer_stays_bounded() {
        let sizes = [
            1,
            125,
            126,
            4000,
            READ_SIZE - 10,
            READ_SIZE + 10,
            40_000,
            MAX_MESSAGE_SIZE,
        ];
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (i, &n) in sizes.iter().chain(&sizes).enumerate() {
            let payload: Vec<u8> = (0..n).map(|j| (i * 31 + j) as u8).collect();
            frame(
                &mut input,
                true,
                Opcode::Binary,
                &payload,
                Some([9, 8, 7, i as u8]),
            );
            expected.push(payload);
        }
        for chunk in [7, 1000, READ_SIZE / 3, READ_SIZE, 100_000] {
            let mut s = socket(Role::Server, input.clone(), chunk, &[]);
            let mut held = Vec::new();
            futures_lite::future::block_on(async {
                while held.len() < expected.len() {
                    match s.next().await.unwrap() {
                        Incoming::Binary(b) => held.push(b),
                        Incoming::Close => panic!("no close was sent"),
                    }
                    assert!(s.rbuf.capacity() <= MAX_MESSAGE_SIZE + 14 + READ_SIZE);
                }
            });
            for (got, want) in held.iter().zip(&expected) {
                assert!(got[..] == want[..], "chunk {chunk}, {} bytes", want.len());
            }
        }
    }

    #[test]
    fn a_ping_flood_leaves_one_pong() {
        let mut input = Vec::new();
        for i in 0..10_000u32 {
            frame(
                &mut input,
                true,
                Opcode::Ping,
                &i.to_be_bytes(),
                Some([1, 2, 3, 4]),
            );
        }
        frame(
            &mut input,
            true,
            Opcode::Binary,
            b"after",
            Some([1, 2, 3, 4]),
        );
        let mut s = socket(Role::Server, input, 100_000, &[]);
        let got = futures_lite::future::block_on(s.next()).unwrap();
        assert!(matches!(got, Incoming::Binary(b) if &b[..] == b"after"));
        assert!(s.wbuf.is_empty(), "nothing queued per ping");
        futures_lite::future::block_on(s.flush()).unwrap();
        let mut expected = Vec::new();
        frame(
            &mut expected,
            true,
            Opcode::Pong,
            &9_999u32.to_be_bytes(),
            None,
        );
        assert_eq!(
            s.get_ref().output,
            expected,
            "only the latest ping is answered"
        );
    }

    /// A frame to build: `(fin, opcode, payload, mask)`.
    type Spec<'a> = (bool, Opcode, &'a [u8], Option<[u8; 4]>);

    /// The frames, one after the other.
    fn frames(list: &[Spec<'_>]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(fin, opcode, payload, mask) in list {
            frame(&mut v, fin, opcode, payload, mask);
        }
        v
    }

    #[test]
    fn refuses_what_breaks_the_protocol() {
        use Opcode::{Binary, Continuation};
        let too_long = vec![0; MAX_MESSAGE_SIZE + 1];
        let cases: [(Role, Vec<u8>, &str); 5] = [
            (
                Role::Server,
                frames(&[(true, Binary, b"a", None)]),
                "unmasked",
            ),
            (
                Role::Client,
                frames(&[(true, Binary, b"a", Some([1; 4]))]),
                "masked",
            ),
            (
                Role::Client,
                frames(&[(true, Continuation, b"a", None)]),
                "continuation",
            ),
            (
                Role::Client,
                frames(&[(false, Binary, b"a", None), (true, Binary, b"b", None)]),
                "inside a fragmented",
            ),
            (
                Role::Client,
                frames(&[(true, Binary, &too_long, None)]),
                "maximum",
            ),
        ];
        for (role, input, want) in cases {
            let mut s = socket(role, input, 1000, &[]);
            let got = drain(&mut s);
            assert!(
                got.len() == 1 && got[0].contains(want),
                "{got:?} lacks {want}"
            );
        }
        // Fragments adding up past the maximum.
        let max = vec![0; MAX_MESSAGE_SIZE];
        let v = frames(&[
            (false, Binary, &max, None),
            (true, Continuation, b"!", None),
        ]);
        let got = drain(&mut socket(Role::Client, v, 100_000, &[]));
        assert!(got[0].contains("maximum"), "{got:?}");
        // The stream ending mid-frame.
        let mut v = frames(&[(true, Binary, b"abc", None)]);
        v.pop();
        assert_eq!(
            drain(&mut socket(Role::Client, v, 1, &[])),
            ["error: connection closed by the peer"]
        );
    }

    #[test]
    fn a_client_masks_and_a_server_does_not() {
        for role in [Role::Client, Role::Server] {
            let mut s = socket(role, Vec::new(), 1, &[]);
            s.send_binary(b"hello");
            s.send_ping();
            assert!(s.unflushed());
            futures_lite::future::block_on(s.close()).unwrap();
            assert!(!s.unflushed());
            // Read it back as the other side would.
            let other = match role {
                Role::Client => Role::Server,
                Role::Server => Role::Client,
            };
            let out = s.get_ref().output.clone();
            assert_eq!(out[1] & 0x80 != 0, role == Role::Client);
            assert_eq!(drain(&mut socket(other, out, 3, &[])), ["hello", "close"]);
        }
    }

    #[test]
    fn each_client_frame_has_its_own_masking_key() {
        let mut s = socket(Role::Client, Vec::new(), 1, &[]);
        for _ in 0..8 {
            s.send_binary(b"abcd");
        }
        // Eight frames of 2 header + 4 key + 4 payload bytes.
        let out = &s.wbuf;
        let keys: std::collections::HashSet<&[u8]> =
            (0..8).map(|i| &out[i * 10 + 2..i * 10 + 6]).collect();
        assert!(keys.len() > 1, "one key for every frame: {keys:?}");
    }
}
