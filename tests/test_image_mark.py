"""The keyed image mark, version 2 (media/image_mark.py): found after everyday handling, never without the key,
its null distribution what the theory says, and version-1 files still verified."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from genforge.cli import app
from genforge.data import load_image_dataset
from genforge.media import attacks
from genforge.media.image_mark import Alignment, ImageMark
from genforge.media.images import encode
from genforge.media.legacy_mark import ImageMarkV1
from genforge.media.provenance import Record
from genforge.media.watermark import MarkKey, normal_sf, psnr

KEY = MarkKey(b"0123456789abcdef0123456789abcdef")
OTHER = MarkKey(b"fedcba9876543210fedcba9876543210")
SHARED_DATA = Path(os.environ.get("GENFORGE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
runner = CliRunner()


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("mnist-mini").images[:120].numpy()


@pytest.fixture(scope="module")
def photos():
    """120 real CIFAR-10 photographs (32x32 colour), every 400th of the JPEG archive's training images."""
    out = []
    with tarfile.open(SHARED_DATA / "cifar10-jpeg" / "cifar10-jpeg75.tar.gz") as archive:
        for i, member in enumerate(archive):
            if member.isfile() and member.name.endswith(".jpg") and i % 400 == 0:
                out.append(np.asarray(Image.open(io.BytesIO(archive.extractfile(member).read())).convert("RGB")))
            if len(out) == 120:
                break
    return np.stack(out)


def _rate(mark, images) -> float:
    return float(np.mean([r["detected"] for r in mark.detect_many(images)]))


def test_photos_survive_the_small_attack_grid(photos):
    """Every attack of the small grid on real photographs at 40 dB: the JPEG and WebP range, rescaling round
    trips, crops of up to 10% of the side (bottom/right and top/left), a screenshot-like pipeline."""
    mark = ImageMark(KEY)
    marked = mark.embed(photos)
    assert np.mean([psnr(a, b) for a, b in zip(photos, marked)]) >= 40
    floors = {"JPEG 50": 0.95, "JPEG 75": 0.95, "JPEG 90": 0.95, "WebP 80": 0.95, "AVIF 75": 0.95,
              "x2 bicubic": 0.9, "x2 and back bicubic": 0.9, "crop 5% of each side": 0.9,
              "crop 10% of each side": 0.9, "Gaussian noise sigma 4": 0.9}
    tried = 0
    for attack in attacks.grid("small"):
        if attack.label not in floors or (attack.family == "avif" and not attacks.can_write("AVIF")):
            continue
        rate = _rate(mark, [attack.apply(img, seed=i) for i, img in enumerate(marked)])
        assert rate >= floors[attack.label], (attack.label, rate)
        tried += 1
    assert tried >= 9


def test_digits_survive_mild_handling_and_say_where_they_were_found(digits):
    mark = ImageMark(KEY)
    marked = mark.embed(digits)
    assert np.mean([psnr(a, b) for a, b in zip(digits, marked)]) >= 40
    assert _rate(mark, marked) >= 0.99
    assert _rate(mark, [attacks.jpeg(img, 90) for img in marked]) >= 0.9
    cropped = [img[3:, 2:] for img in marked]  # 3 rows off the top, 2 columns off the left
    found = mark.detect_many(cropped)
    assert np.mean([r["detected"] for r in found]) >= 0.9
    assert "3 px off the top and 2 off the left" in found[0]["view"]
    assert _rate(mark, [attacks.resize(img, 2.0, "nearest") for img in marked]) >= 0.95  # display x2


def test_no_detection_without_the_mark_or_under_another_key(digits, photos):
    mark, other = ImageMark(KEY), ImageMark(OTHER)
    for images in (digits, photos):
        assert _rate(mark, images) == 0
        assert _rate(mark, [attacks.jpeg(img, 75) for img in images]) == 0
        marked = mark.embed(images)
        assert _rate(other, marked) == 0
        assert _rate(other, [attacks.jpeg(img, 75) for img in marked]) == 0


def test_the_statistic_is_standard_normal_on_unmarked_images(photos):
    """At one alignment the z-score of an unmarked image is N(0, 1) whatever it shows: its upper tail matches
    the normal's within binomial error, and the detector's corrected p-values are conservative."""
    rng = np.random.default_rng(0)
    smooth = np.stack([np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((32, 32),
                                                                                                          Image.BICUBIC))
                       for _ in range(600)])
    mark = ImageMark(KEY)
    z = np.concatenate([mark.scores(smooth, al)[0] for al in (Alignment(), Alignment(3, 5))] +
                       [mark.scores(photos)[0]])
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1, (z.mean(), z.std())
    for t in (1.0, 2.0):
        expected, n = normal_sf(t), len(z)
        assert abs((z > t).mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / n), t
    p = np.array([r["p_value"] for r in mark.detect_many(smooth[:200])])
    assert (p <= 0.05).mean() <= 0.05 and (p <= 1e-4).sum() == 0


def test_strength_is_capped_per_image(digits, photos):
    mark = ImageMark(KEY)
    for images in (digits, photos):
        worst = min(psnr(a, b) for a, b in zip(images, mark.embed(images)))
        assert worst >= mark.target_psnr - 0.3, worst


def test_version_1_files_still_verify(digits, tmp_path):
    """A file written before version 2 (its record names the key but no scheme) is read with version 1; a stripped
    one (no record) is read with both, the p-value paying for the second try."""
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY.secret.decode())
    old = ImageMarkV1(KEY).embed(digits[:1])[0]
    record = Record(model="old-run", family="gan", version="0.3.0", seed=1, mark=KEY.id)
    dated = tmp_path / "old.png"
    dated.write_bytes(encode(old, "PNG", record))
    stripped = tmp_path / "stripped.png"
    Image.fromarray(old[..., 0]).save(stripped)
    for path, versions in ((dated, None), (stripped, 2)):
        result = runner.invoke(app, ["verify", str(path), "--key", str(keyfile), "--json"])
        assert result.exit_code == 0, result.output
        mark = json.loads(result.output)["marks"][0]
        assert mark["detected"] and mark["scheme"] == "image-v1" and mark.get("versions_tried") == versions, mark
    new = ImageMark(KEY).embed(digits[:1])[0]
    fresh = tmp_path / "new.png"
    fresh.write_bytes(encode(new, "PNG", record.with_(mark_scheme="image-v2")))
    mark = json.loads(runner.invoke(app, ["verify", str(fresh), "--key", str(keyfile), "--json"]).output)["marks"][0]
    assert mark["detected"] and mark["scheme"] == "image-v2" and "searched" in mark
