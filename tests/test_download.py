"""prepare.py downloads against a loopback Hugging Face stand-in: resume, retry, verify, offline error."""

from __future__ import annotations

import os
import socket

import pytest
from prepare_helpers import (
    HFServer,
    load_prepare,
    make_workspace,
    parquet_bytes,
    run_prepare_cli,
    shard_texts,
    stdlib_texts,
)

CLIMBMIX = "karpathy/climbmix-400b-shuffle"
TRAIN0, TRAIN1, VAL = "shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"


@pytest.fixture(scope="module")
def shards() -> dict[str, bytes]:
    """Two training shards and the pinned validation shard, made of real text."""
    texts = stdlib_texts(900_000)
    n = len(texts) // 3
    return {TRAIN0: parquet_bytes(texts[:n]), TRAIN1: parquet_bytes(texts[n:2 * n]), VAL: parquet_bytes(texts[2 * n:])}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTORESEARCH_DOWNLOAD_BACKOFF", "0.01")
    monkeypatch.setenv("AUTORESEARCH_DOWNLOAD_RETRIES", "3")
    return tmp_path


@pytest.fixture
def prep(env, monkeypatch):
    return load_prepare(make_workspace(env / "ws"), monkeypatch)


def _fetch(prep, server, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_HF_BASE", server.base)
    logs: list[str] = []
    src = prep.resolve_dataset("climbmix")
    prep.fetch_shards(src, prep.dataset_dir(src), 2, log=logs.append)
    return prep.dataset_dir(src), logs


def _assert_complete(target, shards):
    assert (target / "train" / TRAIN0).read_bytes() == shards[TRAIN0]
    assert (target / "train" / TRAIN1).read_bytes() == shards[TRAIN1]
    assert (target / "val" / VAL).read_bytes() == shards[VAL]
    assert not list(target.rglob("*.part")) and not list(target.rglob("*.tmp"))


def test_interrupted_download_resumes_with_range(prep, shards, monkeypatch):
    with HFServer(CLIMBMIX, shards) as server:
        server.faults[TRAIN0] = ["drop"]
        target, logs = _fetch(prep, server, monkeypatch)
    _assert_complete(target, shards)
    first, second = server.requests_for(TRAIN0)
    assert first is None
    assert second == f"bytes={len(shards[TRAIN0]) // 2}-"  # continued where the connection broke
    assert server.requests_for(TRAIN1) == [None] and server.requests_for(VAL) == [None]
    assert sum("shard_" in m and " MB in " in m for m in logs) == 3


def test_part_left_by_an_earlier_run_is_resumed(prep, shards, monkeypatch):
    src = prep.resolve_dataset("climbmix")
    part = prep.dataset_dir(src) / "val" / (VAL + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(shards[VAL][:1000])
    with HFServer(CLIMBMIX, shards) as server:
        target, _ = _fetch(prep, server, monkeypatch)
    _assert_complete(target, shards)
    assert server.requests_for(VAL) == ["bytes=1000-"]


def test_http_500_is_retried(prep, shards, monkeypatch):
    with HFServer(CLIMBMIX, shards) as server:
        server.faults[VAL] = ["500", "500"]
        target, _ = _fetch(prep, server, monkeypatch)
    _assert_complete(target, shards)
    assert len(server.requests_for(VAL)) == 3


def test_persistent_500_gives_up_with_one_sentence(prep, shards, monkeypatch):
    with HFServer(CLIMBMIX, shards) as server:
        server.faults[VAL] = ["500"] * 10
        with pytest.raises(prep.PrepareError, match=r"downloading shard_06542.parquet .* failed 4 times \(last: HTTP 500\)"):
            _fetch(prep, server, monkeypatch)
    assert len(server.requests_for(VAL)) == 4


def test_corrupt_shard_is_detected_and_fetched_again(prep, shards, monkeypatch):
    with HFServer(CLIMBMIX, shards) as server:
        server.faults[TRAIN1] = ["corrupt"]
        target, _ = _fetch(prep, server, monkeypatch)
    _assert_complete(target, shards)
    assert server.requests_for(TRAIN1) == [None, None]  # refetched from the start, not resumed


def test_damaged_shard_in_cache_is_replaced(prep, shards, monkeypatch):
    with HFServer(CLIMBMIX, shards) as server:
        target, _ = _fetch(prep, server, monkeypatch)
        (target / "train" / TRAIN0).write_bytes(shards[TRAIN0][:-100])  # truncated: footer gone
        _, logs = _fetch(prep, server, monkeypatch)
    _assert_complete(target, shards)
    assert any("damaged" in m for m in logs)
    assert len(server.requests_for(TRAIN0)) == 2 and len(server.requests_for(TRAIN1)) == 1


def test_missing_file_is_not_retried(prep, shards, monkeypatch):
    with HFServer(CLIMBMIX, {k: v for k, v in shards.items() if k != VAL}) as server:
        with pytest.raises(prep.PrepareError, match="answered HTTP 404 for shard_06542.parquet"):
            _fetch(prep, server, monkeypatch)
    assert len(server.requests_for(VAL)) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_one_sentence_exit_1_no_files(env):
    ws = make_workspace(env / "ws")
    port = _closed_port()
    proc = run_prepare_cli(ws, "--dataset", "climbmix", "--num-shards", "3",
                           env={**os.environ, "AUTORESEARCH_HF_BASE": f"http://127.0.0.1:{port}"})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"prepare.py: cannot reach 127.0.0.1:{port}")
    assert "use --dataset pystdlib for an offline corpus" in lines[0]
    assert not [p for p in (env / "cache").rglob("*") if p.is_file()]


def test_cli_downloads_and_trains_tokenizer_then_reuses(env, shards):
    ws = make_workspace(env / "ws", DATASET="climbmix")
    with HFServer(CLIMBMIX, shards) as server:
        run_env = {**os.environ, "AUTORESEARCH_HF_BASE": server.base}
        proc = run_prepare_cli(ws, "--num-shards", "2", "--vocab-size", "300", env=run_env)
        assert proc.returncode == 0, proc.stderr
        assert "downloading 3 of 3 shards" in proc.stdout and "tokenizer: 300 tokens" in proc.stdout
        assert "ready: 2 train + 1 val shards" in proc.stdout
        again = run_prepare_cli(ws, "--num-shards", "2", "--vocab-size", "300", env=run_env)
        assert again.returncode == 0, again.stderr
    target = env / "cache" / "climbmix"
    _assert_complete(target, shards)
    assert {p.name for p in (target / "tokenizer").iterdir()} == {"tokenizer.pkl", "token_bytes.pt", "meta.json"}
    assert "all 3 shards already" in again.stdout and "already trained" in again.stdout
    assert len(server.requests) == 3  # the second run downloaded nothing


def test_tinystories_text_files_become_parquet_shards(prep, env, monkeypatch):
    train_docs = stdlib_texts(400_000)
    val_docs = stdlib_texts(60_000, offset=len(train_docs))
    files = {"TinyStoriesV2-GPT4-train.txt": "\n<|endoftext|>\n".join(train_docs).encode(),
             "TinyStoriesV2-GPT4-valid.txt": "<|endoftext|>".join(val_docs).encode()}
    with HFServer("roneneldan/TinyStories", files) as server:
        server.faults["TinyStoriesV2-GPT4-train.txt"] = ["drop"]
        monkeypatch.setenv("AUTORESEARCH_HF_BASE", server.base)
        info = prep.prepare("tinystories", vocab_size=300, log=lambda m: None)
    target = env / "cache" / "tinystories"
    assert info["dir"] == str(target)
    assert [d for p in sorted((target / "train").glob("*.parquet")) for d in shard_texts(p)] == \
        [d.strip() for d in train_docs if d.strip()]
    assert [d for p in (target / "val").glob("*.parquet") for d in shard_texts(p)] == \
        [d.strip() for d in val_docs if d.strip()]
    assert len(val_docs) > 10 and not set(val_docs) & set(train_docs)
    assert not (target / "raw").exists()  # the raw text is removed once converted
    assert server.requests_for("TinyStoriesV2-GPT4-train.txt")[1].startswith("bytes=")
