"""ADM (EDM's DhariwalUNet, the guided-diffusion network) as settings of the shared U-Net.

ADM differs from DDPM++ only in choices the U-Net exposes as fields, so it is not a separate
module: the input conv is already channels * channel_mult[0] wide, every decoder block of an
attention height attends, blocks scale and shift their second norm by the embedding, a
resampled skip of equal width is not projected, skip_scale is 1, attention uses 64 channels
per head, norms use eps 1e-5, the positional embedding has no endpoint and is ordered
(cos, sin), the class label is an embedding table added after the mapping layers, and the
initialization is PyTorch's default with exact zeros closing each residual branch.
"""

from cm.models.unet import UNet

ADM_SETTINGS = dict(
    mapping="adm",
    init_scheme="adm",
    positional_endpoint=False,
    positional_cos_first=True,
    attn_every_dec_block=True,
    stem_uses_mult=True,
    adaptive_scale=True,
    resample_proj=False,
    skip_scale=1.0,
    head_channels=64,
    norm_eps=1e-5,
)


def adm_unet(**fields) -> UNet:
    """A UNet with ADM's structure; `fields` (sizes, norm, dtype, ...) may override any setting."""
    return UNet(**{**ADM_SETTINGS, **fields})
