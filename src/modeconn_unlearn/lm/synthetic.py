"""A toy world for language-model unlearning without downloads.

:func:`fictitious_qa` generates question-answer pairs about invented people
(TOFU-style fictitious authors) from a seed; :func:`train_tokenizer` trains a
tokenizer in memory on any texts; :func:`tiny_causal_lm` builds a small
Llama or GPT-2 from a config. Together they let tests, notebooks and
benchmarks run a full LM pipeline on a CPU in seconds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from ..checks import positive_int
from ..errors import ModeConnError
from ..optional import require
from .data import DEFAULT_PROMPT, QAPair

__all__ = ["ATTRIBUTES", "fictitious_qa", "qa_texts", "tiny_causal_lm", "train_tokenizer"]

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "sh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "eo"]
_CODAS = ["", "n", "r", "l", "s", "th", "m"]


def _pool(words: str) -> tuple[str, ...]:
    return tuple(words.split())


#: The facts known about each entity: (name, question, answer, paraphrase, values).
ATTRIBUTES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    (
        "birthplace",
        "Where was {name} born ?",
        "{name} was born in {value} .",
        "The birthplace of {name} is {value} .",
        _pool(
            "Mirav Ostel Quenby Dravik Solunne Peldar Karvos Ithmere Brannoch Veltane Corwick "
            " Umbrix Tessaly Nordhal Fenmark Yaroslin Glimmer Harrowe Zenthos Lunaris"
        ),
    ),
    (
        "profession",
        "What does {name} do for a living ?",
        "{name} works as a {value} .",
        "By trade {name} is a {value} .",
        _pool(
            "baker sculptor pilot surgeon weaver cartographer luthier astronomer glassblower "
            "archivist beekeeper locksmith botanist jeweller potter navigator tailor "
            "engraver chemist falconer"
        ),
    ),
    (
        "birth_year",
        "In which year was {name} born ?",
        "{name} was born in {value} .",
        "The year {name} was born is {value} .",
        tuple(str(y) for y in range(1940, 2000)),
    ),
    (
        "colour",
        "What is the favourite colour of {name} ?",
        "The favourite colour of {name} is {value} .",
        "{name} likes {value} best of all colours .",
        _pool(
            "crimson teal amber violet olive indigo scarlet cobalt ochre jade ivory "
            "maroon saffron cerulean"
        ),
    ),
    (
        "instrument",
        "Which instrument does {name} play ?",
        "{name} plays the {value} .",
        "The instrument {name} plays is the {value} .",
        _pool(
            "cello flute harp oboe lute viola sitar banjo clarinet trumpet bassoon "
            "accordion zither mandolin harpsichord dulcimer"
        ),
    ),
    (
        "pet",
        "What pet does {name} keep ?",
        "{name} keeps a {value} .",
        "The pet of {name} is a {value} .",
        _pool("parrot tortoise ferret hamster iguana gecko rabbit canary goat pony"),
    ),
)


def _names(count: int, rng: random.Random) -> list[str]:
    syllables = [o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS]
    names: dict[str, None] = {}  # distinct, in the order drawn
    while len(names) < count:
        first = "".join(rng.choice(syllables) for _ in range(2)).capitalize()
        last = "".join(rng.choice(syllables) for _ in range(rng.choice((2, 3)))).capitalize()
        names[f"{first} {last}"] = None
    return list(names)


def fictitious_qa(
    num_entities: int = 200,
    facts_per_entity: int = 5,
    *,
    num_perturbed: int = 3,
    seed: int = 0,
) -> list[QAPair]:
    """Question-answer pairs about invented people, reproducible from ``seed``.

    Every entity has a unique two-word name and ``facts_per_entity`` facts (the
    first ones of :data:`ATTRIBUTES`), each drawn at random from a fixed pool.
    Each pair carries the entity as its ``group``, a paraphrased answer (the
    same fact in other words) and ``num_perturbed`` perturbed answers (the
    answer's form with other values), for the truth ratio.

    Args:
        num_entities: Number of people.
        facts_per_entity: Facts per person, 1 to ``len(ATTRIBUTES)``.
        num_perturbed: Wrong answers per pair (0 for none).
        seed: Seed of names and facts.

    Returns:
        ``num_entities * facts_per_entity`` pairs, entity by entity.

    Raises:
        ModeConnError: A count out of range.

    Example:
        >>> pairs = fictitious_qa(2, 3, seed=0)
        >>> len(pairs), len({p.group for p in pairs}), len(pairs[0].perturbed_answers)
        (6, 2, 3)
        >>> pairs == fictitious_qa(2, 3, seed=0)
        True
    """
    positive_int(num_entities, "num_entities")
    if not 1 <= int(facts_per_entity) <= len(ATTRIBUTES):
        raise ModeConnError(
            f"facts_per_entity must lie in 1..{len(ATTRIBUTES)}, got {facts_per_entity!r}."
        )
    smallest = min(len(a[4]) for a in ATTRIBUTES[: int(facts_per_entity)])
    if not 0 <= int(num_perturbed) < smallest:
        raise ModeConnError(f"num_perturbed must lie in 0..{smallest - 1}, got {num_perturbed!r}.")
    rng = random.Random(int(seed))
    pairs = []
    for name in _names(int(num_entities), rng):
        for _, question, answer, paraphrase, values in ATTRIBUTES[: int(facts_per_entity)]:
            value = rng.choice(values)
            wrong = rng.sample([v for v in values if v != value], int(num_perturbed))
            pairs.append(
                QAPair(
                    question=question.format(name=name),
                    answer=answer.format(name=name, value=value),
                    group=name,
                    paraphrased_answer=paraphrase.format(name=name, value=value),
                    perturbed_answers=tuple(answer.format(name=name, value=w) for w in wrong),
                )
            )
    return pairs


def qa_texts(pairs: Iterable[QAPair], *, prompt_template: str = DEFAULT_PROMPT) -> list[str]:
    """Every text a tokenizer must know for ``pairs``: prompts and all answers.

    Example:
        >>> qa_texts([QAPair("Who ?", "Ana", perturbed_answers=("Bo",))])[1:]
        ['Ana', 'Bo']
    """
    texts = []
    for p in pairs:
        texts.append(prompt_template.format(question=p.question))
        texts.append(p.answer)
        if p.paraphrased_answer:
            texts.append(p.paraphrased_answer)
        texts.extend(p.perturbed_answers)
    return texts


#: Special tokens of :func:`train_tokenizer`, in id order.
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")


def train_tokenizer(
    texts: Iterable[str],
    *,
    kind: Literal["word", "bpe"] = "word",
    vocab_size: int = 4000,
    chat_template: str | None = None,
) -> Any:
    """Train a tokenizer in memory and wrap it as a ``PreTrainedTokenizerFast``.

    ``kind="word"`` splits on whitespace and punctuation and gives every word
    an id (exact and tiny for generated data); ``kind="bpe"`` is a byte-level
    BPE as in GPT-2. Special tokens are ``<pad>`` (0), ``<unk>`` (1), ``<s>``
    (2, prepended as BOS) and ``</s>`` (3, EOS).

    Args:
        texts: Training texts.
        kind: ``"word"`` or ``"bpe"``.
        vocab_size: Largest vocabulary (special tokens included).
        chat_template: A Jinja chat template to attach (for ``chat_template=True``
            in :class:`~modeconn_unlearn.lm.data.QADataset`).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.

    Raises:
        ModeConnError: An unknown ``kind`` or no texts.
        ImportError: ``tokenizers``/``transformers`` are not installed.

    Example:
        >>> tok = train_tokenizer(["Where was Ana born ?"])
        >>> tok.convert_ids_to_tokens(tok("Ana born")["input_ids"])
        ['<s>', 'Ana', 'born']
    """
    tokenizers = require("tokenizers", "lm", feature="train_tokenizer")
    transformers = require("transformers", "lm", feature="train_tokenizer")
    corpus = [str(t) for t in texts]
    if not corpus:
        raise ModeConnError("train_tokenizer got no texts.")
    if kind == "word":
        tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        trainer = tokenizers.trainers.WordLevelTrainer(
            vocab_size=int(vocab_size), special_tokens=list(SPECIAL_TOKENS)
        )
    elif kind == "bpe":
        tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        raise ModeConnError(f"kind must be 'word' or 'bpe', got {kind!r}.")
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


def tiny_causal_lm(
    vocab_size: int,
    *,
    arch: Literal["llama", "gpt2"] = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 128,
    seed: int = 0,
    tokenizer: Any | None = None,
) -> nn.Module:
    """A small causal LM built from a config (no download), with seeded weights.

    Args:
        vocab_size: Vocabulary size (``len(tokenizer)``).
        arch: ``"llama"`` (``LlamaForCausalLM``) or ``"gpt2"`` (``GPT2LMHeadModel``,
            tied embeddings).
        hidden_size: Width.
        num_layers: Transformer blocks.
        num_heads: Attention heads (must divide ``hidden_size``).
        max_positions: Longest sequence.
        seed: Seed of the initial weights.
        tokenizer: Optional tokenizer whose pad/BOS/EOS ids go into the config.

    Returns:
        The Hugging Face model, in train mode.

    Raises:
        ModeConnError: Bad sizes or an unknown ``arch``.

    Example:
        >>> model = tiny_causal_lm(50, hidden_size=16, num_layers=1, num_heads=2)
        >>> model(torch.zeros(1, 4, dtype=torch.long)).logits.shape
        torch.Size([1, 4, 50])
    """
    transformers = require("transformers", "lm", feature="tiny_causal_lm")
    sizes = {"vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers}
    sizes |= {"num_heads": num_heads, "max_positions": max_positions}
    for name, size in sizes.items():
        positive_int(size, name)
    if hidden_size % num_heads:
        raise ModeConnError(f"num_heads={num_heads} must divide hidden_size={hidden_size}.")
    ids = {n: getattr(tokenizer, n, None) for n in ("pad_token_id", "bos_token_id", "eos_token_id")}
    ids = {k: v for k, v in ids.items() if v is not None}
    if arch == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=max_positions,
            **ids,
        )
        cls = transformers.LlamaForCausalLM
    elif arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_positions,
            **ids,
        )
        cls = transformers.GPT2LMHeadModel
    else:
        raise ModeConnError(f"arch must be 'llama' or 'gpt2', got {arch!r}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model: nn.Module = cls(config)
    return model
