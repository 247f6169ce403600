//! Token verification: a signed JWT in, the [`Grants`] of a session out —
//! who it is and what it may do in which rooms. Pure: no I/O besides reading
//! a key file at start-up, no clock but the `now` it is given.
//!
//! # Token format
//!
//! A JWT (RFC 7519), compact form, signed with HS256 (shared secret,
//! `--auth-secret`) or, with `--auth-public-key`, RS256 / ES256 / EdDSA
//! (algorithm chosen by the key, never by the token). Claims:
//!
//! ```json
//! { "sub": "alice", "name": "Alice", "exp": 1767225600,
//!   "grants": [ { "room": "doc:acme/*", "rights": "rw" },
//!               { "room": "lobby",      "rights": "r" } ] }
//! ```
//!
//! - `sub` (required): user id, shown to other members as the member's user.
//! - `name` (optional): display name.
//! - `exp` (required): expiry, seconds since the Unix epoch. A token is
//!   refused at or after `exp`; a session is closed when it is reached.
//! - `grants` (required, may be empty): room patterns with rights. A pattern
//!   is an exact room id, or ends in `*` and matches every room id starting
//!   with what precedes it (`*` alone matches every room). `*` anywhere
//!   else is refused. Rights: `r` read only, `rp` read + own presence,
//!   cursor, typing and events, `rw` everything. When several grants match,
//!   the widest rights win.
//!
//! Signature checks are constant-time: `jsonwebtoken` (feature
//! `rust_crypto`) verifies HMAC tags with `hmac::Mac::verify_slice`, which
//! compares through `subtle::ConstantTimeEq`.

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a token was refused or a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The server requires a token and none was given.
    #[error("a token is required")]
    Missing,
    /// Not a well-formed JWT, or claims of the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not match, or the algorithm is not the key's.
    #[error("bad token signature")]
    BadSignature,
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// A grant's room pattern or rights are invalid.
    #[error("invalid grant: {0}")]
    BadGrant(String),
    /// The verification or signing key is unusable (start-up error).
    #[error("unusable key: {0}")]
    Key(String),
}

/// What a session may do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rights {
    /// `r`: receive the document and presence; send nothing but sync requests.
    #[serde(rename = "r")]
    Read,
    /// `rp`: read, plus own presence, cursor, typing and events.
    #[serde(rename = "rp")]
    Presence,
    /// `rw`: everything, including document updates.
    #[serde(rename = "rw")]
    Write,
}

impl Rights {
    /// May send document updates.
    pub fn can_write(self) -> bool {
        self == Rights::Write
    }

    /// May set its presence, cursor, typing, and broadcast events.
    pub fn can_presence(self) -> bool {
        self >= Rights::Presence
    }

    /// Parses `r`, `rp` or `rw`.
    pub fn parse(s: &str) -> Result<Rights, AuthError> {
        match s {
            "r" => Ok(Rights::Read),
            "rp" => Ok(Rights::Presence),
            "rw" => Ok(Rights::Write),
            other => Err(AuthError::BadGrant(format!(
                "rights {other:?}: expected r, rp or rw"
            ))),
        }
    }
}

/// One grant as carried in the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaim {
    /// Room pattern: exact, or ending in `*` (prefix).
    pub room: String,
    /// Rights in the matching rooms.
    pub rights: Rights,
}

/// The claims of a Chorus token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Room patterns and rights.
    pub grants: Vec<GrantClaim>,
}

/// A room pattern, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Exactly this room id.
    Exact(String),
    /// Every room id starting with this (possibly empty) prefix.
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, AuthError> {
        let (body, prefix) = match s.strip_suffix('*') {
            Some(body) => (body, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(AuthError::BadGrant(format!(
                "room pattern {s:?}: `*` is only allowed at the end"
            )));
        }
        if !prefix && body.is_empty() {
            return Err(AuthError::BadGrant("empty room pattern".into()));
        }
        Ok(if prefix {
            Pattern::Prefix(body.to_owned())
        } else {
            Pattern::Exact(body.to_owned())
        })
    }

    fn matches(&self, room: &str) -> bool {
        match self {
            Pattern::Exact(r) => r == room,
            Pattern::Prefix(p) => room.starts_with(p.as_str()),
        }
    }
}

/// What one session may do, in which rooms, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Authenticated user id (`sub`); `None` for anonymous sessions.
    pub user: Option<Arc<str>>,
    /// Display name, if the token had one.
    pub name: Option<String>,
    /// Expiry in seconds since the Unix epoch; `None` never expires.
    pub exp: Option<u64>,
    grants: Vec<(Pattern, Rights)>,
}

impl Grants {
    /// Anonymous session on a server without authentication: everything.
    pub fn open() -> Grants {
        Grants::anonymous(Rights::Write)
    }

    /// Anonymous session with `rights` in every room
    /// (`--allow-anonymous-read` gives [`Rights::Read`]).
    pub fn anonymous(rights: Rights) -> Grants {
        Grants {
            user: None,
            name: None,
            exp: None,
            grants: vec![(Pattern::Prefix(String::new()), rights)],
        }
    }

    /// Grants from checked claims.
    pub fn from_claims(claims: Claims) -> Result<Grants, AuthError> {
        if claims.sub.is_empty() {
            return Err(AuthError::Malformed("`sub` is empty".into()));
        }
        let grants = claims
            .grants
            .iter()
            .map(|g| Ok((Pattern::parse(&g.room)?, g.rights)))
            .collect::<Result<Vec<_>, AuthError>>()?;
        Ok(Grants {
            user: Some(Arc::from(claims.sub)),
            name: claims.name,
            exp: Some(claims.exp),
            grants,
        })
    }

    /// The widest rights any grant gives in `room`; `None`: may not join.
    pub fn rights(&self, room: &str) -> Option<Rights> {
        self.grants
            .iter()
            .filter(|(p, _)| p.matches(room))
            .map(|(_, r)| *r)
            .max()
    }
}

/// Checks tokens against one key. Cheap to share (`Arc`).
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// HS256 with a shared secret (at least 16 bytes).
    pub fn from_secret(secret: &[u8]) -> Result<Verifier, AuthError> {
        if secret.len() < 16 {
            return Err(AuthError::Key(
                "the auth secret must be at least 16 bytes".into(),
            ));
        }
        Ok(Verifier::new(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
        ))
    }

    /// A PEM public key: EdDSA (Ed25519), ES256 (P-256) or RS256 (RSA),
    /// tried in that order. The algorithm is fixed by the key.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Verifier, AuthError> {
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Verifier::new(key, Algorithm::EdDSA));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Verifier::new(key, Algorithm::ES256));
        }
        match DecodingKey::from_rsa_pem(pem) {
            Ok(key) => Ok(Verifier::new(key, Algorithm::RS256)),
            Err(e) => Err(AuthError::Key(format!(
                "not an Ed25519, P-256 or RSA public key in PEM: {e}"
            ))),
        }
    }

    /// Reads [`Verifier::from_public_key_pem`] from a file.
    pub fn from_public_key_file(path: &Path) -> Result<Verifier, AuthError> {
        let pem = std::fs::read(path)
            .map_err(|e| AuthError::Key(format!("reading {}: {e}", path.display())))?;
        Verifier::from_public_key_pem(&pem)
    }

    fn new(key: DecodingKey, alg: Algorithm) -> Verifier {
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier { key, validation }
    }

    /// Verifies `token` at `now` (seconds since the epoch) and returns its
    /// grants. A token whose `exp` is at or before `now` is [`AuthError::Expired`].
    pub fn verify(&self, token: &str, now: u64) -> Result<Grants, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    AuthError::BadSignature
                }
                ErrorKind::ExpiredSignature => AuthError::Expired,
                other => AuthError::Malformed(format!("{other:?}")),
            },
        )?;
        if data.claims.exp <= now {
            return Err(AuthError::Expired);
        }
        Grants::from_claims(data.claims)
    }
}

/// Signs `claims` with HS256 and `secret` (the `chorus token` subcommand).
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    for g in &claims.grants {
        Pattern::parse(&g.room)?;
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Key(e.to_string()))
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-test-secret";
    /// jsonwebtoken also checks `exp` against the real clock.
    static N: std::sync::LazyLock<u64> = std::sync::LazyLock::new(now_secs);

    fn claims(room: &str, rights: Rights, exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            name: Some("Alice".into()),
            exp,
            grants: vec![GrantClaim {
                room: room.into(),
                rights,
            }],
        }
    }

    #[test]
    fn round_trip_and_patterns() {
        let v = Verifier::from_secret(SECRET).unwrap();
        let t = mint(SECRET, &claims("doc:acme/*", Rights::Write, *N + 2_000)).unwrap();
        let g = v.verify(&t, *N + 1_000).unwrap();
        assert_eq!(g.user.as_deref(), Some("alice"));
        assert_eq!(g.name.as_deref(), Some("Alice"));
        assert_eq!(g.exp, Some(*N + 2_000));
        assert_eq!(g.rights("doc:acme/plan"), Some(Rights::Write));
        assert_eq!(g.rights("doc:acme/"), Some(Rights::Write));
        assert_eq!(g.rights("doc:acme"), None);
        assert_eq!(g.rights("doc:other/x"), None);
    }

    #[test]
    fn widest_matching_grant_wins() {
        let mut c = claims("*", Rights::Read, *N + 2_000);
        c.grants.push(GrantClaim {
            room: "team".into(),
            rights: Rights::Presence,
        });
        let g = Grants::from_claims(c).unwrap();
        assert_eq!(g.rights("team"), Some(Rights::Presence));
        assert_eq!(g.rights("anything"), Some(Rights::Read));
        assert!(!Rights::Read.can_presence() && !Rights::Read.can_write());
        assert!(Rights::Presence.can_presence() && !Rights::Presence.can_write());
        assert!(Rights::Write.can_presence() && Rights::Write.can_write());
    }

    #[test]
    fn refusals() {
        let v = Verifier::from_secret(SECRET).unwrap();
        let t = mint(SECRET, &claims("a", Rights::Write, *N + 2_000)).unwrap();
        assert_eq!(v.verify(&t, *N + 2_000), Err(AuthError::Expired));
        assert_eq!(v.verify(&t, *N + 5_000), Err(AuthError::Expired));
        let other = mint(
            b"another-secret-of-16+",
            &claims("a", Rights::Write, *N + 2_000),
        )
        .unwrap();
        assert_eq!(v.verify(&other, *N + 1_000), Err(AuthError::BadSignature));
        // Tampered payload, same signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = mint(SECRET, &claims("*", Rights::Write, *N + 2_000)).unwrap();
        let forged_payload = forged.split('.').nth(1).unwrap().to_owned();
        parts[1] = &forged_payload;
        assert_eq!(
            v.verify(&parts.join("."), *N + 1_000),
            Err(AuthError::BadSignature)
        );
        assert!(matches!(
            v.verify("garbage", *N + 1_000),
            Err(AuthError::Malformed(_))
        ));
        // alg=none is not an accepted algorithm.
        let none = format!("eyJhbGciOiJub25lIn0.{}.", t.split('.').nth(1).unwrap());
        assert!(v.verify(&none, *N + 1_000).is_err());
        assert!(matches!(
            mint(SECRET, &claims("doc:*/x", Rights::Write, *N + 2_000)),
            Err(AuthError::BadGrant(_))
        ));
        assert!(Verifier::from_secret(b"short").is_err());
        assert!(Rights::parse("x").is_err());
        assert_eq!(Rights::parse("rp"), Ok(Rights::Presence));
    }

    #[test]
    fn anonymous_modes() {
        assert_eq!(Grants::open().rights("x"), Some(Rights::Write));
        let ro = Grants::anonymous(Rights::Read);
        assert_eq!(ro.rights("x"), Some(Rights::Read));
        assert_eq!(ro.user, None);
    }
}
