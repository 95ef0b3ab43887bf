#!/usr/bin/env python3
"""A peer consumer-group client for the group tests: confluent-kafka (librdkafka) alone.

Subcommands:

  consume    --bootstrap B --topic T --group G --out FILE [--assignor S] [--max-seconds N]
             [--group-instance-id I]
             A librdkafka group consumer (auto-commit every 200 ms, earliest reset) that appends
             one JSON object per line to FILE, flushed as it goes:
               {"event": "assign", "partitions": [...]}     (on_assign; with the cooperative
                                                            assignor only what it gains)
               {"event": "revoke", "partitions": [...]}     (on_revoke; cooperative: only what
                                                            it gives up)
               {"event": "record", "partition": p, "offset": o, "key": k, "value": v}
               {"event": "closed"}                          (after close(): it left the group)
             It runs until its stdin is closed (or N seconds pass), then commits and closes.

  committed  --bootstrap B --topic T --group G --partitions N
             The group's committed offsets: {"committed": {"0": offset or null, ...}}

  commit     --bootstrap B --topic T --group G --partition P --offset O
             Commits offset O for partition P in group G (without joining it): {"committed": O}

  version    {"confluent_kafka": ..., "librdkafka": ...}

Exits with status 3 and a message on stderr when confluent-kafka is not installed.
"""

import argparse
import json
import sys
import threading
import time

from peer_common import text, version  # exits 3 when confluent-kafka is missing

from confluent_kafka import Consumer, KafkaError, TopicPartition


def consume(args):
    out = open(args.out, "a", buffering=1)
    lock = threading.Lock()

    def emit(obj):
        with lock:
            out.write(json.dumps(obj) + "\n")
            out.flush()

    config = {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "client.id": "group-peer",
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 200,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
        "partition.assignment.strategy": args.assignor,
    }
    if args.group_instance_id:
        config["group.instance.id"] = args.group_instance_id
    consumer = Consumer(config)

    def on_assign(c, partitions):
        emit({"event": "assign", "partitions": sorted(p.partition for p in partitions)})

    def on_revoke(c, partitions):
        emit({"event": "revoke", "partitions": sorted(p.partition for p in partitions)})

    consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke)
    stop = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    deadline = time.monotonic() + args.max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        message = consumer.poll(0.1)
        if message is None:
            continue
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                continue
            emit({"event": "error", "error": str(message.error())})
            continue
        emit(
            {
                "event": "record",
                "partition": message.partition(),
                "offset": message.offset(),
                "key": text(message.key()),
                "value": text(message.value()),
            }
        )
    consumer.close()
    emit({"event": "closed"})


def committed(args):
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
        }
    )
    partitions = [TopicPartition(args.topic, p) for p in range(args.partitions)]
    result = consumer.committed(partitions, timeout=30)
    offsets = {}
    for tp in result:
        if tp.error is not None:
            raise SystemExit(f"committed offset of {args.topic}-{tp.partition}: {tp.error}")
        offsets[str(tp.partition)] = tp.offset if tp.offset >= 0 else None
    consumer.close()
    print(json.dumps({"committed": offsets}))


def commit(args):
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
        }
    )
    result = consumer.commit(
        offsets=[TopicPartition(args.topic, args.partition, args.offset)], asynchronous=False
    )
    for tp in result:
        if tp.error is not None:
            raise SystemExit(f"commit of {args.topic}-{tp.partition}: {tp.error}")
    consumer.close()
    print(json.dumps({"committed": args.offset}))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consume")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--group", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--assignor", default="range,roundrobin")
    c.add_argument("--max-seconds", type=float, default=300.0)
    c.add_argument("--group-instance-id", default=None)
    k = sub.add_parser("committed")
    k.add_argument("--bootstrap", required=True)
    k.add_argument("--topic", required=True)
    k.add_argument("--group", required=True)
    k.add_argument("--partitions", type=int, required=True)
    m = sub.add_parser("commit")
    m.add_argument("--bootstrap", required=True)
    m.add_argument("--topic", required=True)
    m.add_argument("--group", required=True)
    m.add_argument("--partition", type=int, required=True)
    m.add_argument("--offset", type=int, required=True)
    sub.add_parser("version")
    args = parser.parse_args()
    if args.command == "consume":
        consume(args)
    elif args.command == "committed":
        committed(args)
    elif args.command == "commit":
        commit(args)
    else:
        version()


if __name__ == "__main__":
    main()
