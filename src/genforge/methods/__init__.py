"""Training objectives, one file each, behind the interface in `base.py`."""

from genforge.errors import UserError
from genforge.methods.diffusion import DiffusionMethod
from genforge.methods.base import DataSpec, Method, MethodConfig
from genforge.methods.gan import GANMethod
from genforge.methods.lm import LMMethod
from genforge.methods.vae import VAEMethod
from genforge.methods.wavenet import WaveNetMethod

METHODS: dict[str, type[Method]] = {m.family: m for m in (GANMethod, VAEMethod, DiffusionMethod, LMMethod,
                                                          WaveNetMethod)}


def get_method(family: str) -> type[Method]:
    try:
        return METHODS[family]
    except KeyError:
        raise UserError(f"Unknown model family '{family}'. Known families: {', '.join(METHODS)}.") from None


__all__ = ["DataSpec", "Method", "MethodConfig", "METHODS", "get_method"]
