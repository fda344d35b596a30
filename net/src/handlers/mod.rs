//! One module per Kafka API. Each declares `RANGE` (the versions it implements) and a `handle`
//! function from the decoded request to the response.

use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use serde_json::{Map, Value};
use sluice_core::acls::{self, AuthorizerSettings, Operation, ResourceType};
use sluice_core::audit::{AuditEvent, AuditLog, EventKind};
use sluice_core::client_telemetry::ClientTelemetry;

use sluice_core::shard::Shard;
use sluice_core::ResponseError;

use crate::server::BrokerIdentity;

pub mod acls_api;
pub mod alter_configs;
pub mod api_versions;
pub mod client_quotas;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_quorum;
pub mod describe_topic_partitions;
pub mod elect_leaders;
pub mod fetch;
pub mod find_coordinator;
pub mod get_telemetry_subscriptions;
pub mod heartbeat;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_config_resources;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod partition_reassignments;
pub mod produce;
pub mod push_telemetry;
pub mod raft_voters;
pub mod sasl;
pub mod scram_credentials;
pub mod sync_group;
pub mod txn;
pub mod txn_tooling;
pub mod unregister_broker;

/// What a handler can reach: this shard (and through it, every other) and who the broker is.
#[derive(Debug, Clone)]
pub struct Context {
    pub shard: Rc<Shard>,
    pub broker: Rc<BrokerIdentity>,
    /// The peer's address (host part), as DescribeGroups shows it.
    pub client_host: Rc<str>,
    /// The peer's `ip:port`, as the audit trail records it.
    pub client_address: Rc<str>,
    /// KIP-714: the node's client-metrics subscription and what clients pushed.
    pub client_telemetry: Arc<ClientTelemetry>,
    /// The name of the listener the connection came in on: Metadata, FindCoordinator and
    /// DescribeCluster answer with the brokers' addresses on that listener.
    pub listener: Rc<str>,
    /// Who the client is (`User:ANONYMOUS` on a plaintext listener, the certificate's mapped
    /// subject with mutual TLS).
    pub principal: Rc<str>,
    /// On a `SASL_*` listener: the mechanisms and the credential store the connection
    /// authenticates against (`None` elsewhere).
    pub sasl: Option<crate::sasl::SaslServer>,
    /// The ACL authorizer's settings; `None`: no authorizer, every client may do everything.
    pub authorizer: Option<Arc<AuthorizerSettings>>,
    /// The audit trail (`None`: not kept).
    pub audit: Option<AuditLog>,
    /// The API of the request being served (`None` outside a request).
    pub api: Option<ApiKey>,
}

impl Context {
    /// Whether this connection's principal may perform `operation` on the resource: always
    /// without an authorizer, else as the ACLs of the current image decide
    /// (`sluice_core::acls`; the shard's cached image: one atomic version check). A denial is
    /// logged at DEBUG and recorded in the audit trail.
    pub fn allows(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        let allowed = self.allows_unaudited(operation, resource_type, name);
        if !allowed {
            let mut detail = self.api_detail();
            detail.insert("operation".into(), operation.name().into());
            detail.insert("resource_type".into(), kafka_name(resource_type).into());
            detail.insert("resource".into(), name.into());
            self.audit(EventKind::Authorization, "denied", detail);
        }
        allowed
    }

    /// As [`Context::allows`], without an audit line for a denial: for checks that filter
    /// what a listing shows (every topic of Metadata, the groups of ListGroups, authorized
    /// operations), which Kafka does not log either.
    pub fn allows_unaudited(
        &self,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        let Some(settings) = &self.authorizer else {
            return true;
        };
        let host = self.client_host.trim_start_matches('/');
        let image = self.shard.image();
        let allowed = acls::authorize(
            &image.acls,
            settings,
            &self.principal,
            host,
            operation,
            resource_type,
            name,
        );
        if !allowed {
            tracing::debug!(principal = %self.principal, host, ?operation, ?resource_type,
                resource = name, "authorization denied");
        }
        allowed
    }

    pub fn allows_topic(&self, operation: Operation, topic: &str) -> bool {
        self.allows(operation, ResourceType::Topic, topic)
    }

    pub fn allows_group(&self, operation: Operation, group: &str) -> bool {
        self.allows(operation, ResourceType::Group, group)
    }

    pub fn allows_cluster(&self, operation: Operation) -> bool {
        self.allows(operation, ResourceType::Cluster, ResourceType::CLUSTER_NAME)
    }

    /// Whether the principal may perform `operation` on some resource of the type
    /// (`acls::allows_some`); always without an authorizer.
    pub fn allows_some(&self, operation: Operation, resource_type: ResourceType) -> bool {
        let Some(settings) = &self.authorizer else {
            return true;
        };
        let host = self.client_host.trim_start_matches('/');
        let image = self.shard.image();
        acls::allows_some(
            &image.acls,
            settings,
            &self.principal,
            host,
            operation,
            resource_type,
        )
    }

    /// The quota of `kind` that applies to this client's user and `client_id`
    /// (`sluice_core::quotas::resolve`), if any.
    pub fn quota(&self, kind: crate::quota_meter::Kind, client_id: &str) -> Option<f64> {
        let image = self.shard.image();
        if image.client_quotas.is_empty() {
            return None;
        }
        let key = match kind {
            crate::quota_meter::Kind::Produce => sluice_core::quotas::PRODUCER_BYTE_RATE,
            crate::quota_meter::Kind::Fetch => sluice_core::quotas::CONSUMER_BYTE_RATE,
            crate::quota_meter::Kind::Request => sluice_core::quotas::REQUEST_PERCENTAGE,
        };
        let user = crate::quota_meter::quota_user(&self.principal);
        sluice_core::quotas::resolve(&image.client_quotas, user, client_id, key)
    }

    /// How long to throttle this client for `amount` more of `kind` (zero without a quota),
    /// measured on this shard (`crate::quota_meter`).
    pub fn quota_throttle(
        &self,
        kind: crate::quota_meter::Kind,
        client_id: &str,
        amount: f64,
    ) -> std::time::Duration {
        match self.quota(kind, client_id) {
            Some(quota) => {
                let user = crate::quota_meter::quota_user(&self.principal);
                crate::quota_meter::record(kind, user, client_id, amount, quota)
            }
            None => std::time::Duration::ZERO,
        }
    }

    /// Records an event of this connection (its principal, address and listener) in the audit
    /// trail, if one is kept.
    pub fn audit(&self, kind: EventKind, outcome: &str, detail: Map<String, Value>) {
        if let Some(audit) = &self.audit {
            audit.record(AuditEvent {
                time: std::time::SystemTime::now(),
                kind,
                outcome: outcome.into(),
                principal: self.principal.to_string(),
                client: self.client_address.to_string(),
                listener: self.listener.to_string(),
                detail,
            });
        }
    }

    /// Records an authentication (`mechanism`: a SASL mechanism or `TLS`) and its outcome.
    pub fn audit_authentication<const N: usize>(
        &self,
        succeeded: bool,
        mechanism: &str,
        detail: [(&str, Value); N],
    ) {
        self.audit_authentication_with(succeeded, mechanism, detail);
    }

    /// As [`Context::audit_authentication`], with any number of detail fields.
    pub fn audit_authentication_with<'a>(
        &self,
        succeeded: bool,
        mechanism: &str,
        detail: impl IntoIterator<Item = (&'a str, Value)>,
    ) {
        if self.audit.is_none() {
            return;
        }
        let mut fields = Map::new();
        fields.insert("mechanism".into(), mechanism.into());
        fields.extend(detail.into_iter().map(|(k, v)| (k.to_string(), v)));
        let outcome = if succeeded { "success" } else { "failure" };
        self.audit(EventKind::Authentication, outcome, fields);
    }

    /// Records an administrative change of one resource by the current request: `error` is
    /// its Kafka error code (0: done) and message; `request` what was asked. A change refused
    /// by the authorizer is left out: its denial is recorded already.
    pub fn audit_change(
        &self,
        resource_type: &str,
        resource: &str,
        error: (i16, Option<&str>),
        request: Value,
    ) {
        let denied = [
            ResponseError::TopicAuthorizationFailed,
            ResponseError::GroupAuthorizationFailed,
            ResponseError::ClusterAuthorizationFailed,
        ];
        if self.audit.is_none() || denied.iter().any(|d| d.code() == error.0) {
            return;
        }
        let mut detail = self.api_detail();
        detail.insert("resource_type".into(), resource_type.into());
        detail.insert("resource".into(), resource.into());
        detail.insert("request".into(), request);
        let (code, message) = error;
        if code != 0 {
            detail.insert(
                "error".into(),
                sluice_core::metrics::kafka_error_name(code).into(),
            );
            if let Some(message) = message.filter(|m| !m.is_empty()) {
                detail.insert("message".into(), message.into());
            }
        }
        let outcome = if code == 0 { "success" } else { "failure" };
        self.audit(EventKind::Change, outcome, detail);
    }

    /// The detail every request's event starts with: the API's name.
    fn api_detail(&self) -> Map<String, Value> {
        let mut detail = Map::new();
        if let Some(api) = self.api {
            detail.insert("api".into(), format!("{api:?}").into());
        }
        detail
    }

    /// Whether an authorizer is configured (the ACL APIs answer SECURITY_DISABLED otherwise).
    pub fn has_authorizer(&self) -> bool {
        self.authorizer.is_some()
    }
}

/// An administrative change's outcome as [`Context::audit_change`] takes it: the error's code
/// and message, or success (code 0).
/// Consecutive rows of the same topic gathered into one `(topic, items)` entry each, in
/// order: the shape of Kafka's per-topic response arrays.
pub fn runs_by_topic<T>(
    rows: impl IntoIterator<Item = (String, T)>,
) -> Vec<(kafka_protocol::messages::TopicName, Vec<T>)> {
    let mut runs: Vec<(String, Vec<T>)> = Vec::new();
    for (topic, item) in rows {
        match runs.last_mut() {
            Some((last, items)) if *last == topic => items.push(item),
            _ => runs.push((topic, vec![item])),
        }
    }
    runs.into_iter()
        .map(|(topic, items)| {
            (
                kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_string(topic),
                ),
                items,
            )
        })
        .collect()
}

pub fn audit_outcome(error: Option<&sluice_core::ApiError>) -> (i16, Option<&str>) {
    error.map_or((0, None), |e| (e.code.code(), Some(e.message.as_str())))
}

/// Kafka's name of an ACL enum value (`TOPIC`, `TRANSACTIONAL_ID`, `PREFIXED`, `ALLOW`).
pub fn kafka_name(value: impl std::fmt::Debug) -> String {
    sluice_core::metrics::upper_snake_case(&format!("{value:?}"))
}

/// An ACL binding as the audit trail shows it.
pub fn acl_json(acl: &acls::AclBinding) -> Value {
    serde_json::json!({
        "resource_type": kafka_name(acl.resource_type),
        "resource_name": acl.resource_name,
        "pattern_type": kafka_name(acl.pattern_type),
        "principal": acl.principal,
        "host": acl.host,
        "operation": acl.operation.name(),
        "permission": kafka_name(acl.permission),
    })
}

/// Runs `work` on the items `allowed` keeps, and answers every item in its order: its result
/// from `work` (one per kept item, in order) or, for the others, `denied()`.
pub async fn for_allowed<T, R, F>(
    items: Vec<T>,
    allowed: impl Fn(&T) -> bool,
    denied: impl Fn() -> R,
    work: impl FnOnce(Vec<T>) -> F,
) -> Vec<R>
where
    F: std::future::Future<Output = Vec<R>>,
{
    let kept: Vec<bool> = items.iter().map(&allowed).collect();
    let mut results = work(
        items
            .into_iter()
            .zip(&kept)
            .filter(|(_, k)| **k)
            .map(|(item, _)| item)
            .collect(),
    )
    .await
    .into_iter();
    kept.iter()
        .map(|k| match k {
            true => results.next().unwrap_or_else(&denied),
            false => denied(),
        })
        .collect()
}

/// An error for an item the principal may not touch.
pub fn unauthorized(code: sluice_core::ResponseError) -> sluice_core::ApiError {
    sluice_core::ApiError {
        code,
        message: "Authorization failed.".into(),
    }
}

/// Kafka's `ConfigSource`: 1 = set on the topic, 5 = the default.
pub fn config_source(is_default: bool) -> i8 {
    if is_default {
        5
    } else {
        1
    }
}
