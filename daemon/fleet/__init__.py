"""A fleet: explain jobs handed to explainer workers on other machines through MQTT 5
shared subscriptions (dispatcher: the camera daemon's side; worker: ``explaincam worker``;
the topics and payloads are in ``daemon.contract``; ``explaincam fleet-bench`` is convert/bench/fleet.py)."""
