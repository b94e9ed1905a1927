"""Weight-based dose calculator, in plain Python (no component imports, unit-testable in
CPython): the logic of the `dose_calc` tool (app.py is the component glue).

dose per administration = dose_mg_per_kg x weight_kg, capped at max_dose_mg when given,
rounded (half up) to a multiple of the config's `round_to_mg` when set; the daily total is that times doses_per_day.
An arithmetic aid for a model, not a prescribing system: it checks units and ranges, not drugs.
"""
import math

import medrl_sdk
from medrl_sdk import ToolError

NAME = "dose_calc"
DESCRIPTION = (
    "Compute a weight-based drug dose: mg per dose from mg/kg and body weight, optionally capped "
    "at a maximum single dose, and the daily total. Use it instead of doing the arithmetic yourself."
)
PARAMETERS = {
    "type": "object",
    "properties": {
        "weight_kg": {"type": "number", "minimum": 0.3, "maximum": 400, "description": "body weight in kg"},
        "dose_mg_per_kg": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000,
                           "description": "prescribed dose per administration, mg per kg"},
        "max_dose_mg": {"type": "number", "exclusiveMinimum": 0,
                        "description": "maximum single dose in mg (optional)"},
        "doses_per_day": {"type": "integer", "minimum": 1, "maximum": 24, "default": 1},
    },
    "required": ["weight_kg", "dose_mg_per_kg"],
    "additionalProperties": False,
}
CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "round_to_mg": {"type": "number", "exclusiveMinimum": 0,
                        "description": "round each dose (half up) to a multiple of this many mg; unset: no rounding"},
    },
}
KNOWN = set(PARAMETERS["properties"])


def fmt(x):
    """A number as a person writes it: 450, 12.5, 0.25."""
    return f"{x:.4f}".rstrip("0").rstrip(".")


def call(config, args):
    unknown = sorted(set(args) - KNOWN)
    if unknown:
        raise ToolError(f"unknown argument(s): {', '.join(unknown)} (expected {', '.join(sorted(KNOWN))})")
    step = config.get("round_to_mg")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0):
        raise ToolError(f"config round_to_mg must be a positive number, got {step!r}")
    weight = medrl_sdk.number(args, "weight_kg", lo=0.3, hi=400)
    per_kg = medrl_sdk.number(args, "dose_mg_per_kg", lo=0, hi=1000)
    if per_kg <= 0:
        raise ToolError("dose_mg_per_kg must be greater than 0")
    cap = medrl_sdk.number(args, "max_dose_mg", lo=0, default=None)
    if cap is not None and cap <= 0:
        raise ToolError("max_dose_mg must be greater than 0")
    per_day = medrl_sdk.integer(args, "doses_per_day", lo=1, hi=24, default=1)

    raw = per_kg * weight
    dose = raw if cap is None else min(raw, cap)
    if step is not None:
        dose = math.floor(dose / step + 0.5) * step
    lines = [f"dose: {fmt(dose)} mg per dose ({fmt(per_kg)} mg/kg x {fmt(weight)} kg = {fmt(raw)} mg"
             + (f", capped at {fmt(cap)} mg)" if cap is not None and raw > cap else ")")]
    if per_day > 1:
        lines.append(f"daily: {fmt(dose * per_day)} mg in {per_day} doses")
    else:
        lines.append(f"daily: {fmt(dose)} mg in 1 dose")
    return "\n".join(lines)
