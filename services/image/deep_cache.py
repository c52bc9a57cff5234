"""DeepCache-style feature reuse for one pipeline call (``ARTICLEFORGE_IMAGE_DEEP_CACHE_INTERVAL``).

DeepCache (Ma, Fang, Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024)
rests on one observation: the features the deep part of a UNet computes change slowly from one
denoising step to the next. So a *full step* runs the whole UNet and keeps the hidden states
that enter its last (shallowest) up block, the output of ``up_blocks[-2]``; a *shallow step*
runs only the shallow path around them:

    time (and added) embeddings -> conv_in -> down_blocks[0]            (fresh skip residuals)
    cached deep features + those residuals -> up_blocks[-1] -> conv_norm_out/act -> conv_out

``down_blocks[1:]``, the mid block and ``up_blocks[:-1]`` (where most of the UNet's attention
and nearly all its parameters are) do not run. The shallow path is this module's own code built
from the UNet's submodules and its embedding helpers, with the argument handling of diffusers'
``UNet2DConditionModel.forward`` (0.42); at identical inputs it reproduces the full forward to
float error, which tests/image/test_deep_cache.py checks for SD 1.5, SDXL and `tiny` shapes.

Which steps are full (``DeepCache.full``): step ``i`` of ``steps`` when ``i % interval == 0``
(the paper's uniform schedule, which makes the first step full: there is nothing cached yet), and
every step in the last 10% of the schedule (at least the last one). The last steps set the fine
detail that the image shows, and no later step corrects an error made there, so they run the
whole UNet; that costs ``ceil(steps / 10)`` full steps, e.g. 3 of 25. Classifier-free guidance
batches both halves into one UNet call, so one call is one step; calls past ``steps`` (a
scheduler that calls more often) are full.

torch.compile: with this option on, ``accelerate`` leaves the UNet eager (the VAE decoder is
still compiled) and says so in the log. A compiled full step does not expose ``up_blocks[-2]``'s
output: a hook registered after compiling is not part of the graph, one registered before would
be traced into every graph even with the option off, and under ``reduce-overhead`` the tensor
it kept would live in a CUDA-graph buffer that the next replay overwrites. The shallow steps
call the blocks one by one, eagerly. Should the UNet handed in be compiled anyway (an
``OptimizedModule``), full steps run its original module eagerly, with a warning.

A pipeline without a ``UNet2DConditionModel`` (a transformer), or a UNet whose last up block
takes skip residuals from deeper than ``down_blocks[0]``, draws as usual, with one warning.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Denoiser kinds already warned about, so that each is logged once per process, not per call.
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def unsupported(unet: Any) -> str | None:
    """Why DeepCache cannot run on this denoiser, or None when it can."""
    from diffusers import UNet2DConditionModel

    # A bool, not a narrowing: diffusers types the class so that mypy sees none of its blocks.
    is_unet = isinstance(unet, UNet2DConditionModel)
    if not is_unet:
        return f"the denoiser is a {type(unet).__name__}, not a UNet2DConditionModel"
    if len(unet.up_blocks) < 2:
        return "the UNet has a single up block, so no deep branch to cache"
    if unet.config.addition_embed_type == "image_hint":
        return "the UNet takes a hint image (image_hint), which the shallow path does not feed"
    first = unet.down_blocks[0]
    shallow_residuals = 1 + len(first.resnets) + (1 if first.downsamplers else 0)
    if len(unet.up_blocks[-1].resnets) > shallow_residuals:
        return "the last up block takes skip residuals from deeper than down_blocks[0]"
    if unet.up_blocks[-1].upsamplers:
        return "the last up block upsamples, which the shallow path does not size"
    return None


class DeepCache:
    """Full and shallow UNet steps for one pipeline call; ``interval`` 0 or 1 is off."""

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def full(self, index: int, steps: int) -> bool:
        """Whether step ``index`` of ``steps`` runs the whole UNet (see the module docstring)."""
        if self.interval <= 1:
            return True
        return index % self.interval == 0 or index >= steps - math.ceil(0.1 * steps)

    @contextlib.contextmanager
    def around(self, denoiser: Any, steps: int) -> Iterator[None]:
        """Makes ``denoiser`` (what the pipeline calls, compiled or not) take shallow steps."""
        unet = getattr(denoiser, "_orig_mod", denoiser)
        reason = unsupported(unet)
        if self.interval <= 1 or reason is not None:
            if reason is not None:
                _warn_once(
                    type(unet).__name__,
                    "image model: ARTICLEFORGE_IMAGE_DEEP_CACHE_INTERVAL=%d does nothing: %s",
                    self.interval,
                    reason,
                )
            yield
            return
        if unet is not denoiser:
            _warn_once(
                "compiled",
                "image model: the UNet is compiled; DeepCache runs its full steps eagerly",
            )
        eager = unet.forward  # the original module's own forward (or whatever wraps it)
        calls = 0
        deep: torch.Tensor | None = None

        def keep(_module: Any, _args: Any, output: torch.Tensor) -> None:
            nonlocal deep
            deep = output

        def forward(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls, deep
            index, calls = calls, calls + 1
            if not self.full(index, steps) and deep is not None:
                out = shallow(unet, deep, *args, **kwargs)
                if out is not None:
                    return out
            deep = None
            return eager(*args, **kwargs)  # the hook keeps up_blocks[-2]'s output

        hook = unet.up_blocks[-2].register_forward_hook(keep)
        # As StepCache does: an instance attribute, found first by nn.Module.__call__; a compiled
        # module's own one comes back afterwards.
        own = "forward" in vars(denoiser)
        original = denoiser.forward
        denoiser.forward = forward
        try:
            yield
        finally:
            hook.remove()
            if own:
                denoiser.forward = original
            else:
                del denoiser.forward


def shallow(
    unet: Any,
    deep: torch.Tensor,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    encoder_hidden_states: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    timestep_cond: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
    mid_block_additional_residual: torch.Tensor | None = None,
    down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    return_dict: bool = True,
) -> Any:
    """A shallow step of ``unet`` on the cached ``deep`` features; the arguments after ``deep``
    are ``UNet2DConditionModel.forward``'s, in its order.

    None when these inputs need the deep branch: ControlNet or T2I-Adapter residuals, GLIGEN, a
    LoRA scale (none of which the service passes), or a batch the cache was not made for.
    """
    extra = cross_attention_kwargs or {}
    if (
        down_block_additional_residuals is not None
        or mid_block_additional_residual is not None
        or down_intrablock_additional_residuals is not None
        or "gligen" in extra
        or "scale" in extra
        or deep.shape[0] != sample.shape[0]
    ):
        return None
    dtype = sample.dtype
    # Masks become additive biases, as the full forward makes them.
    if attention_mask is not None:
        attention_mask = ((1 - attention_mask.to(dtype)) * -10000.0).unsqueeze(1)
    if encoder_attention_mask is not None:
        encoder_attention_mask = ((1 - encoder_attention_mask.to(dtype)) * -10000.0).unsqueeze(1)
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0

    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
    if class_emb is not None:
        concat = unet.config.class_embeddings_concat
        emb = torch.cat([emb, class_emb], dim=-1) if concat else emb + class_emb
    aug_emb = unet.get_aug_embed(
        emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    if aug_emb is not None:  # SDXL: pooled text and size/crop conditioning
        emb = emb + aug_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    attention = {
        "encoder_hidden_states": encoder_hidden_states,
        "attention_mask": attention_mask,
        "cross_attention_kwargs": cross_attention_kwargs,
        "encoder_attention_mask": encoder_attention_mask,
    }

    stem = unet.conv_in(sample)
    first, last = unet.down_blocks[0], unet.up_blocks[-1]
    # The block's downsampler runs too (its output feeds only the deep branch): a little waste
    # for not re-implementing the block.
    _, residuals = first(
        hidden_states=stem,
        temb=emb,
        **(attention if getattr(first, "has_cross_attention", False) else {}),
    )
    # The full forward hands each up block the residuals left at the end of the tuple; the last
    # block gets the first ones: conv_in's output and down_blocks[0]'s resnets.
    skips = (stem, *residuals)[: len(last.resnets)]
    hidden = last(
        hidden_states=deep,
        temb=emb,
        res_hidden_states_tuple=skips,
        upsample_size=None,
        **(attention if getattr(last, "has_cross_attention", False) else {}),
    )

    if unet.conv_norm_out:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    hidden = unet.conv_out(hidden)
    if not return_dict:
        return (hidden,)
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    return UNet2DConditionOutput(sample=hidden)
