"""A tiny authoritative DNS server for tests: answers A and AAAA queries for one name with the IPv4 and IPv6
addresses the test sets (an empty answer, as real DNS gives, for a family the name has no address of).

It stands in for the cluster DNS that serves a Kubernetes headless Service, so a test can add and remove
gateways the way Kubernetes would, over real DNS on the wire.
"""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, name: str, addresses: list[str], host: str = "127.0.0.1") -> None:
        self.name = name if name.endswith(".") else name + "."
        self.addresses = list(addresses)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.2)
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.queries = 0

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self._sock.sendto(self._answer(data).to_wire(), peer)

    def _answer(self, data: bytes) -> dns.message.Message:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        self.queries += 1
        question = query.question[0]
        if question.name.to_text().lower() != self.name.lower() or not self.addresses:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            ipv4 = [a for a in self.addresses if ":" not in a]
            ipv6 = [a for a in self.addresses if ":" in a]
            if question.rdtype == dns.rdatatype.A and ipv4:
                response.answer.append(dns.rrset.from_text_list(self.name, 1, "IN", "A", ipv4))
            elif question.rdtype == dns.rdatatype.AAAA and ipv6:
                response.answer.append(dns.rrset.from_text_list(self.name, 1, "IN", "AAAA", ipv6))
        return response
