"""Explanations of the published caption, word by word (Grad-CAM, saliency, ACE, ...).

Nothing here imports TensorFlow at module level: the capture process uses ``requests``,
``service``, ``job`` and ``local`` (which supervises the explainer process); the explainer
process (``process``) runs ``explainer`` (the one answer pipeline) and the method modules
over a backend (``backends``), and only the TensorFlow backend (``backends.tensorflow``)
brings TensorFlow. ``client`` is ``explaincam request``,
the MQTT client that asks a running daemon for an explanation.
"""
