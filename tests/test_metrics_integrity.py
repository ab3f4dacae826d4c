"""The engine refuses metrics that were evaluated with other constants than the workspace's constants.py."""

import json

from core.training import expected_eval_constants, parse_metrics


def test_constants_mismatch_is_refused(tmp_path):
    (tmp_path / "constants.py").write_text(
        'MAX_SEQ_LEN = 256\nEVAL_TOKENS = 4 * 16384\nVOCAB_SIZE = 2048\nDATASET = "pystdlib"\n')
    expected = expected_eval_constants(tmp_path)
    assert expected == {"eval_tokens": 65536, "max_seq_len": 256, "vocab_size": 2048, "dataset": "pystdlib"}
    good = {"val_bpb": 1.5, "peak_vram_mb": 10.0, "eval_tokens": 65536, "max_seq_len": 256,
            "vocab_size": 2048, "dataset": "pystdlib"}
    assert parse_metrics(json.dumps(good), expected)[1] is None
    cheat = dict(good, eval_tokens=256)
    reason = parse_metrics(json.dumps(cheat), expected)[1]
    assert reason and "eval_tokens" in reason and "constants.py" in reason


def test_the_sandbox_grants_the_data_folders_prepare_py_reads(tmp_path, monkeypatch):
    """core.training computes the dataset folder the trainer may read; it must be prepare.py's."""
    from prepare_helpers import load_prepare, make_workspace

    from core.training import cache_root, dataset_dir

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "My Corpus"
    folder.mkdir()
    prep = load_prepare(make_workspace(tmp_path / "ws"), monkeypatch)
    for name in ("climbmix", "pystdlib", str(folder)):
        assert dataset_dir(name, cache_root()) == prep.dataset_dir(name).resolve()
