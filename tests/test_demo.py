"""The demo's planned path: the retriever plans the bundled document for the question.

A real command (`landmark demo`) on the real default models (SmolLM2 + the bundled retriever and
embedder): the 4,351-token document gets at most 1,024 soft tokens (windows around the best
spans at k=1; the shipped embedder's factors are off by its factor check) and the answer must
still name the designer, a fact stated once in the middle of the document.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.smollm2


def test_demo_answers_from_a_compressed_planned_document() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "vllm_landmark.cli", "demo", "--budget", "1024"]
    command += ["--retriever", "default", "--check"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    match = re.search(r"document: (\d+) tokens, injected as (\d+) soft tokens", result.stdout)
    assert match, result.stdout[-2000:]
    raw, injected = int(match[1]), int(match[2])
    assert injected <= 1024 < raw
