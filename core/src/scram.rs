//! SCRAM credentials as the metadata stores them (KIP-554): per user and mechanism, RFC 5802's
//! salt, iteration count, StoredKey and ServerKey. Never the password, nor the salted password
//! the client sent in AlterUserScramCredentials: those are turned into the two keys before they
//! reach here (`sluice_net::sasl`).
//!
//! The same credentials answer SASL PLAIN: the password a PLAIN client sends is salted and hashed
//! as a SCRAM client would, and compared with the stored key (Redpanda does the same), so one
//! user store serves every mechanism.
//!
//! Invariants of a stored credential ([`check_credential`]): Kafka's iteration bounds, a
//! non-empty salt, keys of the mechanism's digest size.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Kafka's SCRAM mechanisms (`ScramMechanism` codes 1 and 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// From Kafka's code (AlterUserScramCredentials, DescribeUserScramCredentials).
    pub fn from_kafka(code: i8) -> Option<ScramMechanism> {
        match code {
            1 => Some(ScramMechanism::Sha256),
            2 => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    pub fn kafka_code(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Bytes of the digest (and so of StoredKey and ServerKey).
    pub fn digest_bytes(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }
}

/// Kafka's bounds on a credential's PBKDF2 iterations.
pub const ITERATIONS_MIN: u32 = 4096;
pub const ITERATIONS_MAX: u32 = 16384;

/// One user's credential for one mechanism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    pub iterations: u32,
    #[serde(with = "base64_bytes")]
    pub salt: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub stored_key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub server_key: Vec<u8>,
}

/// Every user's credentials: user name → mechanism → credential.
pub type ScramUsers = BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>;

/// One change of AlterUserScramCredentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScramChange {
    Upsert {
        user: String,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    },
    Delete {
        user: String,
        mechanism: ScramMechanism,
    },
}

impl ScramChange {
    pub fn user(&self) -> &str {
        match self {
            ScramChange::Upsert { user, .. } | ScramChange::Delete { user, .. } => user,
        }
    }

    /// What the change does, for logs (never the credential itself): `set SCRAM-SHA-256`.
    pub fn action(&self) -> String {
        match self {
            ScramChange::Upsert { mechanism, .. } => format!("set {}", mechanism.name()),
            ScramChange::Delete { mechanism, .. } => format!("deleted {}", mechanism.name()),
        }
    }

    /// Applies the change to `users`; a deletion of a credential that does not exist changes
    /// nothing and says so.
    pub fn apply(&self, users: &mut ScramUsers) -> Result<(), String> {
        match self {
            ScramChange::Upsert {
                user,
                mechanism,
                credential,
            } => {
                check_credential(*mechanism, credential)?;
                users
                    .entry(user.clone())
                    .or_default()
                    .insert(*mechanism, credential.clone());
                Ok(())
            }
            ScramChange::Delete { user, mechanism } => {
                let Some(credentials) = users.get_mut(user) else {
                    return Err(format!("user {user} has no credential"));
                };
                if credentials.remove(mechanism).is_none() {
                    return Err(format!(
                        "user {user} has no {} credential",
                        mechanism.name()
                    ));
                }
                if credentials.is_empty() {
                    users.remove(user);
                }
                Ok(())
            }
        }
    }
}

/// The invariants of a stored credential.
pub fn check_credential(
    mechanism: ScramMechanism,
    credential: &ScramCredential,
) -> Result<(), String> {
    if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&credential.iterations) {
        return Err(format!(
            "{} iterations: must be {ITERATIONS_MIN} to {ITERATIONS_MAX}",
            credential.iterations
        ));
    }
    if credential.salt.is_empty() {
        return Err("the salt is empty".into());
    }
    let size = mechanism.digest_bytes();
    if credential.stored_key.len() != size || credential.server_key.len() != size {
        return Err(format!("{} keys are {size} bytes", mechanism.name()));
    }
    Ok(())
}

/// Checks every stored credential (a metadata file read at start-up).
pub fn check_users(users: &ScramUsers) -> Result<(), String> {
    for (user, credentials) in users {
        if user.is_empty() {
            return Err("a SCRAM user with an empty name".into());
        }
        for (mechanism, credential) in credentials {
            check_credential(*mechanism, credential)
                .map_err(|e| format!("user {user}, {}: {e}", mechanism.name()))?;
        }
    }
    Ok(())
}

/// Bytes as standard base64 in JSON.
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(mechanism: ScramMechanism) -> ScramCredential {
        ScramCredential {
            iterations: 4096,
            salt: b"salt".to_vec(),
            stored_key: vec![1; mechanism.digest_bytes()],
            server_key: vec![2; mechanism.digest_bytes()],
        }
    }

    #[test]
    fn changes_apply_and_a_missing_credential_cannot_be_deleted() {
        let mut users = ScramUsers::new();
        let upsert = ScramChange::Upsert {
            user: "alice".into(),
            mechanism: ScramMechanism::Sha512,
            credential: credential(ScramMechanism::Sha512),
        };
        upsert.apply(&mut users).unwrap();
        let delete_256 = ScramChange::Delete {
            user: "alice".into(),
            mechanism: ScramMechanism::Sha256,
        };
        assert!(delete_256.apply(&mut users).is_err());
        assert_eq!(users["alice"].len(), 1);
        ScramChange::Delete {
            user: "alice".into(),
            mechanism: ScramMechanism::Sha512,
        }
        .apply(&mut users)
        .unwrap();
        assert!(users.is_empty(), "a user without credentials is gone");
    }

    #[test]
    fn bad_credentials_are_refused() {
        let mut short_key = credential(ScramMechanism::Sha512);
        short_key.stored_key.truncate(32);
        assert!(check_credential(ScramMechanism::Sha512, &short_key).is_err());
        let mut few = credential(ScramMechanism::Sha256);
        few.iterations = 4095;
        assert!(check_credential(ScramMechanism::Sha256, &few).is_err());
        let mut no_salt = credential(ScramMechanism::Sha256);
        no_salt.salt.clear();
        assert!(check_credential(ScramMechanism::Sha256, &no_salt).is_err());
    }

    #[test]
    fn credentials_round_trip_through_json_with_base64_bytes() {
        let mut users = ScramUsers::new();
        users
            .entry("bob".into())
            .or_default()
            .insert(ScramMechanism::Sha256, credential(ScramMechanism::Sha256));
        let json = serde_json::to_string(&users).unwrap();
        assert!(json.contains("\"SCRAM-SHA-256\""), "{json}");
        assert!(json.contains("\"salt\":\"c2FsdA==\""), "{json}");
        let back: ScramUsers = serde_json::from_str(&json).unwrap();
        assert_eq!(back, users);
        check_users(&back).unwrap();
    }
}
