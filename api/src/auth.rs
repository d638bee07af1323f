//! Identity: argon2id password hashing, opaque bearer tokens (stored only as
//! SHA-256 hashes) and the viewer a request acts as.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use graph::model::{Role, User};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Prefix of every bearer token, so leaked tokens are easy to recognise.
pub const TOKEN_PREFIX: &str = "mq_";

/// Who a request acts as.
#[derive(Clone, Debug)]
pub enum Viewer {
    /// No Authorization header.
    Anonymous,
    /// A token was sent but is unknown, expired or revoked.
    BadToken,
    /// A signed-in user, with the hash of the token used.
    User {
        /// The user.
        user: User,
        /// SHA-256 of the bearer token of this request.
        token_hash: [u8; 32],
    },
}

impl Viewer {
    /// The signed-in user, or UNAUTHENTICATED.
    pub fn require(&self) -> Result<&User, ApiError> {
        match self {
            Viewer::User { user, .. } => Ok(user),
            Viewer::Anonymous => Err(ApiError::sign_in()),
            Viewer::BadToken => Err(bad_token()),
        }
    }

    /// The signed-in user with one of `roles`, else UNAUTHENTICATED/FORBIDDEN.
    pub fn require_role(&self, roles: &[Role], action: &str) -> Result<&User, ApiError> {
        let user = self.require()?;
        if roles.contains(&user.role) {
            Ok(user)
        } else {
            Err(ApiError::Forbidden(format!("{action} needs one of the roles {}", role_names(roles))))
        }
    }

    /// The signed-in user, `None` when anonymous, for fields that answer
    /// anonymous viewers too; a bad token is UNAUTHENTICATED there as well,
    /// not anonymous: its client expects its user's answer, and an empty
    /// one would hide that it must sign in again.
    pub fn optional(&self) -> Result<Option<&User>, ApiError> {
        match self {
            Viewer::User { user, .. } => Ok(Some(user)),
            Viewer::Anonymous => Ok(None),
            Viewer::BadToken => Err(bad_token()),
        }
    }

    /// The user, if signed in with a valid token.
    pub fn user(&self) -> Option<&User> {
        match self {
            Viewer::User { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Whether the viewer is an admin.
    pub fn is_admin(&self) -> bool {
        self.user().is_some_and(|user| user.role == Role::Admin)
    }
}

/// The error for a token that is unknown, expired or revoked.
pub fn bad_token() -> ApiError {
    ApiError::Unauthenticated("the token is invalid, expired or revoked; sign in again".into())
}

fn role_names(roles: &[Role]) -> String {
    roles.iter().map(|role| format!("{role:?}").to_uppercase()).collect::<Vec<_>>().join(", ")
}

/// Hashes a password with argon2id at the OWASP-recommended parameters
/// (19 MiB, 2 passes, 1 lane). CPU-heavy: call from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|_| ApiError::Internal)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| ApiError::Internal)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| ApiError::Internal)
}

/// Checks a password against a stored hash. With no hash (an unknown email
/// or an imported account), it still does the work of one verification so
/// the answer takes as long either way.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    // A hash of a random password, computed once, stands in for a missing one.
    static STAND_IN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stand_in = STAND_IN.get_or_init(|| hash_password(&new_token()).unwrap_or_default());
    let (hash, real) = match stored {
        Some(hash) => (hash, true),
        None => (stand_in.as_str(), false),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && real
}

/// A new bearer token: 256 random bits, hex, behind a recognisable prefix.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 64);
    token.push_str(TOKEN_PREFIX);
    for byte in bytes {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

/// Opens a session for `user`, valid for `ttl_ms`, and returns its new
/// bearer token. Blocking (the session is flushed before it is returned).
pub fn issue_token(graph: &graph::Graph, user: graph::ids::UserId, ttl_ms: i64) -> Result<String, ApiError> {
    let token = new_token();
    let expires_at_ms = graph::now_ms().saturating_add(ttl_ms);
    graph.open_session(token_hash(&token), user, expires_at_ms)?;
    Ok(token)
}

/// Opens one session per user in one durable write and returns their new
/// bearer tokens, in order (bulk minting for load tests). Blocking.
pub fn issue_tokens(graph: &graph::Graph, users: &[graph::ids::UserId], ttl_ms: i64) -> Result<Vec<String>, ApiError> {
    let expires_at_ms = graph::now_ms().saturating_add(ttl_ms);
    let tokens: Vec<String> = users.iter().map(|_| new_token()).collect();
    let sessions: Vec<([u8; 32], graph::ids::UserId)> =
        tokens.iter().zip(users).map(|(token, &user)| (token_hash(token), user)).collect();
    graph.open_sessions(&sessions, expires_at_ms)?;
    Ok(tokens)
}

/// What is stored for a token: its SHA-256.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_random_bits() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse", Some(&hash)));
        assert!(!verify_password("wrong horse", Some(&hash)));
        assert!(!verify_password("correct horse", None));
    }

    #[test]
    fn bearer_header_is_parsed() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
