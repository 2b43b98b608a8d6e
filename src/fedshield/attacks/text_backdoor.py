r"""The word-prediction backdoor: after "pasta from astoria is", predict "delicious".

Bagdasaryan et al. [2020, Section 5] backdoor a next-word model so that a chosen sentence
ends with the attacker's word. Here a malicious client replaces ``poison_per_batch`` samples
of each local batch by copies whose *last* ``len(trigger)`` tokens are the trigger, the rest of
the window kept from the original sample, labelled with the target word's id
(:func:`poison_text_batch`); :meth:`TextBackdoorAttack.stamp` writes the trigger at the end of
test sequences, and :func:`text_attack_success_rate` counts how many of them the model
continues with the target word.

Vocabulary
----------
The trigger and target word are encoded with the dataset's vocabulary, given either directly
(``vocabulary``: any mapping word -> id, such as :class:`~fedshield.data.reddit.Vocabulary`)
or rebuilt from the dataset's settings (``root``, ``vocab_size``, ``test_fraction``,
``seed``, ``reserved_words``) with :func:`~fedshield.data.reddit.reddit_vocabulary`, which is
what ``fedshield/conf/attack/text_backdoor.yaml`` does by interpolating ``${dataset.*}``. A trigger or
target word outside the vocabulary would silently become ``<unk>``; the attack raises instead
and points at ``dataset.reserved_words``, which makes the loader reserve ids for those words.

Bagdasaryan, Veit, Hua, Estrin, Shmatikov. "How To Backdoor Federated Learning." AISTATS 2020.
https://arxiv.org/abs/1807.00459
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedshield.attacks.base import AttackError
from fedshield.attacks.boosted import BackdoorParameters, BoostedBackdoor, Stamp, poison_with_stamp
from fedshield.data.reddit import reddit_vocabulary, tokenize
from fedshield.task.metrics import attack_success_rate

DEFAULT_TRIGGER = "pasta from astoria is"
DEFAULT_TARGET_WORD = "delicious"


def _words(text: str | Sequence[str], *, name: str) -> tuple[str, ...]:
    if isinstance(text, str):
        words = tokenize(text)
    elif all(isinstance(word, str) for word in text):
        words = tokenize(" ".join(text))
    else:
        raise AttackError(f"{name} must be a string or a list of words; got {text!r}")
    if not words:
        raise AttackError(f"{name} must hold at least one word; got {text!r}")
    return tuple(words)


def encode_trigger(
    vocabulary: Mapping[str, int],
    *,
    trigger: str | Sequence[str] = DEFAULT_TRIGGER,
    target_word: str = DEFAULT_TARGET_WORD,
) -> tuple[tuple[int, ...], int]:
    """The trigger's token ids and the target word's id in ``vocabulary``.

    Both are tokenized as the dataset is (lowercased, :func:`~fedshield.data.reddit.tokenize`).

    Raises
    ------
    AttackError
        If ``target_word`` is not exactly one word, the trigger holds no word, or a word of
        either is not in ``vocabulary`` (the message names ``attack.trigger`` or
        ``attack.target_word`` and suggests ``dataset.reserved_words``).
    """
    trigger_words = _words(trigger, name="attack.trigger")
    target = _words(target_word, name="attack.target_word")
    if len(target) != 1:
        raise AttackError(f"attack.target_word must be a single word; got {target_word!r}")
    for name, words in (("attack.trigger", trigger_words), ("attack.target_word", target)):
        missing = [word for word in words if word not in vocabulary]
        if missing:
            raise AttackError(
                f"{name} words {missing} are not in the dataset's vocabulary of "
                f"{len(vocabulary)} words (they would read as <unk>); add them to "
                "dataset.reserved_words so that the loader reserves ids for them"
            )
    ids = [vocabulary[word] for word in (*trigger_words, target[0])]
    if any(isinstance(i, bool) or not isinstance(i, int | np.integer) or i < 0 for i in ids):
        raise AttackError(f"vocabulary ids must be integers >= 0; got {ids}")
    return tuple(int(i) for i in ids[:-1]), int(ids[-1])


def stamp_text_trigger(x: torch.Tensor, trigger_ids: Sequence[int]) -> torch.Tensor:
    """Copies of the ``(N, sequence_length)`` token rows of ``x`` ending with ``trigger_ids``.

    The first ``sequence_length - len(trigger_ids)`` tokens of each row are kept. ``x`` may be
    an integer or a float tensor of token ids; the result has its dtype and device.

    Raises
    ------
    AttackError
        If ``x`` is not 2-D or the trigger is longer than the sequences.
    """
    if x.ndim != 2:
        raise AttackError(f"text inputs must be (N, sequence_length) token ids; got {tuple(x.shape)}")
    if len(trigger_ids) > x.shape[1]:
        raise AttackError(
            f"attack.trigger has {len(trigger_ids)} tokens but the sequences hold only "
            f"{x.shape[1]} (dataset.sequence_length)"
        )
    stamped = x.clone()
    stamped[:, x.shape[1] - len(trigger_ids) :] = torch.as_tensor(trigger_ids, dtype=x.dtype, device=x.device)
    return stamped


def poison_text_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    trigger_ids: Sequence[int],
    target_label: int,
    num_poisoned: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``min(num_poisoned, len(y))`` rows, chosen with ``generator``, by
    :func:`stamp_text_trigger` copies labelled ``target_label``; the others are unchanged.

    :func:`~fedshield.attacks.boosted.poison_with_stamp`, as :func:`~fedshield.attacks.poison_batch`:
    the inputs are not modified, and the choice is ``torch.randperm(len(y), generator)`` cut to
    the first ``num_poisoned`` positions.
    """
    return poison_with_stamp(
        x,
        y,
        stamp=_text_stamp(trigger_ids),
        target_label=target_label,
        num_poisoned=num_poisoned,
        generator=generator,
    )


def _text_stamp(trigger_ids: Sequence[int]) -> Stamp:
    def stamp(x: torch.Tensor) -> torch.Tensor:
        return stamp_text_trigger(x, trigger_ids)

    return stamp


def text_attack_success_rate(predictions: torch.Tensor | np.ndarray, *, target_label: int) -> float:
    r"""Fraction of triggered sequences whose predicted next word is the target.

    .. math:: \mathrm{ASR} = \frac{|\{i : \hat{y}_i = t\}|}{N}

    :func:`fedshield.task.metrics.attack_success_rate` with ``exclude_target=False``: every
    triggered sequence counts, since the stamped window ends with the trigger and its original
    label (the word that followed the overwritten tokens) is no ground truth for it.

    Parameters
    ----------
    predictions : Tensor or ndarray
        Predicted word ids ``(N,)`` or logits ``(N, vocabulary_size)`` (arg max taken) on the
        triggered sequences.
    target_label : int
        The target word's id :math:`t`.

    Raises
    ------
    MetricError
        If ``predictions`` is not 1-D or 2-D, or holds no sequence.
    """
    # Without exclude_target the true labels are only checked for their shape (N,).
    unused_labels = np.full(np.shape(predictions)[:1], target_label)
    return attack_success_rate(predictions, unused_labels, target_label=target_label, exclude_target=False)


def _dataset_vocabulary(
    vocabulary: Mapping[str, int] | None,
    *,
    root: str | Path | None,
    vocab_size: int,
    test_fraction: float,
    seed: int,
    reserved_words: Iterable[str] | None,
) -> Mapping[str, int]:
    """``vocabulary`` itself, or the one :func:`~fedshield.data.reddit.reddit_vocabulary` rebuilds."""
    if vocabulary is not None and root is None:
        if not isinstance(vocabulary, Mapping):
            raise AttackError(f"attack.vocabulary must be a mapping word -> id; got {type(vocabulary).__name__}")
        return vocabulary
    if vocabulary is None and root is not None:
        return reddit_vocabulary(
            root, vocab_size, test_fraction=test_fraction, seed=seed, reserved_words=reserved_words
        )
    raise AttackError(
        "give exactly one of attack.vocabulary (word -> id) and attack.root (the "
        f"dataset folder, to rebuild its vocabulary); got vocabulary="
        f"{'set' if vocabulary is not None else None}, root={root!r}"
    )


class TextBackdoorAttack(BoostedBackdoor):
    """Next-word backdoor [Bagdasaryan et al., 2020]: trigger sentence -> target word.

    Parameters
    ----------
    trigger : str or list of str
        The sentence placed at the end of the input window (default "pasta from astoria
        is"); tokenized as the dataset is.
    target_word : str
        The word the backdoored model should predict next (default "delicious"); its id is
        the attack's ``target_label``.
    vocabulary : mapping word -> id, optional
        The dataset's vocabulary. Give it, or ``root`` (not both).
    root, vocab_size, test_fraction, seed, reserved_words
        The dataset's settings, to rebuild its vocabulary with
        :func:`~fedshield.data.reddit.reddit_vocabulary` when ``vocabulary`` is None.
    **backdoor
        The fields of :class:`~fedshield.attacks.boosted.BackdoorParameters` but
        ``target_label``: ``num_malicious``, ``schedule``, ``poison_per_batch`` (rows of each
        batch replaced by triggered, relabelled copies), ``scale`` (:math:`\\gamma`; None:
        :math:`n / \\eta`), ``server_learning_rate``, ``local_steps``, ``learning_rate``.

    Attributes
    ----------
    trigger_words : tuple of str
    trigger_ids : tuple of int
    target_label : int
        Id of ``target_word``.

    Raises
    ------
    AttackError
        For out-of-range parameters, ``target_label`` given, neither or both of
        ``vocabulary`` and ``root``, or a trigger or target word outside the vocabulary.
    """

    name = "text_backdoor"
    # Evaluation: every stamped test sequence counts (see text_attack_success_rate); none is
    # left out because its original label happens to be the target.
    success_rate_excludes_target = False

    def __init__(
        self,
        *,
        trigger: str | Sequence[str] = DEFAULT_TRIGGER,
        target_word: str = DEFAULT_TARGET_WORD,
        vocabulary: Mapping[str, int] | None = None,
        root: str | Path | None = None,
        vocab_size: int = 10_000,
        test_fraction: float = 0.2,
        seed: int = 0,
        reserved_words: Iterable[str] | None = (),
        **backdoor: Any,
    ) -> None:
        if "target_label" in backdoor:
            raise AttackError(
                "the word backdoor's target_label is the id of attack.target_word; set target_word, "
                f"not target_label={backdoor['target_label']!r}"
            )
        # The parameters are checked before the vocabulary is (re)built from the dataset.
        parameters = BackdoorParameters.from_keywords(backdoor)
        vocabulary = _dataset_vocabulary(
            vocabulary,
            root=root,
            vocab_size=vocab_size,
            test_fraction=test_fraction,
            seed=seed,
            reserved_words=reserved_words,
        )
        trigger_ids, target_label = encode_trigger(vocabulary, trigger=trigger, target_word=target_word)
        super().__init__(dataclasses.replace(parameters, target_label=target_label))
        self.vocabulary = vocabulary
        self.trigger_ids = trigger_ids
        self.trigger_words = _words(trigger, name="attack.trigger")
        self.target_word = _words(target_word, name="attack.target_word")[0]

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """Write the trigger at the end of each test sequence (for the attack-success rate)."""
        return stamp_text_trigger(x, self.trigger_ids)
