"""A seed-format model (pooled encoder features + merge-LSTM .h5 + vocab.txt) converts,
and the bundle's runtime captions equal the Keras seed model's own greedy captions."""

import numpy as np
import pytest

import keras
from keras import layers

from convert.scenes import scene_at
from daemon.captioner import Captioner, resize_for_encoder
from daemon.decoder import log_softmax
from daemon.cli import main as cli
from daemon.vocab import Vocabulary

MAX_LENGTH = 74  # the seed's pre-padded prefix length
FEATURES = 1280
ENCODER = "EfficientNetV2B0"  # 1280-d pooled features, like the seed's EfficientNetV2L
SIZE = 96


def seed_decoder(vocab_size: int) -> keras.Model:
    """The seed project's merge model: [features, prefix] -> next-word softmax."""
    inputs1 = keras.Input(shape=(FEATURES,))
    fe1 = layers.Dropout(0.4)(inputs1)
    fe2 = layers.Dense(256, activation="relu")(fe1)
    inputs2 = keras.Input(shape=(MAX_LENGTH,))
    se1 = layers.Embedding(vocab_size, 300, mask_zero=True)(inputs2)
    se2 = layers.Dropout(0.4)(se1)
    se3 = layers.LSTM(256)(se2)
    decoder1 = layers.add([fe2, se3])
    decoder2 = layers.Dense(256, activation="relu")(decoder1)
    outputs = layers.Dense(vocab_size, activation="softmax")(decoder2)
    return keras.Model(inputs=[inputs1, inputs2], outputs=outputs)


def seed_greedy(decoder, features, vocab: Vocabulary) -> list[int]:
    """The seed's caption loop: re-run the model on the pre-padded prefix for every word,
    as long as start token and words fit the prefix (MAX_LENGTH - 1 words)."""
    seq = [vocab.start]
    out = []
    for _ in range(MAX_LENGTH - 1):
        prefix = np.zeros((1, MAX_LENGTH), np.float32)
        prefix[0, -len(seq):] = seq
        probs = decoder.predict([features[None], prefix], verbose=0)[0]
        probs[0] = probs[vocab.start] = 0
        token = int(np.argmax(probs))
        if token == vocab.end:
            break
        out.append(token)
        seq.append(token)
    return out


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    words = ["startseq", "endseq"] + [f"w{i}" for i in range(40)]
    vocab = Vocabulary(words)
    vocab.save(root / "vocab.txt")
    keras.utils.set_random_seed(7)
    decoder = seed_decoder(len(vocab))
    # Sharpen the random output layer so greedy choices have clear margins, as a trained
    # model's do; the int8 encoder's small feature error must not flip a word.
    w, b = decoder.layers[-1].get_weights()
    decoder.layers[-1].set_weights([w * 6, b])
    decoder.save(root / "M.h5")
    return root, vocab, decoder


def test_seed_model_converts_and_runtime_matches_keras(seed_files, tmp_path):
    root, vocab, decoder = seed_files
    assert cli(["convert", "--from-seed", "--encoder", ENCODER, "--decoder", str(root / "M.h5"),
                "--vocab", str(root / "vocab.txt"), "--input-size", str(SIZE), "--out", str(tmp_path / "b"),
                "--calibration", "16", "--quiet",
                # a 74-token unrolled decoder on EfficientNetV2 takes minutes to export; the
                # export has its own tests (tests/convert/test_explainer_export.py)
                "--no-explainer"]) == 0
    captioner = Captioner.from_path(tmp_path / "b")
    assert captioner.bundle.max_length == MAX_LENGTH - 1
    float_encoder = keras.models.load_model(tmp_path / "b" / "captioner.keras", compile=False).get_layer("encoder")
    for i in range(6):
        image = scene_at(77, i).image
        feats = np.asarray(float_encoder(resize_for_encoder(image, SIZE)[None].astype("float32")))[0]
        expected = seed_greedy(decoder, feats, vocab)
        # The numpy step decoder on the same float features gives the seed's exact tokens ...
        assert captioner.decoder.greedy(feats, captioner.bundle.max_length).tokens == expected
        # ... and the same next-word log-probabilities as the seed's softmax, within 1e-4.
        steps = [vocab.start] + expected[:5]
        ours = log_softmax(captioner.decoder.teacher_forced_logits(feats, steps))
        for t in range(len(steps)):
            prefix = np.zeros((1, MAX_LENGTH), np.float32)
            prefix[0, -(t + 1):] = steps[:t + 1]
            theirs = np.log(decoder.predict([feats[None], prefix], verbose=0)[0])
            np.testing.assert_allclose(ours[t], theirs, atol=1e-4)
        # The int8 runtime, end to end, starts the same caption. (An untrained decoder never
        # says endseq and babbles 73 near-tied words, so int8 feature error flips a later
        # word; full int8/float agreement is checked on the trained shipped bundle.)
        assert captioner.caption(image).tokens[0] == expected[0]
