"""medrl tool plugin in Python (componentize-py): `dose_calc`, a weight-based dose calculator.

Plugin API 0.3.0 (reward-sdk/wit/v0.3, `tool` world). The logic is dose_calc.py; medrl_sdk
(plugins/python/medrl_sdk.py) parses the config and arguments and turns a ToolError into the
`err` reply the model reads.

Build: scripts/build-python-plugin.sh OUT.wasm plugins/python/dose-calc-py tool
"""
import wit_world

import dose_calc
import medrl_sdk


class WitWorld(wit_world.WitWorld):
    def manifest(self):
        return medrl_sdk.manifest("dose-calc-py", "0.1.0", "Weight-based dose calculator tool, written in Python",
                                  dose_calc.CONFIG_SCHEMA)

    def tool_spec(self):
        return medrl_sdk.tool_spec(dose_calc.NAME, dose_calc.DESCRIPTION, dose_calc.PARAMETERS)

    def call(self, config, arguments):
        return medrl_sdk.tool_call(config, arguments, dose_calc.call)
