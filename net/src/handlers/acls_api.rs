//! CreateAcls (key 30), DescribeAcls (key 29) and DeleteAcls (key 31): the ACLs of the
//! metadata (`sluice_core::acls`), as Kafka's `kafka-acls.sh` and admin clients manage them.
//!
//! Without an authorizer (`authorizer` not `acls`) all three answer SECURITY_DISABLED, as
//! Kafka does. Changing ACLs takes ALTER on the cluster and reading them DESCRIBE
//! (CLUSTER_AUTHORIZATION_FAILED otherwise). A binding or filter with an unknown or "any" code
//! where a concrete one is needed is INVALID_REQUEST.

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    ApiKey, CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_core::acls::{
    AclBinding, AclFilter, Operation, PatternFilter, PatternType, Permission, ResourceType,
};
use sluice_core::controller;

use crate::apis::ApiRange;
use crate::handlers::{acl_json, audit_outcome, Context};

pub const DESCRIBE_RANGE: ApiRange = ApiRange {
    key: ApiKey::DescribeAcls,
    min_version: 1,
    max_version: 3,
};
pub const CREATE_RANGE: ApiRange = ApiRange {
    key: ApiKey::CreateAcls,
    min_version: 1,
    max_version: 3,
};
pub const DELETE_RANGE: ApiRange = ApiRange {
    key: ApiKey::DeleteAcls,
    min_version: 1,
    max_version: 3,
};

const NO_AUTHORIZER: &str = "No Authorizer is configured on the broker";
/// Kafka's "ANY" code in filters.
const ANY: i8 = 1;

/// Why a request is refused as a whole, if it is.
fn refusal(ctx: &Context, operation: Operation) -> Option<(ResponseError, &'static str)> {
    if !ctx.has_authorizer() {
        return Some((ResponseError::SecurityDisabled, NO_AUTHORIZER));
    }
    if !ctx.allows_cluster(operation) {
        return Some((
            ResponseError::ClusterAuthorizationFailed,
            "Cluster authorization failed",
        ));
    }
    None
}

/// A filter from the wire: `None` where a code is unknown.
#[allow(clippy::too_many_arguments)]
fn filter(
    resource_type: i8,
    resource_name: Option<&StrBytes>,
    pattern_type: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    operation: i8,
    permission: i8,
) -> Option<AclFilter> {
    Some(AclFilter {
        resource_type: match resource_type {
            ANY => None,
            code => Some(ResourceType::from_kafka(code)?),
        },
        resource_name: resource_name.map(|n| n.to_string()),
        pattern: match pattern_type {
            ANY => PatternFilter::Any,
            2 => PatternFilter::Match,
            code => PatternFilter::Exactly(PatternType::from_kafka(code)?),
        },
        principal: principal.map(|p| p.to_string()),
        host: host.map(|h| h.to_string()),
        operation: match operation {
            ANY => None,
            code => Some(Operation::from_kafka(code)?),
        },
        permission: match permission {
            ANY => None,
            code => Some(Permission::from_kafka(code)?),
        },
    })
}

pub async fn create(request: CreateAclsRequest, ctx: &Context) -> CreateAclsResponse {
    let failed = |code: ResponseError, message: String| {
        AclCreationResult::default()
            .with_error_code(code.code())
            .with_error_message(Some(StrBytes::from(message)))
    };
    if let Some((code, message)) = refusal(ctx, Operation::ALTER) {
        let results = request
            .creations
            .iter()
            .map(|_| failed(code, message.to_string()))
            .collect();
        return CreateAclsResponse::default().with_results(results);
    }
    let bindings: Vec<Option<AclBinding>> = request
        .creations
        .iter()
        .map(|c| {
            Some(AclBinding {
                resource_type: ResourceType::from_kafka(c.resource_type)?,
                resource_name: c.resource_name.to_string(),
                pattern_type: PatternType::from_kafka(c.resource_pattern_type)?,
                principal: c.principal.to_string(),
                host: c.host.to_string(),
                operation: Operation::from_kafka(c.operation)?,
                permission: Permission::from_kafka(c.permission_type)?,
            })
        })
        .collect();
    let valid: Vec<AclBinding> = bindings.iter().flatten().cloned().collect();
    let mut outcomes = controller::create_acls(&ctx.shard, valid).await.into_iter();
    let results = bindings
        .iter()
        .map(|b| match b {
            None => failed(
                ResponseError::InvalidRequest,
                "a resource type, pattern type, operation or permission that is unknown or ANY"
                    .into(),
            ),
            Some(binding) => {
                let outcome = outcomes.next().unwrap_or(Ok(()));
                ctx.audit_change(
                    "ACL",
                    &binding.resource_name,
                    audit_outcome(outcome.as_ref().err()),
                    serde_json::json!({"create": acl_json(binding)}),
                );
                match outcome {
                    Ok(()) => AclCreationResult::default(),
                    Err(e) => failed(e.code, e.message),
                }
            }
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub fn describe(request: DescribeAclsRequest, ctx: &Context) -> DescribeAclsResponse {
    if let Some((code, message)) = refusal(ctx, Operation::DESCRIBE) {
        return DescribeAclsResponse::default()
            .with_error_code(code.code())
            .with_error_message(Some(StrBytes::from_static_str(message)));
    }
    let Some(filter) = filter(
        request.resource_type_filter,
        request.resource_name_filter.as_ref(),
        request.pattern_type_filter,
        request.principal_filter.as_ref(),
        request.host_filter.as_ref(),
        request.operation,
        request.permission_type,
    ) else {
        return DescribeAclsResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "an unknown code in the filter",
            )));
    };
    let image = ctx.shard.catalog.image();
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for acl in image.acls.iter().filter(|a| filter.matches(a)) {
        let description = AclDescription::default()
            .with_principal(StrBytes::from(acl.principal.clone()))
            .with_host(StrBytes::from(acl.host.clone()))
            .with_operation(acl.operation.0)
            .with_permission_type(acl.permission.kafka_code());
        let same = |r: &DescribeAclsResource| {
            r.resource_type == acl.resource_type.kafka_code()
                && r.resource_name.as_str() == acl.resource_name
                && r.pattern_type == acl.pattern_type.kafka_code()
        };
        match resources.iter_mut().find(|r| same(r)) {
            Some(resource) => resource.acls.push(description),
            None => resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(acl.resource_type.kafka_code())
                    .with_resource_name(StrBytes::from(acl.resource_name.clone()))
                    .with_pattern_type(acl.pattern_type.kafka_code())
                    .with_acls(vec![description]),
            ),
        }
    }
    DescribeAclsResponse::default().with_resources(resources)
}

pub async fn delete(request: DeleteAclsRequest, ctx: &Context) -> DeleteAclsResponse {
    let failed = |code: ResponseError, message: &str| {
        DeleteAclsFilterResult::default()
            .with_error_code(code.code())
            .with_error_message(Some(StrBytes::from(message.to_string())))
    };
    if let Some((code, message)) = refusal(ctx, Operation::ALTER) {
        let results = request
            .filters
            .iter()
            .map(|_| failed(code, message))
            .collect();
        return DeleteAclsResponse::default().with_filter_results(results);
    }
    let filters: Vec<Option<AclFilter>> = request
        .filters
        .iter()
        .map(|f| {
            filter(
                f.resource_type_filter,
                f.resource_name_filter.as_ref(),
                f.pattern_type_filter,
                f.principal_filter.as_ref(),
                f.host_filter.as_ref(),
                f.operation,
                f.permission_type,
            )
        })
        .collect();
    let valid: Vec<AclFilter> = filters.iter().flatten().cloned().collect();
    let mut outcomes = controller::delete_acls(&ctx.shard, valid).await.into_iter();
    let results = filters
        .iter()
        .map(|f| match f {
            None => failed(
                ResponseError::InvalidRequest,
                "an unknown code in the filter",
            ),
            Some(filter) => match outcomes.next().unwrap_or(Ok(Vec::new())) {
                Ok(deleted) => {
                    for acl in &deleted {
                        ctx.audit_change(
                            "ACL",
                            &acl.resource_name,
                            (0, None),
                            serde_json::json!({"delete": acl_json(acl), "filter": format!("{filter:?}")}),
                        );
                    }
                    DeleteAclsFilterResult::default().with_matching_acls(
                    deleted
                        .into_iter()
                        .map(|acl| {
                            DeleteAclsMatchingAcl::default()
                                .with_resource_type(acl.resource_type.kafka_code())
                                .with_resource_name(StrBytes::from(acl.resource_name))
                                .with_pattern_type(acl.pattern_type.kafka_code())
                                .with_principal(StrBytes::from(acl.principal))
                                .with_host(StrBytes::from(acl.host))
                                .with_operation(acl.operation.0)
                                .with_permission_type(acl.permission.kafka_code())
                        })
                        .collect(),
                    )
                }
                Err(e) => {
                    ctx.audit_change(
                        "ACL",
                        "",
                        audit_outcome(Some(&e)),
                        serde_json::json!({"filter": format!("{filter:?}")}),
                    );
                    failed(e.code, &e.message)
                }
            },
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
