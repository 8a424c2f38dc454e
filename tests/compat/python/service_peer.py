"""A back-end application made with the official Azure IoT service SDK for Python (azure-iot-hub).

Driven over stdin/stdout by tests/compat/service_sdk.rs (line protocol in jsonl.py). Commands:

  invoke {connection_string, device, method, payload, timeout}
      IoTHubRegistryManager.invoke_device_method; -> {status, payload} from the device, or
      {http_status, errorcode, body} when the SDK raised HttpOperationError
  get_twin {connection_string, device}
      IoTHubRegistryManager.get_twin -> {twin}: the SDK's Twin model as_dict() (snake_case),
      or {http_status, errorcode, body} as for invoke
  update_twin {connection_string, device, desired, tags?, etag?}
  replace_twin {connection_string, device, desired, tags?, etag?}
      update_twin / replace_twin with Twin(tags, properties=TwinProperties(desired)) -> {twin}
  send_c2d_rest {connection_string, device, body, message_id?, correlation_id?, properties?}
      NOT the SDK's send_c2d_message: that one speaks AMQP (uamqp, to
      amqps://{host}/messages/devicebound), which the emulator does not emulate. Instead this
      POSTs to the emulator's REST stand-in /devices/{id}/messages/deviceBound through the
      SDK's own HTTP plumbing (the generated REST client's msrest ServiceClient, with the SDK's
      connection-string SAS authentication and api-version), headers iothub-messageid,
      iothub-correlationid, iothub-app-{name} -> {http_status, errorcode, body}
  sas {uri, key, policy, ttl}  -> {token, expiry} from the SDK's own SasToken

The SDK builds `https://{HostName}` from the connection string (port 443) and trusts the system
store through requests. The test points REQUESTS_CA_BUNDLE at the emulator's CA, and since the
SDK takes no port, the generated REST client's base_url (the URL the SDK itself built) gets the
emulator's HTTPS port LEAFGATE_COMPAT_PORT; the token, headers and body are the SDK's own.
"""

import logging
import os
import sys

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
from azure.iot.hub.sastoken import SasToken
from msrest.exceptions import HttpOperationError

import jsonl

PORT = int(os.environ["LEAFGATE_COMPAT_PORT"])
managers = {}


def manager(connection_string):
    if connection_string not in managers:
        registry = IoTHubRegistryManager.from_connection_string(connection_string)
        built = registry.protocol.config.base_url
        host = built.removeprefix("https://")
        registry.protocol.config.base_url = f"https://{host}:{PORT}"
        managers[connection_string] = registry
    return managers[connection_string]


def invoke(command):
    request = CloudToDeviceMethod(
        method_name=command["method"],
        payload=command.get("payload"),
        response_timeout_in_seconds=command["timeout"],
    )
    registry = manager(command["connection_string"])
    try:
        result = registry.invoke_device_method(command["device"], request)
    except HttpOperationError as error:
        return http_error(error)
    return {"status": result.status, "payload": result.payload}


def http_error(error):
    response = error.response
    return {
        "http_status": response.status_code,
        "errorcode": response.headers.get("iothub-errorcode"),
        "body": response.text,
    }


def get_twin(command):
    registry = manager(command["connection_string"])
    try:
        return {"twin": registry.get_twin(command["device"]).as_dict()}
    except HttpOperationError as error:
        return http_error(error)


def twin_change(command, change):
    twin = Twin(
        tags=command.get("tags"),
        properties=TwinProperties(desired=command.get("desired")),
    )
    try:
        return {"twin": change(command["device"], twin, command.get("etag")).as_dict()}
    except HttpOperationError as error:
        return http_error(error)


def update_twin(command):
    return twin_change(command, manager(command["connection_string"]).update_twin)


def replace_twin(command):
    return twin_change(command, manager(command["connection_string"]).replace_twin)


def send_c2d_rest(command):
    protocol = manager(command["connection_string"]).protocol
    client = protocol._client
    device = protocol.devices._serialize.url("id", command["device"], "str")
    url = client.format_url("/devices/{id}/messages/deviceBound", id=device)
    headers = {"Content-Type": "application/octet-stream"}
    if command.get("message_id") is not None:
        headers["iothub-messageid"] = command["message_id"]
    if command.get("correlation_id") is not None:
        headers["iothub-correlationid"] = command["correlation_id"]
    for key, value in command.get("properties", {}).items():
        headers["iothub-app-" + key] = value
    request = client.post(url, {"api-version": protocol.api_version}, headers)
    # The raw body, not msrest's JSON serialization of it.
    request.data = command["body"].encode("utf-8")
    response = client.send(request, stream=False)
    return {
        "http_status": response.status_code,
        "errorcode": response.headers.get("iothub-errorcode"),
        "body": response.text,
    }


def sas(command):
    token = SasToken(command["uri"], command["key"], command["policy"], command["ttl"])
    return {"token": str(token), "expiry": token.expiry_time}


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    ops = {
        "invoke": invoke,
        "get_twin": get_twin,
        "update_twin": update_twin,
        "replace_twin": replace_twin,
        "send_c2d_rest": send_c2d_rest,
        "sas": sas,
        "sync": lambda _: {},
    }
    for command in jsonl.commands():
        try:
            jsonl.reply(command, **ops[command["op"]](command))
        except Exception as error:  # every failure goes back to the test
            jsonl.fail(command, error)


if __name__ == "__main__":
    main()
