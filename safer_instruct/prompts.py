"""Prompt templates: every text the project sends to a model or trains one on, in one class.

Every template (construct's `conf/prompts/**`, the judge's `conf/judge_template/*.yaml`, the reversed
model's and the Alpaca training prompts in `conf/prompts/`) is one YAML file of one shape:

    name: safety-respond          # what the prompt is
    version: 1                    # a whole number: bump it on any edit of the text
    system: ...                   # optional system message (chat prompts only)
    template: "{instruction}"     # the text, with named placeholders

Its tag, `name@vN` (`safety-respond@v1`), is what outputs record (stats, dataset rows and card,
judgements, the reversed model's `reverse_prompt.json`).

Substitution: `{field}` (a Python identifier in single braces) is a placeholder, and every
placeholder must be one of the fields its consumer declares (`required` must all appear), checked
when the template is loaded, so a typo fails when a run starts, not at row 1000. Values are inserted
in one pass: braces in a value (user texts, JSON answers) are never read as placeholders. Every other
brace in the text is literal, so JSON examples need no escaping; write a literal `{field}` as
`{{field}}`. A `{{` anywhere else is an error: it is the escape of `str.format`, which rendered
it as `{` (write the brace as it is).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safer_instruct.errors import ConfigError

# `{{name}}` (a literal `{name}`) or `{name}` (a placeholder); nothing else is special.
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
KEYS = ("name", "version", "system", "template")


@dataclass(frozen=True)
class PromptTemplate:
    """One versioned prompt template.

    Args:
        name: what the prompt is (one file, one name; the domain is part of it, e.g. `support-respond`).
        version: a whole number, bumped on every edit of `template` or `system`.
        template: the text (the user turn of a chat prompt, or a raw prompt), with `{field}` placeholders.
        system: the system message of a chat prompt, if any.
        source: where the template was read (a file, a config key): named in every error.
    """

    name: str
    version: int
    template: str
    system: str | None = None
    source: str = field(default="", compare=False)

    @property
    def tag(self) -> str:
        """`name@vN`: what outputs record of the prompt that made them."""
        return f"{self.name}@v{self.version}"

    @property
    def fields(self) -> frozenset[str]:
        """The placeholders the text uses."""
        return frozenset(m.group(2) for m in _PLACEHOLDER.finditer(self.template) if m.group(2))

    def render(self, **values: Any) -> str:
        """The text with each placeholder replaced by its value, in one pass (extra values are ignored)."""

        def insert(match: re.Match[str]) -> str:
            literal, name = match.groups()
            if literal:
                return "{" + literal + "}"
            if name not in values:
                raise ConfigError(f"{self._where()}: no value for field '{name}' (given: {', '.join(sorted(values))})")
            return str(values[name])

        return _PLACEHOLDER.sub(insert, self.template)

    def messages(self, **values: Any) -> tuple[dict[str, str], ...]:
        """Chat messages: the system message (if any), then the rendered text as the user turn."""
        system = ({"role": "system", "content": self.system},) if self.system else ()
        return (*system, {"role": "user", "content": self.render(**values)})

    def to_dict(self) -> dict[str, Any]:
        """The template in its YAML shape (what is saved with a reversed model, and hashed for resume)."""
        return {"name": self.name, "version": self.version, "template": self.template, "system": self.system}

    def expect(self, required: Iterable[str], allowed: Iterable[str] = ()) -> PromptTemplate:
        """Check the placeholders against what the consumer fills: every one of `required` must appear,
        nothing outside `required` + `allowed` may. Returns the template."""
        required = set(required)
        known = required | set(allowed)
        unknown = sorted(self.fields - known)
        if unknown:
            raise ConfigError(f"{self._where()}: unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; "
                              f"this prompt is given {', '.join('{' + f + '}' for f in sorted(known))} "
                              "(write a literal {name} as {{name}})")  # fmt: skip
        missing = sorted(required - self.fields)
        if missing:
            raise ConfigError(f"{self._where()}: the template must contain {', '.join('{' + f + '}' for f in missing)}")
        return self

    def _where(self) -> str:
        return f"{self.source} ({self.tag})" if self.source else self.tag

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None, source: str) -> PromptTemplate:
        """A template from its YAML shape; `source` (a file or a config key) is named in every error."""
        if not node:
            raise ConfigError(f"{source}: no prompt template (give `name`, `version` and `template`)")
        unknown = sorted(set(node) - set(KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; a prompt template has {', '.join(KEYS)}")
        name, version, system, text = (node.get(key) for key in KEYS)
        if not isinstance(name, str) or not name.strip() or name == "???" or "@" in name:
            raise ConfigError(f"{source}: `name` must be set (what the prompt is, e.g. safety-respond; no '@')")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigError(f"{source}: `version` must be a whole number from 1, got {version!r} "
                              "(bump it on any edit: outputs record name@vN)")  # fmt: skip
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{source}: `template` must be non-empty text")
        if system is not None and not isinstance(system, str):
            raise ConfigError(f"{source}: `system` must be text (or left out)")
        escapes = _PLACEHOLDER.sub("", text)
        if "{{" in escapes:
            raise ConfigError(f"{source}: `{{{{` is only the escape of a literal {{name}} ({{{{name}}}}); write any other "
                              "brace as it is (this is not str.format)")  # fmt: skip
        return cls(name.strip(), version, text, system or None, source)

    @classmethod
    def from_file(cls, path: str | Path) -> PromptTemplate:
        """A template from a YAML file."""
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            node = OmegaConf.to_container(OmegaConf.load(str(path)), resolve=True)
        except (OSError, OmegaConfBaseException) as err:
            raise ConfigError(f"{path}: cannot read the prompt template ({err})") from None
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: a prompt template is a mapping with {', '.join(KEYS)}")
        return cls.from_mapping(node, str(path))

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, key: str) -> PromptTemplate:
        """A template composed by Hydra at config key `key` (e.g. `prompts.respond`); errors name the key
        and the shipped file it came from, when one has its name and version."""
        template = cls.from_mapping(node, key)
        shipped = shipped_file(template.name, template.version)
        source = f"{key} ({shipped})" if shipped else key
        return cls(template.name, template.version, template.template, template.system, source)


def shipped_file(name: str, version: int) -> str | None:
    """The file under `conf/` that ships the template `name` at `version`, if any (for messages)."""
    import yaml

    from safer_instruct.paths import conf_dir

    root = conf_dir()
    for path in sorted([*(root / "prompts").rglob("*.yaml"), *(root / "judge_template").glob("*.yaml")]):
        try:
            node = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(node, dict) and (node.get("name"), node.get("version")) == (name, version):
            return f"conf/{path.relative_to(root)}"
    return None


def prompt_preset(name: str, folder: str = "prompts") -> PromptTemplate:
    """The template shipped as `conf/<folder>/<name>.yaml`."""
    from safer_instruct.paths import conf_dir

    path = conf_dir() / folder / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no prompt template conf/{folder}/{name}.yaml")
    return PromptTemplate.from_file(path)
