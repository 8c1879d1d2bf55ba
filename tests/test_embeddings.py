"""The embedding= group's vector options: word2vec (trained here, cached) and pretrained files."""

import struct
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from lmexp.schema import parse
from lmexp.data.tokenizers import Vocab
from lmexp.embeddings import EmbeddingContext, init_pretrained, init_word2vec
from lmexp.options.embedding import EMBEDDINGS, PretrainedEmbeddingConfig, Word2VecEmbeddingConfig
from lmexp.errors import ConfigError, UserError

WORDS = ["<unk>", "<eos>", "the", "cat", "Dog", "sat", "mat"]
VECTORS = {  # "Dog" is only present lowercased; "sat", "mat", <unk>, <eos> are missing
    "the": [0.5, -1.0, 2.0, 0.25],
    "cat": [1.5, 0.0, -0.5, 3.0],
    "dog": [-2.0, 1.0, 0.125, 0.75],
    "extra": [9.0, 9.0, 9.0, 9.0],
}


def write_text(path, vectors, header=True):
    lines = [f"{len(vectors)} {len(next(iter(vectors.values())))}"] if header else []
    lines += [" ".join([w, *map(str, v)]) for w, v in vectors.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_binary(path, vectors):
    size = len(next(iter(vectors.values())))
    data = f"{len(vectors)} {size}\n".encode()
    for w, v in vectors.items():
        data += w.encode() + b" " + struct.pack(f"<{size}f", *v) + b"\n"
    path.write_bytes(data)
    return path


WRITERS = {"word2vec": write_text, "word2vec_binary": write_binary,
           "glove": lambda p, v: write_text(p, v, header=False)}


def context(tmp_path, ids=None, tied=False):
    vocab = Vocab(list(WORDS))
    if ids is None:  # the=2 x4, cat=3 x2, Dog=4 x1, sat=5 x2, mat=6 x1, <eos>=1 x2: 12 tokens
        ids = [2, 3, 5, 2, 6, 1, 2, 4, 5, 2, 3, 1]
    return EmbeddingContext(vocab, np.asarray(ids, dtype=np.uint16), tmp_path / "cache", "corpus-key", tied=tied)


def embedding(width=4):
    torch.manual_seed(0)
    return nn.Embedding(len(WORDS), width)


def pretrained(tmp_path, fmt="word2vec", vectors=VECTORS, **kwargs):
    path = WRITERS[fmt](tmp_path / f"vectors.{fmt}", vectors)
    return PretrainedEmbeddingConfig(path=str(path), format=fmt, **kwargs)


@pytest.mark.parametrize("fmt", ["word2vec", "word2vec_binary", "glove"])
def test_rows_equal_the_file_vectors(tmp_path, fmt):
    config = pretrained(tmp_path, fmt)
    config.validate("embedding")
    emb = embedding()
    before = emb.weight.detach().clone()
    stats = init_pretrained(emb, config, context(tmp_path))
    for word in ("the", "cat"):
        assert torch.equal(emb.weight[WORDS.index(word)], torch.tensor(VECTORS[word]))
    for i in (0, 1, 4, 5, 6):  # unknown=random keeps the model's own rows
        assert torch.equal(emb.weight[i], before[i])
    assert stats["file_vectors"] == 4 and stats["vector_size"] == 4


def test_lowercase_lookup(tmp_path):
    emb = embedding()
    init_pretrained(emb, pretrained(tmp_path, lowercase_lookup=True), context(tmp_path))
    assert torch.equal(emb.weight[WORDS.index("Dog")], torch.tensor(VECTORS["dog"]))


def test_coverage_by_hand(tmp_path):
    # 3 of 7 rows found (the, cat, Dog via dog); tokens: the 4 + cat 2 + Dog 1 = 7 of 12
    stats = init_pretrained(embedding(), pretrained(tmp_path, lowercase_lookup=True), context(tmp_path))
    assert stats["vocab_coverage"] == pytest.approx(3 / 7)
    assert stats["token_coverage"] == pytest.approx(7 / 12)
    # without the lowercase lookup: 2 of 7 rows, 6 of 12 tokens
    stats = init_pretrained(embedding(), pretrained(tmp_path), context(tmp_path))
    assert stats["vocab_coverage"] == pytest.approx(2 / 7)
    assert stats["token_coverage"] == pytest.approx(6 / 12)


def test_a_low_coverage_is_warned_of(tmp_path, caplog):
    """Half the training tokens or more with a vector: said once, as usual. Less (characters,
    BPE pieces, or vectors of another language): warned of, with what to check."""
    init_pretrained(embedding(), pretrained(tmp_path), context(tmp_path))  # 6 of 12 tokens
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    sparse = [5, 6, 5, 6, 1, 2, 5, 6, 5, 6, 1, 5]  # the once in 12: sat, mat and <eos> have no vector
    init_pretrained(embedding(), pretrained(tmp_path, unknown="zero"), context(tmp_path, ids=sparse))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("embedding: only 8.3% of training tokens have a vector in ")
    assert warning.endswith("the rest start as embedding.unknown=zero; word vectors fit tokenizer=word's units "
                            "(embedding.lowercase_lookup=true helps when the vectors are lowercased)")
    caplog.clear()
    init_pretrained(embedding(), pretrained(tmp_path, lowercase_lookup=True), context(tmp_path, ids=sparse))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.endswith("word vectors fit tokenizer=word's units")  # the lookup is on already


def test_a_low_word2vec_coverage_points_at_min_count(tmp_path, caplog):
    """word2vec is trained on the run's own units: it covers little only where min_count leaves them out."""
    config = Word2VecEmbeddingConfig(epochs=1, min_count=3, workers=1)
    stats = init_word2vec(embedding(), config, context(tmp_path))  # of 12 tokens, only "the" (4) reaches 3
    assert stats["token_coverage"] == pytest.approx(4 / 12)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.endswith("embedding.unknown=random; lower embedding.min_count=3: word2vec leaves out units "
                            "seen fewer times")


def test_unknown_zero_and_mean(tmp_path):
    emb = embedding()
    init_pretrained(emb, pretrained(tmp_path, unknown="zero"), context(tmp_path))
    for i in (0, 1, 4, 5, 6):
        assert torch.equal(emb.weight[i], torch.zeros(4))
    emb = embedding()
    init_pretrained(emb, pretrained(tmp_path, unknown="mean"), context(tmp_path))
    mean = (torch.tensor(VECTORS["the"]) + torch.tensor(VECTORS["cat"])) / 2
    for i in (0, 1, 4, 5, 6):
        assert torch.allclose(emb.weight[i], mean)


def test_freeze_keeps_rows_while_the_model_trains(tmp_path):
    from lmexp.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "lstm", "tie_weights": False, "embedding_size": 4, "hidden_size": 8},
                        vocab_size=len(WORDS), dropout=0.0)
    init_pretrained(model.embedding, pretrained(tmp_path, freeze=True), context(tmp_path))
    emb_before = model.embedding.weight.detach().clone()
    other_before = model.decoder.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    ids = torch.tensor([[2, 3, 5, 2, 6, 1, 2, 4, 5, 2, 3, 1]])
    for _ in range(3):
        logits, _ = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(WORDS)), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not model.embedding.weight.requires_grad
    assert torch.equal(model.embedding.weight, emb_before)
    assert not torch.equal(model.decoder.weight, other_before)


def test_freeze_with_a_tied_output_layer_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="would also freeze the tied output layer; set model.tie_weights=false"):
        init_pretrained(embedding(), pretrained(tmp_path, freeze=True), context(tmp_path, tied=True))
    always = EmbeddingContext(Vocab(list(WORDS)), np.asarray([2, 3], dtype=np.uint16), tmp_path, "key", tied=True,
                              can_untie=False)  # GPT-2: no model.tie_weights to set
    with pytest.raises(ConfigError, match="tied output layer; this model always ties them, so set embedding.freeze"):
        init_pretrained(embedding(), pretrained(tmp_path, freeze=True), always)
    init_pretrained(embedding(), pretrained(tmp_path, freeze=False), context(tmp_path, tied=True))  # fine


@pytest.mark.parametrize("unknown", ["zero", "mean"])
def test_frozen_rows_without_vectors_must_stay_apart(tmp_path, unknown):
    # Frozen, zero or mean rows would make every word without a vector the same word for good.
    with pytest.raises(ConfigError, match=f"embedding.unknown={unknown}: must be random with embedding.freeze=true"):
        parse(PretrainedEmbeddingConfig, {"path": str(write_text(tmp_path / "v.txt", VECTORS)), "freeze": True,
                                          "unknown": unknown}, "embedding")
    parse(PretrainedEmbeddingConfig, {"path": str(tmp_path / "v.txt"), "freeze": False, "unknown": unknown},
          "embedding")


def test_size_mismatch_names_both_sizes_and_project_maps(tmp_path):
    with pytest.raises(ConfigError, match=r"size 4 but the embedding has width 6.*embedding.project=true"):
        init_pretrained(embedding(6), pretrained(tmp_path), context(tmp_path))
    sized = EmbeddingContext(Vocab(list(WORDS)), np.asarray([2, 3], dtype=np.uint16), tmp_path, "key",
                             sized_by="model.target_params")  # model.embedding_size alone would not change the width
    with pytest.raises(ConfigError, match=r"width 6; model.target_params chose the width: set embedding.project=true, "
                                          r"or drop model.target_params and set model.embedding_size=4"):
        init_pretrained(embedding(6), pretrained(tmp_path), sized)
    emb = embedding(6)
    torch.manual_seed(1)
    stats = init_pretrained(emb, pretrained(tmp_path, project=True, unknown="zero"), context(tmp_path))
    assert stats["projected_to"] == 6 and stats["vector_size"] == 4
    torch.manual_seed(1)
    projection = torch.randn(4, 6, dtype=torch.float64) / 2.0
    expected = (torch.tensor(VECTORS["the"], dtype=torch.float64) @ projection).float()
    assert torch.allclose(emb.weight[WORDS.index("the")], expected)
    assert torch.equal(emb.weight[0], torch.zeros(6))


@pytest.mark.parametrize("declared,written,message", [
    ("glove", "word2vec", "starts with a word2vec header line .* set embedding.format=word2vec"),
    ("word2vec", "glove", "has no word2vec header line .* check embedding.format=glove"),
    ("word2vec_binary", "word2vec", "is text, not format=word2vec_binary; set embedding.format=word2vec"),
    ("word2vec", "word2vec_binary", "cannot be read as format=word2vec: line 2 is not UTF-8 text"),
    ("glove", "word2vec_binary", "starts with a word2vec header line"),
])
def test_file_in_another_format(tmp_path, declared, written, message):
    path = WRITERS[written](tmp_path / "vectors", VECTORS)
    with pytest.raises(UserError, match=message) as e:
        init_pretrained(embedding(), PretrainedEmbeddingConfig(path=str(path), format=declared), context(tmp_path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", ["word2vec", "glove"])
def test_mixed_lengths(tmp_path, fmt):
    path = tmp_path / "vectors"
    lines = (["3 4"] if fmt == "word2vec" else []) + ["the 1 2 3 4", "cat 1 2 3", "dog 1 2 3 4"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="mixed lengths: line .* has 3 values, earlier lines 4") as e:
        init_pretrained(embedding(), PretrainedEmbeddingConfig(path=str(path), format=fmt), context(tmp_path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", ["word2vec", "word2vec_binary", "glove"])
def test_empty_and_missing_files(tmp_path, fmt):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="is empty"):
        init_pretrained(embedding(), PretrainedEmbeddingConfig(path=str(empty), format=fmt), context(tmp_path))
    missing = PretrainedEmbeddingConfig(path=str(tmp_path / "nope.txt"), format=fmt)
    with pytest.raises(UserError, match="embedding.path=.*nope.txt: must be an existing vectors file"):
        init_pretrained(embedding(), missing, context(tmp_path))
    missing.validate("embedding")  # settings are checked without opening files: a checkpoint loads where they are gone


@pytest.mark.parametrize("fmt,text,message", [
    # gensim read as many vectors as the header said and dropped the rest without a word
    ("word2vec", "1 4\nthe 1 2 3 4\ncat 1 2 3 4\n", "its header line says 1 vectors but 2 lines follow"),
    ("glove", "the 1 2 3 4\ncat 1 2 3 4\n\n", "line 3 is empty; remove the empty lines"),
    ("word2vec", "2 4\nthe 1 2 3 4\n\ncat 1 2 3 4\n", "line 3 is empty"),
    ("glove", "the\t1\t2\t3\t4\ncat\t1\t2\t3\t4\n", "line 1 separates its values with tabs"),
    ("word2vec", "2 4\nthe\t1\t2\t3\t4\ncat\t1\t2\t3\t4\n", "line 2 separates its values with tabs"),
])
def test_malformed_text_files_name_the_line(tmp_path, fmt, text, message):
    path = tmp_path / "vectors"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as e:
        init_pretrained(embedding(), PretrainedEmbeddingConfig(path=str(path), format=fmt), context(tmp_path))
    assert "\n" not in str(e.value)


def test_no_word_found(tmp_path):
    with pytest.raises(UserError, match="no word of the vocabulary has a vector"):
        init_pretrained(embedding(), pretrained(tmp_path, vectors={"zebra": [1.0, 2.0, 3.0, 4.0]}), context(tmp_path))


@pytest.mark.parametrize("cls,key,value,message", [
    (Word2VecEmbeddingConfig, "window", 0, "embedding.window=0: must be a positive integer"),
    (Word2VecEmbeddingConfig, "epochs", -1, "embedding.epochs=-1: must be a positive integer"),
    (Word2VecEmbeddingConfig, "workers", 0, "embedding.workers=0: must be a positive integer"),
    (Word2VecEmbeddingConfig, "vector_size", 0, "embedding.vector_size=0: must be a positive integer"),
    (Word2VecEmbeddingConfig, "sg", 2, "embedding.sg=2: must be 1 .skip-gram. or 0 .CBOW."),
    (Word2VecEmbeddingConfig, "unknown", "ones", "embedding.unknown=ones: must be one of random, zero, mean"),
    (PretrainedEmbeddingConfig, "format", "fasttext", "embedding.format=fasttext: must be one of word2vec"),
    (PretrainedEmbeddingConfig, "unknown", "ones", "embedding.unknown=ones: must be one of random, zero, mean"),
])
def test_validation(tmp_path, cls, key, value, message):
    node = {"path": str(write_text(tmp_path / "v.txt", VECTORS))} if cls is PretrainedEmbeddingConfig else {}
    with pytest.raises(ConfigError, match=message):
        parse(cls, {**node, key: value}, "embedding")


def test_path_is_required():
    with pytest.raises(ConfigError, match="embedding.path=null: must be the path of a vectors file"):
        parse(PretrainedEmbeddingConfig, {"name": "pretrained"}, "embedding")


def test_registered():
    for name, make, config in [("word2vec", init_word2vec, Word2VecEmbeddingConfig),
                               ("pretrained", init_pretrained, PretrainedEmbeddingConfig)]:
        entry = EMBEDDINGS.option(name)
        assert (entry.make, entry.config) == (make, config)


@pytest.fixture(scope="module")
def tiny_train(tmp_path_factory):
    """The first 20,000 training ids of the embedded corpus, as the word tokenizer makes them."""
    from lmexp.data.cache import tokenize_corpus
    from lmexp.data.corpora import DataConfig, load_tiny
    from lmexp.data.tokenizers import WordTokenizer, WordTokenizerConfig

    cache = tmp_path_factory.mktemp("w2v-cache")
    corpus = tokenize_corpus(load_tiny(DataConfig(), cache), WordTokenizer(WordTokenizerConfig()), cache)
    return corpus.vocab, np.asarray(corpus.ids["train"][:20_000]), cache, corpus.path.name


def test_word2vec_trains_caches_and_reuses(tiny_train):
    vocab, ids, cache, key = tiny_train
    ctx = EmbeddingContext(vocab, ids, cache, key)
    config = Word2VecEmbeddingConfig(epochs=2, window=3, unknown="zero")
    first = nn.Embedding(len(vocab), 16)
    start = time.perf_counter()
    stats1 = init_word2vec(first, config, ctx)
    trained_in = time.perf_counter() - start
    assert stats1["from_cache"] is False
    assert (cache / "embeddings").is_dir() and len(list((cache / "embeddings").glob("word2vec-*"))) == 1
    present = np.unique(ids[ids != vocab.eos])  # <eos> and words outside the first ids have no vector
    assert stats1["vocab_coverage"] == pytest.approx(len(present) / len(vocab))
    assert stats1["token_coverage"] == pytest.approx(np.isin(ids, present).mean())
    assert torch.equal(first.weight[vocab.eos], torch.zeros(16))

    second = nn.Embedding(len(vocab), 16)
    start = time.perf_counter()
    stats2 = init_word2vec(second, config, ctx)
    loaded_in = time.perf_counter() - start
    assert stats2["from_cache"] is True
    assert torch.equal(first.weight, second.weight)
    assert loaded_in < trained_in / 3
    assert {k: v for k, v in stats1.items() if k not in ("from_cache", "seconds")} == \
           {k: v for k, v in stats2.items() if k not in ("from_cache", "seconds")}

    # other settings, or another vector size, make another entry
    init_word2vec(nn.Embedding(len(vocab), 16), Word2VecEmbeddingConfig(epochs=1, window=3), ctx)
    stats = init_word2vec(nn.Embedding(len(vocab), 16), Word2VecEmbeddingConfig(epochs=1, window=3, vector_size=8,
                                                                                 project=True), ctx)
    assert stats["from_cache"] is False and stats["vector_size"] == 8 and stats["projected_to"] == 16
    assert len(list((cache / "embeddings").glob("word2vec-*"))) == 3
    with pytest.raises(ConfigError, match="size 8 but the embedding has width 16"):
        init_word2vec(nn.Embedding(len(vocab), 16), Word2VecEmbeddingConfig(epochs=1, window=3, vector_size=8), ctx)


def test_word2vec_is_reproducible_with_one_worker(tiny_train, tmp_path):
    """Same settings, two empty caches: the same vectors twice (workers=1 and a fixed seed);
    another seed gives other vectors, so the equality is not that of two empty tables."""
    vocab, ids, _, key = tiny_train
    tables = []
    for cache, seed in ((tmp_path / "a", 1), (tmp_path / "b", 1), (tmp_path / "c", 2)):
        table = nn.Embedding(len(vocab), 16)
        config = Word2VecEmbeddingConfig(epochs=2, window=3, unknown="zero", seed=seed)
        assert init_word2vec(table, config, EmbeddingContext(vocab, ids, cache, key))["from_cache"] is False
        tables.append(table.weight.detach())
    assert torch.allclose(tables[0], tables[1])
    assert not torch.allclose(tables[0], tables[2], atol=1e-3)


@pytest.mark.parametrize("override,says", [
    ("embedding=word2vec", "embedding=word2vec: would write over the token embedding of model.pretrained="),
    ("embedding=pretrained", "embedding=pretrained: would write over"),
    ("embedding.init_std=0.02", "embedding.init_std=0.02: would write over"),
])
def test_a_pretrained_gpt2s_embedding_is_not_written_over(tmp_path, override, says):
    """The embedding= option ran after GPT-2 loaded its folder, and replaced the folder's token
    embedding (and its tied output layer) without a word."""
    from lmexp.cli import compose
    from lmexp.config import load_settings

    folder = ["model=gpt2", f"model.pretrained={tmp_path}"]
    extra = [f"embedding.path={write_text(tmp_path / 'v.txt', VECTORS)}"] if override == "embedding=pretrained" else []
    with pytest.raises(ConfigError, match=says):
        load_settings(compose([*folder, override, *extra]))
    load_settings(compose(folder))  # fine-tuning the folder's own


def test_a_resumed_run_keeps_its_table_without_the_vectors_file(tmp_path, cache_dir):
    """A resumed run loads the table from its checkpoint: it neither reads the vectors file again
    (gone here) nor retrains word2vec, keeps the table frozen, and reports the first start's coverage."""
    from conftest import SMALL, train_here
    from lmexp.resume import ResumePoint
    from lmexp.train import train

    generator = np.random.default_rng(0)
    vectors = {w: generator.normal(size=32).round(4).tolist() for w in ["the", "of", "and", "in", "a", "to"]}
    path = write_text(tmp_path / "vectors.txt", vectors)
    run_dir = tmp_path / "run"
    first = train_here([*SMALL, "model.tie_weights=false", "embedding=pretrained", f"embedding.path={path}",
                        "embedding.freeze=true", "trainer.max_steps=2", "trainer.limit_val_batches=1",
                        "trainer.limit_test_batches=1"], run_dir, cache_dir)
    table = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    path.unlink()

    point = ResumePoint.find(str(run_dir))
    resumed = train(point.config([f"resume={run_dir}", "trainer.max_steps=4"]), point.run_dir)
    assert resumed["status"] == "finished" and resumed["steps"] == 4
    coverage = {k: v for k, v in first.items() if k.startswith("embedding_") and k != "embedding_seconds"}
    assert coverage["embedding_vocab_coverage"] > 0 and coverage["embedding_file_vectors"] == 6
    assert {k: resumed[k] for k in coverage} == coverage
    after = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(after["model.embedding.weight"], table["model.embedding.weight"])  # still frozen
    assert not torch.equal(after["model.decoder.weight"], table["model.decoder.weight"])  # and training went on


# --- mutation round 7 (2026-12-01): what the embeddings' tests missed --------------------------

W2V_WORDS = ["<unk>", "<eos>", "the", "cat", "sat", "mat"]


def w2v_context(tmp_path, ids):
    return EmbeddingContext(Vocab(list(W2V_WORDS)), np.asarray(ids, dtype=np.uint16), tmp_path / "cache", "key")


def test_word2vec_cache_entries_differ_by_the_width_they_were_trained_at(tmp_path):
    """vector_size=null trains at the embedding's width: a wider table is another entry, not a refusal."""
    ctx = w2v_context(tmp_path, [2, 3, 4, 1, 2, 5, 1] * 20)
    config = Word2VecEmbeddingConfig(epochs=1, window=2)
    assert init_word2vec(nn.Embedding(6, 8), config, ctx)["vector_size"] == 8
    stats = init_word2vec(nn.Embedding(6, 16), config, ctx)
    assert stats["from_cache"] is False and stats["vector_size"] == 16


def test_word2vec_cache_entries_differ_by_seed(tmp_path):
    ctx = w2v_context(tmp_path, [2, 3, 4, 1, 2, 5, 1] * 20)
    init_word2vec(nn.Embedding(6, 8), Word2VecEmbeddingConfig(epochs=1, window=2, seed=1), ctx)
    again = init_word2vec(nn.Embedding(6, 8), Word2VecEmbeddingConfig(epochs=1, window=2, seed=2), ctx)
    assert again["from_cache"] is False


def test_word2vec_gives_a_vector_to_a_word_seen_only_on_one_word_lines(tmp_path):
    ctx = w2v_context(tmp_path, [2, 3, 4, 1, 5, 1] * 20)  # "mat" (5) only ever stands alone on its line
    stats = init_word2vec(nn.Embedding(6, 8), Word2VecEmbeddingConfig(epochs=1, window=2), ctx)
    assert stats["vocab_coverage"] == pytest.approx(4 / 6)  # the, cat, sat, mat (not <unk>, <eos>)


def test_glove_vectors_of_size_one_are_not_taken_for_a_word2vec_header(tmp_path):
    path = tmp_path / "v.glove"
    path.write_text("the 0.5\ncat 1.5\n")
    table = nn.Embedding(6, 1)
    init_pretrained(table, PretrainedEmbeddingConfig(path=str(path), format="glove"), w2v_context(tmp_path, [2, 3, 1]))
    assert table.weight[2].item() == 0.5 and table.weight[3].item() == 1.5
