//! Kafka ACLs: the bindings the metadata stores (CreateAcls), the filters that find them
//! (DescribeAcls, DeleteAcls), and the decision an authorizer makes from them, with the
//! semantics of Kafka's `StandardAuthorizer`:
//!
//! 1. a super user (`super_users`) may do everything;
//! 2. a DENY binding that matches the principal, host, resource and operation (or ALL) denies,
//!    whatever else allows;
//! 3. an ALLOW binding that matches allows; ALLOW of READ, WRITE, DELETE or ALTER implies
//!    DESCRIBE, and ALLOW of ALTER_CONFIGS implies DESCRIBE_CONFIGS;
//! 4. when no binding at all names the resource (any principal, any operation), the answer is
//!    `allow_everyone_if_no_acl_found`; otherwise it is a denial.
//!
//! A binding names its resource literally (`*` is every resource of the type) or by prefix; its
//! principal may be `User:*` and its host `*`.
//!
//! Codes are Kafka's (`ResourceType`, `PatternType`, `AclOperation`, `AclPermissionType`) so
//! the wire values map one to one.

use serde::{Deserialize, Serialize};

/// What a binding protects (Kafka's `ResourceType` codes 2–5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

impl ResourceType {
    pub fn from_kafka(code: i8) -> Option<ResourceType> {
        match code {
            2 => Some(ResourceType::Topic),
            3 => Some(ResourceType::Group),
            4 => Some(ResourceType::Cluster),
            5 => Some(ResourceType::TransactionalId),
            _ => None,
        }
    }

    pub fn kafka_code(self) -> i8 {
        match self {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
            ResourceType::TransactionalId => 5,
        }
    }

    /// The name of the one cluster resource.
    pub const CLUSTER_NAME: &'static str = "kafka-cluster";
}

/// How a binding's resource name matches (Kafka's `PatternType` codes 3 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    Literal,
    Prefixed,
}

impl PatternType {
    pub fn from_kafka(code: i8) -> Option<PatternType> {
        match code {
            3 => Some(PatternType::Literal),
            4 => Some(PatternType::Prefixed),
            _ => None,
        }
    }

    pub fn kafka_code(self) -> i8 {
        match self {
            PatternType::Literal => 3,
            PatternType::Prefixed => 4,
        }
    }
}

/// Kafka's `AclOperation` codes: 2 ALL, 3 READ, 4 WRITE, 5 CREATE, 6 DELETE, 7 ALTER,
/// 8 DESCRIBE, 9 CLUSTER_ACTION, 10 DESCRIBE_CONFIGS, 11 ALTER_CONFIGS, 12 IDEMPOTENT_WRITE,
/// 13 CREATE_TOKENS, 14 DESCRIBE_TOKENS, 15 TWO_PHASE_COMMIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Operation(pub i8);

impl Operation {
    pub const ALL: Operation = Operation(2);
    pub const READ: Operation = Operation(3);
    pub const WRITE: Operation = Operation(4);
    pub const CREATE: Operation = Operation(5);
    pub const DELETE: Operation = Operation(6);
    pub const ALTER: Operation = Operation(7);
    pub const DESCRIBE: Operation = Operation(8);
    pub const CLUSTER_ACTION: Operation = Operation(9);
    pub const DESCRIBE_CONFIGS: Operation = Operation(10);
    pub const ALTER_CONFIGS: Operation = Operation(11);
    pub const IDEMPOTENT_WRITE: Operation = Operation(12);

    /// Kafka's name of the operation (`AclOperation`): `READ`, `DESCRIBE_CONFIGS`, ...
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 14] = [
            "ALL",
            "READ",
            "WRITE",
            "CREATE",
            "DELETE",
            "ALTER",
            "DESCRIBE",
            "CLUSTER_ACTION",
            "DESCRIBE_CONFIGS",
            "ALTER_CONFIGS",
            "IDEMPOTENT_WRITE",
            "CREATE_TOKENS",
            "DESCRIBE_TOKENS",
            "TWO_PHASE_COMMIT",
        ];
        usize::try_from(self.0 - 2)
            .ok()
            .and_then(|i| NAMES.get(i))
            .copied()
            .unwrap_or("UNKNOWN")
    }

    /// A concrete operation a binding may name (not ANY or UNKNOWN).
    pub fn from_kafka(code: i8) -> Option<Operation> {
        (2..=15).contains(&code).then_some(Operation(code))
    }

    /// The operations whose ALLOW also allows this one (itself included).
    fn allowed_by(self) -> &'static [Operation] {
        match self {
            Operation::DESCRIBE => &[
                Operation::DESCRIBE,
                Operation::READ,
                Operation::WRITE,
                Operation::DELETE,
                Operation::ALTER,
                Operation::ALL,
            ],
            Operation::DESCRIBE_CONFIGS => &[
                Operation::DESCRIBE_CONFIGS,
                Operation::ALTER_CONFIGS,
                Operation::ALL,
            ],
            _ => &[],
        }
    }

    fn allowed_by_binding(self, granted: Operation) -> bool {
        granted == self || granted == Operation::ALL || self.allowed_by().contains(&granted)
    }
}

/// Kafka's `AclPermissionType` codes 2 (DENY) and 3 (ALLOW).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Deny,
    Allow,
}

impl Permission {
    pub fn from_kafka(code: i8) -> Option<Permission> {
        match code {
            2 => Some(Permission::Deny),
            3 => Some(Permission::Allow),
            _ => None,
        }
    }

    pub fn kafka_code(self) -> i8 {
        match self {
            Permission::Deny => 2,
            Permission::Allow => 3,
        }
    }
}

/// One ACL: who may (or may not) do what to which resources, from where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    /// `User:<name>`, or `User:*` for everyone.
    pub principal: String,
    /// A client IP, or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// The wildcard of a literal resource name, a principal's name, and a host.
pub const WILDCARD: &str = "*";
pub const WILDCARD_PRINCIPAL: &str = "User:*";

impl AclBinding {
    /// Why a binding cannot be stored (Kafka's checks on CreateAcls).
    pub fn check(&self) -> Result<(), String> {
        if self.resource_name.is_empty() {
            return Err("the resource name is empty".into());
        }
        if self.resource_type == ResourceType::Cluster
            && self.resource_name != ResourceType::CLUSTER_NAME
        {
            return Err(format!(
                "the cluster resource is named {}",
                ResourceType::CLUSTER_NAME
            ));
        }
        if !self.principal.contains(':') {
            return Err(format!(
                "principal {:?} is not TYPE:NAME (e.g. User:alice)",
                self.principal
            ));
        }
        if self.host.is_empty() {
            return Err("the host is empty (use * for any)".into());
        }
        Ok(())
    }

    fn names(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern_type {
                PatternType::Literal => {
                    self.resource_name == name || self.resource_name == WILDCARD
                }
                PatternType::Prefixed => name.starts_with(&self.resource_name),
            }
    }

    fn applies_to(&self, principal: &str, host: &str) -> bool {
        (self.principal == principal || self.principal == WILDCARD_PRINCIPAL)
            && (self.host == host || self.host == WILDCARD)
    }
}

/// A DescribeAcls / DeleteAcls filter; `None` fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub resource_name: Option<String>,
    /// `None`: any; `Some(Match)`: every binding that would apply to the named resource.
    pub pattern: PatternFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

/// Kafka's `PatternType` filter values: ANY (1), MATCH (2), LITERAL (3), PREFIXED (4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatternFilter {
    #[default]
    Any,
    Match,
    Exactly(PatternType),
}

impl AclFilter {
    pub fn matches(&self, binding: &AclBinding) -> bool {
        let name_matches = match (&self.resource_name, self.pattern) {
            (_, PatternFilter::Exactly(p)) if binding.pattern_type != p => false,
            (None, _) => true,
            (Some(name), PatternFilter::Match) => binding.names(binding.resource_type, name),
            (Some(name), _) => binding.resource_name == *name,
        };
        name_matches
            && self
                .resource_type
                .is_none_or(|t| t == binding.resource_type)
            && self
                .principal
                .as_ref()
                .is_none_or(|p| *p == binding.principal)
            && self.host.as_ref().is_none_or(|h| *h == binding.host)
            && self.operation.is_none_or(|o| o == binding.operation)
            && self.permission.is_none_or(|p| p == binding.permission)
    }
}

/// Who decides, and by which rules (see the module's header).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizerSettings {
    /// Principals allowed everything (Kafka's `super.users`).
    pub super_users: Vec<String>,
    /// What a resource no binding names allows (Kafka's `allow.everyone.if.no.acl.found`).
    pub allow_everyone_if_no_acl_found: bool,
}

impl AuthorizerSettings {
    fn is_super(&self, principal: &str) -> bool {
        self.super_users.iter().any(|s| s == principal)
    }
}

/// Whether `principal` connecting from `host` may perform `operation` on the resource.
pub fn authorize(
    acls: &[AclBinding],
    settings: &AuthorizerSettings,
    principal: &str,
    host: &str,
    operation: Operation,
    resource_type: ResourceType,
    resource_name: &str,
) -> bool {
    if settings.is_super(principal) {
        return true;
    }
    let mut named = false;
    let mut allowed = false;
    for binding in acls
        .iter()
        .filter(|b| b.names(resource_type, resource_name))
    {
        named = true;
        if !binding.applies_to(principal, host) {
            continue;
        }
        match binding.permission {
            Permission::Deny
                if binding.operation == operation || binding.operation == Operation::ALL =>
            {
                return false;
            }
            Permission::Allow if operation.allowed_by_binding(binding.operation) => {
                allowed = true;
            }
            _ => {}
        }
    }
    allowed || (!named && settings.allow_everyone_if_no_acl_found)
}

/// Whether some binding lets `principal` perform `operation` on some resource of the type
/// (Kafka's `authorizeByResourceType`, which InitProducerId uses: an idempotent producer needs
/// WRITE on some topic). A super user may; a type no binding names follows
/// `allow_everyone_if_no_acl_found`.
pub fn allows_some(
    acls: &[AclBinding],
    settings: &AuthorizerSettings,
    principal: &str,
    host: &str,
    operation: Operation,
    resource_type: ResourceType,
) -> bool {
    if settings.is_super(principal) {
        return true;
    }
    let of_type: Vec<&AclBinding> = acls
        .iter()
        .filter(|b| b.resource_type == resource_type)
        .collect();
    if of_type.is_empty() {
        return settings.allow_everyone_if_no_acl_found;
    }
    of_type.iter().any(|b| {
        b.permission == Permission::Allow
            && b.applies_to(principal, host)
            && operation.allowed_by_binding(b.operation)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(
        name: &str,
        pattern_type: PatternType,
        principal: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type,
            principal: principal.into(),
            host: WILDCARD.into(),
            operation,
            permission,
        }
    }

    fn may(
        acls: &[AclBinding],
        settings: &AuthorizerSettings,
        who: &str,
        op: Operation,
        topic: &str,
    ) -> bool {
        authorize(
            acls,
            settings,
            who,
            "10.0.0.1",
            op,
            ResourceType::Topic,
            topic,
        )
    }

    #[test]
    fn deny_wins_implied_operations_hold_and_prefixes_match() {
        let none = AuthorizerSettings::default();
        let acls = vec![
            binding(
                "orders",
                PatternType::Literal,
                "User:alice",
                Operation::READ,
                Permission::Allow,
            ),
            binding(
                "pay-",
                PatternType::Prefixed,
                "User:*",
                Operation::WRITE,
                Permission::Allow,
            ),
            binding(
                "pay-secret",
                PatternType::Literal,
                "User:bob",
                Operation::ALL,
                Permission::Deny,
            ),
        ];
        assert!(may(&acls, &none, "User:alice", Operation::READ, "orders"));
        assert!(
            may(&acls, &none, "User:alice", Operation::DESCRIBE, "orders"),
            "READ implies DESCRIBE"
        );
        assert!(!may(&acls, &none, "User:alice", Operation::WRITE, "orders"));
        assert!(!may(&acls, &none, "User:bob", Operation::READ, "orders"));
        assert!(may(&acls, &none, "User:bob", Operation::WRITE, "pay-in"));
        assert!(
            !may(&acls, &none, "User:bob", Operation::WRITE, "pay-secret"),
            "deny wins"
        );
        assert!(may(
            &acls,
            &none,
            "User:carol",
            Operation::WRITE,
            "pay-secret"
        ));
        assert!(
            !may(&acls, &none, "User:carol", Operation::WRITE, "other"),
            "no ACL: denied"
        );
        let open = AuthorizerSettings {
            allow_everyone_if_no_acl_found: true,
            ..AuthorizerSettings::default()
        };
        assert!(may(&acls, &open, "User:carol", Operation::WRITE, "other"));
        assert!(
            !may(&acls, &open, "User:carol", Operation::WRITE, "orders"),
            "orders has ACLs"
        );
        let admin = AuthorizerSettings {
            super_users: vec!["User:root".into()],
            ..AuthorizerSettings::default()
        };
        assert!(may(
            &acls,
            &admin,
            "User:root",
            Operation::DELETE,
            "pay-secret"
        ));
    }

    #[test]
    fn filters_find_bindings_as_kafka_filters_do() {
        let literal = binding(
            "pay-in",
            PatternType::Literal,
            "User:a",
            Operation::READ,
            Permission::Allow,
        );
        let prefixed = binding(
            "pay-",
            PatternType::Prefixed,
            "User:a",
            Operation::READ,
            Permission::Allow,
        );
        let matching = AclFilter {
            resource_name: Some("pay-in".into()),
            pattern: PatternFilter::Match,
            ..AclFilter::default()
        };
        assert!(matching.matches(&literal) && matching.matches(&prefixed));
        let exact = AclFilter {
            resource_name: Some("pay-".into()),
            pattern: PatternFilter::Exactly(PatternType::Prefixed),
            ..AclFilter::default()
        };
        assert!(!exact.matches(&literal) && exact.matches(&prefixed));
        assert!(AclFilter::default().matches(&literal));
    }
}
