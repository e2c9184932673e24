"""GPU discovery reads a real process through the real /proc: a child started with argv[0]
"vllm" and the GPU variables a vLLM container has."""

import os
import subprocess
import sys
import time

from exporter.sources.gpu_discovery import ProcTree, looks_like_vllm

UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-0000-0000-00000000000{i}" for i in range(4)]


def test_reads_a_real_process_through_the_real_proc():
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "NVIDIA_VISIBLE_DEVICES": UUIDS[2], "CUDA_VISIBLE_DEVICES": ""}
    # argv[0] "vllm", run by this Python, alive until its stdin closes.
    child = subprocess.Popen(
        ["vllm", "-c", "import sys; sys.stdin.read()", "serve"],
        executable=sys.executable,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tree = ProcTree()
        deadline = time.monotonic() + 5
        while (info := tree.process(child.pid)) is None or info.argv[0] != "vllm":
            assert time.monotonic() < deadline, "the child never appeared in /proc"
            time.sleep(0.01)
        assert (
            info.argv[0] == "vllm"
            and info.argv[-1] == "serve"
            and info.ppid == os.getpid()
            and looks_like_vllm(info.argv)
        )
        assert tree.environ(child.pid)["NVIDIA_VISIBLE_DEVICES"] == UUIDS[2]
        assert tree.uid(child.pid) == os.geteuid()
        assert child.pid in tree.pids()
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
