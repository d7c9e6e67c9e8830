"""CLIP specs, weights lookup and loading, with real open_clip and tiny models (no network)."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from rs_edit.errors import ParameterError
from rs_edit.guidance import clip as clipmod
from rs_edit.guidance.clip import (
    CLIP_DIR_ENV,
    TINY_ARCH,
    TINY_RANDOM,
    RandomClipWarning,
    check_clip_spec,
    clear_clip_cache,
    load_clip,
    resolve_remoteclip_weights,
)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_clip_cache()
    yield
    clear_clip_cache()


def _tiny(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomClipWarning)
        return load_clip(TINY_RANDOM, **kwargs)


def _state(clip):
    return {k: v.clone() for k, v in clip.model.state_dict().items()}


# --- tiny-random -----------------------------------------------------------------------------


def test_tiny_random_loads_warns_and_is_deterministic():
    lines = []
    rng = torch.get_rng_state()
    with pytest.warns(RandomClipWarning, match="MEANINGLESS"):
        first = load_clip(TINY_RANDOM, log=lines.append)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's RNG is untouched
    assert any("RANDOM" in line and "MEANINGLESS" in line for line in lines)
    assert first.is_random and first.name == TINY_RANDOM
    assert (first.image_size, first.embed_dim) == (64, 64)
    assert not any(p.requires_grad for p in first.model.parameters())
    assert not first.model.training

    with pytest.warns(RandomClipWarning):  # loud on every load, cached or not
        assert load_clip("tiny-random") is first
    clear_clip_cache()
    second = _tiny()
    assert second is not first
    a, b = _state(first), _state(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_encoders_shapes_norms_and_target():
    clip = _tiny()
    prompts = ["a fire in the forest", "an aerial photo of a burning forest", "smoke"]
    text = clip.encode_text(prompts)
    assert text.shape == (3, clip.embed_dim) and not text.requires_grad
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    target = clip.text_target(prompts)
    assert target.shape == (clip.embed_dim,)
    assert torch.allclose(target, F.normalize(text.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(clip.text_target(prompts[:1]), text[0], atol=1e-6)

    images = torch.rand(2, 3, 50, 70)  # any size: resized inside
    emb = clip.encode_image(images)
    assert emb.shape == (2, clip.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    sims = clip.similarity(images, target)
    assert sims.shape == (2,)
    assert torch.allclose(sims, emb @ target, atol=1e-6)
    assert sims.abs().max() <= 1 + 1e-5
    with pytest.raises(ParameterError):
        clip.encode_text([])


def test_gradients_reach_the_image():
    clip = _tiny()
    target = clip.text_target(["a flooded river"])
    images = torch.rand(3, 3, 40, 40, requires_grad=True)
    (1 - clip.similarity(images, target).mean()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.model.parameters())  # CLIP stays frozen


# --- checkpoints -----------------------------------------------------------------------------


def _perturbed_tiny_state():
    state = _state(_tiny())
    gen = torch.Generator().manual_seed(7)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()}


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "module", "safetensors"])
def test_real_loading_path_with_a_saved_checkpoint(tmp_path, wrap):
    saved = _perturbed_tiny_state()
    payload = {
        "bare": saved,
        "state_dict": {"state_dict": saved, "epoch": 3},
        "module": {"state_dict": {f"module.{k}": v for k, v in saved.items()}},
        "safetensors": None,
    }[wrap]
    if wrap == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in saved.items()}, path)
    else:
        path = tmp_path / "weights.pt"
        torch.save(payload, path)
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomClipWarning)
        clip = load_clip(f"{TINY_ARCH}={path}", log=lines.append)
    assert not clip.is_random and clip.name == f"{TINY_ARCH}={path.resolve()}"
    loaded = clip.model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert any(str(path.resolve()) in line for line in lines)
    assert clip.encode_text(["x"]).shape == (1, 64)


def test_bare_path_reveals_the_architecture(tmp_path):
    named = tmp_path / f"finetuned-{TINY_ARCH}.pt"
    torch.save(_perturbed_tiny_state(), named)
    assert check_clip_spec(str(named)) == f"{TINY_ARCH}={named.resolve()}"
    assert not load_clip(str(named)).is_random

    anonymous = tmp_path / "weights.pt"
    anonymous.write_bytes(named.read_bytes())
    with pytest.raises(ParameterError, match="ARCH="):
        check_clip_spec(str(anonymous))


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ParameterError, match="cannot read CLIP checkpoint") as info:
        load_clip(f"{TINY_ARCH}={corrupt}")
    assert "weights_only" not in str(info.value)  # never advise unsafe unpickling

    truncated = tmp_path / "truncated.pt"
    torch.save(_perturbed_tiny_state(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(ParameterError, match="cannot read CLIP checkpoint"):
        load_clip(f"{TINY_ARCH}={truncated}")

    state = _perturbed_tiny_state()
    state.pop("text_projection")
    state["bogus.weight"] = torch.zeros(2)
    mismatched = tmp_path / "mismatched.pt"
    torch.save(state, mismatched)
    with pytest.raises(ParameterError, match="does not fit architecture") as info:
        load_clip(f"{TINY_ARCH}={mismatched}")
    assert "text_projection" in str(info.value) and "bogus.weight" in str(info.value)

    # Another architecture's keys (RN50 has none of the ViT keys).
    with pytest.raises(ParameterError, match="does not fit architecture RN50"):
        load_clip(f"RN50={mismatched}")

    not_tensors = tmp_path / "dict.pt"
    torch.save({"a": 1}, not_tensors)
    with pytest.raises(ParameterError, match="not a tensor"):
        load_clip(f"{TINY_ARCH}={not_tensors}")


# --- RemoteCLIP lookup -----------------------------------------------------------------------


def test_remoteclip_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env_dir, cache_dir = tmp_path / "env", tmp_path / "cache"
    env_dir.mkdir()
    cache_dir.mkdir()
    monkeypatch.setenv(CLIP_DIR_ENV, str(env_dir))
    (cache_dir / "RemoteCLIP-RN50.pt").write_bytes(b"c")
    assert (
        resolve_remoteclip_weights("RemoteCLIP-RN50", cache_dir) == cache_dir / "RemoteCLIP-RN50.pt"
    )
    (env_dir / "RemoteCLIP-RN50.pt").write_bytes(b"e")
    assert (
        resolve_remoteclip_weights("RemoteCLIP-RN50", cache_dir) == env_dir / "RemoteCLIP-RN50.pt"
    )


def test_remoteclip_default_folder_follows_the_cache_root(tmp_path, monkeypatch):
    """Without a cache_dir argument the weights are looked for in RS_EDIT_CACHE_DIR/clip."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(CLIP_DIR_ENV, raising=False)
    monkeypatch.setenv("RS_EDIT_CACHE_DIR", str(tmp_path / "root"))
    folder = tmp_path / "root" / "clip"
    folder.mkdir(parents=True)
    (folder / "RemoteCLIP-RN50.pt").write_bytes(b"w")
    assert resolve_remoteclip_weights("RemoteCLIP-RN50") == folder / "RemoteCLIP-RN50.pt"


def test_remoteclip_from_hf_cache_never_goes_online_when_offline(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(CLIP_DIR_ENV, str(tmp_path))
    cached = tmp_path / "hf" / "RemoteCLIP-ViT-B-32.pt"
    calls = []

    def fake_download(repo_id, filename, *, local_files_only=False, **kwargs):
        calls.append((repo_id, filename, local_files_only))
        if local_files_only and cached.exists():
            return str(cached)
        raise FileNotFoundError(filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(ParameterError):
        resolve_remoteclip_weights("RemoteCLIP-ViT-B-32", tmp_path / "none")
    assert calls and all(local for _, _, local in calls)
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    assert resolve_remoteclip_weights("RemoteCLIP-ViT-B-32", tmp_path / "none") == cached
    assert calls[-1] == ("chendelong/RemoteCLIP", "RemoteCLIP-ViT-B-32.pt", True)


def test_missing_remoteclip_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(CLIP_DIR_ENV, str(tmp_path / "env"))
    started = time.perf_counter()
    with pytest.raises(ParameterError) as info:
        load_clip("RemoteCLIP-ViT-B-32", cache_dir=tmp_path / "cache")
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert "\n" not in message
    assert "RemoteCLIP-ViT-B-32.pt" in message
    assert str(tmp_path / "cache") in message and CLIP_DIR_ENV in message


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    """Not marked offline, but the Hub cannot be reached: one probe, no 25 s of retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(CLIP_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(clipmod, "_hub_reachable", lambda timeout=3.0: False)
    started = time.perf_counter()
    with pytest.raises(ParameterError, match="not reachable"):
        resolve_remoteclip_weights("RemoteCLIP-RN50", tmp_path)
    assert time.perf_counter() - started < 5


# --- specs -----------------------------------------------------------------------------------


def test_check_clip_spec(tmp_path):
    weights = tmp_path / "RemoteCLIP-ViT-B-32.pt"
    weights.write_bytes(b"not loaded by the check")
    assert check_clip_spec(" tiny-random ") == TINY_RANDOM
    assert check_clip_spec("RemoteCLIP-ViT-B-32") == "RemoteCLIP-ViT-B-32"
    assert check_clip_spec("remoteclip-rn50") == "RemoteCLIP-RN50"
    assert check_clip_spec(f"vit-b-32={weights}") == f"ViT-B-32={weights.resolve()}"
    assert check_clip_spec(str(weights)) == f"ViT-B-32={weights.resolve()}"
    cases = {
        "": "empty",
        "ViT-B-32": "ViT-B-32=PATH",
        "RN50": "RN50=PATH",
        "no-such-clip": "unknown CLIP model",
        f"NoSuchArch={weights}": "unknown CLIP architecture",
        f"ViT-B-32={tmp_path / 'missing.pt'}": "not found",
        str(tmp_path / "missing.pt"): "not found",
        "ViT-B-32=": "ARCH=PATH",
    }
    for spec, match in cases.items():
        with pytest.raises(ParameterError, match=match):
            check_clip_spec(spec)
        with pytest.raises(ParameterError, match=match):
            load_clip(spec)
