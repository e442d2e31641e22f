from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from modeconn_unlearn.data import (
    PadCollator,
    UnlearnBatch,
    UnlearnDataset,
    as_dataset,
    as_loader,
    collate_unlearn,
    forget_retain_split,
    move_to_device,
    stack_collate,
    unlearn_loader,
    unpack_batch,
)
from modeconn_unlearn.errors import ModeConnError


class PairList(Dataset):
    """A dataset without `targets`, returning (x, int label) like many user datasets."""

    def __init__(self, n: int) -> None:
        self.items = [(torch.full((2,), float(i)), i % 3) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def small(n: int = 20) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n) % 4)


# --------------------------------------------------------------------------- splits
def test_random_split_sizes_disjoint_and_reproducible(digits):
    train, _ = digits
    retain, forget = forget_retain_split(train, forget_ratio=0.1, seed=3)
    assert isinstance(retain, Subset) and isinstance(forget, Subset)
    assert len(forget) == 140 and len(retain) == 1260
    assert set(retain.indices).isdisjoint(forget.indices)
    assert sorted(retain.indices + forget.indices) == list(range(1400))
    again_retain, again_forget = forget_retain_split(train, forget_ratio=0.1, seed=3)
    assert again_forget.indices == forget.indices and again_retain.indices == retain.indices
    _, other = forget_retain_split(train, forget_ratio=0.1, seed=4)
    assert other.indices != forget.indices


def test_random_split_does_not_touch_global_rng(digits):
    train, _ = digits
    state = torch.get_rng_state()
    forget_retain_split(train, forget_ratio=0.2, seed=0)
    assert torch.equal(state, torch.get_rng_state())


def test_class_split_takes_exactly_that_class(digits):
    train, _ = digits
    labels = train.tensors[1]
    retain, forget = forget_retain_split(train, forget_class=7)
    assert sorted(forget.indices) == torch.nonzero(labels == 7).flatten().tolist()
    assert all(int(labels[i]) != 7 for i in retain.indices)
    assert len(retain) + len(forget) == len(train)


def test_random_class_is_reproducible_and_depends_on_seed(digits):
    train, _ = digits
    labels = train.tensors[1]
    picked = []
    for seed in range(8):
        _, forget = forget_retain_split(train, forget_class="random", seed=seed)
        classes = set(labels[forget.indices].tolist())
        assert len(classes) == 1
        _, again = forget_retain_split(train, forget_class="random", seed=seed)
        assert again.indices == forget.indices
        picked.append(classes.pop())
    assert len(set(picked)) > 1


def test_class_split_on_dataset_without_targets_and_on_subsets():
    data = PairList(12)
    retain, forget = forget_retain_split(data, forget_class=2)
    assert forget.indices == [2, 5, 8, 11]
    assert retain.indices == [0, 1, 3, 4, 6, 7, 9, 10]
    # A Subset of a Subset: labels are looked up through the index chain.
    inner = Subset(small(20), list(range(10, 20)))  # labels 2, 3, 0, 1, 2, 3, 0, 1, 2, 3
    _, forget = forget_retain_split(inner, forget_class=0)
    assert [int(inner[i][1]) for i in forget.indices] == [0, 0]
    assert forget.indices == [2, 6]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"forget_ratio": 0.1, "forget_class": 1}, "exactly one"),
        ({"forget_ratio": 0.0}, r"\(0, 1\)"),
        ({"forget_ratio": 1.0}, r"\(0, 1\)"),
        ({"forget_ratio": 10}, r"not a percentage; got 10: did you mean 0\.1\?"),
        ({"forget_ratio": 2.5}, r"did you mean 0\.025\?"),
        ({"forget_ratio": float("nan")}, r"\(0, 1\)"),
        ({"forget_ratio": 0.01}, "forget set empty"),
        ({"forget_ratio": 0.99}, "retain set empty"),
        ({"forget_class": 9}, "classes present: \\[0, 1, 2, 3\\]"),
        ({"forget_class": "all"}, "'random'"),
        ({"forget_class": True}, "int or 'random'"),
    ],
)
def test_split_errors(kwargs, message):
    with pytest.raises(ModeConnError, match=message):
        forget_retain_split(small(20), **kwargs)


def test_class_split_refuses_single_class_dataset():
    data = TensorDataset(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ModeConnError, match="retain set would be empty"):
        forget_retain_split(data, forget_class=0)


# --------------------------------------------------------------------------- dataset view
def test_unlearn_dataset_items_and_flags():
    retain, forget = small(6), small(3)
    view = UnlearnDataset(retain, forget)
    assert len(view) == 9 and view.num_retain == 6 and view.num_forget == 3
    x, y, flag = view[0]
    assert torch.equal(x, retain[0][0]) and int(y) == int(retain[0][1]) and flag is False
    x, y, flag = view[7]
    assert torch.equal(x, forget[1][0]) and flag is True
    assert view[-1][2] is True
    with pytest.raises(IndexError):
        view[9]


def test_retain_ratio_subsample_is_reproducible():
    retain, forget = small(20), small(2)
    a = UnlearnDataset(retain, forget, retain_ratio=0.25, seed=1)
    b = UnlearnDataset(retain, forget, retain_ratio=0.25, seed=1)
    c = UnlearnDataset(retain, forget, retain_ratio=0.25, seed=2)
    assert a.num_retain == 5 and len(a) == 7
    assert a.retain_indices == b.retain_indices
    assert a.retain_indices != c.retain_indices
    assert len(set(a.retain_indices)) == 5
    assert UnlearnDataset(retain, forget).retain_indices == list(range(20))


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, float("inf")])
def test_retain_ratio_out_of_range(ratio):
    with pytest.raises(ModeConnError, match="retain_ratio"):
        UnlearnDataset(small(4), small(2), retain_ratio=ratio)


def test_retain_ratio_keeping_nothing_and_empty_sets_are_errors():
    with pytest.raises(ModeConnError, match="keeps no sample"):
        UnlearnDataset(small(4), small(2), retain_ratio=0.1)
    with pytest.raises(ModeConnError, match="both the retain and the forget set are empty"):
        UnlearnDataset(None, Subset(small(2), []))


def test_one_sided_views():
    only_forget = UnlearnDataset(None, small(3))
    assert len(only_forget) == 3 and all(only_forget[i][2] for i in range(3))
    only_retain = UnlearnDataset(small(3), None)
    assert not any(only_retain[i][2] for i in range(3))


# --------------------------------------------------------------------------- loaders
def test_collate_gives_unlearn_batch():
    batch = collate_unlearn([(torch.zeros(2), 3, False), (torch.ones(2), torch.tensor(1), True)])
    assert isinstance(batch, UnlearnBatch)
    assert batch.inputs.shape == (2, 2)
    assert batch.targets.tolist() == [3, 1]
    assert batch.is_forget.dtype == torch.bool and batch.is_forget.tolist() == [False, True]


def test_unlearn_loader_covers_every_sample_once_per_epoch():
    retain, forget = small(10), TensorDataset(100 + torch.arange(4.0).unsqueeze(1), torch.zeros(4))
    loader = unlearn_loader(retain, forget, batch_size=3, seed=0)
    for _ in range(2):
        seen = []
        for batch in loader:
            assert isinstance(batch, UnlearnBatch)
            assert torch.equal(batch.is_forget, batch.inputs[:, 0] >= 100)
            seen += batch.inputs[:, 0].tolist()
        assert sorted(seen) == [*range(10), 100, 101, 102, 103]


def test_unlearn_loader_is_deterministic_given_seed():
    def epochs(seed: int) -> list[list[float]]:
        loader = unlearn_loader(small(16), small(4), batch_size=4, seed=seed)
        return [torch.cat([b.inputs[:, 0] for b in loader]).tolist() for _ in range(2)]

    torch.manual_seed(123)
    first = epochs(5)
    torch.manual_seed(999)  # the global RNG plays no part
    assert epochs(5) == first
    assert first[0] != first[1]  # a new order each epoch
    assert epochs(6) != first


def test_unlearn_loader_accepts_loaders_and_rejects_bad_batch_size():
    retain = DataLoader(small(8), batch_size=5)
    loader = unlearn_loader(retain, small(2), batch_size=10, shuffle=False)
    (batch,) = list(loader)
    assert batch.inputs.shape == (10, 1)
    assert batch.is_forget.tolist() == [False] * 8 + [True] * 2
    with pytest.raises(ModeConnError, match="batch_size"):
        unlearn_loader(small(8), small(2), batch_size=0)


# --------------------------------------------------------------------------- helpers
def test_as_dataset_and_as_loader():
    data = small(300)
    assert as_dataset(DataLoader(data)) is data
    assert len(as_dataset(None)) == 0
    with pytest.raises(ModeConnError, match="map-style"):
        as_dataset(42)
    loader = as_loader(data)
    assert loader.batch_size == 256 and len(loader) == 2
    assert as_loader(loader) is loader
    with pytest.raises(TypeError, match="DataLoader or a map-style Dataset"):
        as_loader(3.0)
    with pytest.raises(ModeConnError, match="'retain' is empty"):
        as_loader(small(0), name="'retain'")


def test_tensors_of_whole_columns_are_refused_with_the_fix():
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    for columns in ((x, y), [x, y]):
        with pytest.raises(ModeConnError, match=r"TensorDataset\(X, Y\)"):
            forget_retain_split(columns, forget_ratio=0.1)
        with pytest.raises(ModeConnError, match=r"'test' is a .* shapes \(20, 3\), \(20,\)"):
            as_loader(columns, name="'test'")
    # A list of samples that share shape and dtype is a dataset, as before.
    assert len(as_loader([torch.zeros(3), torch.ones(3)]).dataset) == 2


def test_iterable_dataset_is_refused():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.zeros(1), 0

    with pytest.raises(ModeConnError, match="IterableDataset"):
        as_dataset(Stream())


def test_unpack_batch_is_a_deprecated_alias_and_move():
    with pytest.warns(DeprecationWarning, match="task.split"):
        _, y = unpack_batch(UnlearnBatch(torch.zeros(1), torch.ones(1), torch.ones(1).bool()))
    assert float(y) == 1.0
    with pytest.raises(ModeConnError, match="inputs, target"), pytest.warns(DeprecationWarning):
        unpack_batch(torch.zeros(2))
    moved = move_to_device(
        UnlearnBatch({"a": torch.zeros(1)}, torch.ones(1), torch.ones(1).bool()), "cpu"
    )
    assert isinstance(moved, UnlearnBatch) and isinstance(moved.inputs, dict)


def test_dict_items_and_a_custom_collate_fn():
    from modeconn_unlearn.data import collate_of, read_sample

    class Items(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"ids": torch.arange(i + 1), "labels": torch.arange(i + 1) + 10}

    def pad(items):
        width = max(len(item["ids"]) for item in items)
        return {
            key: torch.stack(
                [torch.cat([it[key], torch.full((width - len(it[key]),), -1)]) for it in items]
            )
            for key in ("ids", "labels")
        }

    assert read_sample(Items()[1])[1].tolist() == [10, 11]
    loader = unlearn_loader(DataLoader(Items(), collate_fn=pad), None, batch_size=3, shuffle=False)
    batch = next(iter(loader))
    assert batch.inputs["ids"].tolist() == [[0, -1, -1], [0, 1, -1], [0, 1, 2]]
    assert batch.targets.tolist() == [[10, -1, -1], [10, 11, -1], [10, 11, 12]]
    assert batch.is_forget.tolist() == [False, False, False]
    assert collate_of(DataLoader(Items())) is None
    with pytest.raises(ModeConnError, match="'labels' entry"):
        read_sample({"ids": torch.zeros(1)})


# --------------------------------------------------------------------------- padding
class Ragged(Dataset):
    """Token-sequence items of different lengths, as a QADataset gives them."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int):
        ids = torch.arange(1, i + 3)
        labels = ids.clone()
        labels[0] = -100
        return {"input_ids": ids}, labels


def test_stacking_samples_of_different_sizes_says_how_to_pad_in_one_line():
    with pytest.raises(ModeConnError, match=r"task=CausalLMTask\(\).*PadCollator") as error:
        next(iter(as_loader(Ragged())))
    assert "\n" not in str(error.value)
    with pytest.raises(ModeConnError, match=r"task=CausalLMTask\(\)"):
        next(iter(unlearn_loader(Ragged(), None, batch_size=3)))
    assert stack_collate([torch.zeros(2), torch.ones(2)]).tolist() == [[0, 0], [1, 1]]


def test_as_loader_batches_a_dataset_with_a_given_collate_and_pad_collator_pads():
    loader = as_loader(Ragged(), collate_fn=PadCollator(pad_token_id=0))
    batch = next(iter(loader))
    assert batch["input_ids"].tolist() == [[1, 2, 0, 0], [1, 2, 3, 0], [1, 2, 3, 4]]
    assert batch["attention_mask"].sum(1).tolist() == [2, 3, 4]
    assert batch["labels"][0].tolist() == [-100, 2, -100, -100]
    given = DataLoader(Ragged(), batch_size=1)
    assert as_loader(given, collate_fn=PadCollator()) is given  # a loader keeps its own
