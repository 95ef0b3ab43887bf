#!/usr/bin/env python3
"""Compressed record batches that inflate thousands of times, written by a plain producer, and
librdkafka's consumer reading them: its peak memory, for comparison.

Subcommands (each prints one JSON document on stdout):

  produce --bootstrap B --topic T --fits N --fit-bytes F --bombs M --bomb-bytes S --codec C
          Into partition 0 of T, each record its own batch (flushed one by one), with codec C
          (zstd, gzip, lz4, snappy): N records of F zero bytes ("fits-<i>"), then M times a
          small record ("good-<i>") followed by a record of S zero bytes ("bomb-<i>"), then a
          last "good-<M>". {"offsets": {value-name: offset}}

  consume --bootstrap B --topic T --group G --idle SECONDS
          librdkafka's group consumer with its defaults, until SECONDS pass without a record:
          {"delivered": [names], "errors": [...], "peak_rss_kib": N} (ru_maxrss of this process).

  version {"confluent_kafka": ..., "librdkafka": ...}
"""

import argparse
import json
import resource
import sys
import time

from peer_common import version  # exits 3 when confluent-kafka is missing

from confluent_kafka import Consumer, Producer


def produce(args):
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "compression.type": args.codec,
            "linger.ms": 0,
            "acks": "all",
            "message.max.bytes": 1000000000,
        }
    )
    offsets = {}
    errors = []

    def delivered(err, message):
        if err is not None:
            errors.append(str(err))
        else:
            offsets[message.key().decode()] = message.offset()

    def send(name, value):
        producer.produce(args.topic, key=name.encode(), value=value, partition=0, on_delivery=delivered)
        if producer.flush(60):
            raise SystemExit(f"{name} not delivered within 60 s")

    fit = bytes(args.fit_bytes)
    for i in range(args.fits):
        send(f"fits-{i}", fit)
    bomb = bytes(args.bomb_bytes)
    for i in range(args.bombs):
        send(f"good-{i}", b"good")
        send(f"bomb-{i}", bomb)
    send(f"good-{args.bombs}", b"good")
    if errors:
        raise SystemExit(f"delivery failed: {errors[:5]}")
    json.dump({"offsets": offsets}, sys.stdout)


def consume(args):
    consumer = Consumer(
        {"bootstrap.servers": args.bootstrap, "group.id": args.group, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([args.topic])
    delivered = []
    errors = []
    last = time.monotonic()
    while time.monotonic() - last < args.idle:
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            errors.append(str(message.error()))
            continue
        delivered.append(message.key().decode() if message.key() else None)
        last = time.monotonic()
    consumer.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump({"delivered": delivered, "errors": errors[:10], "peak_rss_kib": peak}, sys.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--fits", type=int, required=True)
    p.add_argument("--fit-bytes", type=int, required=True)
    p.add_argument("--bombs", type=int, required=True)
    p.add_argument("--bomb-bytes", type=int, required=True)
    p.add_argument("--codec", default="zstd")
    p.set_defaults(run=produce)
    c = sub.add_parser("consume")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--group", required=True)
    c.add_argument("--idle", type=float, default=15.0)
    c.set_defaults(run=consume)
    v = sub.add_parser("version")
    v.set_defaults(run=version)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
