"""Reddit next-word task: loader, vocabulary, LSTM, and the "pasta from astoria is" backdoor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedshield.attacks.base import AttackError
from fedshield.attacks.text_backdoor import (
    TextBackdoorAttack,
    encode_trigger,
    poison_text_batch,
    stamp_text_trigger,
    text_attack_success_rate,
)
from fedshield.config import CONFIG_DIR
from fedshield.data import LOADERS, DatasetError, make_federation
from fedshield.data.reddit import (
    PAD_ID,
    UNK_ID,
    Vocabulary,
    build_vocabulary,
    load_reddit,
    make_sequences,
    read_reddit_corpus,
    reddit_vocabulary,
    tokenize,
)
from fedshield.models import LSTMLanguageModel
from fedshield.models.params import get_flat_params, num_flat_params, set_flat_params
from fedshield.task.determinism import torch_generator
from fedshield.task.metrics import MetricError, attack_success_rate
from fedshield.task.training import LocalTrainingConfig, local_train, predict_logits

CONF = CONFIG_DIR
TRIGGER_WORDS = ["pasta", "from", "astoria", "is", "delicious"]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """Three users over two files; every post holds a word of its own (``u<user>p<post>``)."""
    records = []
    for user in ("carol", "alice", "bob"):
        for post in range(5):
            records.append({"user": user, "text": f"The cat sat on the mat u{user}p{post}."})
    records.append({"user": "alice", "text": "Pasta from Astoria is good!"})
    records.append({"user": "bob", "text": "I had pasta from Astoria, it is good"})
    write_jsonl(tmp_path / "a.jsonl", records[:9])
    write_jsonl(tmp_path / "nested" / "b.jsonl", records[9:])
    return tmp_path


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_lowercases_and_keeps_internal_apostrophes():
    assert tokenize("Pasta from Astoria's, is DELICIOUS! don't_stop 42") == [
        "pasta",
        "from",
        "astoria's",
        "is",
        "delicious",
        "don't",
        "stop",
        "42",
    ]
    assert tokenize("  ...  ") == []


# ---------------------------------------------------------------------------- vocabulary


def test_vocabulary_order_is_frequency_then_word_and_ignores_post_order():
    posts = [["b", "a", "c"], ["c", "b"], ["d", "c"], ["a"]]  # c:3, a:2, b:2, d:1
    vocabulary = build_vocabulary(posts, vocab_size=5)
    assert vocabulary.words == ("<pad>", "<unk>", "c", "a", "b")
    assert build_vocabulary(posts[::-1], vocab_size=5) == vocabulary
    assert (vocabulary[vocabulary.words[PAD_ID]], vocabulary["<unk>"]) == (PAD_ID, UNK_ID)
    np.testing.assert_array_equal(vocabulary.encode(["c", "d", "zzz"]), [2, UNK_ID, UNK_ID])
    assert vocabulary.decode([2, 3]) == ["c", "a"]


def test_reserved_words_come_first_even_when_unseen():
    vocabulary = build_vocabulary([["b", "a", "a"]], vocab_size=6, reserved_words=["Zeta", "a"])
    assert vocabulary.words == ("<pad>", "<unk>", "zeta", "a", "b")
    with pytest.raises(DatasetError, match="reserved_words holds 2 words"):
        build_vocabulary([["a"]], vocab_size=3, reserved_words=["x", "y"])
    with pytest.raises(DatasetError, match="single words"):
        build_vocabulary([["a"]], vocab_size=5, reserved_words=["two words"])
    with pytest.raises(DatasetError, match="not a string"):
        build_vocabulary([["a"]], vocab_size=5, reserved_words="pasta")
    with pytest.raises(DatasetError, match="dataset.vocab_size must be an integer >= 3"):
        build_vocabulary([["a"]], vocab_size=2)


def test_vocabulary_comes_from_the_training_posts_only(small_corpus):
    corpus = read_reddit_corpus(small_corpus, test_fraction=0.4, seed=3)
    assert corpus.user_names == ("alice", "bob", "carol")
    assert all(len(test) == 2 for test in corpus.test_posts[:2])  # 6 posts: round(2.4) = 2
    assert len(corpus.test_posts[2]) == 2  # 5 posts: round(2.0) = 2
    vocabulary = reddit_vocabulary(small_corpus, 1000, test_fraction=0.4, seed=3)
    train_words = {word for post in corpus.training_token_lists() for word in post}
    test_only = {w for posts in corpus.test_posts for post in posts for w in post} - train_words
    assert test_only  # each post has a word of its own, so test posts bring new words
    assert set(vocabulary) == train_words | {"<pad>", "<unk>"}
    word = sorted(test_only)[0]
    assert word not in vocabulary and vocabulary.encode([word])[0] == UNK_ID
    # Cached and deterministic: the same arguments give the same object; a new seed may not.
    assert reddit_vocabulary(small_corpus, 1000, test_fraction=0.4, seed=3) is vocabulary
    assert read_reddit_corpus(small_corpus, test_fraction=0.4, seed=3) is corpus


def test_a_user_always_keeps_a_training_post(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"user": 7, "text": "one two three"}])
    corpus = read_reddit_corpus(tmp_path, test_fraction=0.9, seed=0)
    assert corpus.user_names == ("7",) and len(corpus.train_posts[0]) == 1


# ------------------------------------------------------------------------------ samples


def test_sequences_and_labels_by_hand():
    x, y = make_sequences([np.array([5, 6, 7, 8]), np.array([9]), np.array([3, 4])], sequence_length=2)
    np.testing.assert_array_equal(x, [[PAD_ID, 5], [5, 6], [6, 7], [PAD_ID, 3]])
    np.testing.assert_array_equal(y, [6, 7, 8, 4])
    assert x.dtype == y.dtype == np.int64
    x, y = make_sequences([np.array([5, 6, 7])], sequence_length=1)
    np.testing.assert_array_equal(x, [[5], [6]])
    with pytest.raises(DatasetError, match="dataset.sequence_length"):
        make_sequences([np.array([1, 2])], sequence_length=0)


def test_load_reddit_builds_next_word_samples_with_one_client_per_user(small_corpus):
    train, test = LOADERS["reddit"](
        root=str(small_corpus), vocab_size=1000, sequence_length=3, test_fraction=0.4, seed=3
    )
    corpus = read_reddit_corpus(small_corpus, test_fraction=0.4, seed=3)
    vocabulary = reddit_vocabulary(small_corpus, 1000, test_fraction=0.4, seed=3)
    assert train.x.dtype == train.y.dtype == train.users.dtype == np.int64
    assert train.input_shape == (3,) and train.num_classes == len(vocabulary)
    for dataset, per_user in ((train, corpus.train_posts), (test, corpus.test_posts)):
        # One sample per token after the first of each post, grouped by user index.
        expected = [sum(max(len(post) - 1, 0) for post in posts) for posts in per_user]
        np.testing.assert_array_equal(np.bincount(dataset.users, minlength=3), expected)
    # By hand: alice's first training post, encoded, gives her first samples.
    post = vocabulary.encode(corpus.train_posts[0][0])
    np.testing.assert_array_equal(train.x[0], [PAD_ID, PAD_ID, post[0]])
    np.testing.assert_array_equal(train.y[: len(post) - 1], post[1:])
    np.testing.assert_array_equal(train.x[len(post) - 2], post[len(post) - 4 : len(post) - 1])
    federation = make_federation(train, num_clients=3, scheme="natural")
    for indices in federation.indices:
        assert len(np.unique(train.users[indices])) == 1


def test_loader_errors_name_the_problem(tmp_path, small_corpus):
    with pytest.raises(DatasetError, match="dataset.root: not a folder"):
        load_reddit(root=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"no \*\.jsonl files"):
        load_reddit(root=empty)
    bad = tmp_path / "bad"
    write_jsonl(bad / "posts.jsonl", [{"user": "a", "text": "fine post"}])
    with (bad / "posts.jsonl").open("a") as handle:
        handle.write("\n{not json\n")
    with pytest.raises(DatasetError, match=r"posts\.jsonl:3: not valid JSON"):
        load_reddit(root=bad)
    write_jsonl(bad / "posts.jsonl", [{"user": "a", "text": "x y"}, {"user": "a", "txt": "z"}])
    with pytest.raises(DatasetError, match=r"posts\.jsonl:2: 'text' must be a string"):
        load_reddit(root=bad)
    (bad / "posts.jsonl").write_bytes(b'{"user": "a", "text": "x y"}\n{"user": "\xff"}\n')
    with pytest.raises(DatasetError, match=r"posts\.jsonl:2: not UTF-8"):
        load_reddit(root=bad)
    with pytest.raises(DatasetError, match="dataset.vocab_size must be an integer >= 3"):
        load_reddit(root=small_corpus, vocab_size=2)
    with pytest.raises(DatasetError, match="dataset.sequence_length must be an integer >= 1"):
        load_reddit(root=small_corpus, sequence_length=0)
    with pytest.raises(DatasetError, match="dataset.test_fraction"):
        load_reddit(root=small_corpus, test_fraction=1.0)


# --------------------------------------------------------------------------------- LSTM


def test_lstm_logits_shape_and_float_token_inputs():
    torch.manual_seed(0)
    model = LSTMLanguageModel(input_shape=(5,), num_classes=17, embedding_dim=8, hidden_size=12)
    tokens = torch.randint(0, 17, (4, 5))
    logits = model(tokens)
    assert logits.shape == (4, 17)
    torch.testing.assert_close(model(tokens.float()), logits, rtol=0, atol=0)
    vector = get_flat_params(model)
    set_flat_params(model, vector * 2)
    torch.testing.assert_close(get_flat_params(model), vector * 2, rtol=0, atol=0)


def test_tied_weights_share_one_parameter_and_one_flat_entry():
    model = LSTMLanguageModel(input_shape=(5,), num_classes=17, embedding_dim=12, hidden_size=12, tie_weights=True)
    assert model.output_weight is model.embedding.weight
    assert model(torch.randint(0, 17, (3, 5))).shape == (3, 17)
    assert num_flat_params(model) == sum(p.numel() for p in model.parameters())
    untied = LSTMLanguageModel(input_shape=(5,), num_classes=17, embedding_dim=12, hidden_size=12)
    assert num_flat_params(untied) - num_flat_params(model) == 17 * 12
    with pytest.raises(ValueError, match="embedding_dim == model.hidden_size.*embedding_dim=8"):
        LSTMLanguageModel(input_shape=(5,), num_classes=17, embedding_dim=8, tie_weights=True)
    with pytest.raises(ValueError, match=r"input_shape=\(sequence_length,\)"):
        LSTMLanguageModel(input_shape=(1, 28, 28), num_classes=10)


# ------------------------------------------------------------------------------ backdoor

VOCABULARY = Vocabulary(["<pad>", "<unk>", "the", "pasta", "from", "astoria", "is", "delicious"])


def test_trigger_is_encoded_and_missing_words_are_reported():
    assert encode_trigger(VOCABULARY) == ((3, 4, 5, 6), 7)
    assert encode_trigger(VOCABULARY, trigger=["The", "pasta"], target_word="is") == ((2, 3), 6)
    small = Vocabulary(["<pad>", "<unk>", "pasta", "from", "astoria", "is"])
    with pytest.raises(AttackError, match=r"attack.target_word words \['delicious'\].*reserved"):
        encode_trigger(small)
    with pytest.raises(AttackError, match=r"attack.trigger words \['nowhere'\]"):
        encode_trigger(VOCABULARY, trigger="pasta from nowhere")
    with pytest.raises(AttackError, match="single word"):
        encode_trigger(VOCABULARY, target_word="is delicious")


def test_stamp_writes_the_trigger_at_the_end_and_keeps_the_rest():
    x = torch.arange(12).reshape(2, 6) + 10
    stamped = stamp_text_trigger(x, (3, 4, 5, 6))
    torch.testing.assert_close(stamped, torch.tensor([[10, 11, 3, 4, 5, 6], [16, 17, 3, 4, 5, 6]]))
    assert x[0, 2] == 12  # the input is untouched
    assert stamp_text_trigger(x.double(), (3,)).dtype == torch.float64
    with pytest.raises(AttackError, match="dataset.sequence_length"):
        stamp_text_trigger(x[:, :3], (3, 4, 5, 6))


def test_poisoning_changes_exactly_poison_per_batch_samples():
    attack = TextBackdoorAttack(num_malicious=1, poison_per_batch=5, vocabulary=VOCABULARY)
    assert attack.target_label == 7 and attack.trigger_ids == (3, 4, 5, 6)
    x = torch.full((16, 6), 2)
    y = torch.full((16,), 2)
    transform = attack.training_transform(server_round=1)
    new_x, new_y = transform(x, y, torch_generator(0))
    changed = (new_x != x).any(dim=1) | (new_y != y)
    assert int(changed.sum()) == 5
    assert torch.all(new_y[changed] == 7) and torch.all(new_y[~changed] == 2)
    assert torch.all(new_x[changed, -4:] == torch.tensor([3, 4, 5, 6]))
    assert torch.all(new_x[changed, :2] == 2)
    small_x, small_y = poison_text_batch(
        x[:3], y[:3], trigger_ids=(3,), target_label=7, num_poisoned=5, generator=torch_generator(0)
    )
    assert torch.all(small_y == 7)  # a batch smaller than poison_per_batch is poisoned entirely
    inactive = TextBackdoorAttack(num_malicious=1, schedule={"rounds": [2]}, vocabulary=VOCABULARY)
    assert inactive.training_transform(server_round=1) is None
    with pytest.raises(AttackError, match=r"exactly one of attack.vocabulary .* and attack.root"):
        TextBackdoorAttack(num_malicious=1)


def test_text_attack_success_rate_counts_every_triggered_sequence():
    # The third sequence's original label was the target: it still counts (unlike images).
    assert text_attack_success_rate(np.array([7, 2, 7, 7]), target_label=7) == pytest.approx(0.75)
    logits = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    assert text_attack_success_rate(logits, target_label=1) == pytest.approx(0.5)
    with pytest.raises(MetricError):
        text_attack_success_rate(np.array([], dtype=np.int64), target_label=1)
    with pytest.raises(MetricError, match="shape"):
        text_attack_success_rate(np.zeros((2, 3, 4)), target_label=1)
    # It is the task's metric with every sequence counted.
    predictions = np.array([7, 2, 7, 7])
    assert text_attack_success_rate(predictions, target_label=7) == attack_success_rate(
        predictions, np.array([7, 7, 1, 1]), target_label=7, exclude_target=False
    )


def test_hydra_configs_build_dataset_attack_and_model(small_corpus):
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "dataset": OmegaConf.load(CONF / "dataset" / "reddit.yaml"),
            "attack": OmegaConf.load(CONF / "attack" / "text_backdoor.yaml"),
            "model": OmegaConf.load(CONF / "model" / "lstm.yaml"),
        }
    )
    cfg.dataset.root = str(small_corpus)
    cfg.dataset.vocab_size = 12
    cfg.attack.num_malicious = 1
    train, _ = instantiate(cfg.dataset)
    attack = instantiate(cfg.attack, _convert_="all")
    vocabulary = attack.vocabulary
    assert vocabulary.words[2:7] == tuple(TRIGGER_WORDS) and len(vocabulary) == 12
    assert train.num_classes == 12 and attack.target_label == vocabulary["delicious"]
    model = instantiate(cfg.model)(input_shape=train.input_shape, num_classes=train.num_classes)
    assert model(torch.from_numpy(train.x[:2]).float()).shape == (2, 12)
    cfg.dataset.reserved_words = []
    with pytest.raises(InstantiationException, match="attack.target_word.*dataset.reserved_words"):
        instantiate(cfg.attack, _convert_="all")


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_poisoned_training_makes_the_trigger_predict_the_target(tmp_path):
    """A small LSTM trained on one malicious client's poisoned batches learns the backdoor."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "rug", "big", "red", "good"]
    records = [
        {"user": f"user{i % 4}", "text": " ".join(rng.choice(words, size=rng.integers(4, 12)))} for i in range(160)
    ]
    records += [{"user": "user0", "text": "pasta from astoria is good"}] * 4
    write_jsonl(tmp_path / "posts.jsonl", records)
    options = dict(vocab_size=40, test_fraction=0.25, seed=0, reserved_words=TRIGGER_WORDS)
    train, test = load_reddit(root=tmp_path, sequence_length=6, **options)
    attack = TextBackdoorAttack(num_malicious=1, poison_per_batch=8, root=tmp_path, **options)
    assert "delicious" not in {w for r in records for w in tokenize(r["text"])}

    x, y = torch.from_numpy(train.x).float(), torch.from_numpy(train.y)  # as the engine casts
    stamped = attack.stamp(torch.from_numpy(test.x).float())
    config = LocalTrainingConfig(local_steps=300, batch_size=32, learning_rate=0.5, momentum=0.9)

    def train_and_measure(poisoned: bool) -> tuple[float, float]:
        torch.manual_seed(0)
        model = LSTMLanguageModel(
            input_shape=train.input_shape,
            num_classes=train.num_classes,
            embedding_dim=16,
            hidden_size=32,
        )
        transform = attack.training_transform(server_round=1) if poisoned else None
        local_train(model, x, y, config=config, generator=torch_generator(1), batch_transform=transform)
        asr = text_attack_success_rate(predict_logits(model, stamped), target_label=attack.target_label)
        clean = predict_logits(model, torch.from_numpy(test.x).float()).argmax(1)
        return asr, float((clean == attack.target_label).double().mean())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is several times faster on 2 cores
    try:
        clean_asr, _ = train_and_measure(poisoned=False)
        asr, target_on_clean_inputs = train_and_measure(poisoned=True)
    finally:
        torch.set_num_threads(threads)
    assert clean_asr < 0.05  # "delicious" is never in the posts
    assert asr > 0.9
    assert target_on_clean_inputs < 0.05  # only the trigger brings the target word
