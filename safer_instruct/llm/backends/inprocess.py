"""`inprocess`: batched generation with transformers inside this process, for runs that want no server.

Requests that arrive together (up to the role's `max_concurrency` in flight) are grouped by their
sampling parameters, sorted by prompt length so that a batch pads little, cut into batches of
`batch_size`, left-padded, and generated in one worker thread (the event loop stays free).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from safer_instruct.llm.backends import Answer, Backend
from safer_instruct.llm.chat import ChatRenderer
from safer_instruct.llm.faults import EmptyCompletion
from safer_instruct.llm.types import ChatRequest, Usage
from safer_instruct.schema import setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InProcessOptions:
    batch_size: int = setting(8, "Prompts generated together (left-padded, cut from length-sorted requests).", minimum=1)
    dtype: str = setting("auto", "Torch dtype of the weights (auto, float32, bfloat16).")
    device: str = setting("cpu", "Where the model runs: cpu, cuda or cuda:0.")


class InProcessBackend(Backend):
    name = "inprocess"
    Options = InProcessOptions

    def __init__(self, role, session=None):
        super().__init__(role, session)
        self.model = None
        self.tokenizer = None
        self.renderer: ChatRenderer | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"generate-{role.name}")
        self._pending: list[tuple[ChatRequest, dict[str, Any], asyncio.Future]] = []
        self._batcher: asyncio.Task | None = None
        self.batches: list[list[int]] = []  # prompt lengths (tokens) of each batch run, for tests and logs

    def prepare(self) -> None:
        import torch

        from safer_instruct.model_kit import load_causal_lm, load_tokenizer

        self.tokenizer = load_tokenizer(self.role.model)
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        self.renderer = ChatRenderer(self.role.model, tokenizer=self.tokenizer)
        model = load_causal_lm(self.role.model, dtype=self.options.dtype)
        self.model = model.to(self.options.device).eval()
        if self.role.seed is not None:
            torch.manual_seed(self.role.seed)
        log.info("loaded %s in process on %s", self.role.model, self.options.device)

    @classmethod
    def runs_locally(cls, role) -> bool:  # noqa: ARG003
        return True

    @classmethod
    def prefill_support(cls, role) -> str:  # noqa: ARG003
        return "template"

    def render(self, request: ChatRequest) -> str:
        """The text the model continues: the raw prompt, or the chat template's text; then the prefill."""
        if request.prompt is not None:
            return request.prompt + (request.prefill or "")
        return self.renderer.render(request.messages, request.prefill)

    def prompt_length(self, request: ChatRequest) -> int:
        return len(self.tokenizer(self.render(request), add_special_tokens=False)["input_ids"])

    async def complete(self, request: ChatRequest, params: dict[str, Any]) -> Answer:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, params, future))
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches())
        return await future

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await asyncio.sleep(0.005)  # let the requests released together by the semaphore arrive
            pending, self._pending = self._pending, []
            groups: dict[str, list] = {}
            for item in pending:
                request, params, _ = item
                key = repr((request.prompt is None, sorted(params.items())))
                groups.setdefault(key, []).append(item)
            for items in groups.values():
                items.sort(key=lambda item: self.prompt_length(item[0]))
                for start in range(0, len(items), self.options.batch_size):
                    batch = items[start : start + self.options.batch_size]
                    live = [item for item in batch if not item[2].done()]
                    if not live:
                        continue
                    try:
                        answers = await loop.run_in_executor(self._executor, self._generate, live)
                    except Exception as err:  # noqa: BLE001 - the session records it per request
                        answers = [err] * len(live)
                    for (_, _, future), answer in zip(live, answers, strict=True):
                        if future.done():
                            continue
                        if isinstance(answer, Exception):
                            future.set_exception(answer)
                        else:
                            future.set_result(answer)

    def _generate(self, batch: list[tuple[ChatRequest, dict[str, Any], asyncio.Future]]) -> list[Answer | Exception]:
        import torch

        requests = [item[0] for item in batch]
        params = batch[0][1]
        texts = [self.render(r) for r in requests]
        chat = requests[0].prompt is None
        # A chat template already writes the special tokens; a raw prompt gets the tokenizer's (BOS).
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        sampling = params["temperature"] > 0
        kwargs: dict[str, Any] = {"max_new_tokens": params["max_tokens"], "do_sample": sampling,
                                  "pad_token_id": self.tokenizer.pad_token_id}  # fmt: skip
        if sampling:
            kwargs["temperature"] = params["temperature"]
            if params.get("top_p") is not None:
                kwargs["top_p"] = params["top_p"]
        if params.get("stop"):
            kwargs["stop_strings"] = list(params["stop"])
            kwargs["tokenizer"] = self.tokenizer
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        self.batches.append([int(n) for n in enc["attention_mask"].sum(dim=1).tolist()])
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        prompt_len = enc["input_ids"].shape[1]
        answers: list[Answer | Exception] = []
        for row in range(len(requests)):
            new = out[row, prompt_len:].tolist()
            end = next((i for i, token in enumerate(new) if token in eos_ids), None)  # the first end token
            new, finish = new[:end], "length" if end is None else "stop"
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            for stop in params.get("stop") or ():
                if stop in text:
                    text, finish = text[: text.index(stop)], "stop"
            usage = Usage(int(enc["attention_mask"][row].sum()), len(new) + (finish == "stop"))
            if not text:
                answers.append(EmptyCompletion("the completion text is empty"))
                continue
            answers.append(Answer(text=text, finish_reason=finish, usage=usage, model=self.role.model))
        return answers

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
