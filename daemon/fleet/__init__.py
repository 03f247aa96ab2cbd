"""A fleet: explain jobs handed to explainer workers on other machines through MQTT 5
shared subscriptions (messages: the topics and payloads; dispatcher: the camera daemon's
side; worker: ``explaincam worker``; bench: ``explaincam fleet-bench``)."""
