"""Explanations of the published caption, word by word (Grad-CAM, saliency, ...).

The capture process imports only the TensorFlow-free modules here (``requests``,
``service``, ``heatmap``, ``registry``, ``worker``'s process loop); the explainer process
loads ``explainer`` and the method modules, which bring TensorFlow.
"""
