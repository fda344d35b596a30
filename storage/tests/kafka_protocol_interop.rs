//! Cross-check with an implementation we did not write: batches encoded by the `kafka-protocol`
//! crate (generated from Kafka's own schemas), in every compression codec, pass our validation,
//! are stored and served unchanged but for the stamped offset and epoch, and decode back to the
//! same records with `kafka-protocol`'s decoder. A corruption it did not make is refused.

mod common;

use bytes::{Bytes, BytesMut};
use common::run;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_storage::batch::validate_batches;
use sluice_storage::{LeaderEpoch, Log, LogConfig, Offset, StorageError};

fn records(n: i64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_string(format!("h{i}")),
                Some(Bytes::from(format!("hv{i}"))),
            );
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: 4242,
                producer_epoch: 3,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32,
                timestamp: 1_700_000_000_000 + i,
                key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(vec![
                    b'a' + (i % 26) as u8;
                    100 + i as usize * 7
                ])),
                headers,
            }
        })
        .collect()
}

fn encode(recs: &[Record], compression: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        recs,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

#[test]
fn batches_from_kafka_protocol_round_trip_in_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        let codecs = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        let recs = records(10);
        let mut expected_base = Offset(0);
        for codec in codecs {
            let encoded = encode(&recs, codec);
            let infos =
                validate_batches(&encoded, usize::MAX).expect("kafka-protocol batches validate");
            assert_eq!(infos.len(), 1, "{codec:?}: one batch");
            assert_eq!(infos[0].record_count, 10);
            let a = log.append_durable(&encoded, LeaderEpoch(6)).await.unwrap();
            assert_eq!(a.base_offset, expected_base);
            let read = log.read(a.base_offset, 1 << 20).await.unwrap();
            // Stored bytes equal the sent ones apart from baseOffset and partitionLeaderEpoch.
            assert_eq!(read.bytes.len(), encoded.len());
            assert_eq!(
                read.bytes[16..],
                encoded[16..],
                "{codec:?}: bytes after the stamped fields unchanged"
            );
            let mut served = read.bytes.clone();
            let sets = RecordBatchDecoder::decode_all(&mut served)
                .expect("kafka-protocol decodes what we serve");
            let got = &sets[0].records;
            assert_eq!(got.len(), recs.len());
            for (g, r) in got.iter().zip(&recs) {
                assert_eq!(g.offset, r.offset + a.base_offset.0);
                assert_eq!(g.partition_leader_epoch, 6);
                assert_eq!(
                    (&g.key, &g.value, &g.headers, g.timestamp),
                    (&r.key, &r.value, &r.headers, r.timestamp)
                );
                assert_eq!(
                    (g.producer_id, g.producer_epoch, g.sequence),
                    (r.producer_id, r.producer_epoch, r.sequence)
                );
            }
            expected_base = expected_base.plus(10);
        }
        // Timestamp lookup inside an uncompressed kafka-protocol batch finds the exact record.
        assert_eq!(
            log.offset_for_timestamp(1_700_000_000_004).await.unwrap(),
            Some(Offset(4))
        );
    });
}

#[test]
fn a_corrupted_kafka_protocol_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        let mut bad = encode(&records(3), Compression::Zstd).to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x01;
        assert!(matches!(
            log.append(&bad, LeaderEpoch(0)).await,
            Err(StorageError::InvalidBatch { .. })
        ));
        assert_eq!(log.log_end_offset(), Offset(0));
    });
}
