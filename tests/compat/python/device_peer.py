"""Devices made with the official Azure IoT device SDK for Python (azure-iot-device 2.14):
IoTHubDeviceClient, and ProvisioningDeviceClient for the emulator's DPS.

Driven over stdin/stdout by tests/compat/device_sdk.rs and its neighbours (firewall.rs for
WebSockets and X.509, provisioning.rs for DPS; line protocol in jsonl.py). Commands:

  connect {name, connection_string, ca, methods, retry, websockets}
                           create a client with create_from_connection_string and connect it;
                           with methods, set a method handler (the SDK then subscribes to
                           $iothub/methods/POST/#); with websockets, MQTT over WebSockets (443)
  connect {name, hostname, device_id, x509: {cert_file, key_file}, ca, ...}
                           the same with create_from_x509_certificate(X509(cert, key), ...)
  connect {name, hostname, device_id, symmetric_key, ca, ...}
                           the same with create_from_symmetric_key(key, hostname, device_id),
                           as the SDK's provisioning samples connect after register()
  derive_key {group_key, registration_id}
                           -> {key}: a group enrollment's device key, computed as the Azure
                           docs' and the SDK's samples compute it (hmac, hashlib, base64)
  provision {provisioning_host, registration_id, id_scope, ca, and symmetric_key, or group_key
             (the key is derived with derive_key), or x509: {cert_file, key_file}}
                           ProvisioningDeviceClient.create_from_symmetric_key (or
                           create_from_x509_certificate) and register() -> {status,
                           operation_id, registration_state: {device_id, assigned_hub, ...}}
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

Events: {"event": "dial", host, port, transport, ws_path}: the SDK asked paho for this host and
port (transport "tcp" or "websockets"; ws_path, over WebSockets, the path paho will request);
{"event": "state", client, connected}: the SDK's connection-state callback;
{"event": "method", client, method, payload, rid}: a method request reached the handler;
{"event": "responded", client, rid}: send_method_response returned (the hub's PUBACK came);
{"event": "desired", client, patch}: a desired-properties patch reached the handler;
{"event": "c2d", client, data, message_id, correlation_id, properties, ...}: a cloud-to-device
message reached the handler (the SDK PUBACKs it before the handler runs).

The handler answers every method with 200 and {"client", "method", "payload"}, except method
"reply", whose payload {"status": S, "payload": P} says what to answer, and "silent", which is
never answered.

The SDK hard-codes port 8883, and 443 over WebSockets (paho's connect(host, 8883 or 443) in
azure/iot/device/common/mqtt_transport.py, for IoTHubDeviceClient and ProvisioningDeviceClient
alike), and offers no option to change them. So that every test can run its own emulator on free
loopback ports, in parallel with other tests and other work on this machine, paho's connect is
wrapped to dial the emulator's port for the (host, port) the SDK asked for:

  LEAFGATE_COMPAT_PORT      port 8883 on any host: the hub's MQTT listener
  LEAFGATE_COMPAT_WS_PORT   port 443 on any host: the hub's WebSocket listener
  LEAFGATE_COMPAT_ROUTES    space-separated HOST:PORT=TO, taking precedence for that host: e.g.
                            the emulator's DPS as 127.0.0.1:8883, while the hub is localhost:8883
                            (in Azure too, DPS and the hub are two hosts on one port)

A dial nothing routes fails. The SDK's host name (hence SNI and the hostname check against the
emulator's CA), its TLS context, the WebSocket request paho builds and every MQTT byte are
untouched, and the "dial" event shows what the SDK asked for.
"""

import base64
import hashlib
import hmac
import logging
import os
import sys

import paho.mqtt.client as paho

import jsonl


def _routes():
    routes = {}
    for variable, port in (("LEAFGATE_COMPAT_PORT", 8883), ("LEAFGATE_COMPAT_WS_PORT", 443)):
        if variable in os.environ:
            routes[("*", port)] = int(os.environ[variable])
    for route in os.environ.get("LEAFGATE_COMPAT_ROUTES", "").split():
        dialed, to = route.split("=")
        host, port = dialed.rsplit(":", 1)
        routes[(host, int(port))] = int(to)
    return routes


ROUTES = _routes()
_paho_connect = paho.Client.connect


def _connect(self, host, port=1883, *args, **kwargs):
    websockets = self._transport == "websockets"
    jsonl.emit(
        event="dial",
        host=host,
        port=port,
        transport=self._transport,
        ws_path=self._websocket_path if websockets else None,
    )
    to = ROUTES.get((host, port), ROUTES.get(("*", port)))
    if to is None:
        raise ConnectionRefusedError(f"compat shim: no route for {host}:{port}")
    return _paho_connect(self, host, to, *args, **kwargs)


paho.Client.connect = _connect

from azure.iot.device import (  # noqa: E402
    IoTHubDeviceClient,
    Message,
    MethodResponse,
    ProvisioningDeviceClient,
    X509,
)
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


def x509_of(command):
    files = command["x509"]
    return X509(cert_file=files["cert_file"], key_file=files["key_file"])


def connect(command):
    name = command["name"]
    options = {"server_verification_cert": command["ca"]}
    if "retry" in command:
        options["connection_retry"] = command["retry"]
    if "retry_interval" in command:
        options["connection_retry_interval"] = command["retry_interval"]
    if "websockets" in command:
        options["websockets"] = command["websockets"]
    if "x509" in command:
        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=x509_of(command),
            hostname=command["hostname"],
            device_id=command["device_id"],
            **options,
        )
    elif "symmetric_key" in command:
        client = IoTHubDeviceClient.create_from_symmetric_key(
            symmetric_key=command["symmetric_key"],
            hostname=command["hostname"],
            device_id=command["device_id"],
            **options,
        )
    else:
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


def derive_device_key(device_id, group_symmetric_key):
    """A group enrollment's device key, as the Azure docs ("Derive a device key") and the SDK's
    samples (provision_symmetric_key_group.py) compute it."""
    message = device_id.encode("utf-8")
    signing_key = base64.b64decode(group_symmetric_key.encode("utf-8"))
    signed_hmac = hmac.HMAC(signing_key, message, hashlib.sha256)
    device_key_encoded = base64.b64encode(signed_hmac.digest())
    return device_key_encoded.decode("utf-8")


def derive_key(command):
    return {"key": derive_device_key(command["registration_id"], command["group_key"])}


def provision(command):
    options = {"server_verification_cert": command["ca"]}
    if "websockets" in command:
        options["websockets"] = command["websockets"]
    where = {
        "provisioning_host": command["provisioning_host"],
        "registration_id": command["registration_id"],
        "id_scope": command["id_scope"],
    }
    if "x509" in command:
        client = ProvisioningDeviceClient.create_from_x509_certificate(
            x509=x509_of(command), **where, **options
        )
    else:
        key = command.get("symmetric_key") or derive_device_key(
            command["registration_id"], command["group_key"]
        )
        client = ProvisioningDeviceClient.create_from_symmetric_key(
            symmetric_key=key, **where, **options
        )
    # Blocks through register, the 202s and the polls until DPS answers for good; once assigned,
    # the client disconnects and shuts down by itself (it has no shutdown of its own).
    result = client.register()
    state = result.registration_state
    return {
        "status": result.status,
        "operation_id": result.operation_id,
        "registration_state": None
        if state is None
        else {
            "device_id": state.device_id,
            "assigned_hub": state.assigned_hub,
            "sub_status": state.sub_status,
            "created_date_time": state.created_date_time,
            "last_update_date_time": state.last_update_date_time,
            "etag": state.etag,
        },
    }


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
        "derive_key": derive_key,
        "provision": provision,
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
