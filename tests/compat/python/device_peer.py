"""Devices made with the official Azure IoT device SDK for Python (azure-iot-device 2.14).

Driven over stdin/stdout by tests/compat/device_sdk.rs (line protocol in jsonl.py). Commands:

  connect {name, connection_string, ca, methods, retry}   create a client and connect it;
          with methods, set a method handler (the SDK then subscribes to $iothub/methods/POST/#)
  send {name, body, message_id, content_type, content_encoding, properties}
                           send_message with a Message built from these (properties are its
                           custom_properties); returns once the hub's PUBACK came
  disconnect {name}        the SDK's graceful disconnect (MQTT DISCONNECT)
  shutdown {name}          disconnect and stop the client's threads
  sas {uri, key, ttl}      -> {token, expiry} signed by the SDK's own SasToken code
  get_twin {name}          get_twin -> {twin}: the SDK's dict of desired and reported
  patch_reported {name, patch}
                           patch_twin_reported_properties; returns once the hub answered
  listen_twin {name}       set on_twin_desired_properties_patch_received (the SDK subscribes)
  listen_c2d {name}        set on_message_received (the SDK subscribes to its C2D topic)
  sync                     a round trip: every line printed before its reply has been read

Events: {"event": "dial", host, port}: the SDK asked paho for this host and port;
{"event": "state", client, connected}: the SDK's connection-state callback;
{"event": "method", client, method, payload, rid}: a method request reached the handler;
{"event": "responded", client, rid}: send_method_response returned (the hub's PUBACK came);
{"event": "desired", client, patch}: a desired-properties patch reached the handler;
{"event": "c2d", client, data, message_id, correlation_id, properties, ...}: a cloud-to-device
message reached the handler (the SDK PUBACKs it before the handler runs).

The handler answers every method with 200 and {"client", "method", "payload"}, except method
"reply", whose payload {"status": S, "payload": P} says what to answer, and "silent", which is
never answered.

The SDK hard-codes port 8883 (paho's connect(host, 8883)) and offers no option to change it.
So that every test can run its own emulator on a free loopback port, in parallel with other
tests and other work on this machine, paho's connect is wrapped to dial LEAFGATE_COMPAT_PORT
instead; the SDK's host name, TLS context (TLS 1.2, hostname check against the emulator's CA)
and every MQTT byte are untouched, and the "dial" event shows what the SDK asked for.
"""

import logging
import os
import sys

import paho.mqtt.client as paho

import jsonl

PORT = int(os.environ["LEAFGATE_COMPAT_PORT"])
_paho_connect = paho.Client.connect


def _connect(self, host, port=1883, *args, **kwargs):
    jsonl.emit(event="dial", host=host, port=port)
    return _paho_connect(self, host, PORT, *args, **kwargs)


paho.Client.connect = _connect

from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse  # noqa: E402
from azure.iot.device.common.auth import sastoken, signing_mechanism  # noqa: E402

clients = {}


def method_handler(name, client):
    def handle(request):
        jsonl.emit(
            event="method",
            client=name,
            method=request.name,
            payload=request.payload,
            rid=request.request_id,
        )
        if request.name == "silent":
            return
        if request.name == "reply":
            status, body = request.payload["status"], request.payload["payload"]
        else:
            status = 200
            body = {"client": name, "method": request.name, "payload": request.payload}
        # Returns once the hub acknowledged the response (the SDK publishes it at QoS 1).
        client.send_method_response(
            MethodResponse.create_from_method_request(request, status, body)
        )
        jsonl.emit(event="responded", client=name, rid=request.request_id)

    return handle


def connect(command):
    name = command["name"]
    options = {"server_verification_cert": command["ca"]}
    if "retry" in command:
        options["connection_retry"] = command["retry"]
    if "retry_interval" in command:
        options["connection_retry_interval"] = command["retry_interval"]
    client = IoTHubDeviceClient.create_from_connection_string(
        command["connection_string"], **options
    )
    clients[name] = client

    def on_state_change():
        jsonl.emit(event="state", client=name, connected=client.connected)

    client.on_connection_state_change = on_state_change
    try:
        client.connect()
    except Exception:
        client.shutdown()
        del clients[name]
        raise
    if command.get("methods"):
        client.on_method_request_received = method_handler(name, client)
    return {}


def send(command):
    message = Message(
        command["body"],
        message_id=command.get("message_id"),
        content_encoding=command.get("content_encoding"),
        content_type=command.get("content_type"),
    )
    message.custom_properties.update(command.get("properties", {}))
    # Publishes at QoS 1 and returns once the hub acknowledged it.
    clients[command["name"]].send_message(message)
    return {}


def disconnect(command):
    clients[command["name"]].disconnect()
    return {}


def shutdown(command):
    clients.pop(command["name"]).shutdown()
    return {}


def sas(command):
    token = sastoken.RenewableSasToken(
        command["uri"],
        signing_mechanism.SymmetricKeySigningMechanism(command["key"]),
        ttl=command["ttl"],
    )
    return {"token": str(token), "expiry": token.expiry_time}


def get_twin(command):
    return {"twin": clients[command["name"]].get_twin()}


def patch_reported(command):
    clients[command["name"]].patch_twin_reported_properties(command["patch"])
    return {}


def listen_twin(command):
    name = command["name"]

    def on_patch(patch):
        jsonl.emit(event="desired", client=name, patch=patch)

    clients[name].on_twin_desired_properties_patch_received = on_patch
    return {}


def listen_c2d(command):
    name = command["name"]

    def on_message(message):
        data = message.data
        jsonl.emit(
            event="c2d",
            client=name,
            data=data.decode("utf-8", "replace") if isinstance(data, bytes) else data,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            content_type=message.content_type,
            expiry_time_utc=message.expiry_time_utc,
            properties=message.custom_properties,
        )

    clients[name].on_message_received = on_message
    return {}


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    ops = {
        "connect": connect,
        "send": send,
        "disconnect": disconnect,
        "shutdown": shutdown,
        "sas": sas,
        "get_twin": get_twin,
        "patch_reported": patch_reported,
        "listen_twin": listen_twin,
        "listen_c2d": listen_c2d,
        "sync": lambda _: {},
    }
    for command in jsonl.commands():
        try:
            jsonl.reply(command, **ops[command["op"]](command))
        except Exception as error:  # every failure goes back to the test
            jsonl.fail(command, error)
    for client in clients.values():
        client.shutdown()


if __name__ == "__main__":
    main()
