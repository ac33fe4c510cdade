"""The LLM access layer: one client for every inducer, expert, judge and policy.

See `session.py` for how a request travels, `config.py` for the role keys, `backends/` for the
backends (one module each), `conf/llm/` for presets.
"""

from safer_instruct.llm.config import Price, RoleConfig, parse_role
from safer_instruct.llm.servers import ManagedServer, ServerConfig, ServerStartError
from safer_instruct.llm.session import LLMRole, LLMSession
from safer_instruct.llm.types import ChatRequest, Completion, Failure, Result, Usage

__all__ = [
    "ChatRequest", "Completion", "Failure", "LLMRole", "LLMSession", "ManagedServer", "Price", "Result",
    "RoleConfig", "ServerConfig", "ServerStartError", "Usage", "parse_role",
]  # fmt: skip
