//! Client quotas (KIP-55, KIP-546): byte rates and request shares per user and/or client id,
//! as the metadata stores them (AlterClientQuotas) and as Kafka resolves which applies.
//!
//! An entity names a user, a client id, or both; either may be the *default* entity of its type
//! (`EntityName::Default`, Kafka's null name). For a connection of user `u` with client id `c`,
//! the quota of a key is the first of these entities that sets it (Kafka's precedence):
//! `(u, c)`, `(u, default)`, `(u, -)`, `(default, c)`, `(default, default)`, `(default, -)`,
//! `(-, c)`, `(-, default)`.
//!
//! Keys: `producer_byte_rate` and `consumer_byte_rate` (bytes per second), `request_percentage`
//! (stored and described; not enforced yet).

use serde::{Deserialize, Serialize};

pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
pub const REQUEST_PERCENTAGE: &str = "request_percentage";
const KEYS: [&str; 3] = [PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE];

/// One side of an entity: a name, or the type's default.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityName {
    Default,
    Named(String),
}

impl EntityName {
    /// Kafka's wire form: `None` is the default.
    pub fn from_wire(name: Option<&str>) -> EntityName {
        match name {
            None => EntityName::Default,
            Some(n) => EntityName::Named(n.to_string()),
        }
    }

    pub fn to_wire(&self) -> Option<&str> {
        match self {
            EntityName::Default => None,
            EntityName::Named(n) => Some(n),
        }
    }
}

/// Who a quota applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntity {
    pub user: Option<EntityName>,
    pub client_id: Option<EntityName>,
}

/// One entity's quotas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientQuota {
    pub entity: QuotaEntity,
    /// Key → value, in key order.
    pub values: Vec<(String, f64)>,
}

/// One change of AlterClientQuotas: `None` removes the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaChange {
    pub entity: QuotaEntity,
    pub key: String,
    pub value: Option<f64>,
}

/// Why a change cannot be made (Kafka answers INVALID_REQUEST).
pub fn check_change(change: &QuotaChange) -> Result<(), String> {
    if change.entity.user.is_none() && change.entity.client_id.is_none() {
        return Err("an entity names a user, a client id, or both".into());
    }
    if !KEYS.contains(&change.key.as_str()) {
        return Err(format!(
            "{:?} is not a quota key ({})",
            change.key,
            KEYS.join(", ")
        ));
    }
    if let Some(v) = change.value {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{}: {v} must be a positive number", change.key));
        }
    }
    Ok(())
}

/// Applies `changes` to `quotas` (entities without a value left are removed).
pub fn apply(quotas: &mut Vec<ClientQuota>, changes: &[QuotaChange]) {
    for change in changes {
        let index = match quotas.iter().position(|q| q.entity == change.entity) {
            Some(i) => i,
            None => {
                quotas.push(ClientQuota {
                    entity: change.entity.clone(),
                    values: Vec::new(),
                });
                quotas.len() - 1
            }
        };
        let values = &mut quotas[index].values;
        values.retain(|(k, _)| *k != change.key);
        if let Some(v) = change.value {
            values.push((change.key.clone(), v));
            values.sort_by(|a, b| a.0.cmp(&b.0));
        }
        if values.is_empty() {
            quotas.remove(index);
        }
    }
}

/// The quota of `key` for a connection of `user` with `client_id`, by Kafka's precedence.
pub fn resolve(quotas: &[ClientQuota], user: &str, client_id: &str, key: &str) -> Option<f64> {
    use EntityName::{Default, Named};
    let named_user = Some(Named(user.to_string()));
    let named_client = Some(Named(client_id.to_string()));
    let order = [
        (named_user.clone(), named_client.clone()),
        (named_user.clone(), Some(Default)),
        (named_user, None),
        (Some(Default), named_client.clone()),
        (Some(Default), Some(Default)),
        (Some(Default), None),
        (None, named_client),
        (None, Some(Default)),
    ];
    order.iter().find_map(|(u, c)| {
        quotas
            .iter()
            .find(|q| q.entity.user == *u && q.entity.client_id == *c)
            .and_then(|q| q.values.iter().find(|(k, _)| k == key).map(|(_, v)| *v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(user: Option<EntityName>, client_id: Option<EntityName>) -> QuotaEntity {
        QuotaEntity { user, client_id }
    }

    fn set(quotas: &mut Vec<ClientQuota>, e: QuotaEntity, v: f64) {
        apply(
            quotas,
            &[QuotaChange {
                entity: e,
                key: PRODUCER_BYTE_RATE.into(),
                value: Some(v),
            }],
        );
    }

    #[test]
    fn the_most_specific_entity_that_sets_a_key_wins() {
        use EntityName::{Default, Named};
        let mut quotas = Vec::new();
        set(&mut quotas, entity(None, Some(Default)), 1.0);
        assert_eq!(
            resolve(&quotas, "alice", "app", PRODUCER_BYTE_RATE),
            Some(1.0)
        );
        set(&mut quotas, entity(Some(Default), None), 2.0);
        assert_eq!(
            resolve(&quotas, "alice", "app", PRODUCER_BYTE_RATE),
            Some(2.0)
        );
        set(&mut quotas, entity(Some(Named("alice".into())), None), 3.0);
        assert_eq!(
            resolve(&quotas, "alice", "app", PRODUCER_BYTE_RATE),
            Some(3.0)
        );
        assert_eq!(
            resolve(&quotas, "bob", "app", PRODUCER_BYTE_RATE),
            Some(2.0)
        );
        set(
            &mut quotas,
            entity(Some(Named("alice".into())), Some(Named("app".into()))),
            4.0,
        );
        assert_eq!(
            resolve(&quotas, "alice", "app", PRODUCER_BYTE_RATE),
            Some(4.0)
        );
        assert_eq!(
            resolve(&quotas, "alice", "other", PRODUCER_BYTE_RATE),
            Some(3.0)
        );
        assert_eq!(resolve(&quotas, "alice", "app", CONSUMER_BYTE_RATE), None);
        apply(
            &mut quotas,
            &[QuotaChange {
                entity: entity(Some(Named("alice".into())), Some(Named("app".into()))),
                key: PRODUCER_BYTE_RATE.into(),
                value: None,
            }],
        );
        assert_eq!(quotas.len(), 3, "an entity without values is gone");
    }

    #[test]
    fn bad_changes_are_refused() {
        let e = entity(None, Some(EntityName::Default));
        let change = |key: &str, value| QuotaChange {
            entity: e.clone(),
            key: key.into(),
            value,
        };
        assert!(check_change(&change("producer_byte_rate", Some(1024.0))).is_ok());
        assert!(check_change(&change("producer_byte_rate", Some(-1.0))).is_err());
        assert!(check_change(&change("io_thread_units", Some(1.0))).is_err());
        assert!(check_change(&QuotaChange {
            entity: entity(None, None),
            ..change("producer_byte_rate", None)
        })
        .is_err());
    }
}
