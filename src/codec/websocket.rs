//! WebSocket frames (RFC 6455 §5): the header's parse and encoding, and masking.
//!
//! Only the data phase: the opening handshake is tungstenite's (see `btp::upgrade`). No
//! extension is ever negotiated, so a set RSV bit is an error. [`parse_header`] reads nothing
//! past the header and never trusts a length it has not bounded: a payload longer than the
//! caller's maximum is an error before a byte of it is buffered.

/// Longest frame header: 2 bytes, 8 of extended length, 4 of masking key.
pub const MAX_HEADER: usize = 14;

/// Longest payload of a control frame (ping, pong, close).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A parsed frame header: the payload is the `payload_len` bytes after `header_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub header_len: usize,
    pub payload_len: usize,
}

/// Why a frame header is refused (the connection then closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set (no extension was negotiated)")]
    ReservedBits,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("frame payload of {len} bytes; the maximum is {max}")]
    TooLong { len: u64, max: usize },
}

/// Parses the frame header at the start of `buf`: `Ok(None)` until the whole header is there.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(FrameError::UnknownOpcode(b0 & 0x0f))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(FrameError::BadControlFrame);
    }
    // The most significant bit of a 64-bit length must be 0 (§5.2).
    if len > max_payload as u64 || len >> 63 != 0 {
        return Err(FrameError::TooLong {
            len,
            max: max_payload,
        });
    }
    let mask = if masked {
        match buf.get(at..at + 4) {
            Some(k) => {
                at += 4;
                Some([k[0], k[1], k[2], k[3]])
            }
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len: at,
        // Bounded by `max_payload` above.
        payload_len: len as usize,
    }))
}

/// Appends a whole, unfragmented frame carrying `payload`, masked with `mask` if given (a
/// client must mask every frame it sends; a server must not).
pub fn encode_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) {
    let len = payload.len();
    out.push(0x80 | opcode.bits());
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(m | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], key);
        }
        None => out.extend_from_slice(payload),
    }
}

/// XORs `data` with the repeated masking `key` (masking and unmasking are the same).
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let k = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = data.chunks_exact_mut(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        w.copy_from_slice(&(u64::from_ne_bytes(a) ^ k).to_ne_bytes());
    }
    // 8 is a multiple of 4: the tail starts at key byte 0.
    for (b, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, payload, mask);
        out
    }

    #[test]
    fn rfc_6455_examples() {
        // §5.7: a single-frame unmasked text message "Hello", and the masked one.
        assert_eq!(
            frame(Opcode::Text, b"Hello", None),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        let masked = frame(Opcode::Text, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(
            masked,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        let h = parse_header(&masked, 100).unwrap().unwrap();
        assert_eq!(
            h,
            Header {
                fin: true,
                opcode: Opcode::Text,
                mask: Some([0x37, 0xfa, 0x21, 0x3d]),
                header_len: 6,
                payload_len: 5
            }
        );
        // 256 bytes binary: 16-bit length; 65 536 bytes: 64-bit length.
        assert_eq!(
            frame(Opcode::Binary, &[0; 256], None)[..4],
            [0x82, 0x7e, 1, 0]
        );
        assert_eq!(
            frame(Opcode::Binary, &[0; 65536], None)[..10],
            [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn partial_and_refused_headers() {
        let f = frame(Opcode::Binary, &[7; 300], Some([1, 2, 3, 4]));
        for cut in 0..8 {
            assert_eq!(parse_header(&f[..cut], 1000), Ok(None), "cut at {cut}");
        }
        assert!(parse_header(&f[..8], 1000).unwrap().is_some());
        assert_eq!(
            parse_header(&f, 299),
            Err(FrameError::TooLong { len: 300, max: 299 })
        );
        assert_eq!(parse_header(&[0xc2, 0], 10), Err(FrameError::ReservedBits));
        assert_eq!(
            parse_header(&[0x83, 0], 10),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_header(&[0x09, 0], 10),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(
            parse_header(&[0x89, 126, 0, 126], 1000),
            Err(FrameError::BadControlFrame)
        );
        // A 64-bit length with the top bit set is refused, not wrapped.
        let huge = [0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            parse_header(&huge, usize::MAX),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn masking_round_trips_at_every_length() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut d = data.clone();
            apply_mask(&mut d, [9, 8, 7, 6]);
            let expected: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [9, 8, 7, 6][i % 4])
                .collect();
            assert_eq!(d, expected);
            apply_mask(&mut d, [9, 8, 7, 6]);
            assert_eq!(d, data);
        }
    }
}
