"""Audio signal code shared by the data layer, media writers, the torch path and the torch-free runtime:
numpy only, importing nothing else from genforge (like genforge.diffusion)."""

from genforge.audio.codec import (SpectrogramCodec, from_uint8, griffin_lim, istft, log_spectral_distance,
                                  spectral_convergence, stft, to_uint8)
from genforge.audio.mulaw import mulaw_decode, mulaw_encode

__all__ = ["SpectrogramCodec", "from_uint8", "griffin_lim", "istft", "log_spectral_distance", "mulaw_decode",
           "mulaw_encode", "spectral_convergence", "stft", "to_uint8"]
