//! The listener's side of the BTP auth handshake (RFC-0023 §2.5): the first frame must be a
//! MESSAGE whose primary entry is `auth` and which carries an `auth_token` entry.
//!
//! Tokens are compared in constant time (over their SHA-256 digests, so length leaks nothing).
//! A peer is named by `auth_username`, or by the URL path `/accounts/<user>/ilp/btp`; when
//! both are empty it is identified by its token, as the JS listener does.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::codec::BtpPacket;

/// One peer that may dial us.
#[derive(Clone)]
pub struct Credential {
    pub peer_id: String,
    token_digest: [u8; 32],
}

impl Credential {
    pub fn new(peer_id: &str, token: &str) -> Self {
        Credential {
            peer_id: peer_id.to_owned(),
            token_digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `token` is this credential's, in constant time.
    pub(crate) fn matches(&self, token: &[u8]) -> bool {
        self.matches_digest(&Sha256::digest(token).into())
    }

    /// As [`matches`](Self::matches), given `sha256(token)` (to check one token against
    /// many credentials with one hash).
    pub(crate) fn matches_digest(&self, digest: &[u8; 32]) -> bool {
        digest.ct_eq(&self.token_digest).into()
    }

    /// `sha256(token)`, for [`matches_digest`](Self::matches_digest).
    pub(crate) fn digest(token: &[u8]) -> [u8; 32] {
        Sha256::digest(token).into()
    }
}

/// What a refused peer is told, whatever was wrong with its credentials: telling an unknown
/// account from a wrong token would let anyone probe which accounts exist.
pub const AUTH_FAILED: &str = "authentication failed";

/// Why an auth frame was refused (for our logs; the peer gets [`AuthRefusal::wire_message`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    #[error("first frame must be a MESSAGE with primary protocol auth")]
    NotAuth,
    #[error("missing auth_token")]
    MissingToken,
    #[error("invalid auth_token")]
    BadToken,
    #[error("unknown account")]
    UnknownAccount,
}

impl AuthRefusal {
    /// What the peer is told: the same for every credential failure.
    pub fn wire_message(&self) -> &'static str {
        match self {
            AuthRefusal::NotAuth => "first frame must be a MESSAGE with primary protocol auth",
            AuthRefusal::MissingToken | AuthRefusal::BadToken | AuthRefusal::UnknownAccount => {
                AUTH_FAILED
            }
        }
    }
}

/// Compared against when the account is unknown, so that path costs what a wrong token costs.
static DUMMY: std::sync::LazyLock<Credential> =
    std::sync::LazyLock::new(|| Credential::new("", "no account has this token"));

/// Checks an auth frame against the peers allowed to dial us; returns the peer id.
pub fn authenticate<'a>(
    frame: &BtpPacket,
    path_user: Option<&str>,
    creds: &'a [Credential],
) -> Result<&'a str, AuthRefusal> {
    if frame.kind() != crate::codec::BtpType::Message || frame.primary_name() != Some(b"auth") {
        return Err(AuthRefusal::NotAuth);
    }
    let token = frame
        .entry(b"auth_token")
        .ok_or(AuthRefusal::MissingToken)?
        .data;
    let username = frame
        .entry(b"auth_username")
        .map(|e| e.data)
        .filter(|u| !u.is_empty())
        .or(path_user.map(str::as_bytes).filter(|u| !u.is_empty()));
    match username {
        Some(user) => {
            let cred = creds.iter().find(|c| c.peer_id.as_bytes() == user);
            // The comparison runs either way: the same work for an unknown account.
            let matched = cred.unwrap_or(&DUMMY).matches(token);
            match cred {
                Some(c) if matched && !token.is_empty() => Ok(&c.peer_id),
                Some(_) => Err(AuthRefusal::BadToken),
                None => Err(AuthRefusal::UnknownAccount),
            }
        }
        None => {
            // Check every credential so timing does not tell which one matched.
            let mut found = None;
            for c in creds {
                if c.matches(token) && found.is_none() {
                    found = Some(c.peer_id.as_str());
                }
            }
            // An empty token never logs in (config refuses one; this is the second lock).
            found
                .filter(|_| !token.is_empty())
                .ok_or(AuthRefusal::BadToken)
        }
    }
}

/// `/accounts/<user>/ilp/btp` → `Some(user)`.
pub fn user_from_path(path: &str) -> Option<&str> {
    path.strip_prefix("/accounts/")?
        .strip_suffix("/ilp/btp")
        .filter(|u| !u.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::btp::encode_auth;
    use bytes::BytesMut;

    fn frame(user: &[u8], token: &[u8]) -> BtpPacket {
        let mut out = BytesMut::new();
        encode_auth(&mut out, 1, user, token);
        BtpPacket::decode(out.freeze()).unwrap()
    }

    #[test]
    fn auth_rules() {
        let creds = [Credential::new("alice", "s1"), Credential::new("bob", "s2")];
        assert_eq!(
            authenticate(&frame(b"alice", b"s1"), None, &creds),
            Ok("alice")
        );
        assert_eq!(
            authenticate(&frame(b"alice", b"s2"), None, &creds),
            Err(AuthRefusal::BadToken)
        );
        assert_eq!(authenticate(&frame(b"", b"s2"), None, &creds), Ok("bob"));
        assert_eq!(
            authenticate(&frame(b"", b"s2"), Some("bob"), &creds),
            Ok("bob")
        );
        assert_eq!(
            authenticate(&frame(b"", b"s2"), Some("alice"), &creds),
            Err(AuthRefusal::BadToken)
        );
        assert_eq!(
            authenticate(&frame(b"carol", b"s2"), None, &creds),
            Err(AuthRefusal::UnknownAccount)
        );
        assert_eq!(user_from_path("/accounts/bob/ilp/btp"), Some("bob"));
        assert_eq!(user_from_path("/"), None);
    }
}
