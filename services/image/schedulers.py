"""Scheduler names -> diffusers classes, and their AUTOMATIC1111 sampler names.

Every pipeline call gets a fresh scheduler built with ``from_config`` from the model's own
scheduler config (so the noise schedule and timestep spacing of SD-Turbo, SDXL, ... carry over):
diffusers schedulers keep per-run state and are not thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidRequest


@dataclass(frozen=True)
class SchedulerSpec:
    class_name: str
    sampler: str  # AUTOMATIC1111's name, written into the PNG parameters
    overrides: dict[str, Any] = field(default_factory=dict)


SCHEDULERS: dict[str, SchedulerSpec] = {
    "dpmpp_2m": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        "DPM++ 2M",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "dpmpp_2m_karras": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        "DPM++ 2M Karras",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "euler": SchedulerSpec("EulerDiscreteScheduler", "Euler"),
    "euler_a": SchedulerSpec("EulerAncestralDiscreteScheduler", "Euler a"),
    "ddim": SchedulerSpec("DDIMScheduler", "DDIM"),
    # PNDM with skip_prk_steps is the PLMS sampler, as AUTOMATIC1111 names it.
    "pndm": SchedulerSpec("PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", "UniPC"),
    "lcm": SchedulerSpec("LCMScheduler", "LCM"),
}
SAMPLER_TO_SCHEDULER = {spec.sampler: name for name, spec in SCHEDULERS.items()}


def make_scheduler(name: str, base_config: Any) -> Any:
    """A new scheduler of the named kind, on the model's noise schedule."""
    import diffusers

    spec = SCHEDULERS[name]
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(base_config, **spec.overrides)


def check_steps(name: str, steps: int, base_config: Any) -> None:
    """Raises a 400 when the scheduler cannot run ``steps`` steps (LCM: at most 50)."""
    try:
        make_scheduler(name, base_config).set_timesteps(steps, device="cpu")
    except ValueError as exc:
        raise InvalidRequest(
            f"scheduler {name!r} cannot run {steps} steps: {exc}", param="steps"
        ) from exc
