#!/usr/bin/env python3
"""librdkafka (confluent-kafka) as the oracle of read_committed: what its consumer delivers.

Subcommands (each prints one JSON document on stdout):

  read   --bootstrap B --topic T --partitions N --isolation read_committed|read_uncommitted
         Every record librdkafka's consumer delivers from partitions 0..N-1 of T, each from
         the beginning to its end (partition EOF: the last stable offset under read_committed):
         {"records": [{"partition", "offset", "value"}]} in delivery order.

  version {"confluent_kafka": ..., "librdkafka": ...}

Exits with status 3 and a message on stderr when confluent-kafka is not installed.
"""

import argparse
import json
import os
import sys

from peer_common import text, version  # exits 3 when confluent-kafka is missing

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


def read(args):
    config = {
        "bootstrap.servers": args.bootstrap,
        "group.id": "isolation-oracle",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": args.isolation,
    }
    if os.environ.get("ISOLATION_PEER_DEBUG"):
        config["debug"] = os.environ["ISOLATION_PEER_DEBUG"]
    consumer = Consumer(config)
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in range(args.partitions)])
    remaining = set(range(args.partitions))
    records = []
    idle = 0
    while remaining:
        message = consumer.poll(1.0)
        if message is None:
            idle += 1
            if idle > 20:
                raise SystemExit(f"nothing for 20 s; still waiting on partitions {remaining}")
            continue
        idle = 0
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                remaining.discard(message.partition())
                continue
            raise SystemExit(f"consume error: {message.error()}")
        records.append(
            {"partition": message.partition(), "offset": message.offset(), "value": text(message.value())}
        )
    consumer.close()
    json.dump({"records": records}, sys.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("read")
    r.add_argument("--bootstrap", required=True)
    r.add_argument("--topic", required=True)
    r.add_argument("--partitions", type=int, required=True)
    r.add_argument("--isolation", required=True, choices=["read_committed", "read_uncommitted"])
    r.set_defaults(run=read)
    v = sub.add_parser("version")
    v.set_defaults(run=version)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
