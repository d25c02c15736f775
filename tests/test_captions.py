"""caption=auto: BLIP-2 captions as the prompt (pipelines/captions.py), offline with the tiny twin.

Checked: the tiny random-weight BLIP-2 gives a non-empty caption of at most max_length tokens,
the same for the same seed and image, another for another seed or image, without touching the
caller's RNG; the cache returns a stored caption without running the model, and its key changes
with one pixel and with the captioner's identity; resolve_caption's modes and one-line errors;
missing BLIP-2 weights give one line naming captioner.options.path; compress with caption=auto
stores the caption in the file (header bits grow by exactly its zlib bytes) and an evaluate job
writes it in its rows and files. Everything runs in a temporary $DIFFC_CACHE.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.cli import call, normalize
from diffc import format as fmt
from analysis.errors import UsageError
from diffc.checks import InvalidValue
from pipelines import captions as pc
from pipelines.common import CONF_DIR, PipelineError
from pipelines.compress import compress

TINY = {"name": "tiny-blip2", "options": {"seed": 0, "device": "cpu"}, "max_length": 75}


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 [h, w, 3] image: colour ramps plus noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    img = img + np.random.default_rng(seed).integers(0, 30, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh caption cache per test."""
    monkeypatch.setenv("DIFFC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DIFFC_BLIP2_PATH", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny() -> pc.Captioner:
    return pc.Captioner.tiny(seed=0, device="cpu")


def n_tokens(captioner: pc.Captioner, text: str) -> int:
    return len(captioner.processor.tokenizer(text, add_special_tokens=False).input_ids)


def test_tiny_captioner_is_deterministic_and_bounded(tiny: pc.Captioner) -> None:
    img = smooth_image(64, 64)
    state = torch.random.get_rng_state()
    again = pc.Captioner.tiny(seed=0, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # the weights came from a forked RNG
    caption = tiny.caption_image(img)
    assert caption and caption == caption.strip() and caption.isprintable()
    assert 1 <= n_tokens(tiny, caption) <= 75
    assert again.caption_image(img) == caption
    assert pc.Captioner.tiny(seed=1, device="cpu").caption_image(img) != caption
    assert tiny.caption_image(smooth_image(64, 64, seed=1)) != caption  # the model sees the image
    short = pc.Captioner.tiny(seed=0, device="cpu", max_length=5).caption_image(img)
    assert 1 <= n_tokens(tiny, short) <= 5 and caption.startswith(short)  # greedy: a prefix


def test_real_loader_reads_a_local_copy(tiny: pc.Captioner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """captioner=blip2's own loading code (from_pretrained on a path), on the tiny twin saved to disk."""
    copy = tmp_path / "blip2-copy"
    tiny.processor.save_pretrained(copy)
    tiny.model.save_pretrained(copy)
    img = smooth_image(48, 64)
    want = tiny.caption_image(img)
    loaded = pc.Captioner.from_pretrained(path=str(copy), dtype="float16", device="cpu")
    assert loaded.dtype == torch.float32  # float16 is forced to float32 on a CPU
    assert loaded.caption_image(img) == want
    monkeypatch.setenv("DIFFC_BLIP2_PATH", str(copy))  # the environment names the copy as well
    assert pc.resolve_caption("auto", img, {"name": "blip2", "options": {"device": "cpu"}}) == want


def test_cache_hit_skips_the_model(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    real = pc.Captioner.caption_image

    def counted(self: pc.Captioner, img: np.ndarray) -> str:
        calls.append(img.shape)
        return real(self, img)

    monkeypatch.setattr(pc.Captioner, "caption_image", counted)
    img = smooth_image(40, 56)
    first = pc.resolve_caption("auto", img, TINY)
    assert len(calls) == 1 and first
    files = list(cache.rglob("*.json"))
    assert len(files) == 1 and not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".json"]
    record = json.loads(files[0].read_text())
    assert record["caption"] == first and record["pixels_sha256"] == pc.pixels_sha256(img)
    assert record["shape"] == [40, 56, 3] and record["captioner"]["seed"] == 0

    # a hit: the same text, no model call and no model load
    monkeypatch.setattr(pc, "_load", lambda spec: pytest.fail("the model was loaded on a cache hit"))
    assert pc.resolve_caption("auto", img.copy(), TINY) == first and len(calls) == 1
    monkeypatch.undo()
    monkeypatch.setenv("DIFFC_CACHE", str(cache))
    monkeypatch.setattr(pc.Captioner, "caption_image", counted)

    # one pixel, the shape, or the captioner's identity change the key (a new file, a model call)
    other = img.copy()
    other[7, 9, 1] ^= 1
    assert pc.pixels_sha256(other) != pc.pixels_sha256(img)
    assert pc.pixels_sha256(img.reshape(56, 40, 3)) != pc.pixels_sha256(img)
    pc.resolve_caption("auto", other, TINY)
    pc.resolve_caption("auto", img, TINY | {"max_length": 20})
    assert len(calls) == 3 and len(list(cache.rglob("*.json"))) == 3
    blip2 = pc.CaptionerSpec.from_config({"name": "blip2", "options": {"revision": "abc"}})
    assert blip2.identity() == {"name": "blip2", "max_length": 75, "hub_id": pc.REFERENCE_HUB_ID, "revision": "abc"}
    # where the weights live, the device and dtype do not change the key
    assert pc.CaptionerSpec.from_config({"name": "blip2", "options": {"revision": "abc", "path": "/x", "dtype":
                                                                      "float32"}}).key() == blip2.key()

    # an unreadable cache file is remade
    files[0].write_text("{not json")
    assert pc.resolve_caption("auto", img, TINY) == first and len(calls) == 4
    assert json.loads(files[0].read_text())["caption"] == first


def test_resolve_caption_modes_and_errors() -> None:
    img = smooth_image(16, 16)
    assert pc.resolve_caption(None, img, None) == ""
    assert pc.resolve_caption("none", img, TINY) == ""
    assert pc.resolve_caption("a cat, sleeping", img, None) == "a cat, sleeping"
    assert pc.resolve_caption("auto", img, TINY) == pc.Captioner.tiny(seed=0, device="cpu").caption_image(img)
    bad = [(5, None, "caption must be auto, none or a text"),
           ("auto", None, "caption=auto needs a captioner"),
           ("auto", {"name": "blip3"}, "unknown captioner 'blip3'"),
           ("auto", TINY | {"max_length": 0}, "max_length must be a positive integer"),
           ("auto", TINY | {"options": {"seeed": 1}}, "unknown options ['seeed']")]
    for mode, cfg, needle in bad:
        with pytest.raises((UsageError, InvalidValue), match=needle.replace("[", r"\[").replace("]", r"\]")) as info:
            pc.resolve_caption(mode, img, cfg)
        assert "\n" not in str(info.value)
    with pytest.raises(PipelineError, match="uint8"):
        pc.resolve_caption("auto", img.astype(np.float32), TINY)


def test_missing_weights_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    img = smooth_image(16, 16)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cases = [({"path": str(tmp_path / "nowhere")}, "is not a directory"),
             ({"path": str(empty)}, "could not load BLIP-2 from captioner.options.path"),
             ({"hub_id": "diffc-tests/no-such-blip2"}, "not in the Hugging Face cache")]
    for options, needle in cases:
        with pytest.raises(PipelineError) as info:
            pc.resolve_caption("auto", img, {"name": "blip2", "options": options | {"device": "cpu"}})
        msg = str(info.value)
        assert needle in msg and "\n" not in msg and "captioner.options.path" in msg, msg
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing cached on failure


def run_compress(image: Path, out: Path, *extra: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    args = ["model=tiny-sd15", f"input={image}", f"output={out}", "timestep=500", "progress=false", *extra]
    # quoted as the command line does
    code = call(compress, "compress", normalize(args, verbatim=("caption",)), CONF_DIR)
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


def test_compress_caption_auto_lands_in_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    img = smooth_image(64, 64)
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    caption = pc.Captioner.tiny(seed=0, device="cpu").caption_image(img)
    files = {mode: tmp_path / f"{mode}.diffc" for mode in ("auto", "none")}
    for mode, f in files.items():
        code, out, err = run_compress(path, f, f"caption={mode}", "captioner=tiny-blip2", capsys=capsys)
        assert code == 0, err
        assert ("caption (auto)" in out) == (mode == "auto")
    headers = {mode: fmt.read(f.read_bytes())[0] for mode, f in files.items()}
    assert headers["auto"].caption == caption and headers["none"].caption is None
    sizes = {mode: f.stat().st_size for mode, f in files.items()}
    assert sizes["auto"] > sizes["none"]  # bpp = 8 x file bytes / pixels counts the caption
    # the header grows by the caption's zlib bytes and its varint length (no caption: a flag bit, no byte)
    n = len(zlib.compress(caption.encode(), 9))
    assert fmt.header_size(headers["auto"]) - fmt.header_size(headers["none"]) == n + 1 + (n > 127)

    # the same literal text gives the same file: auto only chooses the text
    lit = tmp_path / "lit.diffc"
    code, _, err = run_compress(path, lit, f"caption={caption}", capsys=capsys)
    assert code == 0, err
    assert lit.read_bytes() == files["auto"].read_bytes()

    # missing BLIP-2 weights: one line, exit 2, no output
    bad = tmp_path / "bad.diffc"
    code, _, err = run_compress(path, bad, "caption=auto", f"captioner.options.path={tmp_path / 'nope'}",
                                capsys=capsys)
    assert code == 2 and not bad.exists()
    assert err.strip().count("\n") == 0 and "captioner.options.path" in err


def test_evaluate_rows_carry_the_auto_caption(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    from analysis.results import load_results
    from pipelines.common import CONF_DIR
    from pipelines.evaluate import run_job

    images = tmp_path / "images"
    images.mkdir()
    img = smooth_image(32, 32, seed=3)
    Image.fromarray(img).save(images / "a.png")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny-sd15", "dataset=folder", f"dataset.options.path={images}",
                                           "bitrate.stop_timesteps=[300]", "codec.channel.chunk_bits=4",
                                           "codec.channel.padding_bits=1", "caption=auto", "captioner=tiny-blip2",
                                           "captioner.options.device=cpu", "progress=false"])
    job = tmp_path / "job"
    run_job(cfg, job)
    rows, _ = load_results(job)
    caption = pc.Captioner.tiny(seed=0, device="cpu").caption_image(img)
    codec_rows = rows[rows["kind"] == "codec"]
    assert len(codec_rows) == 1 and list(codec_rows["caption"]) == [caption]
    (diffc_file,) = (job / "diffc" / "a").glob("*.diffc")
    assert fmt.read(diffc_file.read_bytes())[0].caption == caption
