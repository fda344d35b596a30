//! `sluice user create|list|delete`: SCRAM users through AlterUserScramCredentials and
//! DescribeUserScramCredentials (KIP-554), as Kafka's `kafka-configs.sh --entity-type users`
//! manages them. The password is salted and hashed here (PBKDF2 through rsasl's SCRAM tools,
//! a fresh random salt per credential); only the salted password travels, and the broker keeps
//! only the keys derived from it.

use std::io::BufRead;

use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::scram::{ScramMechanism, ITERATIONS_MAX, ITERATIONS_MIN};

use super::client::ApiUse;
use super::{error_text, print_json, Connection, Output, Result};

const DESCRIBE_USER_SCRAM_CREDENTIALS: ApiUse = ApiUse {
    key: ApiKey::DescribeUserScramCredentials,
    min: 0,
    max: 0,
};
const ALTER_USER_SCRAM_CREDENTIALS: ApiUse = ApiUse {
    key: ApiKey::AlterUserScramCredentials,
    min: 0,
    max: 0,
};

/// Bytes of random salt per credential.
const SALT_BYTES: usize = 32;

/// A SCRAM mechanism on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MechanismArg {
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl MechanismArg {
    fn mechanism(self) -> ScramMechanism {
        match self {
            MechanismArg::ScramSha256 => ScramMechanism::Sha256,
            MechanismArg::ScramSha512 => ScramMechanism::Sha512,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Creates a user, or sets a new password: a SCRAM credential per mechanism (both unless
    /// --mechanism says). The password comes from --password, else SLUICE_USER_PASSWORD,
    /// else the first line of stdin.
    Create {
        name: String,
        #[arg(long, env = "SLUICE_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Only this mechanism (repeatable).
        #[arg(long, value_enum)]
        mechanism: Vec<MechanismArg>,
        /// PBKDF2 iterations (4096 to 16384).
        #[arg(long, default_value_t = ITERATIONS_MIN)]
        iterations: u32,
        #[command(flatten)]
        connection: Connection,
    },
    /// The users and their mechanisms (never a key or a salt).
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Deletes a user's credentials (every mechanism unless --mechanism says).
    Delete {
        name: String,
        #[arg(long, value_enum)]
        mechanism: Vec<MechanismArg>,
        #[command(flatten)]
        connection: Connection,
    },
}

pub fn user(command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Create {
            name,
            password,
            mechanism,
            iterations,
            connection,
        } => {
            if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
                return Err(format!(
                    "--iterations {iterations}: must be {ITERATIONS_MIN} to {ITERATIONS_MAX}"
                ));
            }
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .map_err(|e| format!("reading the password from stdin: {e}"))?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if password.is_empty() {
                return Err("the password is empty".into());
            }
            let mut upsertions = Vec::new();
            for mechanism in mechanisms(&mechanism) {
                let mut salt = [0u8; SALT_BYTES];
                getrandom::getrandom(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
                let salted = sluice_net::sasl::salted_password(
                    mechanism,
                    password.as_bytes(),
                    &salt,
                    iterations,
                );
                upsertions.push(
                    ScramCredentialUpsertion::default()
                        .with_name(StrBytes::from(name.clone()))
                        .with_mechanism(mechanism.kafka_code())
                        .with_iterations(iterations as i32)
                        .with_salt(salt.to_vec().into())
                        .with_salted_password(salted.into()),
                );
            }
            alter(
                &connection,
                AlterUserScramCredentialsRequest::default().with_upsertions(upsertions),
            )?;
            println!("user {name} set");
            Ok(())
        }
        UserCommand::List { connection, output } => {
            let response: DescribeUserScramCredentialsResponse =
                connection
                    .client()?
                    .call(None, DESCRIBE_USER_SCRAM_CREDENTIALS, |_| {
                        DescribeUserScramCredentialsRequest::default()
                    })?;
            if response.error_code != 0 {
                return Err(error_text(
                    response.error_code,
                    response.error_message.as_ref(),
                ));
            }
            let users: Vec<(String, Vec<(&str, i32)>)> = response
                .results
                .iter()
                .map(|r| {
                    let mechanisms = r
                        .credential_infos
                        .iter()
                        .map(|c| {
                            let name = ScramMechanism::from_kafka(c.mechanism)
                                .map_or("UNKNOWN", |m| m.name());
                            (name, c.iterations)
                        })
                        .collect();
                    (r.user.to_string(), mechanisms)
                })
                .collect();
            if output == Output::Json {
                return print_json(&serde_json::json!(users
                    .iter()
                    .map(|(user, mechanisms)| serde_json::json!({
                        "user": user,
                        "credentials": mechanisms
                            .iter()
                            .map(|(m, i)| serde_json::json!({ "mechanism": m, "iterations": i }))
                            .collect::<Vec<_>>(),
                    }))
                    .collect::<Vec<_>>()));
            }
            for (user, mechanisms) in users {
                let listed: Vec<String> = mechanisms
                    .iter()
                    .map(|(m, i)| format!("{m} (iterations {i})"))
                    .collect();
                println!("{user} {}", listed.join(", "));
            }
            Ok(())
        }
        UserCommand::Delete {
            name,
            mechanism,
            connection,
        } => {
            let deletions = mechanisms(&mechanism)
                .into_iter()
                .map(|m| {
                    ScramCredentialDeletion::default()
                        .with_name(StrBytes::from(name.clone()))
                        .with_mechanism(m.kafka_code())
                })
                .collect::<Vec<_>>();
            let mut request = AlterUserScramCredentialsRequest::default().with_deletions(deletions);
            if mechanism.is_empty() {
                // Every mechanism the user has: deleting one it lacks would be an error.
                let described: DescribeUserScramCredentialsResponse =
                    connection
                        .client()?
                        .call(None, DESCRIBE_USER_SCRAM_CREDENTIALS, |_| {
                            DescribeUserScramCredentialsRequest::default()
                        })?;
                let held: Vec<i8> = described
                    .results
                    .iter()
                    .filter(|r| r.user.as_str() == name)
                    .flat_map(|r| r.credential_infos.iter().map(|c| c.mechanism))
                    .collect();
                if held.is_empty() {
                    return Err(format!("no user named {name}"));
                }
                request.deletions.retain(|d| held.contains(&d.mechanism));
            }
            alter(&connection, request)?;
            println!("user {name} deleted");
            Ok(())
        }
    }
}

/// The mechanisms named, or both.
fn mechanisms(named: &[MechanismArg]) -> Vec<ScramMechanism> {
    if named.is_empty() {
        return ScramMechanism::ALL.to_vec();
    }
    let mut chosen: Vec<ScramMechanism> = named.iter().map(|m| m.mechanism()).collect();
    chosen.dedup();
    chosen
}

/// Sends the change to the cluster's controller (in a cluster only it changes metadata).
fn alter(connection: &Connection, request: AlterUserScramCredentialsRequest) -> Result<()> {
    let mut client = connection.client()?;
    let controller = client.controller_address()?;
    let response: AlterUserScramCredentialsResponse =
        client.call(controller.as_deref(), ALTER_USER_SCRAM_CREDENTIALS, |_| {
            request
        })?;
    for result in &response.results {
        if result.error_code != 0 {
            return Err(format!(
                "user {}: {}",
                result.user.as_str(),
                error_text(result.error_code, result.error_message.as_ref())
            ));
        }
    }
    Ok(())
}
