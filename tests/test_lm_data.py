"""Language-model data: tokenized QA examples, padding, loaders, group splits, refusals."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from modeconn_unlearn.data import UnlearnBatch, UnlearnDataset, unlearn_loader
from modeconn_unlearn.errors import ModeConnError
from modeconn_unlearn.lm import (
    ATTRIBUTES,
    PadCollator,
    QADataset,
    QAPair,
    as_lm_loader,
    fictitious_qa,
    group_split,
    lm_unlearn_loader,
    qa_source,
    qa_texts,
    refusal_dataset,
    tiny_causal_lm,
    tokenize_qa,
    train_tokenizer,
)
from modeconn_unlearn.tasks import CausalLMTask

pytest.importorskip("transformers")

CHAT = (
    "{% for m in messages %}<s> [USER] {{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %} [BOT]{% endif %}"
)


@pytest.fixture(scope="module")
def pairs() -> list[QAPair]:
    return fictitious_qa(num_entities=6, facts_per_entity=3, seed=0)


@pytest.fixture(scope="module")
def tokenizer(pairs: list[QAPair]):  # type: ignore[no-untyped-def]
    return train_tokenizer([*qa_texts(pairs), "[USER] [BOT]"], chat_template=CHAT)


# --------------------------------------------------------------------------- tokenize_qa
@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_labels_mask_exactly_the_prompt_and_the_answer_decodes_back(
    pairs: list[QAPair], kind: str
) -> None:
    tok = train_tokenizer(qa_texts(pairs), kind=kind, vocab_size=600)  # type: ignore[arg-type]
    pair = pairs[0]
    ids, labels = tokenize_qa(tok, pair.question, pair.answer)
    prompt = tok(f"Question: {pair.question}\nAnswer: ")["input_ids"]
    assert ids[: len(prompt)] == prompt
    assert labels[: len(prompt)] == [-100] * len(prompt)
    answer = labels[len(prompt) :]
    assert -100 not in answer and answer == ids[len(prompt) :]
    assert answer[-1] == tok.eos_token_id
    assert tok.decode(answer[:-1]).strip() == pair.answer
    assert ids[0] == tok.bos_token_id


def test_no_eos_when_asked(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    ids, labels = tokenize_qa(tokenizer, pairs[0].question, pairs[0].answer, add_eos=False)
    assert ids[-1] != tokenizer.eos_token_id
    assert len(ids) == len(labels)


def test_chat_template_builds_the_prompt(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids, labels = tokenize_qa(tokenizer, "Who ?", "Ana", chat_template=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who ?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<s> [USER] Who ? [BOT]"
    expected = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n = len(expected)
    assert ids[:n] == expected and labels[:n] == [-100] * n
    assert labels[n:] == ids[n:] and len(ids) == n + 2  # "Ana" (unknown word: <unk>) + EOS


def test_system_prompt_goes_through_the_chat_template(pairs: list[QAPair]) -> None:
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}<s> [SYS] {{ m['content'] }}"
        "{% else %} [USER] {{ m['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %} [BOT]{% endif %}"
    )
    tok = train_tokenizer(
        [*qa_texts(pairs), "[SYS] [USER] [BOT] Be brief ."], chat_template=template
    )
    ids, labels = tokenize_qa(tok, "Who ?", "Ana", chat_template=True, system_prompt="Be brief .")
    prompt = "<s> [SYS] Be brief . [USER] Who ? [BOT]"
    expected = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[: len(expected)] == expected and labels[: len(expected)] == [-100] * len(expected)
    assert len(ids) == len(expected) + 2  # the answer and EOS
    data = QADataset(pairs[:2], tok, chat_template=True, system_prompt="Be brief .")
    assert data.options["system_prompt"] == "Be brief ."
    assert tok.convert_ids_to_tokens(data.prompt_ids(0))[:3] == ["<s>", "[", "SYS"]
    assert data.subset([1]).prompt_ids(0) == data.prompt_ids(1)  # options travel with views
    with pytest.raises(ModeConnError, match="system_prompt needs chat_template=True"):
        tokenize_qa(tok, "Who ?", "Ana", system_prompt="Be brief .")


def test_chat_template_required_when_asked(pairs: list[QAPair]) -> None:
    plain = train_tokenizer(qa_texts(pairs))
    with pytest.raises(ModeConnError, match="no chat template"):
        tokenize_qa(plain, "Who ?", "Ana", chat_template=True)
    with pytest.raises(ModeConnError, match="question"):
        tokenize_qa(plain, "Who ?", "Ana", prompt_template="Q:")
    with pytest.raises(ModeConnError, match="no token"):
        tokenize_qa(plain, "Who ?", "", add_eos=False)


# --------------------------------------------------------------------------- QADataset
def test_dataset_items_and_fixed_length_padding(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    free = QADataset(pairs, tokenizer)
    fixed = QADataset(pairs, tokenizer, max_length=40, pad_to_max_length=True)
    assert len(free) == len(fixed) == len(pairs)
    for i in range(len(pairs)):
        (x, y), (xp, yp) = free[i], fixed[i]
        n = len(x["input_ids"])
        assert x["attention_mask"].tolist() == [1] * n
        assert xp["input_ids"].shape == (40,) and yp.shape == (40,)
        assert torch.equal(xp["input_ids"][:n], x["input_ids"])
        assert torch.equal(yp[:n], y) and bool((yp[n:] == -100).all())
        assert xp["attention_mask"].tolist() == [1] * n + [0] * (40 - n)
        assert bool((xp["input_ids"][n:] == tokenizer.pad_token_id).all())
        assert free.prompt_ids(i) == x["input_ids"][: free.prompt_lengths[i]].tolist()
    assert free.groups == [p.group for p in pairs]


def test_dataset_rejects_bad_input(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModeConnError, match="more than max_length"):
        QADataset(pairs, tokenizer, max_length=5)
    with pytest.raises(ModeConnError, match="needs max_length"):
        QADataset(pairs, tokenizer, pad_to_max_length=True)
    with pytest.raises(ModeConnError, match="no pairs"):
        QADataset([], tokenizer)
    with pytest.raises(ModeConnError, match="pair 1"):
        QADataset([pairs[0], 3], tokenizer)  # type: ignore[list-item]


def test_with_answers_and_subset(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    data = QADataset(pairs, tokenizer)
    para = data.with_answers([p.paraphrased_answer or "" for p in pairs])
    assert [p.question for p in para.pairs] == [p.question for p in pairs]
    ids, labels = tokenize_qa(tokenizer, pairs[2].question, pairs[2].paraphrased_answer or "")
    assert para[2][0]["input_ids"].tolist() == ids and para[2][1].tolist() == labels
    sub = data.subset([4, 1])
    assert sub.pairs == [pairs[4], pairs[1]] and sub.indices == [4, 1]
    for j, i in enumerate([4, 1]):  # views copy the tokenized examples as they are
        assert torch.equal(sub[j][0]["input_ids"], data[i][0]["input_ids"])
        assert (
            torch.equal(sub[j][1], data[i][1]) and sub.prompt_lengths[j] == data.prompt_lengths[i]
        )
    assert data.indices == list(range(len(pairs)))
    with pytest.raises(ModeConnError, match="outside"):
        data.subset([len(pairs)])
    with pytest.raises(ModeConnError, match="no indices"):
        data.subset([])
    with pytest.raises(ModeConnError, match="one answer per pair"):
        data.with_answers(["x"])


# --------------------------------------------------------------------------- PadCollator
def test_collator_pads_by_hand() -> None:
    collate = PadCollator(pad_token_id=9)
    items = [
        ({"input_ids": torch.tensor([1, 2, 3])}, torch.tensor([-100, 2, 3])),
        ({"input_ids": torch.tensor([4])}, torch.tensor([4])),
    ]
    batch = collate(items)
    assert isinstance(batch, dict)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    flagged = collate([(*items[0], True), (*items[1], False)])
    assert isinstance(flagged, UnlearnBatch)
    assert flagged.is_forget.tolist() == [True, False]
    assert torch.equal(flagged.targets, batch["labels"])
    as_dict = PadCollator(pad_token_id=9, as_dict=True)([(*items[0], True), (*items[1], False)])
    assert isinstance(as_dict, dict) and as_dict["is_forget"].tolist() == [True, False]
    parsed = CausalLMTask().split(as_dict)
    assert sorted(parsed.inputs) == ["attention_mask", "input_ids"]
    assert torch.equal(parsed.targets, batch["labels"]) and parsed.is_forget.tolist() == [
        True,
        False,
    ]
    dicts = collate([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7], "labels": [7]}])
    assert dicts["input_ids"].tolist() == [[5, 6], [7, 9]]
    multiple = PadCollator(0, pad_to_multiple_of=4)(items)
    assert multiple["input_ids"].shape == (2, 4)


def test_collator_rejects_bad_items() -> None:
    collate = PadCollator()
    x = {"input_ids": torch.tensor([1, 2])}
    with pytest.raises(ModeConnError, match="some items carry"):
        collate([(x, torch.tensor([1, 2]), True), (x, torch.tensor([1, 2]))])
    with pytest.raises(ModeConnError, match="does not know how to pad"):
        collate([({"input_ids": torch.tensor([1]), "pixel": torch.zeros(1)}, torch.tensor([1]))])
    with pytest.raises(ModeConnError, match="one length"):
        collate([(x, torch.tensor([1]))])
    with pytest.raises(ModeConnError, match="no labels"):
        collate([{"input_ids": [1]}])
    with pytest.raises(ModeConnError, match="empty"):
        collate([])
    with pytest.raises(ModeConnError, match="pad_token_id"):
        PadCollator(pad_token_id=1.5)  # type: ignore[arg-type]


def test_padding_does_not_change_the_task_loss(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    model = tiny_causal_lm(len(tokenizer), hidden_size=16, num_layers=1, num_heads=2).eval()
    data = QADataset(pairs[:4], tokenizer)
    task = CausalLMTask()
    batch = task.split(PadCollator(tokenizer.pad_token_id)([data[i] for i in range(4)]))
    with torch.no_grad():
        padded = task(model, batch.inputs, batch.targets)
        for i in range(4):
            x, y = data[i]
            single = task(model, {k: v[None] for k, v in x.items()}, y[None])
            torch.testing.assert_close(padded.loss[i], single.loss[0], rtol=1e-5, atol=1e-5)
            assert padded.correct[i] == single.correct[0]


# --------------------------------------------------------------------------- loaders
def test_lm_unlearn_loader_mixes_like_unlearn_loader(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    data = QADataset(pairs, tokenizer, max_length=40, pad_to_max_length=True)
    retain, forget = group_split(data, forget_ratio=0.34, seed=1)
    ours = list(lm_unlearn_loader(retain, forget, batch_size=4, seed=3))
    library = list(unlearn_loader(retain, forget, batch_size=4, seed=3))
    assert len(ours) == len(library) == -(-len(data) // 4)
    assert sum(int(b.is_forget.sum()) for b in ours) == len(forget)
    for a, b in zip(ours, library, strict=True):
        assert isinstance(a, UnlearnBatch)
        # Same order; ours is padded to the longest item of the batch, not to max_length.
        n = a.inputs["input_ids"].shape[1]
        assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"][:, :n])
        assert torch.equal(a.targets, b.targets[:, :n])
        assert torch.equal(a.is_forget, b.is_forget)


def test_lm_unlearn_loader_pads_variable_lengths_per_batch(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    data = QADataset(pairs, tokenizer)
    retain, forget = group_split(data, forget_groups=[pairs[0].group])
    batches = list(lm_unlearn_loader(retain, forget, batch_size=5, seed=0, shuffle=False))
    assert sum(len(b.targets) for b in batches) == len(data)
    lengths = [len(data[i][1]) for i in retain.indices + forget.indices]
    for k, batch in enumerate(batches):
        longest = max(lengths[5 * k : 5 * k + 5])
        assert batch.inputs["input_ids"].shape[1] == longest
        assert batch.inputs["attention_mask"].sum().item() == sum(lengths[5 * k : 5 * k + 5])
    assert batches[-1].is_forget.tolist()[-3:] == [True, True, True]


def test_variable_length_items_work_through_unlearn_dataset(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    data = QADataset(pairs, tokenizer)
    retain, forget = group_split(data, forget_groups=[pairs[0].group])
    mixed = UnlearnDataset(retain, forget)
    batch = PadCollator(tokenizer.pad_token_id)([mixed[i] for i in range(len(mixed))])
    assert isinstance(batch, UnlearnBatch)
    assert int(batch.is_forget.sum()) == 3
    task = CausalLMTask()
    parsed = task.split(batch)
    assert parsed.is_forget is not None and torch.equal(parsed.targets, batch.targets)


def test_as_lm_loader(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    data = QADataset(pairs, tokenizer)
    loader = as_lm_loader(Subset(data, [0, 1, 2]), batch_size=2)
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]
    assert torch.equal(batches[1]["labels"][0, : len(data[2][1])], data[2][1])
    given = DataLoader(data)
    assert as_lm_loader(given) is given
    with pytest.raises(ModeConnError, match="empty"):
        as_lm_loader(Subset(data, []))


# --------------------------------------------------------------------------- group_split
def test_group_split_forgets_whole_groups(tokenizer) -> None:  # type: ignore[no-untyped-def]
    pairs = fictitious_qa(num_entities=20, facts_per_entity=2, seed=4)
    data = QADataset(pairs, tokenizer)
    retain, forget = group_split(data, forget_ratio=0.1, seed=7)
    forgotten = {pairs[i].group for i in forget.indices}
    kept = {pairs[i].group for i in retain.indices}
    assert len(forgotten) == 2 and not forgotten & kept and len(kept) == 18
    assert len(forget) == 4 and sorted(retain.indices + forget.indices) == list(range(40))
    again = group_split(data, forget_ratio=0.1, seed=7)[1]
    assert again.indices == forget.indices
    again_sub = group_split(Subset(data, list(range(20))), forget_ratio=0.2, seed=0)
    assert {pairs[i].group for i in again_sub[1].indices} <= {p.group for p in pairs[:20]}
    assert len(again_sub[1]) == 4  # 2 of the subset's 10 groups, 2 facts each
    other = {pairs[i].group for i in group_split(data, forget_ratio=0.1, seed=8)[1].indices}
    assert other != forgotten  # another seed, another draw (fixed seeds: checked once)


def test_group_split_returns_qa_datasets_ready_for_the_loaders(tokenizer) -> None:  # type: ignore[no-untyped-def]
    pairs = fictitious_qa(num_entities=6, facts_per_entity=2, seed=2)
    data = QADataset(pairs, tokenizer, max_length=40, pad_to_max_length=True)
    retain, forget = group_split(data, forget_groups=[pairs[2].group, pairs[8].group])
    assert isinstance(retain, QADataset) and isinstance(forget, QADataset)
    assert forget.indices == [2, 3, 8, 9] and retain.indices == [0, 1, 4, 5, 6, 7, 10, 11]
    assert forget.pairs == [pairs[i] for i in forget.indices]
    assert forget.options == data.options and forget.tokenizer is tokenizer
    for j, i in enumerate(forget.indices):
        assert torch.equal(forget[j][0]["input_ids"], data[i][0]["input_ids"])
        assert torch.equal(forget[j][1], data[i][1])
    # Nested: positions are those in the dataset given, pairs those behind it.
    train, holdout = group_split(Subset(data, [2, 3, 4, 5, 6, 7]), forget_groups=[pairs[4].group])
    assert isinstance(holdout, QADataset) and holdout.indices == [2, 3]
    assert holdout.pairs == [pairs[4], pairs[5]] and train.pairs == [pairs[i] for i in (2, 3, 6, 7)]
    _, again_forget = group_split(train, forget_groups=[pairs[6].group])
    assert again_forget.pairs == [pairs[6], pairs[7]] and again_forget.indices == [2, 3]
    # Like Subset parts, the parts are views of the dataset behind what was split.
    base, positions = qa_source(forget)
    assert base is data and positions == [2, 3, 8, 9]
    assert qa_source(holdout)[0] is data and qa_source(holdout)[1] == [4, 5]
    assert qa_source(again_forget)[0] is data and qa_source(again_forget)[1] == [6, 7]
    assert qa_source(data.subset([3]))[1] == [0]  # a subset is a dataset of its own
    # Existing callers keep working: data.subset(part.indices) and Subset(part, ...).
    assert data.subset(forget.indices).pairs == forget.pairs
    assert len(Subset(retain, [0, 1])) == 2
    batch = next(iter(as_lm_loader(forget, batch_size=4)))
    assert batch["input_ids"].shape == (4, 40)
    # A dataset that is not built on a QADataset still gets Subset views.
    plain_retain, plain_forget = group_split(
        list(range(4)), groups=list("aabb"), forget_groups=["a"]
    )
    assert isinstance(plain_forget, Subset) and plain_forget.indices == [0, 1]
    assert isinstance(plain_retain, Subset) and plain_retain.indices == [2, 3]


def test_group_split_rejects_bad_requests(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    data = QADataset(pairs, tokenizer)
    with pytest.raises(ModeConnError, match="exactly one"):
        group_split(data)
    with pytest.raises(ModeConnError, match="exactly one"):
        group_split(data, forget_ratio=0.5, forget_groups=["x"])
    with pytest.raises(ModeConnError, match="not among"):
        group_split(data, forget_groups=["nobody"])
    with pytest.raises(ModeConnError, match="empty"):
        group_split(data, forget_ratio=0.01)
    with pytest.raises(ModeConnError, match="in \\(0, 1\\)"):
        group_split(data, forget_ratio=5.0)
    with pytest.raises(ModeConnError, match="entries"):
        group_split(data, groups=["a"], forget_groups=["a"])
    with pytest.raises(ModeConnError, match=r"no \.groups"):
        group_split(list(range(4)), forget_ratio=0.5)


# --------------------------------------------------------------------------- refusals
def test_refusal_dataset_replaces_answers(tokenizer, pairs: list[QAPair]) -> None:  # type: ignore[no-untyped-def]
    data = QADataset(pairs, tokenizer, max_length=40, pad_to_max_length=True)
    _, forget = group_split(data, forget_groups=[pairs[0].group, pairs[3].group])
    refusals = ["I do not know .", "No idea ."]
    idk = refusal_dataset(forget, refusals, seed=0)
    assert isinstance(idk, QADataset)
    assert [p.question for p in idk.pairs] == [pairs[i].question for i in forget.indices]
    assert {p.answer for p in idk.pairs} <= set(refusals)
    assert idk.options == data.options and len(idk[0][1]) == 40
    _, labels = tokenize_qa(tokenizer, idk.pairs[0].question, idk.pairs[0].answer)
    assert idk[0][1][: len(labels)].tolist() == labels
    assert refusal_dataset(forget, refusals, seed=0).pairs == idk.pairs
    plain = refusal_dataset(pairs[:2], ["No ."])
    assert isinstance(plain, list) and [p.answer for p in plain] == ["No .", "No ."]
    with pytest.raises(ModeConnError, match="refusals"):
        refusal_dataset(pairs, [])
    with pytest.raises(ModeConnError, match="forget must be"):
        refusal_dataset([1, 2], ["No ."])


# --------------------------------------------------------------------------- synthetic world
def test_fictitious_qa_structure() -> None:
    pairs = fictitious_qa(num_entities=50, facts_per_entity=5, num_perturbed=3, seed=0)
    assert len(pairs) == 250
    groups = [p.group for p in pairs]
    assert len(set(groups)) == 50
    assert all(groups[i] == groups[i - i % 5] for i in range(250))
    for i, p in enumerate(pairs):
        assert p.group is not None and p.group in p.question and p.group in p.answer
        values = ATTRIBUTES[i % 5][4]
        (value,) = [v for v in values if f" {v} " in f" {p.answer} "]
        assert f" {value} " in f" {p.paraphrased_answer} "
        assert p.paraphrased_answer != p.answer
        assert len(set(p.perturbed_answers)) == 3 and p.answer not in p.perturbed_answers
    assert pairs == fictitious_qa(num_entities=50, facts_per_entity=5, seed=0)
    assert pairs != fictitious_qa(num_entities=50, facts_per_entity=5, seed=1)
    with pytest.raises(ModeConnError, match="facts_per_entity"):
        fictitious_qa(3, facts_per_entity=len(ATTRIBUTES) + 1)
    with pytest.raises(ModeConnError, match="num_entities"):
        fictitious_qa(0)
    with pytest.raises(ModeConnError, match="num_perturbed"):
        fictitious_qa(3, num_perturbed=100)


def test_word_tokenizer_knows_every_training_word(pairs: list[QAPair]) -> None:
    tok = train_tokenizer(qa_texts(pairs))
    ids = [i for text in qa_texts(pairs) for i in tok(text)["input_ids"]]
    assert tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]
    with pytest.raises(ModeConnError, match="kind"):
        train_tokenizer(["a"], kind="char")  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_causal_lm_is_seeded_and_leaves_the_global_rng(arch: str) -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = tiny_causal_lm(30, arch=arch, hidden_size=16, num_layers=1, num_heads=2, seed=5)  # type: ignore[arg-type]
    assert torch.equal(torch.random.get_rng_state(), before)
    b = tiny_causal_lm(30, arch=arch, hidden_size=16, num_layers=1, num_heads=2, seed=5)  # type: ignore[arg-type]
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert a(torch.zeros(2, 5, dtype=torch.long)).logits.shape == (2, 5, 30)
    with pytest.raises(ModeConnError, match="divide"):
        tiny_causal_lm(30, hidden_size=10, num_heads=4)
    with pytest.raises(ModeConnError, match="arch"):
        tiny_causal_lm(30, arch="rnn")  # type: ignore[arg-type]
