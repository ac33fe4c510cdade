"""What the construct tests share: the scripted expert and inducer behind one loopback server per module."""

from __future__ import annotations

import pytest

from tests.construct.scripted import ScriptedModels
from tests.helpers.servers import FaultServer


@pytest.fixture(scope="module")
def server():
    with FaultServer(responder=ScriptedModels()) as srv:
        yield srv
