"""Dry runs: what a stage would ask its LLM roles and what it would cost, sending nothing.

A stage's dry run (`safer-instruct construct ... dry_run=true`, `safer-instruct eval harmlessness ...
dry_run=true`) runs the stage's own code against a dry-run `LLMSession`: cached
answers come back as always; every other request is counted (`LLMRole.estimate`) and answered with a
placeholder (`is_placeholder`) of the role's `max_tokens` length. This module holds what the stages
share: that session (no budget, no server, no weights), the placeholder text, a row per phase (the
session's usage bucket: a construct phase, or eval's judge) and role, the terminal table and `estimate.json`.

Completion tokens are each request's `max_tokens` (an upper bound). Prompt tokens are estimated at
~4 characters a token. A phase whose input depends on answers not known yet (placeholders) is marked
"upper bound".
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safer_instruct.io import atomic_write_json
from safer_instruct.llm.cache import CACHE_FILE
from safer_instruct.llm.limits import TYPICAL_CHARS_PER_TOKEN
from safer_instruct.llm.types import Result

COUNT_KEYS = ("requests", "cached", "to_send", "est_prompt_tokens", "est_completion_tokens")
STAND_IN = "stand-in answer text "
NOT_SENT = "not_sent"  # the finish reason of a dry run's placeholder answer


def stand_in_text(tokens: int) -> str:
    """Text that the estimates count as `tokens` tokens (an answer of `max_tokens` length not known yet)."""
    chars = int(tokens * TYPICAL_CHARS_PER_TOKEN)
    return (STAND_IN * math.ceil(chars / len(STAND_IN)))[:chars]


def is_placeholder(result: Result) -> bool:
    """Whether a dry run answered this request with stand-in text (it would have been sent)."""
    return result.ok and result.finish_reason == NOT_SENT


def dry_run_session(roles: Mapping[str, Any], cache_dir: str | Path | None):
    """A dry-run LLMSession (it counts instead of sending): no budget (a dry run spends nothing), no
    failures file, no progress bars, and no cache created where none exists. No server starts and no
    weights load (nothing is sent); a kit model not built yet is left unbuilt (nothing can be cached
    for it)."""
    from safer_instruct.llm.session import LLMSession
    from safer_instruct.model_kit import built_kit_model

    cache = Path(cache_dir) if cache_dir and (Path(cache_dir) / CACHE_FILE).is_file() else None
    session = LLMSession(roles=roles, cache_dir=cache, budget_usd=None, progress=False, dry_run=True)
    for name, cfg in session.roles_config.items():
        if cfg.model.startswith("kit:") and built_kit_model(cfg.model) is None:
            # The cache names local weights by a hash of their files, which would build the model first.
            session.role(name).identity = f"{cfg.model} (not built yet)"
    return session


def missing_keys(session: Any) -> list[str]:
    """Notes for roles whose API key variable is not set (the real run would stop before sending)."""
    return [f"{name}: ${cfg.api_key_env} is not set; the real run needs it" for name, cfg in
            session.roles_config.items() if cfg.api_key_env and not os.environ.get(cfg.api_key_env)]  # fmt: skip


def estimate_row(session: Any, role_name: str, phase: str, upper_bound: bool = False, note: str = "") -> dict[str, Any]:
    """One table row: what `role_name` was asked in `phase` of a dry run. A row with nothing to send costs 0."""
    estimate = session.role(role_name).estimate(phase)
    cost = 0.0 if estimate["to_send"] == 0 else estimate["est_cost_usd"]  # None: the price is unknown
    return {"phase": phase, "role": role_name, "model": estimate["model"],
            **{key: estimate[key] for key in COUNT_KEYS}, "est_cost_usd": cost,
            "price_known": estimate["price_known"], "upper_bound": bool(upper_bound and estimate["requests"]),
            "note": note}  # fmt: skip


def quiet_row(phase: str, role_name: str, model: str, note: str) -> dict[str, Any]:
    """A phase that sends nothing (finished earlier, or its expert check is off)."""
    return {"phase": phase, "role": role_name, "model": model, **dict.fromkeys(COUNT_KEYS, 0), "est_cost_usd": 0.0,
            "price_known": True, "upper_bound": False, "note": note}  # fmt: skip


def totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sums over the rows; the cost sums the known prices (`price_known` false if any row's is unknown)."""
    return {**{key: sum(int(row[key]) for row in rows) for key in COUNT_KEYS},
            "est_cost_usd": sum(float(row["est_cost_usd"]) for row in rows if row["est_cost_usd"] is not None),
            "price_known": all(row["est_cost_usd"] is not None for row in rows),
            "upper_bound": any(row["upper_bound"] for row in rows)}  # fmt: skip


def _cost(value: float | None, price_known: bool = True) -> str:
    if value is None:
        return "unknown price"
    text = f"{value:.4f}"
    return text if price_known else f">= {text} + unknown price"


def _short(model: str, width: int = 32) -> str:
    return model if len(model) <= width else "..." + model[-(width - 3) :]


def render_table(title: str, rows: Sequence[Mapping[str, Any]], total: Mapping[str, Any]) -> str:
    """The estimate as plain aligned text (the terminal's table)."""
    header = ("phase", "role", "model", "requests", "cached", "to send", "est. prompt tok",
              "est. completion tok (max)", "est. cost USD", "note")  # fmt: skip
    body = [(row["phase"], row["role"], _short(str(row["model"])), row["requests"], row["cached"], row["to_send"],
             row["est_prompt_tokens"], row["est_completion_tokens"], _cost(row["est_cost_usd"]), row["note"])
            for row in rows]  # fmt: skip
    body.append(("total", "", "", total["requests"], total["cached"], total["to_send"], total["est_prompt_tokens"],
                 total["est_completion_tokens"], _cost(total["est_cost_usd"], total["price_known"]),
                 "upper bound" if total["upper_bound"] else ""))  # fmt: skip
    cells = [[str(value) for value in line] for line in (header, *body)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    numeric = set(range(3, 9))

    def fmt(line: list[str]) -> str:
        return "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                         for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip()  # fmt: skip

    rule = "-" * len(fmt(cells[0]))
    return "\n".join([title, rule, fmt(cells[0]), rule, *(fmt(line) for line in cells[1:-1]), rule, fmt(cells[-1])])


def report(stage: str, out_dir: Path, rows: list[dict[str, Any]], budget_usd: float | None = None,
           extra: Mapping[str, Any] | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """Write `<out_dir>/estimate.json`, print the table, and return what was written."""
    total = totals(rows)
    result: dict[str, Any] = {"stage": stage, "dry_run": True, "rows": rows, "total": total,
                              "budget_usd": budget_usd, **dict(extra or {})}  # fmt: skip
    notes = ["dry run: nothing was sent, no server started, no model weights loaded",
             "completion tokens: max_tokens per request to send (an upper bound); prompt tokens: ~4 characters a token",
             *notes]  # fmt: skip
    if total["upper_bound"]:
        notes.append("upper bound: answers not known yet (not in out_dir or the cache) are stand-ins of the "
                     "answering role's max_tokens length, and every item is assumed to pass")  # fmt: skip
    if not total["price_known"]:
        unknown = sorted({row["model"] for row in rows if row["est_cost_usd"] is None})
        notes.append(f"unknown price for {', '.join(unknown)}: set <role>.price or add it to conf/llm/prices.yaml")
    if budget_usd is not None:
        over = total["est_cost_usd"] > float(budget_usd)
        notes.append(f"budget_usd={budget_usd}: the estimate {'exceeds' if over else 'is within'} it"
                     + (" (the run stops sending new requests before it is spent)" if over else ""))  # fmt: skip
    result["notes"] = notes
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "estimate.json", result)
    print(render_table(f"{stage}: dry run (estimate)", rows, total))
    for note in notes:
        print(f"  {note}")
    print(f"estimate: {out_dir / 'estimate.json'}")
    return result
