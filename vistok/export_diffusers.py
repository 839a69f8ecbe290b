"""Export a single-codebook VQ tokenizer built from diffusers blocks as a `diffusers.VQModel` directory.

Mapping (VQModel = encoder -> quant_conv -> quantize -> post_quant_conv -> decoder):
encoder/decoder weights copy over unchanged, the two 1x1 convs are identities (our quantizer works on
the encoder's D channels directly), and the Euclidean codebook becomes `quantize.embedding.weight`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vistok.tokenizers.modules.diffusers_blocks import DiffusersDecoder, DiffusersEncoder
from vistok.tokenizers.quantizers.vq import VectorQuantizer
from vistok.tokenizers.vq import VQTokenizer


def _check_representable(tokenizer) -> None:
    problems = []
    if not isinstance(tokenizer, VQTokenizer):
        problems.append(f"the tokenizer is a {type(tokenizer).__name__}, not a 2-D VQTokenizer")
    else:
        if not isinstance(tokenizer.encoder, DiffusersEncoder) or not isinstance(tokenizer.decoder, DiffusersDecoder):
            problems.append("encoder/decoder are not diffusers blocks (use tokenizer/encoder=diffusers "
                            "tokenizer/decoder=diffusers)")
        quantizer = tokenizer.quantizer
        if not isinstance(quantizer, VectorQuantizer):
            problems.append(f"the quantizer is {type(quantizer).__name__}; VQModel holds one Euclidean codebook")
        elif quantizer.vq._codebook.use_cosine_sim or quantizer.vq.has_projections:
            problems.append("the codebook is cosine or projected; VQModel holds one Euclidean codebook of size D")
    if problems:
        raise ValueError("cannot export as diffusers VQModel: " + "; ".join(problems))


def _identity_conv(conv: torch.nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.eye(conv.out_channels).view_as(conv.weight))
        conv.bias.zero_()


def to_vqmodel(tokenizer: VQTokenizer):
    """Build the equivalent `diffusers.VQModel` (same indices, same reconstructions)."""
    from diffusers import VQModel

    _check_representable(tokenizer)
    enc = tokenizer.encoder.net
    widths = tuple(block.resnets[0].conv1.out_channels for block in enc.down_blocks)
    model = VQModel(
        in_channels=enc.conv_in.in_channels, out_channels=tokenizer.decoder.net.conv_out.out_channels,
        down_block_types=("DownEncoderBlock2D",) * len(widths), up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths, layers_per_block=len(enc.down_blocks[0].resnets), act_fn="silu",
        latent_channels=tokenizer.embed_dim, sample_size=tokenizer.resolution,
        num_vq_embeddings=tokenizer.codebook_size, norm_num_groups=enc.conv_norm_out.num_groups,
        vq_embed_dim=tokenizer.embed_dim, mid_block_add_attention=enc.mid_block.attentions[0] is not None,
    )
    model.encoder.load_state_dict(enc.state_dict())
    model.decoder.load_state_dict(tokenizer.decoder.net.state_dict())
    _identity_conv(model.quant_conv)
    _identity_conv(model.post_quant_conv)
    with torch.no_grad():
        model.quantize.embedding.weight.copy_(tokenizer.quantizer.vq._codebook.embed[0])
    return model.eval()


def is_vqmodel_export(path: Path) -> bool:
    """A directory `save_vqmodel` wrote (a diffusers VQModel's config and weights), and nothing else."""
    import json

    names = {p.name for p in path.iterdir()}
    if names != {"config.json", "diffusion_pytorch_model.safetensors"}:
        return False
    try:
        return json.loads((path / "config.json").read_text()).get("_class_name") == "VQModel"
    except (OSError, ValueError, AttributeError):
        return False


def save_vqmodel(tokenizer: VQTokenizer, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the VQModel directory under the rules of `vistok.save_tokenizer`: a new directory, or an
    earlier VQModel export replaced whole with `overwrite`; the temporary directory never outlives a
    failure."""
    from vistok.export import check_destination, write_directory

    check_destination(Path(out_dir), is_vqmodel_export, overwrite)  # before the conversion's work
    model = to_vqmodel(tokenizer)
    return write_directory(out_dir, lambda tmp: model.save_pretrained(str(tmp)), is_vqmodel_export, overwrite)
