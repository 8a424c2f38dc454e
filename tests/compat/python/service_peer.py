"""A back-end application made with the official Azure IoT service SDK for Python (azure-iot-hub).

Driven over stdin/stdout by tests/compat/service_sdk.rs (line protocol in jsonl.py). Commands:

  invoke {connection_string, device, method, payload, timeout}
      IoTHubRegistryManager.invoke_device_method; -> {status, payload} from the device, or
      {http_status, errorcode, body} when the SDK raised HttpOperationError
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
from azure.iot.hub.models import CloudToDeviceMethod
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
        response = error.response
        return {
            "http_status": response.status_code,
            "errorcode": response.headers.get("iothub-errorcode"),
            "body": response.text,
        }
    return {"status": result.status, "payload": result.payload}


def sas(command):
    token = SasToken(command["uri"], command["key"], command["policy"], command["ttl"])
    return {"token": str(token), "expiry": token.expiry_time}


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    ops = {"invoke": invoke, "sas": sas, "sync": lambda _: {}}
    for command in jsonl.commands():
        try:
            jsonl.reply(command, **ops[command["op"]](command))
        except Exception as error:  # every failure goes back to the test
            jsonl.fail(command, error)


if __name__ == "__main__":
    main()
