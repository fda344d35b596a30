//! The operations a principal may perform, as the bit sets Metadata (`include_*_authorized_
//! operations`, KIP-430), DescribeGroups, DescribeCluster and DescribeTopicPartitions answer:
//! bit `n` set for Kafka's `AclOperation` code `n`. The full sets are the ones Kafka lists per
//! resource type (`AclEntry.supportedOperations`); without an authorizer every client has the
//! full set, with one [`for_resource`] keeps the operations the ACLs allow.

/// "Not requested": Kafka's `Integer.MIN_VALUE` sentinel.
pub const OMITTED: i32 = i32::MIN;

// Kafka's AclOperation codes.
const READ: u8 = 3;
const WRITE: u8 = 4;
const CREATE: u8 = 5;
const DELETE: u8 = 6;
const ALTER: u8 = 7;
const DESCRIBE: u8 = 8;
const CLUSTER_ACTION: u8 = 9;
const DESCRIBE_CONFIGS: u8 = 10;
const ALTER_CONFIGS: u8 = 11;
const IDEMPOTENT_WRITE: u8 = 12;

const fn bits(ops: &[u8]) -> i32 {
    let mut set = 0;
    let mut i = 0;
    while i < ops.len() {
        set |= 1 << ops[i];
        i += 1;
    }
    set
}

/// Everything Kafka checks on a topic.
pub const TOPIC: i32 = bits(&[
    READ,
    WRITE,
    CREATE,
    DELETE,
    ALTER,
    DESCRIBE,
    DESCRIBE_CONFIGS,
    ALTER_CONFIGS,
]);

/// Everything Kafka checks on the cluster.
pub const CLUSTER: i32 = bits(&[
    CREATE,
    CLUSTER_ACTION,
    DESCRIBE_CONFIGS,
    ALTER_CONFIGS,
    IDEMPOTENT_WRITE,
    ALTER,
    DESCRIBE,
]);

/// Everything Kafka checks on a consumer group.
pub const GROUP: i32 = bits(&[READ, DESCRIBE, DELETE]);

/// The set to answer: `all` when the client asked for it, else [`OMITTED`].
pub fn answer(requested: bool, all: i32) -> i32 {
    if requested {
        all
    } else {
        OMITTED
    }
}

/// The operations of `all` the connection's principal may perform on the resource, or
/// [`OMITTED`] when not `requested`.
pub fn for_resource(
    ctx: &crate::handlers::Context,
    requested: bool,
    all: i32,
    resource_type: sluice_core::acls::ResourceType,
    name: &str,
) -> i32 {
    if !requested {
        return OMITTED;
    }
    if !ctx.has_authorizer() {
        return all;
    }
    (0..31)
        .filter(|bit| all & (1 << bit) != 0)
        .filter(|bit| {
            ctx.allows_unaudited(
                sluice_core::acls::Operation(*bit as i8),
                resource_type,
                name,
            )
        })
        .fold(0, |set, bit| set | (1 << bit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit 3 (READ) through bit 12 (IDEMPOTENT_WRITE), per Kafka's supported operations.
    #[test]
    fn full_sets_are_the_supported_operations() {
        assert_eq!(TOPIC, 3576);
        assert_eq!(CLUSTER, 8096);
        assert_eq!(GROUP, 328);
    }
}
