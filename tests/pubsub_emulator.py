"""The real Pub/Sub emulator (gcloud beta emulators pubsub) on a free loopback port."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Iterator

import pytest

PROJECT = "local-project"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def pubsub_emulator() -> Iterator[str]:
    """Starts the emulator, yields host:port, stops it (and its Java child)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        message = "gcloud (with the Pub/Sub emulator) is not installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = _free_port()
    host = f"127.0.0.1:{port}"
    data_dir = tempfile.mkdtemp(prefix="pubsub-emulator-")
    proc = subprocess.Popen(
        [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port={host}", f"--project={PROJECT}",
         f"--data-dir={data_dir}", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            if proc.poll() is not None:
                pytest.fail("the Pub/Sub emulator exited: " + proc.stdout.read().decode()[-2000:])
            if time.monotonic() > deadline:
                pytest.fail("the Pub/Sub emulator did not start within 90 s")
            time.sleep(0.5)
        yield host
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(data_dir, ignore_errors=True)


def create_topic_and_subscription(host: str, topic: str, subscription: str):
    """Creates both; returns (topic path, subscription path)."""
    from google.cloud import pubsub_v1
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(PROJECT, topic)
    sub_path = subscriber.subscription_path(PROJECT, subscription)
    publisher.create_topic(name=topic_path)
    subscriber.create_subscription(name=sub_path, topic=topic_path, ack_deadline_seconds=60)
    return topic_path, sub_path


def publish(host: str, topic_path: str, payloads, attributes=None):
    from google.cloud import pubsub_v1
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    publisher = pubsub_v1.PublisherClient()
    futures = [publisher.publish(topic_path, data, **(attributes(i) if attributes else {}))
               for i, data in enumerate(payloads)]
    for f in futures:
        f.result(timeout=60)
