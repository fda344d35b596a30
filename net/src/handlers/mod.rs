//! One module per Kafka API. Each declares `RANGE` (the versions it implements) and a `handle`
//! function from the decoded request to the response.

pub mod api_versions;
pub mod metadata;
