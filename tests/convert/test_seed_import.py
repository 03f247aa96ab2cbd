"""A seed-format model converts offline: a merge-LSTM decoder written by real Keras 2
(``tf_keras``, legacy .h5) + vocab.txt + a local encoder weights file (Keras 2 .h5 with the
classifier top, as keras.applications downloads it). The bundle's encoder carries the
file's weights, its step decoder gives the Keras model's next-word probabilities, and its
greedy captions equal the seed's ``greedySearch``."""

import numpy as np
import pytest

import keras
import tf_keras

from daemon.captioner import Captioner, resize_for_encoder
from daemon.decoder import log_softmax
from daemon.cli import main as cli
from daemon.scenes import scene_at
from daemon.vocab import Vocabulary

MAX_LENGTH = 74  # the seed's pre-padded prefix length
FEATURES = 1280
ENCODER = "EfficientNetV2B0"  # 1280-d pooled features, like the seed's EfficientNetV2L
SIZE = 96


def seed_decoder(vocab_size: int):
    """The seed project's merge model in Keras 2: [features, prefix] -> next-word softmax."""
    layers = tf_keras.layers
    inputs1 = tf_keras.Input(shape=(FEATURES,))
    fe1 = layers.Dropout(0.4)(inputs1)
    fe2 = layers.Dense(256, activation="relu")(fe1)
    inputs2 = tf_keras.Input(shape=(MAX_LENGTH,))
    se1 = layers.Embedding(vocab_size, 300, mask_zero=True)(inputs2)
    se2 = layers.Dropout(0.4)(se1)
    se3 = layers.LSTM(256)(se2)
    decoder1 = layers.add([fe2, se3])
    decoder2 = layers.Dense(256, activation="relu")(decoder1)
    outputs = layers.Dense(vocab_size, activation="softmax")(decoder2)
    return tf_keras.Model(inputs=[inputs1, inputs2], outputs=outputs)


def seed_greedy_search(decoder, features, vocab: Vocabulary) -> list[int]:
    """The seed's ``greedySearch``, as written: from ``startseq``, ``max_length`` times predict
    on the pre-padded prefix and append the argmax word, stopping after ``endseq``; then drop
    the first and the last token (``final[1:-1]``). ``predict_on_batch`` is the seed's
    ``predict`` on one row without its per-call setup (a tenth of a second, ~200 calls here)."""
    seq = [vocab.start]
    for _ in range(MAX_LENGTH):
        prefix = tf_keras.preprocessing.sequence.pad_sequences([seq], maxlen=MAX_LENGTH)
        token = int(np.argmax(decoder.predict_on_batch([features[None], prefix])[0]))
        seq.append(token)
        if token == vocab.end:
            break
    return seq[1:-1]


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    words = ["startseq", "endseq"] + [f"w{i}" for i in range(40)]
    vocab = Vocabulary(words)
    vocab.save(root / "vocab.txt")
    tf_keras.utils.set_random_seed(7)
    decoder = seed_decoder(len(vocab))  # token ids and padding
    # Sharpen the random output layer, so greedy choices have clear margins, and never predict
    # padding or startseq (as a trained model). An untrained decoder rarely says endseq: its
    # captions run to the full 73 words, which compares every step of the two decoders.
    w, b = decoder.layers[-1].get_weights()
    b[0], b[vocab.start] = -30.0, -30.0
    decoder.layers[-1].set_weights([w * 6, b])
    decoder.save(root / "M.h5", save_format="h5")
    # the user's downloaded encoder weights: a Keras 2 .h5 with the classifier top
    backbone = tf_keras.applications.EfficientNetV2B0(weights=None, input_shape=(SIZE, SIZE, 3))
    backbone.save_weights(root / "efficientnetv2-b0.h5")
    return root, vocab, decoder, tf_keras.Model(backbone.input, backbone.get_layer("avg_pool").output)


@pytest.mark.timeout(1800)  # a conversion and ~200 Keras predict calls; minutes on a busy 2-core box
def test_seed_model_converts_offline_and_runtime_matches_keras(seed_files, tmp_path):
    root, vocab, decoder, pooled = seed_files
    assert cli(["convert", "--from-seed", "--encoder", ENCODER, "--decoder", str(root / "M.h5"),
                "--vocab", str(root / "vocab.txt"), "--weights", str(root / "efficientnetv2-b0.h5"),
                "--input-size", str(SIZE), "--out", str(tmp_path / "b"), "--calibration", "16", "--quiet",
                # a 74-token unrolled decoder on EfficientNetV2 takes minutes to export; the
                # export has its own tests (tests/convert/test_explainer_export.py)
                "--no-explainer"]) == 0
    captioner = Captioner.from_path(tmp_path / "b")
    assert captioner.bundle.max_length == MAX_LENGTH - 1
    assert captioner.bundle.resize == "nearest"  # the seed's load_img resize
    assert captioner.bundle.manifest["seed"]["weights"] == "efficientnetv2-b0.h5"
    float_encoder = keras.models.load_model(tmp_path / "b" / "captioner.keras", compile=False).get_layer("encoder")
    # the encoder carries the file's weights: its features are the Keras 2 model's (``pooled``)
    for i in range(3):
        image = resize_for_encoder(scene_at(77, i).image, SIZE, "nearest")
        feats = np.asarray(float_encoder(image[None].astype("float32")))[0]
        np.testing.assert_allclose(feats, pooled.predict(image[None].astype("float32"), verbose=0)[0],
                                   atol=1e-4, rtol=1e-3)
        expected = seed_greedy_search(decoder, feats, vocab)
        assert expected  # a caption with words: the comparison is not vacuous
        # The numpy step decoder on the same float features gives the seed's exact tokens ...
        assert captioner.decoder.greedy(feats, captioner.bundle.max_length).tokens == expected
        # ... and the same next-word probabilities as the seed's softmax, within 1e-4.
        steps = [vocab.start] + expected[:5]
        ours = np.exp(log_softmax(captioner.decoder.teacher_forced_logits(feats, steps)))
        for t in range(len(steps)):
            prefix = tf_keras.preprocessing.sequence.pad_sequences([steps[:t + 1]], maxlen=MAX_LENGTH)
            theirs = decoder.predict_on_batch([feats[None], prefix])[0]
            np.testing.assert_allclose(ours[t], theirs, atol=1e-4)
    report = (tmp_path / "b" / "report.json").read_text()
    assert '"calibration"' in report and '"health"' in report
