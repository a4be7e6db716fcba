"""Worker addresses: `host:port` strings (no TensorFlow needed)."""

from __future__ import annotations


def parse_address(address: str) -> tuple[str, int]:
  """`host:port` (or `[v6 host]:port`) as `(host, port)`; ValueError saying what is wrong."""
  host, separator, port = address.strip().rpartition(':')
  host = host.strip('[]')
  if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"worker address '{address}' is not host:port (e.g. 10.0.0.5:8000).")
  return host, int(port)
