"""Caption quality the way the field reports it: ``pycocoevalcap`` (the COCO caption
evaluation code) against *all* reference captions of each image.

BLEU-1..4, ROUGE-L and CIDEr always; METEOR where Java is on the PATH (its jar ships
inside pycocoevalcap). SPICE is skipped: it downloads Stanford CoreNLP at run time, which
a box without internet cannot, and the report says so. Captions are tokenised with the
PTB tokenizer (Java) where Java is present, else lower-cased with punctuation dropped
(``daemon.vocab.normalise_caption``), and the report names which.
"""

from __future__ import annotations

import shutil

from daemon.vocab import normalise_caption


def _tokenised(captions: dict[str, list[str]], java: bool) -> dict[str, list[str]]:
    """Captions by image id as space-joined tokens."""
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # optional: see coco_scores

        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [" ".join(normalise_caption(c)) for c in v] for k, v in captions.items()}


def coco_scores(references: dict[str, list[str]], hypotheses: dict[str, str]) -> dict:
    """Corpus scores of one hypothesis per image against all its references, rounded to 4 places.

    ``references`` and ``hypotheses`` are keyed by the same image ids.
    """
    try:  # pycocoevalcap is optional (the convert extra): say how to install it instead of an ImportError
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise ValueError("caption scores need pycocoevalcap: pip install 'explaincam[convert]'") from None
    java = shutil.which("java") is not None
    refs = _tokenised(references, java)
    hyps = _tokenised({k: [v] for k, v in hypotheses.items()}, java)
    scores: dict = {}
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    scores.update({f"bleu{n + 1}": round(float(b), 4) for n, b in enumerate(bleu)})
    scores["rouge_l"] = round(float(Rouge().compute_score(refs, hyps)[0]), 4)
    scores["cider"] = round(float(Cider().compute_score(refs, hyps)[0]), 4)
    notes = {"tokenizer": "PTB (Java)" if java else "lower-cased words (no Java)",
             "spice": "skipped: SPICE downloads Stanford CoreNLP at run time"}
    if java:
        from pycocoevalcap.meteor.meteor import Meteor  # optional: see above

        meteor = Meteor()  # a Java subprocess, ended when the scorer is collected
        scores["meteor"] = round(float(meteor.compute_score(refs, hyps)[0]), 4)
        del meteor
    else:
        notes["meteor"] = "skipped: needs Java"
    scores["notes"] = notes
    return scores
