"""`make notebook` (bin/notebook.py): JupyterLab on the project's `.venv`, its kernel registered."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import portpicker
from conftest import REPO_ROOT

NOTEBOOK = os.path.join(REPO_ROOT, 'bin', 'notebook.py')


def test_serves_the_tutorials_with_the_project_kernel_on_loopback(short_tmp_dir):
  port = portpicker.pick_unused_port()
  server = subprocess.Popen([sys.executable, NOTEBOOK, f'--port={port}'], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                            env=dict(os.environ, TMPDIR=short_tmp_dir))
  try:
    assert 'kernel "tff-gan (.venv)" registered' in server.stdout.readline()
    deadline, url = time.monotonic() + 60, None
    while url is None:  # Jupyter prints the URL, with its token, once it serves.
      assert time.monotonic() < deadline and server.poll() is None, server.stderr.read()
      found = re.search(rf'(http://127\.0\.0\.1:{port}/lab\?token=(\w+))', server.stderr.readline())
      url = found and found.group(1)
    token = found.group(2)

    def get(path):
      while True:  # Jupyter prints the URL a moment before it accepts connections.
        try:
          with urllib.request.urlopen(f'{url.split("/lab")[0]}{path}?token={token}') as response:
            return json.load(response)
        except urllib.error.URLError:
          assert time.monotonic() < deadline and server.poll() is None
          time.sleep(0.2)

    kernels = get('/api/kernelspecs')
    assert kernels['default'] == 'tff-gan'
    assert kernels['kernelspecs']['tff-gan']['spec']['argv'][0] == sys.executable
    notebooks = {entry['name'] for entry in get('/api/contents/')['content']}
    assert {'quickstart.ipynb', 'privacy.ipynb', 'remote_workers.ipynb'} <= notebooks
  finally:
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=30)
  assert not os.listdir(short_tmp_dir)  # ipykernel's staging directory of the kernel spec.
