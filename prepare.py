"""Data download/build, BPE tokenizer, packed dataloader and the trusted val_bpb evaluation (read-only)."""

from __future__ import annotations

import argparse
import array
import atexit
import bisect
import hashlib
import http.client
import io
import json
import math
import os
import pickle
import queue
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from constants import DATASET, EVAL_TOKENS, MAX_SEQ_LEN, TIME_BUDGET, VOCAB_SIZE

__all__ = [
    "MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "VOCAB_SIZE", "DATASET", "PrepareError", "Tokenizer",
    "get_token_bytes", "make_dataloader", "hand_over", "evaluate_bpb", "evaluate_file", "peak_memory_mb", "prepare",
]

# GPT-4's split pattern with numbers split in groups of at most 2 digits (\p{N}{1,2}, not {1,3}).
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
SPECIAL_TOKENS = ["<|bos|>", "<|reserved_0|>", "<|reserved_1|>", "<|reserved_2|>"]  # BOS = the first
BOS_TOKEN = SPECIAL_TOKENS[0]

HF_BASE = "https://huggingface.co"           # override with AUTORESEARCH_HF_BASE (mirrors, tests)
DOWNLOAD_RETRIES = 5                          # override with AUTORESEARCH_DOWNLOAD_RETRIES
DOWNLOAD_BACKOFF_S = 1.0                      # first retry delay, doubled each time (AUTORESEARCH_DOWNLOAD_BACKOFF)
DOWNLOAD_WORKERS = 8                          # parallel shard downloads
SOCKET_TIMEOUT_S = 60                         # a stalled connection counts as a failed attempt
TOKENIZER_CHARS = 1_000_000_000               # characters of training text the BPE sees (--tokenizer-chars)
TOKENIZER_DOC_CHARS = 10_000                  # per-document cap so a few huge documents don't dominate the merges
SHARD_CHARS = 64_000_000                      # characters per parquet shard we write ourselves
ROW_GROUP_DOCS = 1024                         # documents per parquet row group (the dataloader streams row groups)
VAL_PERCENT = 5                               # hash split for corpora without a designated validation file
DOC_BUFFER = 1000                             # tokenized documents the best-fit packer chooses from
TOKENIZE_BATCH = 256                          # documents per batched (multi-threaded) tokenizer call


class PrepareError(Exception):
    """An expected failure: str(e) is one sentence saying what is wrong and how to fix it."""


# ---------------------------------------------------------------------------------------------------
# Datasets and the cache


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from and how it is laid out in the cache."""

    name: str                      # the value of DATASET / --dataset
    kind: str                      # "shards" (HF parquet shards), "txt" (HF text files), "pystdlib", "folder"
    repo: str = ""                 # HF dataset repository
    last_shard: int = 0            # index of the last shard, pinned as validation ("shards")
    train_file: str = ""           # "txt": training text file, documents separated by <|endoftext|>
    val_file: str = ""             # "txt": validation text file
    folder: Path | None = None     # "folder": the user's folder

    @property
    def shard_datasets(self) -> bool:
        return self.kind == "shards"


BUILTIN = {
    "climbmix": Source("climbmix", "shards", repo="karpathy/climbmix-400b-shuffle", last_shard=6542),
    "fineweb-edu": Source("fineweb-edu", "shards", repo="karpathy/fineweb-edu-100b-shuffle", last_shard=1822),
    "tinystories": Source("tinystories", "txt", repo="roneneldan/TinyStories",
                          train_file="TinyStoriesV2-GPT4-train.txt", val_file="TinyStoriesV2-GPT4-valid.txt"),
    "pystdlib": Source("pystdlib", "pystdlib"),
}
DEFAULT_TRAIN_SHARDS = 10
_DATASET_HINT = "climbmix, fineweb-edu, tinystories, pystdlib (offline) or a folder of .parquet/.txt files"


def cache_root() -> Path:
    """$AUTORESEARCH_CACHE or ~/.cache/autoresearch."""
    env = os.environ.get("AUTORESEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoresearch"


def resolve_dataset(name: str | os.PathLike | None = None) -> Source:
    """The Source for a built-in name or a local folder path; PrepareError for anything else."""
    name = str(DATASET if name is None else name)
    if name in BUILTIN:
        return BUILTIN[name]
    if os.sep in name or "/" in name or name.startswith((".", "~")) or Path(name).is_dir():
        folder = Path(name).expanduser().resolve()
        if not folder.is_dir():
            raise PrepareError(f"dataset folder {folder} does not exist: pass a folder of .parquet/.txt files "
                               f"or one of {_DATASET_HINT}")
        return Source(str(folder), "folder", folder=folder)
    raise PrepareError(f"unknown dataset {name!r}: use {_DATASET_HINT}")


def dataset_dir(source: Source | str | None = None) -> Path:
    """<cache>/<dataset>; a local folder gets a slug of its name plus a short hash of its absolute path."""
    src = source if isinstance(source, Source) else resolve_dataset(source)
    if src.kind != "folder":
        return cache_root() / src.name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", src.folder.name).strip("-.") or "folder"
    digest = hashlib.sha1(str(src.folder).encode()).hexdigest()[:8]
    return cache_root() / f"local-{slug}-{digest}"


def split_files(split: str, dataset: Source | str | None = None) -> list[Path]:
    """Sorted parquet shards of one split ("train" or "val"); PrepareError if there are none."""
    if split not in ("train", "val"):
        raise PrepareError(f"unknown split {split!r}: use 'train' or 'val'")
    src = dataset if isinstance(dataset, Source) else resolve_dataset(dataset)
    folder = dataset_dir(src) / split
    try:
        os.listdir(folder)
    except PermissionError:
        raise PrepareError(f"the {split} split in {folder} may not be read here: train.py reads only the training "
                           f"split and the tokenizer (the validation data is the evaluator's)") from None
    except OSError:
        pass
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise PrepareError(f"no {split} data for dataset {src.name!r} in {dataset_dir(src) / split}: run "
                           f"`uv run autoresearch setup ...` or `python prepare.py --dataset {src.name}`")
    return files


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file beside path, then rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide cache files from other users of the box
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------
# Downloads: parallel, resumable (HTTP Range into <name>.part), retried with backoff, verified


class _Retryable(Exception):
    """A failed attempt worth repeating (dropped connection, short body); the .part is kept and resumed."""


class _Corrupt(_Retryable):
    """The file arrived whole but does not verify; it is deleted and fetched from the start."""


class _Stopped(Exception):
    """Another download failed for good; this one gives up (keeping its .part for later)."""


def hf_url(repo: str, filename: str) -> str:
    base = os.environ.get("AUTORESEARCH_HF_BASE", HF_BASE).rstrip("/")
    return f"{base}/datasets/{repo}/resolve/main/{filename}"


def verify_parquet(path: Path, full: bool = True) -> int:
    """Row count of a readable parquet file with a `text` column; _Retryable if truncated or corrupt.

    full=False only reads the footer (cheap check of files already in the cache); full=True also
    decodes every text value, which catches corruption inside the file. Raises _Corrupt.
    """
    try:
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise _Corrupt(f"{path.name} has no `text` column")
        rows = pf.metadata.num_rows
        if full:
            seen = sum(pf.read_row_group(i, columns=["text"]).num_rows for i in range(pf.num_row_groups))
            if seen != rows:
                raise _Corrupt(f"{path.name} holds {seen} rows, its footer says {rows}")
        return rows
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _Corrupt(f"{path.name} is not a readable parquet file ({e})") from e


def _fetch_once(url: str, part: Path, stop: threading.Event) -> None:
    """One HTTP attempt: continue part from its current size (Range) or start it over."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "autoresearch-prepare/1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=SOCKET_TIMEOUT_S) as resp:
        total = None
        if have and resp.status == 206:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise _Corrupt(f"the server answered an unexpected range {resp.headers.get('Content-Range')!r}")
            total = int(m.group(2)) if m.group(2) != "*" else None
            mode = "ab"
        else:  # 200: the server ignored the Range header, so start over
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        # Created only now, after the server answered: an unreachable host leaves nothing behind.
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, mode) as f:
            while True:
                if stop.is_set():
                    raise _Stopped()
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
    size = part.stat().st_size
    if total is not None and size != total:
        # http.client returns a short body without raising when the peer closes early.
        raise _Retryable(f"the connection closed after {size} of {total} bytes")


def download(url: str, dest: Path, *, verify=None, stop: threading.Event | None = None,
             retries: int | None = None, backoff: float | None = None) -> Path:
    """Fetch url to dest via dest.part: resumed, retried with exponential backoff, verified, renamed."""
    stop = stop or threading.Event()
    retries = int(os.environ.get("AUTORESEARCH_DOWNLOAD_RETRIES", DOWNLOAD_RETRIES)) if retries is None else retries
    backoff = float(os.environ.get("AUTORESEARCH_DOWNLOAD_BACKOFF", DOWNLOAD_BACKOFF_S)) if backoff is None else backoff
    part = dest.with_name(dest.name + ".part")
    host = urllib.parse.urlsplit(url).netloc
    last = "no attempt was made"
    unreachable = False
    for attempt in range(retries + 1):
        if attempt:
            if stop.wait(backoff * 2 ** (attempt - 1)):
                raise _Stopped()
        try:
            try:
                _fetch_once(url, part, stop)
            except urllib.error.HTTPError as e:
                if e.code != 416 or not part.exists():
                    raise
                # 416 after a Range request: the part is already complete (or longer than the file).
            if verify is not None:
                verify(part)
            os.replace(part, dest)
            return dest
        except _Stopped:
            raise
        except urllib.error.HTTPError as e:
            last, unreachable = f"HTTP {e.code}", False
            if e.code == 416:
                part.unlink(missing_ok=True)
            elif e.code < 500 and e.code not in (408, 429):
                raise PrepareError(f"{host} answered HTTP {e.code} for {dest.name}: check the dataset name, "
                                   f"--num-shards and AUTORESEARCH_HF_BASE") from None
        except _Corrupt as e:
            last, unreachable = str(e), False
            part.unlink(missing_ok=True)  # resuming a corrupt file would only extend the damage
        except _Retryable as e:
            last, unreachable = str(e), False
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            last = str(reason) or type(reason).__name__
            unreachable = isinstance(e, urllib.error.URLError) or isinstance(reason, (socket.gaierror, ConnectionRefusedError))
    if unreachable:
        raise PrepareError(f"cannot reach {host} to download {dest.name} ({last}): check the network or proxy, "
                           f"or use --dataset pystdlib for an offline corpus")
    raise PrepareError(f"downloading {dest.name} from {host} failed {retries + 1} times (last: {last}): run "
                       f"prepare.py again to resume, or use --dataset pystdlib for an offline corpus")


def download_all(jobs: list[tuple[str, Path]], verify=verify_parquet, log=print,
                 workers: int = DOWNLOAD_WORKERS) -> None:
    """Download (url, dest) pairs in parallel; the first permanent failure stops the others."""
    if not jobs:
        return
    stop = threading.Event()
    done = [0]
    lock = threading.Lock()

    def one(job):
        url, dest = job
        if stop.is_set():
            raise _Stopped()
        t0 = time.time()
        try:
            download(url, dest, verify=verify, stop=stop)
        except PrepareError:
            stop.set()
            raise
        with lock:
            done[0] += 1
            log(f"  [{done[0]}/{len(jobs)}] {dest.parent.name}/{dest.name} "
                f"{dest.stat().st_size / 1e6:.1f} MB in {time.time() - t0:.1f} s")

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs))), thread_name_prefix="download") as pool:
        futures = [pool.submit(one, job) for job in jobs]
        errors = [f.exception() for f in futures]
    for err in errors:
        if isinstance(err, PrepareError):
            raise err
    for err in errors:
        if err is not None and not isinstance(err, _Stopped):
            raise err


# ---------------------------------------------------------------------------------------------------
# Building the datasets in the cache


def _write_shard(path: Path, docs: list[str]) -> None:
    """One parquet shard with a `text` column, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.table({"text": pa.array(docs, type=pa.string())}), tmp, row_group_size=ROW_GROUP_DOCS)
    os.replace(tmp, path)


class _ShardWriter:
    """Cuts a stream of documents into shard_00000.parquet, shard_00001.parquet, ... of ~SHARD_CHARS."""

    def __init__(self, folder: Path, shard_chars: int = SHARD_CHARS):
        self.folder, self.shard_chars = folder, shard_chars
        self.docs: list[str] = []
        self.chars = 0
        self.shards = 0
        self.total_docs = 0

    def add(self, doc: str) -> None:
        self.docs.append(doc)
        self.chars += len(doc)
        self.total_docs += 1
        if self.chars >= self.shard_chars:
            self.flush()

    def flush(self) -> None:
        if self.docs:
            _write_shard(self.folder / f"shard_{self.shards:05d}.parquet", self.docs)
            self.shards += 1
            self.docs, self.chars = [], 0


def _in_val(key: str) -> bool:
    """Deterministic ~VAL_PERCENT% hash split (stable across machines and Python runs)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8", "surrogatepass")).digest()[:4], "big") % 100 < VAL_PERCENT


def _swap_in(build: Path, target: Path) -> None:
    """Replace target/{train,val} with the freshly built ones."""
    for split in ("train", "val"):
        shutil.rmtree(target / split, ignore_errors=True)
        os.replace(build / split, target / split)
    build.rmdir()


def _commit_splits(build: Path, target: Path, marker: Path, signature: dict, train: "_ShardWriter",
                   val: "_ShardWriter", empty_error: str) -> None:
    """Flush both splits, refuse an empty one (nothing half-built is left), swap them in, then write the
    marker that says the folder is complete."""
    train.flush()
    val.flush()
    if not train.total_docs or not val.total_docs:
        shutil.rmtree(build, ignore_errors=True)
        raise PrepareError(empty_error)
    _swap_in(build, target)
    _atomic_write(marker, json.dumps({"signature": signature, "train_docs": train.total_docs,
                                      "val_docs": val.total_docs}, indent=1).encode())


def _fresh_build_dir(target: Path) -> Path:
    """target/.build/{train,val}, empty (left-overs of an interrupted build are discarded)."""
    build = target / ".build"
    shutil.rmtree(build, ignore_errors=True)
    (build / "train").mkdir(parents=True)
    (build / "val").mkdir()
    return build


def stdlib_documents() -> list[tuple[str, str]]:
    """(relative path, source text) of every distinct UTF-8 .py file of this Python's stdlib, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if rel.parts[0] in ("site-packages", "dist-packages") or not path.is_file():
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a few test files are deliberately in other encodings
        digest = hashlib.sha1(text.encode()).hexdigest()
        if text.strip() and digest not in seen:  # identical files (test fixtures) would leak into val
            seen.add(digest)
            docs.append((rel.as_posix(), text))
    return docs


def build_pystdlib(target: Path, log=print) -> None:
    """The offline corpus: stdlib sources, one document per file, hash-split by path into train/val."""
    signature = {"python": sys.version, "stdlib": sysconfig.get_paths()["stdlib"], "version": 2}
    marker = target / "data.json"
    if (_read_json(marker) or {}).get("signature") == signature and list((target / "val").glob("*.parquet")):
        log(f"  pystdlib corpus already built in {target}")
        return
    t0 = time.time()
    docs = stdlib_documents()
    if not docs:
        raise PrepareError(f"no Python sources found under {sysconfig.get_paths()['stdlib']}: "
                           f"use another --dataset")
    # Order documents by a hash of their path: deterministic, yet modules are mixed within a shard.
    docs.sort(key=lambda d: hashlib.sha1(d[0].encode()).hexdigest())
    build = _fresh_build_dir(target)
    train, val = _ShardWriter(build / "train", shard_chars=8_000_000), _ShardWriter(build / "val")
    for rel, text in docs:
        (val if _in_val(rel) else train).add(text)
    _commit_splits(build, target, marker, signature, train, val,
                   "the standard library gave an empty training or validation split: use another --dataset")
    log(f"  pystdlib: {train.total_docs} train / {val.total_docs} val documents from "
        f"{signature['stdlib']} in {time.time() - t0:.1f} s")


_TXT_SEP = "<|endoftext|>"
_TXT_MAX_DOC = 100_000  # longer pieces (books, logs) are cut at line ends so the packer can use them


def _split_long(piece: str):
    piece = piece.strip()
    while len(piece) > _TXT_MAX_DOC:
        cut = piece.rfind("\n", 0, _TXT_MAX_DOC)
        cut = cut if cut > 0 else _TXT_MAX_DOC
        yield piece[:cut]
        piece = piece[cut:].strip()
    if piece:
        yield piece


def _txt_documents(path: Path, chunk_chars: int = 1 << 24):
    """Documents of a text file: split on <|endoftext|> if present, long pieces cut at line ends."""
    carry = ""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        while True:
            chunk = f.read(chunk_chars)
            pieces = (carry + chunk).split(_TXT_SEP)
            carry = pieces.pop() if chunk else ""
            for piece in pieces:
                yield from _split_long(piece)
            if not chunk:
                return
            if len(carry) > 4 * _TXT_MAX_DOC:
                # A long stretch without separator: emit its front so memory (and the split cost) stay
                # bounded; keep the tail, which may end inside a separator.
                cut = carry.rfind("\n", 0, len(carry) - len(_TXT_SEP))
                if cut > 0:
                    yield from _split_long(carry[:cut])
                    carry = carry[cut:]


def _parquet_documents(path: Path):
    pf = pq.ParquetFile(path)
    if "text" not in pf.schema_arrow.names:
        raise PrepareError(f"{path} has no `text` column: a dataset folder needs parquet files with a text "
                           f"column or .txt files")
    for i in range(pf.num_row_groups):
        for text in pf.read_row_group(i, columns=["text"]).column("text").to_pylist():
            if text:
                yield text


def _folder_files(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.suffix in (".parquet", ".txt") and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def build_folder(src: Source, target: Path, log=print) -> None:
    """A local folder: the last file (sorted) is validation, or ~5% of documents when there is one file."""
    files = _folder_files(src.folder)
    if not files:
        raise PrepareError(f"folder {src.folder} holds no .parquet or .txt files: add some, or use "
                           f"--dataset pystdlib for an offline corpus")
    signature = [[p.relative_to(src.folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    marker = target / "data.json"
    if (_read_json(marker) or {}).get("signature") == signature:
        log(f"  {src.folder} already converted in {target}")
        return
    t0 = time.time()
    build = _fresh_build_dir(target)
    train, val = _ShardWriter(build / "train"), _ShardWriter(build / "val")
    for i, path in enumerate(files):
        docs = _parquet_documents(path) if path.suffix == ".parquet" else _txt_documents(path)
        for doc in docs:
            if len(files) > 1:
                (val if i == len(files) - 1 else train).add(doc)
            else:
                (val if _in_val(doc) else train).add(doc)
    if val.total_docs == 0 and train.docs:
        val.add(train.docs.pop())  # tiny single-file corpus: the hash split gave validation nothing
        train.total_docs -= 1
    _commit_splits(build, target, marker, signature, train, val,
                   f"folder {src.folder} holds too little text to make both a training and a validation "
                   f"split: add more documents")
    log(f"  {src.folder}: {train.total_docs} train / {val.total_docs} val documents in {time.time() - t0:.1f} s")


def fetch_shards(src: Source, target: Path, num_shards: int, log=print) -> None:
    """HF parquet shards: train/shard_00000..N-1 plus the pinned last shard in val/."""
    if not 1 <= num_shards <= src.last_shard:
        raise PrepareError(f"--num-shards must be between 1 and {src.last_shard} for {src.name}, "
                           f"not {num_shards}")
    wanted = [(target / "train" / f"shard_{i:05d}.parquet") for i in range(num_shards)]
    wanted.append(target / "val" / f"shard_{src.last_shard:05d}.parquet")
    jobs = []
    for dest in wanted:
        if dest.exists():
            try:
                verify_parquet(dest, full=False)
                continue
            except _Corrupt as e:
                log(f"  {dest.name} is damaged ({e}); fetching it again")
                dest.unlink()
        jobs.append((hf_url(src.repo, dest.name), dest))
    if not jobs:
        log(f"  all {len(wanted)} shards already in {target}")
        return
    log(f"  downloading {len(jobs)} of {len(wanted)} shards from {urllib.parse.urlsplit(jobs[0][0]).netloc} "
        f"({src.repo})")
    download_all(jobs, log=log)


def fetch_txt(src: Source, target: Path, log=print) -> None:
    """HF text files (TinyStories): downloaded to raw/, converted to parquet shards, raw text removed."""
    marker = target / "data.json"
    signature = {"repo": src.repo, "train": src.train_file, "val": src.val_file, "version": 1}
    if (_read_json(marker) or {}).get("signature") == signature:
        log(f"  {src.name} already converted in {target}")
        return
    raw = target / "raw"
    jobs = [(hf_url(src.repo, f), raw / f) for f in (src.val_file, src.train_file) if not (raw / f).exists()]
    if jobs:
        log(f"  downloading {len(jobs)} text files from {urllib.parse.urlsplit(jobs[0][0]).netloc} ({src.repo})")
    download_all(jobs, verify=None, log=log)
    t0 = time.time()
    build = _fresh_build_dir(target)
    train, val = _ShardWriter(build / "train"), _ShardWriter(build / "val")
    for doc in _txt_documents(raw / src.train_file):
        train.add(doc)
    for doc in _txt_documents(raw / src.val_file):
        val.add(doc)
    _commit_splits(build, target, marker, signature, train, val,
                   f"the downloaded {src.name} files hold no documents: delete {raw} and run prepare.py again")
    for f in (src.train_file, src.val_file):
        (raw / f).unlink(missing_ok=True)
    raw.rmdir()
    log(f"  {src.name}: {train.total_docs} train / {val.total_docs} val documents in {time.time() - t0:.1f} s")


# ---------------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE trained with rustbpe, used through tiktoken


def _training_texts(files: list[Path], max_chars: int):
    """Documents (each capped at TOKENIZER_DOC_CHARS) until max_chars characters have been yielded."""
    seen = 0
    for path in files:
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            for text in pf.read_row_group(i, columns=["text"]).column("text").to_pylist():
                if not text:
                    continue
                text = text[:TOKENIZER_DOC_CHARS]
                yield text
                seen += len(text)
                if seen >= max_chars:
                    return


def train_tokenizer(src: Source, vocab_size: int, max_chars: int = TOKENIZER_CHARS, log=print) -> Path:
    """Train the BPE on the training split and save tokenizer.pkl, token_bytes.pt and meta.json."""
    import rustbpe
    import tiktoken

    n_merge_vocab = vocab_size - len(SPECIAL_TOKENS)
    if n_merge_vocab < 257:
        raise PrepareError(f"vocab size {vocab_size} is too small: use at least {257 + len(SPECIAL_TOKENS)}")
    files = split_files("train", src)
    t0 = time.time()
    counted = [0]

    def texts():
        for text in _training_texts(files, max_chars):
            counted[0] += len(text)
            yield text

    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(texts(), n_merge_vocab, pattern=SPLIT_PATTERN)
    ranks = {bytes(b): int(r) for b, r in bpe.get_mergeable_ranks()}
    if len(ranks) != n_merge_vocab:
        raise PrepareError(f"the training text of {src.name} is too small for a vocabulary of {vocab_size} "
                           f"tokens (only {len(ranks) + len(SPECIAL_TOKENS)} learned): add text or lower VOCAB_SIZE")
    specials = {tok: n_merge_vocab + i for i, tok in enumerate(SPECIAL_TOKENS)}
    params = {"name": f"autoresearch-{vocab_size}", "pat_str": bpe.get_pattern(),
              "mergeable_ranks": ranks, "special_tokens": specials}
    enc = tiktoken.Encoding(**params)
    assert enc.n_vocab == vocab_size
    out = dataset_dir(src) / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    token_bytes = _token_bytes_of(enc)
    # meta.json goes first and comes back last: an interruption between the two files below must not
    # leave a folder that looks complete with a token_bytes table of another tokenizer
    (out / "meta.json").unlink(missing_ok=True)
    buf = io.BytesIO()
    torch.save(token_bytes.to(torch.int32), buf)
    _atomic_write(out / "token_bytes.pt", buf.getvalue())
    _atomic_write(out / "tokenizer.pkl", pickle.dumps(params))
    seconds = time.time() - t0
    meta = {"vocab_size": vocab_size, "dataset": src.name, "chars_trained": counted[0],
            "max_chars": max_chars, "special_tokens": SPECIAL_TOKENS, "bos_token": BOS_TOKEN,
            "train_seconds": round(seconds, 2)}
    # meta.json last: its presence with the right vocab_size means the folder is complete.
    _atomic_write(out / "meta.json", json.dumps(meta, indent=1).encode())
    log(f"  tokenizer: {vocab_size} tokens from {counted[0] / 1e6:.1f} M characters in {seconds:.1f} s")
    return out


def _token_bytes_of(enc) -> torch.Tensor:
    """UTF-8 byte length of every token id; 0 for the special tokens (they are not text)."""
    specials = set(enc.special_tokens_set)
    special_ids = {enc.encode_single_token(s) for s in specials}
    return torch.tensor([0 if i in special_ids else len(enc.decode_single_token_bytes(i))
                         for i in range(enc.n_vocab)], dtype=torch.long)


def tokenizer_dir(dataset: Source | str | None = None) -> Path:
    return dataset_dir(dataset) / "tokenizer"


class Tokenizer:
    """The trained BPE (a tiktoken.Encoding) with the helpers train.py needs."""

    def __init__(self, enc, path: Path | None = None):
        self.enc = enc
        self.path = path
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, path: str | os.PathLike | None = None) -> "Tokenizer":
        """Load a tokenizer folder (default: the one of constants.DATASET, checked against VOCAB_SIZE)."""
        import tiktoken

        default = path is None
        folder = tokenizer_dir() if default else Path(path)
        meta = _read_json(folder / "meta.json")
        if meta is None or not (folder / "tokenizer.pkl").exists():
            raise PrepareError(f"no tokenizer in {folder}: run `uv run autoresearch setup ...` or "
                               f"`python prepare.py` first")
        if default and meta.get("vocab_size") != VOCAB_SIZE:
            raise PrepareError(f"the tokenizer in {folder} has {meta.get('vocab_size')} tokens but VOCAB_SIZE "
                               f"is {VOCAB_SIZE}: run `python prepare.py` to retrain it")
        with open(folder / "tokenizer.pkl", "rb") as f:
            params = pickle.load(f)
        return cls(tiktoken.Encoding(**params), folder)

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def _special_id(self, token: int | str) -> int:
        return token if isinstance(token, int) else self.enc.encode_single_token(token)

    def encode(self, text, prepend: int | str | None = None, num_threads: int = 8):
        """str -> list[int]; list[str] -> list[list[int]] (batched over threads). Special-token
        text inside documents is encoded as ordinary text; prepend (an id or a special token) goes first."""
        first = None if prepend is None else self._special_id(prepend)
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ids if first is None else [first] + ids
        if isinstance(text, (list, tuple)):
            batch = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
            if first is not None:
                for ids in batch:
                    ids.insert(0, first)
            return batch
        raise TypeError(f"encode expects a str or a list of str, not {type(text).__name__}")

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.enc.decode(ids)

    def token_bytes(self) -> torch.Tensor:
        """LongTensor [vocab]: UTF-8 byte length per id, 0 for specials (computed from the encoding)."""
        return _token_bytes_of(self.enc)


def get_token_bytes(device="cpu", path: str | os.PathLike | None = None) -> torch.Tensor:
    """LongTensor [vocab] of UTF-8 byte lengths per token id (0 for specials), on device."""
    folder = tokenizer_dir() if path is None else Path(path)
    file = folder / "token_bytes.pt"
    if not file.exists():
        raise PrepareError(f"no token_bytes.pt in {folder}: run `uv run autoresearch setup ...` or "
                           f"`python prepare.py` first")
    return torch.load(file, map_location="cpu").long().to(device)


# ---------------------------------------------------------------------------------------------------
# Dataloader: BOS-aligned best-fit packing, read/tokenize/pack in a background thread


class BestFitPacker:
    """BOS-aligned best-fit packing of tokenized documents into rows without padding.

    Keeps a buffer of documents; fill_row puts the largest one that still fits into the row until it
    is full, and when none fits crops the shortest to fill it exactly (dropping the rest of that one).
    A row therefore starts with the first token of a document (BOS) and is never padded.
    """

    _SHIFT = 40  # buffer keys are len << 40 | seq: one sorted list of ints, cheaper than tuples
    _LOW = (1 << 40) - 1

    def __init__(self, buffer_size: int = DOC_BUFFER):
        self.buffer_size = buffer_size
        self._keys: list[int] = []
        self._docs: dict[int, array.array] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, doc) -> None:
        if len(doc):
            self._docs[self._seq] = doc
            bisect.insort(self._keys, (len(doc) << self._SHIFT) | self._seq)
            self._seq += 1

    def fill_row(self, out: array.array, width: int, more) -> None:
        """Append exactly width tokens to out; more() returns further documents when the buffer runs low."""
        remaining = width
        while remaining:
            while len(self._keys) < self.buffer_size:
                for doc in more():
                    self.add(doc)
            i = bisect.bisect_right(self._keys, (remaining << self._SHIFT) | self._LOW) - 1
            if i >= 0:  # the largest document that fits
                key = self._keys.pop(i)
                out.extend(self._docs.pop(key & self._LOW))
                remaining -= key >> self._SHIFT
            else:  # none fits: crop the shortest to fill the row
                out.extend(self._docs.pop(self._keys.pop(0) & self._LOW)[:remaining])
                remaining = 0


_LIVE_LOADERS: "weakref.WeakSet[_PackedLoader]" = weakref.WeakSet()


@atexit.register
def _stop_loaders() -> None:
    # Background threads inside native code (tokenizer, arrow) abort the process if the interpreter
    # tears down under them; stop and join them first.
    for loader in list(_LIVE_LOADERS):
        loader.close()


class _PackedLoader:
    """Infinite iterator of (x, y, epoch): x, y int64 [B, T], every row starts with BOS, no padding.

    Each row takes T+1 tokens. From a buffer of ~DOC_BUFFER tokenized documents (each starting with
    BOS) the packer repeatedly puts the largest document that still fits; when none fits it crops the
    shortest one to fill the row exactly (the rest of that document is dropped). Two background
    threads work ahead of the training loop: one reads and tokenizes (tiktoken releases the GIL and
    uses several threads), one packs; the training loop only moves finished batches to the device.
    """

    def __init__(self, tokenizer: Tokenizer, B: int, T: int, files: list[Path], device,
                 buffer_size: int | None = None, prefetch: int = 4):
        if B < 1 or T < 1:
            raise PrepareError(f"make_dataloader needs B >= 1 and T >= 1, not B={B}, T={T}")
        self.tokenizer, self.B, self.T, self.files = tokenizer, B, T, files
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        # A split with fewer documents than the buffer (a small validation set) would otherwise be
        # tokenized several times over before the first batch.
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        self.buffer_size = max(1, min(DOC_BUFFER if buffer_size is None else buffer_size, rows))
        # On a GPU the CPU is idle, so tokenize well ahead; on a CPU run the tokenizer threads compete
        # with the training step for the same cores, so keep only a little lookahead.
        ahead = 16 if self.device.type == "cuda" else 2
        self._docs: queue.Queue = queue.Queue(maxsize=ahead)
        self._batches: queue.Queue = queue.Queue(maxsize=prefetch if self.device.type == "cuda" else min(prefetch, 2))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._run, args=(self._tokenize, self._docs),
                                          name="prepare-tokenize", daemon=True),
                         threading.Thread(target=self._run, args=(self._pack, self._batches),
                                          name="prepare-pack", daemon=True)]
        _LIVE_LOADERS.add(self)
        for t in self._threads:
            t.start()

    # --- consumer side (the training loop) ---
    def __iter__(self):
        return self

    def __next__(self):
        if self._error is not None:
            raise self._error
        while True:
            try:
                item = self._batches.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._threads[1].is_alive() and self._batches.empty():
                    raise RuntimeError("the dataloader was closed") from None
        if isinstance(item, BaseException):
            self._error = item
            raise item
        x, y, epoch = item
        if self.device.type != "cpu":
            x = x.to(self.device, non_blocking=self.pin)
            y = y.to(self.device, non_blocking=self.pin)
        return x, y, epoch

    def close(self) -> None:
        """Stop the background threads (the iterator is unusable afterwards)."""
        self._stop.set()
        for q in (self._batches, self._docs):
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout=10)
        _LIVE_LOADERS.discard(self)

    # --- producer side (background threads) ---
    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue):
        while not self._stop.is_set():
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            return item
        raise _Stopped()

    def _run(self, work, out: queue.Queue) -> None:
        try:
            work()
        except _Stopped:
            pass
        except BaseException as e:  # handed downstream, raised from next() in the training loop
            self._put(out, e)

    def _tokenize(self) -> None:
        """(epoch, [array('q') of token ids, each starting with BOS]) batches, forever, in file order."""
        bos = self.tokenizer.get_bos_token_id()
        threads = max(1, min(8, os.cpu_count() or 1))
        epoch = 1
        while True:
            found = False
            for path in self.files:
                pf = pq.ParquetFile(path)
                for i in range(pf.num_row_groups):
                    texts = [t for t in pf.read_row_group(i, columns=["text"]).column("text").to_pylist() if t]
                    found = found or bool(texts)
                    for j in range(0, len(texts), TOKENIZE_BATCH):
                        ids = self.tokenizer.encode(texts[j:j + TOKENIZE_BATCH], prepend=bos, num_threads=threads)
                        if not self._put(self._docs, (epoch, [array.array("q", d) for d in ids])):
                            return
            if not found:
                raise PrepareError(f"the {self.files[0].parent.name} shards in {self.files[0].parent} hold no "
                                   f"text: rebuild the data with `python prepare.py`")
            epoch += 1

    def _pack(self) -> None:
        B, T1 = self.B, self.T + 1
        packer = BestFitPacker(self.buffer_size)
        epoch = [1]

        def more():
            epoch[0], batch = self._get(self._docs)
            return batch

        while not self._stop.is_set():
            flat = array.array("q")
            for _ in range(B):
                packer.fill_row(flat, T1, more)
            rows = torch.frombuffer(flat, dtype=torch.long).view(B, T1)
            x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
            if self.pin:
                x, y = x.pin_memory(), y.pin_memory()
            if not self._put(self._batches, (x, y, epoch[0])):
                return


def make_dataloader(tokenizer: Tokenizer, B: int, T: int, split: str, device="cpu") -> _PackedLoader:
    """Infinite iterator of (x, y, epoch) with x, y int64 [B, T] on device (see _PackedLoader)."""
    return _PackedLoader(tokenizer, B, T, split_files(split), device)


# ---------------------------------------------------------------------------------------------------
# Evaluation: the trusted metric


def peak_memory_mb(device="cpu") -> float:
    """Peak memory of this process in MiB: CUDA allocator peak, MPS driver memory, or peak RSS on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def eval_autocast(device):
    """The evaluation's numerics: bf16 autocast on CUDA, plain fp32 elsewhere (hand_over exports under it too)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else nullcontext()


def _model_device(model) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _forward(model, x: torch.Tensor, vocab: int) -> torch.Tensor:
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x.shape) \
            or logits.shape[2] < vocab:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise PrepareError(f"model(x) must return logits of shape [B, T, V] with V >= {vocab} for x of shape "
                           f"{tuple(x.shape)}, got {shape}: return the logits from forward()")
    return logits


def _nats_and_bytes(logits: torch.Tensor, y: torch.Tensor, token_bytes: torch.Tensor) -> tuple[float, int]:
    """Σ cross-entropy (nats, fp32, computed here) over targets that are text, and Σ their UTF-8 bytes."""
    B, T, V = logits.shape
    rows = max(1, (1 << 26) // (T * V))  # chunks of <= 64 M logits, so the fp32 copy stays small
    nats = []
    nbytes = []
    for i in range(0, B, rows):
        lg = logits[i:i + rows].float()
        tgt = y[i:i + rows]
        nll = torch.logsumexp(lg, dim=-1) - lg.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        tb = token_bytes[tgt]
        nats.append(torch.where(tb > 0, nll, torch.zeros_like(nll)).sum())
        nbytes.append(tb.sum())
    return float(torch.stack(nats).sum().item()), int(torch.stack(nbytes).sum().item())


def _prefix_change(a: torch.Tensor, b: torch.Tensor, before: torch.Tensor) -> float:
    """max |a - b| over the positions of each row before its own cut (before: [B, T] bool), in row chunks."""
    B, T, V = a.shape
    rows = max(1, (1 << 26) // (T * V))
    worst = 0.0
    for i in range(0, B, rows):
        d = (a[i:i + rows].float() - b[i:i + rows].float()).abs().amax(dim=-1)  # [rows, T]
        worst = max(worst, float(torch.where(before[i:i + rows], d, torch.zeros_like(d)).max().item()))
    return worst


def _check_causal(model, x: torch.Tensor, ref: torch.Tensor, vocab: int, rng: random.Random) -> None:
    """Logits before a position must not move when the tokens from that position on are replaced.

    Every row of the probed batch gets its own random cut c (1 <= c < T) and random tokens from c on. Running
    x once more gives the model's own noise (zero for deterministic kernels, bf16 included); the allowed
    change is a small multiple of it, so even a weak leak of later tokens is caught while nondeterministic
    kernels are not refused. The probed batch and the cuts are drawn from the OS's randomness, so a model
    (a pure function: exported graphs may not keep state) cannot tell the probe from the scoring.
    """
    B, T = x.shape
    cuts = torch.tensor([rng.randint(1, T - 1) for _ in range(B)], device=x.device)
    before = torch.arange(T, device=x.device)[None, :] < cuts[:, None]  # [B, T]
    with torch.no_grad(), eval_autocast(x.device):
        again = _forward(model, x, vocab)
        noise = _prefix_change(again, ref, before)
        del again
        gen = torch.Generator(device="cpu").manual_seed(rng.randrange(2**62))
        x2 = torch.where(before, x, torch.randint(0, vocab, (B, T), generator=gen).to(x.device))
        new = _forward(model, x2, vocab)
        diff = _prefix_change(new, ref, before)
        del new
    scale = float(ref.abs().max().item())
    tol = 1e-4 * (1.0 + scale) + 4.0 * noise
    if not diff <= tol:
        raise PrepareError(f"the model is not causal: logits before a position changed by {diff:.4g} (run-to-run "
                           f"noise {noise:.2g}) when only later tokens changed; a position must not see the "
                           f"tokens after it")


def evaluate_bpb(model, tokenizer: Tokenizer, batch_size: int) -> float:
    """Validation bits per byte of model over EVAL_TOKENS tokens at T=MAX_SEQ_LEN (the trusted metric).

    model(x) must return logits [B, T, V]; the loss is computed here from them in fp32. EVAL_TOKENS // T rows
    are scored whatever the batch size (the last batch is cut), so the batch size cannot choose the data.
    One batch, drawn at random, is also used for the causality check. Under the engine this runs in the
    evaluator process (`prepare.py --evaluate`), never in the trainer.
    """
    device = _model_device(model)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise PrepareError(f"evaluate_bpb needs batch_size >= 1, not {batch_size}")
    T = int(MAX_SEQ_LEN)
    vocab = tokenizer.get_vocab_size()
    rows = max(1, int(EVAL_TOKENS) // T)
    steps = -(-rows // batch_size)
    rng = random.SystemRandom()
    probe = rng.randrange(steps) if T > 1 else -1
    token_bytes = tokenizer.token_bytes().to(device)
    was_training = getattr(model, "training", False)
    _set_mode(model, False)
    loader = make_dataloader(tokenizer, batch_size, T, "val", device=device)
    total_nats, total_bytes = 0.0, 0
    try:
        with torch.no_grad():
            for step in range(steps):
                x, y, _ = next(loader)
                with eval_autocast(device):
                    logits = _forward(model, x, vocab)
                take = min(batch_size, rows - step * batch_size)
                nats, nbytes = _nats_and_bytes(logits[:take], y[:take], token_bytes)
                total_nats += nats
                total_bytes += nbytes
                if step == probe:
                    _check_causal(model, x, logits, vocab, rng)
                del logits
    finally:
        loader.close()
        _set_mode(model, was_training)
    if total_bytes == 0:
        raise PrepareError("the validation batches held no text bytes: rebuild the data with `python prepare.py`")
    bpb = total_nats / (math.log(2) * total_bytes)
    if not math.isfinite(bpb):
        raise PrepareError(f"the validation loss is not finite ({bpb}): the model diverged")
    return bpb


def _set_mode(model, training: bool) -> None:
    try:
        model.train(training)
    except NotImplementedError:  # an exported graph has no train/eval mode: it was exported in eval mode
        pass


# ---------------------------------------------------------------------------------------------------
# Hand-over: the trainer exports its final model and exits; a separate process scores it
#
# The exported program (torch.export, eval mode, tokens [B, T] -> logits [B, T, V]) is the only thing that
# leaves the trainer. The evaluator (`python prepare.py --evaluate MODEL --metrics OUT`, run by the engine
# from a trusted copy of this file) imports none of train.py, refuses anything in the file that could run
# code other than tensor operations (pickled objects, custom or I/O operators, symbolic-shape code), and
# computes val_bpb with its own tokenizer, byte table and validation data.

HANDOFF_ENV = "AUTORESEARCH_HANDOFF"  # the folder where the engine takes the model from
MODEL_FILE = "model.pt2"
REPORT_FILE = "report.json"  # the trainer's own figures (training_seconds, num_steps, ...): informational
REPORT_KEYS = ("training_seconds", "total_seconds", "mfu_percent", "total_tokens_M", "num_steps", "num_params_M",
               "depth", "peak_vram_mb")

_EXPORT_RULE = ("the evaluator runs forward(idx) -> logits as a torch.export graph: forward must be traceable "
                "with a fixed input shape, using built-in PyTorch operations only (no custom or Triton "
                "operators, no Python control flow on tensor values, no state changed in forward)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def export_model(model, example: torch.Tensor, dest: str | os.PathLike) -> Path:
    """Export model in eval mode for inputs shaped like example ([B, MAX_SEQ_LEN] token ids) to dest (.pt2)."""
    import torch.export

    module = getattr(model, "_orig_mod", model)  # a torch.compile wrapper exports as the module it wraps
    if not isinstance(example, torch.Tensor) or example.dim() != 2 or example.shape[1] != int(MAX_SEQ_LEN) \
            or example.dtype != torch.long:
        shape = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
        raise PrepareError(f"hand_over needs an example batch of token ids of shape [B, {MAX_SEQ_LEN}] (int64), "
                           f"got {shape}: pass a batch x from the training loader")
    was_training = module.training
    module.eval()
    try:
        with eval_autocast(example.device):
            program = torch.export.export(module, (example,))
    except PrepareError:
        raise
    except Exception as e:
        raise PrepareError(f"the model cannot be exported ({type(e).__name__}: {_first_line(e)}); "
                           f"{_EXPORT_RULE}") from None
    finally:
        module.train(was_training)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.tmp{dest.suffix}")  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, tmp)
    os.replace(tmp, dest)
    return dest


def hand_over(model, example: torch.Tensor, **report) -> float | None:
    """The end of training: export model (eval mode, example = a batch of token ids [B, MAX_SEQ_LEN]) and
    hand it to the evaluator, with the trainer's own figures (training_seconds=..., num_steps=...).

    Under the engine ($AUTORESEARCH_HANDOFF set) the model is left there and None is returned: the engine
    scores it in a separate process and prints the summary; train.py should exit. Run by hand, this
    process starts that evaluator itself and returns val_bpb.
    """
    device = example.device if isinstance(example, torch.Tensor) else torch.device("cpu")
    figures = {k: v for k, v in report.items() if k in REPORT_KEYS}
    figures["peak_vram_mb"] = round(peak_memory_mb(device), 1)
    figures = json.loads(json.dumps(figures, default=_jsonable))
    folder = os.environ.get(HANDOFF_ENV)
    if folder:
        # the report first: the model's appearance is the hand-over, and the engine takes both at once
        _atomic_write(Path(folder) / REPORT_FILE, json.dumps(figures).encode())
        export_model(model, example, Path(folder) / MODEL_FILE)
        return None
    with tempfile.TemporaryDirectory(prefix="autoresearch-handover-") as tmp:
        path = export_model(model, example, Path(tmp) / MODEL_FILE)
        out = Path(tmp) / "metrics.json"
        here = Path(__file__).resolve().parent
        proc = subprocess.run([sys.executable, str(here / "prepare.py"), "--evaluate", str(path),
                               "--metrics", str(out)], cwd=here)
        metrics = _read_json(out) or {}
    if proc.returncode != 0 or "val_bpb" not in metrics:
        raise PrepareError(metrics.get("error") or f"the evaluator exited with code {proc.returncode}")
    return float(metrics["val_bpb"])


def _jsonable(value):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


# what an exported program of ours holds; anything else in the archive is refused
_ARCHIVE_ENTRY = re.compile(r"(models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
                            r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
                            r"|data/sample_inputs/model\.pt|archive_format|archive_version|byteorder"
                            r"|\.data/version|\.data/serialization_id)")
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.([A-Za-z0-9_]+)\.[A-Za-z0-9_]+")
_HIGHER_ORDER_OPS = ("flex_attention", "wrap_with_set_grad_enabled", "wrap_with_autocast")
_DENIED_OPS = frozenset({"from_file", "_assert_async", "_print", "_nested_tensor_from_tensor_list"})
_RANDOM_OPS = ("rand", "normal", "bernoulli", "multinomial", "uniform", "exponential", "cauchy", "geometric",
               "log_normal", "poisson", "native_dropout", "dropout", "_fused_dropout", "rrelu", "feature_dropout",
               "alpha_dropout", "feature_alpha_dropout")
_MAX_JSON_DEPTH = 200


def _refuse_model(detail: str) -> PrepareError:
    return PrepareError(f"the handed-over model cannot be evaluated: {detail}; {_EXPORT_RULE}")


def _check_target(target) -> None:
    if not isinstance(target, str):
        raise _refuse_model(f"a graph node has the target {target!r}")
    m = _OP_TARGET.fullmatch(target)
    if m and m.group(2) not in _DENIED_OPS:
        return
    if target == "_operator.getitem" or target in {f"torch.ops.higher_order.{h}" for h in _HIGHER_ORDER_OPS}:
        return
    raise _refuse_model(f"it calls {target[:120]}, which the evaluator does not run")


def _check_json(node, depth: int = 0) -> None:
    """Walk the serialized program: every node target must be a built-in tensor operation, and nothing may be
    symbolic (the deserializer turns symbolic expressions and guards into Python code)."""
    if depth > _MAX_JSON_DEPTH:
        raise _refuse_model("its graph is nested too deeply")
    if isinstance(node, dict):
        if "target" in node and "inputs" in node and "outputs" in node:
            _check_target(node["target"])
        for key, value in node.items():
            if key in ("expr_str", "as_expr", "as_sym_int", "as_sym_float", "as_sym_bool", "as_custom_obj",
                       "as_sym_ints", "as_sym_floats", "as_sym_bools", "as_operator"):
                raise _refuse_model("it has symbolic shapes or custom objects (export with a fixed input shape)")
            _check_json(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            _check_json(value, depth + 1)


def _check_archive(path: Path) -> None:
    """Refuse a .pt2 archive that holds more than plain tensors and a graph of built-in operations."""
    import zipfile

    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise _refuse_model(f"{path.name} is not an exported program ({e})") from None
    with zf:
        names = zf.namelist()
        prefixes = {n.split("/", 1)[0] for n in names}
        if len(prefixes) != 1 or any("/" not in n for n in names):
            raise _refuse_model(f"{path.name} is not an archive written by torch.export.save")
        prefix = prefixes.pop() + "/"
        for name in names:
            if not _ARCHIVE_ENTRY.fullmatch(name[len(prefix):]):
                raise _refuse_model(f"the archive holds {name[len(prefix):][:80]!r}, which an exported model of "
                                    f"plain tensors does not")
        try:
            program = json.loads(zf.read(prefix + "models/model.json"))
            configs = [json.loads(zf.read(prefix + f"data/{kind}/model_{kind}_config.json"))
                       for kind in ("weights", "constants") if prefix + f"data/{kind}/model_{kind}_config.json" in names]
        except (KeyError, ValueError) as e:
            raise _refuse_model(f"the archive's program is unreadable ({e})") from None
    for config in configs:
        for fqn, meta in (config.get("config") or {}).items() if isinstance(config, dict) else []:
            if not isinstance(meta, dict) or meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(
                    ("weight_", "tensor_")):
                raise _refuse_model(f"its tensor {str(fqn)[:80]} is stored as a pickled object (hand over "
                                    f"plain tensors, not tensor subclasses or custom objects)")
    if not isinstance(program, dict) or program.get("guards_code") or program.get("range_constraints"):
        raise _refuse_model("it carries shape guards or symbolic ranges (export with a fixed input shape)")
    graph = (program.get("graph_module") or {}).get("graph") or {}
    for key in ("sym_int_values", "sym_float_values", "sym_bool_values", "custom_obj_values"):
        if graph.get(key):
            raise _refuse_model("it has symbolic shapes or custom objects (export with a fixed input shape)")
    _check_json(program)


class _NoPickle:
    """While an archive is deserialized: torch.load only through its weights-only unpickler, plain pickle and
    TorchScript object loading refused (the validated archive should need neither; this is the second line)."""

    def __enter__(self):
        real = torch.load

        def weights_only_load(f, *args, **kwargs):
            kwargs["weights_only"] = True
            return real(f, *args, **kwargs)

        def refuse(*args, **kwargs):
            raise _refuse_model("it holds a pickled object")

        self._saved = (torch.load, pickle.loads, pickle.load, torch._C._pickle_load_obj)
        torch.load, pickle.loads, pickle.load, torch._C._pickle_load_obj = weights_only_load, refuse, refuse, refuse
        return self

    def __exit__(self, *exc):
        torch.load, pickle.loads, pickle.load, torch._C._pickle_load_obj = self._saved
        return False


def _check_program(program) -> tuple[int, str]:
    """The loaded program: built-in operations only, no state mutation, one [B, MAX_SEQ_LEN] int64 input and
    one output. Returns (B, the input's name)."""
    import operator

    from torch._ops import HigherOrderOperator, OpOverload

    for gm in program.graph_module.modules():
        graph = getattr(gm, "graph", None)
        for node in graph.nodes if graph is not None else ():
            if node.op in ("call_module", "call_method"):
                raise _refuse_model(f"its graph has a {node.op} node")
            if node.op != "call_function":
                continue
            t = node.target
            if t is operator.getitem:
                continue
            if isinstance(t, OpOverload) and t.namespace in ("aten", "prims"):
                name = t._schema.name.split("::")[-1]
                if t._schema.is_mutable:
                    # state kept across calls (a counter in a buffer) could tell the probe from the scoring
                    raise _refuse_model(f"forward changes a tensor in place ({t}); use out-of-place operations")
                if name.startswith(_RANDOM_OPS) and not (name == "dropout" and node.args[2:3] == (False,)):
                    # random logits would widen the causality check's noise tolerance
                    raise _refuse_model(f"forward draws random numbers ({t}) in eval mode")
                if name not in _DENIED_OPS:
                    continue
            if isinstance(t, HigherOrderOperator) and t.name() in _HIGHER_ORDER_OPS:
                continue
            raise _refuse_model(f"it calls {getattr(t, '__name__', t)!s:.120}, which the evaluator does not run")
    sig = program.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate:
        raise _refuse_model("forward changes a tensor in place (buffers or its input); use out-of-place operations")
    if len(sig.user_inputs) != 1 or len(sig.user_outputs) != 1:
        raise _refuse_model(f"forward takes {len(sig.user_inputs)} inputs and returns {len(sig.user_outputs)} "
                            f"outputs; it must take the token ids and return the logits")
    name = sig.user_inputs[0]
    val = next((n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name == name), None)
    shape = tuple(val.shape) if isinstance(val, torch.Tensor) else None
    if shape is None or len(shape) != 2 or shape[1] != int(MAX_SEQ_LEN) or val.dtype != torch.long \
            or not all(isinstance(d, int) for d in shape):
        raise _refuse_model(f"its input is {shape} {getattr(val, 'dtype', '')}, not token ids [B, {MAX_SEQ_LEN}] "
                            f"(int64)")
    return shape[0], name


def load_model(path: str | os.PathLike):
    """The handed-over model as a callable tokens [B, T] -> logits, and B; PrepareError when it is refused."""
    import torch.export

    path = Path(path)
    _check_archive(path)
    try:
        with _NoPickle():
            program = torch.export.load(path)
    except PrepareError:
        raise
    except Exception as e:
        raise _refuse_model(f"it does not load ({type(e).__name__}: {_first_line(e)})") from None
    batch, _ = _check_program(program)
    try:
        module = program.module(check_guards=False)  # guards would be generated Python code
    except Exception as e:
        raise _refuse_model(f"it does not load ({type(e).__name__}: {_first_line(e)})") from None
    return module, batch


def _compiled_on_gpu(model, batch: int, device: torch.device):
    """On CUDA the exported graph is compiled (eager flex attention would materialise every score matrix);
    where compilation fails the evaluation runs eagerly: slower, the same numbers within kernel noise."""
    if device.type != "cuda":
        return model, False
    try:
        compiled = torch.compile(model, dynamic=False)
        with torch.no_grad(), eval_autocast(device):
            compiled(torch.zeros((batch, int(MAX_SEQ_LEN)), dtype=torch.long, device=device))
        return compiled, True
    except Exception as e:
        print(f"prepare.py: evaluating without compilation ({type(e).__name__}: {_first_line(e)})", file=sys.stderr)
        return model, False


def evaluate_file(model_path: str | os.PathLike, metrics_path: str | os.PathLike | None = None) -> dict:
    """The evaluator: load the handed-over model, score it on the validation data, write the metrics (JSON)."""
    t0 = time.time()
    out = Path(metrics_path) if metrics_path else None
    try:
        model, batch = load_model(model_path)
        device = _model_device(model)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PrepareError("the model was exported on a GPU but the evaluator has none")
        tokenizer = Tokenizer.from_directory()
        model, compiled = _compiled_on_gpu(model, batch, device)
        t_loaded = time.time()
        val_bpb = evaluate_bpb(model, tokenizer, batch)
    except PrepareError as e:
        if out:
            _atomic_write(out, (json.dumps({"error": str(e), "dataset": str(DATASET)}) + "\n").encode())
        raise
    info = {"val_bpb": val_bpb, "device": device.type, "dataset": str(DATASET), "eval_tokens": int(EVAL_TOKENS),
            "max_seq_len": int(MAX_SEQ_LEN), "vocab_size": tokenizer.get_vocab_size(), "eval_batch_size": batch,
            "eval_peak_mb": round(peak_memory_mb(device), 1), "eval_load_seconds": round(t_loaded - t0, 2),
            "eval_compiled": compiled,
            "eval_seconds": round(time.time() - t0, 2)}
    if out:
        _atomic_write(out, (json.dumps(info, indent=1) + "\n").encode())
    return info


# ---------------------------------------------------------------------------------------------------
# prepare(): the one-time data + tokenizer step, and its command line


def prepare(dataset=None, num_shards: int | None = None, vocab_size: int | None = None, log=print,
            tokenizer_chars: int | None = None, retrain_tokenizer: bool = False) -> dict:
    """Download or build the dataset in the cache and train its tokenizer if needed; returns a summary."""
    t0 = time.time()
    src = resolve_dataset(dataset)
    target = dataset_dir(src)
    vocab_size = int(vocab_size or VOCAB_SIZE)
    log(f"dataset {src.name} -> {target}")
    if src.kind == "shards":
        fetch_shards(src, target, DEFAULT_TRAIN_SHARDS if num_shards is None else int(num_shards), log=log)
    else:
        if num_shards is not None:
            log(f"  (--num-shards applies to downloaded shard datasets; {src.name} is used whole)")
        if src.kind == "pystdlib":
            build_pystdlib(target, log=log)
        elif src.kind == "folder":
            build_folder(src, target, log=log)
        else:
            fetch_txt(src, target, log=log)
    train_files, val_files = split_files("train", src), split_files("val", src)
    meta = _read_json(target / "tokenizer" / "meta.json") or {}
    if (retrain_tokenizer or meta.get("vocab_size") != vocab_size or
            not (target / "tokenizer" / "tokenizer.pkl").exists() or
            not (target / "tokenizer" / "token_bytes.pt").exists()):
        chars = tokenizer_chars or TOKENIZER_CHARS
        log(f"training the tokenizer ({vocab_size} tokens, up to {chars / 1e6:g} M characters)")
        train_tokenizer(src, vocab_size, chars, log=log)
    else:
        log(f"  tokenizer ({vocab_size} tokens) already trained in {target / 'tokenizer'}")
    seconds = time.time() - t0
    log(f"ready: {len(train_files)} train + {len(val_files)} val shards, tokenizer in {target / 'tokenizer'}, "
        f"{seconds:.1f} s")
    return {"dataset": src.name, "dir": str(target), "train_files": len(train_files),
            "val_files": len(val_files), "tokenizer": str(target / "tokenizer"), "seconds": seconds}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse hook: one sentence, exit 1, instead of a usage dump
        raise PrepareError(f"{message}; run `python prepare.py --help` for the options")


def main(argv: list[str] | None = None) -> int:
    """python prepare.py [--dataset NAME|PATH] [--num-shards N] [--vocab-size N] [--cache DIR]
       python prepare.py --evaluate MODEL.pt2 [--metrics OUT.json]

    Downloads or builds the dataset (default: DATASET from constants.py) into the cache and trains
    its tokenizer. Safe to re-run: finished files are kept, interrupted downloads resume.
    With --evaluate: the evaluator. Scores a model handed over by train.py (see hand_over) on the
    validation data and writes the metrics as one JSON object to OUT (the engine runs it).
    """
    parser = _Parser(
        prog="prepare.py",
        description="Download or build the training data and train the BPE tokenizer (one-time step). "
                    f"Datasets: {_DATASET_HINT}. Cache: $AUTORESEARCH_CACHE or ~/.cache/autoresearch.",
        epilog="Environment: AUTORESEARCH_HF_BASE (Hugging Face mirror), AUTORESEARCH_DOWNLOAD_RETRIES, "
               "AUTORESEARCH_DOWNLOAD_BACKOFF (seconds).")
    parser.add_argument("--dataset", default=None, help=f"dataset name or folder (default: {DATASET})")
    parser.add_argument("--num-shards", type=int, default=None,
                        help=f"training shards to download for climbmix/fineweb-edu (default {DEFAULT_TRAIN_SHARDS})")
    parser.add_argument("--vocab-size", type=int, default=None, help=f"tokenizer vocabulary (default {VOCAB_SIZE})")
    parser.add_argument("--cache", default=None, help="cache folder (default: $AUTORESEARCH_CACHE or "
                        "~/.cache/autoresearch)")
    parser.add_argument("--tokenizer-chars", type=int, default=None,
                        help=f"characters of text to train the tokenizer on (default {TOKENIZER_CHARS:,})")
    parser.add_argument("--retrain-tokenizer", action="store_true", help="train the tokenizer even if present")
    parser.add_argument("--evaluate", metavar="MODEL", default=None,
                        help="score a model exported by hand_over (.pt2) instead of preparing data")
    parser.add_argument("--metrics", metavar="OUT", default=None, help="with --evaluate: where to write the metrics")
    try:
        args = parser.parse_args(argv)
        if args.cache:
            os.environ["AUTORESEARCH_CACHE"] = str(Path(args.cache).expanduser().resolve())
        if args.evaluate:
            info = evaluate_file(args.evaluate, args.metrics)
            print(f"val_bpb: {info['val_bpb']:.6f} (evaluated in {info['eval_seconds']:.1f} s)", flush=True)
            return 0
        prepare(args.dataset, num_shards=args.num_shards, vocab_size=args.vocab_size,
                tokenizer_chars=args.tokenizer_chars, retrain_tokenizer=args.retrain_tokenizer,
                log=lambda msg: print(msg, flush=True))
    except PrepareError as e:
        print(f"prepare.py: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prepare.py: interrupted; run it again to resume where it stopped.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
