"""pymodbus as the hardware: Modbus TCP and Modbus RTU servers for leafgate to talk to.

Driven over stdin/stdout by tests/compat/modbus.rs (line protocol in jsonl.py). Commands:

  start_tcp {units}            -> {port}   a Modbus TCP server on 127.0.0.1:0
  start_rtu {units, baud}      -> {path}   a Modbus RTU server on a pty; leafgate opens `path`
  set  {server, unit, table, address, values}        raw registers or bits into the datastore
  get  {server, unit, table, address, count}         -> {values}
  set_typed {server, unit, address, type, value, word_order, byte_order, length?, table?}
  get_typed {server, unit, address, type, word_order, byte_order, length?, table?}  -> {value}
  sync                                               a round trip

Every unit has the classic four separate tables (coils, discrete inputs, holding and input
registers) with registers 0..299 and bits 0..319 valid; any address beyond is answered "illegal data
address" (2) by pymodbus itself. Two regions of the holding table answer like real devices
that refuse: a write of a value above 1000 to 280..289 gets "illegal data value" (3), and any
access to 290..299 gets "slave device failure" (4).

Typed values are laid out by pymodbus's own `convert_to_registers` / `convert_from_registers`
(word order), plus a byte swap inside each register for byte_order "little", so leafgate's
encoding is checked against an implementation it shares no code with.

RTU: pymodbus opens a real serial path with pyserial, and so does leafgate, so they need two
pty slaves joined back to back (what `socat pty pty` does): this process owns both masters and
copies bytes between them, and keeps a descriptor of each slave open so neither master hangs up
while a side closes and reopens its port.
"""

import asyncio
import logging
import os
import sys
import termios
import tty

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

import jsonl

SIZE = 300
BITS = 320
ILLEGAL_VALUE_REGION = range(280, 290)
FAILURE_REGION = range(290, 300)
FC = {"coil": (1, 15), "discrete": (2, None), "holding": (3, 16), "input": (4, None)}
TYPES = {
    "u16": ModbusClientMixin.DATATYPE.UINT16,
    "i16": ModbusClientMixin.DATATYPE.INT16,
    "u32": ModbusClientMixin.DATATYPE.UINT32,
    "i32": ModbusClientMixin.DATATYPE.INT32,
    "u64": ModbusClientMixin.DATATYPE.UINT64,
    "i64": ModbusClientMixin.DATATYPE.INT64,
    "f32": ModbusClientMixin.DATATYPE.FLOAT32,
    "f64": ModbusClientMixin.DATATYPE.FLOAT64,
    "string": ModbusClientMixin.DATATYPE.STRING,
}


async def refusing_regions(fc, _start, address, count, _registers, set_values):
    """The device's own refusals, on top of pymodbus's address checks."""
    if fc not in (3, 6, 16):
        return None
    touched = range(address, address + count)
    if any(a in FAILURE_REGION for a in touched):
        return ExcCodes.DEVICE_FAILURE
    if set_values and any(a in ILLEGAL_VALUE_REGION for a in touched):
        if any(v > 1000 for v in set_values):
            return ExcCodes.ILLEGAL_VALUE
    return None


def unit_device(unit):
    bits = lambda: [SimData(0, values=[False] * BITS, datatype=DataType.BITS)]
    regs = lambda: [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)]
    return SimDevice(
        id=unit,
        simdata=(bits(), bits(), regs(), regs()),
        action=refusing_regions,
    )


def swap_bytes(regs):
    return [((r & 0xFF) << 8) | (r >> 8) for r in regs]


def encode(command):
    kind = command["type"]
    value = command["value"]
    if kind == "string":
        regs = ModbusClientMixin.convert_to_registers(value, TYPES[kind])
        regs += [0] * (command["length"] - len(regs))
    else:
        regs = ModbusClientMixin.convert_to_registers(
            value, TYPES[kind], word_order=command["word_order"]
        )
    if command["byte_order"] == "little":
        regs = swap_bytes(regs)
    return regs


def decode(command, regs):
    if command["byte_order"] == "little":
        regs = swap_bytes(regs)
    kind = command["type"]
    if kind == "string":
        return ModbusClientMixin.convert_from_registers(regs, TYPES[kind])
    return ModbusClientMixin.convert_from_registers(
        regs, TYPES[kind], word_order=command["word_order"]
    )


def width(command):
    kind = command["type"]
    return command["length"] if kind == "string" else TYPES[kind].value[1]


class Peer:
    def __init__(self):
        self.servers = {}
        self.keep = []

    async def start_tcp(self, command):
        server = ModbusTcpServer(
            [unit_device(u) for u in command["units"]], address=("127.0.0.1", 0)
        )
        await server.serve_forever(background=True)
        self.servers["tcp"] = server
        return {"port": server.transport.sockets[0].getsockname()[1]}

    async def start_rtu(self, command):
        pymodbus_side, leafgate_side = open_pty(), open_pty()
        self.keep += [pymodbus_side, leafgate_side]
        loop = asyncio.get_running_loop()
        for a, b in ((pymodbus_side, leafgate_side), (leafgate_side, pymodbus_side)):
            loop.add_reader(a[0], relay, a[0], b[0])
        server = ModbusSerialServer(
            [unit_device(u) for u in command["units"]],
            port=pymodbus_side[2],
            baudrate=command["baud"],
            # 8N1: pyserial's second tcsetattr with parity enabled fails with EINVAL on a pty
            # (pymodbus sets the timeout after opening), and a pty ignores framing anyway.
            parity="N",
        )
        await server.serve_forever(background=True)
        self.servers["rtu"] = server
        return {"path": leafgate_side[2]}

    async def sync(self, _command):
        return {}

    async def set(self, command):
        server = self.servers[command["server"]]
        fc = FC[command["table"]][0]
        # The datastore's own setter; the function code only picks the table.
        result = await server.context.async_setValues(
            command["unit"], fc, command["address"], command["values"]
        )
        if result is not None:
            raise RuntimeError(f"datastore refused: {result!r}")
        return {}

    async def get(self, command):
        server = self.servers[command["server"]]
        fc = FC[command["table"]][0]
        values = await server.context.async_getValues(
            command["unit"], fc, command["address"], command["count"]
        )
        if isinstance(values, ExcCodes):
            raise RuntimeError(f"datastore refused: {values!r}")
        return {"values": [v if isinstance(v, bool) else int(v) for v in values]}

    async def set_typed(self, command):
        regs = encode(command)
        await self.set({"table": "holding", **command, "values": regs})
        return {"registers": regs}

    async def get_typed(self, command):
        got = await self.get({"table": "holding", **command, "count": width(command)})
        return {"value": decode(command, got["values"]), "registers": got["values"]}


def open_pty():
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def relay(src, dst):
    try:
        data = os.read(src, 4096)
    except (BlockingIOError, OSError):
        return
    while data:
        try:
            data = data[os.write(dst, data) :]
        except BlockingIOError:
            continue


async def main():
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    peer = Peer()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = jsonl.json.loads(line)
        try:
            result = await getattr(peer, command["op"])(command)
            jsonl.reply(command, **result)
        except Exception as error:  # every failure goes back to the test
            jsonl.fail(command, error)
    for server in peer.servers.values():
        await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
