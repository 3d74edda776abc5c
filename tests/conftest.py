"""Shared fixtures: small random CLIP models and deterministic inputs."""

from __future__ import annotations

import pytest
import torch

from cliplab.model import CLIP, CLIPConfig, TextConfig, VisionConfig, get_preset

# Small architectures covering both image towers and both activations.
SMALL_CONFIGS = {
    "vit-gelu": lambda: get_preset("ViT-nano"),
    "rn-gelu": lambda: get_preset("RN-nano"),
    "vit-quickgelu": lambda: CLIPConfig(
        embed_dim=96,
        vision=VisionConfig(image_size=48, layers=2, width=128, patch_size=16, heads=2),
        text=TextConfig(width=128, heads=2, layers=2),
        quick_gelu=True,
    ),
}


def random_model(config: CLIPConfig, seed: int = 0) -> CLIP:
    """A CLIP with random weights whose features are far from zero (so absolute tolerances mean
    something): OpenAI's init, plus randomised LayerNorm/BatchNorm affine parameters and statistics."""
    torch.manual_seed(seed)
    model = CLIP(config)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                tensor.uniform_(0.5, 1.5)
            elif ".bn" in name or "downsample.1" in name:
                if name.endswith("running_var"):
                    tensor.uniform_(0.5, 1.5)
                elif name.endswith(("running_mean", "bias")):
                    tensor.normal_(0, 0.1)
                elif name.endswith("weight"):
                    tensor.uniform_(0.5, 1.5)
    return model.eval()


def random_pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator)


def random_tokens(n: int, context: int = 77, seed: int = 0) -> torch.Tensor:
    """Token ids shaped like the tokenizer's: SOT, random BPE ids, EOT, zero padding (varied lengths,
    including one that fills the whole context)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        length = context if i == 0 else int(torch.randint(2, context, (1,), generator=generator))
        ids[i, :length] = torch.randint(1, 49406, (length,), generator=generator)
        ids[i, 0], ids[i, length - 1] = 49406, 49407
    return ids


@pytest.fixture(params=list(SMALL_CONFIGS))
def small_config(request) -> CLIPConfig:
    return SMALL_CONFIGS[request.param]()


@pytest.fixture(autouse=True)
def isolated_cliplab_home(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's ~/.cache/cliplab, but let them read the sample corpus's installed
    art (installed once by `make test`, not by each test)."""
    from cliplab.paths import sources_dir

    monkeypatch.setenv("CLIPLAB_SOURCES", str(sources_dir()))
    monkeypatch.setenv("CLIPLAB_HOME", str(tmp_path_factory.mktemp("cliplab_home")))


@pytest.fixture
def two_node_cluster():
    """A Ray cluster of two nodes on this machine, started as the README starts one (`ray start --head`,
    then `ray start --address` for a worker node), with token authentication. Yields the address and the
    environment that every Ray process (`cliplab index --ray`, `cliplab data download --ray`, ...) needs to join it."""
    import os
    import secrets
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the `ray` command is not installed")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    address = "127.0.0.1:6391"
    try:
        for args in (["--head", "--port", address.split(":")[1], "--include-dashboard=false"], ["--address", address]):
            subprocess.run(
                [ray_cli, "start", *args, "--num-cpus", "1", "--disable-usage-stats"],
                env=env,
                check=True,
                capture_output=True,
                timeout=180,
            )
        yield address, env
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=180)
