//! The catalog: every topic of the broker, persisted in `<data_dir>/metadata.json`.
//!
//! One shard (the controller, shard 0) changes the catalog; every shard reads it. A change is
//! made durable first (written to a temporary file, fdatasync'ed, renamed, directory synced),
//! then published as a new immutable [`Image`] with a higher version. Readers keep their own
//! `Arc<Image>` and check one atomic version number per request to pick up a newer one: the
//! produce and fetch paths take no lock. A topic whose creation was acknowledged survives any
//! crash; one whose change did not reach the rename never appears.
//!
//! This single-writer shape is where the controller Raft group will sit in cluster mode.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::acls::AclBinding;
use crate::cluster::ClusterTable;
use crate::cluster_metadata::ClusterImage;
use crate::quotas::ClientQuota;
use crate::scram::ScramUsers;
use crate::topics::{validate_config, validate_topic_name, Topic, PARTITIONS_MAX};

/// File name of the persisted catalog, in the data directory.
pub const METADATA_FILE: &str = "metadata.json";

/// Version of the file's layout; a file of another version is refused.
const METADATA_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid catalog: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot write the catalog: {0}")]
    Write(#[from] sluice_storage::StorageError),
}

/// The persisted form.
#[derive(Debug, Serialize, Deserialize)]
struct MetadataFile {
    format: u32,
    topics: Vec<Topic>,
    /// Producer ids below this may have been handed out (see `controller::init_producer_id`).
    #[serde(default)]
    producer_ids_reserved: i64,
    /// Broker configs changed at runtime (AlterConfigs on the broker); see `broker_configs`.
    #[serde(default)]
    broker_configs: BTreeMap<String, String>,
    /// SCRAM users (AlterUserScramCredentials); see `scram`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    scram_users: ScramUsers,
    /// ACLs (CreateAcls); see `acls`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    acls: Vec<AclBinding>,
    /// Client quotas (AlterClientQuotas); see `quotas`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    client_quotas: Vec<ClientQuota>,
}

/// One immutable version of the topic table.
#[derive(Debug, Default)]
pub struct Image {
    pub version: u64,
    /// Producer ids below this may have been handed out already.
    pub producer_ids_reserved: i64,
    /// Broker configs set at runtime, overriding the start-up settings.
    pub broker_configs: BTreeMap<String, String>,
    /// SCRAM users: who may authenticate on a SASL listener, and with what.
    pub scram_users: ScramUsers,
    /// ACLs, in the order they were created.
    pub acls: Vec<AclBinding>,
    /// Client quotas, by entity.
    pub client_quotas: Vec<ClientQuota>,
    /// Cluster mode: the controller's image this version was built from (brokers, replica
    /// assignments). `None` on a single node.
    pub cluster: Option<Arc<ClusterImage>>,
    by_name: BTreeMap<String, Arc<Topic>>,
    by_id: HashMap<Uuid, Arc<Topic>>,
}

impl Image {
    fn new(
        version: u64,
        topics: impl IntoIterator<Item = Topic>,
        producer_ids_reserved: i64,
    ) -> Image {
        let mut image = Image {
            version,
            producer_ids_reserved,
            ..Image::default()
        };
        for topic in topics {
            let topic = Arc::new(topic);
            image.by_id.insert(topic.id, topic.clone());
            image.by_name.insert(topic.name.clone(), topic);
        }
        image
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<Topic>> {
        self.by_name.get(name)
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<&Arc<Topic>> {
        self.by_id.get(&id)
    }

    /// Every topic, by name.
    pub fn topics(&self) -> impl Iterator<Item = &Arc<Topic>> {
        self.by_name.values()
    }

    /// A copy of the topics, to build the next version from.
    pub fn to_topics(&self) -> BTreeMap<String, Topic> {
        self.by_name
            .iter()
            .map(|(n, t)| (n.clone(), Topic::clone(t)))
            .collect()
    }
}

/// The shared catalog.
#[derive(Debug)]
pub struct Catalog {
    data_dir: PathBuf,
    current: RwLock<Arc<Image>>,
    version: AtomicU64,
    /// Cluster mode: partition and controller leaders as this node's replicas know them.
    pub cluster: ClusterTable,
}

impl Catalog {
    /// Loads `<data_dir>/metadata.json` (an absent file is an empty catalog); `data_dir` must
    /// exist. Blocking: called once at start-up, before the shards run.
    pub fn load(data_dir: &Path) -> Result<Catalog, CatalogError> {
        // Absolute, because glommio's directory operations (fsync of the directory after a
        // rename) fail with EBADF on relative paths, and `./data` is the default.
        let data_dir = &std::fs::canonicalize(data_dir).map_err(|source| CatalogError::Read {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join(METADATA_FILE);
        let display = path.display().to_string();
        let mut producer_ids_reserved = 0;
        let mut broker_configs = BTreeMap::new();
        let mut scram_users = ScramUsers::new();
        let mut acls = Vec::new();
        let mut client_quotas = Vec::new();
        let topics = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: MetadataFile =
                    serde_json::from_slice(&bytes).map_err(|e| CatalogError::Invalid {
                        path: display.clone(),
                        reason: e.to_string(),
                    })?;
                if file.format != METADATA_FORMAT {
                    return Err(CatalogError::Invalid {
                        path: display,
                        reason: format!(
                            "format {} (this build reads {METADATA_FORMAT})",
                            file.format
                        ),
                    });
                }
                for topic in &file.topics {
                    check_topic(topic).map_err(|reason| CatalogError::Invalid {
                        path: display.clone(),
                        reason,
                    })?;
                }
                producer_ids_reserved = file.producer_ids_reserved;
                for (name, value) in &file.broker_configs {
                    crate::broker_configs::validate(name, value).map_err(|reason| {
                        CatalogError::Invalid {
                            path: display.clone(),
                            reason,
                        }
                    })?;
                }
                broker_configs = file.broker_configs;
                crate::scram::check_users(&file.scram_users).map_err(|reason| {
                    CatalogError::Invalid {
                        path: display.clone(),
                        reason,
                    }
                })?;
                scram_users = file.scram_users;
                for acl in &file.acls {
                    acl.check().map_err(|reason| CatalogError::Invalid {
                        path: display.clone(),
                        reason: format!("ACL {acl:?}: {reason}"),
                    })?;
                }
                acls = file.acls;
                for quota in &file.client_quotas {
                    for (key, value) in &quota.values {
                        crate::quotas::check_change(&crate::quotas::QuotaChange {
                            entity: quota.entity.clone(),
                            key: key.clone(),
                            value: Some(*value),
                        })
                        .map_err(|reason| CatalogError::Invalid {
                            path: display.clone(),
                            reason: format!("client quota {:?}: {reason}", quota.entity),
                        })?;
                    }
                }
                client_quotas = file.client_quotas;
                file.topics
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(CatalogError::Read {
                    path: display,
                    source,
                })
            }
        };
        Ok(Catalog {
            data_dir: data_dir.to_path_buf(),
            current: RwLock::new(Arc::new(Image {
                broker_configs,
                scram_users,
                acls,
                client_quotas,
                ..Image::new(1, topics, producer_ids_reserved)
            })),
            version: AtomicU64::new(1),
            cluster: ClusterTable::default(),
        })
    }

    /// Cluster mode: an empty catalog over `data_dir`, filled from the controller's image
    /// ([`Catalog::publish_cluster`]); `metadata.json` is not used. Refuses a data directory
    /// that holds a single node's catalog with topics: their partitions are not Raft groups.
    pub fn for_cluster(data_dir: &Path) -> Result<Catalog, CatalogError> {
        let single = Catalog::load(data_dir)?;
        if let Some(topic) = single.image().topics().next() {
            return Err(CatalogError::Invalid {
                path: single.data_dir.join(METADATA_FILE).display().to_string(),
                reason: format!(
                    "this data directory holds a single node's topics (such as {}); \
                     a cluster node needs a new data directory",
                    topic.name
                ),
            });
        }
        Ok(Catalog {
            current: RwLock::new(Arc::new(Image {
                cluster: Some(Arc::default()),
                ..Image::default()
            })),
            ..single
        })
    }

    /// Cluster mode: publishes the controller's `cluster` image as the next version (nothing is
    /// written: the controller's log is the durable copy).
    pub fn publish_cluster(&self, cluster: &ClusterImage) {
        let topics = cluster.topics.values().map(|t| t.topic.clone());
        let image = Arc::new(Image {
            broker_configs: cluster.broker_configs.clone(),
            scram_users: cluster.scram_users.clone(),
            acls: cluster.acls.clone(),
            client_quotas: cluster.client_quotas.clone(),
            cluster: Some(Arc::new(cluster.clone())),
            ..Image::new(self.version() + 1, topics, cluster.producer_ids_reserved)
        });
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = image.clone();
        self.version.store(image.version, Ordering::Release);
    }

    /// Adds topic `name` with `partitions` if the catalog lacks it, writing the file durably.
    /// Blocking: for start-up (internal topics such as `__consumer_offsets`).
    pub fn ensure_topic_blocking(&self, name: &str, partitions: i32) -> Result<(), CatalogError> {
        let image = self.image();
        if image.topic(name).is_some() {
            return Ok(());
        }
        let mut topics = image.to_topics();
        topics.insert(
            name.to_string(),
            Topic {
                name: name.to_string(),
                ..Topic::offsets(partitions)
            },
        );
        let file = MetadataFile {
            format: METADATA_FORMAT,
            topics: topics.values().cloned().collect(),
            producer_ids_reserved: image.producer_ids_reserved,
            broker_configs: image.broker_configs.clone(),
            scram_users: image.scram_users.clone(),
            acls: image.acls.clone(),
            client_quotas: image.client_quotas.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).expect("the catalog always serializes");
        let write_err = |e: std::io::Error| {
            CatalogError::Write(sluice_storage::StorageError::Io {
                path: self.data_dir.join(METADATA_FILE).display().to_string(),
                source: e,
            })
        };
        let temp = self.data_dir.join(format!("{METADATA_FILE}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&temp).map_err(write_err)?;
            f.write_all(&json).map_err(write_err)?;
            f.sync_data().map_err(write_err)?;
        }
        std::fs::rename(&temp, self.data_dir.join(METADATA_FILE)).map_err(write_err)?;
        std::fs::File::open(&self.data_dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)?;
        let next = Image {
            broker_configs: image.broker_configs.clone(),
            scram_users: image.scram_users.clone(),
            acls: image.acls.clone(),
            client_quotas: image.client_quotas.clone(),
            ..Image::new(
                self.version() + 1,
                topics.into_values(),
                image.producer_ids_reserved,
            )
        };
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The current version number (one atomic load).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current image.
    pub fn image(&self) -> Arc<Image> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes `topics` durable, then publishes them as the next image. Only the controller
    /// shard calls this, one change at a time (see `controller`).
    pub(crate) async fn publish(
        &self,
        topics: BTreeMap<String, Topic>,
        producer_ids_reserved: i64,
    ) -> Result<Arc<Image>, CatalogError> {
        let image = self.image();
        self.publish_all(
            topics,
            producer_ids_reserved,
            image.broker_configs.clone(),
            image.scram_users.clone(),
            image.acls.clone(),
            image.client_quotas.clone(),
        )
        .await
    }

    /// [`Catalog::publish`], with new broker configs, SCRAM users, ACLs and client quotas.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn publish_all(
        &self,
        topics: BTreeMap<String, Topic>,
        producer_ids_reserved: i64,
        broker_configs: BTreeMap<String, String>,
        scram_users: ScramUsers,
        acls: Vec<AclBinding>,
        client_quotas: Vec<ClientQuota>,
    ) -> Result<Arc<Image>, CatalogError> {
        let file = MetadataFile {
            format: METADATA_FORMAT,
            topics: topics.values().cloned().collect(),
            producer_ids_reserved,
            broker_configs: broker_configs.clone(),
            scram_users,
            acls,
            client_quotas,
        };
        let json = serde_json::to_vec_pretty(&file).expect("the catalog always serializes");
        // Only a change that gives space back (a topic deleted) may spend the reserve: a create
        // on a full disk spending it would leave the next deletion without room.
        let frees_space = topics.len() < self.image().topics().count();
        let written =
            sluice_storage::io::write_file_atomically(&self.data_dir, METADATA_FILE, &json).await;
        match written {
            Err(e) if is_disk_full(&e) && frees_space && release_space_reserve(&self.data_dir) => {
                // The reserve is gone: the catalog fits now (deleting a topic is how an operator
                // gets out of a full disk, and it needs this write).
                sluice_storage::io::write_file_atomically(&self.data_dir, METADATA_FILE, &json)
                    .await?;
            }
            other => other?,
        }
        if !self.data_dir.join(SPACE_RESERVE_FILE).exists() {
            ensure_space_reserve(&self.data_dir);
        }
        let image = Arc::new(Image {
            broker_configs,
            scram_users: file.scram_users,
            acls: file.acls,
            client_quotas: file.client_quotas,
            cluster: None,
            ..Image::new(
                self.version() + 1,
                topics.into_values(),
                producer_ids_reserved,
            )
        });
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = image.clone();
        self.version.store(image.version, Ordering::Release);
        Ok(image)
    }

    /// Topic directories under `<data_dir>/topics` that belong to no topic of the catalog:
    /// left by a deletion that a crash interrupted. The caller removes them at start-up.
    pub fn orphan_topic_dirs(&self) -> Vec<PathBuf> {
        let image = self.image();
        let live: std::collections::HashSet<PathBuf> = image
            .topics()
            .map(|t| crate::topics::topic_dir(&self.data_dir, &t.name, t.id))
            .collect();
        let Ok(entries) = std::fs::read_dir(self.data_dir.join(crate::topics::TOPICS_DIR)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && !live.contains(p))
            .collect()
    }
}

/// The invariants of a stored topic.
fn check_topic(topic: &Topic) -> Result<(), String> {
    validate_topic_name(&topic.name)?;
    if !(1..=PARTITIONS_MAX).contains(&topic.partitions) {
        return Err(format!(
            "topic {} has {} partitions",
            topic.name, topic.partitions
        ));
    }
    for (name, value) in &topic.configs {
        validate_config(name, value).map_err(|e| format!("topic {}: {e}", topic.name))?;
    }
    Ok(())
}

/// A file of zeros kept in the data directory so that the catalog can still be rewritten when
/// the disk is full: a catalog write that fails for lack of space removes it and tries again.
/// It comes back at start-up, or after a later catalog write, once space allows.
pub const SPACE_RESERVE_FILE: &str = ".space-reserve";
const SPACE_RESERVE_BYTES: usize = 4 << 20;
/// Free space the reserve leaves at least when it is put back.
const SPACE_RESERVE_MARGIN_BYTES: u64 = 64 << 20;

/// Puts the space reserve in place if it is missing and the disk has room for it; best effort
/// (a full disk simply goes without, with a warning).
pub fn ensure_space_reserve(data_dir: &Path) {
    let path = data_dir.join(SPACE_RESERVE_FILE);
    if path.exists() {
        return;
    }
    let room = sluice_storage::io::disk_space(data_dir)
        .is_ok_and(|(_, free)| free >= SPACE_RESERVE_MARGIN_BYTES);
    if !room {
        tracing::warn!(dir = %data_dir.display(), "no room for the space reserve; a full disk may keep topics from being deleted until space comes back");
        return;
    }
    let written = std::fs::File::create(&path).and_then(|mut f| {
        use std::io::Write;
        f.write_all(&vec![0u8; SPACE_RESERVE_BYTES])?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        tracing::warn!(file = %path.display(), error = %e, "cannot write the space reserve");
    }
}

/// Removes the space reserve; whether there was one.
fn release_space_reserve(data_dir: &Path) -> bool {
    let released = std::fs::remove_file(data_dir.join(SPACE_RESERVE_FILE)).is_ok();
    if released {
        tracing::warn!(dir = %data_dir.display(), "the disk is full: the space reserve was released so the catalog can be written");
    }
    released
}

/// The error is the filesystem running out of space.
fn is_disk_full(e: &sluice_storage::StorageError) -> bool {
    matches!(e, sluice_storage::StorageError::Io { source, .. }
        if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
            || source.raw_os_error() == Some(28))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_an_empty_catalog_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::load(dir.path()).unwrap();
        assert_eq!(catalog.image().topics().count(), 0);

        std::fs::write(dir.path().join(METADATA_FILE), b"{not json").unwrap();
        let err = Catalog::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("metadata.json"), "{err}");

        std::fs::write(
            dir.path().join(METADATA_FILE),
            br#"{"format":1,"topics":[{"name":"a b","id":"00000000-0000-0000-0000-000000000000","partitions":1,"configs":{}}]}"#,
        )
        .unwrap();
        let err = Catalog::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("contains ' '"), "{err}");

        // Users, ACLs and quotas are checked too.
        std::fs::write(
            dir.path().join(METADATA_FILE),
            br#"{"format":1,"topics":[],"scram_users":{"bob":{"SCRAM-SHA-256":{"iterations":4096,"salt":"c2FsdA==","stored_key":"AA==","server_key":"AA=="}}}}"#,
        )
        .unwrap();
        let err = Catalog::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("user bob") && err.contains("32 bytes"),
            "{err}"
        );
        std::fs::write(
            dir.path().join(METADATA_FILE),
            br#"{"format":1,"topics":[],"acls":[{"resource_type":"Topic","resource_name":"","pattern_type":"Literal","principal":"User:a","host":"*","operation":3,"permission":"Allow"}]}"#,
        )
        .unwrap();
        let err = Catalog::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("ACL") && err.contains("resource name is empty"),
            "{err}"
        );
        std::fs::write(
            dir.path().join(METADATA_FILE),
            br#"{"format":1,"topics":[],"client_quotas":[{"entity":{"user":null,"client_id":null},"values":[["producer_byte_rate",-1.0]]}]}"#,
        )
        .unwrap();
        let err = Catalog::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("quota"), "{err}");
    }
}
