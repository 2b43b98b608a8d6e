r"""Next-word prediction on per-user posts (Reddit-style), one natural client per user.

This is the word-prediction task of Bagdasaryan et al. [2020, Section 5]: each user's posts
are one client's data, and the model predicts the next word from the previous
``sequence_length`` words.

Data format
-----------
``root`` is a folder holding one or more JSON lines files, ``*.jsonl``, found recursively and
read in sorted path order. Every non-blank line is one post, a JSON object::

    {"user": "<id>", "text": "<post>"}

Files are UTF-8. ``user`` is a string (or an integer, read as its decimal string); ``text`` is
a string. Other keys are ignored; blank lines are skipped. A user's posts may be spread over
several files; their order is the reading order (files by path, then lines).

Pipeline
--------
1. **Tokenizer** (:func:`tokenize`): lowercase, then the regex ``[^\W_]+(?:'[^\W_]+)*``:
   runs of Unicode letters and digits, with internal apostrophes kept (``"don't"``,
   ``"astoria's"``). Punctuation, underscores and whitespace separate words and are dropped.
2. **Split** (:func:`read_reddit_corpus`): each user's posts are split into train and test
   with a generator seeded by ``(seed, user)`` only, so adding a user never changes another
   user's split. A user with :math:`n` posts puts
   :math:`\min(\lfloor f n + 1/2 \rfloor, n - 1)` randomly chosen posts in the test set
   (:math:`f` = ``test_fraction``): every user keeps at least one training post.
3. **Vocabulary** (:func:`build_vocabulary`), from the *training* posts only: id 0 is
   ``<pad>``, id 1 is ``<unk>``, then the ``reserved_words`` in the order given (present in
   the training posts or not), then the most frequent remaining training words, ties broken
   by the word (code-point order), up to ``vocab_size`` entries in all. A word outside the
   vocabulary (e.g. one that occurs only in test posts) maps to ``<unk>``. The vocabulary is
   smaller than ``vocab_size`` only when the training posts have fewer distinct words.
4. **Samples** (:func:`make_sequences`): within each post of tokens :math:`t_0 \dots
   t_{n-1}`, every position :math:`i \ge 1` gives one sample: input the
   ``sequence_length`` tokens before :math:`t_i`, left-padded with ``<pad>`` at the start of
   the post; label :math:`t_i` (which may be ``<unk>``). Windows never cross posts, and a
   post of fewer than two tokens gives no sample.

Trigger representability
------------------------
A backdoor such as "pasta from astoria is delicious" needs each of its words in the
vocabulary. ``reserved_words`` guarantees it: those words always get ids 2, 3, ..., even when
they are rare or absent in the training posts. ``fedshield/conf/dataset/reddit.yaml`` reserves the words
of ``fedshield/conf/attack/text_backdoor.yaml``, and the attack rebuilds the same vocabulary with
:func:`reddit_vocabulary` (cached, and deterministic in its arguments and the files).

Bagdasaryan, Veit, Hua, Estrin, Shmatikov. "How To Backdoor Federated Learning." AISTATS 2020.
https://arxiv.org/abs/1807.00459
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedshield.data.base import ArrayDataset, DatasetError, data_folder
from fedshield.task.determinism import derive_seed

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1
SPECIAL_TOKENS = (PAD, UNK)

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

Posts = tuple[tuple[str, ...], ...]


def tokenize(text: str) -> list[str]:
    """Lowercased words of ``text``: letters and digits, with internal apostrophes kept.

    >>> tokenize("Pasta from Astoria's, is DELICIOUS!")
    ['pasta', 'from', "astoria's", 'is', 'delicious']
    """
    return _WORD.findall(text.lower())


class Vocabulary(Mapping[str, int]):
    """Word to id, ``<pad>`` = 0 and ``<unk>`` = 1 first; a read-only mapping.

    Parameters
    ----------
    words : sequence of str
        The words in id order; must start with ``<pad>``, ``<unk>`` and hold no repeats.
    """

    def __init__(self, words: Sequence[str]) -> None:
        words = tuple(words)
        if words[:2] != SPECIAL_TOKENS:
            raise DatasetError(f"a vocabulary must start with {SPECIAL_TOKENS}; got {words[:2]}")
        index = {word: position for position, word in enumerate(words)}
        if len(index) != len(words):
            raise DatasetError("a vocabulary must not repeat a word")
        self._words = words
        self._index = index

    @property
    def words(self) -> tuple[str, ...]:
        """The words in id order."""
        return self._words

    def __getitem__(self, word: str) -> int:
        return self._index[word]

    def __iter__(self) -> Iterator[str]:
        return iter(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Vocabulary):
            return self._words == other._words
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash(self._words)

    def __repr__(self) -> str:
        head = ", ".join(self._words[:6])
        return f"Vocabulary({len(self)} words: {head}{', ...' if len(self) > 6 else ''})"

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """int64 ids of ``tokens``; a word outside the vocabulary becomes ``<unk>`` (1)."""
        return np.fromiter((self._index.get(token, UNK_ID) for token in tokens), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The words of ``ids``."""
        return [self._words[int(i)] for i in ids]


def check_reserved_words(reserved_words: Iterable[str] | None) -> tuple[str, ...]:
    """``reserved_words`` as a tuple of distinct tokens (lowercased, first occurrence kept).

    Raises
    ------
    DatasetError
        If it is a single string, or an entry is not a string that :func:`tokenize` reads as
        exactly one word.
    """
    if reserved_words is None:
        return ()
    if isinstance(reserved_words, str):
        raise DatasetError(f"dataset.reserved_words must be a list of words, not a string; got {reserved_words!r}")
    result: list[str] = []
    for word in reserved_words:
        if not isinstance(word, str) or tokenize(word) != [word.lower()]:
            raise DatasetError(
                "dataset.reserved_words must hold single words as the tokenizer reads them "
                f"(letters, digits, internal apostrophes); got {word!r}"
            )
        if word.lower() not in result:
            result.append(word.lower())
    return tuple(result)


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise DatasetError(f"{name} must be an integer >= {minimum}; got {name}={value!r}")
    return int(value)


def _check_test_fraction(test_fraction: object) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float) or not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"dataset.test_fraction must be in (0, 1); got {test_fraction!r}")
    return float(test_fraction)


def build_vocabulary(
    posts: Iterable[Sequence[str]], *, vocab_size: int, reserved_words: Iterable[str] | None = ()
) -> Vocabulary:
    """``<pad>``, ``<unk>``, the reserved words, then the most frequent words of ``posts``.

    Ties in frequency are broken by the word in code-point order, so the result does not
    depend on the order of ``posts``.

    Parameters
    ----------
    posts : iterable of sequences of str
        Tokenized (training) posts.
    vocab_size : int
        Largest number of entries, the two special tokens included; ``>= 3``.
    reserved_words : iterable of str
        Words that always get ids ``2, 3, ...`` in this order (see :func:`check_reserved_words`).

    Raises
    ------
    DatasetError
        If ``vocab_size < 3`` or the reserved words do not fit in ``vocab_size - 2`` slots.
    """
    vocab_size = _check_int("dataset.vocab_size", vocab_size, minimum=3)
    reserved = check_reserved_words(reserved_words)
    if len(reserved) > vocab_size - len(SPECIAL_TOKENS):
        raise DatasetError(
            f"dataset.reserved_words holds {len(reserved)} words but dataset.vocab_size="
            f"{vocab_size} leaves {vocab_size - len(SPECIAL_TOKENS)} slots after {SPECIAL_TOKENS}"
        )
    counts: Counter[str] = Counter()
    for post in posts:
        counts.update(post)
    taken = set(reserved) | set(SPECIAL_TOKENS)
    ranked = sorted((word for word in counts if word not in taken), key=lambda w: (-counts[w], w))
    free = vocab_size - len(SPECIAL_TOKENS) - len(reserved)
    return Vocabulary(SPECIAL_TOKENS + reserved + tuple(ranked[:free]))


def make_sequences(
    posts: Iterable[np.ndarray], *, sequence_length: int, pad_id: int = PAD_ID
) -> tuple[np.ndarray, np.ndarray]:
    """Next-word samples of encoded posts: left-padded windows and the word that follows.

    A post ``t`` of length ``n`` gives ``n - 1`` samples; sample ``i - 1`` (``i >= 1``) has
    input ``t[i - sequence_length : i]``, left-padded with ``pad_id`` where that reaches
    before the post, and label ``t[i]``.

    Returns
    -------
    (x, y)
        int64 arrays of shapes ``(num_samples, sequence_length)`` and ``(num_samples,)``.

    Raises
    ------
    DatasetError
        If ``sequence_length < 1``.
    """
    sequence_length = _check_int("dataset.sequence_length", sequence_length, minimum=1)
    inputs, labels = [], []
    for post in posts:
        ids = np.asarray(post, dtype=np.int64)
        if len(ids) < 2:
            continue
        padded = np.concatenate([np.full(sequence_length, pad_id, dtype=np.int64), ids])
        windows = np.lib.stride_tricks.sliding_window_view(padded, sequence_length)
        inputs.append(windows[1 : len(ids)])
        labels.append(ids[1:])
    if not inputs:
        return np.zeros((0, sequence_length), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.ascontiguousarray(np.concatenate(inputs)), np.concatenate(labels)


@dataclass(frozen=True, eq=False)
class RedditCorpus:
    """Tokenized posts of every user, split into train and test.

    Attributes
    ----------
    user_names : tuple of str
        The distinct user ids, sorted; a user's *index* is its position here.
    train_posts, test_posts : tuple of tuples of tuples of str
        ``train_posts[u]`` are the tokenized training posts of user ``user_names[u]``, in
        reading order (likewise the test posts).
    """

    user_names: tuple[str, ...]
    train_posts: tuple[Posts, ...]
    test_posts: tuple[Posts, ...]

    @property
    def num_users(self) -> int:
        return len(self.user_names)

    def training_token_lists(self) -> Iterator[tuple[str, ...]]:
        """Every training post of every user (what the vocabulary is built from)."""
        for posts in self.train_posts:
            yield from posts


def _jsonl_files(root: Path) -> tuple[Path, ...]:
    data_folder(root, dataset="reddit", holds="*.jsonl post files")
    files = tuple(sorted(path for path in root.rglob("*.jsonl") if path.is_file()))
    if not files:
        raise DatasetError(
            f'dataset.root={str(root)!r} holds no *.jsonl files; expected lines of {{"user": "<id>", "text": "<post>"}}'
        )
    return files


def _fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime) of every post file: a changed folder is read again."""
    return tuple(
        (str(path.relative_to(root)), path.stat().st_size, path.stat().st_mtime_ns) for path in _jsonl_files(root)
    )


def _read_posts(root: Path) -> dict[str, list[str]]:
    posts: dict[str, list[str]] = {}
    for path in _jsonl_files(root):
        with path.open("rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                where = f"{path}:{line_number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DatasetError(f"{where}: not UTF-8 ({error.reason})") from error
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DatasetError(f"{where}: not valid JSON ({error.msg})") from error
                if not isinstance(record, dict):
                    raise DatasetError(f"{where}: expected a JSON object; got {type(record).__name__}")
                user, text = record.get("user"), record.get("text")
                if isinstance(user, bool) or not isinstance(user, str | int) or user == "":
                    raise DatasetError(f"{where}: 'user' must be a non-empty string or integer; got {user!r}")
                if not isinstance(text, str):
                    raise DatasetError(f"{where}: 'text' must be a string; got {text!r}")
                posts.setdefault(str(user), []).append(text)
    return posts


def _split_user(posts: list[str], *, user: str, test_fraction: float, seed: int) -> tuple[Posts, Posts]:
    tokens = [tuple(tokenize(text)) for text in posts]
    num_test = min(int(np.floor(test_fraction * len(tokens) + 0.5)), len(tokens) - 1)
    rng = np.random.default_rng(derive_seed("reddit-split", seed, user))
    is_test = np.zeros(len(tokens), dtype=bool)
    is_test[rng.permutation(len(tokens))[:num_test]] = True
    train = tuple(post for post, test in zip(tokens, is_test, strict=True) if not test)
    test = tuple(post for post, test in zip(tokens, is_test, strict=True) if test)
    return train, test


@functools.lru_cache(maxsize=4)
def _cached_corpus(root: Path, fingerprint: object, test_fraction: float, seed: int) -> RedditCorpus:
    del fingerprint  # part of the cache key only
    posts = _read_posts(root)
    names = tuple(sorted(posts))
    splits = [_split_user(posts[name], user=name, test_fraction=test_fraction, seed=seed) for name in names]
    return RedditCorpus(
        user_names=names,
        train_posts=tuple(train for train, _ in splits),
        test_posts=tuple(test for _, test in splits),
    )


def _resolve_root(root: str | Path) -> Path:
    return Path(str(root)).expanduser().resolve()


def read_reddit_corpus(root: str | Path, *, test_fraction: float = 0.2, seed: int = 0) -> RedditCorpus:
    """Read, tokenize and split the posts under ``root`` (see the module docstring).

    Cached on the resolved path, the files' names, sizes and modification times, and the
    arguments.

    Raises
    ------
    DatasetError
        If ``root`` is not a folder, holds no ``*.jsonl`` file, or a line is malformed (the
        message names the file and line), or ``test_fraction`` is outside (0, 1).
    """
    test_fraction = _check_test_fraction(test_fraction)
    seed = _check_int("dataset.seed", seed, minimum=0)
    path = _resolve_root(root)
    return _cached_corpus(path, _fingerprint(path), test_fraction, seed)


@functools.lru_cache(maxsize=8)
def _cached_vocabulary(
    root: Path,
    fingerprint: object,
    test_fraction: float,
    seed: int,
    vocab_size: int,
    reserved: tuple[str, ...],
) -> Vocabulary:
    corpus = _cached_corpus(root, fingerprint, test_fraction, seed)
    return build_vocabulary(corpus.training_token_lists(), vocab_size=vocab_size, reserved_words=reserved)


def reddit_vocabulary(
    root: str | Path,
    vocab_size: int = 10_000,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    reserved_words: Iterable[str] | None = (),
) -> Vocabulary:
    """The vocabulary :func:`load_reddit` builds with the same arguments (cached).

    A backdoor attack calls it with the dataset's settings to encode its trigger. Raises
    :class:`DatasetError` as :func:`read_reddit_corpus` and :func:`build_vocabulary` do.
    """
    test_fraction = _check_test_fraction(test_fraction)
    seed = _check_int("dataset.seed", seed, minimum=0)
    vocab_size = _check_int("dataset.vocab_size", vocab_size, minimum=3)
    reserved = check_reserved_words(reserved_words)
    path = _resolve_root(root)
    return _cached_vocabulary(path, _fingerprint(path), test_fraction, seed, vocab_size, reserved)


def _encode_split(
    per_user: Sequence[Posts], vocabulary: Vocabulary, *, sequence_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inputs, labels, users = [], [], []
    for user, posts in enumerate(per_user):
        x, y = make_sequences((vocabulary.encode(post) for post in posts), sequence_length=sequence_length)
        inputs.append(x)
        labels.append(y)
        users.append(np.full(len(y), user, dtype=np.int64))
    return np.concatenate(inputs), np.concatenate(labels), np.concatenate(users)


def load_reddit(
    *,
    root: str | Path,
    vocab_size: int = 10_000,
    sequence_length: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
    reserved_words: Iterable[str] | None = (),
    **_: object,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Next-word ``(train, test)`` datasets of the posts under ``root``.

    Returns
    -------
    (train, test) : ArrayDataset
        ``x`` int64 token ids ``(num_samples, sequence_length)``, ``y`` int64 next-word ids,
        ``num_classes`` the vocabulary size, ``users`` the int64 index of each sample's user
        in :attr:`RedditCorpus.user_names` (``partition=natural`` makes one client per user
        with training samples). The vocabulary is :func:`reddit_vocabulary` with the same
        arguments.

    Raises
    ------
    DatasetError
        For a missing folder, no ``*.jsonl`` files, a malformed line (file and line named),
        ``vocab_size < 3``, ``sequence_length < 1``, too many reserved words, or an empty
        train or test set.
    """
    sequence_length = _check_int("dataset.sequence_length", sequence_length, minimum=1)
    vocab_size = _check_int("dataset.vocab_size", vocab_size, minimum=3)
    corpus = read_reddit_corpus(root, test_fraction=test_fraction, seed=seed)
    vocabulary = reddit_vocabulary(
        root, vocab_size, test_fraction=test_fraction, seed=seed, reserved_words=reserved_words
    )
    datasets = []
    for split, per_user in (("train", corpus.train_posts), ("test", corpus.test_posts)):
        x, y, users = _encode_split(per_user, vocabulary, sequence_length=sequence_length)
        if len(y) == 0:
            raise DatasetError(
                f"dataset.root={str(root)!r} gives no {split} samples: the {split} posts hold "
                "no post of two or more words (use more posts or another test_fraction)"
            )
        datasets.append(ArrayDataset(x, y, len(vocabulary), users=users))
    return datasets[0], datasets[1]


__all__ = [
    "PAD",
    "PAD_ID",
    "UNK",
    "UNK_ID",
    "RedditCorpus",
    "Vocabulary",
    "build_vocabulary",
    "check_reserved_words",
    "load_reddit",
    "make_sequences",
    "read_reddit_corpus",
    "reddit_vocabulary",
    "tokenize",
]
