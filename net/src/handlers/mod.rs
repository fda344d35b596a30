//! One module per Kafka API. Each declares `RANGE` (the versions it implements) and a `handle`
//! function from the decoded request to the response.

use std::rc::Rc;
use std::sync::Arc;

use sluice_core::acls::{self, AuthorizerSettings, Operation, ResourceType};
use sluice_core::client_telemetry::ClientTelemetry;

use sluice_core::shard::Shard;

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
pub mod describe_topic_partitions;
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
pub mod produce;
pub mod push_telemetry;
pub mod sasl;
pub mod scram_credentials;
pub mod sync_group;

/// What a handler can reach: this shard (and through it, every other) and who the broker is.
#[derive(Debug, Clone)]
pub struct Context {
    pub shard: Rc<Shard>,
    pub broker: Rc<BrokerIdentity>,
    /// The peer's address (host part), as DescribeGroups shows it.
    pub client_host: Rc<str>,
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
}

impl Context {
    /// Whether this connection's principal may perform `operation` on the resource: always
    /// without an authorizer, else as the ACLs of the current image decide
    /// (`sluice_core::acls`; the shard's cached image: one atomic version check). A denial is
    /// logged at DEBUG.
    pub fn allows(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
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

    /// How long to throttle this client for `bytes` more of `kind` (zero without a quota):
    /// the quota that applies to its user and `client_id` (`sluice_core::quotas::resolve`),
    /// measured on this shard (`crate::quota_meter`).
    pub fn quota_throttle(
        &self,
        kind: crate::quota_meter::Kind,
        client_id: &str,
        bytes: u64,
    ) -> std::time::Duration {
        let image = self.shard.image();
        if image.client_quotas.is_empty() {
            return std::time::Duration::ZERO;
        }
        let key = match kind {
            crate::quota_meter::Kind::Produce => sluice_core::quotas::PRODUCER_BYTE_RATE,
            crate::quota_meter::Kind::Fetch => sluice_core::quotas::CONSUMER_BYTE_RATE,
        };
        let user = crate::quota_meter::quota_user(&self.principal);
        match sluice_core::quotas::resolve(&image.client_quotas, user, client_id, key) {
            Some(quota) => crate::quota_meter::record(kind, user, client_id, bytes, quota),
            None => std::time::Duration::ZERO,
        }
    }

    /// Whether an authorizer is configured (the ACL APIs answer SECURITY_DISABLED otherwise).
    pub fn has_authorizer(&self) -> bool {
        self.authorizer.is_some()
    }
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
