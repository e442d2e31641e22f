"""Language models: question-answer data, LM unlearning metrics and attacks.

QA records in TOFU's form come in through :func:`qa_pairs`;
:func:`evaluate_openunlearning` reports OpenUnlearning's TOFU metrics by name.

Everything here runs on the causal-LM task
(:class:`~modeconn_unlearn.tasks.CausalLMTask`) and on any Hugging Face
tokenizer and model; ``transformers``, ``tokenizers`` and ``rouge-score`` are
optional and imported on first use (``pip install "modeconn-unlearn[lm]"``).

Example:
    >>> from modeconn_unlearn import lm
    >>> pairs = lm.fictitious_qa(num_entities=3, facts_per_entity=2, seed=0)
    >>> tokenizer = lm.train_tokenizer(lm.qa_texts(pairs))
    >>> data = lm.QADataset(pairs, tokenizer)
    >>> retain, forget = lm.group_split(data, forget_ratio=0.34, seed=0)
    >>> len(retain), len(forget)
    (4, 2)
"""

from __future__ import annotations

from .attacks import ATTACKS, AttackResult, attack_scores, lm_mia, mia_from_outputs, privleak
from .batches import PadCollator, as_lm_loader, lm_unlearn_loader
from .data import (
    DEFAULT_PROMPT,
    QADataset,
    QAPair,
    group_split,
    qa_source,
    refusal_dataset,
    tokenize_qa,
)
from .metrics import (
    ForgetQuality,
    LMOutputs,
    RougeResult,
    forget_quality,
    greedy_generate,
    lm_outputs,
    rouge_l_recall,
    truth_ratio,
    truth_ratios,
    truth_score,
)
from .openunlearning import (
    OpenUnlearningResult,
    evaluate_openunlearning,
    exact_memorization,
    extraction_strength,
)
from .records import qa_pairs
from .synthetic import ATTRIBUTES, fictitious_qa, qa_texts, tiny_causal_lm, train_tokenizer

__all__ = [
    "ATTACKS",
    "ATTRIBUTES",
    "AttackResult",
    "ForgetQuality",
    "LMOutputs",
    "OpenUnlearningResult",
    "RougeResult",
    "attack_scores",
    "evaluate_openunlearning",
    "exact_memorization",
    "extraction_strength",
    "forget_quality",
    "greedy_generate",
    "lm_mia",
    "lm_outputs",
    "mia_from_outputs",
    "privleak",
    "qa_pairs",
    "qa_source",
    "rouge_l_recall",
    "truth_ratio",
    "truth_ratios",
    "truth_score",
    "DEFAULT_PROMPT",
    "PadCollator",
    "QADataset",
    "QAPair",
    "as_lm_loader",
    "fictitious_qa",
    "group_split",
    "lm_unlearn_loader",
    "qa_texts",
    "refusal_dataset",
    "tiny_causal_lm",
    "tokenize_qa",
    "train_tokenizer",
]
