"""The two private Trainer methods MMTuneTrainer still overrides (train/sft.py), pinned: each exists
with the signature the override takes, the Trainer calls it where the override relies on, and the
override does what it is for. A transformers upgrade that moves them fails here, loudly, instead of
silently skipping the override. (Token counting of packed batches needs no override any more: the
public `include_num_input_tokens_seen="all"` counts every id of a padding-free batch.)"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from transformers import Trainer, TrainerControl

from mmtune.train.dataset import Item, RowDataset
from mmtune.train.sft import MMTuneTrainer


def test_run_epoch_is_called_once_per_epoch_and_a_stop_ends_the_loop():
    loop = inspect.getsource(Trainer._inner_training_loop)
    call = loop.index("self._run_epoch(")
    assert "for epoch in range(epochs_trained, num_train_epochs):" in loop[:call]
    assert "if self.control.should_training_stop:\n                break" in loop[call:]
    params = list(inspect.signature(Trainer._run_epoch).parameters)
    assert params[:4] == ["self", "model", "epoch", "train_dataloader"]


def test_a_run_resumed_at_its_last_step_runs_no_epoch():
    """The guard: global_step already at max_steps -> no step (the Trainer would run one more)."""
    fake = SimpleNamespace(state=SimpleNamespace(max_steps=4, global_step=4), control=TrainerControl())
    assert MMTuneTrainer._run_epoch(fake, model=None, epoch=0, train_dataloader=None) is None
    assert fake.control.should_training_stop


def test_the_train_sampler_hook_is_the_dataloaders_and_takes_lengths_from_the_rows():
    assert list(inspect.signature(Trainer._get_train_sampler).parameters) == ["self", "train_dataset"]
    assert "sampler_fn=self._get_train_sampler" in inspect.getsource(Trainer.get_train_dataloader)

    class Unread(RowDataset):
        def __getitem__(self, i):
            raise AssertionError("the sampler read a row (a media row would decode its pixels)")

    rows = Unread([Item([1] * n, [1] * n) for n in (3, 9, 5, 7)])
    args = SimpleNamespace(train_sampling_strategy="group_by_length", train_batch_size=2,
                           gradient_accumulation_steps=1)
    sampler = MMTuneTrainer._get_train_sampler(SimpleNamespace(args=args, train_dataset=rows))
    assert sampler.lengths == [3, 9, 5, 7] and sorted(sampler) == [0, 1, 2, 3]
