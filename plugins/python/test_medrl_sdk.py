"""Unit tests of the Python plugin helpers and the two examples, in plain CPython (no
component): python3 -m unittest discover -s plugins/python  (tests/plugins.rs runs them too).
"""
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "sample-size-py"), os.path.join(HERE, "dose-calc-py")]

import dose_calc  # noqa: E402
import medrl_sdk  # noqa: E402
import sample_size  # noqa: E402
from medrl_sdk import Err, types  # noqa: E402


def batch(rows):
    """Lays samples (5 fields each) out as the host does: one string, UTF-8 byte offsets."""
    text, offsets = "", [0]
    for row in rows:
        for field in row:
            text += field
            offsets.append(len(text.encode("utf-8")))
    return types.SampleBatch(text=text, offsets=offsets)


ROWS = [
    ("q1", "<think>t</think><answer>1,000</answer>", '{"target": 1100}', "{}", "ss"),
    ("Größe?", "<think>≈ μ</think><answer>80</answer>", '{"target": "100"}', '{"k": "é"}', "ss"),
    ("", "", "null", "{}", ""),
]


class Layout(unittest.TestCase):
    def test_slices_ascii_and_non_ascii_batches(self):
        for rows in (ROWS[:1], ROWS):
            got = [(s.prompt, s.response, s.ground_truth, s.metadata, s.data_source)
                   for s in medrl_sdk.samples(batch(rows))]
            self.assertEqual(got, list(rows))
        self.assertEqual(medrl_sdk.samples(batch([])), [])
        s = medrl_sdk.samples(batch(ROWS))[1]
        self.assertEqual((s.gt, s.meta), ({"target": "100"}, {"k": "é"}))

    def test_malformed_batches_fail_every_sample(self):
        good = batch(ROWS[1:2])
        bad = {
            "offsets": types.SampleBatch(good.text, good.offsets[:5]),
            "run from": types.SampleBatch(good.text, good.offsets[:-1] + [good.offsets[-1] + 1]),
            "decrease": types.SampleBatch(good.text, [0, 5, 3] + good.offsets[3:]),
            "inside a UTF-8": types.SampleBatch(good.text, [0, 3] + good.offsets[2:]),  # "Gr|ö"
        }
        for why, b in bad.items():
            with self.assertRaises(ValueError) as e:
                medrl_sdk.samples(b)
            self.assertIn(why, str(e.exception))
            out = medrl_sdk.score_batch("{}", b, lambda cfg, s: 1.0)
            n = medrl_sdk.sample_count(b)
            self.assertEqual([i for i, _ in out.errors], list(range(n)))
            self.assertEqual(out.scores, [0.0] * n)


class Scores(unittest.TestCase):
    def test_flat_results_with_absent_errors_and_not_applicable(self):
        def score(cfg, s):
            if s.data_source == "":
                return medrl_sdk.NOT_APPLICABLE
            if s.prompt == "q1":
                return 2.0, {"format": 1.0, "accuracy": 1.0}
            return 0.5, {"accuracy": 0.0, "length": 3}

        out = medrl_sdk.score_batch("", batch(ROWS), score)
        self.assertEqual(out.scores, [2.0, 0.5, 0.0])
        self.assertEqual(out.component_names, ["format", "accuracy", "length"])
        self.assertEqual(out.components, [1.0, 1.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0])
        self.assertEqual(out.absent, [2, 3])
        self.assertEqual((out.errors, out.not_applicable), ([], [2]))

    def test_an_exception_fails_only_its_sample_and_a_bad_config_all(self):
        def score(cfg, s):
            return 1.0 / len(s.prompt)

        out = medrl_sdk.score_batch("{}", batch(ROWS), score)
        self.assertEqual(out.scores, [0.5, 1.0 / 6, 0.0])
        self.assertEqual([(i, m.split(":")[0]) for i, m in out.errors], [(2, "ZeroDivisionError")])
        for config, why in (("[1]", "must be a JSON object"), ("{", "not valid JSON")):
            out = medrl_sdk.score_batch(config, batch(ROWS), score)
            self.assertEqual(len(out.errors), 3)
            self.assertIn(why, out.errors[0][1])
        out = medrl_sdk.score_batch('{"x": "a"}', batch(ROWS), score, parse=lambda c: float(c["x"]))
        self.assertIn("bad config: ValueError", out.errors[0][1])

    def test_manifest(self):
        m = medrl_sdk.manifest("r", "1.0.0", "d", {"type": "object"}, ["search"])
        self.assertEqual((m.api_version, m.capabilities, json.loads(m.config_schema)),
                         ("0.3.0", [types.Capability.SEARCH], {"type": "object"}))
        self.assertEqual(medrl_sdk.manifest("r", "1", "d").config_schema, "{}")


class SampleSize(unittest.TestCase):
    def test_the_reference_cases(self):
        cases = [
            ("<think>t</think><answer>1,000</answer>", {"target": 1100}, 1.1),
            ("<think>t</think><answer>700</answer>", {"target": 1000}, 0.0),
            ("<answer>1000</answer>", {"target": 1000}, -2.0),
            ("Assistant: <think>t</think><answer>80</answer>", {"target": "100"}, 1.1),
            ("<think>t</think><answer>80</answer>", {"nothing": 1}, -2.0),
        ]
        for response, gt, want in cases:
            self.assertEqual(sample_size.score(response, gt)[0], want, response)


def call(args, config="{}"):
    try:
        return medrl_sdk.tool_call(config, json.dumps(args), dose_calc.call)
    except Err as e:
        return "ERR " + e.value


class DoseCalc(unittest.TestCase):
    def test_doses(self):
        self.assertEqual(call({"weight_kg": 30, "dose_mg_per_kg": 15, "doses_per_day": 3}),
                         "dose: 450 mg per dose (15 mg/kg x 30 kg = 450 mg)\ndaily: 1350 mg in 3 doses")
        self.assertEqual(call({"weight_kg": 80, "dose_mg_per_kg": 15, "max_dose_mg": 1000}),
                         "dose: 1000 mg per dose (15 mg/kg x 80 kg = 1200 mg, capped at 1000 mg)\n"
                         "daily: 1000 mg in 1 dose")
        self.assertEqual(call({"weight_kg": 12.5, "dose_mg_per_kg": 0.1}),
                         "dose: 1.25 mg per dose (0.1 mg/kg x 12.5 kg = 1.25 mg)\ndaily: 1.25 mg in 1 dose")
        self.assertEqual(call({"weight_kg": 23, "dose_mg_per_kg": 15, "doses_per_day": 4}, '{"round_to_mg": 10}'),
                         "dose: 350 mg per dose (15 mg/kg x 23 kg = 345 mg)\ndaily: 1400 mg in 4 doses")

    def test_bad_arguments_say_what_to_fix(self):
        cases = [
            ({"weight_kg": "70", "dose_mg_per_kg": 1}, 'weight_kg must be a number, got "70"'),
            ({"weight_kg": 700, "dose_mg_per_kg": 1}, "weight_kg must be from 0.3 to 400, got 700"),
            ({"weight_kg": 70}, "dose_mg_per_kg is required"),
            ({"weight_kg": 70, "dose_mg_per_kg": 0}, "dose_mg_per_kg must be greater than 0"),
            ({"weight_kg": 70, "dose_mg_per_kg": 1, "doses_per_day": 2.5}, "doses_per_day must be an integer, got 2.5"),
            ({"weight_kg": 70, "dose_mg_per_kg": 1, "dose": 3}, "unknown argument(s): dose (expected "
             "dose_mg_per_kg, doses_per_day, max_dose_mg, weight_kg)"),
            ([70], "arguments must be a JSON object, got list"),
        ]
        for args, want in cases:
            self.assertEqual(call(args), "ERR " + want)
        self.assertEqual(call({"weight_kg": 70, "dose_mg_per_kg": 1}, '{"round_to_mg": 0}'),
                         "ERR config round_to_mg must be a positive number, got 0")

    def test_spec(self):
        spec = medrl_sdk.tool_spec(dose_calc.NAME, dose_calc.DESCRIPTION, dose_calc.PARAMETERS)
        self.assertEqual(json.loads(spec.parameters)["required"], ["weight_kg", "dose_mg_per_kg"])

    def test_any_other_exception_is_not_an_err_reply(self):
        with self.assertRaises(ZeroDivisionError):
            medrl_sdk.tool_call("{}", "{}", lambda cfg, args: str(1 / 0))
        with self.assertRaises(TypeError):
            medrl_sdk.tool_call("{}", "{}", lambda cfg, args: 3)


if __name__ == "__main__":
    unittest.main()
