"""Make the files to try TLS workers: a CA, a worker certificate, a trainer certificate, a token.

Writes to --out_dir (created; existing files are not overwritten):

  ca.pem                 the CA certificate (give it to both sides: --tls_ca, --tls_client_ca)
  worker.pem, worker.key the worker's certificate, valid for --hosts, and its key
  trainer.pem, trainer.key  the trainer's client certificate and key
  token                  a random token (both sides' --auth_token_file)

Keys are ECDSA P-256, certificates valid for --days days, made with the `cryptography`
package. A self-made CA suits a trial or a closed federation; an institution's own CA is the
usual choice in production (docs/deployment.md).

Examples:
  python bin/make_certs.py --out_dir=certs --hosts=localhost,127.0.0.1
  python bin/make_certs.py --out_dir=certs --hosts=worker-a.hospital.org,10.0.0.5
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import sys

import _cli
from absl import flags

flags.DEFINE_string('out_dir', 'certs', 'Folder to write the files to.')
flags.DEFINE_list('hosts', ['localhost', '127.0.0.1'], 'Names and IP addresses the worker '
                  'certificate is valid for: those the trainer dials (--workers).')
flags.DEFINE_integer('days', 365, 'Days the certificates stay valid.')
FLAGS = flags.FLAGS

FILES = ('ca.pem', 'worker.pem', 'worker.key', 'trainer.pem', 'trainer.key', 'token')


def make(out_dir: str, hosts: list[str], days: int = 365) -> None:
  """Writes `FILES` to `out_dir` (see the module docstring)."""
  from cryptography import x509  # noqa: PLC0415
  from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
  from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
  from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

  now = datetime.datetime.now(datetime.UTC)

  def name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

  def certificate(subject, key, issuer, issuer_key, *, ca=False, usage=None, names=()):
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage:
      builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
      builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())

  def pem(value):
    if isinstance(value, x509.Certificate):
      return value.public_bytes(serialization.Encoding.PEM)
    return value.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

  def san(host):
    try:
      return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
      return x509.DNSName(host)

  ca_key, worker_key, trainer_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
  ca = certificate(name('tff-gan trial CA'), ca_key, name('tff-gan trial CA'), ca_key, ca=True)
  worker = certificate(name(hosts[0]), worker_key, ca.subject, ca_key,
                       usage=ExtendedKeyUsageOID.SERVER_AUTH, names=[san(h) for h in hosts])
  trainer = certificate(name('tff-gan trainer'), trainer_key, ca.subject, ca_key,
                        usage=ExtendedKeyUsageOID.CLIENT_AUTH)
  contents = {'ca.pem': pem(ca), 'worker.pem': pem(worker), 'worker.key': pem(worker_key),
              'trainer.pem': pem(trainer), 'trainer.key': pem(trainer_key),
              'token': (secrets.token_hex(32) + '\n').encode()}
  os.makedirs(out_dir, exist_ok=True)
  for file_name, data in contents.items():
    descriptor = os.open(os.path.join(out_dir, file_name), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o600 if file_name.endswith(('.key', 'token')) else 0o644)
    with os.fdopen(descriptor, 'wb') as f:
      f.write(data)


def main(argv: list[str]) -> int:
  program = os.path.basename(argv[0])
  _cli.parse_flags(argv, __doc__)
  if not FLAGS.hosts or FLAGS.days < 1:
    _cli.usage_error(program, 'give at least one --hosts name and --days >= 1.')
  existing = [f for f in FILES if os.path.exists(os.path.join(FLAGS.out_dir, f))]
  if existing:
    _cli.usage_error(program, f'{FLAGS.out_dir} already holds {", ".join(existing)}; choose '
                     'another --out_dir or remove them.')
  make(FLAGS.out_dir, FLAGS.hosts, FLAGS.days)
  print(f'{program}: wrote {", ".join(FILES)} to {FLAGS.out_dir} (worker valid for '
        f'{", ".join(FLAGS.hosts)}).')
  return 0


if __name__ == '__main__':
  sys.exit(_cli.run(main))
