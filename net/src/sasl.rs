//! SASL on the `SASL_PLAINTEXT` and `SASL_SSL` listeners: PLAIN, SCRAM-SHA-256 and
//! SCRAM-SHA-512 through `rsasl` (the exchanges and their crypto are the crate's, never ours),
//! against the SCRAM users of the metadata (`sluice_core::scram`).
//!
//! A connection on a SASL listener answers ApiVersions, SaslHandshake (17) and then
//! SaslAuthenticate (36) until the client has authenticated; its principal is then
//! `User:<name>` (the TLS principal, if any, is replaced, as Kafka does). The state machine lives
//! in `connection`; this module holds the settings, one exchange ([`SaslExchange`]) and the
//! credential arithmetic AlterUserScramCredentials needs.
//!
//! PLAIN checks the password against the user's SCRAM credential (SCRAM-SHA-512 first): the
//! password is salted and hashed as a SCRAM client would and compared with the stored key.
//! Every step runs on a blocking thread, because PBKDF2 over thousands of iterations takes
//! milliseconds the shard's other connections should not wait for.

use std::sync::Arc;
use std::time::Duration;

use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechanisms::scram::tools;
use rsasl::mechname::Mechname;
use rsasl::prelude::{SASLConfig, SASLServer, Session, SessionError, State};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, Validation, ValidationError};
use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256, Sha512};
use sluice_core::catalog::Catalog;
use sluice_core::scram::{ScramCredential, ScramMechanism};

/// Kafka's `sasl.server.max.receive.size`: the largest frame a client may send before it has
/// authenticated; a longer one closes the connection unread.
pub const UNAUTHENTICATED_FRAME_BYTES_MAX: usize = 512 * 1024;

/// A SASL mechanism Sluice serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    Scram(ScramMechanism),
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::Scram(m) => m.name(),
        }
    }
}

impl std::str::FromStr for SaslMechanism {
    type Err = String;

    fn from_str(name: &str) -> Result<SaslMechanism, String> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("PLAIN") {
            return Ok(SaslMechanism::Plain);
        }
        ScramMechanism::from_name(name)
            .map(SaslMechanism::Scram)
            .ok_or_else(|| {
                format!("{name:?} is not a SASL mechanism Sluice serves (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)")
            })
    }
}

/// The SASL listeners' settings.
#[derive(Debug, Clone)]
pub struct SaslSettings {
    /// Mechanisms offered, in the order SaslHandshake lists them (Kafka's
    /// `sasl.enabled.mechanisms`).
    pub mechanisms: Vec<SaslMechanism>,
    /// KIP-368's `connections.max.reauth.ms`: an authenticated session lasts this long, and the
    /// client must authenticate again on the same connection before it ends; `None`: forever.
    pub session_lifetime: Option<Duration>,
}

/// Who an exchange authenticated: the user name (validated, authorization id equal or absent).
struct Authenticated;

impl Validation for Authenticated {
    type Value = String;
}

/// Looks credentials up in the current catalog image, for rsasl's mechanisms.
struct CredentialStore {
    catalog: Arc<Catalog>,
}

fn scram_of(session_data: &SessionData) -> Option<ScramMechanism> {
    ScramMechanism::from_name(session_data.mechanism().mechanism.as_str())
}

impl SessionCallback for CredentialStore {
    fn callback(
        &self,
        session_data: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        let (Some(mechanism), Some(user)) = (scram_of(session_data), context.get_ref::<AuthId>())
        else {
            return Ok(());
        };
        let image = self.catalog.image();
        if let Some(c) = image.scram_users.get(user).and_then(|m| m.get(&mechanism)) {
            request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
                c.iterations,
                &c.salt,
                &c.stored_key,
                &c.server_key,
            ))?;
        }
        // No credential: the mechanism answers "unknown user" and the exchange fails.
        Ok(())
    }

    fn validate(
        &self,
        session_data: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let Some(user) = context.get_ref::<AuthId>() else {
            return Ok(());
        };
        // Kafka refuses to act for someone else: an authorization id (PLAIN sends an empty one
        // when there is none) must be the user's own.
        if context
            .get_ref::<AuthzId>()
            .is_some_and(|z| !z.is_empty() && z != user)
        {
            return Ok(());
        }
        let valid = if session_data.mechanism().mechanism.as_str() == "PLAIN" {
            let image = self.catalog.image();
            let password = context.get_ref::<Password>().unwrap_or_default();
            image.scram_users.get(user).is_some_and(|credentials| {
                // The strongest credential the user has.
                credentials
                    .iter()
                    .next_back()
                    .is_some_and(|(m, c)| password_matches(*m, c, password))
            })
        } else {
            // SCRAM calls this only once the client's proof matched the stored key.
            scram_of(session_data).is_some()
        };
        if valid {
            validate.with::<Authenticated, _>(|| Ok(user.to_string()))?;
        }
        Ok(())
    }
}

/// What one step of an exchange came to.
#[derive(Debug)]
pub enum StepOutcome {
    /// The exchange goes on: send these bytes and wait for the client's next token.
    Continue(Vec<u8>),
    /// The client is `user`; send these last bytes (possibly empty).
    Authenticated { user: String, last: Vec<u8> },
    /// Wrong credentials or a malformed token: answer SASL_AUTHENTICATION_FAILED and close.
    Failed(String),
}

/// The server's side of SASL for a shard: the mechanisms and where credentials come from.
#[derive(Clone)]
pub struct SaslServer {
    config: Arc<SASLConfig>,
    pub settings: Arc<SaslSettings>,
}

impl std::fmt::Debug for SaslServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslServer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SaslServer {
    pub fn new(catalog: Arc<Catalog>, settings: Arc<SaslSettings>) -> SaslServer {
        let config = SASLConfig::builder()
            .with_defaults()
            .with_callback(CredentialStore { catalog })
            .expect("rsasl accepts a callback with its default mechanisms");
        SaslServer { config, settings }
    }

    /// The mechanisms offered, by name.
    pub fn mechanism_names(&self) -> Vec<&'static str> {
        self.settings.mechanisms.iter().map(|m| m.name()).collect()
    }

    /// Starts an exchange with the mechanism a SaslHandshake names; `None` when that mechanism
    /// is not offered.
    pub fn start(&self, name: &str) -> Option<SaslExchange> {
        let mechanism = self
            .settings
            .mechanisms
            .iter()
            .copied()
            .find(|m| m.name() == name)?;
        let mechname = Mechname::parse(mechanism.name().as_bytes()).ok()?;
        let session = SASLServer::<Authenticated>::new(self.config.clone())
            .start_suggested(mechname)
            .ok()?;
        Some(SaslExchange { session, mechanism })
    }
}

/// One authentication exchange in progress on a connection.
pub struct SaslExchange {
    session: Session<Authenticated>,
    pub mechanism: SaslMechanism,
}

impl SaslExchange {
    /// Feeds the client's token to the mechanism, on a blocking thread (PBKDF2 is slow by
    /// design); the exchange comes back when it goes on.
    pub async fn step(mut self, token: Vec<u8>) -> (Option<SaslExchange>, StepOutcome) {
        let mechanism = self.mechanism;
        glommio::executor()
            .spawn_blocking(move || {
                let mut out = Vec::new();
                match self.session.step(Some(&token), &mut out) {
                    Ok(State::Running) => (Some(self), StepOutcome::Continue(out)),
                    Ok(State::Finished(_)) => match self.session.validation() {
                        Some(user) => (None, StepOutcome::Authenticated { user, last: out }),
                        None => (None, StepOutcome::Failed(failed(mechanism))),
                    },
                    Err(e) => (
                        None,
                        StepOutcome::Failed(format!("{}: {e}", failed(mechanism))),
                    ),
                }
            })
            .await
    }
}

/// The user a client's first token names — PLAIN's authcid, SCRAM's `n=` attribute (RFC 5802,
/// `=2C` and `=3D` unescaped) — unverified, for the audit trail of a failed attempt.
pub fn claimed_user(mechanism: SaslMechanism, first_token: &[u8]) -> Option<String> {
    let token = std::str::from_utf8(first_token).ok()?;
    let name = match mechanism {
        SaslMechanism::Plain => token.split('\0').nth(1)?.to_string(),
        SaslMechanism::Scram(_) => token
            .split(',')
            .skip(2) // the GS2 header: channel-binding flag, authzid
            .find_map(|attribute| attribute.strip_prefix("n="))?
            .replace("=2C", ",")
            .replace("=3D", "="),
    };
    (!name.is_empty()).then_some(name)
}

/// Kafka's message for a failed exchange.
fn failed(mechanism: SaslMechanism) -> String {
    format!(
        "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
        mechanism.name()
    )
}

/// RFC 5802's SaltedPassword: PBKDF2 of the password with the credential's salt and iterations.
pub fn salted_password(
    mechanism: ScramMechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    match mechanism {
        ScramMechanism::Sha256 => {
            let mut out = GenericArray::default();
            tools::hash_password::<Sha256>(password, iterations, salt, &mut out);
            out.to_vec()
        }
        ScramMechanism::Sha512 => {
            let mut out = GenericArray::default();
            tools::hash_password::<Sha512>(password, iterations, salt, &mut out);
            out.to_vec()
        }
    }
}

/// The stored form of a credential (StoredKey and ServerKey) from its salted password, as
/// AlterUserScramCredentials carries it.
pub fn credential_from_salted_password(
    mechanism: ScramMechanism,
    iterations: u32,
    salt: Vec<u8>,
    salted_password: &[u8],
) -> ScramCredential {
    let (stored_key, server_key) = match mechanism {
        ScramMechanism::Sha256 => {
            let (client_key, server_key) = tools::derive_keys::<Sha256>(salted_password);
            (Sha256::digest(client_key).to_vec(), server_key.to_vec())
        }
        ScramMechanism::Sha512 => {
            let (client_key, server_key) = tools::derive_keys::<Sha512>(salted_password);
            (Sha512::digest(client_key).to_vec(), server_key.to_vec())
        }
    };
    ScramCredential {
        iterations,
        salt,
        stored_key,
        server_key,
    }
}

/// Whether `password` is the one `credential` was made from.
pub fn password_matches(
    mechanism: ScramMechanism,
    credential: &ScramCredential,
    password: &[u8],
) -> bool {
    let salted = salted_password(mechanism, password, &credential.salt, credential.iterations);
    let derived =
        credential_from_salted_password(mechanism, credential.iterations, Vec::new(), &salted);
    derived.stored_key == credential.stored_key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claimed_user_is_read_from_the_first_token() {
        let scram = SaslMechanism::Scram(ScramMechanism::Sha256);
        assert_eq!(
            claimed_user(SaslMechanism::Plain, b"\0alice\0secret").as_deref(),
            Some("alice")
        );
        assert_eq!(
            claimed_user(scram, b"n,,n=bob=2Cjr=3D,r=fyko+d2lbbFgONRv9qkxdawL").as_deref(),
            Some("bob,jr=")
        );
        assert_eq!(
            claimed_user(scram, b"n,a=x,n=carol,r=1").as_deref(),
            Some("carol")
        );
        assert_eq!(claimed_user(scram, b"garbage"), None);
        assert_eq!(claimed_user(SaslMechanism::Plain, b"\xff\0x"), None);
    }

    #[test]
    fn a_credential_matches_its_password_only() {
        for mechanism in ScramMechanism::ALL {
            let salted = salted_password(mechanism, b"pencil", b"salt", 4096);
            let credential =
                credential_from_salted_password(mechanism, 4096, b"salt".to_vec(), &salted);
            sluice_core::scram::check_credential(mechanism, &credential).unwrap();
            assert!(password_matches(mechanism, &credential, b"pencil"));
            assert!(!password_matches(mechanism, &credential, b"pencil2"));
        }
    }

    /// A catalog holding `alice` with both SCRAM credentials of password `pencil`.
    fn catalog_with_alice(dir: &std::path::Path) -> Arc<Catalog> {
        let mut users = sluice_core::scram::ScramUsers::new();
        for mechanism in ScramMechanism::ALL {
            let salted = salted_password(mechanism, b"pencil", b"NaCl", 4096);
            users.entry("alice".into()).or_default().insert(
                mechanism,
                credential_from_salted_password(mechanism, 4096, b"NaCl".to_vec(), &salted),
            );
        }
        let file = serde_json::json!({ "format": 1, "topics": [], "scram_users": users });
        std::fs::write(dir.join("metadata.json"), file.to_string()).unwrap();
        Arc::new(Catalog::load(dir).unwrap())
    }

    /// Runs rsasl's own client against the server until the exchange ends.
    fn exchange(server: &SaslServer, mechanism: &str, user: &str, password: &str) -> StepOutcome {
        let client = rsasl::prelude::SASLClient::new(
            SASLConfig::with_credentials(None, user.into(), password.into()).unwrap(),
        );
        let name = Mechname::parse(mechanism.as_bytes()).unwrap();
        let mut client = client.start_suggested(&[name]).unwrap();
        let mut exchange = server.start(mechanism).expect("offered");
        let mut token = Vec::new();
        client.step(None, &mut token).unwrap();
        loop {
            let (next, outcome) =
                glommio::LocalExecutor::default().run(exchange.step(std::mem::take(&mut token)));
            match (next, outcome) {
                (Some(next), StepOutcome::Continue(bytes)) => {
                    client.step(Some(&bytes), &mut token).unwrap();
                    exchange = next;
                }
                (_, outcome) => return outcome,
            }
        }
    }

    #[test]
    fn rsasl_clients_authenticate_with_the_right_password_only() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Arc::new(SaslSettings {
            mechanisms: ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
                .iter()
                .map(|m| m.parse().unwrap())
                .collect(),
            session_lifetime: None,
        });
        let server = SaslServer::new(catalog_with_alice(dir.path()), settings);
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            match exchange(&server, mechanism, "alice", "pencil") {
                StepOutcome::Authenticated { user, .. } => assert_eq!(user, "alice"),
                other => panic!("{mechanism}: {other:?}"),
            }
            for (user, password) in [("alice", "pencil2"), ("bob", "pencil")] {
                match exchange(&server, mechanism, user, password) {
                    StepOutcome::Failed(message) => {
                        assert!(message.contains(mechanism), "{message}")
                    }
                    other => panic!("{mechanism} {user}/{password}: {other:?}"),
                }
            }
        }
        assert!(server.start("GSSAPI").is_none());
    }

    #[test]
    fn mechanisms_parse_by_kafka_name() {
        assert_eq!("plain".parse::<SaslMechanism>(), Ok(SaslMechanism::Plain));
        assert_eq!(
            "SCRAM-SHA-512".parse::<SaslMechanism>(),
            Ok(SaslMechanism::Scram(ScramMechanism::Sha512))
        );
        let err = "GSSAPI".parse::<SaslMechanism>().unwrap_err();
        assert!(err.contains("GSSAPI"), "{err}");
    }
}
