"""The CPU decode fast paths: oneDNN linears (infer/cpu_linear.py) and the batch KV cache that grows
in place (infer/scheduler.py RoomyLayer): same numbers as before, less work per step."""

from __future__ import annotations

import pytest
import torch

from mmtune.infer import cpu_linear, scheduler

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")


@needs_onednn
def test_onednn_linear_equals_f_linear_and_trains_as_before():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Linear(48, 16, bias=False))
    x = torch.randn(3, 5, 32)
    before = model(x).detach()
    assert cpu_linear.use_onednn(model) == 2 and all(type(m) is cpu_linear.OneDnnLinear for m in model)
    with torch.inference_mode():
        assert torch.allclose(model(x), before, atol=1e-5) and model(x[:0]).shape == (0, 5, 16)
    x.requires_grad_(True)  # autograd recording: F.linear, so gradients flow as in training
    model(x).sum().backward()
    assert x.grad is not None and model[0].weight.grad is not None
    assert cpu_linear.use_onednn(torch.nn.Linear(4, 4).to(torch.bfloat16)) == 0  # float32 only


def test_the_batch_cache_grows_in_place_with_the_values_a_concatenation_gives():
    from transformers.cache_utils import DynamicCache

    torch.manual_seed(0)
    cache = DynamicCache()
    for i in range(2):
        cache.update(torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4), i)
    expected = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    scheduler._make_room(cache)
    buffers = [layer.buffers[0].data_ptr() for layer in cache.layers]
    for _ in range(scheduler.ROOM + 3):  # past the first buffer's room: one copy into a larger one
        scheduler._make_room(cache)
        for i, layer in enumerate(cache.layers):
            k, v = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
            keys, values = cache.update(k, v, i)
            expected[i] = (torch.cat([expected[i][0], k], -2), torch.cat([expected[i][1], v], -2))
            assert torch.equal(keys, expected[i][0]) and torch.equal(values, expected[i][1])
            assert keys.data_ptr() == layer.buffers[0].data_ptr()
    assert all(layer.buffers[0].data_ptr() != p for layer, p in zip(cache.layers, buffers))
    assert cache.get_seq_length() == 5 + scheduler.ROOM + 3
    # rows leave (the scheduler replaces the tensors): the next step takes a fresh buffer of the kept rows
    mask = torch.ones(3, cache.get_seq_length(), dtype=torch.long)
    cache, mask = scheduler._select((cache, mask), [0, 2])
    scheduler._make_room(cache)
    keys, _ = cache.update(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4), 0)
    assert torch.equal(keys[:, :, :-1], expected[0][0][[0, 2]]) and keys.shape[0] == 2
