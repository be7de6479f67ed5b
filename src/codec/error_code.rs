//! ILP error codes (RFC-0027): three ASCII bytes whose first letter is the class.
//!
//! Unknown codes are legal on the wire and are classified by their first letter; Rejects are
//! passed through byte for byte, so the code is kept exactly as received.

use core::fmt;

/// Who is at fault and whether to retry, from the first letter of the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// `F`: final, the sender's fault; do not retry unchanged.
    Final,
    /// `T`: temporary; retry later.
    Temporary,
    /// `R`: relative; retry with more time or amount.
    Relative,
    /// Any other first letter (not defined by the RFC).
    Unknown,
}

/// A three-byte ILP error code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub [u8; 3]);

macro_rules! codes {
    ($($id:ident = $code:literal, $name:literal;)*) => {
        impl ErrorCode {
            $(pub const $id: ErrorCode = ErrorCode(*$code);)*

            /// Every code RFC-0027 names.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$id),*];

            /// Slots a per-code counter needs: one per code in [`ALL`](Self::ALL), then one
            /// for any other code.
            pub const SLOTS: usize = Self::ALL.len() + 1;

            /// This code's counter slot (see [`SLOTS`](Self::SLOTS)).
            pub fn slot(&self) -> usize {
                Self::ALL
                    .iter()
                    .position(|c| c == self)
                    .unwrap_or(Self::ALL.len())
            }

            /// The RFC-0027 name, or a class-derived name for codes the RFC does not list.
            pub fn name(&self) -> &'static str {
                match &self.0 {
                    $($code => $name,)*
                    _ => match self.class() {
                        ErrorClass::Final => "Unknown Final Error",
                        ErrorClass::Temporary => "Unknown Temporary Error",
                        ErrorClass::Relative => "Unknown Relative Error",
                        ErrorClass::Unknown => "Unknown Error",
                    },
                }
            }
        }
    };
}

codes! {
    F00_BAD_REQUEST = b"F00", "Bad Request";
    F01_INVALID_PACKET = b"F01", "Invalid Packet";
    F02_UNREACHABLE = b"F02", "Unreachable";
    F03_INVALID_AMOUNT = b"F03", "Invalid Amount";
    F04_INSUFFICIENT_DESTINATION_AMOUNT = b"F04", "Insufficient Destination Amount";
    F05_WRONG_CONDITION = b"F05", "Wrong Condition";
    F06_UNEXPECTED_PAYMENT = b"F06", "Unexpected Payment";
    F07_CANNOT_RECEIVE = b"F07", "Cannot Receive";
    F08_AMOUNT_TOO_LARGE = b"F08", "Amount Too Large";
    F99_APPLICATION_ERROR = b"F99", "Application Error";
    T00_INTERNAL_ERROR = b"T00", "Internal Error";
    T01_PEER_UNREACHABLE = b"T01", "Peer Unreachable";
    T02_PEER_BUSY = b"T02", "Peer Busy";
    T03_CONNECTOR_BUSY = b"T03", "Connector Busy";
    T04_INSUFFICIENT_LIQUIDITY = b"T04", "Insufficient Liquidity";
    T05_RATE_LIMITED = b"T05", "Rate Limited";
    T99_APPLICATION_ERROR = b"T99", "Application Error";
    R00_TRANSFER_TIMED_OUT = b"R00", "Transfer Timed Out";
    R01_INSUFFICIENT_SOURCE_AMOUNT = b"R01", "Insufficient Source Amount";
    R02_INSUFFICIENT_TIMEOUT = b"R02", "Insufficient Timeout";
    R99_APPLICATION_ERROR = b"R99", "Application Error";
}

impl ErrorCode {
    pub fn class(&self) -> ErrorClass {
        match self.0[0] {
            b'F' => ErrorClass::Final,
            b'T' => ErrorClass::Temporary,
            b'R' => ErrorClass::Relative,
            _ => ErrorClass::Unknown,
        }
    }

    pub fn as_bytes(&self) -> &[u8; 3] {
        &self.0
    }

    /// The code as text; non-ASCII bytes (legal on the wire, never produced by us) show as `?`.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.as_str(), self.name())
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_complete_and_classified() {
        assert_eq!(ErrorCode::ALL.len(), 21);
        for c in ErrorCode::ALL {
            assert_ne!(c.class(), ErrorClass::Unknown);
            assert!(!c.name().starts_with("Unknown"));
        }
        assert_eq!(ErrorCode(*b"T42").class(), ErrorClass::Temporary);
        assert_eq!(ErrorCode(*b"T42").name(), "Unknown Temporary Error");
        assert_eq!(
            ErrorCode::F08_AMOUNT_TOO_LARGE.to_string(),
            "F08 Amount Too Large"
        );
    }
}
