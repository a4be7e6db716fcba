"""Run a TCP server where no other host can reach it: its own network namespace, one Unix socket.

TFF's `worker_binary` listens on every interface of its network namespace (it takes only
`--port`), in plaintext. Run through this script under `unshare --user --map-root-user --net`,
it gets a namespace of its own whose only interface is loopback: nothing outside can connect
to it. This script, inside that namespace, brings loopback up, starts the server, and relays
every connection made to a Unix socket (a file, reachable from the host by file permissions
alone: 0600, its owner) to the server's port there. A TLS front (`tff_gan.runtime.tls`) then
talks to the worker through that socket.

  unshare --user --map-root-user --net -- python confine.py SOCKET PORT -- PROGRAM [ARGS...]

Standard library only, so it starts in milliseconds and needs no import path. The script and
its server die with the process that started it (`PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_PR_SET_PDEATHSIG = 1
_CHUNK = 1 << 16
_CONNECT_SECONDS = 60.0


def _libc_prctl():
  libc_name = ctypes.util.find_library('c')
  if libc_name is None:
    return None
  try:
    return ctypes.CDLL(libc_name, use_errno=True).prctl
  except (OSError, AttributeError):
    return None


# Looked up once, here: `die_with_parent` also runs between fork and exec, where
# `find_library` (which starts subprocesses) has no place.
_PRCTL = _libc_prctl()


def die_with_parent() -> None:
  """Asks the kernel to SIGKILL this process when its parent ends (safe before exec)."""
  if _PRCTL is not None:
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def loopback_up() -> None:
  """Sets the namespace's `lo` interface up (a new network namespace starts with it down)."""
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
    request = struct.pack('16sH14s', b'lo', 0, b'')
    flags = struct.unpack('16sH14s', fcntl.ioctl(probe, _SIOCGIFFLAGS, request))[1]
    fcntl.ioctl(probe, _SIOCSIFFLAGS, struct.pack('16sH14s', b'lo', flags | _IFF_UP, b''))


def _pump(source: socket.socket, target: socket.socket, done: threading.Semaphore) -> None:
  try:
    while data := source.recv(_CHUNK):
      target.sendall(data)
  except OSError:
    pass
  finally:
    try:
      target.shutdown(socket.SHUT_WR)
    except OSError:
      pass
    if not done.acquire(blocking=False):  # The second pump to end closes both sockets.
      source.close()
      target.close()


def _connect(port: int) -> socket.socket:
  deadline = time.monotonic() + _CONNECT_SECONDS
  while True:
    try:
      upstream = socket.create_connection(('127.0.0.1', port))
    except OSError:
      if time.monotonic() > deadline:
        raise
      time.sleep(0.05)
      continue
    # gRPC's small frames would otherwise wait for the previous one's ACK (Nagle).
    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return upstream


def relay(listener: socket.socket, port: int) -> None:
  """Forever: each connection accepted on `listener` joined to 127.0.0.1:`port`, both ways."""
  while True:
    client, _ = listener.accept()
    try:
      upstream = _connect(port)
    except OSError:
      client.close()
      continue
    done = threading.Semaphore(1)
    for source, target in ((client, upstream), (upstream, client)):
      threading.Thread(target=_pump, args=(source, target, done), daemon=True).start()


def main(argv: list[str]) -> int:
  if len(argv) < 5 or argv[3] != '--':
    print(f'usage: {argv[0]} SOCKET PORT -- PROGRAM [ARGS...]', file=sys.stderr)
    return 2
  socket_path, port, program = argv[1], int(argv[2]), argv[4:]
  die_with_parent()
  loopback_up()
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  previous_mask = os.umask(0o177)  # The socket file: its owner only.
  try:
    listener.bind(socket_path)
  finally:
    os.umask(previous_mask)
  listener.listen(64)
  server = subprocess.Popen(program, preexec_fn=die_with_parent, close_fds=True)

  def stop(signum, frame):
    del frame
    server.send_signal(signum)

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stop)
  threading.Thread(target=relay, args=(listener, port), daemon=True).start()
  code = server.wait()
  try:
    os.unlink(socket_path)
  except OSError:
    pass
  return code


if __name__ == '__main__':
  sys.exit(main(sys.argv))
