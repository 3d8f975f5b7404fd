"""Machine-readable provenance: what an output says about where it came from.

Two layers, each readable without genforge: an XMP packet (IPTC `DigitalSourceType` = trainedAlgorithmicMedia,
the marking the EU AI Act's Article 50 and the IPTC photo-metadata standard ask for, plus genforge's own fields:
model, weights hash, version, time, seed, parameters) in every image file, and, when the user gives a
certificate and key, a signed C2PA manifest (c2pa-python, the `provenance` extra) with the `c2pa.created`
action and the same source type. An edit (inpainting, a variation, an upscale: `Record.action` "edited") says so
instead: IPTC compositeWithTrainedAlgorithmicMedia ("the compositing of trained algorithmic media with some other
media, such as with inpainting or outpainting operations"), genforge:action and genforge:ingredients (each source
image's title and SHA-256) in XMP, and in C2PA the `c2pa.opened` action on the source image (a `parentOf`
ingredient; C2PA requires an edit's first action to be created or opened) followed by `c2pa.edited`. XMP survives copying but not stripping; C2PA proves integrity but is dropped by
any re-encode; the keyed watermark (watermark.py) is the layer that survives both.
"""

from __future__ import annotations

import io
import json
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
EDITED_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
SOURCE_TYPES = (SOURCE_TYPE, EDITED_SOURCE_TYPE)  # what `genforge verify` counts as generated
NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "genforge": "https://genforge.dev/ns/provenance/1.0/",
}
FIELDS = ("model", "model_hash", "family", "version", "created", "seed", "parameters", "filters", "mark", "mark_scheme")
EDIT_FIELDS = ("action", "ingredients")  # written only for an edit (a created record leaves them out)
MAX_XMP = 1 << 20  # a packet larger than this is not ours; not parsed


@dataclass
class Record:
    """What one output (or one batch: the per-image seed is seed + index) says about how it was made."""

    model: str
    model_hash: str = ""
    family: str = ""
    version: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    seed: int | None = None
    parameters: dict = field(default_factory=dict)
    filters: list = field(default_factory=list)  # output filters applied, each a dict (see filters.py)
    mark: str = ""  # the image or text mark's key id, "" when none was applied
    mark_scheme: str = ""  # which mark and version ("image-v2", ...); "" in files written before versions existed
    action: str = "created"  # "created" (drawn from noise) or "edited" (an edit of the ingredients' images)
    ingredients: list = field(default_factory=list)  # what an edit started from: {"title", "sha256", "format"} each

    @property
    def source_type(self) -> str:
        """The IPTC DigitalSourceType: trainedAlgorithmicMedia, or compositeWithTrainedAlgorithmicMedia for an edit."""
        return EDITED_SOURCE_TYPE if self.action == "edited" else SOURCE_TYPE

    def as_dict(self) -> dict:
        return {"digital_source_type": self.source_type, **asdict(self)}

    def with_(self, **changes) -> "Record":
        return Record(**{**asdict(self), **changes})

    def edited_from(self, source: bytes, title: str = "source", fmt: str = "") -> "Record":
        """This record as an edit of `source` (an encoded image's bytes): action "edited", the source as an
        ingredient with its SHA-256."""
        import hashlib

        ingredient = {"title": title, "sha256": hashlib.sha256(source).hexdigest(), "format": fmt}
        return self.with_(action="edited", ingredients=[*self.ingredients, ingredient])


def xmp_packet(record: Record) -> bytes:
    """The XMP packet (UTF-8) that PNG iTXt, JPEG APP1 and WebP XMP chunks carry."""
    for prefix, uri in NS.items():
        ET.register_namespace(prefix, uri)
    root = ET.Element(f"{{{NS['x']}}}xmpmeta")
    rdf = ET.SubElement(root, f"{{{NS['rdf']}}}RDF")
    desc = ET.SubElement(rdf, f"{{{NS['rdf']}}}Description", {f"{{{NS['rdf']}}}about": ""})
    ET.SubElement(desc, f"{{{NS['Iptc4xmpExt']}}}DigitalSourceType").text = record.source_type
    ET.SubElement(desc, f"{{{NS['xmp']}}}CreatorTool").text = f"genforge {record.version}".strip()
    ET.SubElement(desc, f"{{{NS['xmp']}}}CreateDate").text = record.created
    for name in FIELDS + (EDIT_FIELDS if record.action != "created" or record.ingredients else ()):
        value = getattr(record, name)
        if value in (None, "", [], {}):
            continue
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
        ET.SubElement(desc, f"{{{NS['genforge']}}}{name}").text = text
    body = ET.tostring(root, encoding="unicode")
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>' + body + '<?xpacket end="w"?>').encode()


def parse_xmp(packet: bytes | str | None) -> dict | None:
    """The provenance an XMP packet holds: {"digital_source_type", and genforge's fields found}, or None when
    the packet is missing, malformed or says nothing about the source."""
    if not packet:
        return None
    if isinstance(packet, str):
        packet = packet.encode()
    if len(packet) > MAX_XMP:
        return None
    start, end = packet.find(b"<x:xmpmeta"), packet.rfind(b"</x:xmpmeta>")
    if start < 0 or end < 0:
        return None
    try:
        root = ET.fromstring(packet[start:end + len(b"</x:xmpmeta>")])
    except ET.ParseError:
        return None
    found: dict = {}
    for desc in root.iter(f"{{{NS['rdf']}}}Description"):
        source = desc.find(f"{{{NS['Iptc4xmpExt']}}}DigitalSourceType")
        if source is None:
            source_attr = desc.get(f"{{{NS['Iptc4xmpExt']}}}DigitalSourceType")
            if source_attr:
                found["digital_source_type"] = source_attr
        elif source.text:
            found["digital_source_type"] = source.text.strip()
        for name in FIELDS + EDIT_FIELDS:
            node = desc.find(f"{{{NS['genforge']}}}{name}")
            if node is not None and node.text is not None:
                text = node.text
                if name in ("parameters", "filters", "ingredients"):
                    try:
                        text = json.loads(text)
                    except ValueError:
                        pass
                elif name == "seed":
                    text = int(text) if text.lstrip("-").isdigit() else text
                found[name] = text
    return found or None


# ------------------------------------------------------------------------------------------------------ C2PA

@dataclass(frozen=True)
class Signer:
    """A certificate chain (PEM, signer first) and its private key (PEM) for C2PA manifests; ES256 (P-256) keys."""

    cert_chain: bytes
    private_key: bytes

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path) -> "Signer":
        for path, what in ((cert, "--sign-cert"), (key, "--sign-key")):
            if not Path(path).is_file():
                raise ValueError(f"{what} {path}: no such file (a PEM certificate chain and its PEM private key).")
        return cls(Path(cert).read_bytes(), Path(key).read_bytes())


def _c2pa():
    try:
        import c2pa
    except ImportError as e:
        raise ImportError("C2PA signing and checking need c2pa-python: pip install 'genforge[provenance]'") from e
    return c2pa


def _ingredient(ingredient: dict, i: int) -> dict:
    """A record's ingredient as a C2PA ingredient definition: the source image, `parentOf` the edit, its SHA-256 in
    the description (C2PA hashes the ingredient assertion, not the source file; genforge's own assertion has it too)."""
    out = {"title": ingredient.get("title") or "source", "relationship": "parentOf", "label": f"source-{i}"}
    if ingredient.get("format"):
        out["format"] = ingredient["format"]
    if ingredient.get("sha256"):
        out["description"] = f"SHA-256 of the source file: {ingredient['sha256']}"
    return out


def manifest(record: Record, with_ingredients: bool = True) -> dict:
    """The manifest definition: c2pa.created (a generation), or c2pa.opened (the source images, as ingredients) then
    c2pa.edited (an edit); genforge's record as its own assertion. `with_ingredients`: list the ingredients in the
    definition (when their files are not at hand to add with `Builder.add_ingredient`)."""
    if record.action == "edited":
        ids = [f"source-{i}" for i in range(len(record.ingredients))]
        actions = ([{"action": "c2pa.opened", "parameters": {"ingredientIds": ids}}] if ids else []) + [
            {"action": "c2pa.edited", "digitalSourceType": EDITED_SOURCE_TYPE,
             "softwareAgent": {"name": "genforge", "version": record.version or "unknown"},
             "description": str(record.parameters.get("task") or "edit")}]
    else:
        actions = [{"action": "c2pa.created", "digitalSourceType": SOURCE_TYPE}]
    out = {
        "claim_generator_info": [{"name": "genforge", "version": record.version or "unknown"}],
        "title": record.model,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": actions}},
            {"label": "org.genforge.generation", "data": record.as_dict()},
        ],
    }
    if with_ingredients and record.ingredients:
        out["ingredients"] = [_ingredient(ing, i) for i, ing in enumerate(record.ingredients)]
    return out


def c2pa_sign(data: bytes, mime: str, record: Record, signer: Signer, sources: list[bytes] | None = None) -> bytes:
    """`data` (an encoded image) with a signed C2PA manifest embedded; no thumbnail (it would outweigh a 28 px
    image a hundredfold), no timestamp authority (nothing is fetched). `sources`: an edit's source files, one per
    `record.ingredients` entry, added as its ingredients (a source with its own manifest brings it along, so the
    chain of edits stays verifiable); without them the ingredients are described by title, format and hash only."""
    c2pa = _c2pa()
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, signer.cert_chain, signer.private_key, None)
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    if sources is not None and len(sources) != len(record.ingredients):
        raise ValueError(f"{len(sources)} source files for {len(record.ingredients)} ingredients in the record")
    out = io.BytesIO()
    try:
        with c2pa.Signer.from_info(info) as s, \
                c2pa.Builder(manifest(record, with_ingredients=not sources), context=context) as builder:
            for i, (ingredient, source) in enumerate(zip(record.ingredients, sources or [])):
                definition = _ingredient(ingredient, i)
                builder.add_ingredient(definition, definition.get("format") or _sniff(source), io.BytesIO(source))
            builder.sign(s, mime, io.BytesIO(data), out)
    except c2pa.C2paError as e:
        raise ValueError(f"C2PA signing failed ({e}); the certificate must be an ES256 (P-256) end-entity "
                         "certificate with digitalSignature key usage, an emailProtection extended key usage and an "
                         "authority key identifier, chained to its CA (see the README's provenance section).") from e
    return out.getvalue()


def _sniff(data: bytes) -> str:
    """The MIME type of an image file by its magic bytes (for an ingredient whose record has no format)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def c2pa_read(data: bytes) -> dict | None:
    """The C2PA manifest of encoded bytes: {"state": Valid | Trusted | Invalid, "failures": [codes], "source_type",
    "action": created | edited, "ingredients": [{title, format, relationship, sha256}], "record"}; None when there
    is none. A manifest too damaged to parse reads as Invalid."""
    c2pa = _c2pa()
    try:
        with c2pa.Reader(io.BytesIO(data)) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError.ManifestNotFound:
        return None
    except c2pa.C2paError as e:
        if b"jumb" not in data or b"c2pa" not in data:
            return None  # no manifest store in the bytes: a foreign or unreadable file, not a broken manifest
        return {"state": "Invalid", "failures": [type(e).__name__ + ": " + str(e)[:200]], "source_type": None,
                "action": None, "ingredients": [], "record": None}
    active = store.get("manifests", {}).get(store.get("active_manifest"), {})
    failures = [f["code"] for f in store.get("validation_results", {}).get("activeManifest", {}).get("failure", [])]
    source, record, kind = None, None, None
    for assertion in active.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            for action in assertion.get("data", {}).get("actions", []):
                if action.get("action") in ("c2pa.created", "c2pa.edited") and kind != "created":
                    kind = action["action"].split(".", 1)[1]
                    source = action.get("digitalSourceType") or source
        elif assertion.get("label") == "org.genforge.generation":
            record = assertion.get("data")
    hashes = {i.get("title"): i.get("sha256") for i in (record or {}).get("ingredients") or [] if isinstance(i, dict)}
    ingredients = []
    for ing in active.get("ingredients", []):
        described = str(ing.get("description") or "")
        sha = described.rsplit(": ", 1)[-1] if described.startswith("SHA-256 of the source file: ") else None
        ingredients.append({"title": ing.get("title"), "format": ing.get("format"),
                            "relationship": ing.get("relationship"), "sha256": sha or hashes.get(ing.get("title")),
                            "signed": bool(ing.get("active_manifest"))})
    return {"state": store.get("validation_state"), "failures": failures, "source_type": source, "action": kind,
            "ingredients": ingredients, "record": record}


def throwaway_certificate(days: int = 30) -> tuple[Signer, bytes]:
    """A throwaway root CA and an ES256 signing certificate it issued, shaped as C2PA requires (digitalSignature
    key usage, emailProtection extended key usage, authority key identifier): (Signer, the root's PEM).
    For trying signing out and for tests; no trust list knows the root, so readers report the signature as
    valid but untrusted. Needs `cryptography` (the provenance extra)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "genforge test (untrusted)")])

    def usage(ca):
        return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                             encipher_only=False, decipher_only=False)

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("genforge test root")).issuer_name(name("genforge test root"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage(True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("genforge test signer")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(usage(False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    signer = Signer(cert.public_bytes(pem) + ca.public_bytes(pem),
                    key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return signer, ca.public_bytes(pem)
