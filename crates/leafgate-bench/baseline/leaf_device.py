#!/usr/bin/env python3
"""One leaf device bridged to Azure IoT Hub the way Azure's tutorials do it, without leafgate.

One process per device: the official device SDK (azure-iot-device) holds the device's MQTT/TLS
connection, and its direct-method handler reads the device's registers with a Modbus client
(pymodbus, a synchronous ModbusTcpClient kept open for the life of the process).

usage: IOTHUB_DEVICE_CONNECTION_STRING=... leaf_device.py --modbus-host H --modbus-port P --unit U

Environment (secrets stay out of argv):
  IOTHUB_DEVICE_CONNECTION_STRING   HostName=...;DeviceId=...;SharedAccessKey=... (required)
  IOTHUB_CA_FILE                    PEM file of a CA to trust instead of the system's (optional)
  LEAFGATE_BASELINE_MQTT_PORT       test-only: dial this port instead of 8883 (optional)

Method `read10` reads holding registers 0..9 of the unit and answers 200 with
{"r0": .., ..., "r9": ..}, the same body leafgate answers for `leafgate-bench`'s profile; a
Modbus failure answers 502, any other method 404. SIGTERM or SIGINT: disconnect, exit 0.

The SDK hard-codes port 8883 (paho's connect(host, 8883)) and has no option to change it. So that
the benchmark can run its emulated hub on a free loopback port, LEAFGATE_BASELINE_MQTT_PORT wraps
paho's connect to dial that port instead (as tests/compat/python/device_peer.py does); the host
name, TLS and every MQTT byte are the SDK's own.
"""

import argparse
import logging
import os
import signal
import sys
import threading

import paho.mqtt.client as paho

PORT = os.environ.get("LEAFGATE_BASELINE_MQTT_PORT")
if PORT:
    _paho_connect = paho.Client.connect

    def _connect(self, host, port=1883, *args, **kwargs):
        return _paho_connect(self, host, int(PORT), *args, **kwargs)

    paho.Client.connect = _connect

from azure.iot.device import IoTHubDeviceClient, MethodResponse  # noqa: E402
from pymodbus.client import ModbusTcpClient  # noqa: E402
from pymodbus.exceptions import ModbusException  # noqa: E402

METHOD = "read10"


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modbus-host", required=True)
    parser.add_argument("--modbus-port", type=int, default=502)
    parser.add_argument("--unit", type=int, required=True)
    parser.add_argument("--keep-alive", type=int, default=60)
    args = parser.parse_args()
    connection_string = os.environ.get("IOTHUB_DEVICE_CONNECTION_STRING")
    if not connection_string:
        sys.exit("leaf_device.py: IOTHUB_DEVICE_CONNECTION_STRING is not set")

    # Blocked before any thread starts (threads inherit the mask), taken by sigwait at the end.
    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)

    modbus = ModbusTcpClient(args.modbus_host, port=args.modbus_port, timeout=1)
    if not modbus.connect():
        sys.exit(f"leaf_device.py: cannot connect to {args.modbus_host}:{args.modbus_port}")
    # The SDK runs method handlers on a pool of 4 threads; one request at a time on the socket.
    modbus_lock = threading.Lock()

    options = {"keep_alive": args.keep_alive}
    ca_file = os.environ.get("IOTHUB_CA_FILE")
    if ca_file:
        with open(ca_file, encoding="ascii") as ca:
            options["server_verification_cert"] = ca.read()
    client = IoTHubDeviceClient.create_from_connection_string(connection_string, **options)

    def on_method(request):
        if request.name != METHOD:
            status, body = 404, {"error": f"no method {request.name}"}
        else:
            try:
                with modbus_lock:
                    result = modbus.read_holding_registers(0, count=10, device_id=args.unit)
                if result.isError():
                    status, body = 502, {"error": str(result)}
                else:
                    status = 200
                    body = {f"r{i}": value for i, value in enumerate(result.registers)}
            except ModbusException as error:
                status, body = 502, {"error": str(error)}
        client.send_method_response(
            MethodResponse.create_from_method_request(request, status, body)
        )

    client.connect()
    client.on_method_request_received = on_method
    signal.sigwait(stopping)
    client.shutdown()
    modbus.close()


if __name__ == "__main__":
    main()
