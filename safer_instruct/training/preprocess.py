"""Turning records into token ids for TRL, the same way for SFT, DPO and reversed instruction tuning.

We tokenize ourselves instead of letting TRL do it, because:

* prompts must be truncated to `model.max_prompt_length` (TRL 1.16 removed that option), keeping
  their end (where the instruction and the answer header are) and the leading BOS, and the number
  of truncated rows is logged;
* our completions (`PromptFormat.completion`) already end the turn the way the model's template does
  (`answer<|im_end|>\\n` for ChatML, `answer</s>` for Alpaca): TRL would append another EOS to
  string completions that do not end exactly with the EOS token, so handing it token ids avoids a
  double EOS;
* exactly one BOS: texts are tokenized without special tokens and the BOS is prepended only when the
  tokenizer normally adds one and the text (e.g. a chat template) did not already contain it;
* the token ids are what the reference log-prob store fingerprints.

SFT gets `input_ids` + `completion_mask` (loss on the response only; TRL builds the labels); DPO gets
`prompt_ids`, `chosen_ids`, `rejected_ids` (the prompt is shared and the completions start where the
tokenized prompt and prompt+completion diverge, as in TRL).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from safer_instruct.errors import ConfigError, DataError
from safer_instruct.formatting import render_reverse_prompt
from safer_instruct.prompts import PromptTemplate

log = logging.getLogger(__name__)
_BATCH = 512


@dataclass
class TokenizeStats:
    """What preprocessing did to the rows (written into data_stats.json)."""

    rows: int = 0
    prompts_truncated: int = 0
    completions_truncated: int = 0
    max_prompt_tokens: int = 0
    max_sequence_tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Encoder:
    """Tokenizes (prompt, completions...) with prompt truncation and one BOS.

    Args:
        tokenizer: the model's tokenizer.
        max_length: prompt + completion tokens; completions are cut (keeping their start) to fit.
        max_prompt_length: prompt tokens; longer prompts keep their BOS and their last tokens.
    """

    def __init__(self, tokenizer: Any, max_length: int, max_prompt_length: int):
        if not 0 < max_prompt_length < max_length:
            raise ConfigError(
                f"model.max_prompt_length={max_prompt_length} must be > 0 and below model.max_length={max_length}"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.bos_id = tokenizer.bos_token_id
        probe = tokenizer("a")["input_ids"]
        self.adds_bos = self.bos_id is not None and len(probe) > 0 and probe[0] == self.bos_id
        self.stats = TokenizeStats()

    def settings(self) -> dict[str, Any]:
        """What of the tokenization changes the ids (part of the reference log-prob key)."""
        return {"max_length": self.max_length, "max_prompt_length": self.max_prompt_length, "adds_bos": self.adds_bos,
                "tokenizer": type(self.tokenizer).__name__, "vocab_size": len(self.tokenizer)}  # fmt: skip

    def _ids(self, texts: list[str]) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(texts), _BATCH):
            encoded = self.tokenizer(texts[start : start + _BATCH], add_special_tokens=False)["input_ids"]
            for ids in encoded:
                if self.adds_bos and (not ids or ids[0] != self.bos_id):
                    ids = [self.bos_id, *ids]
                out.append(list(ids))
        return out

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as a prompt: the ids `encode` gives it (one BOS where the tokenizer adds one)."""
        return len(self._ids([text])[0])

    def fit_reverse_prompt(self, template: PromptTemplate, response: str, max_tokens: int) -> tuple[str, bool]:
        """The reversed prompt for `response` in at most `max_tokens` tokens, and whether it was cut.

        Only the response is cut, at its end (its start is kept, as a whole example cut at the model's
        max length keeps it); the template's header and its instruction header are always whole, so the
        model still writes an instruction after it. Training (`reverse_columns`) and induction
        (`construct`, step `induce`, with the model's saved tokenizer and budget) both call this, so the
        reversed model sees at induction the text it saw in training.
        """
        text = response.strip()
        prompt = render_reverse_prompt(text, template)
        n = self.count_tokens(prompt)
        if n <= max_tokens:
            return prompt, False
        ends = self._token_ends(text)
        keep = len(ends) - (n - max_tokens)  # tokens of the response kept: first guess, then corrected
        while keep > 0:
            prompt = render_reverse_prompt(text[: ends[keep - 1]], template)
            n = self.count_tokens(prompt)
            if n <= max_tokens:
                return prompt, True
            keep -= max(1, n - max_tokens)
        return render_reverse_prompt("", template), True

    def _token_ends(self, text: str) -> list[int]:
        """For each token of `text` alone, the character offset where it ends (monotone)."""
        try:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            ends = [int(end) for _, end in offsets]
        except (NotImplementedError, KeyError, TypeError, ValueError):  # a slow tokenizer: spread evenly
            n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) or 1
            ends = [round(len(text) * (i + 1) / n) for i in range(n)]
        for i in range(1, len(ends)):
            ends[i] = max(ends[i], ends[i - 1])
        return ends

    def encode(self, prompts: list[str], completions: list[list[str]]) -> list[tuple[list[int], list[list[int]]]]:
        """For each prompt and its completions: (prompt ids, [completion ids, ...]), truncated."""
        prompt_ids = self._ids(prompts)
        width = len(completions[0]) if completions else 0
        joined = self._ids([p + c for p, cs in zip(prompts, completions, strict=True) for c in cs])
        results = []
        for index, prompt in enumerate(prompt_ids):
            fulls = joined[index * width : (index + 1) * width]
            cut = min(_common_prefix(prompt, full) for full in fulls)
            head, tails = prompt[:cut], [full[cut:] for full in fulls]
            results.append(self._truncate(head, tails))
        return results

    def encode_ids(self, prompts: list[str], completion_ids: list[list[int]]) -> list[tuple[list[int], list[list[int]]]]:
        """Like `encode` with completions given as ids (appended after the tokenized prompt)."""
        return [self._truncate(p, [c]) for p, c in zip(self._ids(prompts), completion_ids, strict=True)]

    def _truncate(self, prompt: list[int], tails: list[list[int]]) -> tuple[list[int], list[list[int]]]:
        self.stats.rows += 1
        if len(prompt) > self.max_prompt_length:
            keep_bos = prompt[:1] if self.bos_id is not None and prompt[:1] == [self.bos_id] else []
            prompt = keep_bos + prompt[len(prompt) - (self.max_prompt_length - len(keep_bos)) :]
            self.stats.prompts_truncated += 1
        room = self.max_length - len(prompt)
        if any(len(t) > room for t in tails):
            self.stats.completions_truncated += 1
            tails = [t[:room] for t in tails]
        self.stats.max_prompt_tokens = max(self.stats.max_prompt_tokens, len(prompt))
        self.stats.max_sequence_tokens = max(self.stats.max_sequence_tokens, len(prompt) + max(len(t) for t in tails))
        return prompt, tails

    def log_summary(self, what: str) -> None:
        s = self.stats
        log.info("%s: %d rows tokenized; %d prompt(s) truncated to %d tokens (model.max_prompt_length), "
                 "%d with completions cut to fit %d tokens (model.max_length)", what, s.rows, s.prompts_truncated,
                 self.max_prompt_length, s.completions_truncated, self.max_length)  # fmt: skip


def sft_columns(encoder: Encoder, fmt: Any, examples: Sequence[Any]) -> dict[str, list]:
    """`input_ids` and `completion_mask` for SFT on (instruction, input, output) examples."""
    prompts = [fmt.prompt(e.instruction, e.input) for e in examples]
    completions = [[fmt.completion(e.output, e.instruction, e.input)] for e in examples]
    return _sequence_columns(encoder.encode(prompts, completions))


def reverse_columns(encoder: Encoder, template: PromptTemplate, examples: Sequence[Any]) -> dict[str, list]:
    """`input_ids` and `completion_mask` for reversed instruction tuning: response -> instruction + EOS.

    Truncation: the whole example fits `model.max_length` (the Stanford Alpaca trainer's
    `model_max_length`, 512 there) and the instruction is kept: what is cut is the end of the response
    inside the prompt, to `model.max_prompt_length` tokens, or fewer where a long instruction needs the
    room (`Encoder.fit_reverse_prompt`; counted in `prompts_truncated`). Alpaca's own trainer cuts the
    end of prompt + target instead, which drops the instruction of a long response: that is where we
    differ, on purpose. `train reverse` saves the budget with the model, and induction cuts its corpus
    texts to the same budget. Only an instruction longer than the whole budget is cut itself
    (`completions_truncated`).
    """
    eos = encoder.tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token: the reversed model could not learn where an instruction ends")
    overhead = encoder.count_tokens(render_reverse_prompt("", template))
    if overhead >= encoder.max_prompt_length:
        raise ConfigError(f"model.max_prompt_length={encoder.max_prompt_length} leaves no room for the response: the "
                          f"reverse template {template.tag} alone takes {overhead} tokens; raise it")  # fmt: skip
    targets = [e.instruction if not e.input else f"{e.instruction}\n\n{e.input}" for e in examples]
    target_ids = [ids + [eos] for ids in encoder.tokenizer(targets, add_special_tokens=False)["input_ids"]]
    prompts = []
    for example, target in zip(examples, target_ids, strict=True):
        budget = min(encoder.max_prompt_length, encoder.max_length - len(target))
        prompt, cut = encoder.fit_reverse_prompt(template, example.output, budget)
        encoder.stats.prompts_truncated += int(cut)
        prompts.append(prompt)
    return _sequence_columns(encoder.encode_ids(prompts, target_ids))


def _sequence_columns(encoded: list[tuple[list[int], list[list[int]]]]) -> dict[str, list]:
    input_ids, masks = [], []
    for prompt, (completion,) in encoded:
        if not completion:
            raise DataError("a completion is empty after tokenization; check the data and model.max_length")
        input_ids.append(prompt + completion)
        masks.append([0] * len(prompt) + [1] * len(completion))
    return {"input_ids": input_ids, "completion_mask": masks}


def dpo_columns(encoder: Encoder, fmt: Any, records: Sequence[Any]) -> dict[str, list]:
    """`prompt_ids`, `chosen_ids`, `rejected_ids` for DPO on preference pairs."""
    prompts = [fmt.prompt(r.prompt) for r in records]
    completions = [[fmt.completion(r.chosen, r.prompt), fmt.completion(r.rejected, r.prompt)] for r in records]
    columns: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for prompt, (chosen, rejected) in encoder.encode(prompts, completions):
        columns["prompt_ids"].append(prompt)
        columns["chosen_ids"].append(chosen)
        columns["rejected_ids"].append(rejected)
    return columns


def fingerprint_columns(columns: dict[str, list]) -> str:
    """A content hash of token-id columns (order, lengths and values)."""
    digest = hashlib.sha256()
    for name in sorted(columns):
        digest.update(name.encode())
        values = columns[name]
        digest.update(np.asarray([len(v) for v in values], dtype=np.int64).tobytes())
        flat = [x for v in values for x in v]
        digest.update(np.asarray(flat, dtype=np.int64).tobytes())
    return digest.hexdigest()
