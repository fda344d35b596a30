//! `sluice acl add|list|remove`: Kafka ACLs through CreateAcls, DescribeAcls and DeleteAcls, as
//! `kafka-acls.sh` manages them (the broker needs `authorizer = acls`; otherwise it answers
//! SECURITY_DISABLED). Changes go to the cluster's controller.

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{
    ApiKey, CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::client::ApiUse;
use super::{error_text, print_json, Connection, Output, Result};

const DESCRIBE_ACLS: ApiUse = ApiUse {
    key: ApiKey::DescribeAcls,
    min: 1,
    max: 3,
};
const CREATE_ACLS: ApiUse = ApiUse {
    key: ApiKey::CreateAcls,
    min: 1,
    max: 3,
};
const DELETE_ACLS: ApiUse = ApiUse {
    key: ApiKey::DeleteAcls,
    min: 1,
    max: 3,
};

/// Kafka's "ANY" filter code.
const ANY: i8 = 1;

/// An ACL operation (Kafka's `AclOperation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OperationArg {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

impl OperationArg {
    fn code(self) -> i8 {
        self as i8 + 2
    }
}

/// Which resources an ACL names: one of these (for `list` and `remove`, none means any).
#[derive(Debug, Clone, clap::Args)]
pub struct ResourceArgs {
    #[arg(long, value_name = "NAME", group = "resource")]
    topic: Option<String>,
    #[arg(long, value_name = "NAME", group = "resource")]
    group: Option<String>,
    #[arg(long, value_name = "ID", group = "resource")]
    transactional_id: Option<String>,
    /// The cluster resource.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// The name is a prefix (Kafka's PREFIXED pattern type) rather than a literal name (`*`:
    /// every resource of the type).
    #[arg(long)]
    prefixed: bool,
}

impl ResourceArgs {
    /// (type code, name) when one is given.
    fn resource(&self) -> Option<(i8, String)> {
        match (
            &self.topic,
            &self.group,
            &self.transactional_id,
            self.cluster,
        ) {
            (Some(t), ..) => Some((2, t.clone())),
            (_, Some(g), ..) => Some((3, g.clone())),
            (_, _, Some(x), _) => Some((5, x.clone())),
            (.., true) => Some((4, "kafka-cluster".into())),
            _ => None,
        }
    }

    /// As a filter (list, remove): (type, name, pattern type), ANY where not given.
    fn filter(&self) -> (i8, Option<String>, i8) {
        match self.resource() {
            Some((resource_type, name)) => (resource_type, Some(name), self.pattern()),
            None if self.prefixed => (ANY, None, 4),
            None => (ANY, None, ANY),
        }
    }

    fn pattern(&self) -> i8 {
        if self.prefixed {
            4
        } else {
            3
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum AclCommand {
    /// Adds ALLOW (or, with --deny, DENY) ACLs: one per operation.
    Add {
        /// Who: `User:alice`, or `User:*` for everyone.
        #[arg(long)]
        principal: String,
        /// What (repeatable).
        #[arg(long, value_enum, required = true)]
        operation: Vec<OperationArg>,
        #[command(flatten)]
        resource: ResourceArgs,
        /// From where: a client IP, or `*`.
        #[arg(long, default_value = "*")]
        host: String,
        /// A DENY ACL (deny wins over any ALLOW).
        #[arg(long)]
        deny: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// The ACLs, optionally those of one resource or principal.
    List {
        #[command(flatten)]
        resource: ResourceArgs,
        #[arg(long)]
        principal: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Removes the ACLs that match: every field given must match (an omitted one matches any).
    Remove {
        #[command(flatten)]
        resource: ResourceArgs,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long, value_enum)]
        operation: Option<OperationArg>,
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

pub fn acl(command: AclCommand) -> Result<()> {
    match command {
        AclCommand::Add {
            principal,
            operation,
            resource,
            host,
            deny,
            connection,
        } => {
            let (resource_type, name) = resource
                .resource()
                .ok_or("name a resource: --topic, --group, --transactional-id or --cluster")?;
            let creations = operation
                .iter()
                .map(|op| {
                    AclCreation::default()
                        .with_resource_type(resource_type)
                        .with_resource_name(StrBytes::from(name.clone()))
                        .with_resource_pattern_type(resource.pattern())
                        .with_principal(StrBytes::from(principal.clone()))
                        .with_host(StrBytes::from(host.clone()))
                        .with_operation(op.code())
                        .with_permission_type(if deny { 2 } else { 3 })
                })
                .collect();
            let mut client = connection.client()?;
            let controller = client.controller_address()?;
            let response: CreateAclsResponse =
                client.call(controller.as_deref(), CREATE_ACLS, |_| {
                    CreateAclsRequest::default().with_creations(creations)
                })?;
            for result in &response.results {
                if result.error_code != 0 {
                    return Err(error_text(result.error_code, result.error_message.as_ref()));
                }
            }
            println!("{} ACL(s) added", response.results.len());
            Ok(())
        }
        AclCommand::List {
            resource,
            principal,
            connection,
            output,
        } => {
            let (resource_type, name, pattern) = resource.filter();
            let response: DescribeAclsResponse =
                connection.client()?.call(None, DESCRIBE_ACLS, |_| {
                    DescribeAclsRequest::default()
                        .with_resource_type_filter(resource_type)
                        .with_resource_name_filter(name.map(StrBytes::from))
                        .with_pattern_type_filter(pattern)
                        .with_principal_filter(principal.map(StrBytes::from))
                        .with_host_filter(None)
                        .with_operation(ANY)
                        .with_permission_type(ANY)
                })?;
            if response.error_code != 0 {
                return Err(error_text(
                    response.error_code,
                    response.error_message.as_ref(),
                ));
            }
            let mut rows = Vec::new();
            for r in &response.resources {
                let kind = match r.resource_type {
                    2 => "topic",
                    3 => "group",
                    4 => "cluster",
                    5 => "transactional-id",
                    _ => "unknown",
                };
                let pattern = if r.pattern_type == 4 {
                    "prefixed"
                } else {
                    "literal"
                };
                for a in &r.acls {
                    rows.push(serde_json::json!({
                        "resource_type": kind,
                        "resource_name": r.resource_name.as_str(),
                        "pattern": pattern,
                        "principal": a.principal.as_str(),
                        "host": a.host.as_str(),
                        "operation": sluice_core::acls::Operation(a.operation).name(),
                        "permission": if a.permission_type == 2 { "Deny" } else { "Allow" },
                    }));
                }
            }
            if output == Output::Json {
                return print_json(&serde_json::Value::Array(rows));
            }
            for row in rows {
                println!(
                    "{} {} {}:{} {} {} from {}",
                    row["permission"].as_str().unwrap_or(""),
                    row["principal"].as_str().unwrap_or(""),
                    row["resource_type"].as_str().unwrap_or(""),
                    row["resource_name"].as_str().unwrap_or(""),
                    row["pattern"].as_str().unwrap_or(""),
                    row["operation"].as_str().unwrap_or(""),
                    row["host"].as_str().unwrap_or(""),
                );
            }
            Ok(())
        }
        AclCommand::Remove {
            resource,
            principal,
            operation,
            host,
            connection,
        } => {
            let (resource_type, name, pattern) = resource.filter();
            let filter = DeleteAclsFilter::default()
                .with_resource_type_filter(resource_type)
                .with_resource_name_filter(name.map(StrBytes::from))
                .with_pattern_type_filter(pattern)
                .with_principal_filter(principal.map(StrBytes::from))
                .with_host_filter(host.map(StrBytes::from))
                .with_operation(operation.map_or(ANY, OperationArg::code))
                .with_permission_type(ANY);
            let mut client = connection.client()?;
            let controller = client.controller_address()?;
            let response: DeleteAclsResponse =
                client.call(controller.as_deref(), DELETE_ACLS, |_| {
                    DeleteAclsRequest::default().with_filters(vec![filter])
                })?;
            let mut removed = 0;
            for result in &response.filter_results {
                if result.error_code != 0 {
                    return Err(error_text(result.error_code, result.error_message.as_ref()));
                }
                removed += result.matching_acls.len();
            }
            println!("{removed} ACL(s) removed");
            Ok(())
        }
    }
}
