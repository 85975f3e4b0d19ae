"""The Flower apps a real SuperLink and its SuperNodes run (`flwr run training/flower <connection>`,
README): training/federated.py's ServerApp and ClientApp, their settings from the run config. Its
own module, because it imports Flower on import; nothing else in FlexServe imports it."""

from training.federated import make_client_app, make_server_app

server_app = make_server_app()
client_app = make_client_app()
