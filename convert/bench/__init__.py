"""``explaincam bench``: speed and memory of a bundle on this box, side by side with the seed-style pipeline.

Every claim is a ratio of two figures measured in the same run, because absolute times on a
shared or throttling box are noisy. What is measured where:

- this process (LiteRT and numpy only): the int8 and float TFLite encoders at 1 and N
  threads, the numpy step decoder (greedy, beam 3), end-to-end captions (int8 + greedy);
- a fresh TensorFlow process per thread count (TensorFlow fixes its thread pools when it
  starts): the Keras float encoder, the float TFLite conversion, the encoder's MACs, the
  seed-style pipeline (Keras ``predict`` encoder + a ``predict`` per beam per step on the
  pre-padded prefix, beam 3), and a tiny full-integer model of one large int8 convolution
  whose LiteRT rate, measured here, is the practical int8 peak of this CPU;
- per explainer backend (LiteRT, TensorFlow), side by side: a fresh process times each
  explanation method (first call and warm), and the capture child asks the real explainer
  service for an explanation with no explainer running (the cold answer: request sent ->
  answer received, gradcam + saliency, all words), keeps it busy, then times a warm answer
  and reads the explainer's peak RSS;
- a fresh capture process (no TensorFlow, 1 encoder thread): the real caption loop
  (``daemon.capture.CaptionLoop.process``, MQTT publisher never connected, no snapshot files)
  over pre-drawn scenes, idle and while each backend's explainer service is kept busy; the RSS of
  that process and of the explainer worker come from /proc.

A part that cannot run (no explainer installed, a failed conversion ...) is reported as
null with its reason under ``null_reasons``; the bench itself does not fail for it.
"""

