//! The partitioners against golden tables produced by real peer clients
//! (`tests/data/partition_table.json`, written by `tests/data/gen_partition_table.py`: kafka-python
//! for murmur2, sarama's formula for fnv1a, librdkafka's `consistent` formula for crc32, all three
//! cross-checked against librdkafka's own partitioners), plus Go's `hash/fnv` values recorded in
//! librdkafka's unit test, zero partitions, configuration names, and unkeyed spreading.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bus_core::Partitioner;
use bus_core::backend::{PartitionError, UnkeyedSpreader};
use serde::Deserialize;

#[derive(Deserialize)]
struct Table {
    partition_counts: Vec<i32>,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    label: String,
    key_hex: String,
    murmur2_hash: u32,
    fnv1a_hash: u32,
    crc32_hash: u32,
    murmur2: Vec<i32>,
    fnv1a: Vec<i32>,
    crc32: Vec<i32>,
}

fn table() -> Table {
    let text = include_str!("data/partition_table.json");
    serde_json::from_str(text).expect("partition_table.json decodes")
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn golden_table_is_substantial() {
    let t = table();
    assert!(t.rows.len() >= 60, "only {} keys", t.rows.len());
    for n in [1, 2, 3, 6, 7, 12, 64, 100] {
        assert!(t.partition_counts.contains(&n), "partition count {n} missing");
    }
    for row in &t.rows {
        for col in [&row.murmur2, &row.fnv1a, &row.crc32] {
            assert_eq!(col.len(), t.partition_counts.len(), "{}", row.label);
        }
    }
    // Keys whose hashes are negative as int32 are where the formulas differ: make sure each
    // hash has plenty, and that the empty key is there.
    let negative = |f: fn(&Row) -> u32| t.rows.iter().filter(|r| f(r) & 0x8000_0000 != 0).count();
    assert!(negative(|r| r.murmur2_hash) >= 10);
    assert!(negative(|r| r.fnv1a_hash) >= 10);
    assert!(negative(|r| r.crc32_hash) >= 10);
    assert!(t.rows.iter().any(|r| r.key_hex.is_empty()));
}

#[test]
fn hashes_match_the_peers() {
    for row in table().rows {
        let key = unhex(&row.key_hex);
        assert_eq!(Partitioner::Murmur2.hash(&key), row.murmur2_hash, "murmur2 of {}", row.label);
        assert_eq!(Partitioner::Fnv1a.hash(&key), row.fnv1a_hash, "fnv1a of {}", row.label);
        assert_eq!(Partitioner::Crc32.hash(&key), row.crc32_hash, "crc32 of {}", row.label);
    }
}

#[test]
fn partitions_match_the_peers() {
    let t = table();
    let mut checked = 0;
    for row in &t.rows {
        let key = unhex(&row.key_hex);
        for (i, &n) in t.partition_counts.iter().enumerate() {
            for (partitioner, expected) in [
                (Partitioner::Murmur2, row.murmur2[i]),
                (Partitioner::Fnv1a, row.fnv1a[i]),
                (Partitioner::Crc32, row.crc32[i]),
            ] {
                assert_eq!(
                    partitioner.partition(&key, n),
                    Ok(expected),
                    "{partitioner} of {} ({}) over {n} partitions",
                    row.label,
                    row.key_hex
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, t.rows.len() * t.partition_counts.len() * 3);
}

#[test]
fn fnv1a_matches_go_hash_fnv_values_from_librdkafka_unit_test() {
    // librdkafka's rdfnv1a.c records these `int32` results of Go's hash/fnv New32a, after the
    // absolute value sarama's NewHashPartitioner takes (obtained on the Go playground).
    let golden: [(&str, u32); 11] = [
        ("kafka", 0x0d33c4e1),
        ("giberish123456789", 0x77a58295),
        ("1234", 0x023bdd03),
        ("234", 0x2dea3cd2),
        ("34", 0x740fa83e),
        ("4", 0x310ca263),
        ("PreAmbleWillBeRemoved,ThePrePartThatIs", 0x65cbd69c),
        ("reAmbleWillBeRemoved,ThePrePartThatIs", 0x6e49c79a),
        ("eAmbleWillBeRemoved,ThePrePartThatIs", 0x69eed356),
        ("AmbleWillBeRemoved,ThePrePartThatIs", 0x6abcc023),
        ("", 0x7ee3623b),
    ];
    for (key, abs_hash) in golden {
        assert_eq!(
            (Partitioner::Fnv1a.hash(key.as_bytes()) as i32).unsigned_abs(),
            abs_hash,
            "{key:?}"
        );
        for n in [1, 2, 3, 7, 100, 1000] {
            let expected = (abs_hash % n as u32) as i32;
            assert_eq!(Partitioner::Fnv1a.partition(key.as_bytes(), n), Ok(expected), "{key:?}");
        }
    }
}

#[test]
fn zero_or_negative_partition_counts_are_errors() {
    for p in Partitioner::ALL {
        for n in [0, -1, i32::MIN] {
            assert_eq!(p.partition(b"key", n), Err(PartitionError::NoPartitions { partitions: n }));
            assert_eq!(
                p.partition_for(Some(b"key"), n, &UnkeyedSpreader::new()),
                Err(PartitionError::NoPartitions { partitions: n })
            );
        }
    }
    let spreader = UnkeyedSpreader::new();
    assert_eq!(spreader.next_partition(0), Err(PartitionError::NoPartitions { partitions: 0 }));
    // A failed call does not advance the round robin.
    assert_eq!(spreader.next_partition(4), Ok(0));
    let err = Partitioner::Murmur2.partition(b"k", 0).unwrap_err();
    assert!(err.to_string().contains("0 partitions"), "{err}");
}

#[test]
fn results_are_always_in_range() {
    let keys: Vec<Vec<u8>> =
        (0u32..500).map(|i| i.to_le_bytes().repeat((i % 7) as usize)).collect();
    for p in Partitioner::ALL {
        for n in [1, 2, 5, 13, 31, 1 << 20, i32::MAX] {
            for key in &keys {
                let got = p.partition(key, n).unwrap();
                assert!((0..n).contains(&got), "{p} gave {got} for {n}");
            }
        }
    }
}

#[test]
fn configuration_names() {
    assert_eq!(Partitioner::default(), Partitioner::Murmur2);
    for (p, name) in [
        (Partitioner::Murmur2, "murmur2"),
        (Partitioner::Fnv1a, "fnv1a"),
        (Partitioner::Crc32, "crc32"),
    ] {
        assert_eq!(p.name(), name);
        assert_eq!(p.to_string(), name);
        assert_eq!(name.parse::<Partitioner>(), Ok(p));
        assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{name}\""));
        assert_eq!(serde_json::from_str::<Partitioner>(&format!("\"{name}\"")).unwrap(), p);
    }
    for bad in ["Murmur2", "fnv", "consistent", ""] {
        assert_eq!(
            bad.parse::<Partitioner>(),
            Err(PartitionError::UnknownPartitioner { name: bad.to_owned() })
        );
        assert!(serde_json::from_str::<Partitioner>(&format!("\"{bad}\"")).is_err());
    }
}

#[test]
fn empty_key_is_hashed_and_absent_key_is_spread() {
    let spreader = UnkeyedSpreader::new();
    for p in Partitioner::ALL {
        // Present but empty: hashed, so stable.
        let fixed = p.partition(b"", 7).unwrap();
        for _ in 0..5 {
            assert_eq!(p.partition_for(Some(b""), 7, &spreader), Ok(fixed));
        }
    }
    // The empty key's hashes, from the table's peers: crc32("") = 0 goes to partition 0.
    assert_eq!(Partitioner::Crc32.partition(b"", 7), Ok(0));
    // Absent: round robin.
    let spreader = UnkeyedSpreader::new();
    let got: Vec<i32> =
        (0..8).map(|_| Partitioner::Murmur2.partition_for(None, 3, &spreader).unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 0, 1, 2, 0, 1]);
}

#[test]
fn unkeyed_spreader_is_even_and_follows_partition_count_changes() {
    let spreader = UnkeyedSpreader::starting_at(5);
    assert_eq!(spreader.next_partition(4), Ok(1));
    let mut counts = [0usize; 6];
    for _ in 0..600 {
        counts[spreader.next_partition(6).unwrap() as usize] += 1;
    }
    assert_eq!(counts, [100; 6]);
    // Near the end of the counter's range it still stays in range.
    let spreader = UnkeyedSpreader::starting_at(u64::MAX - 2);
    for _ in 0..6 {
        assert!((0..7).contains(&spreader.next_partition(7).unwrap()));
    }
}

#[test]
fn unkeyed_spreader_is_even_across_threads() {
    // Scoped threads: all joined before `scope` returns.
    let spreader = UnkeyedSpreader::new();
    let mut counts = [0usize; 8];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..1000).map(|_| spreader.next_partition(8).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for p in h.join().unwrap() {
                counts[p as usize] += 1;
            }
        }
    });
    assert_eq!(counts, [500; 8]);
}
