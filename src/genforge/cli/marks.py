"""`genforge keygen` and `genforge verify`: the invisible marks and provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from genforge.cli.common import app, out, user_errors
from genforge.errors import UserError


@app.command()
@user_errors
def keygen(
    path: Path = typer.Argument(..., help="Where to write the new key file (never overwritten; readable by you only)."),
    test_certificate: Optional[Path] = typer.Option(None, "--test-certificate", help="Also write a throwaway C2PA test certificate chain and key into this folder (cert.pem, key.pem, root.pem): for trying --sign-cert/--sign-key; no trust list knows it."),
):
    """Create a secret key for the invisible marks. Keep it out of run directories and repositories; point
    GENFORGE_MARK_KEY_FILE (or --mark-key) at it when sampling or serving, and `genforge verify --key` when checking.
    Outputs name the key by its id (a hash), never the key itself."""
    from genforge.media.watermark import KeyError_, new_key_file

    if test_certificate is not None:
        try:
            from genforge.media.provenance import throwaway_certificate as make_certificate

            signer, root = make_certificate(days=365)
        except ImportError:
            raise UserError("--test-certificate needs cryptography: pip install 'genforge[provenance]'.") from None
        test_certificate.mkdir(parents=True, exist_ok=True)
        for name, data in (("cert.pem", signer.cert_chain), ("key.pem", signer.private_key), ("root.pem", root)):
            if (test_certificate / name).exists():
                raise UserError(f"{test_certificate / name} exists; choose an empty folder.")
        for name, data in (("cert.pem", signer.cert_chain), ("key.pem", signer.private_key), ("root.pem", root)):
            (test_certificate / name).write_bytes(data)
        (test_certificate / "key.pem").chmod(0o600)
        out.print(f"wrote a test certificate chain to {test_certificate} (cert.pem, key.pem, root.pem; untrusted)",
                  highlight=False, soft_wrap=True)
    try:
        key = new_key_file(path)
    except KeyError_ as e:
        raise UserError(str(e)) from None
    out.print(f"wrote {path} (key id {key.id})", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def verify(
    target: str = typer.Argument(..., help="An image (PNG, JPEG, WebP), a clip (MP4, animated WebP, GIF, APNG), audio (WAV, FLAC, MP3), music (MIDI, ABC, MusicXML), a text file, or text itself."),
    key: List[Path] = typer.Option([], "--key", help="Mark key file to test (repeatable; default: $GENFORGE_MARK_KEY_FILE or $GENFORGE_MARK_KEY)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Text: the run or export whose tokenizer made it (needed for the text mark). Images: the diffusion run or export that made it, for the noise mark (its sampler is run backwards to the starting noise)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Is this generated, by what, and has it been altered? Reports the provenance metadata (XMP, a text
    sidecar, a MIDI text event or an ABC/MusicXML comment), the C2PA manifest and whether its signature holds, and the invisible mark under each key (z-score,
    p-value, key id).

    Exit codes: 0 generated (a layer says so), 1 no provenance found, 3 a C2PA manifest that fails validation
    (altered after signing), 2 a usage error."""
    from genforge.media.watermark import KeyError_, read_key
    from genforge.verification import verify as run_verify

    try:
        keys = [read_key(k) for k in key] if key else [k for k in [read_key()] if k is not None]
    except KeyError_ as e:
        raise UserError(str(e)) from None
    report = run_verify(target, keys, model)
    data = report.as_dict()
    if as_json:
        out.print_json(json.dumps(data, default=str))
        raise typer.Exit(report.verdict)
    meta = data["metadata"]
    out.print(f"{data['source']}: {data['verdict']}", highlight=False, soft_wrap=True)
    if meta:
        source = meta.get("digital_source_type", "?")
        out.print(f"  metadata: {source.rsplit('/', 1)[-1]}; model {meta.get('model', '?')} {meta.get('model_hash', '')[:19]}; "
                  f"genforge {meta.get('version', '?')}; created {meta.get('created', '?')}; seed {meta.get('seed')}; "
                  f"mark key {meta.get('mark') or 'none'}", highlight=False, soft_wrap=True)
    else:
        out.print("  metadata: none", highlight=False, soft_wrap=True)
    c2 = data["c2pa"]
    if c2:
        extra = [f for f in c2["failures"] if f != "signingCredential.untrusted"]
        trust = " (certificate not in a trust list)" if "signingCredential.untrusted" in c2["failures"] else ""
        out.print(f"  C2PA: {c2['state']}{trust}; {c2.get('action') or 'created'} as "
                  f"{str(c2['source_type']).rsplit('/', 1)[-1]}"
                  + (f"; failures: {', '.join(extra)}" if extra else ""), highlight=False, soft_wrap=True)
    else:
        out.print(f"  C2PA: {data['c2pa_note'] or 'none'}", highlight=False, soft_wrap=True)
    for source in data["edit_of"]:
        out.print(f"  an edit of: {source.get('title') or '?'} (SHA-256 {source.get('sha256') or 'not recorded'})",
                  highlight=False, soft_wrap=True)
    for m in data["marks"]:
        if "tiles" in m:
            out.print(f"  mark (key {m['key_id']}): {'found' if m['detected'] else 'not found'} in "
                      f"{m['tiles_detected']} of {m['tiles']} {'filmstrip clips' if m.get('clips') else 'grid tiles'} (median z {m['z_median']})", highlight=False, soft_wrap=True)
        else:
            where = f", {m['tokens_scored']} tokens scored" if "tokens_scored" in m else f", view {m.get('view')}"
            what = "noise mark" if m.get("mark") == "noise" else "mark"
            out.print(f"  {what} (key {m['key_id']}): {'found' if m['detected'] else 'not found'}: z {m['z']}, "
                      f"p {m['p_value']:.2g}{where}", highlight=False, soft_wrap=True)
        if m.get("searched"):
            out.print(f"    {m.get('scheme', 'mark')}: tried {m['searched']} ({m.get('tries')} tries, all paid for in "
                      "the p-value)", highlight=False, soft_wrap=True)
    for note in data["notes"]:
        out.print(f"  note: {note}", highlight=False, soft_wrap=True)
    raise typer.Exit(report.verdict)
