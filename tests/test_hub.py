"""Offline behaviour: an unreachable hub is detected once and fails in one line, without retries."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _reachable(env: dict) -> bool:
    code = "from dait_cache.hub import hub_reachable; print(hub_reachable())"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    return out.stdout.strip() == "True"


def test_the_probe_sees_a_listening_endpoint_and_honours_hf_hub_offline():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert _reachable({"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"})
        assert not _reachable({"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "1"})
    finally:
        server.close()
    assert not _reachable({"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"})  # nobody listens now


def test_pretrained_weights_without_a_hub_fail_in_one_line_without_retries(tiny_cache_workspace, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "--workdir",
            str(tiny_cache_workspace),
            "train-student",
            "--arch",
            "resnet18",
            "--method",
            "none",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--name",
            "offline",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - t0
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, lines
    assert (
        "Hugging Face Hub cannot be reached" in lines[0]
        and "--weights PATH" in lines[0]
        and "--no-pretrained" in lines[0]
    )
    assert seconds < 40  # huggingface_hub's own retries alone take about a minute


def test_random_weights_are_seeded_leave_the_callers_rng_and_warn_nothing(tmp_path, caplog):
    import json
    import logging

    import open_clip
    import torch

    from dait_cache.vlm import RANDOM_WEIGHTS, load_vlm
    from tests.tiny_vlm import TINY_CFG

    (tmp_path / "tiny-random-clip.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(tmp_path)  # a built-in name, as convnext_xxlarge is, without its size
    with caplog.at_level(logging.WARNING):
        caller = torch.manual_seed(3).get_state()
        first = load_vlm("tiny-random-clip", RANDOM_WEIGHTS, "cpu").model.state_dict()
        assert torch.equal(torch.get_rng_state(), caller)
        torch.manual_seed(4)  # the weights do not depend on the caller's state
        second = load_vlm("tiny-random-clip", RANDOM_WEIGHTS, "cpu").model.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert [r.getMessage() for r in caplog.records] == []  # asked for random weights: nothing to warn about
    # the fingerprint's "random-init" names one set of weights: open_clip's init after seed 0
    torch.manual_seed(0)
    reference = open_clip.create_model("tiny-random-clip", pretrained=None, precision="fp32").state_dict()
    assert reference.keys() == first.keys() and all(torch.equal(first[k], reference[k]) for k in first)


def test_a_vlm_weights_file_that_does_not_load_is_named_not_called_offline(tmp_path):
    import json

    import open_clip
    import pytest
    import torch

    from dait_cache.errors import ModelError
    from dait_cache.vlm import load_vlm
    from tests.tiny_vlm import TINY_CFG

    (tmp_path / "tiny-file-clip.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(tmp_path)
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 4)
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    said = {}
    for name in ("noise.bin", "other.pt"):
        with pytest.raises(ModelError) as err:  # were an UnpicklingError traceback and "If this machine is offline"
            load_vlm("tiny-file-clip", str(tmp_path / name), "cpu")
        said[name] = str(err.value)
    fix = "pass the open_clip weights of tiny-file-clip (a state dict: .bin, .pt or .safetensors)"
    assert said["noise.bin"] == (
        f"weights file {tmp_path / 'noise.bin'} does not load into VLM 'tiny-file-clip' (not tensors torch loads "
        f"with weights_only=True: damaged, not a torch file, or a pickle that runs code); {fix}"
    )
    assert said["other.pt"].startswith(
        f"weights file {tmp_path / 'other.pt'} does not load into VLM 'tiny-file-clip' (RuntimeError: Error(s) in "
        'loading state_dict for CLIP: Missing key(s) in state_dict: "positional_embedding"'
    )
    assert said["other.pt"].endswith(fix) and "offline" not in said["other.pt"]


@pytest.fixture
def fresh_probe(monkeypatch):
    """probe(env, connect): hub_reachable asked anew under ``env``, its TCP connections recorded
    and answered by ``connect`` (none: unreachable); the answer is forgotten afterwards."""
    from dait_cache import hub

    def probe(env: dict, connect=None) -> list:
        for key in ("HF_ENDPOINT", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        tried = []

        def fake_connect(address, timeout):
            tried.append((address, timeout))
            if connect is None:
                raise OSError("network unreachable")
            return connect

        monkeypatch.setattr(hub.socket, "create_connection", fake_connect)
        hub.hub_reachable.cache_clear()
        return tried

    yield probe
    hub.hub_reachable.cache_clear()  # a later test probes for real


class _Open:
    def close(self):
        pass


def test_the_probe_dials_the_endpoints_host_and_port_once_per_process(fresh_probe):
    from dait_cache import hub

    for endpoint, address in [
        (None, ("huggingface.co", 443)),
        ("http://mirror.example", ("mirror.example", 80)),
        ("https://mirror.example:8443/hf", ("mirror.example", 8443)),
    ]:
        tried = fresh_probe({"HF_ENDPOINT": endpoint} if endpoint else {}, connect=_Open())
        assert hub.hub_reachable() and hub.hub_reachable()
        assert tried == [(address, hub.PROBE_SECONDS)]  # asked once, whatever asks again


def test_hf_hub_offline_spelled_any_way_huggingface_hub_accepts_means_offline(fresh_probe):
    from dait_cache import hub

    for value in ("1", "true", "YES", "On"):
        tried = fresh_probe({"HF_HUB_OFFLINE": value}, connect=_Open())
        assert not hub.hub_reachable() and tried == []  # no connection is even tried


def test_offline_mode_is_switched_on_only_when_the_hub_cannot_be_reached(monkeypatch, fresh_probe):
    from huggingface_hub import constants

    from dait_cache import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fresh_probe({}, connect=_Open())
    assert hub.prefer_offline() is False and constants.HF_HUB_OFFLINE is False
    fresh_probe({})  # nobody answers
    assert hub.prefer_offline() is True and constants.HF_HUB_OFFLINE is True


def test_a_download_that_fails_with_the_hub_reachable_says_why_and_what_to_do_offline(monkeypatch, fresh_probe):
    import open_clip.pretrained
    from huggingface_hub import constants

    from dait_cache.errors import ModelError
    from dait_cache.vlm import load_vlm

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fresh_probe({}, connect=_Open())  # the probe is answered: the download itself fails

    def unavailable(*args, **kwargs):  # the network's answer, in place of the network
        raise ConnectionError("503 Server Error: Service Unavailable")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", unavailable)
    with pytest.raises(ModelError) as err:
        load_vlm("hf-hub:laion/CLIP-tiny", None, "cpu")
    said = str(err.value)  # open_clip's own words in between
    assert said.startswith("could not obtain weights for VLM 'hf-hub:laion/CLIP-tiny' (pretrained=None): ")
    assert "503 Server Error: Service Unavailable" in said and "cannot be reached" not in said and "\n" not in said
    assert said.endswith(
        ". If this machine is offline, copy the weights here and pass --pretrained /path/to/weights (a file) or "
        "--vlm local-dir:/path (a folder with open_clip_config.json and weights)"
    )
    assert constants.HF_HUB_OFFLINE is False  # a reachable hub is not switched off
