//! ILDCP (RFC-0031) response payload and the peer-protocol condition shared with CCP.
//!
//! A child sends a Prepare to `peer.config` carrying [`PEER_PROTOCOL_CONDITION`]; the parent
//! answers with a Fulfill of 32 zero bytes whose data is
//! `clientAddress (var IA5) | assetScale u8 | assetCode (var UTF-8)`.

use bytes::{BufMut, BytesMut};

use super::address::validate_address;
use super::error::{DecodeError, DecodeErrorKind};
use super::oer::{put_var_octets, Reader};

/// The ILDCP destination.
pub const ILDCP_DESTINATION: &[u8] = b"peer.config";

/// The peer-protocol fulfillment: 32 zero bytes.
pub const PEER_PROTOCOL_FULFILLMENT: [u8; 32] = [0; 32];

/// sha256 of 32 zero bytes.
pub const PEER_PROTOCOL_CONDITION: [u8; 32] = [
    0x66, 0x68, 0x7a, 0xad, 0xf8, 0x62, 0xbd, 0x77, 0x6c, 0x8f, 0xc1, 0x8b, 0x8e, 0x9f, 0x8e, 0x20,
    0x08, 0x97, 0x14, 0x85, 0x6e, 0xe2, 0x33, 0xb3, 0x90, 0x2a, 0x59, 0x1d, 0x0d, 0x5f, 0x29, 0x25,
];

/// The data of an ILDCP Fulfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IldcpResponse<'a> {
    pub client_address: &'a [u8],
    pub asset_scale: u8,
    pub asset_code: &'a str,
}

impl<'a> IldcpResponse<'a> {
    pub fn decode(data: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let at = r.offset();
        let client_address = r.read_var_octets()?;
        validate_address(client_address)
            .map_err(|e| DecodeError::new(DecodeErrorKind::InvalidAddress(e), at + 1))?;
        let asset_scale = r.read_u8()?;
        let code_at = r.offset();
        let asset_code = core::str::from_utf8(r.read_var_octets()?)
            .map_err(|_| DecodeError::new(DecodeErrorKind::InvalidUtf8("assetCode"), code_at))?;
        Ok(IldcpResponse {
            client_address,
            asset_scale,
            asset_code,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        put_var_octets(out, self.client_address);
        out.put_u8(self.asset_scale);
        put_var_octets(out, self.asset_code.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn condition_is_hash_of_zero_fulfillment() {
        let h: [u8; 32] = Sha256::digest(PEER_PROTOCOL_FULFILLMENT).into();
        assert_eq!(h, PEER_PROTOCOL_CONDITION);
    }
}
