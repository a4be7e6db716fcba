"""TLS and authentication for remote workers: a gRPC front for a confined TFF worker.

TFF's `worker_binary` speaks plaintext gRPC and has no authentication. `bin/worker.py` with
TLS therefore runs it confined (`tff_gan.runtime.confine`: a network namespace of its own,
reached only through a Unix socket) and puts this front on the network: a gRPC server with
TLS (`grpc.ssl_server_credentials`; with a client CA, a client certificate is required) that
checks a bearer token, if one is set, on every call, then forwards the call's bytes unchanged
to the worker. TFF's executor protocol (`tensorflow_federated.v0.ExecutorGroup`) is all
unary calls, so the front is a generic unary forwarder; it never parses a value.

The trainer's side is `channel_credentials`: the CA that signed the worker's certificate, an
optional client certificate, and the token, sent as `authorization: Bearer <token>` (gRPC
sends call credentials only over TLS).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hmac

import grpc

# TFF's values (weights, datasets' keys) can be large; no size limit on either hop.
_OPTIONS = [('grpc.max_send_message_length', -1), ('grpc.max_receive_message_length', -1)]
_THREADS = 32


@dataclasses.dataclass(frozen=True)
class ServerTls:
  """A worker's TLS settings, read from files.

  Attributes:
    certificate: PEM certificate chain the worker presents.
    private_key: PEM private key of that certificate.
    client_ca: PEM CA certificates; if set, clients must present a certificate it signed.
    token: If set, every call must carry it as a bearer token.
  """

  certificate: bytes
  private_key: bytes
  client_ca: bytes | None = None
  token: str | None = None

  @classmethod
  def from_files(cls, certificate: str, private_key: str, client_ca: str = '',
                 token: str = '') -> ServerTls:
    """Reads the settings from PEM files and a token file ('' for one not given).

    Raises:
      OSError: If a file cannot be read.
      ValueError: If the token file holds no single token (`read_token`).
    """
    return cls(certificate=_read(certificate), private_key=_read(private_key),
               client_ca=_read(client_ca), token=read_token(token) if token else None)


@dataclasses.dataclass(frozen=True)
class ClientTls:
  """The trainer's TLS settings for its remote workers, read from files.

  Attributes:
    ca: PEM CA certificates that signed the workers' certificates.
    certificate: Optional PEM client certificate (for workers that require one).
    private_key: Its PEM private key.
    token: Optional bearer token the workers expect.
  """

  ca: bytes
  certificate: bytes | None = None
  private_key: bytes | None = None
  token: str | None = None

  @classmethod
  def from_files(cls, ca: str, certificate: str = '', private_key: str = '',
                 token: str = '') -> ClientTls:
    """Reads the settings from PEM files and a token file ('' for one not given).

    Raises:
      OSError: If a file cannot be read.
      ValueError: If the token file holds no single token (`read_token`).
    """
    return cls(ca=_read(ca), certificate=_read(certificate), private_key=_read(private_key),
               token=read_token(token) if token else None)


def _read(path: str) -> bytes | None:
  """The bytes of file `path`, or None for ''."""
  if not path:
    return None
  with open(path, 'rb') as f:
    return f.read()


def read_token(path: str) -> str:
  """The token in file `path` (surrounding whitespace dropped); ValueError if it is empty."""
  with open(path, encoding='utf-8') as f:
    token = f.read().strip()
  if not token or any(c.isspace() for c in token):
    raise ValueError(f'{path} must hold one token without spaces; write e.g. the output of '
                     '`openssl rand -hex 32` to it.')
  return token


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
  """TLS credentials for a channel to a worker, with the bearer token when there is one."""
  credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca,
                                             private_key=tls.private_key,
                                             certificate_chain=tls.certificate)
  if tls.token is None:
    return credentials
  return grpc.composite_channel_credentials(
      credentials, grpc.access_token_call_credentials(tls.token))


class _Forwarder(grpc.GenericRpcHandler):
  """Every unary call, once its token checks out, forwarded as bytes to `backend`."""

  def __init__(self, backend: grpc.Channel, token: str | None):
    self._backend = backend
    self._expected = None if token is None else f'Bearer {token}'.encode()

  def _authorized(self, metadata) -> bool:
    if self._expected is None:
      return True
    sent = dict(metadata or ()).get('authorization', '')
    return hmac.compare_digest(sent.encode(), self._expected)

  def service(self, handler_call_details):
    authorized = self._authorized(handler_call_details.invocation_metadata)
    forward = self._backend.unary_unary(handler_call_details.method)

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
      if not authorized:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, 'missing or wrong token')
      try:
        return forward(request)
      except grpc.RpcError as e:
        context.abort(e.code(), e.details() or '')

    return grpc.unary_unary_rpc_method_handler(handle)


def serve(backend_target: str, address: str, tls: ServerTls | None) -> grpc.Server:
  """Starts the front on `address` (`host:port`), forwarding to `backend_target`.

  Without `tls` it listens in plaintext: callers allow that on loopback addresses only.

  Raises:
    RuntimeError: If the address cannot be bound (gRPC reports port 0).
  """
  backend = grpc.insecure_channel(backend_target, _OPTIONS)
  server = grpc.server(concurrent.futures.ThreadPoolExecutor(_THREADS), options=_OPTIONS)
  server.add_generic_rpc_handlers([_Forwarder(backend, None if tls is None else tls.token)])
  if tls is None:
    bound = server.add_insecure_port(address)
  else:
    credentials = grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate)], root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None)
    bound = server.add_secure_port(address, credentials)
  if not bound:
    raise RuntimeError(f'cannot listen on {address}; is the port taken?')
  server.start()
  return server
