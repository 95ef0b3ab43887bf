"""What the peer scripts share: the check that confluent-kafka is installed, text decoding, the
security settings from the environment, and the `version` report.

Importing this module exits with status 3 and a message on stderr when confluent-kafka is not
installed.
"""

import json
import os
import sys

try:
    import confluent_kafka
except ImportError:
    sys.stderr.write(
        "the peer client is missing: install it with `python3 -m venv target/peer-venv && "
        "target/peer-venv/bin/pip install confluent-kafka==2.16.1` "
        "(`cargo xtask test` does this by itself)\n"
    )
    sys.exit(3)


def text(b):
    """Bytes as UTF-8 text (invalid bytes replaced), None as None."""
    return None if b is None else b.decode("utf-8", errors="replace")


def version(_args=None):
    """Prints {"confluent_kafka": ..., "librdkafka": ...} on stdout."""
    json.dump(
        {"confluent_kafka": confluent_kafka.__version__, "librdkafka": confluent_kafka.libversion()[0]},
        sys.stdout,
    )
    sys.stdout.write("\n")


# librdkafka's security settings, each from an environment variable when set (the tests pass
# passwords this way, not on the command line).
SECURITY_VARIABLES = {
    "security.protocol": "PEER_SECURITY_PROTOCOL",
    "ssl.ca.location": "PEER_SSL_CA_LOCATION",
    "sasl.mechanism": "PEER_SASL_MECHANISM",
    "sasl.username": "PEER_SASL_USERNAME",
    "sasl.password": "PEER_SASL_PASSWORD",
}


def security():
    """The librdkafka settings given by the PEER_* variables (none: plaintext)."""
    return {key: os.environ[var] for key, var in SECURITY_VARIABLES.items() if os.environ.get(var)}
