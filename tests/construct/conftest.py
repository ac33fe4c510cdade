"""What the construct tests share: the scripted expert and inducer behind one loopback server per module."""

from __future__ import annotations

import logging

import pytest

from tests.construct.scripted import ScriptedModels
from tests.helpers.servers import FaultServer


@pytest.fixture(scope="module")
def server():
    with FaultServer(responder=ScriptedModels()) as srv:
        yield srv


@pytest.fixture(autouse=True)
def root_log_handlers_restored():
    """A construct run through the CLI in this process lets Hydra attach handlers to the root logger that
    write to this test's captured stderr; a later test's log records would go to that closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
