"""medrl reward plugin in Python (componentize-py), same scores as plugins/sample-size.

Build: scripts/build-python-plugin.sh [OUT.wasm]

Targets plugin API 0.1.0 (reward-sdk/wit/v0.1), which the host keeps supporting: 0.2.0 passes
a batch as one string with UTF-8 byte offsets, which a Python str (indexed by code point)
cannot slice without re-encoding; see docs/writing-plugins.md.
"""
import json

import wit_world
from componentize_py_types import Ok, Err
from wit_world.imports import types, host

import sample_size


class WitWorld(wit_world.WitWorld):
    def manifest(self) -> types.Manifest:
        schema = {
            "type": "object",
            "properties": {
                "tolerance": {"type": "number", "default": 0.2},
                "correct_score": {"type": "number", "default": 1.1},
                "format_penalty": {"type": "number", "default": -2.0},
                "invalid_target_score": {"type": "number", "default": -2.0},
            },
        }
        return types.Manifest(
            name="sample-size-py",
            version="0.1.0",
            description="TrialPanorama sample-size reward, written in Python",
            config_schema=json.dumps(schema),
            capabilities=[],
            api_version="0.1.0",
        )

    def score(self, config: str, samples):
        try:
            cfg = json.loads(config or "{}")
        except ValueError as e:
            return [Err(f"config is not valid JSON: {e}") for _ in samples]
        tol = float(cfg.get("tolerance", 0.2))
        correct = float(cfg.get("correct_score", 1.1))
        penalty = float(cfg.get("format_penalty", -2.0))
        invalid = float(cfg.get("invalid_target_score", -2.0))
        out = []
        for s in samples:
            try:
                value, parts = sample_size.score(s.response, sample_size.parse_json(s.ground_truth), tol, correct, penalty, invalid)
                out.append(Ok(types.ScoreResult_Scored(types.Scored(score=value, components=list(parts.items())))))
            except Exception as e:  # a bug in one sample must not fail the batch
                host.log(host.LogLevel.ERROR, f"sample failed: {e!r}")
                out.append(Err(repr(e)))
        return out
