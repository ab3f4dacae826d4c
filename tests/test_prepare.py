"""prepare.py: tokenizer, token_bytes, best-fit dataloader, offline and local-folder datasets, CLI errors."""

from __future__ import annotations

import array
import json
import random
import subprocess
import sys

import pytest
import torch
from prepare_helpers import REPO, load_prepare, make_workspace, prepared_cache, shard_texts, stdlib_texts


@pytest.fixture
def prep(tmp_path, tmp_path_factory, monkeypatch):
    """prepare.py loaded from a test workspace whose cache holds pystdlib with a 512-token tokenizer."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(prepared_cache(tmp_path_factory)))
    return load_prepare(make_workspace(tmp_path / "ws"), monkeypatch)


# --- tokenizer ----------------------------------------------------------------------------------------

SAMPLES = ["", "hello world", "def f(x):\n    return x ** 2  # 12345678\n", "naïve café, 日本語, 🙂 emoji",
           "  leading spaces\n\n\ttabs\r\n", "<|bos|> looks special but is text"]


def test_tokenizer_round_trip_and_specials(prep):
    tok = prep.Tokenizer.from_directory()
    assert tok.get_vocab_size() == 512
    bos = tok.get_bos_token_id()
    assert bos == 512 - 4  # the first of the 4 reserved special tokens, after the merges
    for text in SAMPLES:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert bos not in ids  # special-token text in a document stays ordinary text
        assert all(0 <= i < bos for i in ids)
        assert tok.encode(text, prepend=bos) == [bos] + ids
        assert tok.encode(text, prepend="<|bos|>") == [bos] + ids
    batch = tok.encode(SAMPLES, prepend=bos)
    assert batch == [[bos] + tok.encode(t) for t in SAMPLES]
    # Numbers split into groups of at most two digits (\p{N}{1,2}).
    digits = [tok.decode([i]) for i in tok.encode("1234567")]
    assert "".join(digits) == "1234567" and max(len(d) for d in digits) <= 2


def test_token_bytes_count_utf8_bytes(prep):
    tok = prep.Tokenizer.from_directory()
    tb = prep.get_token_bytes("cpu")
    assert tb.dtype == torch.long and tb.shape == (512,)
    assert tb[-4:].tolist() == [0, 0, 0, 0]
    assert torch.equal(tb, tok.token_bytes())
    assert all(tb[i].item() == len(tok.enc.decode_single_token_bytes(i)) for i in range(508))
    for text in SAMPLES:
        ids = tok.encode(text, prepend=tok.get_bos_token_id())
        assert int(tb[torch.tensor(ids, dtype=torch.long)].sum()) == len(text.encode("utf-8"))
    meta = json.loads((prep.tokenizer_dir() / "meta.json").read_text())
    assert meta["vocab_size"] == 512 and meta["dataset"] == "pystdlib" and 0 < meta["chars_trained"] <= 3_000_000 + 10_000


def test_missing_or_mismatched_tokenizer_is_one_sentence(tmp_path, tmp_path_factory, monkeypatch):
    cache = prepared_cache(tmp_path_factory)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "empty-cache"))
    prep = load_prepare(make_workspace(tmp_path / "ws"), monkeypatch)
    with pytest.raises(prep.PrepareError, match=r"no tokenizer in .*prepare\.py"):
        prep.Tokenizer.from_directory()
    with pytest.raises(prep.PrepareError, match="no train data for dataset 'pystdlib'"):
        prep.make_dataloader(None, 2, 8, "train")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    prep = load_prepare(make_workspace(tmp_path / "ws2", VOCAB_SIZE=1024), monkeypatch)
    with pytest.raises(prep.PrepareError, match="has 512 tokens but VOCAB_SIZE is 1024"):
        prep.Tokenizer.from_directory()
    assert prep.Tokenizer.from_directory(cache / "pystdlib" / "tokenizer").get_vocab_size() == 512


# --- best-fit packing ----------------------------------------------------------------------------------

def test_best_fit_packer_picks_largest_fitting_then_crops_shortest(prep):
    filler = [100] + [9] * 19  # longer than any row: used only when cropped as the shortest
    docs = iter([[100, 1, 1, 1, 1], [100, 2, 2], [100, 3, 3, 3, 3, 3, 3, 3, 3, 3], [100, 4],
                 [100, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5], [100, 6, 6, 6]] + [filler] * 10)
    packer = prep.BestFitPacker(buffer_size=4)
    row: list[int] = []
    packer.fill_row(row, 8, lambda: [next(docs)])
    # Buffer holds lengths 5, 3, 10, 2: the largest fitting 8 is 5, then 3 fits exactly.
    assert row == [100, 1, 1, 1, 1, 100, 2, 2]
    row = []
    packer.fill_row(row, 8, lambda: [next(docs)])
    # Buffer 10, 2, 12, 4: 4 then 2 fit (6 tokens, refills are fillers); 2 left, nothing fits: crop the
    # shortest (10).
    assert row == [100, 6, 6, 6, 100, 4, 100, 3]


def test_best_fit_packer_random_docs_no_padding_whole_docs(prep):
    rng = random.Random(0)
    docs = [[100] + [rng.randrange(100) for _ in range(rng.randrange(0, 60))] for _ in range(3000)]
    source = iter(docs)
    packer = prep.BestFitPacker(buffer_size=50)
    width = 41
    starts = {tuple(d): i for i, d in enumerate(docs)}
    used = set()
    for _ in range(200):
        row = array.array("q")
        packer.fill_row(row, width, lambda: [next(source) for _ in range(10)])
        assert len(row) == width and row[0] == 100
        segments = _segments(list(row), 100)
        for k, seg in enumerate(segments):
            if k < len(segments) - 1:
                assert tuple(seg) in starts  # whole documents ...
                used.add(starts[tuple(seg)])
            else:  # ... except the last one, which may be the cropped shortest one
                assert any(d[:len(seg)] == seg for d in docs)


def _segments(row: list[int], bos: int) -> list[list[int]]:
    segs: list[list[int]] = []
    for t in row:
        if t == bos:
            segs.append([t])
        else:
            segs[-1].append(t)
    return segs


# --- dataloader ----------------------------------------------------------------------------------------

def test_dataloader_rows_start_with_bos_and_hold_real_documents(prep):
    tok = prep.Tokenizer.from_directory()
    bos = tok.get_bos_token_id()
    val_docs = [d for f in prep.split_files("val") for d in shard_texts(f)]
    tokenized = tok.encode(val_docs, prepend=bos)
    B, T = 8, 64
    loader = prep.make_dataloader(tok, B, T, "val")
    try:
        for _ in range(6):
            x, y, epoch = next(loader)
            assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
            assert torch.equal(x[:, 1:], y[:, :-1])
            assert (x[:, 0] == bos).all()
            assert int(x.min()) >= 0 and int(x.max()) < tok.get_vocab_size()
            for r in range(B):
                row = x[r].tolist() + [y[r, -1].item()]
                segs = _segments(row, bos)
                for k, seg in enumerate(segs):
                    if k < len(segs) - 1:
                        assert seg in tokenized
                    else:
                        assert any(doc[:len(seg)] == seg for doc in tokenized)
            assert epoch >= 1
        # The validation split is small: after a few batches the loader has passed over it again.
        assert epoch > 1
    finally:
        loader.close()


def test_dataloader_is_deterministic(prep):
    tok = prep.Tokenizer.from_directory()
    first = [prep.make_dataloader(tok, 4, 32, "val") for _ in range(2)]
    try:
        for _ in range(3):
            (x1, y1, e1), (x2, y2, e2) = next(first[0]), next(first[1])
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and e1 == e2
    finally:
        for loader in first:
            loader.close()


def test_dataloader_train_split_streams(prep, monkeypatch):
    monkeypatch.setattr(prep, "DOC_BUFFER", 64)  # pystdlib documents are whole modules: keep the test quick
    tok = prep.Tokenizer.from_directory()
    loader = prep.make_dataloader(tok, 16, 128, "train")
    try:
        batches = [next(loader) for _ in range(5)]
    finally:
        loader.close()
    assert all((x[:, 0] == tok.get_bos_token_id()).all() for x, _, _ in batches)
    assert not torch.equal(batches[0][0], batches[1][0])


# --- datasets ------------------------------------------------------------------------------------------

def test_pystdlib_split_is_deterministic(tmp_path, monkeypatch):
    prep = load_prepare(make_workspace(tmp_path / "ws"), monkeypatch)
    contents = []
    for run in ("a", "b"):
        target = tmp_path / run / "pystdlib"
        prep.build_pystdlib(target, log=lambda m: None)
        contents.append({f"{split}/{p.name}": shard_texts(p) for split in ("train", "val")
                         for p in sorted((target / split).glob("*.parquet"))})
    assert contents[0] == contents[1]
    train = [d for k, v in contents[0].items() if k.startswith("train/") for d in v]
    val = [d for k, v in contents[0].items() if k.startswith("val/") for d in v]
    assert len(val) > 20 and len(train) > 15 * len(val)  # ~5 % validation
    assert not set(train) & set(val)
    assert any("import" in d for d in val)


def test_local_folder_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    ws = make_workspace(tmp_path / "ws")
    prep = load_prepare(ws, monkeypatch)
    folder = tmp_path / "My Corpus"
    folder.mkdir()
    texts = stdlib_texts(1_200_000)
    third = len(texts) // 3
    (folder / "a.txt").write_text("<|endoftext|>".join(texts[:third]))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": texts[third:2 * third]}), folder / "b.parquet")
    (folder / "c.txt").write_text("<|endoftext|>".join(texts[2 * third:]))
    (folder / ".hidden.txt").write_text("ignored")
    logs: list[str] = []
    info = prep.prepare(str(folder), vocab_size=300, log=logs.append)
    target = prep.dataset_dir(str(folder))
    assert target.parent == tmp_path / "cache" and target.name.startswith("local-My-Corpus-")
    assert info["dir"] == str(target)
    train = [d for p in sorted((target / "train").glob("*.parquet")) for d in shard_texts(p)]
    val = [d for p in sorted((target / "val").glob("*.parquet")) for d in shard_texts(p)]
    assert val == [t.strip() for t in texts[2 * third:] if t.strip()]  # the last file is validation
    assert train == [t.strip() for t in texts[:third] if t.strip()] + texts[third:2 * third]
    assert json.loads((target / "tokenizer" / "meta.json").read_text())["vocab_size"] == 300
    # Second run: nothing to do.
    logs.clear()
    prep.prepare(str(folder), vocab_size=300, log=logs.append)
    assert any("already converted" in m for m in logs) and any("already trained" in m for m in logs)
    # A single file: ~5 % of its documents (by hash) become validation.
    single = tmp_path / "single"
    single.mkdir()
    (single / "all.txt").write_text("<|endoftext|>".join(texts))
    prep.prepare(str(single), vocab_size=300, log=lambda m: None)
    t2 = prep.dataset_dir(str(single))
    val2 = [d for p in (t2 / "val").glob("*.parquet") for d in shard_texts(p)]
    train2 = [d for p in (t2 / "train").glob("*.parquet") for d in shard_texts(p)]
    assert 0 < len(val2) < len(train2) / 8 and len(val2) + len(train2) == len([t for t in texts if t.strip()])


def test_txt_documents_cut_long_text_without_separators(tmp_path, monkeypatch):
    prep = load_prepare(make_workspace(tmp_path / "ws"), monkeypatch)
    line = "a line of a very long book without any document separator\n"
    text = line * 20_000  # 1.2 M characters
    (tmp_path / "book.txt").write_text(text)
    docs = list(prep._txt_documents(tmp_path / "book.txt", chunk_chars=100_000))
    assert len(docs) > 10 and max(len(d) for d in docs) <= 100_000
    assert "".join(d + "\n" for d in docs) == text


# --- command line ----------------------------------------------------------------------------------------

CLI_ERRORS = [
    (["--dataset", "imagenet"], "unknown dataset 'imagenet': use climbmix"),
    (["--dataset", "./no-such-folder"], "does not exist"),
    (["--dataset", "{empty}"], "holds no .parquet or .txt files"),
    (["--num-shards", "0", "--dataset", "climbmix"], "--num-shards must be between 1 and 6542"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]


def _check_one_sentence(rc, stderr, message, cache):
    assert rc == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare.py: ") and message in lines[0], stderr
    assert not [p for p in cache.rglob("*") if p.is_file()]


@pytest.mark.parametrize("args, message", CLI_ERRORS)
def test_cli_errors_are_one_sentence(tmp_path, monkeypatch, capsys, args, message):
    prep = load_prepare(make_workspace(tmp_path / "ws"), monkeypatch)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "ws")
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    rc = prep.main([*args, "--cache", str(tmp_path / "cache")])
    _check_one_sentence(rc, capsys.readouterr().err, message, tmp_path / "cache")


def test_cli_help_and_repo_module_api(tmp_path, monkeypatch, capsys):
    prep = load_prepare(make_workspace(tmp_path / "ws"), monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        prep.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--dataset" in out and "pystdlib" in out and "--num-shards" in out
    # The real prepare.py imports with the real constants.py and exposes the runtime API train.py uses.
    code = ("import prepare as p; names = ['MAX_SEQ_LEN','TIME_BUDGET','EVAL_TOKENS','VOCAB_SIZE','DATASET',"
            "'Tokenizer','get_token_bytes','make_dataloader','hand_over','evaluate_bpb','evaluate_file','peak_memory_mb',"
            "'prepare','PrepareError']; missing = [n for n in names if not hasattr(p, n)]; print(missing); "
            "import sys; print(sorted(m for m in sys.modules if m == 'core' or m.startswith('core.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "[]"]
