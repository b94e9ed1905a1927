"""medrl reward plugin in Python (componentize-py), same scores as plugins/sample-size.

Plugin API 0.3.0 (reward-sdk/wit/v0.3, `reward` world). The reward itself is sample_size.py
(plain Python, no medrl imports); medrl_sdk (plugins/python/medrl_sdk.py) does the batch
layout: slicing samples out of the host's string, the flat batch-scores, the JSON config.

Build: scripts/build-python-plugin.sh [OUT.wasm]
"""
import wit_world

import medrl_sdk
import sample_size

CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "tolerance": {"type": "number", "default": 0.2},
        "correct_score": {"type": "number", "default": 1.1},
        "format_penalty": {"type": "number", "default": -2.0},
        "invalid_target_score": {"type": "number", "default": -2.0},
    },
}


def settings(cfg):
    """Read once per call: (tolerance, correct, penalty, invalid_target)."""
    return (
        float(cfg.get("tolerance", 0.2)),
        float(cfg.get("correct_score", 1.1)),
        float(cfg.get("format_penalty", -2.0)),
        float(cfg.get("invalid_target_score", -2.0)),
    )


def score(cfg, s):
    return sample_size.score(s.response, s.gt, *cfg)


class WitWorld(wit_world.WitWorld):
    def manifest(self):
        return medrl_sdk.manifest(
            "sample-size-py",
            "0.2.0",
            "TrialPanorama sample-size reward, written in Python",
            CONFIG_SCHEMA,
        )

    def score_batch(self, config, batch):
        return medrl_sdk.score_batch(config, batch, score, parse=settings)
