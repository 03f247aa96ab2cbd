"""The numpy step decoder against the Keras float model of the shipped bundle."""

import numpy as np


from convert.model import load_captioner
from daemon.captioner import DEFAULT_BUNDLE, Captioner, resize_for_encoder
from daemon.decoder import StepDecoder, log_softmax
from daemon.scenes import scene_at


def _keras_parts():
    model = load_captioner(DEFAULT_BUNDLE / "captioner.keras")
    return model, model.get_layer("encoder")


def keras_greedy(model, image, vocab, max_length):
    """Greedy decoding by re-running the Keras model on the whole prefix each step."""
    tokens = [vocab.start]
    for _ in range(max_length):
        logits = np.array(model([image[None].astype("float32"), np.array([tokens], np.int32)]))[0, -1]
        logits[0] = logits[vocab.start] = -np.inf
        nxt = int(np.argmax(logits))
        if nxt == vocab.end:
            break
        tokens.append(nxt)
    return tokens[1:]


def test_same_tokens_and_logits_within_1e4_as_keras():
    captioner = Captioner.from_path(DEFAULT_BUNDLE)
    model, encoder = _keras_parts()
    for i in range(8):
        image = resize_for_encoder(scene_at(555, i).image, captioner.input_size)
        feats = np.asarray(encoder(image[None].astype("float32")))[0]
        ours = captioner.decoder.greedy(feats, captioner.bundle.max_length)
        assert ours.tokens == keras_greedy(model, image, captioner.vocab, captioner.bundle.max_length)
        seq = [captioner.vocab.start] + ours.tokens
        keras_logits = np.asarray(model([image[None].astype("float32"), np.array([seq], np.int32)]))[0]
        np.testing.assert_allclose(captioner.decoder.teacher_forced_logits(feats, seq), keras_logits, atol=1e-4)


def test_beam_search_is_at_least_as_likely_as_greedy():
    captioner = Captioner.from_path(DEFAULT_BUNDLE)
    dec = captioner.decoder
    for i in range(10):
        feats = captioner.encode(scene_at(556, i).image)
        greedy = dec.greedy(feats, captioner.bundle.max_length)
        beam = dec.beam(feats, captioner.bundle.max_length, width=3)
        assert beam.score >= greedy.score - 1e-5
        # The beam's score is the real summed log-probability of its words and the end token.
        seq = [captioner.vocab.start] + beam.tokens
        logp = log_softmax(dec.teacher_forced_logits(feats, seq))
        total = sum(logp[t, tok] for t, tok in enumerate(beam.tokens + [captioner.vocab.end]))
        assert abs(total - beam.score) < 1e-3


def test_beam_never_scores_below_greedy_and_respects_max_length():
    rng = np.random.default_rng(0)
    v, e, h, f = 12, 6, 8, 5
    weights = {
        "feat_kernel": rng.normal(size=(f, h)), "feat_bias": rng.normal(size=h),
        "embedding": rng.normal(size=(v, e)), "lstm_kernel": rng.normal(size=(e, 4 * h)),
        "lstm_recurrent": rng.normal(size=(h, 4 * h)), "lstm_bias": rng.normal(size=4 * h),
        "merge_kernel": rng.normal(size=(h, h)), "merge_bias": rng.normal(size=h),
        "logits_kernel": rng.normal(size=(h, v)) * 3, "logits_bias": rng.normal(size=v),
    }
    dec = StepDecoder(weights, start=1, end=2)
    for _ in range(20):
        feats = rng.normal(size=f).astype(np.float32)
        greedy = dec.greedy(feats, 6)
        assert len(greedy.tokens) <= 6
        for width in (1, 2, 4):
            beam = dec.beam(feats, 6, width=width)
            # Ended hypotheses are kept from the top 2*width, so even width 1 may end a
            # caption where greedy runs on; it is never less likely than greedy.
            assert beam.score >= greedy.score - 1e-4 and len(beam.tokens) <= 6


def seed_beam_search_predictions(predict, start: int, end: int, max_length: int, beam_index: int = 3) -> list[int]:
    """The seed project's ``beam_search_predictions``, as written, with ``predict(prefix)`` for
    its Keras ``model.predict`` on the padded prefix: keep the ``beam_index`` sequences of the
    largest summed raw probability, run until the prefix is full, cut at ``endseq``."""
    start_word = [[[start], 0.0]]
    while len(start_word[0][0]) < max_length:
        temp = []
        for s in start_word:
            preds = predict(s[0])
            word_preds = np.argsort(preds)[-beam_index:]
            for w in word_preds:
                next_cap, prob = s[0][:], s[1]
                next_cap.append(int(w))
                prob += preds[w]
                temp.append([next_cap, prob])
        start_word = sorted(temp, reverse=False, key=lambda entry: entry[1])[-beam_index:]
    final = []
    for token in start_word[-1][0]:
        if token == end:
            break
        final.append(token)
    return final[1:]


def test_seed_style_beam_reproduces_the_seed_beam_search():
    rng = np.random.default_rng(5)
    vocab, features, units, max_words = 30, 12, 16, 9
    weights = {"feat_kernel": rng.normal(0, 0.5, (features, units)), "feat_bias": rng.normal(0, 0.1, units),
               "embedding": rng.normal(0, 1, (vocab, 8)), "lstm_kernel": rng.normal(0, 0.5, (8, 4 * units)),
               "lstm_recurrent": rng.normal(0, 0.5, (units, 4 * units)), "lstm_bias": np.zeros(4 * units),
               "merge_kernel": rng.normal(0, 0.5, (units, units)), "merge_bias": np.zeros(units),
               "logits_kernel": rng.normal(0, 1.5, (units, vocab)), "logits_bias": np.zeros(vocab)}
    weights["logits_bias"][[0, 1]] = -50  # padding and the start token: never predicted, as by a trained model
    weights["logits_bias"][2] = 1.5  # the end token, likely enough that captions end inside max length
    decoder = StepDecoder(weights, start=1, end=2)
    differs = 0
    for _ in range(8):
        feats = rng.normal(0, 1, features).astype(np.float32)

        def predict(prefix):  # the full model re-run on the whole prefix, as Keras' predict does
            return np.exp(log_softmax(decoder.teacher_forced_logits(feats, prefix)[-1]))

        expected = seed_beam_search_predictions(predict, 1, 2, max_words + 1)
        assert decoder.beam_seed(feats, max_words, 3).tokens == expected
        differs += decoder.beam(feats, max_words, 3).tokens != expected
    assert differs  # our default search is a different algorithm, and it shows on these inputs
