"""Rendered rows are cached on disk: a second build with the same inputs reads them back (and repeats
the warnings); any change to the data bytes or a rendering setting is a miss."""

from __future__ import annotations

import pytest

from mmtune.config import resolve_config
from mmtune.models.loader import load_tokenizer
from mmtune.train import dataset, token_cache
from mmtune.train.dataset import build_datasets


@pytest.fixture()
def tokenizer(tiny_llama):
    return load_tokenizer(str(tiny_llama))


def test_second_build_is_a_cache_hit_with_the_same_rows_and_warnings(tiny_llama, tokenizer, data_file, tmp_path,
                                                                     monkeypatch):
    data = data_file([("hi", "word " * 100), ("hello", "fine"), ("a", "b")])
    cfg = resolve_config({"model": str(tiny_llama), "data": [str(data)], "max_length": 48, "val_ratio": 0.34})
    first: list[str] = []
    built = build_datasets(cfg, tokenizer, first.append, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1 and "truncated" in first[0]

    def no_render(*a, **k):
        raise AssertionError("rendered again despite a cache entry")

    monkeypatch.setattr(dataset, "render_datasets", no_render)
    again: list[str] = []
    hit = build_datasets(cfg, tokenizer, again.append, cache_dir=tmp_path / "c")
    assert (hit.train.rows, hit.val.rows, hit.stats) == (built.train.rows, built.val.rows, built.stats) and again == first
    monkeypatch.undo()

    key = token_cache.cache_key(cfg, tokenizer)
    data.write_text(data.read_text() + data.read_text())  # same name, new bytes
    assert token_cache.cache_key(cfg, tokenizer) != key
    data.write_text(data.read_text()[: len(data.read_text()) // 2])
    assert token_cache.cache_key(cfg, tokenizer) == key  # content, not names or times
    for change in ({"max_length": 64}, {"train_on": "all"}, {"seed": 1}):
        other = resolve_config({**cfg.to_dict(), **change})
        assert token_cache.cache_key(other, tokenizer) != key, change


def test_no_cache_when_switched_off(tiny_llama, tokenizer, data_file, tmp_path):
    cfg = resolve_config({"model": str(tiny_llama), "data": [str(data_file([("q", "a")]))], "data_cache": False})
    build_datasets(cfg, tokenizer, print, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_prune_removes_least_recently_used_entries_first(tmp_path, monkeypatch):
    import os
    import time

    from mmtune.train.token_cache import max_bytes, prune

    now = time.time()
    paths = []
    for i, age in enumerate((300, 200, 100, 0)):  # entry 0 is the least recently used
        p = tmp_path / f"k{i}.npz"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - age, now - age))
        paths.append(p)
    stale = tmp_path / "abc.tmp.npz"
    stale.write_bytes(b"x")
    os.utime(stale, (now - 7200, now - 7200))
    fresh_tmp = tmp_path / "def.tmp.npz"  # a run writing right now
    fresh_tmp.write_bytes(b"x")
    os.utime(paths[0], (now, now))  # ...but entry 0 was just hit, so entry 1 goes first
    removed = prune(tmp_path, keep=paths[3], budget=2500)
    assert set(removed) == {paths[1], paths[2], stale}
    assert paths[0].exists() and paths[3].exists() and fresh_tmp.exists()
    assert prune(tmp_path, keep=paths[3], budget=0) == [paths[0]]  # the kept entry stays even over budget
    monkeypatch.setenv("MMTUNE_CACHE_MAX_GB", "0.5")
    assert max_bytes() == 2**29
