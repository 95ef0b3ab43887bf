#!/usr/bin/env python3
"""A peer Kafka client for the workspace tests: confluent-kafka (librdkafka) alone.

Subcommands (each prints one JSON document on stdout):

  read       --bootstrap B --topic T
             Every record of every partition of T, from the start to the high watermark:
             {"records": [{"partition", "offset", "key", "value", "headers": [[name, value]]}]}
             (key, value and header values as UTF-8 text, invalid bytes replaced).

  partition  --bootstrap B --topic T --partitioner P   (keys on stdin, one per line)
             Produces one probe record per key into T with librdkafka's own partitioner P
             (murmur2_random, fnv1a, consistent, ...) and reports where librdkafka put it:
             {"partitions": {key: partition}}

  compacted  --bootstrap B --topic T --partitions N
             Creates T with cleanup.policy=compact through librdkafka's AdminClient and reads the
             policy back (DescribeConfigs): {"cleanup.policy": ...}

  produce    --bootstrap B --topic T   (records on stdin, one JSON object per line:
             {"key": K, "value": V, "partition": P}, V null for a tombstone)
             Produces them in order and reports where they went:
             {"offsets": [[partition, offset]]}

  version    {"confluent_kafka": ..., "librdkafka": ...}

Security settings (librdkafka's security.protocol, ssl.ca.location, sasl.mechanism,
sasl.username, sasl.password) come from the PEER_* variables of peer_common, when set.

Exits with status 3 and a message on stderr when confluent-kafka is not installed.
"""

import argparse
import json
import sys

from peer_common import security, text, version  # exits 3 when confluent-kafka is missing

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic


def read(args):
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": "peer-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **security(),
        }
    )
    metadata = consumer.list_topics(args.topic, timeout=30)
    topic = metadata.topics.get(args.topic)
    if topic is None or topic.error is not None:
        raise SystemExit(f"topic {args.topic} not found: {topic and topic.error}")
    partitions = sorted(topic.partitions)
    ends = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=30)
        ends[p] = high
    assignment = [TopicPartition(args.topic, p, 0) for p in partitions if ends[p] > 0]
    records = []
    if assignment:
        consumer.assign(assignment)
        remaining = {tp.partition for tp in assignment}
        idle = 0
        while remaining:
            message = consumer.poll(1.0)
            if message is None:
                idle += 1
                if idle > 60:
                    raise SystemExit(f"no record for 60 s; still waiting on partitions {remaining}")
                continue
            idle = 0
            if message.error():
                raise SystemExit(f"consume error: {message.error()}")
            records.append(
                {
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "key": text(message.key()),
                    "value": text(message.value()),
                    "headers": [[k, text(v)] for k, v in (message.headers() or [])],
                }
            )
            if message.offset() + 1 >= ends[message.partition()]:
                remaining.discard(message.partition())
    consumer.close()
    json.dump({"records": records}, sys.stdout)


def partition(args):
    keys = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "partitioner": args.partitioner,
            "linger.ms": 5,
            "acks": "all",
            **security(),
        }
    )
    placed = {}
    errors = []

    def delivered(err, message):
        if err is not None:
            errors.append(str(err))
        else:
            placed[text(message.key())] = message.partition()

    for key in keys:
        producer.produce(args.topic, key=key.encode(), value=b"probe", on_delivery=delivered)
        producer.poll(0)
    left = producer.flush(60)
    if left or errors:
        raise SystemExit(f"probe delivery failed: {left} left, errors {errors[:5]}")
    json.dump({"partitions": placed}, sys.stdout)


def compacted(args):
    admin = AdminClient({"bootstrap.servers": args.bootstrap, **security()})
    topic = NewTopic(
        args.topic,
        num_partitions=args.partitions,
        replication_factor=1,
        config={"cleanup.policy": "compact"},
    )
    for future in admin.create_topics([topic], operation_timeout=30).values():
        future.result(timeout=60)
    resource = ConfigResource(ConfigResource.Type.TOPIC, args.topic)
    described = {}
    for future in admin.describe_configs([resource]).values():
        described = future.result(timeout=60)
    policy = described.get("cleanup.policy")
    json.dump({"cleanup.policy": policy.value if policy is not None else None}, sys.stdout)


def produce(args):
    records = [json.loads(line) for line in sys.stdin if line.strip()]
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", **security()})
    placed = [None] * len(records)
    errors = []

    def delivered(index):
        def report(err, message):
            if err is not None:
                errors.append(str(err))
            else:
                placed[index] = [message.partition(), message.offset()]

        return report

    for index, record in enumerate(records):
        key = record.get("key")
        value = record.get("value")
        producer.produce(
            args.topic,
            key=None if key is None else key.encode(),
            value=None if value is None else value.encode(),
            partition=record.get("partition", -1),
            on_delivery=delivered(index),
        )
        producer.flush(60)
    if errors or None in placed:
        raise SystemExit(f"delivery failed: {errors[:5]}")
    json.dump({"offsets": placed}, sys.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("read")
    r.add_argument("--bootstrap", required=True)
    r.add_argument("--topic", required=True)
    r.set_defaults(run=read)
    p = sub.add_parser("partition")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitioner", required=True)
    p.set_defaults(run=partition)
    c = sub.add_parser("compacted")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--partitions", type=int, required=True)
    c.set_defaults(run=compacted)
    w = sub.add_parser("produce")
    w.add_argument("--bootstrap", required=True)
    w.add_argument("--topic", required=True)
    w.set_defaults(run=produce)
    v = sub.add_parser("version")
    v.set_defaults(run=version)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
