"""DatagramSender: datagrams lying back to back in one buffer arrive one by one, as they were."""

from __future__ import annotations

import asyncio
import socket

import pytest

from egresskit.rooms.udp import DatagramSender, datagram_runs

# runs of equal sizes, a shorter one closing a run, a larger one starting the next, a single one
DATAGRAMS = [b"a" * 1200] * 3 + [b"b" * 900, b"c" * 1250, b"d" * 1250, b"e"]


@pytest.mark.parametrize("segmenting", [True, False], ids=["gso", "one-by-one"])
async def test_back_to_back_datagrams_arrive_as_sent(segmenting: bool):
    loop = asyncio.get_running_loop()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    sender = DatagramSender(transport, receiver.getsockname())
    sender._segmenting = segmenting  # as after the kernel refused UDP_SEGMENT
    try:
        sender.send(memoryview(b"".join(DATAGRAMS)), datagram_runs([len(d) for d in DATAGRAMS]))
        sender.send_one(b"rtcp")
        received = [receiver.recv(2048) for _ in range(len(DATAGRAMS) + 1)]
    finally:
        sender.close()
        transport.close()
        receiver.close()
    assert received == [*DATAGRAMS, b"rtcp"]
    assert sender.dropped == 0
    assert sender._segmenting == segmenting  # the GSO case did segment
