"""Provenance of edits (issue 27): an edited image says so in XMP (IPTC compositeWithTrainedAlgorithmicMedia,
genforge:action and the source as an ingredient with its SHA-256) and in its C2PA manifest (c2pa.opened on the
source, a parentOf ingredient, then c2pa.edited); a generated image still says created; `genforge verify` names
what an edit started from."""

import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from genforge.cli import app
from genforge.media import Record, decode, encode, write_images
from genforge.media.provenance import (EDITED_SOURCE_TYPE, SOURCE_TYPE, c2pa_read, parse_xmp, throwaway_certificate,
                                       xmp_packet)

runner = CliRunner()
IMAGE = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)


def _record(**kw):
    return Record(model="tiny", model_hash="sha256:abc", family="diffusion", version="0.1.0", seed=7,
                  parameters={"task": "inpaint", "n": 1, **kw})


@pytest.fixture(scope="module")
def source():
    return encode(np.zeros((28, 28, 3), np.uint8), "PNG")


@pytest.fixture(scope="module")
def signer():
    pytest.importorskip("c2pa", reason="the provenance extra is installed by the test extra")
    return throwaway_certificate()[0]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_xmp_of_an_edit_says_edited_and_names_the_source_by_hash(source, fmt):
    record = _record().edited_from(source, "photo.png", "image/png")
    meta = parse_xmp(decode(encode(IMAGE, fmt, record))[1])
    assert meta["digital_source_type"] == EDITED_SOURCE_TYPE and meta["action"] == "edited"
    assert meta["ingredients"] == [{"title": "photo.png", "sha256": hashlib.sha256(source).hexdigest(),
                                    "format": "image/png"}]
    assert meta["model"] == "tiny" and meta["parameters"]["task"] == "inpaint"
    assert record.as_dict()["digital_source_type"] == EDITED_SOURCE_TYPE


def test_a_created_image_still_says_created():
    meta = parse_xmp(decode(encode(IMAGE, "PNG", _record()))[1])
    assert meta["digital_source_type"] == SOURCE_TYPE
    assert "action" not in meta and "ingredients" not in meta  # a generation's XMP is as it was
    assert b"compositeWith" not in xmp_packet(_record())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("with_sources", [True, False])
def test_a_signed_edit_reads_back_c2pa_edited_with_its_ingredient(source, signer, fmt, with_sources):
    record = _record().edited_from(source, "photo.png", "image/png")
    data = encode(IMAGE, fmt, record, signer, sources=[source] if with_sources else None)
    found = c2pa_read(data)
    assert found["state"] == "Valid" and set(found["failures"]) <= {"signingCredential.untrusted"}
    assert found["action"] == "edited" and found["source_type"] == EDITED_SOURCE_TYPE
    assert found["ingredients"] == [{"title": "photo.png", "format": "image/png", "relationship": "parentOf",
                                     "sha256": hashlib.sha256(source).hexdigest(), "signed": False}]
    assert found["record"]["action"] == "edited"
    tampered = bytearray(data)  # the edit's pixels changed after signing: the manifest no longer holds
    tampered[len(tampered) - (12 if fmt == "PNG" else 2) - 20] ^= 0x55
    assert c2pa_read(bytes(tampered))["state"] == "Invalid"


def test_a_signed_created_image_still_says_c2pa_created(signer):
    found = c2pa_read(encode(IMAGE, "PNG", _record(), signer))
    assert found["action"] == "created" and found["source_type"] == SOURCE_TYPE and found["ingredients"] == []


def test_an_edit_of_a_signed_image_carries_the_sources_manifest(signer):
    generated = encode(IMAGE, "PNG", _record(), signer)
    record = _record(task="vary").edited_from(generated, "generated.png", "image/png")
    found = c2pa_read(encode(IMAGE[::-1].copy(), "PNG", record, signer, sources=[generated]))
    assert found["state"] == "Valid" and found["action"] == "edited"
    assert found["ingredients"][0]["signed"]  # the chain of provenance is kept


def test_write_images_signs_every_file_with_the_source(source, signer, tmp_path):
    record = _record().edited_from(source, "photo.png", "image/png")
    images = np.stack([IMAGE, IMAGE[::-1]])
    write_images(images, f"{tmp_path}/each/", record, signer=signer, sources=[source])
    write_images(images, str(tmp_path / "grid.png"), record, signer=signer, sources=[source])
    for path in [*sorted((tmp_path / "each").glob("*.png")), tmp_path / "grid.png"]:
        found = c2pa_read(path.read_bytes())
        assert found["action"] == "edited" and found["ingredients"][0]["title"] == "photo.png", path


def test_verify_names_what_an_edit_started_from(source, signer, tmp_path):
    digest = hashlib.sha256(source).hexdigest()
    for name, sign in (("plain.png", None), ("signed.jpg", signer)):
        path = tmp_path / name
        record = _record().edited_from(source, "photo.png", "image/png")
        path.write_bytes(encode(IMAGE, name.rsplit(".")[-1], record, sign, sources=[source]))
        result = runner.invoke(app, ["verify", str(path)])
        assert result.exit_code == 0, result.output  # an edit by a model is generated content
        assert f"an edit of: photo.png (SHA-256 {digest})" in result.output
        assert "compositeWithTrainedAlgorithmicMedia" in result.output
        if sign:
            assert "edited as compositeWithTrainedAlgorithmicMedia" in result.output
        report = json.loads(runner.invoke(app, ["verify", str(path), "--json"]).output)
        assert report["edit_of"] == [{"title": "photo.png", "sha256": digest}]
    created = tmp_path / "created.png"
    created.write_bytes(encode(IMAGE, "PNG", _record(), signer))
    result = runner.invoke(app, ["verify", str(created)])
    assert result.exit_code == 0 and "an edit of" not in result.output and "created as trainedAlgorithmic" in result.output
