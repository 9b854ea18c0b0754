//! API keys and the roles they grant: `ingest` (post readings to the
//! gateway) and `read` (query-api's analytics). Clients send
//! `Authorization: Bearer <key>`.
//!
//! Keys come from `API_KEYS` (comma-separated `role:key` entries) and/or a
//! file named by `API_KEYS_FILE` (one entry per line, `#` comments), so a
//! secret store can mount them. A key may hold both roles: `ingest+read:key`.
//! Serving without keys takes an explicit `AUTH_DISABLED=true`: a service
//! given neither keys nor that switch refuses to start.
//!
//! Only SHA-256 digests of the keys are kept, and a presented key is compared
//! with every one of them in constant time, so neither the answer's timing nor
//! a memory dump gives a key away.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The `WWW-Authenticate` value a 401 answer carries.
const CHALLENGE: &str = "Bearer realm=\"energy-ingestion-engine\"";

/// Shortest key accepted: shorter ones could be guessed.
pub const MIN_KEY_LENGTH: usize = 16;

/// What a key allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Post readings to `ingest-gateway`.
    Ingest,
    /// Read `query-api`'s analytics and device state.
    Read,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
        })
    }
}

/// Settings for API keys, shared by both HTTP services. `Debug` shows how
/// many entries there are, never a key.
#[derive(Args, Clone, Default)]
pub struct AuthArgs {
    /// API keys as comma-separated `role:key` entries; roles are `ingest` and
    /// `read`, `ingest+read:key` grants both. Keys are at least 16 characters
    #[arg(long, env = "API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// File of API keys, one `role:key` entry per line (`#` starts a comment);
    /// read once at start-up, in addition to API_KEYS
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Serve without API keys: anyone who can reach the service may ingest and
    /// read. For local development only; must be set explicitly
    #[arg(long, env = "AUTH_DISABLED")]
    pub auth_disabled: bool,
}

impl fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthArgs")
            .field(
                "api_keys",
                &self
                    .api_keys
                    .as_ref()
                    .map(|list| format!("<{} entries>", list.split(',').count())),
            )
            .field("api_keys_file", &self.api_keys_file)
            .field("auth_disabled", &self.auth_disabled)
            .finish()
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing API key: send the header `Authorization: Bearer <key>`")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("this API key lacks the {0} role")]
    Forbidden(Role),
}

impl AuthError {
    /// 401 for a missing or unknown key, 403 for a known key without the role.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::Missing | AuthError::Invalid => http::StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => http::StatusCode::FORBIDDEN,
        }
    }

    /// The `WWW-Authenticate` value of a 401 answer (RFC 6750); a 403 has none.
    pub fn challenge(&self) -> Option<&'static str> {
        (self.status() == http::StatusCode::UNAUTHORIZED).then_some(CHALLENGE)
    }
}

#[derive(Clone)]
struct Key {
    digest: [u8; 32],
    ingest: bool,
    read: bool,
}

impl Key {
    fn grants(&self, role: Role) -> bool {
        match role {
            Role::Ingest => self.ingest,
            Role::Read => self.read,
        }
    }
}

/// The keys a service accepts, or none needed when authentication is off.
#[derive(Clone)]
pub struct ApiKeys {
    /// `None`: authentication explicitly disabled.
    keys: Option<Arc<[Key]>>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.keys {
            None => f.write_str("ApiKeys(disabled)"),
            Some(keys) => write!(f, "ApiKeys({} keys)", keys.len()),
        }
    }
}

impl ApiKeys {
    /// Every request is allowed.
    pub fn disabled() -> Self {
        Self { keys: None }
    }

    /// The keys from the settings; an error names a bad entry (by position,
    /// never by its secret) or the missing switch.
    pub fn from_args(args: &AuthArgs) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        if let Some(list) = &args.api_keys {
            keys.extend(parse_entries(list.split(','), "API_KEYS")?);
        }
        if let Some(path) = &args.api_keys_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read API_KEYS_FILE {}", path.display()))?;
            let lines = text
                .lines()
                .map(|line| line.split('#').next().unwrap_or(""));
            keys.extend(parse_entries(lines, &path.display().to_string())?);
        }
        match (args.auth_disabled, keys.is_empty()) {
            (true, true) => Ok(Self::disabled()),
            (true, false) => {
                bail!("AUTH_DISABLED is set and API keys are given: choose one")
            }
            (false, true) => bail!(
                "no API keys: set API_KEYS or API_KEYS_FILE, or AUTH_DISABLED=true to serve \
                 without authentication (local development only)"
            ),
            (false, false) => Ok(Self {
                keys: Some(keys.into()),
            }),
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.keys.is_none()
    }

    /// Whether the request's `Authorization` header carries a key with `role`.
    pub fn authorize(&self, headers: &http::HeaderMap, role: Role) -> Result<(), AuthError> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let presented = bearer_token(headers)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every key is compared, whatever matched: no early exit to time.
        let mut found: Option<&Key> = None;
        for key in keys.iter() {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        match found {
            None => Err(AuthError::Invalid),
            Some(key) if key.grants(role) => Ok(()),
            Some(_) => Err(AuthError::Forbidden(role)),
        }
    }
}

/// Middleware letting through only requests whose key holds the role in its
/// state, for `axum::middleware::from_fn_with_state((keys, role), require)`;
/// a refusal is answered 401/403 by the shell's one mapping
/// (`crate::shell::ShellError`).
pub async fn require(
    axum::extract::State((keys, role)): axum::extract::State<(ApiKeys, Role)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, AuthError> {
    keys.authorize(request.headers(), role)?;
    Ok(next.run(request).await)
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any case).
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(AuthError::Missing);
    };
    let value = value.to_str().map_err(|_| AuthError::Invalid)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Invalid);
    }
    Ok(token.trim())
}

/// Parses `role[+role]:key` entries; blank ones are skipped.
fn parse_entries<'a>(
    entries: impl Iterator<Item = &'a str>,
    source: &str,
) -> anyhow::Result<Vec<Key>> {
    let mut keys = Vec::new();
    for (position, entry) in entries.enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let number = position + 1;
        let (roles, secret) = entry.split_once(':').with_context(|| {
            format!("{source}: entry {number} is not `role:key` (roles: ingest, read)")
        })?;
        let mut key = Key {
            digest: Sha256::digest(secret.as_bytes()).into(),
            ingest: false,
            read: false,
        };
        for role in roles.split('+') {
            match role.trim() {
                "ingest" => key.ingest = true,
                "read" => key.read = true,
                other => bail!(
                    "{source}: entry {number} has unknown role {other:?} (roles: ingest, read)"
                ),
            }
        }
        if secret.chars().count() < MIN_KEY_LENGTH {
            bail!(
                "{source}: the key of entry {number} is shorter than {MIN_KEY_LENGTH} characters"
            );
        }
        if !secret
            .chars()
            .all(|c| c.is_ascii_graphic() && c != ',' && c != '#')
        {
            bail!("{source}: the key of entry {number} has characters other than visible ASCII (`,` and `#` excluded)");
        }
        if keys.iter().any(|known: &Key| known.digest == key.digest) {
            bail!("{source}: the key of entry {number} is given twice");
        }
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INGEST_KEY: &str = "ingest-key-0123456789";
    const READ_KEY: &str = "read-key-0123456789ab";
    const BOTH_KEY: &str = "both-key-0123456789ab";

    fn keys() -> ApiKeys {
        ApiKeys::from_args(&AuthArgs {
            api_keys: Some(format!(
                "ingest:{INGEST_KEY}, read:{READ_KEY},ingest+read:{BOTH_KEY}"
            )),
            ..Default::default()
        })
        .unwrap()
    }

    fn headers(authorization: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    #[test]
    fn a_key_opens_exactly_its_roles() {
        let keys = keys();
        let bearer = |key: &str| headers(&format!("Bearer {key}"));
        assert_eq!(keys.authorize(&bearer(INGEST_KEY), Role::Ingest), Ok(()));
        assert_eq!(
            keys.authorize(&bearer(INGEST_KEY), Role::Read),
            Err(AuthError::Forbidden(Role::Read))
        );
        assert_eq!(keys.authorize(&bearer(READ_KEY), Role::Read), Ok(()));
        assert_eq!(
            keys.authorize(&bearer(READ_KEY), Role::Ingest),
            Err(AuthError::Forbidden(Role::Ingest))
        );
        assert_eq!(keys.authorize(&bearer(BOTH_KEY), Role::Ingest), Ok(()));
        assert_eq!(keys.authorize(&bearer(BOTH_KEY), Role::Read), Ok(()));
        assert_eq!(
            keys.authorize(&headers(&format!("bearer {READ_KEY}")), Role::Read),
            Ok(())
        );
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_refused() {
        let keys = keys();
        assert_eq!(
            keys.authorize(&http::HeaderMap::new(), Role::Read),
            Err(AuthError::Missing)
        );
        for header in [
            READ_KEY.to_owned(),
            format!("Basic {READ_KEY}"),
            "Bearer ".to_owned(),
            format!("Bearer {READ_KEY}x"),
            format!("Bearer {}", &READ_KEY[1..]),
        ] {
            assert_eq!(
                keys.authorize(&headers(&header), Role::Read),
                Err(AuthError::Invalid),
                "{header}"
            );
        }
        assert_eq!(AuthError::Missing.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(
            AuthError::Forbidden(Role::Read).status(),
            http::StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn disabled_only_when_asked_and_never_with_keys() {
        let refused = ApiKeys::from_args(&AuthArgs::default()).unwrap_err();
        assert!(
            refused.to_string().contains("AUTH_DISABLED=true"),
            "{refused}"
        );
        let disabled = ApiKeys::from_args(&AuthArgs {
            auth_disabled: true,
            ..Default::default()
        })
        .unwrap();
        assert!(disabled.is_disabled());
        assert_eq!(
            disabled.authorize(&http::HeaderMap::new(), Role::Ingest),
            Ok(())
        );
        assert!(ApiKeys::from_args(&AuthArgs {
            auth_disabled: true,
            api_keys: Some(format!("read:{READ_KEY}")),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn bad_entries_are_named_without_their_secret() {
        for (list, expected) in [
            ("read", "entry 1 is not `role:key`"),
            ("write:0123456789abcdef", "unknown role \"write\""),
            ("read:short", "shorter than 16"),
            (
                "read:0123456789abcdef,ingest:0123456789abcdef",
                "entry 2 is given twice",
            ),
            ("read:0123456789 abcdef", "other than visible ASCII"),
        ] {
            let error = ApiKeys::from_args(&AuthArgs {
                api_keys: Some(list.to_owned()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(error.contains(expected), "{list}: {error}");
            assert!(!error.contains("0123456789"), "{error} shows a secret");
        }
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let args = AuthArgs {
            api_keys: Some(format!("read:{READ_KEY},ingest:{INGEST_KEY}")),
            ..Default::default()
        };
        let shown = format!("{args:?}");
        assert!(shown.contains("<2 entries>"), "{shown}");
        assert!(
            !shown.contains(READ_KEY) && !shown.contains(INGEST_KEY),
            "{shown}"
        );
    }

    #[test]
    fn keys_come_from_a_file_with_comments() {
        let path = std::env::temp_dir().join(format!("api-keys-{}", std::process::id()));
        std::fs::write(
            &path,
            format!("# fleet A\ningest:{INGEST_KEY}  # charger 7\n\nread:{READ_KEY}\n"),
        )
        .unwrap();
        let keys = ApiKeys::from_args(&AuthArgs {
            api_keys_file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        let bearer = |key: &str| headers(&format!("Bearer {key}"));
        assert_eq!(keys.authorize(&bearer(INGEST_KEY), Role::Ingest), Ok(()));
        assert_eq!(keys.authorize(&bearer(READ_KEY), Role::Read), Ok(()));
    }
}
