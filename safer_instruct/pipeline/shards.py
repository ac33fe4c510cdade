"""Instruction induction over a large corpus, sharded over Slurm array tasks.

Induction (the reversed model writing k instructions per corpus text) is the part of `construct`
that grows with the corpus. On Slurm, a construct step with `shards: N` becomes

1. an array job of N tasks (`slurm/induce_array.sbatch`): task i reads the corpus exactly as
   `construct` would (same reader, limit, bad-row policy), keeps every N-th text from the i-th, and
   runs `construct phases=[induce]` on that shard with its own answer cache `<out_dir>/shards/i/llm`;
2. the construct job itself, after the whole array succeeded: it merges the shards' answer caches
   into the experiment's `cache.dir`, then runs the whole of construct over the whole corpus. Its induce finds
   each answer in the cache (keys are model + prompt + sampling settings + sample index, not the
   shard), so it generates nothing again, and the result is the same as an unsharded run.

Each shard has a cache file of its own because sqlite's WAL journal is not safe across hosts on a
network file system; the merge runs on one node. A shard's config is the construct step's config with
the shard's corpus, cache and out_dir, saved as `<out_dir>/shards/<index>/config.yaml`.

    python -m safer_instruct.pipeline.shards induce --index I --count N construct --config-path DIR --config-name config
    python -m safer_instruct.pipeline.shards merge construct --config-path DIR --config-name config
    (or `construct KEY=VALUE... out_dir=DIR`, composed from conf/construct.yaml, as by hand)
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from safer_instruct.errors import ConfigError, SaferInstructError
from safer_instruct.paths import PROJECT_ROOT
from safer_instruct.stages import CONFIG_FILE, config_file_args, config_file_of, load_config_file

SHARDS_DIR = "shards"


def construct_config(args: list[str]) -> DictConfig:
    """The construct step's config from its job's arguments: a saved config file, or overrides."""
    from safer_instruct.config import compose

    if not args or args[0] != "construct":
        raise ConfigError("expected `construct --config-path DIR --config-name NAME` (or KEY=VALUE... out_dir=DIR) after the options")
    overrides = [a for a in args[1:] if "=" in a and not a.startswith("-")]
    config_file = config_file_of(args[1:])
    if config_file is not None:
        return load_config_file(config_file, overrides)
    if not any(a.startswith("out_dir=") for a in overrides):
        raise ConfigError("out_dir= is required: the shards go to <out_dir>/shards/<index>")
    return compose("construct", overrides)


def write_shard(cfg: DictConfig, index: int, count: int, path: Path) -> int:
    """Write texts index, index+count, ... of the corpus (as construct reads it) to a JSONL file."""
    from safer_instruct.data.corpus import read_corpus
    from safer_instruct.io import atomic_write_jsonl

    if not 0 <= index < count:
        raise ConfigError(f"shard index {index} is outside 0..{count - 1}")
    corpus = OmegaConf.to_container(cfg.corpus, resolve=True)
    reader = read_corpus(corpus, quarantine_path=path.parent / "quarantine.jsonl")
    rows = (
        {"id": text.source_id, "text": text.text, "category": text.category}
        for number, text in enumerate(reader)
        if number % count == index
    )
    return atomic_write_jsonl(path, rows)


def shard_config(cfg: DictConfig, corpus_path: Path, shard_dir: Path) -> DictConfig:
    """The construct config of one shard: induction only, over the shard's texts, into the shard's dir."""
    from safer_instruct.config import to_plain

    shard = OmegaConf.create(to_plain(cfg))
    shard.phases = ["induce"]
    shard.corpus.merge_with({"path": str(corpus_path), "text_field": "text", "category_field": "category",
                             "id_field": "id", "limit": None})  # fmt: skip
    shard.cache.dir = str(shard_dir / "llm")
    shard.out_dir = str(shard_dir)
    return shard


def induce_shard(args: list[str], index: int, count: int) -> int:
    cfg = construct_config(args)
    shard_dir = Path(str(cfg.out_dir)) / SHARDS_DIR / str(index)
    shard_dir.mkdir(parents=True, exist_ok=True)
    corpus_path = shard_dir / "corpus.jsonl"
    n = write_shard(cfg, index, count, corpus_path)
    print(f"shard {index}/{count}: {n} texts -> {corpus_path}", flush=True)
    if n == 0:
        return 0
    from safer_instruct.io import atomic_write_text

    config_file = shard_dir / CONFIG_FILE
    atomic_write_text(config_file, OmegaConf.to_yaml(shard_config(cfg, corpus_path, shard_dir)))
    command = [sys.executable, "-m", "safer_instruct.cli", "construct", *config_file_args(config_file)]
    return subprocess.run(command, cwd=PROJECT_ROOT).returncode


def merge_caches(args: list[str]) -> int:
    """Copy the answers of every shard cache under <out_dir>/shards into the run's cache.dir."""
    from safer_instruct.llm.cache import CACHE_FILE, AnswerCache

    cfg = construct_config(args)
    shard_files = sorted((Path(str(cfg.out_dir)) / SHARDS_DIR).glob(f"*/llm/{CACHE_FILE}"))
    if not shard_files:
        return 0
    cache_dir = Path(str(cfg.cache.dir))
    target = AnswerCache(cache_dir)  # creates the file and its schema
    target.close()
    merged = 0
    conn = sqlite3.connect(cache_dir / CACHE_FILE, timeout=60.0)
    try:
        for shard in shard_files:
            before = conn.total_changes
            conn.execute("ATTACH DATABASE ? AS shard", (str(shard),))
            conn.execute("INSERT OR IGNORE INTO main.answers SELECT * FROM shard.answers")
            conn.commit()
            conn.execute("DETACH DATABASE shard")
            merged += conn.total_changes - before
    finally:
        conn.close()
    print(f"merged {merged} answers from {len(shard_files)} shard caches into {cache_dir}", flush=True)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safer_instruct.pipeline.shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    induce = sub.add_parser("induce", help="induce the instructions of one shard of the corpus")
    induce.add_argument("--index", type=int, required=True)
    induce.add_argument("--count", type=int, required=True)
    induce.add_argument("args", nargs=argparse.REMAINDER)
    merge = sub.add_parser("merge", help="merge the shards' answer caches into cache.dir")
    merge.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    try:
        if ns.command == "induce":
            return induce_shard(ns.args, ns.index, ns.count)
        merge_caches(ns.args)
        return 0
    except SaferInstructError as err:
        print(f"safer-instruct: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
