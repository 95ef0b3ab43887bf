#!/usr/bin/env python3
"""Generates partition_table.json: golden key -> partition values from real peer clients.

Requirements (this script installs nothing itself):

    pip install kafka-python==3.0.12          # required: the murmur2 column
    pip install confluent-kafka==2.16.1       # optional: cross-checks against librdkafka 2.16.0

Run from anywhere:

    python3 crates/bus-core/tests/data/gen_partition_table.py

and commit the regenerated crates/bus-core/tests/data/partition_table.json. The Rust test
crates/bus-core/tests/partition.rs checks every row for all three partitioners.

Where each column comes from:

* murmur2 -- kafka-python's own DefaultPartitioner.partition() (which calls its
  kafka.partitioner.default.murmur2, a port of the Java client's Utils.murmur2), driven with a
  stub cluster so that the peer's own formula `(murmur2(key) & 0x7fffffff) % n` is what runs
  (for n = 2**31 - 1, whose partition list would not fit in memory, that same formula is applied
  to kafka-python's murmur2 directly).
* fnv1a -- a transcription of sarama's default hashPartitioner (NewHashPartitioner): Go's
  hash/fnv New32a over the key bytes, then `int32(h) % n` with Go's truncating `%`, negated when
  negative. See sarama_hash_partition() below.
* crc32 -- librdkafka's `consistent` partitioner: `rd_crc32(key) % partition_cnt`, where rd_crc32
  is CRC-32 (IEEE, as zlib.crc32) and the modulo is unsigned (uint32 % int32 promotes to unsigned
  in C).

When confluent-kafka is importable, the script also loads the librdkafka shared library bundled in
its wheel and calls librdkafka's exported partitioners (rd_kafka_msg_partitioner_murmur2,
rd_kafka_msg_partitioner_fnv1a, rd_kafka_msg_partitioner_consistent) on every key and partition
count, and fails if any column disagrees. It records in the output whether that cross-check ran.
"""

import ctypes
import glob
import hashlib
import json
import os
import sys
import zlib

import kafka
from kafka.partitioner.default import DefaultPartitioner, murmur2

PARTITION_COUNTS = [1, 2, 3, 6, 7, 12, 64, 100, 1000, 2147483647]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "partition_table.json")


# --- murmur2: kafka-python's own partitioner -----------------------------------------------------

class _StubCluster:
    """Just enough of kafka-python's ClusterMetadata for DefaultPartitioner.partition()."""

    def __init__(self, n):
        self._partitions = set(range(n))

    def topics(self):
        return {"t"}

    def partitions_for_topic(self, topic):
        return self._partitions

    def available_partitions_for_topic(self, topic):
        return self._partitions


def kafka_python_partition(key, n):
    if n > 100_000:
        # DefaultPartitioner materialises and sorts the partition list, which for 2**31 - 1
        # partitions does not fit in memory: apply its formula to its murmur2 instead.
        return (murmur2(key) & 0x7FFFFFFF) % n
    return DefaultPartitioner().partition("t", key, key, None, None, _StubCluster(n))


# --- fnv1a: sarama's hashPartitioner, transcribed --------------------------------------------

FNV32_OFFSET = 0x811C9DC5
FNV32_PRIME = 0x01000193


def go_fnv_new32a(data):
    """Go's hash/fnv New32a().Write(data).Sum32(): FNV-1a, 32 bits."""
    h = FNV32_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV32_PRIME) & 0xFFFFFFFF
    return h


def go_int32(u):
    """Go's int32(uint32): reinterpret the bits as two's complement."""
    return u - (1 << 32) if u & 0x80000000 else u


def go_rem(a, b):
    """Go's % on integers: truncated division, the result has the dividend's sign."""
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def sarama_hash_partition(key, n):
    # sarama partitioner.go, hashPartitioner.Partition (referenceAbs == false):
    #     partition = int32(p.hasher.Sum32()) % numPartitions
    #     if partition < 0 { partition = -partition }
    partition = go_rem(go_int32(go_fnv_new32a(key)), n)
    if partition < 0:
        partition = -partition
    return partition


# --- crc32: librdkafka's consistent partitioner -------------------------------------------------

def crc32_hash(key):
    return zlib.crc32(key) & 0xFFFFFFFF


def librdkafka_consistent_partition(key, n):
    # rdkafka_msg.c: return rd_crc32(key, keylen) % partition_cnt;  (unsigned modulo)
    return crc32_hash(key) % n


# --- the keys ----------------------------------------------------------------------------------

def keys():
    """(label, bytes) pairs: varied, deterministic."""
    out = []

    def add(label, data):
        out.append((label, data))

    # ASCII words and the keys librdkafka's own fnv1a unit test uses.
    for s in ["kafka", "giberish123456789", "1234", "234", "34", "4",
              "PreAmbleWillBeRemoved,ThePrePartThatIs", "a", "ab", "abc", "abcd", "abcde",
              "hello world", "The quick brown fox jumps over the lazy dog", "0", "-1",
              "key", "KEY", " leading-space", "trailing-space ", "tab\there", "new\nline"]:
        add("ascii:" + s, s.encode())
    # Aggregate-id-like strings.
    for s in ["order-123", "order-124", "order-1", "customer-42", "tenant:42/user.7",
              "tenant:42/user.8", "invoice_2024.01.31", "acct:eu-west-1/123456789012",
              "a.b.c/d_e-f:g", "user/550e8400", "cart:9f86d081", "ORDER-123"]:
        add("aggregate:" + s, s.encode())
    # UUIDs, fixed.
    for s in ["550e8400-e29b-41d4-a716-446655440000", "123e4567-e89b-12d3-a456-426614174000",
              "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
              "f47ac10b-58cc-4372-a567-0e02b2c3d479", "9b2c1a6e-3f4d-4e8a-b1c2-d3e4f5a6b7c8"]:
        add("uuid:" + s, s.encode())
    # Empty and long keys.
    add("empty", b"")
    add("long:x*256", b"x" * 256)
    add("long:alphabet*40", b"abcdefghijklmnopqrstuvwxyz" * 40)
    add("long:sha256-hex*8", (hashlib.sha256(b"partition").hexdigest() * 8).encode())
    add("long:tenant-path", ("tenant:7/" + "/".join("segment-%d" % i for i in range(60))).encode())
    # Non-ASCII UTF-8.
    for s in ["café", "naïve-ключ", "日本語のキー", "emoji-🚀-key", "Ελληνικά:42", "مفتاح", "ß"]:
        add("utf8:" + s, s.encode("utf-8"))
    # Binary bytes, including every tail length 0..3 after a full 4-byte block.
    add("bin:00", b"\x00")
    add("bin:00000000", b"\x00\x00\x00\x00")
    add("bin:ff", b"\xff")
    add("bin:ffffffff", b"\xff\xff\xff\xff")
    add("bin:ff*5", b"\xff" * 5)
    add("bin:80", b"\x80")
    add("bin:0..15", bytes(range(16)))
    add("bin:0..255", bytes(range(256)))
    add("bin:255..0", bytes(range(255, -1, -1)))
    add("bin:deadbeef", bytes.fromhex("deadbeef"))
    add("bin:deadbeefca", bytes.fromhex("deadbeefca"))
    add("bin:deadbeefcafe", bytes.fromhex("deadbeefcafe"))
    add("bin:deadbeefcafeba", bytes.fromhex("deadbeefcafeba"))
    add("bin:invalid-utf8", b"\xc3\x28\xa0\xa1")
    # Keys whose hashes are negative as int32, found by a deterministic search so that each
    # hash has several (on top of those above that happen to be).
    for name, h in (("murmur2", murmur2), ("fnv1a", go_fnv_new32a), ("crc32", crc32_hash)):
        found = 0
        i = 0
        while found < 4:
            k = ("neg-%s-%d" % (name, i)).encode()
            if h(k) & 0x80000000:
                add("negative-%s:%s" % (name, k.decode()), k)
                found += 1
            i += 1
    # A key whose 32-bit FNV-1a is exactly 0x80000000 (int32 min, which has no positive
    # counterpart): found offline by a meet-in-the-middle search (FNV's prime is odd, so each
    # step inverts mod 2**32). sarama computes int32(h) % n before negating, so it never overflows.
    k = bytes.fromhex("025796df4d")
    assert go_fnv_new32a(k) == 0x80000000
    add("fnv1a-int32-min:025796df4d", k)
    return out


# --- optional cross-check against librdkafka ---------------------------------------------------

def load_librdkafka():
    try:
        import confluent_kafka
    except ImportError:
        return None, None
    base = os.path.dirname(os.path.dirname(os.path.abspath(confluent_kafka.__file__)))
    libs = glob.glob(os.path.join(base, "confluent_kafka.libs", "librdkafka*.so*"))
    if not libs:
        return None, None
    lib = ctypes.CDLL(libs[0])
    fns = {}
    for col, sym in (("murmur2", "rd_kafka_msg_partitioner_murmur2"),
                     ("fnv1a", "rd_kafka_msg_partitioner_fnv1a"),
                     ("crc32", "rd_kafka_msg_partitioner_consistent")):
        f = getattr(lib, sym)
        f.restype = ctypes.c_int32
        f.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int32,
                      ctypes.c_void_p, ctypes.c_void_p]
        # rkt and the opaques are unused by these partitioners when the key is non-NULL.
        fns[col] = (lambda f: lambda key, n: f(None, key, len(key), n, None, None))(f)
    return confluent_kafka.libversion()[0], fns


def main():
    rows = []
    for label, key in keys():
        rows.append({
            "label": label,
            "key_hex": key.hex(),
            "murmur2_hash": murmur2(key),
            "fnv1a_hash": go_fnv_new32a(key),
            "crc32_hash": crc32_hash(key),
            "murmur2": [kafka_python_partition(key, n) for n in PARTITION_COUNTS],
            "fnv1a": [sarama_hash_partition(key, n) for n in PARTITION_COUNTS],
            "crc32": [librdkafka_consistent_partition(key, n) for n in PARTITION_COUNTS],
        })

    rdk_version, rdk = load_librdkafka()
    if rdk is not None:
        mismatches = 0
        for row in rows:
            key = bytes.fromhex(row["key_hex"])
            for col in ("murmur2", "fnv1a", "crc32"):
                got = [rdk[col](key, n) for n in PARTITION_COUNTS]
                if got != row[col]:
                    mismatches += 1
                    print("librdkafka %s disagrees for %s: %s vs %s"
                          % (col, row["label"], got, row[col]), file=sys.stderr)
        if mismatches:
            sys.exit("librdkafka cross-check failed (%d mismatches)" % mismatches)

    table = {
        "generated_by": "crates/bus-core/tests/data/gen_partition_table.py",
        "peers": {
            "murmur2": "kafka-python %s DefaultPartitioner" % kafka.__version__,
            "fnv1a": "sarama hashPartitioner (NewHashPartitioner), transcribed",
            "crc32": "librdkafka consistent formula over zlib.crc32",
        },
        "librdkafka_crosscheck": (
            "all columns equal librdkafka %s's exported murmur2, fnv1a and consistent "
            "partitioners" % rdk_version) if rdk is not None else None,
        "partition_counts": PARTITION_COUNTS,
        "rows": rows,
    }
    # One row per line keeps the file readable and its diffs small.
    head = {k: v for k, v in table.items() if k != "rows"}
    text = json.dumps(head, indent=1, ensure_ascii=False)[:-2]
    text += ',\n "rows": [\n'
    text += ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in rows)
    text += "\n ]\n}\n"
    json.loads(text)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    negatives = {c: sum(1 for r in rows if r[c + "_hash"] & 0x80000000)
                 for c in ("murmur2", "fnv1a", "crc32")}
    print("wrote %d keys x %d partition counts to %s; keys with int32-negative hash: %s; "
          "librdkafka cross-check: %s"
          % (len(rows), len(PARTITION_COUNTS), OUT, negatives, rdk_version or "not run"))


if __name__ == "__main__":
    main()
