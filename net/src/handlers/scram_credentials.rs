//! DescribeUserScramCredentials (key 50) and AlterUserScramCredentials (key 51), KIP-554: the
//! SCRAM users SASL authenticates against (`sluice_core::scram`).
//!
//! Alter takes the salted password a client computed and stores only StoredKey and ServerKey
//! (`crate::sasl::credential_from_salted_password`). Its checks are Kafka's, per user: an empty
//! name or a bad credential is UNACCEPTABLE_CREDENTIAL, an unknown mechanism
//! UNSUPPORTED_SASL_MECHANISM, the same user and mechanism twice DUPLICATE_RESOURCE, deleting a
//! credential that does not exist RESOURCE_NOT_FOUND; a user with an error changes nothing, the
//! others' changes apply. Describe lists mechanisms and iterations, never keys.

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_core::scram::{ScramChange, ScramMechanism, ITERATIONS_MAX, ITERATIONS_MIN};
use sluice_core::{controller, ApiError};

use crate::apis::ApiRange;
use crate::handlers::{audit_outcome, Context};
use sluice_core::acls::Operation;

pub const DESCRIBE_RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeUserScramCredentials,
    min_version: 0,
    max_version: 0,
};

pub const ALTER_RANGE: ApiRange = ApiRange {
    key: ApiKey::AlterUserScramCredentials,
    min_version: 0,
    max_version: 0,
};

fn refused(code: ResponseError, message: &str) -> ApiError {
    ApiError {
        code,
        message: message.to_string(),
    }
}

pub fn describe(
    request: DescribeUserScramCredentialsRequest,
    ctx: &Context,
) -> DescribeUserScramCredentialsResponse {
    // Reading users takes DESCRIBE on the cluster.
    if !ctx.allows_cluster(Operation::DESCRIBE) {
        return DescribeUserScramCredentialsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(StrBytes::from_static_str("Authorization failed.")));
    }
    let image = ctx.shard.catalog.image();
    let users = &image.scram_users;
    let wanted: Vec<String> = match request.users {
        Some(names) if !names.is_empty() => names.into_iter().map(|u| u.name.to_string()).collect(),
        _ => users.keys().cloned().collect(),
    };
    let results = wanted
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let result =
                DescribeUserScramCredentialsResult::default().with_user(StrBytes::from(name.clone()));
            if wanted[..i].contains(name) || wanted[i + 1..].contains(name) {
                return result
                    .with_error_code(ResponseError::DuplicateResource.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "Cannot describe SCRAM credentials for the same user twice in a single request",
                    )));
            }
            match users.get(name) {
                Some(credentials) => result.with_credential_infos(
                    credentials
                        .iter()
                        .map(|(m, c)| {
                            CredentialInfo::default()
                                .with_mechanism(m.kafka_code())
                                .with_iterations(c.iterations as i32)
                        })
                        .collect(),
                ),
                None => result
                    .with_error_code(ResponseError::ResourceNotFound.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "Attempt to describe a user credential that does not exist",
                    ))),
            }
        })
        .collect();
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

pub async fn alter(
    request: AlterUserScramCredentialsRequest,
    ctx: &Context,
) -> AlterUserScramCredentialsResponse {
    // Changing users takes ALTER on the cluster.
    if !ctx.allows_cluster(Operation::ALTER) {
        let mut names: Vec<StrBytes> = Vec::new();
        for name in request
            .deletions
            .iter()
            .map(|d| &d.name)
            .chain(request.upsertions.iter().map(|u| &u.name))
        {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let results = names
            .into_iter()
            .map(|user| {
                AlterUserScramCredentialsResult::default()
                    .with_user(user)
                    .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
                    .with_error_message(Some(StrBytes::from_static_str("Authorization failed.")))
            })
            .collect();
        return AlterUserScramCredentialsResponse::default().with_results(results);
    }
    // Per user, in the order users first appear: their changes, or the first error.
    let mut users: Vec<(String, Result<Vec<ScramChange>, ApiError>)> = Vec::new();
    let mut seen: BTreeMap<(String, i8), ()> = BTreeMap::new();
    let entries = request
        .deletions
        .into_iter()
        .map(|d| (d.name.to_string(), d.mechanism, None))
        .chain(request.upsertions.into_iter().map(|u| {
            (
                u.name.to_string(),
                u.mechanism,
                Some((u.iterations, u.salt, u.salted_password)),
            )
        }));
    for (user, code, upsert) in entries {
        let duplicate = seen.insert((user.clone(), code), ()).is_some();
        let change = check_change(&user, code, upsert, duplicate);
        let slot = match users.iter().position(|(u, _)| *u == user) {
            Some(i) => &mut users[i].1,
            None => {
                users.push((user.clone(), Ok(Vec::new())));
                &mut users.last_mut().expect("just pushed").1
            }
        };
        match (slot.as_mut(), change) {
            (Ok(changes), Ok(change)) => changes.push(change),
            (Ok(_), Err(e)) => *slot = Err(e),
            (Err(_), _) => {}
        }
    }
    let asked: Vec<serde_json::Value> = users
        .iter()
        .map(|(_, checked)| match checked {
            Ok(changes) => changes
                .iter()
                .map(|c| serde_json::Value::from(c.action()))
                .collect(),
            Err(_) => serde_json::Value::Array(Vec::new()),
        })
        .collect();
    let groups: Vec<Vec<ScramChange>> = users
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    let mut outcomes = controller::alter_scram_credentials(&ctx.shard, groups)
        .await
        .into_iter();
    let results = users
        .into_iter()
        .zip(asked)
        .map(|((user, checked), asked)| {
            let outcome = match checked {
                Ok(_) => outcomes.next().unwrap_or(Ok(())),
                Err(e) => Err(e),
            };
            ctx.audit_change(
                "USER",
                &user,
                audit_outcome(outcome.as_ref().err()),
                serde_json::json!({"changes": asked}),
            );
            let result = AlterUserScramCredentialsResult::default().with_user(StrBytes::from(user));
            match outcome {
                Ok(()) => result,
                Err(e) => result
                    .with_error_code(e.code.code())
                    .with_error_message(Some(StrBytes::from(e.message))),
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

/// One deletion (`upsert` is `None`) or upsertion, checked as Kafka checks it.
fn check_change(
    user: &str,
    code: i8,
    upsert: Option<(i32, bytes::Bytes, bytes::Bytes)>,
    duplicate: bool,
) -> Result<ScramChange, ApiError> {
    if user.is_empty() {
        return Err(refused(
            ResponseError::UnacceptableCredential,
            "Username must not be empty",
        ));
    }
    let Some(mechanism) = ScramMechanism::from_kafka(code) else {
        return Err(refused(
            ResponseError::UnsupportedSaslMechanism,
            "Unknown SCRAM mechanism",
        ));
    };
    if duplicate {
        return Err(refused(
            ResponseError::DuplicateResource,
            "A user credential cannot be altered twice in the same request",
        ));
    }
    let Some((iterations, salt, salted_password)) = upsert else {
        return Ok(ScramChange::Delete {
            user: user.to_string(),
            mechanism,
        });
    };
    let iterations = u32::try_from(iterations).unwrap_or(0);
    if iterations < ITERATIONS_MIN {
        return Err(refused(
            ResponseError::UnacceptableCredential,
            "Too few iterations",
        ));
    }
    if iterations > ITERATIONS_MAX {
        return Err(refused(
            ResponseError::UnacceptableCredential,
            "Too many iterations",
        ));
    }
    if salt.is_empty() || salted_password.is_empty() {
        return Err(refused(
            ResponseError::UnacceptableCredential,
            "The salt and the salted password must not be empty",
        ));
    }
    Ok(ScramChange::Upsert {
        user: user.to_string(),
        mechanism,
        credential: crate::sasl::credential_from_salted_password(
            mechanism,
            iterations,
            salt.to_vec(),
            &salted_password,
        ),
    })
}
