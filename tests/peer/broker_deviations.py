#!/usr/bin/env python3
"""Probes a Kafka-compatible broker for behaviours that differ from Apache Kafka's, using
confluent-kafka (librdkafka) alone. Each probe prints `SAME` or `DIFFERS` with what it saw and
what Apache Kafka (3.x/4.x, default broker configuration, one broker) does.

    target/peer-venv/bin/python tests/peer/broker_deviations.py --bootstrap 127.0.0.1:PORT [probe ...]

docs/BROKER.md lists the findings; each is reproduced by `... --bootstrap B <probe>`.
"""

import argparse
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

PROBES = {}
RETENTION_WAIT = 3


def probe(fn):
    PROBES[fn.__name__] = fn
    return fn


def name(prefix):
    return f"dev-{prefix}-{uuid.uuid4().hex[:8]}"


def report(probe_name, same, saw, kafka):
    print(f"{'SAME   ' if same else 'DIFFERS'} {probe_name}: saw {saw}; Apache Kafka: {kafka}")


def create(admin, topic, partitions=1, replication=1, config=None):
    futures = admin.create_topics([NewTopic(topic, partitions, replication, config=config or {})])
    futures[topic].result(30)


def produce(bootstrap, topic, messages, **conf):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, **conf})
    results = []

    def done(err, msg):
        results.append((err, msg))

    for m in messages:
        p.produce(topic, on_delivery=done, **m)
    p.flush(30)
    return results


def read_all(bootstrap, topic, partition=0, start=0, limit=100, timeout=10):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": name("g"), "enable.auto.commit": False})
    c.assign([TopicPartition(topic, partition, start)])
    out = []
    deadline = time.time() + timeout
    while time.time() < deadline and len(out) < limit:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            out.append(m.error())
            break
        out.append(m)
    c.close()
    return out


@probe
def auto_create_partitions(b, admin):
    """Produce to a topic that does not exist: Kafka auto-creates it with num.partitions=1."""
    topic = name("auto")
    produce(b, topic, [{"value": b"x"}])
    md = admin.list_topics(topic, timeout=10).topics[topic]
    n = len(md.partitions)
    report("auto_create_partitions", n == 1, f"auto-created with {n} partitions", "1 partition (num.partitions=1)")


@probe
def replication_factor_too_large(b, admin):
    """CreateTopics with replication factor 3 on a one-broker cluster."""
    topic = name("rf")
    try:
        create(admin, topic, 1, 3)
        report("replication_factor_too_large", False, "created", "INVALID_REPLICATION_FACTOR")
    except KafkaException as e:
        err = e.args[0]
        report("replication_factor_too_large", err.name() == "INVALID_REPLICATION_FACTOR", err.name(), "INVALID_REPLICATION_FACTOR")


@probe
def topic_already_exists(b, admin):
    topic = name("exists")
    create(admin, topic, 2)
    try:
        create(admin, topic, 2)
        report("topic_already_exists", False, "created again", "TOPIC_ALREADY_EXISTS")
    except KafkaException as e:
        err = e.args[0]
        report("topic_already_exists", err.name() == "TOPIC_ALREADY_EXISTS", err.name(), "TOPIC_ALREADY_EXISTS")


@probe
def invalid_topic_name(b, admin):
    topic = "bad topic name!"
    try:
        create(admin, topic, 1)
        report("invalid_topic_name", False, "created", "INVALID_TOPIC_EXCEPTION (code 17)")
    except KafkaException as e:
        err = e.args[0]
        # librdkafka names error 17 (Kafka's INVALID_TOPIC_EXCEPTION) TOPIC_EXCEPTION.
        report("invalid_topic_name", err.code() == 17, f"{err.name()} (code {err.code()})", "INVALID_TOPIC_EXCEPTION (code 17)")


@probe
def message_too_large(b, admin):
    """A 2 MB record: Kafka's message.max.bytes is 1,048,588 by default."""
    topic = name("large")
    create(admin, topic, 1)
    results = produce(b, topic, [{"value": b"x" * 2_000_000}], **{"message.max.bytes": 10_000_000})
    err = results[0][0]
    saw = err.name() if err else "accepted"
    report("message_too_large", saw == "MSG_SIZE_TOO_LARGE", saw, "MSG_SIZE_TOO_LARGE")


@probe
def duplicate_header_names(b, admin):
    topic = name("headers")
    create(admin, topic, 1)
    produce(b, topic, [{"value": b"v", "headers": [("a", b"1"), ("b", b"2"), ("a", b"3")]}])
    m = read_all(b, topic, limit=1)[0]
    headers = m.headers()
    same = headers == [("a", b"1"), ("b", b"2"), ("a", b"3")]
    report("duplicate_header_names", same, headers, "[('a', b'1'), ('b', b'2'), ('a', b'3')] (order and repeats kept)")


@probe
def null_key_and_tombstone(b, admin):
    topic = name("null")
    create(admin, topic, 1)
    produce(b, topic, [{"key": b"k", "value": None}, {"value": b""}])
    ms = read_all(b, topic, limit=2)
    saw = [(m.key(), m.value()) for m in ms]
    report("null_key_and_tombstone", saw == [(b"k", None), (None, b"")], saw, "[(b'k', None), (None, b'')]")


@probe
def compression_codecs(b, admin):
    ok = []
    for codec in ["gzip", "snappy", "lz4", "zstd"]:
        topic = name(codec)
        create(admin, topic, 1)
        results = produce(b, topic, [{"value": b"payload-" + codec.encode() * 50}], **{"compression.type": codec})
        err = results[0][0]
        ms = read_all(b, topic, limit=1)
        good = err is None and ms and not isinstance(ms[0], Exception) and ms[0].value() == b"payload-" + codec.encode() * 50
        ok.append((codec, "ok" if good else f"failed: {err or ms}"))
    report("compression_codecs", all(r == "ok" for _, r in ok), ok, "all four round-trip")


@probe
def create_time_kept(b, admin):
    topic = name("ts")
    create(admin, topic, 1)
    produce(b, topic, [{"value": b"v", "timestamp": 1_600_000_000_000}])
    m = read_all(b, topic, limit=1)[0]
    kind, ts = m.timestamp()
    report("create_time_kept", ts == 1_600_000_000_000 and kind == 1, (kind, ts), "(1 = CreateTime, 1600000000000)")


@probe
def offset_for_timestamp(b, admin):
    topic = name("oft")
    create(admin, topic, 1)
    produce(b, topic, [{"value": b"a", "timestamp": 1_000}, {"value": b"b", "timestamp": 2_000}, {"value": b"c", "timestamp": 3_000}])
    c = Consumer({"bootstrap.servers": b, "group.id": name("g")})
    found = c.offsets_for_times([TopicPartition(topic, 0, 2_000)], timeout=10)
    c.close()
    report("offset_for_timestamp", found[0].offset == 1, found[0].offset, "1 (first offset with timestamp >= 2000)")


@probe
def retention_config(b, admin):
    topic = name("cfg")
    create(admin, topic, 1, config={"retention.ms": "1000"})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    try:
        cfg = admin.describe_configs([res])[res].result(10)
        value = cfg.get("retention.ms").value if "retention.ms" in cfg else None
        report("retention_config", value == "1000", f"retention.ms = {value}", "1000 (as created)")
    except KafkaException as e:
        report("retention_config", False, e.args[0].name(), "the topic's configuration")


@probe
def retention_enforced(b, admin):
    """A topic with retention.ms=1000: Kafka deletes old segments (within log.retention.check.interval.ms, 5 min)."""
    topic = name("ret")
    create(admin, topic, 1, config={"retention.ms": "1000", "segment.ms": "1000"})
    produce(b, topic, [{"value": b"old"}])
    time.sleep(RETENTION_WAIT)
    c = Consumer({"bootstrap.servers": b, "group.id": name("g")})
    low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.close()
    report(
        "retention_enforced",
        low == high,
        f"watermarks low={low} high={high} after {RETENTION_WAIT} s",
        "low == high once log.retention.check.interval.ms (5 min) has passed; run with --retention-wait 330",
    )


@probe
def idempotent_producer(b, admin):
    topic = name("idem")
    create(admin, topic, 1)
    results = produce(b, topic, [{"value": b"1"}, {"value": b"2"}], **{"enable.idempotence": True})
    errs = [str(e) for e, _ in results if e]
    report("idempotent_producer", not errs, errs or "both delivered", "both delivered")


@probe
def delete_records(b, admin):
    topic = name("del")
    create(admin, topic, 1)
    produce(b, topic, [{"value": b"a"}, {"value": b"b"}, {"value": b"c"}])
    try:
        fut = admin.delete_records([TopicPartition(topic, 0, 2)])
        list(fut.values())[0].result(10)
        c = Consumer({"bootstrap.servers": b, "group.id": name("g")})
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        c.close()
        report("delete_records", (low, high) == (2, 3), f"watermarks {low}..{high}", "2..3")
    except (KafkaException, AttributeError) as e:
        report("delete_records", False, repr(e), "watermarks 2..3")


@probe
def fetch_out_of_range_resets(b, admin):
    """Fetch at offset 50 of a partition holding one record, auto.offset.reset=earliest: Kafka
    answers OFFSET_OUT_OF_RANGE and the consumer resets to offset 0."""
    topic = name("oorr")
    create(admin, topic, 1)
    produce(b, topic, [{"value": b"a"}])
    c = Consumer({"bootstrap.servers": b, "group.id": name("g"), "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, 0, 50)])
    saw = None
    deadline = time.time() + 15
    while time.time() < deadline and saw is None:
        m = c.poll(0.5)
        if m is not None:
            saw = m.error().name() if m.error() else f"record at {m.offset()}"
    c.close()
    report("fetch_out_of_range_resets", saw == "record at 0", saw or "nothing within 15 s", "record at 0 (reset to earliest)")


@probe
def fetch_out_of_range(b, admin):
    topic = name("oor")
    create(admin, topic, 1)
    produce(b, topic, [{"value": b"a"}])
    c = Consumer({"bootstrap.servers": b, "group.id": name("g"), "auto.offset.reset": "error"})
    c.assign([TopicPartition(topic, 0, 50)])
    saw = None
    deadline = time.time() + 10
    while time.time() < deadline and saw is None:
        m = c.poll(0.5)
        if m is not None:
            saw = m.error().name() if m.error() else f"record at {m.offset()}"
    c.close()
    report("fetch_out_of_range", saw == "_AUTO_OFFSET_RESET", saw or "nothing within 10 s", "_AUTO_OFFSET_RESET (broker: OFFSET_OUT_OF_RANGE)")


@probe
def create_partitions(b, admin):
    """Add partitions to a topic (CreatePartitions): Kafka grows it from 2 to 4."""
    from confluent_kafka.admin import NewPartitions

    topic = name("grow")
    create(admin, topic, 2)
    try:
        admin.create_partitions([NewPartitions(topic, 4)])[topic].result(30)
        error = None
    except Exception as e:  # the broker's refusal
        error = e
    n = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    report(
        "create_partitions",
        error is None and n == 4,
        f"{n} partitions after asking for 4 ({error or 'accepted'})",
        "the topic has 4 partitions",
    )


@probe
def group_protocol_vote(b, admin):
    """One member offering `range,roundrobin` forms a group; two offering `roundrobin,range`
    join. Kafka chooses the protocol every member supports with the most first-choice votes at
    each rebalance: roundrobin (2 votes to 1)."""
    topic = name("vote")
    group = name("vote-g")
    create(admin, topic, 6)

    def member(strategy):
        c = Consumer(
            {
                "bootstrap.servers": b,
                "group.id": group,
                "partition.assignment.strategy": strategy,
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 500,
            }
        )
        c.subscribe([topic])
        return c

    first = member("range,roundrobin")
    deadline = time.time() + 30
    while time.time() < deadline and not first.assignment():
        first.poll(0.1)
    members = [first, member("roundrobin,range"), member("roundrobin,range")]
    split = []
    deadline = time.time() + 30
    while time.time() < deadline:
        for c in members:
            c.poll(0.05)
        split = sorted(sorted(p.partition for p in c.assignment()) for c in members)
        if all(len(s) == 2 for s in split):
            break
    for c in members:
        c.close()
    # Told apart by the split of 6 partitions over 3 members (nisshi's DescribeGroups does not
    # name the protocol): range gives runs, roundrobin every third partition.
    chosen = {
        str([[0, 1], [2, 3], [4, 5]]): "range",
        str([[0, 3], [1, 4], [2, 5]]): "roundrobin",
    }.get(str(split), f"unknown (split {split})")
    report(
        "group_protocol_vote",
        chosen == "roundrobin",
        f"the group's protocol is {chosen!r} (split {split})",
        "'roundrobin' (the most first-choice votes among the protocols all members offer)",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--retention-wait", type=int, default=3, help="seconds retention_enforced waits")
    parser.add_argument("probes", nargs="*", help=f"which (default: all): {', '.join(PROBES)}")
    args = parser.parse_args()
    global RETENTION_WAIT
    RETENTION_WAIT = args.retention_wait
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    for p in args.probes or PROBES:
        try:
            PROBES[p](args.bootstrap, admin)
        except Exception as e:  # a probe that breaks is a finding too
            print(f"ERROR   {p}: {e!r}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
