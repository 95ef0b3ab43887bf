#!/usr/bin/env python3
"""librdkafka (confluent-kafka) as the oracle of read_committed: what its consumer delivers.

Subcommands (each prints one JSON document on stdout):

  read   --bootstrap B --topic T --partitions N --isolation read_committed|read_uncommitted
         Every record librdkafka's consumer delivers from partitions 0..N-1 of T, each from
         the beginning to its end (partition EOF: the last stable offset under read_committed):
         {"records": [{"partition", "offset", "value"}]} in delivery order.

  transactions --bootstrap B --topic T --partitions N --rounds R
         Writes T (created by the caller with N partitions) with librdkafka's transactional
         producer on a real broker: in each round two transactional producers (lz4 and zstd)
         each write a transaction over every partition while a plain idempotent producer
         (gzip) writes between them; the first commits on even rounds and aborts on odd ones,
         the second aborts every third round. Then each partition gets a plain record `end`.
         Values name their fate ("committed", "aborted" or "plain"):
         {"committed": n, "aborted": n, "plain": n}

  version {"confluent_kafka": ..., "librdkafka": ...}

Exits with status 3 and a message on stderr when confluent-kafka is not installed.
"""

import argparse
import json
import os
import sys

from peer_common import text, version  # exits 3 when confluent-kafka is missing

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition


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


def transactions(args):
    def producer(extra):
        return Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5, **extra})

    first = producer({"transactional.id": f"{args.topic}-tx-1", "compression.type": "lz4"})
    second = producer({"transactional.id": f"{args.topic}-tx-2", "compression.type": "zstd"})
    plain = producer({"enable.idempotence": True, "compression.type": "gzip"})
    for transactional in (first, second):
        transactional.init_transactions(30)
    counts = {"committed": 0, "aborted": 0, "plain": 0}
    failures = []

    def delivered(error, message):
        if error is not None:
            failures.append(str(error))

    for round in range(args.rounds):
        fates = {
            "tx1": "committed" if round % 2 == 0 else "aborted",
            "tx2": "aborted" if round % 3 == 0 else "committed",
        }
        first.begin_transaction()
        second.begin_transaction()
        for p in range(args.partitions):
            for n in range(3):
                for name, transactional in (("tx1", first), ("tx2", second)):
                    value = f"{fates[name]}-{name}-r{round}-p{p}-{n}"
                    transactional.produce(args.topic, value=value, key=f"k{p}", partition=p)
                    counts[fates[name]] += 1
            plain.produce(args.topic, value=f"plain-r{round}-p{p}", key=f"k{p}", partition=p, on_delivery=delivered)
            counts["plain"] += 1
        plain.flush(30)
        for name, transactional in (("tx1", first), ("tx2", second)):
            # Every record on the broker before the transaction ends: aborted records must be
            # in the log for read_committed to have something to skip (and librdkafka 2.16
            # aborting a transaction whose records are still queued gets INVALID_TXN_STATE
            # from Kafka 4.4's transaction version 2).
            if transactional.flush(30) != 0:
                raise SystemExit(f"{name}: records still queued after 30 s")
            if fates[name] == "committed":
                transactional.commit_transaction(30)
            else:
                transactional.abort_transaction(30)
    for p in range(args.partitions):
        plain.produce(args.topic, value="end", key=f"k{p}", partition=p, on_delivery=delivered)
    if plain.flush(30) != 0 or failures:
        raise SystemExit(f"plain records not delivered: {failures}")
    json.dump(counts, sys.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("read")
    r.add_argument("--bootstrap", required=True)
    r.add_argument("--topic", required=True)
    r.add_argument("--partitions", type=int, required=True)
    r.add_argument("--isolation", required=True, choices=["read_committed", "read_uncommitted"])
    r.set_defaults(run=read)
    t = sub.add_parser("transactions")
    t.add_argument("--bootstrap", required=True)
    t.add_argument("--topic", required=True)
    t.add_argument("--partitions", type=int, required=True)
    t.add_argument("--rounds", type=int, required=True)
    t.set_defaults(run=transactions)
    v = sub.add_parser("version")
    v.set_defaults(run=version)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
